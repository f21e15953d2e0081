"""Dirty-page tracking: which VMAs are armed, and which pages a checkpoint must copy.

One :meth:`Tracker.round` reads the target's VMAs, arms those that are new or
lost their tracking, asks the kernel which pages were written since the
previous round (re-arming them in the same PAGEMAP_SCAN call), and returns the
page ranges to copy and the pages the target has.  Rounds run while the target
runs (pre-copy: cheap to repeat, content may still change) and once more while
it is frozen (authoritative).  Nothing here copies or stores pages.

How a VMA is treated (DESIGN.md invariant 1):

* *tracked*: anonymous or file-private, inside the ranges armed in an earlier
  round, and still registered (VM_UFFD_WP; the written-scan fails with EPERM
  otherwise).  Only its written pages are copied.
* *whole*: anything else with content — new since the last round, moved by
  mremap (which drops VM_UFFD_WP: mm/userfaultfd.c ``mremap_userfaultfd_prep``),
  replaced by munmap+mmap, grown, or not registrable (VM_DROPPABLE, a VMA the
  target registered with its own uffd, shared memory).  Every present page is
  copied, and the checkpoint marks the range so that readers never look into
  older checkpoints for it.  Registrable ones are armed in the same round.

Shared memory (SHMEM) is the object's, not this process's: its present pages
and their content come from the object itself (ckpt/shmem.py), which also
holds pages that other processes wrote and this one never mapped.  Shared
*anonymous* memory (``/dev/zero (deleted)``) is armed like private memory, but
its pages are neither copied nor marked whole here: the round reports, per VMA,
what this process wrote (:class:`SharedScan`), and the dump decides for each
object, over all its mappers, what to store (ckpt/sharedincr.py).  Only the
frozen round takes its written-scan (which re-arms): a running round copies
nothing of it, so it must leave the written bits for the frozen one.  Where the
object cannot be opened (no CAP_SYS_ADMIN / CAP_CHECKPOINT_RESTORE), the page
tables are used and the round carries a note naming the mapping.  A memfd or a
file deleted while open is a file object the task state records whole
(ckpt/files/objects.py): its shared mappings are marked whole and nothing of
them is copied here.

How pages are read (:attr:`Round.via_mem`).  ``process_vm_readv`` pins the
pages it reads, and a read-only pin of an anonymous page that may be shared
(COW after fork, KSM) unshares it (mm/gup.c ``gup_must_unshare``, Linux 5.19+):
a dump would double the memory of a pre-fork server.  /proc/PID/mem reads
without a pin and unshares nothing, but takes a syscall per contiguous range.
So whole anonymous and private-file VMAs whose last smaps showed shared pages
(or that have no smaps figures yet) are read through /proc/PID/mem; written
pages of tracked VMAs are COW-broken by the write that made them written and
keep the fast path.

Presence.  Whole VMAs get a PAGEMAP_SCAN presence pass (PRESENT|SWAPPED).  For
tracked VMAs the written-scan is enough on a kernel that reports zapped pages
as written (``features.zapped_pages_reported``: 6.18.y with the July 2026 fixes,
KERNEL-FACTS.md A): a page can only leave the previous present set by being
zapped — then it is reported written, and reading it gives its true content
(zeros, or the file's for a private file mapping) — and a page that became
present without being written holds its backing content, which is what an
absent page reads as.  So present = previous ∪ written, and the frozen window
holds only the fast written-scan (1.2 ms/GiB here, against 6-18 ms/GiB for a
presence pass).  On kernels with the bug, a full presence pass over tracked
VMAs runs every round and drops pages that vanished (the documented workaround).

Armed pages that were never populated carry uffd-wp *markers*, which the kernel
reports as SWAPPED without WRITTEN — exactly like a real swap entry of an armed
page.  Such an ambiguous page counts as present only if it was present before
(the presence pass taken just before arming, or the previous round), and is
then copied: reading it resolves the question.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from dataclasses import dataclass, field, replace

from . import features, procfs, ranges
from ._sys import uffd as uffd_sys
from ._sys.pagemap import PageCategory, guard_category
from ._sys.pagemap import PageCategory as C
from ._sys.pagemap import PagemapScanner
from .arch import x86_64 as arch
from .procfs import Mapping
from .ranges import Range
from .shmem import DELETED, SHM_DIR, SharedObject, SharedObjects, anon_shared, object_type, relinked, why_unreadable

# What a VMA's content is, and so how it is stored and read back.  These are the
# ``kind`` values of ckpt.image.VmaRecord.
ANON = "anon"                  # private anonymous (heap, stacks, malloc arenas)
FILE_PRIVATE = "file-private"  # MAP_PRIVATE of a file: only COW'd pages are stored
FILE_SHARED = "file-shared"    # MAP_SHARED of a live file: content lives in the file
SHMEM = "shmem"                # shared anonymous, memfd, SysV shm, deleted shared files
SPECIAL = "special"            # [vdso] [vvar] [vvar_vclock] [vsyscall]: provided by the kernel
DEVICE = "device"              # VM_IO / VM_PFNMAP: device memory, never read

DATA_KINDS = frozenset({ANON, FILE_PRIVATE, SHMEM})
TRACKABLE_KINDS = frozenset({ANON, FILE_PRIVATE})
_SHMEM_PREFIXES = ("/dev/zero", "/memfd:", "/SYSV", "/dev/shm/")
#: Ranges outside the tracked VMAs above which the frozen round scans the whole address
#: space for guard regions once instead of once per range (Tracker._frozen_guards).
GUARD_SCAN_RUNS = 256


def classify(m: Mapping) -> str:
    """The content kind of one VMA (see the module constants)."""
    if m.is_special:
        return SPECIAL
    if "io" in m.flags or "pf" in m.flags:
        return DEVICE
    if m.shared:
        if not m.path or m.deleted or m.path.startswith(_SHMEM_PREFIXES):
            return SHMEM
        return FILE_SHARED
    if not m.path or m.path.startswith("["):
        return ANON  # [heap], [stack], [anon:name], [anon_shmem:...] private
    return FILE_PRIVATE


@dataclass
class SharedScan:
    """One VMA of shared anonymous memory, as a round found it (addresses, not offsets).

    ``written``: the pages this process wrote since the last frozen round, None when the
    VMA was not tracked throughout (new, or registered only now, or it lost its
    registration).  :meth:`extents`: the object's populated pages in the VMA, read once
    (``lseek`` walks the page cache: 27 ms for 1 GiB here).  ``unmapped``:
    on kernels whose written-scan misses zapped pages (``Tracker.full_presence``), the
    pages this process's page tables hold nothing for (neither present nor swapped nor a
    marker), which may be pages written and then zapped; None elsewhere."""

    vma: Mapping
    obj: SharedObject
    written: list[Range] | None
    unmapped: list[Range] | None = None
    # Set by ckpt/sharedincr.py when the object is stored incrementally: the pages present
    # then are those present at the last checkpoint and those written since, which spares
    # the frozen window the extents (a page the object gained without a write is a zero
    # page a read fault filled in, which reads as zero either way; one it lost since
    # makes the object whole: a hole punch or a truncate).
    incremental: bool = False
    _extents: list[Range] | None = field(default=None, repr=False)

    def extents(self) -> list[Range]:
        if self._extents is None:
            self._extents = self.obj.extents()
        return self._extents


@dataclass
class Round:
    """What one scan round found; ranges are normalized [start, end) byte ranges."""

    maps: list[Mapping]
    kinds: list[str]
    copy: list[Range]             # pages whose content must be read now
    zero: list[Range]             # pages known to be zero (the shared zero page)
    whole: list[Range]            # VMAs treated whole in this round
    # Read through /proc/PID/mem, not process_vm_readv: VMAs without read
    # permission (FOLL_FORCE), and VMAs whose pages may be COW-shared (no pin).
    via_mem: list[Range]
    # Shared objects read directly; their ranges in ``copy`` come from them.
    objects: list[SharedObject] = field(default_factory=list)
    # Shared mappings of memfds and deleted files, which the dump stores as file objects
    # (ckpt/files/objects.py): in ``whole``, never in ``copy``.
    kept: list[Range] = field(default_factory=list)
    # Shared anonymous memory (ckpt/sharedincr.py stores it): in neither ``copy`` nor ``whole``.
    shared: list[SharedScan] = field(default_factory=list)
    written_pages: int = 0        # pages the written-scan reported
    untrackable: list[tuple[Range, str]] = field(default_factory=list)  # (range, why)
    notes: list[str] = field(default_factory=list)  # for the dump report
    # A frozen round's guard regions (MADV_GUARD_INSTALL) in the whole address space,
    # found without a scan of all of it (see Tracker.scan_guards); None: not derived.
    guards: list[Range] | None = None
    # The pages the target has: computed on first use, which the dumper puts
    # after the thaw — set algebra over thousands of ranges is not frozen time.
    _present: Callable[[], list[Range]] | list[Range] = field(default_factory=list, repr=False)

    @property
    def present(self) -> list[Range]:
        if callable(self._present):
            self._present = self._present()
        return self._present


@dataclass(frozen=True)
class Estimate:
    """What a frozen round is expected to copy, in bytes (see :meth:`Tracker.prime`)."""

    written: int   # pages of tracked VMAs written since the last round
    shared: int    # content of shared objects read by this task's reader, copied whole every round
    anon_shared: int = 0   # shared anonymous memory (ckpt/sharedincr.py): written pages, or content when not armed

    @property
    def total(self) -> int:
        return self.written + self.shared


class Tracker:
    """Tracking state of one target between rounds.

    ``armed`` are the ranges registered and write-protected by ckpt as of the
    last round; ``present`` the pages present then.  Both are persisted in each
    checkpoint so that a later ``ckpt dump`` can continue from them.
    """

    def __init__(self, pid: int, uffd: int, *, armed: Sequence[Range] = (),
                 present: Sequence[Range] = (), full_presence: bool | None = None) -> None:
        self.pid = pid
        self.uffd = uffd
        self.armed: list[Range] = ranges.normalize(armed)
        self._present: Round | list[Range] = ranges.normalize(present)
        # Pages reported written but not present in a running round (see round()).
        self.carry: list[Range] = []
        self.scanner = PagemapScanner(pid)
        # See the module docstring; None = decide by probing this kernel once.
        # CKPT_PRESENCE_PASS=always forces the workaround path (tests use it to
        # keep the code path for unfixed kernels exercised on fixed ones).
        if full_presence is None:
            full_presence = (os.environ.get("CKPT_PRESENCE_PASS") == "always"
                             or not features.zapped_pages_reported())
        self.full_presence = full_presence
        self._flags: dict[tuple[int, int, int, int, str, str], frozenset[str]] = {}
        # Whether the last smaps read showed pages of the VMA mapped by another
        # process too (Shared_Clean/Shared_Dirty); absent = not known.
        self._shared: dict[tuple[int, int, int, int, str, str], bool] = {}
        self.objects = SharedObjects(pid)
        self._layout_read: tuple[list[Mapping], list[Mapping]] | None = None   # (maps read, with flags)
        self._plan: _Plan | None = None
        self._guards_before: list[Range] | None = None   # see scan_guards

    def close(self) -> None:
        self.scanner.close()
        self.objects.close()

    @property
    def present(self) -> list[Range]:
        """Pages present as of the last round (see Round.present)."""
        if isinstance(self._present, Round):
            self._present = self._present.present
        return self._present

    def prime(self) -> Estimate:
        """Prepare a frozen round while the target still runs; estimate what it will copy.

        Makes sure the VMA flags are cached (so that the frozen round reads only
        /proc/PID/maps), settles the previous round's present set, counts the
        pages written so far with a written-scan that does not re-arm, and
        opens the shared objects (stored whole every round) and sizes their
        content now rather than in the frozen window.
        """
        maps = self._layout()
        # The frozen round's per-layout work, done now (kept while the layout stays).
        plan = self._plan_of(maps)
        plan.runs(plan.tracked(self.armed)[0])
        plan.tracked_spans(self.armed)
        _ = self.present
        w = int(PageCategory.WRITTEN)
        anon = ranges.normalize((m.start, m.end) for m in maps if classify(m) == SHMEM and anon_shared(m.path))
        armed_anon = ranges.intersect(self.armed, anon)
        written = sum(ranges.total(self.scanner.ranges(s, e, mask=w, return_mask=w))
                      for s, e in ranges.subtract(self.armed, armed_anon))
        anon_bytes = sum(ranges.total(self.scanner.ranges(s, e, mask=w, return_mask=w)) for s, e in armed_anon)
        shared = 0
        for m in maps:
            if classify(m) == SHMEM and anon_shared(m.path) and ranges.covers(armed_anon, m.start, m.end):
                continue   # its written pages are counted above
            if classify(m) == SHMEM and not object_type(m.path):   # file objects: ckpt/files/objects.py
                try:
                    size = ranges.total(self.objects.get(m).extents())
                except OSError:  # read from the page tables (see round())
                    size = ranges.total(self._presence_ranges([(m.start, m.end)]))
                if anon_shared(m.path):
                    anon_bytes += size
                else:
                    shared += size
        return Estimate(written, shared, anon_bytes)

    def scan_guards(self) -> None:
        """Find the guard regions of the whole address space while the target runs, after
        the last round before the frozen one, so that the frozen round can tell them
        without that scan (6.3 ms of frozen time at 20,000 mappings: PAGEMAP_SCAN visits
        every VMA).

        In a VMA tracked throughout (registered and armed since before this scan, the
        frozen round's written-scan still finds it registered), a page whose guard
        changed since shows as written: MADV_GUARD_INSTALL leaves a guard marker without
        the uffd-wp bit, MADV_GUARD_REMOVE an empty PTE (mm/madvise.c
        guard_install_set_pte, guard_remove_pte_entry), and the written-scan's masks
        report both (fs/proc/task_mmu.c pagemap_page_category; an empty PTE only on
        the fast path, or on kernels with the zapped-pages fix, KERNEL-FACTS.md A).  So
        the frozen round scans for guards only where the target wrote and outside the
        tracked VMAs, and keeps this scan's result elsewhere (:attr:`Round.guards`).
        Not on kernels whose written-scan misses zapped pages (``full_presence``)."""
        g = guard_category()
        self._guards_before = None
        if g and not self.full_presence:
            self._guards_before = self.scanner.ranges(0, arch.TASK_SIZE, mask=g, return_mask=g)

    def seed_flags(self, vmas: Iterable[Any]) -> None:
        """Take VMA flags from a previous checkpoint's records (start, end, offset,
        inode, perms, path, flags), as if smaps had been read then."""
        for v in vmas:
            self._flags[(v.start, v.end, v.offset, v.inode, v.perms, v.path)] = frozenset(v.flags)

    def _layout(self, *, refresh: bool = False, maps: list[Mapping] | None = None) -> list[Mapping]:
        """The target's VMAs with their flags.

        smaps gives the flags but walks every page table (45 ms for 4 GiB here);
        /proc/PID/maps is cheap.  So maps is read, and flags come from the last
        smaps read (or the previous checkpoint) for VMAs unchanged since; smaps
        is read again only when a VMA is new, or after registration changed
        flags.  A madvise() that changes only the flags of an existing VMA is
        therefore seen at the next full dump.  Registration itself is never
        taken from here on trust: the written-scan checks it (CHECK_WPASYNC).
        ``maps``: /proc/PID/maps as read already (see :meth:`round`).
        """
        if self._flags and not refresh:
            maps = procfs.read_maps(self.pid) if maps is None else maps
            # The same text as last time (procfs reuses its Mapping objects, so this
            # compares identities): the same layout, without a lookup per VMA.
            if self._layout_read is not None and maps == self._layout_read[0]:
                return list(self._layout_read[1])
            cached = [self._flags.get(_vma_key(m)) for m in maps]
            if all(f is not None for f in cached):
                layout = [replace(m, flags=f) for m, f in zip(maps, cached)]
                self._layout_read = (maps, layout)
                return list(layout)
        maps = procfs.read_smaps(self.pid)
        self._flags = {_vma_key(m): m.flags for m in maps}
        self._shared = {_vma_key(m): m.shared_clean + m.shared_dirty > 0 for m in maps}
        self._layout_read = None
        return maps

    def layout(self) -> tuple[list[Mapping], list[str]]:
        """The VMAs (with flags) of the last layout read and their kinds (see :func:`classify`)."""
        plan = self._plan_of(self._layout())
        return plan.maps, plan.kinds

    def _plan_of(self, maps: list[Mapping]) -> _Plan:
        """What a round needs of ``maps`` that depends on the layout only, kept while the
        layout stays the same: a round of a process with tens of thousands of VMAs then
        does no Python work per VMA (issue 11 item 6)."""
        if self._plan is None or self._plan.maps != maps:
            self._plan = _Plan.of(maps)
        return self._plan

    def round(self, *, final: bool, arm: bool = True, maps: list[Mapping] | None = None) -> Round:
        """Run one round; ``final`` means the target is frozen.

        ``arm=False`` registers nothing new (VMAs not armed yet are dumped
        whole): for a last round after which tracking ends, where registering
        would only split the target's VMAs from their future neighbours.
        ``maps``: the target's /proc/PID/maps read since it was frozen
        (:meth:`ckpt.live.freeze.FrozenProcess.layout`), instead of reading it
        again; a layout changed since :meth:`prime` is caught by that read as by
        this round's own (the plan is made again).
        """
        plan = self._plan_of(self._layout(maps=maps))
        if plan.relink:   # sem_open's files: named, not deleted
            named = relinked(self.pid, plan.maps)
            if named != plan.maps:
                plan = _Plan.of(named)
        maps, kinds, by_start = list(plan.maps), list(plan.kinds), plan.by_start
        tracked, whole = plan.tracked(self.armed)
        file_private = plan.file_private
        unreadable = list(plan.unreadable)
        objects: list[SharedObject] = []
        kept: list[Range] = []   # shared mappings of the file objects the task state records
        anon: list[tuple[Mapping, SharedObject]] = []   # shared anonymous memory (SharedScan)
        notes: list[str] = []
        self.objects.retain(plan.shmem)
        for m in plan.shmem:
            r = (m.start, m.end)
            try:
                obj = self.objects.get(m)
                if object_type(m.path):
                    kept.append(r)   # a memfd or deleted file: stored as the object itself
                elif anon_shared(m.path):
                    anon.append((m, obj))   # stored by the dump, over all its mappers
                else:
                    objects.append(obj)
                continue  # whole, read from the object (below)
            except OSError as err:
                if err.errno == errno.ESRCH:
                    raise
                notes.append(f"{m.start:#x}-{m.end:#x} {m.path or '(shared anonymous)'}: stored from "
                             f"this process's page tables ({why_unreadable(err)}); writes by other "
                             "processes that this process never mapped may be missing")
            whole.append(r)   # shared memory is never tracked by this process's page tables
        untrackable: list[tuple[Range, str]] = []
        armed_now: list[Range] = []

        # The written-scan checks registration (CHECK_WPASYNC): a VMA that lost it
        # (replaced by an identical-looking mapping) fails with EPERM, and is then
        # dumped whole.  It runs per run of adjacent tracked VMAs (see _scan_written).
        written: list[Range] = []
        still_tracked: list[Range] = []
        for run in plan.runs(tracked):
            self._scan_written(run, written, still_tracked, whole)
        # Per VMA, ascending: sorted and disjoint already.  All of them (the usual case):
        # their merged spans were made with the plan, not now.
        all_tracked = len(still_tracked) == len(tracked)
        tracked = still_tracked
        shared, shared_tracked = self._shared_round(anon, final=final, arm=arm, armed_now=armed_now,
                                                    untrackable=untrackable)
        kind_at = plan.kind_at
        whole_present, whole_zero = self._dump_whole(
            [by_start[s] for s, _ in sorted(whole)], kinds_of=kind_at, arm=arm,
            file_private=file_private, armed_now=armed_now, untrackable=untrackable)
        # Pages that may be COW-shared with another process: never pinned (see
        # the module docstring).  Smaps figures are as fresh as the last smaps
        # read (this round's whenever the layout changed).
        cow_shared = [(s, e) for s, e in whole
                      if kind_at[s] in TRACKABLE_KINDS and self._shared.get(_vma_key(by_start[s]), True)]
        if objects:
            whole_present = ranges.union(whole_present, ranges.normalize(r for obj in objects for r in obj.extents()))
            whole.extend((obj.start, obj.end) for obj in objects)
        # A memfd or deleted file mapped shared: its content is stored once, as the object
        # (ckpt/files/objects.py, read in the frozen window with the task state), whatever
        # maps it; whole (never resolved in older checkpoints), no page present here.
        whole.extend(kept)
        whole = ranges.normalize(whole)
        tracked = plan.tracked_spans(self.armed) if all_tracked else ranges.normalize(tracked)
        previous = self.present

        changed = written
        all_guards: list[Range] | None = None
        if self.carry:
            changed = ranges.intersect(ranges.union(written, self.carry), tracked)
        if self.full_presence:
            # Kernels that miss zapped pages in the written-scan: trust only a
            # presence pass, and copy ambiguous pages that were present before.
            present_r, swapped_written, ambiguous, file_pages, zero_pages = self._presence(tracked)
            recheck = ranges.intersect(ambiguous, previous)
            tracked_present = ranges.union(ranges.union(present_r, swapped_written), recheck)
            tracked_present = ranges.subtract(tracked_present, ranges.intersect(file_pages, file_private))
            candidates = ranges.intersect(ranges.union(changed, recheck), tracked_present)
            tracked_zero = ranges.intersect(candidates, zero_pages)
            # A page populated and written between the presence pass and the
            # written-scan of a running round is reported written but not present:
            # carry it to the next round (its write bit was re-armed already).
            self.carry = [] if final else ranges.subtract(changed, tracked_present)

            def present_fn() -> list[Range]:
                return ranges.union(ranges.union(tracked_present, whole_present), _shared_present(shared, previous))
        else:
            # A guard region installed since the last round (MADV_GUARD_INSTALL
            # zaps the pages it covers) reads as written; it holds no data and
            # reading it faults (see _presence).
            spans = _spans(changed) if changed else []
            guards = self._guard_ranges(spans)
            changed = ranges.subtract(changed, guards)
            if final and self._guards_before is not None:
                all_guards = self._frozen_guards(tracked, spans, guards)
            # Written pages of private file mappings may be page-cache pages, not
            # COW copies: a write into a PMD-mapped file folio zaps the whole PMD
            # (mm/huge_memory.c __split_huge_pmd_locked), whose 511 other pages
            # then read as written.  A presence pass over just those ranges keeps
            # only the anonymous ones; the rest read as the file.
            file_changed = ranges.intersect(changed, file_private) if file_private else []
            candidates = changed
            if file_changed:
                candidates = ranges.subtract(changed, file_changed)
                present_r, swapped_written, ambiguous, file_pages, _ = self._presence(_spans(file_changed))
                anon = ranges.union(ranges.union(present_r, swapped_written),
                                    ranges.intersect(ambiguous, previous))
                anon = ranges.intersect(ranges.subtract(anon, file_pages), file_changed)
                candidates = ranges.union(candidates, anon)
            tracked_zero = []
            self.carry = []

            def present_fn() -> list[Range]:
                kept = ranges.subtract(ranges.intersect(previous, tracked), ranges.union(file_changed, guards))
                return ranges.union(ranges.union(ranges.union(kept, candidates), whole_present),
                                    _shared_present(shared, previous))
        zero = ranges.union(tracked_zero, whole_zero)
        copy = ranges.union(candidates, ranges.intersect(whole, whole_present))
        if zero:
            copy = ranges.subtract(copy, zero)

        armed_now = ranges.normalize(armed_now)
        self.armed = ranges.union(ranges.intersect(self.armed, ranges.union(tracked, shared_tracked)), armed_now)
        if armed_now and not final:
            # Registration added VM_UFFD_WP and may have merged VMAs: refresh the
            # flag cache now, while the target runs, not in the frozen round.
            self._layout(refresh=True)
        result = Round(maps=maps, kinds=kinds, copy=copy, zero=zero, whole=whole,
                       via_mem=ranges.normalize(unreadable + cow_shared), objects=objects, kept=kept, shared=shared,
                       written_pages=ranges.total(written) // 4096,
                       untrackable=untrackable, notes=notes, guards=all_guards, _present=present_fn)
        self._present = result
        return result

    def _shared_round(self, anon: list[tuple[Mapping, SharedObject]], *, final: bool, arm: bool,
                      armed_now: list[Range], untrackable: list[tuple[Range, str]]
                      ) -> tuple[list[SharedScan], list[Range]]:
        """The shared anonymous VMAs of a round (see :class:`SharedScan`), and those still
        armed.  A frozen round takes the written-scan of the armed ones (re-arming them);
        a running round leaves their written bits alone (it copies nothing of them).  A VMA
        not armed, or no longer registered (CHECK_WPASYNC: EPERM), is registered and armed
        now: this checkpoint stores its object whole, the next may not."""
        out: list[SharedScan] = []
        still: list[Range] = []
        for m, obj in anon:
            r = (m.start, m.end)
            written: list[Range] | None = None
            if ranges.covers(self.armed, m.start, m.end):
                if not final:
                    still.append(r)
                    out.append(SharedScan(m, obj, None))
                    continue
                try:
                    written = self.scanner.collect_written(m.start, m.end, check_wpasync=True)
                    still.append(r)
                except PermissionError:
                    written = None
            if written is None and arm:
                why = self._register(m)
                if why:
                    untrackable.append((r, why))
                else:
                    try:
                        self.scanner.arm(m.start, m.end)
                        armed_now.append(r)
                    except PermissionError:
                        pass   # replaced since it was registered: whole now, registered again next round
            unmapped = None
            if written is not None and self.full_presence:
                unmapped = ranges.subtract([r], self._presence_ranges([r]))
            out.append(SharedScan(m, obj, written, unmapped))
        return out, still

    def _dump_whole(self, vmas: list[Mapping], *, kinds_of: dict[int, str], arm: bool, file_private: list[Range],
                    armed_now: list[Range], untrackable: list[tuple[Range, str]]
                    ) -> tuple[list[Range], list[Range]]:
        """Arm what can be armed among ``vmas`` and find their present pages.

        Order matters while the target runs: presence is read before arming
        (to tell real swap entries from the markers arming installs) *and*
        after (a page populated in between is present and gets copied)."""
        to_arm: list[Range] = []
        unarmed: list[Range] = []
        for m in vmas:
            r = (m.start, m.end)
            if not arm or kinds_of[m.start] not in TRACKABLE_KINDS:
                unarmed.append(r)
                continue
            why = self._register(m)
            if why:
                untrackable.append((r, why))
                unarmed.append(r)
            else:
                to_arm.append(r)
        to_arm = ranges.normalize(to_arm)
        pre_present = self._presence_ranges(to_arm)
        armed: list[Range] = []
        for start, end in to_arm:
            try:
                self.scanner.arm(start, end)
                armed.append((start, end))
            except PermissionError:
                # CHECK_WPASYNC: a VMA of the range was unmapped and replaced since
                # it was registered (the target runs).  Not armed, then: dumped
                # whole this round and registered again in the next.
                unarmed.append((start, end))
        armed_now.extend(armed)
        where = ranges.union(to_arm, ranges.normalize(unarmed))
        present_r, swapped_written, ambiguous, file_pages, zero_pages = self._presence(where)
        known = ranges.union(pre_present, ranges.normalize(unarmed))
        present = ranges.union(ranges.union(present_r, swapped_written), ranges.intersect(ambiguous, known))
        # Page-cache pages of private file mappings are the file's content, not ours.
        present = ranges.subtract(present, ranges.intersect(file_pages, file_private))
        return present, ranges.intersect(present, zero_pages)

    # -- helpers ----------------------------------------------------------------------

    def _scan_written(self, run: list[Range], written: list[Range], tracked: list[Range],
                      whole: list[Range]) -> None:
        """The written-scan of a run of tracked VMAs with nothing mapped between them:
        extend ``written`` with their written pages (re-armed), ``tracked`` with the VMAs
        still registered, ``whole`` with the others.

        One checked written-scan covers the run (holes between VMAs are skipped by the
        walk: mm/pagewalk.c, fs/proc/task_mmu.c pagemap_scan_pte_hole).  Should a VMA of
        it have lost its registration (CHECK_WPASYNC: EPERM), the pages the call re-armed
        before it are kept (:meth:`PagemapScanner.written_until_unregistered`), the first
        unregistered VMA is found (:meth:`_first_unregistered`) and dumped whole, and the
        scan goes on after it.  At 20,000 mappings this spares the frozen window a
        separate check of the run (4.4 ms).  A VMA the failed call never walked keeps its
        written bits, which a later scan reports: counting it as tracked loses nothing.
        """
        while run:
            got, stopped = self.scanner.written_until_unregistered(run[0][0], run[-1][1])
            _extend_sorted(written, got)
            if not stopped:
                tracked.extend(run)
                return
            i = self._first_unregistered(run)
            if i is None:
                # Registered again meanwhile?  Only ckpt registers with its uffd; a
                # layout changed under a running target: whole, which reads every page.
                whole.extend(run)
                return
            tracked.extend(run[:i])
            whole.append(run[i])
            run = run[i + 1:]

    def _first_unregistered(self, run: list[Range]) -> int | None:
        """The index of the first VMA of ``run`` not registered for async WP (None: all
        are), by bisection over prefixes of the run (:meth:`PagemapScanner.unregistered_in`
        walks no page table)."""
        start = run[0][0]
        if not self.scanner.unregistered_in(start, run[-1][1]):
            return None
        lo, hi = 0, len(run) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.scanner.unregistered_in(start, run[mid][1]):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _register(self, m: Mapping) -> str:
        """Register one VMA for WP tracking; return why not ('' on success)."""
        if "dp" in m.flags:
            return "VM_DROPPABLE cannot be registered with userfaultfd"
        # A VMA already showing ``uw`` was registered by us in a dump whose
        # state was lost (registering again with the same ctx is allowed) or by
        # the target's own userfaultfd (EBUSY below).
        try:
            uffd_sys.register_wp(self.uffd, m.start, m.end - m.start)
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise
            if err.errno == errno.EBUSY:
                return "registered with another userfaultfd (the target's own?)"
            return f"UFFDIO_REGISTER failed: {os.strerror(err.errno or 0)}"
        return ""

    def _presence_ranges(self, where: Iterable[Range]) -> list[Range]:
        out: list[Range] = []
        for start, end in where:
            out.extend(self.scanner.ranges(start, end, anyof=int(C.PRESENT | C.SWAPPED),
                                           return_mask=int(C.PRESENT | C.SWAPPED)))
        return ranges.normalize(out)

    def _frozen_guards(self, tracked: list[Range], spans: list[Range], guards: list[Range]) -> list[Range]:
        """The guard regions of the address space now (see :meth:`scan_guards`):
        ``guards`` (those in ``spans``, around the pages written since the last round),
        those the scan before the freeze found elsewhere in ``tracked``, and those of the
        rest of the address space, scanned now."""
        before = self._guards_before
        self._guards_before = None   # one frozen round per scan
        assert before is not None
        outside = ranges.subtract([(0, arch.TASK_SIZE)], tracked)
        if len(outside) > GUARD_SCAN_RUNS:
            # One PAGEMAP_SCAN per range outside the tracked VMAs: with thousands of runs
            # (a PROT_NONE guard VMA per thread stack, gaps) one walk of the whole space is
            # cheaper -- 20,000 calls over empty ranges took 58 ms, the walk of 20,000 VMAs 6 ms.
            return self._guard_ranges([(0, arch.TASK_SIZE)])
        kept = ranges.subtract(before, ranges.union(outside, spans))
        return ranges.union(ranges.union(kept, guards), self._guard_ranges(outside))

    def _guard_ranges(self, where: Iterable[Range]) -> list[Range]:
        """The guard regions (MADV_GUARD_INSTALL) within ``where``."""
        g = guard_category()
        out: list[Range] = []
        for start, end in where if g else ():
            out.extend(self.scanner.ranges(start, end, mask=g, return_mask=g))
        return ranges.normalize(out)

    def _presence(self, where: Iterable[Range]) -> tuple[list[Range], list[Range], list[Range],
                                                         list[Range], list[Range]]:
        """One non-WP PAGEMAP_SCAN pass: (present, swapped+written, ambiguous, file, zero-pfn).

        Guard regions (MADV_GUARD_INSTALL, Linux 6.13) are PTE markers the scan
        reports as SWAPPED|GUARD (and WRITTEN): they hold no data and any read of
        them faults, so they are left out here (the task state records them,
        ckpt.taskstate)."""
        present: list[Range] = []
        swapped_written: list[Range] = []
        ambiguous: list[Range] = []
        file_pages: list[Range] = []
        zero: list[Range] = []
        # Plain ints: IntFlag arithmetic costs microseconds per region.
        is_present, is_file, is_zero, is_written = int(C.PRESENT), int(C.FILE), int(C.PFNZERO), int(C.WRITTEN)
        is_guard = guard_category()
        ret = int(C.PRESENT | C.SWAPPED | C.WRITTEN | C.FILE | C.PFNZERO) | is_guard
        anyof = int(C.PRESENT | C.SWAPPED)
        for start, end in where:
            for s, e, cat in self.scanner.scan(start, end, anyof=anyof, return_mask=ret):
                if cat & is_guard:
                    continue
                if cat & is_present:
                    present.append((s, e))
                    if cat & is_file:
                        file_pages.append((s, e))
                    if cat & is_zero:
                        zero.append((s, e))
                elif cat & is_written:
                    swapped_written.append((s, e))
                else:
                    ambiguous.append((s, e))
        n = ranges.normalize
        return n(present), n(swapped_written), n(ambiguous), n(file_pages), n(zero)


@dataclass
class _Plan:
    """What a round takes from one layout (see :meth:`Tracker._plan_of`)."""

    maps: list[Mapping]
    kinds: list[str]
    by_start: dict[int, Mapping]
    kind_at: dict[int, str]
    file_private: list[Range]     # normalized
    unreadable: list[Range]       # data VMAs that cannot be read through the fast path
    shmem: list[Mapping]          # SHMEM VMAs: objects, handled every round
    trackable: list[tuple[int, Range]]   # (index in maps, range) of ANON and FILE_PRIVATE VMAs
    other: list[Range]            # data VMAs never tracked here (neither SHMEM nor trackable)
    relink: bool                  # a mapping may need shmem.relinked
    _armed: list[Range] | None = None
    _tracked: tuple[list[Range], list[Range]] = ([], [])
    _runs_for: list[Range] | None = None
    _runs: list[list[Range]] = field(default_factory=list)
    _spans: list[Range] = field(default_factory=list)   # normalized _tracked[0]

    @classmethod
    def of(cls, maps: list[Mapping]) -> _Plan:
        kinds = [classify(m) for m in maps]
        file_private: list[Range] = []
        unreadable: list[Range] = []
        shmem: list[Mapping] = []
        trackable: list[tuple[int, Range]] = []
        other: list[Range] = []
        relink = False
        for i, (m, kind) in enumerate(zip(maps, kinds)):
            relink = relink or m.path.endswith(DELETED) and m.path.startswith(SHM_DIR)
            if kind not in DATA_KINDS:
                continue
            r = (m.start, m.end)
            if kind == FILE_PRIVATE:
                file_private.append(r)
            if not m.readable:
                unreadable.append(r)
            if kind == SHMEM:
                shmem.append(m)
            elif kind in TRACKABLE_KINDS:
                trackable.append((i, r))
            else:
                other.append(r)
        return cls(maps, kinds, {m.start: m for m in maps}, {m.start: k for m, k in zip(maps, kinds)},
                   ranges.normalize(file_private), unreadable, shmem, trackable, other, relink)

    def tracked(self, armed: list[Range]) -> tuple[list[Range], list[Range]]:
        """(trackable VMAs inside ``armed``, the data VMAs dumped whole otherwise), new lists."""
        if self._armed is None or self._armed != armed:
            tracked: list[Range] = []
            whole = list(self.other)
            for _, r in self.trackable:
                (tracked if ranges.covers(armed, r[0], r[1]) else whole).append(r)
            self._armed, self._tracked = list(armed), (tracked, whole)
            self._spans = ranges.normalize(tracked)
        return list(self._tracked[0]), list(self._tracked[1])

    def tracked_spans(self, armed: list[Range]) -> list[Range]:
        """The trackable VMAs inside ``armed``, normalized (a new list): 20,000 adjacent
        VMAs merge in ~3 ms, kept with the plan."""
        self.tracked(armed)
        return list(self._spans)

    def runs(self, tracked: list[Range]) -> list[list[Range]]:
        """``tracked`` (ascending) cut into runs of VMAs adjacent in the layout."""
        if self._runs_for is None or self._runs_for != tracked:
            index = {r[0]: i for i, r in self.trackable}
            out: list[list[Range]] = []
            last = -2
            for r in tracked:
                i = index[r[0]]
                if i == last + 1 and out:
                    out[-1].append(r)
                else:
                    out.append([r])
                last = i
            self._runs_for, self._runs = list(tracked), out
        return self._runs


def _shared_present(shared: list[SharedScan], previous: list[Range]) -> list[Range]:
    """The present pages of the shared anonymous VMAs of a round (see :class:`SharedScan`)."""
    out: list[Range] = []
    for sc in shared:
        if sc.incremental and sc.written is not None:
            out.extend(ranges.union(ranges.clip(previous, sc.vma.start, sc.vma.end), sc.written))
            if sc.unmapped:   # the extents were read in the frozen window for these
                out.extend(ranges.intersect(sc.unmapped, sc.extents()))
        else:
            out.extend(sc.extents())
    return ranges.normalize(out)


def _extend_sorted(out: list[Range], more: list[Range]) -> None:
    """Append sorted ranges that all lie after ``out``, merging at the seam (a union
    should they not: a run scanned again after a VMA it lost)."""
    if out and more and more[0][0] < out[-1][1]:
        out[:] = ranges.union(out, more)
    elif out and more and out[-1][1] == more[0][0]:
        out[-1] = (out[-1][0], more[0][1])
        out.extend(more[1:])
    else:
        out.extend(more)


def _spans(rs: list[Range], gap: int = 64 * 4096) -> list[Range]:
    """Merge ranges closer than ``gap`` into spans: one PAGEMAP_SCAN call costs
    about as much as walking 128 pages, so scanning small gaps is cheaper than
    a call per range.  Callers intersect the results with ``rs`` again."""
    out: list[Range] = []
    for start, end in rs:
        if out and start - out[-1][1] < gap:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _vma_key(m: Mapping) -> tuple[int, int, int, int, str, str]:
    """What identifies a VMA across two reads of the layout (flags aside)."""
    return (m.start, m.end, m.offset, m.inode, m.perms, m.path)

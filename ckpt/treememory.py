"""Shared anonymous memory between the tasks of a process tree (issue 9, stage 3).

``mmap(MAP_SHARED | MAP_ANONYMOUS)`` (Python's ``mmap.mmap(-1, n)``, multiprocessing's
heaps, nginx's and postgres's shared segments) is a shmem file the kernel made for the
mapping (mm/shmem.c ``shmem_zero_setup``: ``/dev/zero (deleted)`` in /proc/PID/maps);
fork hands the same file down, so parent and child write one set of pages.  Restoring
each task on its own would give each its own copy.  CRIU's way, done by ckpt
(criu/shmem.c, /work/issue9-research/trees.md "Shared anonymous memory"):

**Dump** (:func:`shared_objects`).  Every ``/dev/zero (deleted)`` object mapped by several
live tasks is one ``shared_memory`` record in the root's state (docs/FORMAT.md): its maps
device and inode, and its mappers, root first then tree order.  Its content is stored
once: each mapper's checkpoint keeps the pages of the object offsets no earlier mapper
maps (:func:`shared_objects` gives the address ranges to leave out of the others).

**Restore.**  :func:`plan` picks, for each object, the lowest common ancestor (LCA) of its
mappers and a temporary address free in every task's recorded layout and in ckpt's own
(the tasks are forks of ckpt).  The LCA, set up before it creates its children
(:func:`premapping` wraps the builder's setup), maps the object there as
``MAP_SHARED | MAP_ANONYMOUS``: a new ``/dev/zero`` shmem file, which its children inherit
over fork.  Once the tree is built and seized, ckpt writes the stored content into the
LCA's mapping (:func:`fill`); then each mapper's rebuild places each VMA of the object with
``mremap(temp + offset, 0, length, MREMAP_MAYMOVE | MREMAP_FIXED, start)`` -- an old size
of 0 makes a new mapping of the same pages of a shared mapping (mm/mremap.c) -- and
unmaps the temporary one with the rest of the old layout.  One file for every task:
/proc/PID/maps reads ``/dev/zero (deleted)`` with the recorded offsets, as before (CRIU's
shows ``/memfd:/dev/zero``).

**Copy-on-write pages** (ckpt/cow.py, :func:`with_cow`) use the same premap: the parent
maps a private anonymous VMA its children share pages of at a temporary address and writes
its own content of those pages into it before it creates them (:func:`premap`); each child
inherits the mapping, and each rebuild *moves* it into place (``mremap`` of the whole VMA)
and writes only its other pages: the pages stay one physical page in parent and children.

Not handled here: a memfd or deleted file several tasks hold (one file object, made once
and handed down: ckpt/files/handdown.py); refused by name by
``ckpt.restorability.shared_memory_reasons``: SysV segments, ``MAP_HUGETLB`` shared memory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import procfs, ranges
from .arch import x86_64 as arch
from .errors import ImageError, NotRestorable, TargetError
from .image.frames import FrameCache
from .image.schema import SharedMemory
from .pstree import lowest_common_ancestor
from .ranges import Range
from .shmem import ANON_SHARED_PATH
from .tracker import ANON, FILE_PRIVATE, SHMEM

if TYPE_CHECKING:
    from .image import Checkpoint, VmaRecord

PAGE = 4096
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x01, 0x02, 0x20, 0x100000
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15

Key = tuple[str, int]   # (maps device, inode) of a shmem object


def anon_shared(vma: Any) -> bool:
    """The VMA maps shared anonymous memory (a ``/dev/zero`` shmem object, not a file object)."""
    return vma.kind == SHMEM and getattr(vma, "object", None) is None and vma.path == ANON_SHARED_PATH


def key(vma: Any) -> Key:
    return (vma.dev, vma.inode)


def _file_range(vma: Any) -> Range:
    """The object offsets ``vma`` maps."""
    return (vma.offset, vma.offset + (vma.end - vma.start))


# -- dump --------------------------------------------------------------------------------


def shared_objects(tasks: Sequence[tuple[int, Iterable[Any]]], select: Callable[[Any], bool] = anon_shared,
                   ) -> tuple[tuple[SharedMemory, ...], dict[int, list[Range]]]:
    """The ``shared_memory`` records of a tree's live tasks (``tasks``: (pid, VMA records),
    the root first, then tree order), and, per pid, the address ranges whose pages its
    checkpoint leaves out: object offsets an earlier mapper maps and stores.  ``select``:
    the VMAs of which objects (SysV segments and /dev/shm files: ckpt/namedshm.py)."""
    by_key: dict[Key, list[tuple[int, list[Any]]]] = {}
    for pid, vmas in tasks:
        mine: dict[Key, list[Any]] = {}
        for v in vmas:
            if select(v):
                mine.setdefault(key(v), []).append(v)
        for k, vs in mine.items():
            by_key.setdefault(k, []).append((pid, vs))
    records = []
    leave_out: dict[int, list[Range]] = {}
    for (dev, inode), mappers in by_key.items():
        if len(mappers) < 2:
            continue
        records.append(SharedMemory(dev=dev, inode=inode, mappers=tuple(pid for pid, _ in mappers)))
        stored: list[Range] = []   # object offsets an earlier mapper keeps
        for pid, vs in mappers:
            for v in vs:
                lo, hi = _file_range(v)
                shift = v.start - lo
                leave_out.setdefault(pid, []).extend(
                    (s + shift, e + shift) for s, e in ranges.intersect([(lo, hi)], stored))
            stored = ranges.union(stored, ranges.normalize(_file_range(v) for v in vs))
    return tuple(records), {pid: ranges.normalize(rs) for pid, rs in leave_out.items() if rs}


def unrecorded(records: Sequence[Any], tasks: Sequence[tuple[int, Iterable[Any]]]) -> set[Key]:
    """The keys of shared anonymous objects several of ``tasks`` map that ``records`` (the
    root's ``shared_memory``) do not list with exactly those mappers: a restore would
    give each task its own copy."""
    holders: dict[Key, set[int]] = {}
    for pid, vmas in tasks:
        for v in vmas:
            if anon_shared(v):
                holders.setdefault(key(v), set()).add(pid)
    recorded = {(r.dev, r.inode): set(r.mappers) for r in records}
    return {k for k, pids in holders.items() if len(pids) > 1 and recorded.get(k) != pids}


# -- restore: the plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class Premap:
    """One shared object: where the LCA maps it for its subtree, and who maps it."""

    dev: str
    inode: int
    owner: int             # the recorded pid of the task that creates it (the LCA of its mappers)
    base: int              # the temporary address of its offset 0
    size: int              # bytes: the highest offset any mapper maps
    mappers: tuple[int, ...]


@dataclass(frozen=True)
class CowPremap:
    """One private anonymous VMA (``[start, end)`` in the owner and in each sharer) whose pages
    the owner's children share with it: the owner maps it at ``base`` and writes ``fill`` (the
    union of the sharers' ``state.cow`` in it) before it creates them (:func:`with_cow`)."""

    owner: int
    start: int
    end: int
    base: int
    fill: tuple[Range, ...]
    sharers: dict[int, tuple[Range, ...]]   # child's recorded pid -> its shared pages in the VMA
    fd: int | None = None   # a private file mapping: the owner's fd of the file (after its setup)
    offset: int = 0
    huge: int | None = None   # MADV_HUGEPAGE or MADV_NOHUGEPAGE, as the VMA had: before its pages are written


@dataclass(frozen=True)
class MemoryPlan:
    """Every shared object of a tree's restore (:func:`plan`), and the copy-on-write VMAs
    (:func:`with_cow`, with the checkpoint of each task that premaps one)."""

    objects: tuple[Premap, ...] = ()
    cow: tuple[CowPremap, ...] = ()
    checkpoints: Mapping[int, Checkpoint] = field(default_factory=dict, compare=False, repr=False)

    def owned_by(self, pid: int) -> list[Premap]:
        return [o for o in self.objects if o.owner == pid]

    def placements(self, pid: int, vmas: Iterable[VmaRecord]) -> Placements:
        """What the rebuild of task ``pid`` (its VMA records ``vmas``) places from a premapped
        object instead of mapping it anew."""
        by_key = {(o.dev, o.inode): o for o in self.objects if pid in o.mappers}
        sources = {v.start: by_key[key(v)].base + v.offset for v in vmas if anon_shared(v) and key(v) in by_key}
        moves: dict[int, int] = {}
        placed: list[Range] = []
        discard: list[Range] = []
        for c in self.cow:
            if c.owner == pid:
                placed.extend(c.fill)
            elif pid in c.sharers:
                placed.extend(c.sharers[pid])
                discard.extend(ranges.subtract(list(c.fill), list(c.sharers[pid])))
            else:
                continue
            moves[c.start] = c.base
        temporary = [(o.base, o.base + o.size) for o in by_key.values()]
        temporary += [(c.base, c.base + c.end - c.start) for c in self.cow if c.start in moves and
                      moves[c.start] == c.base]
        return Placements(sources, tuple(temporary), moves, tuple(ranges.normalize(placed)),
                          tuple(ranges.normalize(discard)))


@dataclass(frozen=True)
class Placements:
    """For one task's rebuild: VMA start -> the temporary address its pages are at
    (``mremap`` them from there), and the temporary mappings to keep until then."""

    sources: dict[int, int] = field(default_factory=dict)
    temporary: tuple[Range, ...] = ()
    # Copy-on-write VMAs (ckpt/cow.py): VMA start -> the temporary address of the private
    # mapping to move into place whole; the pages in it that are this task's already
    # (``placed``: its rebuild must not write them, a write would unshare them); the pages
    # in it that are a sibling's, not this task's (``discard``: MADV_DONTNEED once moved).
    moves: dict[int, int] = field(default_factory=dict)
    placed: tuple[Range, ...] = ()
    discard: tuple[Range, ...] = ()


def plan(tree: Sequence[Any], records: Sequence[SharedMemory], vmas: Mapping[int, Sequence[VmaRecord]],
         what: str) -> MemoryPlan:
    """The restore's plan for the ``shared_memory`` ``records`` of a tree (``tree``: its Task
    records; ``vmas``: each live task's VMA records by recorded pid).  ``ImageError`` when a
    record does not match the VMAs; ``NotRestorable`` for memory shared but not recorded
    (``what`` names the checkpoint)."""
    live = [(t.pid, vmas[t.pid]) for t in tree if t.pid in vmas]
    missing = unrecorded(records, live)
    if missing:
        raise NotRestorable(what, [f"shared memory {dev} {inode} ({ANON_SHARED_PATH}) is mapped by several tasks "
                                   "but not recorded as shared" for dev, inode in sorted(missing)])
    parent = {t.pid: t.ppid for t in tree}
    occupied = ranges.normalize([(v.start, v.end) for _, vs in live for v in vs]
                                + [(m.start, m.end) for m in procfs.read_maps(os.getpid())])
    out = []
    for r in records:
        size = 0
        for pid in r.mappers:
            mine = [v for v in vmas.get(pid, ()) if anon_shared(v) and key(v) == (r.dev, r.inode)]
            if not mine:
                raise ImageError(f"shared memory {r.dev} {r.inode}: pid {pid} is recorded as a mapper but maps none of it")
            size = max(size, *(_file_range(v)[1] for v in mine))
        # Room on either side: ckpt's heap (brk) in the tasks grows up from its end.
        base = arch.free_area(occupied, size + (64 << 20))
        if base is None:
            raise TargetError(f"no free address range of {size:,} bytes to premap shared memory in")
        base += 32 << 20
        occupied = ranges.union(occupied, [(base, base + size)])
        out.append(Premap(r.dev, r.inode, lowest_common_ancestor(r.mappers, parent), base, size, tuple(r.mappers)))
    return MemoryPlan(tuple(out))


# -- restore: in the tasks, then ckpt ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def premap(memory: MemoryPlan, pid: int) -> None:  # pragma: no cover - in a task of the tree
    """In task ``pid`` (recorded), before it creates its children: map each object it owns at
    its temporary address (shared anonymous: a new /dev/zero shmem file, inherited over fork)."""
    _premap_cow(memory, pid, files=False)
    for o in memory.owned_by(pid):
        got = _libc.mmap(o.base, o.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                         -1, 0)
        err = ctypes.get_errno()
        if got != o.base:
            why = "the range is taken" if err == errno.EEXIST else os.strerror(err)
            raise TargetError(f"cannot map shared memory {o.dev} {o.inode} ({o.size:,} bytes) at {o.base:#x}: {why}")


def _premap_cow(memory: MemoryPlan, pid: int, files: bool) -> None:  # pragma: no cover - in a task
    """In task ``pid``, before it creates its children: map each copy-on-write VMA it owns at its
    temporary address (private anonymous; or, with ``files``, once its setup opened the files it
    maps, a private mapping of the file) and write its own content of the pages its children
    share into it, from its checkpoint; fork then gives the children these very pages."""
    mine = [c for c in memory.cow if c.owner == pid and (c.fd is not None) == files]
    if not mine:
        return
    cp = memory.checkpoints[pid]
    links = {link.id: link for link in cp.chain()}
    # Frames read here without read-ahead: its worker threads would stay in the task (and a
    # pool forked from ckpt has no threads at all).
    quiet = FrameCache()
    quiet.READ_AHEAD = 0
    for link in links.values():
        link.image_dir._frame_cache = quiet
    for c in mine:
        size = c.end - c.start
        flags = MAP_PRIVATE | MAP_FIXED_NOREPLACE | (MAP_ANONYMOUS if c.fd is None else 0)
        got = _libc.mmap(c.base, size, PROT_READ | PROT_WRITE, flags, -1 if c.fd is None else c.fd, c.offset)
        err = ctypes.get_errno()
        if got != c.base:
            why = "the range is taken" if err == errno.EEXIST else os.strerror(err)
            raise TargetError(f"cannot premap {c.start:#x}-{c.end:#x} ({size:,} bytes) at {c.base:#x}: {why}")
        if c.huge is not None and _libc.madvise(c.base, size, c.huge) != 0:
            raise TargetError(f"madvise({c.huge}) of the premapped {c.start:#x}-{c.end:#x}: "
                              f"{os.strerror(ctypes.get_errno())}")
        region = memoryview((ctypes.c_char * size).from_address(c.base)).cast("B")
        for piece in cp.resolve(c.fill):
            if piece.source == "zero" and c.fd is not None:   # an anonymous zero page over the file's
                region[piece.start - c.start:piece.end - c.start] = bytes(piece.end - piece.start)
            if piece.source != "data":
                continue   # otherwise zero, or absent: the new anonymous mapping reads zero
            for address, frame, offset, length in links[piece.checkpoint].iter_stored(piece.start, piece.end):
                at = address - c.start
                region[at:at + length] = memoryview(frame)[offset:offset + length]
        region.release()


def with_cow(memory: MemoryPlan, tree: Sequence[Any], checkpoints: Mapping[int, Checkpoint],
             fd_of: Callable[[int, VmaRecord], int]) -> MemoryPlan:
    """``memory`` with the copy-on-write VMAs of the tree (each live task's ``state.cow``,
    ckpt/cow.py): grouped by the parent's VMA, each at a temporary address free in every
    task's layout, ckpt's and the shared objects'.  ``fd_of(pid, vma)``: the fd number task
    ``pid``'s setup opens the file of its file VMA ``vma`` at.  ``ImageError`` when a task's ``cow``
    lies outside a private anonymous VMA that its parent has at the same address, or in a
    VMA it premaps itself for its own children."""
    parent = {t.pid: t.ppid for t in tree}
    groups: dict[tuple[int, int, int], dict[int, list[Range]]] = {}
    parent_vma: dict[tuple[int, int, int], VmaRecord] = {}
    for pid, cp in checkpoints.items():
        shared = ranges.from_bytes(cp.state.cow) if cp.state.cow else []
        if not shared:
            continue
        ppid = parent.get(pid)
        if ppid not in checkpoints:
            raise ImageError(f"pid {pid} records pages shared with its parent, which is not a live task of the tree")
        theirs = {_cow_key(v): v for v in checkpoints[ppid].vmas if _cow_vma(v)}
        for v in checkpoints[pid].vmas:
            inside = ranges.clip(shared, v.start, v.end)
            if not inside:
                continue
            if not _cow_vma(v) or _cow_key(v) not in theirs:
                raise ImageError(f"pid {pid} records pages shared with its parent at {v.start:#x}-{v.end:#x}, "
                                 "which is not a private anonymous mapping, or private mapping of one file, "
                                 "both have")
            groups.setdefault((ppid, v.start, v.end), {})[pid] = inside
            parent_vma[(ppid, v.start, v.end)] = theirs[_cow_key(v)]
        if ranges.subtract(shared, ranges.normalize((v.start, v.end) for v in checkpoints[pid].vmas)):
            raise ImageError(f"pid {pid} records pages shared with its parent outside its mappings")
    if not groups:
        return memory
    owners = {(owner, start) for owner, start, _ in groups}
    sharer_vmas = {(pid, start) for (_, start, _), sharers in groups.items() for pid in sharers}
    if owners & sharer_vmas:
        pid, start = sorted(owners & sharer_vmas)[0]
        raise ImageError(f"pid {pid} records pages of {start:#x} shared both with its parent and its children")
    occupied = ranges.normalize([(v.start, v.end) for cp in checkpoints.values() for v in cp.vmas]
                                + [(m.start, m.end) for m in procfs.read_maps(os.getpid())]
                                + [(o.base, o.base + o.size) for o in memory.objects])
    out = []
    for (owner, start, end), sharers in sorted(groups.items()):
        base = arch.free_area(occupied, end - start + (64 << 20))
        if base is None:
            raise TargetError(f"no free address range of {end - start:,} bytes to premap {start:#x}-{end:#x} in")
        base += 32 << 20   # room on either side, as plan()
        occupied = ranges.union(occupied, [(base, base + end - start)])
        fill = ranges.normalize(r for rs in sharers.values() for r in rs)
        vma = parent_vma[(owner, start, end)]
        fd = fd_of(owner, vma) if vma.kind == FILE_PRIVATE else None
        out.append(CowPremap(owner, start, end, base, tuple(fill),
                             {pid: tuple(rs) for pid, rs in sorted(sharers.items())}, fd,
                             vma.offset if fd is not None else 0,
                             MADV_HUGEPAGE if "hg" in vma.flags else MADV_NOHUGEPAGE if "nh" in vma.flags else None))
    return dataclasses.replace(memory, cow=tuple(out), checkpoints=checkpoints)


def _cow_vma(v: Any) -> bool:
    """A VMA record whose pages may be copy-on-write shared (ckpt/cow.py ``private_anonymous``,
    ``private_file``)."""
    if v.perms[3] != "p" or "gd" in v.flags:
        return False
    if v.kind == FILE_PRIVATE:
        return v.object is None and v.path.startswith("/")
    return v.kind == ANON and v.path == "" and "dp" not in v.flags


def _cow_key(v: Any) -> tuple[object, ...]:
    """What parent and child must both map for the child to inherit the parent's premap."""
    return (v.start, v.end, v.kind, v.path, v.dev, v.inode, v.offset)


def premapping(setup: Callable[..., list[str]], memory: MemoryPlan) -> Callable[..., list[str]]:
    """The builder's ``setup`` that premaps the task's shared objects first (:func:`premap`)."""
    if not memory.objects and not memory.cow:
        return setup

    def wrapped(task: Any, keep: set[int]) -> list[str]:  # pragma: no cover - in a task
        premap(memory, task.pid)
        notes = setup(task, keep)
        _premap_cow(memory, task.pid, files=True)   # with the files its setup opened
        return notes
    return wrapped


def fill(memory: MemoryPlan, pids: Mapping[int, int], checkpoints: Mapping[int, Checkpoint]) -> None:
    """Once the tree is built and seized, before any rebuild: write each object's stored
    content into its owner's temporary mapping (``pids``: recorded -> now).  Each mapper's
    checkpoint holds the pages of the offsets no earlier mapper maps; holes stay holes."""
    from .rebuild import _PageWriter   # the rebuild's batched process_vm_writev

    for o in memory.objects:
        owner = pids[o.owner]
        mem_fd = os.open(f"/proc/{owner}/mem", os.O_RDWR | os.O_CLOEXEC)
        writer = _PageWriter(owner, mem_fd)
        try:
            for pid in o.mappers:
                cp = checkpoints[pid]
                links = {link.id: link for link in cp.chain()}
                mine = [v for v in cp.vmas if anon_shared(v) and key(v) == (o.dev, o.inode)]
                for v in mine:
                    shift = o.base + v.offset - v.start
                    for piece in cp.resolve([(v.start, v.end)]):
                        if piece.source != "data":
                            continue   # zero: the new object is zero; left out: an earlier mapper's
                        for address, frame, offset, length in links[piece.checkpoint].iter_stored(piece.start,
                                                                                                piece.end):
                            writer.add(address + shift, frame, offset, length)
            writer.flush()
        finally:
            writer.close()
            os.close(mem_fd)

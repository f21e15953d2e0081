"""Shared anonymous memory, stored incrementally when that is sound (issue 9 item 3).

A page of a shared anonymous object (``mmap(MAP_SHARED | MAP_ANONYMOUS)``, ``/dev/zero
(deleted)`` in maps) changes only through some process's page tables, or through a file
descriptor of the object (``/proc/PID/map_files``: write(2), fallocate, truncate) --
it has no name anything else could open.  Each mapper of the dumped tree has the object's
VMAs armed with uffd-wp like its private memory (ckpt/tracker.py :class:`SharedScan`), so
the union of the mappers' written-scans, in object offsets (the maps offset column +
address - start), is what was written through page tables -- *if* every page table that
could write it was tracked throughout.  So an object is stored incrementally only when
all of these hold, and whole otherwise, with a note saying why (:func:`decide`):

* every mapper's tracking continued from its own last checkpoint, in which it mapped the
  object with the same VMAs (start, end, offset), armed then (``tracking.armed``) and
  still registered now (the written-scan's CHECK_WPASYNC);
* the mappers are the same tasks as at the last checkpoint (``state.shared_memory``
  lists the mappers of an object several tasks map; an object absent from it had one);
* no mapper forked, nor punched a hole with ``madvise(MADV_REMOVE)``, since
  (ckpt/forkcount.py: a child forked without EVENT_FORK is not registered,
  fs/userfaultfd.c ``dup_userfaultfd``, and may write and exit unseen; a hole punched in
  protected pages leaves markers and no written bit);
* no process outside the tree maps it (:func:`outside_mappers`, read before the freeze);
* nothing wrote it through a file descriptor (write(2), fallocate, ftruncate on an fd of
  ``/proc/PID/map_files``): each mapper's inotify watches the object for IN_MODIFY
  (fs/read_write.c ``vfs_write`` -> ``fsnotify_modify``; ``vfs_fallocate``; ``do_truncate``),
  kept by the holder between dumps, drained in the frozen window.  The object's ctime
  cannot tell: once its pages are write-protected, every first write through a mapping
  faults and updates it (mm/memory.c ``fault_dirty_shared_page`` -> ``file_update_time``,
  shmem has no ``page_mkwrite``; measured), as write(2) does.

The pages stored are the written ones; the present set is the last checkpoint's plus
them (:class:`ckpt.tracker.SharedScan`: the object can lose a page only by a hole punch
or a truncate, which make it whole).  Pages the
object holds but some mapper's page tables hold nothing for are copied too, on kernels
whose written-scan does not report zapped pages (``SharedScan.unmapped``).  On the others
(``features.zapped_pages_reported``) that set is empty once armed: arming leaves a
protected pte or a uffd-wp marker on every page of the VMA (mm/mprotect.c
``change_pte_range`` with MM_CP_UFFD_WP: markers for file-backed VMAs), a zap keeps the
marker of a protected pte (mm/memory.c ``zap_install_uffd_wp_if_needed``), and a written
pte that is zapped (MADV_DONTNEED, reclaim) leaves ``pte_none``, which the written-scan
reports as written.

Each page is stored once, by the first mapper that maps its offset (ckpt/treememory.py
``shared_objects``, whose ``left_out`` ranges the others skip).  Left alone: a process
with CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE that opens a mapper's map_files link, maps
it, writes and unmaps between two dumps writes through page tables nobody tracks.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import ranges
from ._sys import inotify
from .memcopy import Chunk
from .procfs import Mapping
from .ranges import Range
from .shmem import ANON_SHARED_PATH, SharedObject
from .tracker import SHMEM, Round, SharedScan

if TYPE_CHECKING:
    from .image import Checkpoint

Key = tuple[str, int]   # (maps device, inode)
IN_MODIFY, IN_Q_OVERFLOW = 0x2, 0x4000   # include/uapi/linux/inotify.h


@dataclass
class Mapper:
    """One task of the dumped tree, as its frozen round found it."""

    pid: int
    rnd: Round
    previous: Checkpoint | None   # its own last checkpoint, when this dump continues its tracking
    forks: int | None             # its fork counter now (None: it has none)
    counter_why: str = ""         # why it has none
    watch: int = -1               # its inotify fd (TaskTracking.watch), -1 without one
    left_out: list[Range] = field(default_factory=list)   # stored by an earlier mapper (treememory)


@dataclass
class TaskShared:
    """What one task's checkpoint gets of the shared anonymous memory it maps."""

    copy: list[Range] = field(default_factory=list)     # pages to store, read from the objects
    whole: list[Range] = field(default_factory=list)    # its VMAs of objects stored whole
    objects: list[SharedObject] = field(default_factory=list)
    shared: tuple[tuple[str, int, int], ...] = ()       # [dev, inode, watch descriptor]: state.tracking.shared
    forks: int | None = None                            # its fork counter: state.tracking.forks


def outside_mappers() -> dict[Key, set[int]]:
    """For each shared anonymous object mapped anywhere, the processes mapping it
    (/proc/*/maps).  Read while the tree runs: a process outside it that maps an object
    the tree maps makes the object's checkpoint whole (see the module docstring)."""
    out: dict[Key, set[int]] = {}
    needle = b" " + ANON_SHARED_PATH.encode() + b"\n"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/maps", "rb") as f:
                data = f.read()
        except OSError:
            continue   # exited; or a kernel thread's empty maps
        if needle not in data:
            continue
        for line in data.splitlines():
            if line.endswith(needle[:-1]):
                fields = line.split()
                out.setdefault((fields[3].decode(), int(fields[4])), set()).add(int(name))
    return out


def _to_offsets(rs: Iterable[Range], vma: Mapping) -> list[Range]:
    """Address ranges of ``vma`` as offsets in the object it maps."""
    shift = vma.offset - vma.start
    return [(s + shift, e + shift) for s, e in rs]


def _to_addresses(offsets: list[Range], vma: Mapping) -> list[Range]:
    """The object offsets ``vma`` maps among ``offsets``, as its addresses."""
    lo = vma.offset
    shift = vma.start - lo
    return [(s + shift, e + shift) for s, e in ranges.clip(offsets, lo, lo + vma.end - vma.start)]


def _previous_vmas(cp: Checkpoint, key: Key) -> set[tuple[int, int, int]]:
    return {(v.start, v.end, v.offset) for v in cp.vmas
            if v.kind == SHMEM and v.object is None and v.path == ANON_SHARED_PATH and (v.dev, v.inode) == key}


def decide(mappers: Sequence[Mapper], head: Checkpoint | None, outside: dict[Key, set[int]] | None,
           tree: set[int]) -> tuple[dict[int, TaskShared], list[str]]:
    """What each task stores of the shared anonymous memory it maps (``mappers``: the
    tree's live tasks, root first then tree order; ``head``: the root's last checkpoint;
    ``outside``: :func:`outside_mappers`, None when not read; ``tree``: the pids of the
    frozen tree), and notes naming each object stored whole in an incremental dump."""
    out = {m.pid: TaskShared() for m in mappers}
    by_key: dict[Key, list[tuple[Mapper, list[SharedScan]]]] = {}
    for m in mappers:
        mine: dict[Key, list[SharedScan]] = {}
        for sc in m.rnd.shared:
            mine.setdefault((sc.vma.dev, sc.vma.inode), []).append(sc)
        for k, scans in mine.items():
            by_key.setdefault(k, []).append((m, scans))
    recorded = {(r.dev, r.inode): set(r.mappers) for r in head.state.shared_memory} if head is not None else {}
    modified = {m.pid: _modified(m) for m in mappers}
    notes: list[str] = []
    for k, group in by_key.items():
        why = _why_whole(k, group, recorded, outside, tree, modified)
        if why:
            copy_off = ranges.normalize(r for _, scans in group for sc in scans for r in _to_offsets(sc.extents(), sc.vma))
            if any(m.previous is not None for m, _ in group):
                size = ranges.total(copy_off)
                notes.append(f"shared memory {k[0]} {k[1]} ({size:,} bytes) stored whole: {why}")
        else:
            # Written pages are the object's (one it dropped since makes it whole): no extents
            # needed, except for the pages some page table lost (SharedScan.unmapped).
            copy_off = ranges.normalize(r for _, scans in group for sc in scans
                                        for r in _to_offsets(sc.written or [], sc.vma))
            unmapped = ranges.normalize(r for _, scans in group for sc in scans
                                        for r in _to_offsets(sc.unmapped or [], sc.vma))
            if unmapped:
                extents = ranges.normalize(r for _, scans in group for sc in scans
                                           for r in _to_offsets(sc.extents(), sc.vma))
                copy_off = ranges.union(copy_off, ranges.intersect(unmapped, extents))
            for _, scans in group:
                for sc in scans:
                    sc.incremental = True
        for m, scans in group:
            t = out[m.pid]
            for sc in scans:
                t.copy.extend(ranges.subtract(_to_addresses(copy_off, sc.vma), m.left_out))
                t.objects.append(sc.obj)
                if why:
                    t.whole.append((sc.vma.start, sc.vma.end))
    for m in mappers:
        out[m.pid].shared = _watch(m, {k: scans[0].obj for k, group in by_key.items()
                                       for mm, scans in group if mm is m})
    for t in out.values():
        t.copy = ranges.normalize(t.copy)
        t.whole = ranges.normalize(t.whole)
    return out, notes


def _modified(m: Mapper) -> set[int] | None:
    """The watch descriptors of ``m``'s inotify that saw IN_MODIFY since it was last drained
    (None: all of them may have, its queue overflowed or it has none).  Drains it."""
    if m.watch < 0:
        return None
    seen: set[int] = set()
    while True:
        try:
            data = os.read(m.watch, 65536)
        except BlockingIOError:
            return seen
        pos = 0
        while pos + 16 <= len(data):
            wd, mask, _cookie, length = struct.unpack_from("=iIII", data, pos)
            if mask & IN_Q_OVERFLOW:
                return None
            if mask & IN_MODIFY:
                seen.add(wd)
            pos += 16 + length


def _watch(m: Mapper, objects: dict[Key, SharedObject]) -> tuple[tuple[str, int, int], ...]:
    """Watch the objects ``m`` maps now (an inode watched already keeps its descriptor:
    fs/notify/inotify/inotify_user.c ``inotify_update_existing_watch``), stop watching the
    ones it mapped at its last checkpoint and does not now (a watch pins the inode, and
    with it the object's memory); the ``state.tracking.shared`` entries."""
    if m.watch < 0:
        return ()
    out = []
    for (dev, inode), obj in objects.items():
        wd = inotify.add_watch(m.watch, f"/proc/self/fd/{obj.fd}", IN_MODIFY)
        out.append((dev, inode, wd))
    if m.previous is not None and m.previous.state.tracking is not None:   # the same inotify then
        for dev, inode, wd in m.previous.state.tracking.shared:
            if (dev, inode) not in objects:
                with contextlib.suppress(OSError):
                    inotify.rm_watch(m.watch, wd)
    return tuple(out)


def _why_whole(key: Key, group: list[tuple[Mapper, list[SharedScan]]], recorded: dict[Key, set[int]],
               outside: dict[Key, set[int]] | None, tree: set[int], modified: dict[int, set[int] | None]) -> str:
    """Why object ``key`` must be stored whole ('' if it may be stored incrementally)."""
    pids = {m.pid for m, _ in group}
    for m, _ in group:
        if m.previous is None:
            return f"pid {m.pid}'s checkpoint is not incremental"
    if recorded.get(key, set()) != (pids if len(pids) > 1 else set()):
        return "the tasks mapping it changed since the last checkpoint"
    if outside is None:
        return "the processes outside the tree mapping it are not known"
    strangers = sorted(outside.get(key, set()) - tree)
    if strangers:
        return f"pid {strangers[0]} outside the dumped tree maps it"
    for m, scans in group:
        assert m.previous is not None
        if _previous_vmas(m.previous, key) != {(sc.vma.start, sc.vma.end, sc.vma.offset) for sc in scans}:
            return f"pid {m.pid} maps it differently than at the last checkpoint"
        tracking = m.previous.state.tracking
        armed = ranges.from_bytes(tracking.armed) if tracking is not None else []
        if any(sc.written is None or not ranges.covers(armed, sc.vma.start, sc.vma.end) for sc in scans):
            return f"pid {m.pid}'s mapping of it was not write-tracked since the last checkpoint"
        if m.forks is None:
            return f"pid {m.pid} has no fork counter ({m.counter_why})"
        if tracking is None or tracking.forks is None:
            return f"pid {m.pid} had no fork counter at the last checkpoint"
        if tracking.forks != m.forks:
            return (f"pid {m.pid} forked since the last checkpoint ({m.forks - tracking.forks} processes): "
                    "a child may have written it")
        wd = next((w for d, i, w in tracking.shared if (d, i) == key), None)
        seen = modified[m.pid]
        if wd is None or seen is None:
            return f"pid {m.pid} did not watch it for writes through a file descriptor"
        if wd in seen:
            return "it was written through a file descriptor (write, fallocate or truncate) since the last checkpoint"
    return ""


def read(plans: dict[int, TaskShared], buffer: bytearray) -> tuple[dict[int, Chunk], bytearray]:
    """Read each task's ``copy`` from its objects into chunks laid out in ``buffer`` (grown
    if too small: returned); the chunks live as long as the buffer is not reused."""
    total = sum(ranges.total(t.copy) for t in plans.values())
    if len(buffer) < total:
        buffer = bytearray(total)
    view = memoryview(buffer)
    pos = 0
    chunks: dict[int, Chunk] = {}
    for pid, t in plans.items():
        if not t.copy:
            continue
        pieces: list[Range] = []
        start_pos = pos
        for obj in sorted(t.objects, key=lambda o: o.start):
            for s, e in ranges.clip(t.copy, obj.start, obj.end):
                obj.read(s, e, view[pos:pos + e - s])
                pieces.append((s, e))
                pos += e - s
        chunks[pid] = Chunk(pieces, view[start_pos:pos])
    return chunks, buffer

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

Not handled here: a memfd or deleted file several tasks hold (one file object, made once
and handed down: ckpt/files/handdown.py); refused by name by
``ckpt.restorability.shared_memory_reasons``: SysV segments, ``MAP_HUGETLB`` shared memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import procfs, ranges
from .arch import x86_64 as arch
from .errors import ImageError, NotRestorable, TargetError
from .image.schema import SharedMemory
from .pstree import lowest_common_ancestor
from .ranges import Range
from .shmem import ANON_SHARED_PATH
from .tracker import SHMEM

if TYPE_CHECKING:
    from .image import Checkpoint, VmaRecord

PAGE = 4096
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x01, 0x20, 0x100000

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
class MemoryPlan:
    """Every shared object of a tree's restore (:func:`plan`)."""

    objects: tuple[Premap, ...] = ()

    def owned_by(self, pid: int) -> list[Premap]:
        return [o for o in self.objects if o.owner == pid]

    def placements(self, pid: int, vmas: Iterable[VmaRecord]) -> Placements:
        """What the rebuild of task ``pid`` (its VMA records ``vmas``) places from a premapped
        object instead of mapping it anew."""
        by_key = {(o.dev, o.inode): o for o in self.objects if pid in o.mappers}
        sources = {v.start: by_key[key(v)].base + v.offset for v in vmas if anon_shared(v) and key(v) in by_key}
        return Placements(sources, tuple((o.base, o.base + o.size) for o in by_key.values()))


@dataclass(frozen=True)
class Placements:
    """For one task's rebuild: VMA start -> the temporary address its pages are at
    (``mremap`` them from there), and the temporary mappings to keep until then."""

    sources: dict[int, int] = field(default_factory=dict)
    temporary: tuple[Range, ...] = ()


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


def premap(memory: MemoryPlan, pid: int) -> None:  # pragma: no cover - in a task of the tree
    """In task ``pid`` (recorded), before it creates its children: map each object it owns at
    its temporary address (shared anonymous: a new /dev/zero shmem file, inherited over fork)."""
    for o in memory.owned_by(pid):
        got = _libc.mmap(o.base, o.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                         -1, 0)
        err = ctypes.get_errno()
        if got != o.base:
            why = "the range is taken" if err == errno.EEXIST else os.strerror(err)
            raise TargetError(f"cannot map shared memory {o.dev} {o.inode} ({o.size:,} bytes) at {o.base:#x}: {why}")


def premapping(setup: Callable[..., list[str]], memory: MemoryPlan) -> Callable[..., list[str]]:
    """The builder's ``setup`` that premaps the task's shared objects first (:func:`premap`)."""
    if not memory.objects:
        return setup

    def wrapped(task: Any, keep: set[int]) -> list[str]:  # pragma: no cover - in a task
        premap(memory, task.pid)
        return setup(task, keep)
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

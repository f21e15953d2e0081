"""File objects: memfds and files deleted while open, whose content a checkpoint keeps.

A memfd (memfd_create(2)) has no path, and a file unlinked while a process
holds it open -- a *ghost*, as CRIU calls it -- has lost its own: nothing
outside the process can give either back.  So a checkpoint keeps each one, as
one *file object* (``state.objects``, docs/FORMAT.md ``object``): content,
size, mode, owner, times, and a memfd's name and seals.  Whatever refers to it
refers to the object: its open files (kinds ``"memfd"`` and ``"ghost"``,
ckpt/files/memfd.py and ghost.py) and its mappings (``vma.object``).  A restore
makes each object once and gives every one of them that object again: a write
through a mapping shows through an fd, as it did.

**Dump** (the target frozen).  :class:`ObjectSet` records the objects met in
the fd table (each fd's ``pidfd_getfd`` copy), then those met in the mappings
(``/proc/PID/map_files/START-END``, which needs CAP_SYS_ADMIN or
CAP_CHECKPOINT_RESTORE: without it a shared mapping is stored from the page
tables as shared memory, ckpt/shmem.py, and a private one is refused), once
each by ``(st_dev, st_ino)``.  The content is read through an open file of
ckpt's own -- ``/proc/self/fd/N`` reopened ``O_RDONLY | O_NOATIME``, so the
target's offset, status flags and access time stay as they were -- over its
data extents only (``SEEK_DATA``/``SEEK_HOLE``: holes stay holes), into memory;
the dump stores it after the thaw in the checkpoint's page frames, indexed by
file offset (``object_extents``).  **Whole in every checkpoint**: a write
through an fd leaves nothing a later dump could find (unlike a write to
memory, which the tracker sees), so an object is never resolved through older
checkpoints.  A memfd's seals are ``F_GET_SEALS``; a hugetlbfs memfd's huge
page size is its ``st_blksize``.  A ghost is recorded only when its data is at
most the ghost limit (ckpt/files/ghost.py), its link count is 0 (a file
unlinked from one name and linked at another lives on at the other: refused),
and its directory still exists, reached without a symlink, on the file's own
filesystem -- which no kernel-internal unlinked file's is.  Anything else is
recorded with a ``problem``, and refused by name at ``dump --kill`` and
restore.

**Restore.**  In the restore child, before the open files, :func:`create`
makes each object the restore needs (a memfd: ckpt/files/memfd.py ``make``; a
ghost, created and unlinked in its directory: ckpt/files/ghost.py ``make``)
with the restored process's filesystem identity for images not root's, so
that the object belongs to that user and the kernel checks its directory as
that user.  Its fd (O_RDWR) goes at a fixed number above every saved fd, and
an O_RDONLY one beside it when a shared mapping had no VM_MAYWRITE (mapped
read-only after F_SEAL_WRITE, or from an O_RDONLY fd: mapped so again, the
kernel counts no writable mapping and F_SEAL_WRITE can be added).  The open
files reopen it through /proc/self/fd; then :func:`finish` sets its mode (and
owner, for root-trusted images: otherwise it is the restored user's, with a
note when the recorded owner differs).  The rebuild (the parent, which reads
the images) fills the content (:class:`Filler`: ``pwrite`` of each stored
extent through a ``pidfd_getfd`` copy, zeros written where the data was zero,
``ftruncate`` to the size; a hugetlbfs memfd through a mapping: hugetlbfs has
no ``write``), maps it, and only then sets its times (mmap sets the access
time) and adds a memfd's seals: a seal may forbid what the restore does
(F_SEAL_WRITE writable mappings, F_SEAL_EXEC a chmod, F_SEAL_GROW the writes).

**Trees.**  The tasks of a dumped tree share one registry (``ObjectSet.kept``):
an object an earlier task keeps is recorded by the others with ``stored_by``
(that task's pid) and read once.  A restore makes such an object once, in the
lowest common ancestor of the tasks that need it, and hands it down
(ckpt/files/handdown.py, "file objects"): every task maps and reopens the same
file, as they did.

**Not restored**: the inode number and ctime (a new file); a ghost's
directory must exist (it is not made again).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import procfs, ranges, trust
from .._sys import fs
from .._sys.pidfd import pidfd_getfd, pidfd_open
from ..errors import ImageError, UntrustedImage
from ..image.schema import Identity, Object, State
from ..ranges import Range
from ..shmem import DELETED_SUFFIX, PAGE, file_extents, object_type, pread_full
from . import ghost, memfd

if TYPE_CHECKING:
    from ..image import Checkpoint, VmaRecord

__all__ = ["ObjectSet", "ObjectPlan", "PlannedObject", "Filler", "plan", "preflight", "create",
           "finish", "reasons", "describe", "mapped_objects"]

MAX_ZERO_WRITE = 1 << 20
_ZEROS = bytes(MAX_ZERO_WRITE)


# -- dump (the target is frozen) ---------------------------------------------------------


@dataclass
class _Object:
    """What the dump keeps of one object until it is stored."""

    record: dict[str, Any]                               # the fields of its Object, filled in as read
    extents: list[Range] = field(default_factory=list)   # file offsets of its data, page-aligned
    data: bytearray | None = None                        # those ranges back to back (None: refused)


class ObjectSet:
    """The file objects of one frozen target (module docstring), each recorded once.

    ``ghost_limit`` is the most data a ghost may have (``dump --ghost-limit``).  ``kept``:
    the objects whose content another task of the same dump of a tree keeps already,
    ``(st_dev, st_ino) -> its pid``, shared by the ObjectSets of the tree's tasks (each
    task's frozen at once): an object met again is recorded with ``stored_by`` that pid
    and not read again, so that its content is stored once (:mod:`ckpt.files.handdown`
    makes it once at restore)."""

    def __init__(self, pid: int, ghost_limit: int = ghost.DEFAULT_GHOST_LIMIT,
                 kept: dict[tuple[int, int], int] | None = None) -> None:
        self.pid = pid
        self.ghost_limit = ghost_limit
        self.kept: dict[tuple[int, int], int] = {} if kept is None else kept
        self._by_inode: dict[tuple[int, int], _Object] = {}

    def from_fd(self, source: int, target: str) -> dict[str, Any]:
        """The record of the object behind ``source`` (a ``pidfd_getfd`` copy of the target's
        fd, whose /proc link is ``target``), recorded now if it is new."""
        return self._record(source, target).record

    def from_mappings(self, maps: Iterable[procfs.Mapping]) -> None:
        """Record the objects behind the target's mappings that no fd showed (kept memfds and
        deleted files, by their maps path), through /proc/PID/map_files."""
        for m in maps:
            if not object_type(m.path) or self.id_of_mapping(m) is not None:
                continue
            link = f"/proc/{self.pid}/map_files/{m.start:x}-{m.end:x}"
            try:
                fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
            except OSError as err:
                if err.errno == errno.ESRCH:
                    raise
                if err.errno in (errno.EPERM, errno.EACCES):
                    continue   # no CAP_CHECKPOINT_RESTORE: shared memory from the page tables, or refused
                self._problem(m, f"/proc/PID/map_files cannot be opened: {err.strerror}")
                continue
            try:
                expected = trust.maps_identity(m.dev, m.inode)
                st = os.fstat(fd)
                if expected is None or (st.st_dev, st.st_ino) != (expected.dev, expected.ino):
                    self._problem(m, "the mapping changed while the dump read it")
                    continue
                self._record(fd, m.path)
            finally:
                os.close(fd)

    def id_of_mapping(self, m: procfs.Mapping) -> int | None:
        """The id of the object VMA ``m`` maps, if it was recorded."""
        ident = trust.maps_identity(m.dev, m.inode)
        obj = self._by_inode.get((ident.dev, ident.ino)) if ident is not None else None
        return obj.record["id"] if obj is not None else None

    def records(self) -> list[Object]:
        """``state.objects``, by id (the records made now: a key the schema does not declare fails)."""
        return [Object(**obj.record) for obj in self._by_inode.values()]

    @property
    def bytes(self) -> int:
        """The content held in memory, to be stored."""
        return sum(len(obj.data) for obj in self._by_inode.values() if obj.data is not None)

    def store(self, writer: Any) -> None:
        """Hand each object's content to the checkpoint writer (after the thaw) and drop it."""
        for obj in self._by_inode.values():
            if obj.data is not None:
                writer.add_object(obj.record["id"], obj.extents, obj.data)
                obj.data = None

    # -- recording ---------------------------------------------------------------------

    def _new(self, key: tuple[int, int], path: str, st: os.stat_result | None) -> _Object:
        kind = object_type(path) or "ghost"
        name = memfd.memfd_name(path) if kind == "memfd" else path.removesuffix(DELETED_SUFFIX)
        record = {
            "id": len(self._by_inode) + 1, "type": kind, "name": name,
            "size": st.st_size if st else 0, "mode": st.st_mode if st else 0,
            "uid": st.st_uid if st else 0, "gid": st.st_gid if st else 0,
            "atime_ns": st.st_atime_ns if st else 0, "mtime_ns": st.st_mtime_ns if st else 0,
            "dev": key[0], "ino": key[1], "seals": 0, "huge_page": 0, "dir": None, "problem": "",
            "stored_by": 0,
        }
        obj = self._by_inode[key] = _Object(record)
        return obj

    def _problem(self, m: procfs.Mapping, why: str) -> None:
        ident = trust.maps_identity(m.dev, m.inode)
        key = (ident.dev, ident.ino) if ident is not None else (-1, m.start)
        if key not in self._by_inode:
            self._new(key, m.path, None).record["problem"] = why

    def _record(self, source: int, path: str) -> _Object:
        st = os.fstat(source)
        key = (st.st_dev, st.st_ino)
        obj = self._by_inode.get(key)
        if obj is not None:
            return obj
        obj = self._new(key, path, st)
        record = obj.record
        record["problem"] = self._check(record, st)
        if record["problem"]:
            return obj
        keeper = self.kept.get(key)
        if keeper is not None and keeper != self.pid:
            # Another task of the tree keeps its content, seals and all (read while frozen
            # with this one); a restore makes it from that task's record.
            record["stored_by"] = keeper
            return obj
        try:
            reader = _reader(source)
        except OSError as err:
            record["problem"] = f"ckpt cannot read it ({err.strerror})"
            return obj
        try:
            if record["type"] == "memfd":
                record["seals"] = fcntl.fcntl(reader, memfd.F_GET_SEALS)
                record["huge_page"] = st.st_blksize if st.st_blksize > PAGE else 0
            obj.extents = file_extents(reader, 0, -(-st.st_size // PAGE) * PAGE)
            total = ranges.total(obj.extents)
            if record["type"] == "ghost" and total > self.ghost_limit:
                record["problem"] = (f"its {total:,} bytes of data are more than the ghost limit "
                                     f"({self.ghost_limit:,} bytes; dump --ghost-limit)")
                obj.extents = []
                return obj
            obj.data = bytearray(total)
            view, at = memoryview(obj.data), 0
            for start, end in obj.extents:
                pread_full(reader, start, view[at:at + end - start])
                at += end - start
            self.kept[key] = self.pid
        finally:
            os.close(reader)
        return obj

    def _check(self, record: dict[str, Any], st: os.stat_result) -> str:
        """Why the object cannot be kept ("" when it can); sets a ghost's directory."""
        if not stat.S_ISREG(st.st_mode):
            return "it is not a regular file"
        if record["type"] == "memfd":
            return ""
        if st.st_nlink:
            return (f"it was unlinked from that name but has {st.st_nlink} other link(s), which ckpt cannot "
                    "find")
        directory = os.path.dirname(record["name"])
        try:
            dirfd = fs.openat2(directory, os.O_PATH | os.O_DIRECTORY,
                               fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS)
        except OSError as err:
            return f"its directory {directory} cannot be opened ({err.strerror}): a restore makes it again there"
        try:
            found = trust.FileIdentity.of(fd=dirfd)
        finally:
            os.close(dirfd)
        if found.dev != st.st_dev:
            return (f"its directory {directory} is on another filesystem (a kernel-internal file, or the "
                    "directory was replaced): a restore makes it again there")
        record["dir"] = Identity(**found.record())
        return ""


def _reader(source: int) -> int:
    """An open file of ckpt's own on the file of ``source`` (any access mode, O_PATH too),
    for reading without touching the target's offset, flags or the access time."""
    path = f"/proc/self/fd/{source}"
    try:
        return os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC | os.O_NOCTTY)
    except PermissionError:   # O_NOATIME: only the owner or CAP_FOWNER (fs/namei.c may_open)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)


# -- what a checkpoint says ------------------------------------------------------------


def describe(record: Object) -> str:
    """"the memfd memfd:x", "the deleted file /tmp/x"."""
    return f"the memfd memfd:{record.name}" if record.type == "memfd" else \
        f"the deleted file {record.name}"


def reasons(state: State, vmas: Iterable[Any]) -> list[str]:
    """Mappings of objects the checkpoint could not keep (their open files say it themselves,
    ckpt/files/memfd.py), one reason per object."""
    by_id = {o.id: o for o in state.objects}
    where: dict[int, list[str]] = {}
    for vma in vmas:
        obj_id = getattr(vma, "object", None)
        if obj_id is not None and obj_id in by_id and by_id[obj_id].problem:
            where.setdefault(obj_id, []).append(f"{vma.start:#x}-{vma.end:#x}")
    return [f"the mapping at {', '.join(at)} of {describe(by_id[obj_id])}: {by_id[obj_id].problem}"
            for obj_id, at in where.items()]


# -- restore ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedObject:
    """One object the restore child makes, and where its fds go."""

    record: Object
    number: int               # its O_RDWR fd in the child
    ro_number: int | None     # an O_RDONLY fd, for shared mappings without VM_MAYWRITE

    @property
    def id(self) -> int:
        return self.record.id


@dataclass(frozen=True)
class ObjectPlan:
    """Every object the restore makes (those at fds >= 3 or mapped), and how."""

    objects: tuple[PlannedObject, ...] = ()
    trusted: bool = False     # root-trusted images: the recorded owner is given back
    same_boot: bool = False   # recorded mount ids are comparable
    # Ids of objects the tree makes once and hands down (ckpt/files/handdown.py): the task
    # puts the handed file at their numbers; the tree fills and seals them once.
    handed: frozenset[int] = frozenset()

    def numbers(self) -> list[int]:
        """Every fd number the child holds for the objects (the rebuild closes them)."""
        return [n for o in self.objects for n in (o.number, o.ro_number) if n is not None]

    def fd_for(self, obj_id: int, flags: int) -> int:
        """The child's fd of object ``obj_id`` opened ``flags`` (O_RDWR or O_RDONLY), to map."""
        for o in self.objects:
            if o.id == obj_id:
                number = o.ro_number if flags == os.O_RDONLY and o.ro_number is not None else o.number
                return number
        raise ImageError(f"file object {obj_id} is mapped but was not made")


def plan(state: State, wanted: Collection[int], read_only: Collection[int], first: int, *,
         trusted: bool, same_boot: bool) -> tuple[ObjectPlan, int]:
    """The objects ``wanted`` (by id: at fds >= 3, or mapped), their fds from number ``first``
    (an O_RDONLY one more for each of ``read_only``); the plan and the next free number."""
    by_id = {o.id: o for o in state.objects}
    out = []
    number = first
    for obj_id in sorted(wanted):
        if obj_id not in by_id:
            raise ImageError(f"file object {obj_id} is referred to but not recorded")
        ro = number + 1 if obj_id in read_only else None
        out.append(PlannedObject(by_id[obj_id], number, ro))
        number += 2 if ro is not None else 1
    return ObjectPlan(tuple(out), trusted, same_boot), number


def preflight(obj_plan: ObjectPlan) -> None:
    """Before the fork, as the child will (its filesystem identity taken): each ghost's
    directory opens as the dump saw it, and that identity may create a file in it."""
    for o in obj_plan.objects:
        if o.record.type != "ghost":
            continue
        directory = os.path.dirname(o.record.name)
        what = f"the directory of {describe(o.record)}"
        dirfd = trust.open_verified(directory, os.O_PATH | os.O_DIRECTORY,
                                    trust.FileIdentity.from_record(o.record.dir), what,
                                    same_boot=obj_plan.same_boot)
        try:
            if not os.access(f"/proc/self/fd/{dirfd}", os.W_OK | os.X_OK, effective_ids=True):
                uid, gid, _ = fs.thread_fs_identity()
                raise UntrustedImage(f"{what}: uid {uid} (gid {gid}) may not create a file in {directory}")
        finally:
            os.close(dirfd)


def make(record: Object, same_boot: bool) -> tuple[int, list[str]]:  # pragma: no cover - in a task
    """A new file for object ``record`` (a memfd, or a ghost created and unlinked): its fd
    (O_RDWR, close-on-exec) and notes on how it differs."""
    if record.stored_by:
        raise ImageError(f"{describe(record)} is made from the record of pid {record.stored_by}, not this one")
    if record.type == "memfd":
        return memfd.make(record), []
    return ghost.make(record, same_boot)


def create(obj_plan: ObjectPlan, opened: dict[int, int],
           handed: Mapping[int, int] | None = None) -> list[str]:  # pragma: no cover - in the child
    """In the restore child, before the open files: make each object, its fds at their
    numbers; ``opened`` gets object id -> its O_RDWR fd.  ``handed``: object id -> the fd
    of one the tree made for it (ckpt/files/handdown.py), put at its number instead.
    Returns notes."""
    notes: list[str] = []
    for o in obj_plan.objects:
        if o.id in obj_plan.handed:
            if handed is None or o.id not in handed:
                raise ImageError(f"{describe(o.record)} was not handed down")
            fd = os.dup(handed[o.id])
        else:
            fd, more = make(o.record, obj_plan.same_boot)
            notes += more
        _move(fd, o.number)
        if o.ro_number is not None:
            _move(os.open(f"/proc/self/fd/{o.number}", os.O_RDONLY | os.O_CLOEXEC), o.ro_number)
        opened[o.id] = o.number
    return notes


def _move(fd: int, number: int) -> None:  # pragma: no cover - in the child
    if fd != number:
        os.dup2(fd, number, inheritable=False)
        os.close(fd)


def finish(obj_plan: ObjectPlan) -> list[str]:  # pragma: no cover - in the child
    """Once every open file of the objects is open: their owner (root-trusted images) and
    mode.  Notes where the owner could not be given back."""
    notes = []
    for o in obj_plan.objects:
        r, fd = o.record, o.number
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (r.uid, r.gid):
            # Before the mode: chown clears set-user-ID.  Root restoring root's images gives
            # the recorded owner; otherwise the kernel lets the owner pick one of its groups.
            try:
                if obj_plan.trusted and os.geteuid() == 0:
                    os.fchown(fd, r.uid, r.gid)
                elif st.st_uid == r.uid:
                    os.fchown(fd, -1, r.gid)
            except PermissionError:
                pass
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (r.uid, r.gid):
                notes.append(f"{describe(r)} comes back owned by uid {st.st_uid} gid {st.st_gid} (was uid "
                             f"{r.uid} gid {r.gid}): a restore gives a file only the owner the images' "
                             "owner could give it")
        if stat.S_IMODE(os.fstat(fd).st_mode) != stat.S_IMODE(r.mode):
            os.fchmod(fd, stat.S_IMODE(r.mode))
    return notes


class Filler:
    """The rebuild's side (the parent, which reads the images): content and size of each
    object through a ``pidfd_getfd`` copy of the child's fd (:meth:`fill`), then, once it
    is mapped, its times and seals (:meth:`seal`)."""

    def __init__(self, pid: int, obj_plan: ObjectPlan, cp: Checkpoint) -> None:
        self.pid = pid
        self.plan = obj_plan
        self.cp = cp
        self._copies: dict[int, int] = {}

    def _own(self) -> list[PlannedObject]:
        """The objects this filler fills and seals: not those the tree does once."""
        return [o for o in self.plan.objects if o.id not in self.plan.handed]

    def fill(self) -> None:
        """Write every object's content (before it is mapped)."""
        if not self._own():
            return
        pidfd = pidfd_open(self.pid)
        try:
            for o in self._own():
                if o.record.stored_by:
                    raise ImageError(f"{describe(o.record)}: its content is in pid {o.record.stored_by}'s "
                                     "checkpoint, which this restore does not make it from")
                self._copies[o.id] = copy = pidfd_getfd(pidfd, o.number)
                self._fill(o.record, copy)
        finally:
            os.close(pidfd)

    def _fill(self, r: Object, fd: int) -> None:
        obj_id, size = r.id, r.size
        if r.huge_page:
            # hugetlbfs has no write(): through a mapping (fs/hugetlbfs/inode.c); its size is
            # a multiple of the huge page size, and pages nobody wrote are not touched.
            os.ftruncate(fd, size)
            if size:
                with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mapped:
                    for offset, frame, off, length in self.cp.object_stored(obj_id):
                        mapped[offset:offset + length] = memoryview(frame)[off:off + length]
        else:
            for offset, frame, off, length in self.cp.object_stored(obj_id):
                _pwrite_all(fd, memoryview(frame)[off:off + length], offset)
            for start, end in self.cp.object_zero(obj_id):   # data, all zero: written, not a hole
                for at in range(start, end, MAX_ZERO_WRITE):
                    _pwrite_all(fd, memoryview(_ZEROS)[:min(MAX_ZERO_WRITE, end - at)], at)
            os.ftruncate(fd, size)   # the last page was written whole

    def seal(self) -> None:
        """Once the objects are mapped: their times (mmap sets the access time: mm/shmem.c
        shmem_mmap, mm/filemap.c generic_file_mmap, ``file_accessed``) and each memfd's
        seals; then let go of the copies."""
        try:
            for o in self._own():
                r, fd = o.record, self._copies[o.id]
                os.utime(fd, ns=(r.atime_ns, r.mtime_ns))
                if r.seals:
                    memfd.add_seals(fd, r.seals, r.mode, describe(r))
        finally:
            self.close()

    def close(self) -> None:
        for fd in self._copies.values():
            os.close(fd)
        self._copies.clear()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def mapped_objects(vmas: Iterable[VmaRecord]) -> set[int]:
    """The ids of the objects ``vmas`` map."""
    return {v.object for v in vmas if v.object is not None}


"""Shared memory a process can find by name: System V segments and files in /dev/shm.

Both outlive the processes that map them: a SysV segment not removed (IPC_RMID) stays in
the IPC namespace after its last detach, and a file in /dev/shm (``shm_open``,
postgres's dynamic shared memory ``/dev/shm/PostgreSQL.N``) stays linked.  Other
processes -- and the restored ones, later -- find them again by their key or path, so a
restore must give back *the* segment or file, not anonymous memory that looks like it.

**Dump.**  Their content is the object's, read through /proc/PID/map_files as any shared
memory is (ckpt/shmem.py: no attach, so ``shm_nattch``, ``shm_atime`` and ``shm_lpid``,
which postgres looks at, do not change -- a map_files open is a plain open of the shmem
inode, not ipc/shm.c ``shm_open``), and stored once per checkpoint: the first task of the
tree that maps an object stores its pages, the others leave them out
(:func:`ckpt.treememory.shared_objects` with :func:`named`).  Each task records the SysV
segments it has attached (``state.sysv_shm``: key, id, mode, owner and creator, size, and
creator pid and ctime, which tell this segment from a later one with its id), read from
/proc/sysvipc/shm; a /dev/shm file VMA records the identity its path led to, as a file
mapping does (``vma.file_dev``/``file_ino``).

**Restore** (:class:`NamedShm`).  Before anything is created, each segment is located:
still there and the same one (key, size, creator, creator pid, ctime, on the boot of the
dump), detached from every process (``shm_nattch`` 0, as after ``dump --kill``): it is
reused; gone: it is made again with its key and its id (``/proc/sys/kernel/shm_next_id``,
ipc/util.c ``ipc_idr_alloc``: the next segment gets that index and sequence), by its
creator's effective ids so that ``cuid``/``cgid`` are the recorded ones, then given its
owner and mode (IPC_SET); its key or id taken by another segment, or still attached:
refused by name.  Each /dev/shm file is opened by its path as the images' owner and must
be the file the dump saw (:func:`ckpt.trust.open_verified`: device and inode); a process
outside the restore that maps it is refused by name (its memory would change under it).
Then the content: every object is first emptied (``FALLOC_FL_PUNCH_HOLE``: what was a
hole at the dump is a hole again), a file cut to its recorded size, and the stored pages
written.  A restore gives the object the checkpoint's content, not what the file holds
now: the checkpoint may be an older one than the file's last state (a restore of
checkpoint 1 after checkpoint 2), and after a reboot nothing is left of tmpfs.  ckpt
writes a segment through an attach of its own, which it keeps until every task has
attached: a segment removed while attached (SHM_DEST) is removed again (IPC_RMID) right
after it is filled, and lives on through those attaches as it did through the dumped ones.
Each task's rebuild then attaches the segment at each of its VMAs (:func:`attach_flags`:
``shmat`` at a free address, ``mremap`` of the VMA's part into place: a VMA may be part of
an attach) and maps each /dev/shm file from its verified fd.

Not restored (refused by name, ckpt.restorability): a segment in another IPC namespace
than the dumper's, SHM_HUGETLB and SHM_LOCKED segments.  Not restored as they were: the
segments' attach/detach times and last pid (``shm_atime``/``shm_dtime``/``shm_lpid``)
are the restore's.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import procfs, trust
from .errors import ImageError, NotRestorable, TargetError, UntrustedImage
from .image.schema import SysvShm
from .tracker import SHMEM

if TYPE_CHECKING:
    from .image import Checkpoint, VmaRecord

PAGE = os.sysconf("SC_PAGE_SIZE")
# ipc/shm.c newseg names a segment's shmem file "SYSV%08x" after its key; its inode is the id.
SYSV_PATH = re.compile(r"/SYSV([0-9a-f]{8}) \(deleted\)")
SHM_DIR = "/dev/shm/"
DELETED = " (deleted)"
SYSVIPC_SHM = "/proc/sysvipc/shm"
SHM_NEXT_ID = "/proc/sys/kernel/shm_next_id"
# include/uapi/linux/ipc.h, shm.h
IPC_PRIVATE, IPC_CREAT, IPC_EXCL = 0, 0o1000, 0o2000
IPC_RMID, IPC_SET = 0, 1
SHM_DEST, SHM_LOCKED = 0o1000, 0o2000
SHM_RDONLY, SHM_EXEC = 0o10000, 0o100000
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmdt.argtypes = [ctypes.c_void_p]
_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class _IpcPerm(ctypes.Structure):   # glibc bits/ipc.h, x86_64
    _fields_ = [("key", ctypes.c_int), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint), ("cuid", ctypes.c_uint),
                ("cgid", ctypes.c_uint), ("mode", ctypes.c_ushort), ("pad1", ctypes.c_ushort),
                ("seq", ctypes.c_ushort), ("pad2", ctypes.c_ushort), ("reserved", ctypes.c_ulong * 2)]


class _ShmidDs(ctypes.Structure):   # glibc bits/shm.h, x86_64
    _fields_ = [("perm", _IpcPerm), ("segsz", ctypes.c_size_t), ("atime", ctypes.c_long), ("dtime", ctypes.c_long),
                ("ctime", ctypes.c_long), ("cpid", ctypes.c_int), ("lpid", ctypes.c_int),
                ("nattch", ctypes.c_ulong), ("reserved", ctypes.c_ulong * 2)]


# -- what is named shared memory ---------------------------------------------------------------


def sysv(vma: Any) -> bool:
    """The VMA maps a System V shared memory segment (not a huge-page one: refused)."""
    return vma.kind == SHMEM and SYSV_PATH.fullmatch(vma.path or "") is not None and "ht" not in vma.flags


def shm_file(vma: Any) -> bool:
    """The VMA maps a linked file in /dev/shm (not a memfd, not a deleted file: file objects)."""
    path = vma.path or ""
    return (vma.kind == SHMEM and path.startswith(SHM_DIR) and not path.endswith(DELETED)
            and getattr(vma, "object", None) is None and "ht" not in vma.flags)


def named(vma: Any) -> bool:
    """A SysV segment or a /dev/shm file: restored as the same object, its content stored once."""
    return sysv(vma) or shm_file(vma)


def recorded(state: Any, vma: Any) -> bool:
    """The VMA is of a SysV segment the task's ``sysv_shm`` records (restored attached)."""
    return sysv(vma) and any(r.id == vma.inode for r in getattr(state, "sysv_shm", ()))


# -- dump -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One line of /proc/sysvipc/shm (ipc/shm.c sysvipc_shm_proc_show)."""

    key: int
    id: int
    mode: int
    size: int
    cpid: int
    lpid: int
    nattch: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    ctime: int

    def same(self, rec: SysvShm) -> bool:
        """This is the segment ``rec`` recorded (on the same boot): a later one with its id has
        another creator pid or creation time."""
        return (self.id, self.key, self.size, self.cpid, self.ctime, self.cuid, self.cgid) == (
            rec.id, rec.key, rec.size, rec.cpid, rec.ctime, rec.cuid, rec.cgid)

    def describe(self) -> str:
        return f"key {self.key:#x} shmid {self.id} ({self.size:,} bytes, uid {self.uid}, created by pid {self.cpid})"


def read_segments() -> dict[int, Segment]:
    """The SysV segments of ckpt's IPC namespace, by id."""
    out = {}
    with open(SYSVIPC_SHM) as f:
        head = f.readline().split()
        for line in f:
            row = dict(zip(head, line.split()))
            out[int(row["shmid"])] = Segment(
                key=int(row["key"]), id=int(row["shmid"]), mode=int(row["perms"], 8), size=int(row["size"]),
                cpid=int(row["cpid"]), lpid=int(row["lpid"]), nattch=int(row["nattch"]), uid=int(row["uid"]),
                gid=int(row["gid"]), cuid=int(row["cuid"]), cgid=int(row["cgid"]), ctime=int(row["ctime"]))
    return out


def same_ipc_namespace(pid: int) -> bool:
    """Task ``pid`` is in ckpt's IPC namespace (/proc/sysvipc shows the reader's)."""
    try:
        return os.stat(f"/proc/{pid}/ns/ipc").st_ino == os.stat("/proc/self/ns/ipc").st_ino
    except OSError:
        return False


def segments(pid: int, vmas: Iterable[Any]) -> tuple[SysvShm, ...]:
    """The ``sysv_shm`` records of task ``pid`` (its VMA records ``vmas``): each segment it
    has attached, once.  None when it is in another IPC namespace (its segments are then
    refused by name as unrecorded) or a segment is gone from /proc/sysvipc/shm."""
    ids = sorted({v.inode for v in vmas if sysv(v)})
    if not ids or not same_ipc_namespace(pid):
        return ()
    found = read_segments()
    out = []
    for shmid in ids:
        s = found.get(shmid)
        if s is None:
            continue   # not recorded: refused as an unrecorded segment
        out.append(SysvShm(key=s.key, id=s.id, mode=s.mode, size=s.size, uid=s.uid, gid=s.gid, cuid=s.cuid,
                           cgid=s.cgid, cpid=s.cpid, ctime=s.ctime))
    return tuple(out)


# -- restorability ------------------------------------------------------------------------------


def reasons(state: Any, vmas: Iterable[Any]) -> list[str]:
    """What of a task's named shared memory a restore cannot give back."""
    out = []
    for rec in getattr(state, "sysv_shm", ()):
        if rec.mode & SHM_LOCKED:
            out.append(f"the System V shared memory segment key {rec.key:#x} (shmid {rec.id}) is locked in memory "
                       "(SHM_LOCK), which ckpt does not restore")
    for v in vmas:
        if shm_file(v) and v.file_dev is None:
            out.append(f"the mapping at {v.start:#x} of {v.path}: its path led to another file at the dump")
    return list(dict.fromkeys(out))


# -- restore ------------------------------------------------------------------------------------


def attach_flags(vma: Any) -> int:
    """``shmat`` flags for a SysV VMA: read-only unless it may be written, SHM_EXEC if it may
    execute (its VmFlags ``mw``/``me``: what the attach allowed, ipc/shm.c do_shmat)."""
    flags = 0 if "mw" in vma.flags else SHM_RDONLY
    return flags | (SHM_EXEC if "me" in vma.flags else 0)


@dataclass
class _Object:
    """One named object of a restore, and the VMAs of the tasks that map it."""

    what: str
    size: int
    file: bool = False     # a /dev/shm file (cut to ``size``), else a segment
    parts: list[tuple[Checkpoint, VmaRecord]] = field(default_factory=list)
    fd: int = -1


class NamedShm:
    """The SysV segments and /dev/shm files of one restore (``checkpoints``: every live
    task's).  The constructor checks and opens, creating nothing; :meth:`prepare` makes or
    takes each segment and fills every object; :meth:`done` once every task is rebuilt,
    :meth:`undo` when the restore fails."""

    def __init__(self, checkpoints: Sequence[Checkpoint], principal: trust.Principal, fs_identity: Any,
                 same_boot: bool, what: str) -> None:
        self.what = what
        self.principal = principal
        self.fs_identity = fs_identity
        self.segments: dict[int, SysvShm] = {}
        self.objects: dict[Any, _Object] = {}   # shmid or (dev, ino) -> object
        self.reuse: set[int] = set()
        self.created: list[int] = []
        self.attached: list[int] = []
        for cp in checkpoints:
            for rec in cp.state.sysv_shm:
                if self.segments.setdefault(rec.id, rec) != rec:
                    raise ImageError(f"{what}: System V segment shmid {rec.id} is recorded differently by two tasks")
            for v in cp.vmas:
                if sysv(v):
                    rec = self.segments.get(v.inode)
                    if rec is None:
                        continue   # refused by ckpt.restorability
                    if v.offset + (v.end - v.start) > -(-rec.size // PAGE) * PAGE:
                        raise ImageError(f"{what}: the mapping at {v.start:#x} lies past the end of segment {rec.id}")
                    self.objects.setdefault(rec.id, _Object(f"segment key {rec.key:#x} shmid {rec.id}",
                                                            rec.size)).parts.append((cp, v))
                elif shm_file(v):
                    ident = trust.vma_identity(v)
                    if ident is None:
                        raise ImageError(f"{what}: mapped file {v.path} has no recorded identity")
                    obj = self.objects.get((ident.dev, ident.ino))
                    if obj is None:
                        obj = self.objects[(ident.dev, ident.ino)] = _Object(v.path, v.file_size or 0, file=True)
                        with trust.acting_as(fs_identity):
                            obj.fd = trust.open_verified(v.path, os.O_RDWR, ident, f"{what}: mapped file {v.path}",
                                                         same_boot=same_boot)
                    obj.parts.append((cp, v))
        try:
            refuse = self._check_segments(same_boot) + self._check_mappers()
            if refuse:
                raise NotRestorable(what, refuse)
        except BaseException:
            self._close()
            raise

    def _check_segments(self, same_boot: bool) -> list[str]:
        """Which segment can be taken again, which made again; why not (the reasons)."""
        if not self.segments:
            return []
        found = read_segments()
        refuse = []
        for rec in self.segments.values():
            now = found.get(rec.id)
            name = f"the System V shared memory segment key {rec.key:#x} (shmid {rec.id})"
            if not self.principal.trusted and self.principal.uid not in (rec.uid, rec.cuid) or \
                    not self.principal.trusted and not {rec.gid, rec.cgid} <= self.principal.groups:
                raise UntrustedImage(f"{self.what}: {name} is owned by uid {rec.uid} gid {rec.gid} (created by uid "
                                     f"{rec.cuid}); images of {self.principal.describe()} cannot make it")
            if now is not None and same_boot and now.same(rec):
                if now.nattch:
                    refuse.append(f"{name} is still attached by {now.nattch} mapping(s) (are the dumped processes "
                                  "still running?)")
                self.reuse.add(rec.id)
            elif now is not None:
                refuse.append(f"{name} cannot be made again: its id is taken by another segment, {now.describe()}")
            elif rec.key != IPC_PRIVATE and (other := next((s for s in found.values() if s.key == rec.key), None)):
                refuse.append(f"{name} cannot be made again: its key is taken by another segment, {other.describe()}")
        return refuse

    def _check_mappers(self) -> list[str]:
        """A process outside this restore that maps one of its /dev/shm files would see the
        restore rewrite it: the reasons."""
        files = {}
        for key, obj in self.objects.items():
            if obj.fd >= 0:
                st = os.fstat(obj.fd)
                files[(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", st.st_ino)] = obj.what
        if not files:
            return []
        refuse = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                maps = procfs.read_maps(int(name))
            except (OSError, ValueError):
                continue   # gone, or not ours to read
            for what in sorted({files[(m.dev, m.inode)] for m in maps if (m.dev, m.inode) in files}):
                refuse.append(f"{what} is mapped by pid {name}, which this restore does not make: the restore "
                              "would change its content under it")
        return refuse

    # -- making and filling

    def prepare(self) -> None:
        """Make or take every segment and fill every object with the checkpoint's content."""
        for shmid, rec in self.segments.items():
            if shmid not in self.reuse:
                self._create(rec)
            self._attach(rec)
        for obj in self.objects.values():
            _fill(obj)
        for shmid, rec in self.segments.items():
            if rec.mode & SHM_DEST:   # removed while attached: again, now that ckpt's attach holds it
                _shmctl(shmid, IPC_RMID, None, f"IPC_RMID of segment {shmid}")

    def _create(self, rec: SysvShm) -> None:
        """shmget with the recorded key as the creator, given the recorded id by shm_next_id.

        The kernel takes shm_next_id for the next segment made in the namespace and then resets
        it to -1 (ipc/util.c ipc_idr_alloc), which a write cannot do (the sysctl's minimum is
        0): when this shmget fails before it allocates, a throwaway segment takes the id."""
        _write(SHM_NEXT_ID, rec.id)
        with trust.acting_as(self.fs_identity, effective=(rec.cuid, rec.cgid)):
            got = _libc.shmget(rec.key, rec.size, IPC_CREAT | IPC_EXCL | (rec.mode & 0o777))
            err = ctypes.get_errno()
        if got < 0:
            spent = _libc.shmget(IPC_PRIVATE, 1, IPC_CREAT | 0o600)
            if spent >= 0:
                _libc.shmctl(spent, IPC_RMID, None)
            raise TargetError(f"cannot make the System V segment key {rec.key:#x} (shmid {rec.id}): {os.strerror(err)}")
        self.created.append(got)
        if got != rec.id:
            raise TargetError(f"the System V segment key {rec.key:#x} got shmid {got}, not {rec.id} (made meanwhile?)")
        ds = _ShmidDs()
        ds.perm.uid, ds.perm.gid, ds.perm.mode = rec.uid, rec.gid, rec.mode & 0o777
        if (rec.uid, rec.gid) != (rec.cuid, rec.cgid):
            _shmctl(got, IPC_SET, ctypes.byref(ds), f"IPC_SET of segment {got}")

    def _attach(self, rec: SysvShm) -> None:
        addr = _libc.shmat(rec.id, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise TargetError(f"cannot attach the System V segment shmid {rec.id}: {os.strerror(ctypes.get_errno())}")
        self.attached.append(addr)
        end = addr + -(-rec.size // PAGE) * PAGE
        # A plain open of the segment's shmem inode: written like a file, holes punched.
        self.objects[rec.id].fd = os.open(f"/proc/self/map_files/{addr:x}-{end:x}", os.O_RDWR | os.O_CLOEXEC)

    def done(self) -> None:
        """Every task is rebuilt: ckpt lets go of what it holds."""
        self._close()

    def undo(self) -> None:
        """The restore failed: remove the segments it made (and ckpt's attaches)."""
        self._close()
        for shmid in self.created:
            _libc.shmctl(shmid, IPC_RMID, None)
        self.created = []

    def _close(self) -> None:
        for obj in self.objects.values():
            if obj.fd >= 0:
                os.close(obj.fd)
                obj.fd = -1
        for addr in self.attached:
            _libc.shmdt(addr)
        self.attached = []


def _fill(obj: _Object) -> None:
    """Give ``obj`` the checkpoint's content: holes where it had none, the stored pages
    (each stored by one of its mappers: the others' checkpoints leave them out)."""
    if obj.file and obj.size:
        os.ftruncate(obj.fd, obj.size)   # the size it had at the dump
    size = os.fstat(obj.fd).st_size
    if size and _libc.fallocate(obj.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        raise TargetError(f"cannot empty {obj.what}: {os.strerror(ctypes.get_errno())}")
    for cp, v in obj.parts:
        links = {link.id: link for link in cp.chain()}
        shift = v.offset - v.start
        for piece in cp.resolve([(v.start, v.end)]):
            if piece.source != "data":
                continue   # zero: a hole now; backing: left out, another mapper's
            for address, frame, offset, length in links[piece.checkpoint].iter_stored(piece.start, piece.end):
                os.pwrite(obj.fd, memoryview(frame)[offset:offset + length], address + shift)


def _shmctl(shmid: int, cmd: int, buf: Any, what: str) -> None:
    if _libc.shmctl(shmid, cmd, buf) != 0:
        raise TargetError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _write(path: str, value: int) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as err:
        raise TargetError(f"cannot write {path}: {err.strerror}") from None

"""memfds (memfd_create(2)): their open files, and making a memfd again.

A memfd is a file of the kernel's internal tmpfs (or hugetlbfs) mount with no
name in any directory: /proc shows ``/memfd:NAME (deleted)``.  Its content,
size, mode, owner, seals and name belong to the *file object*, recorded once
whatever refers to it (ckpt/files/objects.py); an open file of it (kind
``"memfd"``, record ``file_memfd``) records its flags and offset and which
object it is.  The restore child makes the object before the open files
(:func:`make`).  The file memfd_create returned goes to one O_RDWR open file
of it, each other open file is a new open of it through ``/proc/self/fd``
(:class:`ObjectFile`, shared with ckpt/files/ghost.py): only the file
memfd_create returns is not counted as a writer of the memfd, and exec of a
memfd with a writer fails (ETXTBSY; CRIU's zdtm memfd04, memfd05).

What a memfd is made with (mm/memfd.c ``memfd_create``):

* its name, ``MFD_CLOEXEC`` (the registry sets each fd's own flag), and
  ``MFD_ALLOW_SEALING``: the recorded seals are added once it is filled and
  mapped (ckpt/files/objects.py), ``F_SEAL_SEAL`` among them for a memfd made
  without ``MFD_ALLOW_SEALING`` (which starts with only that seal);
* ``MFD_HUGETLB`` with its huge page size (``st_blksize`` of a hugetlbfs file);
* ``MFD_EXEC``: mode 0777 as without the flag, then the recorded mode is set
  (a memfd made with ``MFD_NOEXEC_SEAL`` has mode 0666 and ``F_SEAL_EXEC``
  among its recorded seals).  Where ``vm.memfd_noexec`` forbids executable
  memfds, ``MFD_NOEXEC_SEAL`` -- refused when the recorded memfd was
  executable or not sealed against it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING, Any

from ..errors import TargetError
from ..shmem import DELETED_SUFFIX, MEMFD_PREFIX
from ..image.schema import MemfdFile
from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject, reopen_flags

if TYPE_CHECKING:
    from ..image.schema import Object

# include/uapi/linux/memfd.h
MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_HUGETLB, MFD_NOEXEC_SEAL, MFD_EXEC = 0x1, 0x2, 0x4, 0x8, 0x10
MFD_HUGE_SHIFT = 26
# include/uapi/linux/fcntl.h
F_ADD_SEALS, F_GET_SEALS = 1024 + 9, 1024 + 10
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, F_SEAL_EXEC = (
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20)
SEAL_NAMES = ((F_SEAL_SEAL, "F_SEAL_SEAL"), (F_SEAL_SHRINK, "F_SEAL_SHRINK"), (F_SEAL_GROW, "F_SEAL_GROW"),
              (F_SEAL_WRITE, "F_SEAL_WRITE"), (F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
              (F_SEAL_EXEC, "F_SEAL_EXEC"))


def seals_text(seals: int) -> str:
    """"F_SEAL_SHRINK|F_SEAL_GROW" ("none" for 0)."""
    return "|".join(name for bit, name in SEAL_NAMES if seals & bit) or "none"


def memfd_name(path: str) -> str:
    """The name given to memfd_create, from ``/memfd:NAME (deleted)``."""
    return path[len(MEMFD_PREFIX):-len(DELETED_SUFFIX)]


# The status flags of the file memfd_create returns (mm/memfd.c memfd_alloc_file: O_RDWR,
# O_LARGEFILE), and those F_SETFL may add to it without changing what the restore does
# through it before the process runs: not O_APPEND (the rebuild's pwrite would append,
# pwrite(2) BUGS), O_DIRECT or O_NOATIME (an open file of those is reopened instead).
_O_LARGEFILE = 0o100000   # as the kernel sets it on every open of a 64-bit process (os.O_LARGEFILE is 0)
_OWN_FILE_FLAGS = os.O_RDWR | _O_LARGEFILE
_OWN_FILE_SETFL = os.O_NONBLOCK


class ObjectFile(FileKind):
    """An open file of a file object (ckpt/files/objects.py): kinds "memfd" and "ghost"
    (record ``file_memfd``).  The object is recorded once, from the first of its open
    files or mappings; the record names it and repeats its problem, if any."""

    # The file the object was made with goes to one O_RDWR open file of it (a memfd's:
    # memfd_create's file counts no writer, an O_RDWR open does, fs/open.c do_dentry_open ->
    # file_get_write_access, and exec refuses a file with a writer, fs/exec.c
    # exe_file_deny_write_access).  A ghost's is an open(2) as a reopen is: nothing to gain.
    gives_own_file = False

    def dump(self, probe: Probe) -> dict[str, Any]:
        objects = probe.capture.objects
        assert objects is not None, "files.capture always gives its Capture an ObjectSet"
        record = objects.from_fd(probe.getfd(), probe.file.target)
        return {"object": record["id"], "problem": record["problem"]}

    def reasons(self, file: MemfdFile, subject: Subject) -> list[str]:
        if not file.problem:
            return []
        return [f"{subject} {subject.verb('refers', 'refer')} to {self.describe(file)}: {file.problem}"]

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
        f = planned.file
        obj_id, flags = f.object, reopen_flags(f.flags)
        own = ctx.objects[obj_id]   # the object's own file, made by the child (O_RDWR)
        if (self.gives_own_file and obj_id not in ctx.objects_given
                and flags & ~_OWN_FILE_SETFL | _O_LARGEFILE == _OWN_FILE_FLAGS):
            # That file itself (a dup: the rebuild still maps, fills and seals through the
            # object's number, and closes it), with this open file's status flags and offset.
            ctx.objects_given.add(obj_id)
            fd = os.dup(own)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & _OWN_FILE_SETFL)
        else:
            # A new open file of it, with this one's access mode and status flags;
            # /proc/self/fd reopens even an unlinked file.  Not O_NOFOLLOW, which f_flags
            # keep (mkstemp opens with it) and which refuses the /proc link itself (ELOOP).
            fd = os.open(f"/proc/self/fd/{own}", flags & ~os.O_NOFOLLOW | os.O_CLOEXEC)
        if not f.flags & os.O_PATH:
            os.lseek(fd, f.pos, os.SEEK_SET)
        return fd


class Memfd(ObjectFile):
    """Kind "memfd"."""

    names = ("memfd",)
    gives_own_file = True

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        return "memfd" if f.kind == "regular" and f.deleted and f.target.startswith(MEMFD_PREFIX) else None

    def describe(self, file: MemfdFile) -> str:
        return f"the memfd {file.target.removesuffix(DELETED_SUFFIX).removeprefix('/')}"


MEMFD = Memfd()


def add_seals(fd: int, seals: int, mode: int, what: str) -> None:
    """Seal the memfd ``fd`` as recorded (``seals``, ``mode``: its recorded mode, set already).

    ``F_SEAL_EXEC`` on an executable memfd brings the write seals with it (mm/memfd.c
    ``memfd_add_seals``: "SEAL_EXEC implys SEAL_WRITE"); kernels that added them after the
    check that no writable shared mapping exists (6.18 checks them too) let such a memfd
    keep one, which asking for ``F_SEAL_WRITE`` itself refuses (EBUSY).  So the implied
    seals are left to the kernel, as they came; the result is checked."""
    add = seals
    if seals & F_SEAL_EXEC and mode & 0o111:
        add &= ~(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)
    fcntl.fcntl(fd, F_ADD_SEALS, add)
    now = fcntl.fcntl(fd, F_GET_SEALS)
    if now != seals:
        raise TargetError(f"{what}: sealed {seals_text(now)} instead of {seals_text(seals)}")


def make(record: Object) -> int:  # pragma: no cover - runs in the restore child
    """A new memfd for file object ``record`` (module docstring); its fd, close-on-exec."""
    flags = MFD_CLOEXEC | MFD_ALLOW_SEALING
    huge = record.huge_page
    if huge:
        flags |= MFD_HUGETLB | (huge.bit_length() - 1) << MFD_HUGE_SHIFT
    want_exec = bool(record.mode & 0o111)
    sealed_exec = bool(record.seals & F_SEAL_EXEC)
    tries = [flags | MFD_EXEC, flags]                # without MFD_EXEC: kernels before 6.3
    if not want_exec and sealed_exec:
        tries.append(flags | MFD_NOEXEC_SEAL)        # vm.memfd_noexec = 2 allows only this
    failure: OSError | None = None
    for attempt in tries:
        try:
            fd = os.memfd_create(record.name, attempt)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EACCES):
                raise TargetError(f"memfd_create({record.name!r}): {err.strerror}") from None
            failure = err
            continue
        extra = fcntl.fcntl(fd, F_GET_SEALS) & ~record.seals
        if extra:
            os.close(fd)
            raise TargetError(f"the memfd {record.name!r} cannot be made again without {seals_text(extra)} "
                              "(vm.memfd_noexec forbids executable memfds here)")
        return fd
    why = "vm.memfd_noexec forbids executable memfds" if failure and failure.errno == errno.EACCES else \
        (failure.strerror if failure else "")
    raise TargetError(f"the memfd {record.name!r} cannot be made again: {why}")

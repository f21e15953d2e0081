"""Path resolution and filesystem identity: openat2, statx mount ids, per-thread fs credentials.

* ``openat2`` (Linux 5.6, include/uapi/linux/openat2.h) opens a path with
  ``RESOLVE_*`` restrictions; unlike ``openat`` it refuses unknown flag bits
  (fs/open.c ``build_open_flags``), so callers pass only :data:`REOPEN_FLAGS`.
* ``statx`` with ``STATX_MNT_ID_UNIQUE`` (Linux 6.8) gives a 64-bit mount id
  that is never reused within one boot (fs/stat.c, fs/namespace.c ``mnt_id_unique``).
* ``setfsuid``/``setfsgid`` and the raw ``setgroups`` syscall change the
  credentials of the *calling thread* only (glibc's wrappers of setgroups and
  set*id broadcast to every thread; the raw syscalls do not), which is what a
  temporary "open this as that user" needs (kernel/sys.c ``__sys_setfsuid``,
  kernel/groups.c).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Final

from .libc import SYS_setgroups, address_of, syscall

SYS_setfsuid: Final = 122
SYS_setfsgid: Final = 123
SYS_sync_file_range: Final = 277
SYS_renameat2: Final = 316
SYS_statx: Final = 332
SYS_openat2: Final = 437

AT_FDCWD: Final = -100
AT_EMPTY_PATH: Final = 0x1000
AT_SYMLINK_NOFOLLOW: Final = 0x100
RENAME_EXCHANGE: Final = 2   # include/uapi/linux/fs.h
SYNC_FILE_RANGE_WRITE: Final = 2   # include/uapi/linux/fs.h

RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04

STATX_INO: Final = 0x100
STATX_MNT_ID: Final = 0x1000
STATX_MNT_ID_UNIQUE: Final = 0x4000

# Open flags a reopen may carry (a subset of the kernel's VALID_OPEN_FLAGS without
# the creating ones): openat2 fails with EINVAL on any other bit, and fdinfo's
# "flags" may hold bits the kernel sets itself.
REOPEN_FLAGS: Final = (os.O_ACCMODE | os.O_NOCTTY | os.O_APPEND | os.O_NONBLOCK | os.O_DSYNC | os.O_SYNC | os.O_DIRECT
                       | os.O_LARGEFILE | os.O_DIRECTORY | os.O_NOATIME | os.O_PATH | os.O_CLOEXEC)
# With O_PATH openat2 accepts nothing else but these (fs/open.c O_PATH_FLAGS).
O_PATH_FLAGS: Final = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_PATH | os.O_CLOEXEC

_OPEN_HOW = struct.Struct("<QQQ")   # struct open_how: flags, mode, resolve
_STATX_SIZE = 256
_STATX_MASK = struct.Struct("<I")                # stx_mask at offset 0
_STATX_INO = struct.Struct("<Q")                 # stx_ino at offset 32
_STATX_DEV = struct.Struct("<II")                # stx_dev_major, stx_dev_minor at offset 136
_STATX_MNT_ID = struct.Struct("<Q")              # stx_mnt_id at offset 144


def openat2(path: str, flags: int, resolve: int, dirfd: int = AT_FDCWD) -> int:
    """``openat2(dirfd, path, {flags, 0, resolve})``; the new fd, ``OSError`` on failure."""
    if flags & os.O_PATH:
        flags &= O_PATH_FLAGS
    else:
        flags &= REOPEN_FLAGS
    how = bytearray(_OPEN_HOW.pack(flags, 0, resolve))
    name = ctypes.create_string_buffer(os.fsencode(path))
    return syscall(SYS_openat2, dirfd, ctypes.addressof(name), address_of(how), len(how))


def rename_exchange(dirfd: int, a: str, b: str) -> None:
    """Swap the entries ``a`` and ``b`` of directory ``dirfd`` in one step: ``renameat2(2)``
    with ``RENAME_EXCHANGE`` (Linux 3.15; fs/namei.c ``do_renameat2``).  Both must exist; every
    other process sees either the old pair or the new one, never a missing name."""
    name_a = ctypes.create_string_buffer(os.fsencode(a))
    name_b = ctypes.create_string_buffer(os.fsencode(b))
    syscall(SYS_renameat2, dirfd, ctypes.addressof(name_a), dirfd, ctypes.addressof(name_b), RENAME_EXCHANGE)


def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
    """``sync_file_range(2)``: with :data:`SYNC_FILE_RANGE_WRITE` alone, start writeback of the
    dirty pages of ``[offset, offset + nbytes)`` without waiting for it (fs/sync.c
    ``ksys_sync_file_range``: WB_SYNC_NONE).  Not in Python's os module."""
    syscall(SYS_sync_file_range, fd, offset, nbytes, flags)


def statx_identity(path: str = "", fd: int = AT_FDCWD, *, follow: bool = True) -> tuple[int, int, int | None]:
    """``(st_dev, st_ino, unique mount id or None)`` of ``path`` (relative to ``fd``), or of
    the open file ``fd`` itself when ``path`` is empty.

    The mount id is None on kernels before 6.8 (no ``STATX_MNT_ID_UNIQUE``).
    ``follow`` follows a final symlink, magic links of /proc included (which is
    how /proc/PID/fd/N, exe, cwd, root and map_files/START-END name the file
    they point at)."""
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if not path:
        flags |= AT_EMPTY_PATH
    buf = bytearray(_STATX_SIZE)
    name = ctypes.create_string_buffer(os.fsencode(path))
    syscall(SYS_statx, fd, ctypes.addressof(name), flags, STATX_INO | STATX_MNT_ID_UNIQUE, address_of(buf))
    mask = _STATX_MASK.unpack_from(buf, 0)[0]
    major, minor = _STATX_DEV.unpack_from(buf, 136)
    ino = _STATX_INO.unpack_from(buf, 32)[0]
    mnt = _STATX_MNT_ID.unpack_from(buf, 144)[0] if mask & STATX_MNT_ID_UNIQUE else None
    return os.makedev(major, minor), ino, mnt


def thread_fs_identity() -> tuple[int, int, list[int]]:
    """The calling thread's ``(fsuid, fsgid, supplementary groups)``.

    ``setfsuid(-1)`` changes nothing and returns the current value (setfsuid(2))."""
    return syscall(SYS_setfsuid, -1) & 0xFFFFFFFF, syscall(SYS_setfsgid, -1) & 0xFFFFFFFF, os.getgroups()


def set_thread_fs_identity(uid: int, gid: int, groups: list[int]) -> None:
    """Make the calling thread check file access as ``uid``/``gid``/``groups``.

    Only this thread changes.  setfsuid reports no error, so the result is read
    back; ``PermissionError`` if the kernel refused (no CAP_SETUID/CAP_SETGID)."""
    arr = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    syscall(SYS_setgroups, len(groups), ctypes.addressof(arr))
    syscall(SYS_setfsgid, gid)
    syscall(SYS_setfsuid, uid)
    now_uid, now_gid, _ = thread_fs_identity()
    if (now_uid, now_gid) != (uid, gid):
        raise PermissionError(f"cannot take the filesystem identity uid {uid} gid {gid} "
                              f"(still uid {now_uid} gid {now_gid})")

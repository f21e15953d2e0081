"""kcmp(2): do two fds refer to one open file description (KCMP_FILE)?  Is an fd the
file an epoll instance watches (KCMP_EPOLL_TFD)?  Do two processes share an mm, an fd
table, an fs_struct or signal handlers (KCMP_VM, KCMP_FILES, KCMP_FS, KCMP_SIGHAND)?

kernel/kcmp.c compares the ``struct file`` pointers behind ``fd1`` of ``pid1``
and ``fd2`` of ``pid2``: 0 when they are the same open file description; else
1 or 2, an ordering of the pointers "suitable for sorting" (each pointer is
obfuscated by a fixed per-boot bijection first, ``kptr_obfuscate``).  It needs
PTRACE_MODE_READ_REALCREDS over both processes and CONFIG_KCMP (on by default
with CONFIG_CHECKPOINT_RESTORE, which ckpt needs anyway for PR_SET_MM_MAP).
"""

from __future__ import annotations

import ctypes

from .libc import SYS_kcmp, syscall

KCMP_FILE = 0  # include/uapi/linux/kcmp.h enum kcmp_type
KCMP_VM, KCMP_FILES, KCMP_FS, KCMP_SIGHAND = 1, 2, 3, 4   # whole-task objects (no fd arguments)


def kcmp_file(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """0 when the two fds share an open file description, else -1 or 1 (a total order,
    for sorting); ``OSError`` (EBADF for a closed fd, ENOSYS without CONFIG_KCMP)."""
    result = syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2)
    # kcmp_ptr(): (t1 < t2) | ((t1 > t2) << 1)
    return 0 if result == 0 else (-1 if result == 1 else 1)


def kcmp_task(pid1: int, pid2: int, kind: int) -> int:
    """0 when the two processes share the kernel object ``kind`` (KCMP_VM: one mm,
    KCMP_FILES: one fd table, KCMP_FS: one fs_struct, KCMP_SIGHAND: one sighand_struct),
    else -1 or 1 (a total order, for sorting); ``OSError`` as :func:`kcmp_file`."""
    result = syscall(SYS_kcmp, pid1, pid2, kind, 0, 0)
    return 0 if result == 0 else (-1 if result == 1 else 1)


KCMP_EPOLL_TFD = 7  # include/uapi/linux/kcmp.h


class kcmp_epoll_slot(ctypes.Structure):
    """include/uapi/linux/kcmp.h: which registration of which epoll instance."""

    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


assert ctypes.sizeof(kcmp_epoll_slot) == 12


def kcmp_epoll_tfd(pid: int, fd: int, epoll_pid: int, efd: int, tfd: int, toff: int) -> int:
    """0 when fd ``fd`` of ``pid`` is the open file that epoll ``efd`` of ``epoll_pid``
    watches under fd number ``tfd`` (its ``toff``-th registration under that number, in
    the order of the epoll's fdinfo), else -1 or 1.  ``OSError``: EBADF when ``fd`` or
    ``efd`` is closed, ENOENT when there is no such registration, EINVAL when ``efd``
    is not an epoll (kernel/kcmp.c ``kcmp_epoll_target``, fs/eventpoll.c
    ``get_epoll_tfile_raw_ptr``).  The registration's fd number need not be open: it is
    the number the file had when it was registered."""
    slot = kcmp_epoll_slot(efd, tfd, toff)
    result = syscall(SYS_kcmp, pid, epoll_pid, KCMP_EPOLL_TFD, fd, ctypes.addressof(slot))
    return 0 if result == 0 else (-1 if result == 1 else 1)

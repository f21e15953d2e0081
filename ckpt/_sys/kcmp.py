"""kcmp(2) with KCMP_FILE: do two fds refer to one open file description?

kernel/kcmp.c compares the ``struct file`` pointers behind ``fd1`` of ``pid1``
and ``fd2`` of ``pid2``: 0 when they are the same open file description; else
1 or 2, an ordering of the pointers "suitable for sorting" (each pointer is
obfuscated by a fixed per-boot bijection first, ``kptr_obfuscate``).  It needs
PTRACE_MODE_READ_REALCREDS over both processes and CONFIG_KCMP (on by default
with CONFIG_CHECKPOINT_RESTORE, which ckpt needs anyway for PR_SET_MM_MAP).
"""

from __future__ import annotations

from .libc import SYS_kcmp, syscall

KCMP_FILE = 0  # include/uapi/linux/kcmp.h enum kcmp_type


def kcmp_file(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """0 when the two fds share an open file description, else -1 or 1 (a total order,
    for sorting); ``OSError`` (EBADF for a closed fd, ENOSYS without CONFIG_KCMP)."""
    result = syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2)
    # kcmp_ptr(): (t1 < t2) | ((t1 > t2) << 1)
    return 0 if result == 0 else (-1 if result == 1 else 1)

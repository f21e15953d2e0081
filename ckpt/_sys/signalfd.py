"""signalfd4(2): a file descriptor that reads the signals of a mask (fs/signalfd.c).

The mask is a kernel ``sigset_t`` (8 bytes on x86-64, bit N-1 for signal N);
SIGKILL and SIGSTOP are dropped from it by the kernel.  The open file's
``f_flags`` are ``O_RDWR`` plus ``O_NONBLOCK`` when ``SFD_NONBLOCK`` was given.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

from .libc import syscall

SYS_signalfd4: Final = 289
SFD_NONBLOCK: Final = os.O_NONBLOCK   # include/uapi/linux/signalfd.h
SFD_CLOEXEC: Final = os.O_CLOEXEC
SIGSET_SIZE: Final = 8                # sizeof(sigset_t) in the kernel (_NSIG / 8)


def signalfd(mask: int, flags: int) -> int:
    """A new signalfd for the signals of ``mask`` (bit N-1 for signal N)."""
    sigset = ctypes.c_uint64(mask)
    return syscall(SYS_signalfd4, -1, ctypes.addressof(sigset), SIGSET_SIZE, flags)

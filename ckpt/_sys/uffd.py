"""userfaultfd(2) write-protect ioctls (include/uapi/linux/userfaultfd.h).

ckpt only uses asynchronous write-protection (``UFFD_FEATURE_WP_ASYNC``, 6.7+):
a write to a protected page clears its uffd-wp bit in place and no message is
ever queued, so the tracked process never waits for a fault handler
(fs/userfaultfd.c, mm/memory.c ``do_wp_page``).  That is what makes a tracker
killed with SIGKILL harmless.  Every ioctl acts on the mm the fd was created in
(``ctx->mm``), whichever process issues it: a uffd created inside the target and
taken with ``pidfd_getfd`` drives the target's memory.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Final

from .libc import SYS_userfaultfd, syscall

UFFD_USER_MODE_ONLY: Final = 1
UFFD_API: Final = 0xAA

UFFDIO_API: Final = 0xC018AA3F
UFFDIO_REGISTER: Final = 0xC020AA00
UFFDIO_UNREGISTER: Final = 0x8010AA01
UFFDIO_WRITEPROTECT: Final = 0xC018AA06

UFFDIO_REGISTER_MODE_WP: Final = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP: Final = 1 << 0

UFFD_FEATURE_PAGEFAULT_FLAG_WP: Final = 1 << 0
UFFD_FEATURE_WP_HUGETLBFS_SHMEM: Final = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED: Final = 1 << 13
UFFD_FEATURE_WP_ASYNC: Final = 1 << 15

# WP_ASYNC implies WP_UNPOPULATED (the kernel adds it silently); asking for it
# explicitly documents that pte_none pages get markers when armed, so pages a
# process populates later are tracked too.  WP_HUGETLBFS_SHMEM extends WP to
# shmem and hugetlb VMAs (shared anonymous memory, memfd, SysV shm).
CKPT_FEATURES: Final = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM

_API = struct.Struct("=QQQ")            # struct uffdio_api: api, features, ioctls
_REGISTER = struct.Struct("=QQQQ")      # struct uffdio_register: start, len, mode, ioctls
_RANGE = struct.Struct("=QQ")           # struct uffdio_range
_WRITEPROTECT = struct.Struct("=QQQ")   # struct uffdio_writeprotect: start, len, mode
assert (_API.size, _REGISTER.size, _WRITEPROTECT.size) == (24, 32, 24)


def create(flags: int = os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY) -> int:
    """Create a userfaultfd in the *calling* process (used by probes and tests)."""
    return syscall(SYS_userfaultfd, flags)


def api(fd: int, features: int = CKPT_FEATURES) -> int:
    """The ``UFFDIO_API`` handshake; returns the features the kernel granted.

    It can be done exactly once per fd: the features latch, and a second call
    (even a query with features 0) fails with EINVAL (fs/userfaultfd.c
    ``userfaultfd_api``).  Probe support on a throwaway fd.
    """
    buf = bytearray(_API.pack(UFFD_API, features, 0))
    fcntl.ioctl(fd, UFFDIO_API, buf, True)
    return _API.unpack(buf)[1]


def register_wp(fd: int, start: int, length: int) -> None:
    """Register ``[start, start+length)`` for write-protect tracking (one VMA at a time:
    one unsuitable VMA fails the whole call)."""
    buf = bytearray(_REGISTER.pack(start, length, UFFDIO_REGISTER_MODE_WP, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, buf, True)


def unregister(fd: int, start: int, length: int) -> None:
    fcntl.ioctl(fd, UFFDIO_UNREGISTER, _RANGE.pack(start, length))


def writeprotect(fd: int, start: int, length: int, protect: bool = True) -> None:
    """Set (or clear) uffd-wp on a registered range; installs markers on unpopulated PTEs."""
    mode = UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
    buf = bytearray(_WRITEPROTECT.pack(start, length, mode))
    fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, buf, True)

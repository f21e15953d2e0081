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


# -- missing-page handling, for the lazy restore's page server (ckpt/lazy.py) --------------

UFFDIO_REGISTER_MODE_MISSING: Final = 1 << 0
UFFDIO_WAKE: Final = 0x8010AA02       # _IOR(0xAA, 0x02, struct uffdio_range)
UFFDIO_COPY: Final = 0xC028AA03       # _IOWR(0xAA, 0x03, struct uffdio_copy)
UFFDIO_ZEROPAGE: Final = 0xC020AA04   # _IOWR(0xAA, 0x04, struct uffdio_zeropage)

UFFD_FEATURE_EVENT_FORK: Final = 1 << 1
UFFD_FEATURE_EVENT_REMAP: Final = 1 << 2
UFFD_FEATURE_EVENT_REMOVE: Final = 1 << 3
UFFD_FEATURE_EVENT_UNMAP: Final = 1 << 6

UFFD_EVENT_PAGEFAULT: Final = 0x12
UFFD_EVENT_FORK: Final = 0x13
UFFD_EVENT_REMAP: Final = 0x14
UFFD_EVENT_REMOVE: Final = 0x15
UFFD_EVENT_UNMAP: Final = 0x16

MSG_SIZE: Final = 32                    # struct uffd_msg
_MSG = struct.Struct("=B3x4xQQQ")       # event, then the 24-byte union as three u64
_COPY = struct.Struct("=QQQQq")         # struct uffdio_copy: dst, src, len, mode, copy
_ZEROPAGE = struct.Struct("=QQQq")      # struct uffdio_zeropage: range, mode, zeropage
assert (_MSG.size, _COPY.size, _ZEROPAGE.size) == (MSG_SIZE, 40, 32)


def register_missing(fd: int, start: int, length: int) -> None:
    """Register ``[start, start+length)`` for missing-page faults (``UFFDIO_REGISTER_MODE_MISSING``)."""
    buf = bytearray(_REGISTER.pack(start, length, UFFDIO_REGISTER_MODE_MISSING, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, buf, True)


def _ioctl(fd: int, request: int, buf: bytearray) -> int:
    """ioctl(2) on a buffer the kernel updates even when the call fails; 0 or an errno."""
    from .libc import SYS_ioctl, address_of
    try:
        syscall(SYS_ioctl, fd, request, address_of(buf))
    except OSError as err:
        return err.errno or 0
    return 0


def copy(fd: int, dst: int, src: int, length: int) -> tuple[int, int]:
    """``UFFDIO_COPY`` of ``length`` bytes at address ``src`` of this process to ``dst`` of
    the uffd's mm, waking the threads that wait there.  Returns (bytes copied, errno or 0):
    the kernel stops at the first page it cannot fill (a partial copy fails with EAGAIN and
    reports what it did, fs/userfaultfd.c ``userfaultfd_copy``)."""
    buf = bytearray(_COPY.pack(dst, src, length, 0, 0))
    err = _ioctl(fd, UFFDIO_COPY, buf)
    done = _COPY.unpack(buf)[4]
    return max(done, 0), err


def zeropage(fd: int, dst: int, length: int) -> tuple[int, int]:
    """``UFFDIO_ZEROPAGE`` over ``[dst, dst+length)``: as :func:`copy`, with zeros."""
    buf = bytearray(_ZEROPAGE.pack(dst, length, 0, 0))
    err = _ioctl(fd, UFFDIO_ZEROPAGE, buf)
    done = _ZEROPAGE.unpack(buf)[3]
    return max(done, 0), err


def wake(fd: int, start: int, length: int) -> None:
    """Wake the threads waiting on a fault in ``[start, start+length)``."""
    fcntl.ioctl(fd, UFFDIO_WAKE, _RANGE.pack(start, length))


def messages(fd: int, max_count: int = 64) -> list[tuple[int, int, int, int]]:
    """The queued ``uffd_msg``\\ s of a non-blocking uffd, as (event, a, b, c): a page fault's
    flags and address, a fork's new uffd, a remap's from, to and length, a remove's or an
    unmap's start and end (include/uapi/linux/userfaultfd.h)."""
    try:
        data = os.read(fd, MSG_SIZE * max_count)
    except BlockingIOError:
        return []
    return [_MSG.unpack_from(data, off) for off in range(0, len(data) - MSG_SIZE + 1, MSG_SIZE)]

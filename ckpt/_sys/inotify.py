"""inotify_init1(2), inotify_add_watch(2), inotify_rm_watch(2), and FIONREAD on an inotify fd.

Watch descriptors are allocated by ``idr_alloc_cyclic(.., 1, 0, ..)``
(fs/notify/inotify/inotify_user.c ``inotify_add_to_idr``): each new watch gets
the number after the last one handed out, not the lowest free one, and a watch
added again on an inode this instance watches keeps its number (its mask is
replaced).  ``FIONREAD`` tells how many bytes of events are queued, without
taking them (``inotify_ioctl``).
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import os
import termios
from typing import Final

from .libc import libc

IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC
# include/uapi/linux/inotify.h
IN_ALL_EVENTS: Final = 0x00000FFF
IN_EXCL_UNLINK: Final = 0x04000000
IN_ONESHOT: Final = 0x80000000
# What a watch keeps of the mask it was added with (the "mask:" of fdinfo,
# inotify_mark_user_mask()): IN_ONLYDIR, IN_DONT_FOLLOW, IN_MASK_ADD and
# IN_MASK_CREATE act only when the watch is added.
WATCH_MASK: Final = IN_ALL_EVENTS | IN_EXCL_UNLINK | IN_ONESHOT

_init1 = libc.inotify_init1
_init1.argtypes = [ctypes.c_int]
_init1.restype = ctypes.c_int
_add_watch = libc.inotify_add_watch
_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_add_watch.restype = ctypes.c_int
_rm_watch = libc.inotify_rm_watch
_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_rm_watch.restype = ctypes.c_int


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def inotify_init1(flags: int) -> int:
    """A new inotify instance."""
    return _check(_init1(flags))


def add_watch(fd: int, path: str, mask: int) -> int:
    """Watch ``path`` (symlinks followed) for the events of ``mask``; the watch descriptor."""
    return _check(_add_watch(fd, os.fsencode(path), mask))


def rm_watch(fd: int, wd: int) -> None:
    """Remove watch ``wd`` (the kernel queues an IN_IGNORED event for it)."""
    _check(_rm_watch(fd, wd))


def queued_bytes(fd: int) -> int:
    """How many bytes of events wait to be read (FIONREAD), without reading them."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]

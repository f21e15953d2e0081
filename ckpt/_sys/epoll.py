"""epoll(7): create an instance and register targets with any 64-bit data.

Python's ``select.epoll`` always registers ``data.fd = fd``; a restore must give
each registration back the data the process gave it (often a pointer), so the
calls are made here through libc.  ``struct epoll_event`` is packed on x86-64
(include/uapi/linux/eventpoll.h ``EPOLL_PACKED``): 12 bytes.
"""

from __future__ import annotations

import ctypes
import errno
import os

from .libc import libc

EPOLL_CLOEXEC = os.O_CLOEXEC
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3

# include/uapi/linux/eventpoll.h
EPOLLIN = 0x001
EPOLLPRI = 0x002
EPOLLOUT = 0x004
EPOLLERR = 0x008
EPOLLHUP = 0x010
EPOLLRDNORM = 0x040
EPOLLRDBAND = 0x080
EPOLLWRNORM = 0x100
EPOLLWRBAND = 0x200
EPOLLMSG = 0x400
EPOLLRDHUP = 0x2000
EPOLLEXCLUSIVE = 1 << 28
EPOLLWAKEUP = 1 << 29
EPOLLONESHOT = 1 << 30
EPOLLET = 1 << 31
# fs/eventpoll.c EP_PRIVATE_BITS: how a registration behaves, not what it waits for.
EP_PRIVATE_BITS = EPOLLWAKEUP | EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE

EVENT_NAMES = (
    ("EPOLLIN", EPOLLIN), ("EPOLLPRI", EPOLLPRI), ("EPOLLOUT", EPOLLOUT), ("EPOLLERR", EPOLLERR),
    ("EPOLLHUP", EPOLLHUP), ("EPOLLRDNORM", EPOLLRDNORM), ("EPOLLRDBAND", EPOLLRDBAND),
    ("EPOLLWRNORM", EPOLLWRNORM), ("EPOLLWRBAND", EPOLLWRBAND), ("EPOLLMSG", EPOLLMSG),
    ("EPOLLRDHUP", EPOLLRDHUP), ("EPOLLEXCLUSIVE", EPOLLEXCLUSIVE), ("EPOLLWAKEUP", EPOLLWAKEUP),
    ("EPOLLONESHOT", EPOLLONESHOT), ("EPOLLET", EPOLLET),
)


class epoll_event(ctypes.Structure):
    """struct epoll_event (packed on x86-64)."""

    _pack_ = 1
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


assert ctypes.sizeof(epoll_event) == 12

_create1 = libc.epoll_create1
_create1.argtypes = [ctypes.c_int]
_create1.restype = ctypes.c_int
_ctl = libc.epoll_ctl
_ctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(epoll_event)]
_ctl.restype = ctypes.c_int
_wait = libc.epoll_wait
_wait.argtypes = [ctypes.c_int, ctypes.POINTER(epoll_event), ctypes.c_int, ctypes.c_int]
_wait.restype = ctypes.c_int


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def epoll_create1(flags: int = EPOLL_CLOEXEC) -> int:
    """A new epoll instance; its fd."""
    return _check(_create1(flags))


def epoll_ctl(epfd: int, op: int, fd: int, events: int = 0, data: int = 0) -> None:
    """``epoll_ctl(epfd, op, fd, {events, data})``.  ADD and MOD add EPOLLERR|EPOLLHUP to
    ``events`` (fs/eventpoll.c ``do_epoll_ctl``), and drop EPOLLWAKEUP without
    CAP_BLOCK_SUSPEND (``ep_take_care_of_epollwakeup``)."""
    event = epoll_event(events, data)
    _check(_ctl(epfd, op, fd, ctypes.byref(event)))


def epoll_wait(epfd: int, maxevents: int, timeout_ms: int = 0) -> list[tuple[int, int]]:
    """``epoll_wait``: the (events, data) reported, at most ``maxevents``.  EINTR is retried."""
    events = (epoll_event * max(1, maxevents))()
    while True:
        n = _wait(epfd, events, maxevents, timeout_ms)
        if n >= 0:
            return [(events[i].events, events[i].data) for i in range(n)]
        if ctypes.get_errno() != errno.EINTR:
            _check(n)


def event_names(mask: int) -> str:
    """"EPOLLIN|EPOLLET" for an events mask ("0" for none)."""
    parts = []
    for name, bit in EVENT_NAMES:
        if mask & bit:
            parts.append(name)
            mask &= ~bit
    if mask:
        parts.append(f"{mask:#x}")
    return "|".join(parts) or "0"

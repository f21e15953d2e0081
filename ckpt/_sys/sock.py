"""Reading a socket without changing it: getsockopt(2) on a raw fd, a Python socket
object borrowed over an fd, a socket filter (what sock_diag tells of sockets:
:mod:`ckpt._sys.sockdiag`).

The dump reads sockets through the fd ``pidfd_getfd`` hands over; it must not
change them (its flags are the target's open file description's).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from typing import Final

from .libc import libc

SOL_SOCKET: Final = 1
SO_DOMAIN: Final = 39      # include/uapi/asm-generic/socket.h
SO_TYPE: Final = 3
SO_PROTOCOL: Final = 38

_getsockopt = libc.getsockopt
_getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
_getsockopt.restype = ctypes.c_int


def _raise() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def getsockopt(fd: int, level: int, name: int, size: int) -> bytes:
    """``getsockopt(fd, level, name)`` with a ``size``-byte buffer: the bytes the kernel
    wrote (``optlen`` may come back shorter)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    length = ctypes.c_uint32(size)
    if _getsockopt(fd, level, name, ctypes.addressof(buf), ctypes.byref(length)) != 0:
        _raise()
    return buf.raw[:length.value]


def getsockopt_int(fd: int, level: int, name: int) -> int:
    """An ``int``-valued socket option."""
    raw = getsockopt(fd, level, name, 4)
    return struct.unpack("<i", raw.ljust(4, b"\0")[:4])[0]


@contextlib.contextmanager
def borrowed(fd: int, known: tuple[int, int, int] | None = None) -> Iterator[socket.socket]:
    """A Python socket object on ``fd`` that changes nothing about it, detached on exit.

    ``socket.socket(fileno=fd)`` sets the fd non-blocking when a default timeout is set
    (Modules/socketmodule.c ``init_sockobject``) -- unless the type it is given carries
    SOCK_NONBLOCK, which only sets the object's own timeout to 0; so the type is given,
    with that bit.  Its getsockopt costs about 1 µs where a ctypes call costs 5.
    ``known``: the socket's (family, type, protocol), when the caller knows them already."""
    if known is None:
        known = (getsockopt_int(fd, SOL_SOCKET, SO_DOMAIN), getsockopt_int(fd, SOL_SOCKET, SO_TYPE),
                 getsockopt_int(fd, SOL_SOCKET, SO_PROTOCOL))
    family, sock_type, protocol = known
    sock = socket.socket(family, sock_type | socket.SOCK_NONBLOCK, protocol, fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


SIOCGSKNS: Final = 0x894C   # include/uapi/linux/sockios.h: an fd of the socket's network namespace


def netns_of(fd: int, pid: int) -> int | None:
    """The inode of socket ``fd``'s network namespace (``SIOCGSKNS`` needs CAP_NET_ADMIN
    over it, net/socket.c ``sock_ioctl``: else process ``pid``'s own); None when neither
    can be read."""
    try:
        ns = fcntl.ioctl(fd, SIOCGSKNS)
    except OSError:
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
    try:
        return os.fstat(ns).st_ino
    finally:
        os.close(ns)


SO_GET_FILTER: Final = 26
_SOCK_FILTER_SIZE: Final = 8   # struct sock_filter (include/uapi/linux/filter.h): u16 code, u8 jt, u8 jf, u32 k


def get_filter(fd: int) -> bytes:
    """The classic BPF program attached with ``SO_ATTACH_FILTER``, 8 bytes per instruction
    (b"" for none).  ``SO_GET_FILTER`` counts in instructions, not bytes: ``optlen`` 0
    asks for the count, which comes back as ``optlen`` (net/core/filter.c
    ``sk_get_filter``); ``EACCES`` for an eBPF program, which has no classic form."""
    count = ctypes.c_uint32(0)
    if _getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(count)) != 0:
        _raise()
    if not count.value:
        return b""
    buf = ctypes.create_string_buffer(count.value * _SOCK_FILTER_SIZE)
    length = ctypes.c_uint32(count.value)
    if _getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, ctypes.addressof(buf), ctypes.byref(length)) != 0:
        _raise()
    return buf.raw[:length.value * _SOCK_FILTER_SIZE]

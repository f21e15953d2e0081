"""Reading a socket without changing it: getsockopt(2) on a raw fd, a Python socket
object borrowed over an fd, a socket filter, and inet_diag's bound TCP sockets.

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


NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20          # include/uapi/linux/sock_diag.h
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300   # include/uapi/linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_BOUND_INACTIVE: Final = 13           # include/net/tcp_states.h: a pseudo-state for inet_diag
_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_DIAG_INODE = 4 + 48 + 16                # struct inet_diag_msg: idiag_inode after the sockid and 4 u32s


def tcp_bound_inactive(family: int) -> set[int]:
    """Inode numbers of the TCP sockets of ``family`` bound to a port but neither listening
    nor connected, in this network namespace: an ``inet_diag`` dump of the pseudo-state
    TCP_BOUND_INACTIVE (net/ipv4/inet_diag.c ``inet_diag_dump_icsk`` walks the bind
    hash for it; Linux commit 91051f003948, "tcp: Dump bound-only sockets in inet_diag").

    getsockname alone cannot tell them: a socket whose connect() failed keeps the port
    it was given in ``inet_sport`` after giving the port back (``__inet_put_port``)."""
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_BOUND_INACTIVE) + bytes(48)
    found: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                + request)
        while True:
            data = nl.recv(1 << 16)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                    raise OSError(err, os.strerror(err))
                found.add(struct.unpack_from("=I", data, offset + _NLMSGHDR.size + _DIAG_INODE)[0])
                offset += (length + 3) & ~3
            if not data:
                return found

"""sock_diag: what the kernel tells of sockets over NETLINK_SOCK_DIAG, without touching them.

One request helper (:func:`_ask`: a ``SOCK_DIAG_BY_FAMILY`` request, its answers)
serves both families ckpt asks about, each answer only of this network
namespace's sockets.

**unix_diag** (include/uapi/linux/unix_diag.h, net/unix/diag.c) answers, per
socket: its type, state and inode, and with the ``UDIAG_SHOW_*`` bits of
``udiag_show`` its name (``UNIX_DIAG_NAME``: the bytes of ``sun_path`` as bound,
an abstract name starting with NUL), the inode of the socket file it is bound to
(``UNIX_DIAG_VFS``), its peer's inode (``UNIX_DIAG_PEER``; 0 for a peer that
no longer has a socket: closed, or a connection not yet accepted), the peers
of the connections waiting in a listener's queue (``UNIX_DIAG_ICONS``), the
queue lengths (``UNIX_DIAG_RQLEN``: for a listener the connections waiting and
the backlog, else the bytes to read -- of the first datagram only for
``SOCK_DGRAM``, ``unix_inq_len`` -- and the bytes sent not yet read by the
peer) and always its ``sk_shutdown`` bits (``UNIX_DIAG_SHUTDOWN``).  A dump
lists every socket that has an inode (``sk_diag_dump`` skips the others).

**inet_diag** (include/uapi/linux/inet_diag.h, net/ipv4/inet_diag.c, udp_diag.c)
answers a dump of the TCP or UDP sockets of one family in the states asked
(``idiag_states``, a bit per state): per socket its state and inode, and always
its ``sk_shutdown`` bits (``INET_DIAG_SHUTDOWN``, ``inet_diag_msg_attrs_fill``:
poll shows no SEND_SHUTDOWN of a UDP socket).  It lists only the sockets in the
protocol's tables: TCP's listening and established hashes, and with the
pseudo-state ``TCP_BOUND_INACTIVE`` its bind hash (a socket bound to a port,
neither listening nor connected: ``inet_diag_dump_icsk``; Linux commit
91051f003948); UDP's hash of bound sockets (``udp_dump``: a connected socket
is bound).  An unbound socket is not listed.
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20          # include/uapi/linux/sock_diag.h
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300   # include/uapi/linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid

AF_UNIX: Final = 1
UDIAG_SHOW_NAME: Final = 0x01
UDIAG_SHOW_VFS: Final = 0x02
UDIAG_SHOW_PEER: Final = 0x04
UDIAG_SHOW_ICONS: Final = 0x08
UDIAG_SHOW_RQLEN: Final = 0x10
UDIAG_SHOW_ALL: Final = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS, UNIX_DIAG_RQLEN = 0, 1, 2, 3, 4
UNIX_DIAG_SHUTDOWN: Final = 6
INET_DIAG_NOCOOKIE: Final = 0xFFFFFFFF       # include/uapi/linux/inet_diag.h: "any cookie"
ALL_STATES: Final = 0xFFFFFFFF

# include/net/tcp_states.h: the three a unix socket takes (net/unix/af_unix.c), which UDP
# takes too (connected, not); TCP_BOUND_INACTIVE is a pseudo-state of inet_diag requests only.
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN, TCP_BOUND_INACTIVE = 1, 7, 10, 13
INET_DIAG_SHUTDOWN: Final = 8            # include/uapi/linux/inet_diag.h, enum of INET_DIAG_*

_REQUEST = struct.Struct("=BBHIIIII")   # struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
_MSG = struct.Struct("=BBBBIII")        # struct unix_diag_msg: family, type, state, pad, ino, cookie[2]
_NLA = struct.Struct("=HH")             # struct nlattr: len, type
_VFS = struct.Struct("=II")             # struct unix_diag_vfs: ino, dev (the kernel's dev_t)
_RQLEN = struct.Struct("=II")           # struct unix_diag_rqlen: rqueue, wqueue
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then a struct inet_diag_sockid
# (48 bytes: ports, addresses, interface, cookie), which a dump does not look at.
_INET_REQUEST = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans, the sockid, expires, rqueue, wqueue,
# uid, inode.
_INET_MSG = struct.Struct("=BBBB48xIIIII")


@dataclass(frozen=True)
class UnixSocket:
    """One unix socket as unix_diag shows it."""

    ino: int
    type: int                           # SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5
    state: int                          # TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN
    name: bytes | None = None           # sun_path as bound (a path ends with its NUL); None: unbound
    vfs: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file it is bound to
    peer: int | None = None             # its peer's inode; None: no peer; 0: a peer without a socket
    icons: tuple[int, ...] = ()         # a listener: the peers of the connections not accepted yet
    rqueue: int = 0
    wqueue: int = 0
    shutdown: int = 0                   # RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2


def kernel_dev(dev: int) -> int:
    """A kernel ``dev_t`` (``s_dev``: 12 bits major, 20 bits minor) as ``st_dev``."""
    return os.makedev(dev >> 20, dev & 0xFFFFF)


def unix_sockets(show: int = UDIAG_SHOW_ALL) -> dict[int, UnixSocket]:
    """Every unix socket of this network namespace, by inode."""
    request = _REQUEST.pack(AF_UNIX, 0, 0, ALL_STATES, 0, show, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    return {s.ino: s for s in map(_parse, _ask(request, NLM_F_REQUEST | NLM_F_DUMP))}


def unix_socket(ino: int, show: int = UDIAG_SHOW_ALL) -> UnixSocket | None:
    """The unix socket of inode ``ino`` in this network namespace, or None."""
    request = _REQUEST.pack(AF_UNIX, 0, 0, ALL_STATES, ino, show, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    try:
        return next(map(_parse, _ask(request, NLM_F_REQUEST)), None)
    except FileNotFoundError:
        return None   # unix_diag_get_exact: -ENOENT


@dataclass(frozen=True)
class InetSocket:
    """One TCP or UDP socket as inet_diag shows it."""

    ino: int
    state: int                          # include/net/tcp_states.h (UDP: TCP_ESTABLISHED when connected)
    shutdown: int = 0                   # RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2


def inet_sockets(family: int, protocol: int, states: int) -> dict[int, InetSocket]:
    """The TCP or UDP (``protocol``) sockets of ``family`` in this network namespace, in one
    of ``states`` (a bit per state: ``1 << TCP_CLOSE``...), by inode (module docstring:
    which ones are listed)."""
    request = _INET_REQUEST.pack(family, protocol, 0, 0, states)
    return {s.ino: s for s in map(_parse_inet, _ask(request, NLM_F_REQUEST | NLM_F_DUMP))}


def _parse_inet(payload: bytes) -> InetSocket:
    """An ``inet_diag_msg`` and the attribute ckpt reads."""
    _family, state, _timer, _retrans, _expires, _rq, _wq, _uid, ino = _INET_MSG.unpack_from(payload)
    shutdown = 0
    for kind, value in _attributes(payload, _INET_MSG.size):
        if kind == INET_DIAG_SHUTDOWN:
            shutdown = value[0]
    return InetSocket(ino, state, shutdown)


def _ask(request: bytes, flags: int) -> Iterator[bytes]:
    """The payload of each answer of a sock_diag ``request``; ``OSError`` for an error answer."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + request)
        while True:
            data = nl.recv(1 << 16)
            if not data:
                return
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return
                yield data[offset + _NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3
            if not flags & NLM_F_DUMP:
                return   # an exact request has a single answer


def _parse(payload: bytes) -> UnixSocket:
    """A ``unix_diag_msg`` and its attributes."""
    _family, sock_type, state, _pad, ino, _c0, _c1 = _MSG.unpack_from(payload)
    fields: dict[str, object] = {}
    for kind, value in _attributes(payload, _MSG.size):
        if kind == UNIX_DIAG_NAME:
            fields["name"] = value
        elif kind == UNIX_DIAG_VFS:
            vfs_ino, dev = _VFS.unpack(value)
            fields["vfs"] = (kernel_dev(dev), vfs_ino)
        elif kind == UNIX_DIAG_PEER:
            fields["peer"] = struct.unpack("=I", value)[0]
        elif kind == UNIX_DIAG_ICONS:
            fields["icons"] = struct.unpack(f"={len(value) // 4}I", value[:len(value) // 4 * 4])
        elif kind == UNIX_DIAG_RQLEN:
            fields["rqueue"], fields["wqueue"] = _RQLEN.unpack(value)
        elif kind == UNIX_DIAG_SHUTDOWN:
            fields["shutdown"] = value[0]
    return UnixSocket(ino, sock_type, state, **fields)  # type: ignore[arg-type]


def _attributes(payload: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each netlink attribute (``struct nlattr``) from ``offset`` on."""
    while offset + _NLA.size <= len(payload):
        length, kind = _NLA.unpack_from(payload, offset)
        if length < _NLA.size:
            return
        yield kind & 0x3FFF, payload[offset + _NLA.size:offset + length]   # NLA_F_NESTED, NLA_F_NET_BYTEORDER
        offset += (length + 3) & ~3

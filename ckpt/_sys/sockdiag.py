"""unix_diag: what the kernel tells of unix sockets over NETLINK_SOCK_DIAG, without touching them.

A ``SOCK_DIAG_BY_FAMILY`` request for ``AF_UNIX`` (include/uapi/linux/unix_diag.h,
net/unix/diag.c) answers, per socket of this network namespace: its type,
state and inode, and with the ``UDIAG_SHOW_*`` bits of ``udiag_show`` its name
(``UNIX_DIAG_NAME``: the bytes of ``sun_path`` as bound, an abstract name
starting with NUL), the inode of the socket file it is bound to
(``UNIX_DIAG_VFS``), its peer's inode (``UNIX_DIAG_PEER``; 0 for a peer that
no longer has a socket: closed, or a connection not yet accepted), the peers
of the connections waiting in a listener's queue (``UNIX_DIAG_ICONS``), the
queue lengths (``UNIX_DIAG_RQLEN``: for a listener the connections waiting and
the backlog, else the bytes to read -- of the first datagram only for
``SOCK_DGRAM``, ``unix_inq_len`` -- and the bytes sent not yet read by the
peer) and always its ``sk_shutdown`` bits (``UNIX_DIAG_SHUTDOWN``).  A dump
lists every socket that has an inode (``sk_diag_dump`` skips the others);
sockets of other network namespaces are not listed.

The netlink framing (``nlmsghdr``, the ``NLMSG_*`` types) is the one
:mod:`ckpt._sys.sock` uses for inet_diag.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from .sock import _NLMSGHDR, NETLINK_SOCK_DIAG, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY

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

# include/net/tcp_states.h: the three a unix socket takes (net/unix/af_unix.c).
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10

_REQUEST = struct.Struct("=BBHIIIII")   # struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
_MSG = struct.Struct("=BBBBIII")        # struct unix_diag_msg: family, type, state, pad, ino, cookie[2]
_NLA = struct.Struct("=HH")             # struct nlattr: len, type
_VFS = struct.Struct("=II")             # struct unix_diag_vfs: ino, dev (the kernel's dev_t)
_RQLEN = struct.Struct("=II")           # struct unix_diag_rqlen: rqueue, wqueue


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
    offset = _MSG.size
    while offset + _NLA.size <= len(payload):
        length, kind = _NLA.unpack_from(payload, offset)
        if length < _NLA.size:
            break
        value = payload[offset + _NLA.size:offset + length]
        kind &= 0x3FFF   # NLA_F_NESTED, NLA_F_NET_BYTEORDER
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
        offset += (length + 3) & ~3
    return UnixSocket(ino, sock_type, state, **fields)  # type: ignore[arg-type]

"""Established TCP connections through TCP_REPAIR (Linux 3.5+), as CRIU's soccr does.

*Dump* (:func:`capture`, the target frozen; needs CAP_NET_ADMIN over the
socket's network namespace, net/ipv4/tcp.c ``tcp_can_repair_sock``).  The
socket is put in repair mode, in which reading its queues consumes nothing and
sends nothing: ``TCP_REPAIR_QUEUE`` selects a queue, ``TCP_QUEUE_SEQ`` gives
its sequence number (``rcv_nxt``, ``write_seq``), ``recv(MSG_PEEK)`` its bytes
(the receive queue, not yet read by the process; the send queue from
``snd_una``, sent or not: net/ipv4/tcp.c ``tcp_peek_sndq``), ``SIOCOUTQNSD``
how much of it was never sent, ``TCP_MAXSEG`` the MSS clamp, ``TCP_INFO`` the
options the peers agreed (window scales, SACK, timestamps),
``TCP_TIMESTAMP`` the timestamp clock and ``TCP_REPAIR_WINDOW`` the windows.
Packets may still arrive while the target is frozen, so the sizes and sequence
numbers are read again afterwards and the reading repeated until they agree.
Repair mode is then left with ``TCP_REPAIR_OFF_NO_WP`` (no window probe), which
resets ``sk_reuse``: ``SO_REUSEADDR`` is set back as recorded, and so is a
``SO_PEEK_OFF`` the peeks would have moved (it is disabled around them).  A
dump that kills the target puts the socket back in repair mode first
(:func:`hold`), so that its close sends the peer neither FIN nor RST
(``__tcp_close`` -> ``tcp_disconnect`` with ``tp->repair``).

*Restore* (:func:`restore`, only with ``ckpt restore --tcp-established``, root's
images only): a new socket in repair mode, bound to the recorded address and
port (repair mode's ``SK_FORCE_REUSE`` passes a port in TIME_WAIT), both queue
sequence numbers set to their start, ``connect()`` (in repair mode it sends no
SYN: ``tcp_connect`` -> ``tcp_finish_connect``), ``TCP_REPAIR_OPTIONS`` (MSS,
window scales, SACK, timestamps), ``TCP_TIMESTAMP``, the receive queue and the
sent part of the send queue written back into their queues, ``TCP_REPAIR_WINDOW``,
then ``TCP_REPAIR_OFF`` (a window probe wakes the peer up) and the never-sent
part sent as the process would have.

Not done: connections in another state than ESTABLISHED (a FIN in a queue
would need a forged packet, as CRIU sends with libnet), microsecond timestamps
(refused), ECN (no repair option sets it: noted), urgent data, and a
network lock: between the kill and the restore the connection has no socket,
and a packet from the peer meanwhile is answered with RST -- CRIU drops them
with iptables rules; ckpt does not, so restore soon after the dump, while the
peer is quiet.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import socket
import struct
from typing import Any

from ..errors import TargetError
from ..image.schema import TcpConnection

SOL_TCP, SOL_SOCKET = 6, 1
TCP_MAXSEG, TCP_INFO = 2, 11
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22   # include/uapi/linux/tcp.h
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_REPAIR_ON, TCP_REPAIR_OFF, TCP_REPAIR_OFF_NO_WP = 1, 0, -1
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8      # include/net/tcp.h
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_ECN, TCPI_OPT_USEC_TS = 1, 2, 4, 8, 64
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
SO_REUSEADDR, SO_PEEK_OFF, SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_BUF_LOCK = 2, 42, 32, 33, 72
_HUGE = ((1 << 31) - 1) // 2  # INT_MAX / 2: the kernel doubles it (net/core/sock.c __sock_set_sndbuf)
REPAIR_WINDOW = struct.Struct("<5I")   # struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
REPAIR_OPT = struct.Struct("<II")      # struct tcp_repair_opt: opt_code, opt_val
_ATTEMPTS = 20
_CHUNK = 1 << 16   # the receive queue is written back in skbs of at most this (tcp_send_rcvq allocates linearly)


class NoRepair(Exception):
    """This dumper may not put the socket in repair mode (no CAP_NET_ADMIN)."""


def _int(sock: socket.socket, level: int, name: int) -> int:
    return sock.getsockopt(level, name) & 0xFFFFFFFF


def _ioctl(sock: socket.socket, request: int) -> int:
    return struct.unpack("<i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def _sizes(sock: socket.socket) -> tuple[int, ...]:
    """(bytes not read, bytes not acknowledged, bytes not sent, rcv_nxt, write_seq)."""
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    rcv_nxt = _int(sock, SOL_TCP, TCP_QUEUE_SEQ)
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    write_seq = _int(sock, SOL_TCP, TCP_QUEUE_SEQ)
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    return _ioctl(sock, SIOCINQ), _ioctl(sock, SIOCOUTQ), _ioctl(sock, SIOCOUTQNSD), rcv_nxt, write_seq


def _peek(sock: socket.socket, queue: int, length: int) -> bytes:
    """The bytes of one queue, read in repair mode with MSG_PEEK (one more asked for, to
    be sure there are no more).  The send queue stays selected no longer than that: while
    it is, whatever the kernel would transmit is marked sent and not sent (net/ipv4/
    tcp_output.c ``tcp_write_xmit``; the retransmission timer would send it later)."""
    if not length:
        return b""
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
    try:
        return sock.recv(length + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    finally:
        sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)


def capture(sock: socket.socket, options: dict[str, int]) -> TcpConnection:
    """The ``tcp_connection`` record of an ESTABLISHED socket (``options``: its recorded
    integer options, read before).  ``NoRepair`` without CAP_NET_ADMIN; the socket is out
    of repair mode, with ``SO_REUSEADDR`` and ``SO_PEEK_OFF`` as they were, on return."""
    try:
        sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    except PermissionError:
        raise NoRepair from None
    peek_off = options.get("SO_PEEK_OFF", -1)
    try:
        if peek_off >= 0:
            sock.setsockopt(SOL_SOCKET, SO_PEEK_OFF, -1)   # a peek would move it (sk_peek_offset_fwd)
        for _ in range(_ATTEMPTS):
            before = _sizes(sock)
            inq_len, outq_len, unsent, rcv_nxt, write_seq = before
            inq = _peek(sock, TCP_RECV_QUEUE, inq_len)
            outq = _peek(sock, TCP_SEND_QUEUE, outq_len)
            window = REPAIR_WINDOW.unpack(sock.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.size))
            mss = _int(sock, SOL_TCP, TCP_MAXSEG)   # in repair mode: the MSS clamp (do_tcp_getsockopt)
            info = sock.getsockopt(SOL_TCP, TCP_INFO, 8)
            timestamp = _int(sock, SOL_TCP, TCP_TIMESTAMP)
            if _sizes(sock) == before and len(inq) == inq_len and len(outq) == outq_len:
                break
        else:
            raise TargetError(f"its TCP connection kept changing while the process was frozen "
                              f"({_ATTEMPTS} readings)")
        return TcpConnection(rcv_nxt=rcv_nxt, write_seq=write_seq, inq=inq, outq=outq, unsent=unsent,
                             mss_clamp=mss, tcpi_options=info[5], snd_wscale=info[6] & 0xF,
                             rcv_wscale=info[6] >> 4, timestamp=timestamp, window=window)
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
        # Leaving repair mode resets sk_reuse (net/ipv4/tcp.c do_tcp_setsockopt TCP_REPAIR).
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, options.get("SO_REUSEADDR", 0))
        if peek_off >= 0:
            sock.setsockopt(SOL_SOCKET, SO_PEEK_OFF, peek_off)


def hold(sock: socket.socket) -> None:
    """Before the target is killed: repair mode, so that the close sends nothing to the peer."""
    sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON)


def enter(sock: socket.socket) -> None:
    """Restore, first: repair mode on the new socket (before bind, so that SK_FORCE_REUSE
    lets it take the recorded port whatever waits on it)."""
    sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON)


def restore(sock: socket.socket, tcp: TcpConnection, peer: tuple[Any, ...]) -> None:
    """Restore, after bind: the connection to ``peer`` as recorded in ``tcp``, still in
    repair mode (:func:`resume` ends it).  Raises ``OSError`` (the caller names the step)."""
    inq, outq, unsent = tcp.inq, tcp.outq, tcp.unsent
    # Room for the queues whatever the buffers were tuned to (as CRIU's restore_prepare_socket);
    # resume() sets the recorded sizes back.
    sock.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, _HUGE)
    sock.setsockopt(SOL_SOCKET, SO_RCVBUFFORCE, _HUGE)
    _set_seq(sock, TCP_RECV_QUEUE, tcp.rcv_nxt - len(inq))
    _set_seq(sock, TCP_SEND_QUEUE, tcp.write_seq - len(outq))
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    try:
        sock.connect(peer)
    except BlockingIOError:
        pass
    opts = []
    if tcp.tcpi_options & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERM, 0))
    if tcp.tcpi_options & TCPI_OPT_WSCALE:
        opts.append((TCPOPT_WINDOW, tcp.snd_wscale | tcp.rcv_wscale << 16))
    if tcp.tcpi_options & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    opts.append((TCPOPT_MAXSEG, tcp.mss_clamp))
    sock.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, b"".join(REPAIR_OPT.pack(*o) for o in opts))
    if tcp.tcpi_options & TCPI_OPT_TIMESTAMPS:
        sock.setsockopt(SOL_TCP, TCP_TIMESTAMP, struct.pack("<I", tcp.timestamp))
    if inq:
        sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        _send_all(sock, inq)
    sent = len(outq) - unsent
    if sent:
        sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        _send_all(sock, outq[:sent])
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    sock.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, REPAIR_WINDOW.pack(*tcp.window))


def resume(sock: socket.socket, tcp: TcpConnection, options: dict[str, int]) -> None:
    """Restore, once the peer's socket exists if it is restored too: out of repair mode (a
    window probe: the peer answers with an ACK), ``SO_REUSEADDR`` as recorded, and the
    bytes that were never sent, sent as the process would have."""
    sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
    sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, options.get("SO_REUSEADDR", 0))
    outq, unsent = tcp.outq, tcp.unsent
    if unsent:
        _send_all(sock, outq[len(outq) - unsent:], socket.MSG_DONTWAIT)   # queued: the window may be full
    # The buffer sizes as they were, and whether the process had set them (else the kernel
    # goes on tuning them: net/ipv4/tcp_input.c tcp_rcv_space_adjust, tcp_sndbuf_expand).
    for name, force in (("SO_SNDBUF", SO_SNDBUFFORCE), ("SO_RCVBUF", SO_RCVBUFFORCE)):
        if name in options:
            sock.setsockopt(SOL_SOCKET, force, options[name] // 2)
    sock.setsockopt(SOL_SOCKET, SO_BUF_LOCK, options.get("SO_BUF_LOCK", 0))


def _set_seq(sock: socket.socket, queue: int, seq: int) -> None:
    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
    sock.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, struct.pack("<I", seq & 0xFFFFFFFF))


def _send_all(sock: socket.socket, data: bytes, flags: int = 0) -> None:
    """Write ``data`` into the selected queue; in chunks, which the kernel takes whole or
    refuses with ENOMEM (a linear skb for the receive queue, as soccr's __send_queue)."""
    view = memoryview(data)
    chunk = min(len(view), _CHUNK)
    while view:
        try:
            n = sock.send(view[:chunk], flags)
        except OSError as err:
            if err.errno == errno.ENOMEM and chunk > 1024:
                chunk //= 2
                continue
            raise
        view = view[n:]

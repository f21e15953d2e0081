"""TCP and UDP sockets on IPv4 and IPv6: unbound, bound, listening, UDP connected.

*Dump* (the target is frozen; nothing here changes what it observes).  Every
fact is read from the socket itself, through the fd ``pidfd_getfd`` handed
over: its family, type and protocol (``SO_DOMAIN``, ``SO_TYPE``,
``SO_PROTOCOL``), its address and peer (``getsockname``, ``getpeername``),
its options (:mod:`ckpt.files.sockopts`), its classic BPF filter, for TCP the
state, the listen backlog and the accept queue (``TCP_INFO``: for a listening
socket ``tcpi_unacked`` is the accept queue and ``tcpi_sacked`` the backlog,
net/ipv4/tcp.c ``tcp_get_info``), the memory queued (``SO_MEMINFO``), a
pending error (``poll``: ``POLLERR`` without reading ``SO_ERROR``, which would
clear it), the owner of its inode (the uid the kernel gave it, ``sk_uid``,
which ``SO_REUSEPORT`` groups compare) and its network namespace
(``SIOCGSKNS``).  Its shutdown is ``sk_shutdown`` as ``inet_diag`` reports it
(:func:`ckpt._sys.sockdiag.inet_sockets`, as CRIU's sk-inet.c does): poll
shows no SEND_SHUTDOWN of a UDP socket (``datagram_poll``).  inet_diag also
tells whether a TCP socket in state CLOSE with a port still holds it: one whose
connect() failed shows a port it no longer holds.

*Restore* (in the restore child, and once before the fork as a preflight
that stops short of listen() and connect()): ``socket()`` created as the
recorded owner, each recorded option that differs from the new socket's set
and all of them read back and compared, the filter attached, ``bind()`` to the
recorded address and port (the dumped process was killed, so the port is
free; if it is not: "port 6379 is in use"), then ``listen(backlog)``, UDP's
``connect()``, a shutdown, ``O_NONBLOCK``.

*Refused by name*: other protocols (raw, SCTP, MPTCP, UDP-Lite), TCP
connections (established or on their way: ``ckpt restore --tcp-established``
is not implemented yet), a TCP socket whose connection ended, a listening
socket with connections waiting to be accepted, UDP datagrams received and
not yet read or not yet sent (UDP may lose a datagram, but a restore must not
do so silently), a pending socket error, an eBPF socket filter, a TCP upper
layer protocol (kTLS).  (O_ASYNC and the signal owner: :mod:`ckpt.files.fown`.)  From images not root's (:mod:`ckpt.trust`):
a port below ``net.ipv4.ip_unprivileged_port_start``, an option only a
privileged process may set (``SO_PRIORITY`` above 6, ``SO_MARK``,
``IP_TRANSPARENT``, a buffer above ``rmem_max``/``wmem_max``, a congestion
control outside ``tcp_allowed_congestion_control``, ...), a socket owned by
another user; and the sockets of such images are created with no effective
capability, so the kernel refuses what these checks might miss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from .. import trust
from .._sys import caps, fs, sockdiag
from .._sys.sock import SO_DOMAIN, SO_TYPE, borrowed, getsockopt_int, netns_of
from ..errors import ImageError, TargetError, UntrustedImage
from ..image.schema import InetAddress, InetFile
from . import sockopts, tcp_repair
from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject, article
from .sockopts import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOL_SOCKET, SOL_TCP

SOCK_STREAM, SOCK_DGRAM = 1, 2
TCP_INFO, SO_MEMINFO = 11, 55
SK_MEMINFO = struct.Struct("<9I")        # include/uapi/linux/sock_diag.h SK_MEMINFO_*: rmem_alloc, rcvbuf,
#                                          wmem_alloc, sndbuf, fwd_alloc, wmem_queued, optmem, backlog, drops
_TCPI_STATE, _TCPI_UNACKED, _TCPI_SACKED, _TCPI_SEGS = 0, 24, 28, 136   # struct tcp_info offsets
TCP_INFO_SIZE = 144
SHUT_RD_BIT, SHUT_WR_BIT = 1, 2          # sk_shutdown's RCV_SHUTDOWN, SEND_SHUTDOWN (include/net/sock.h)

# include/net/tcp_states.h; a UDP socket is ESTABLISHED once connected, else CLOSE.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
_PROTOCOL_NAMES = {1: "ICMP", 58: "ICMPv6", 132: "SCTP", 136: "UDP-Lite", 262: "MPTCP", 255: "raw IP"}
_TYPE_NAMES = {1: "stream", 2: "datagram", 3: "raw", 4: "RDM", 5: "seqpacket", 10: "packet"}


def _family_name(family: int) -> str:
    return {AF_INET: "IPv4", AF_INET6: "IPv6"}.get(family, f"family {family}")


def supported(file: InetFile) -> bool:
    """A TCP or UDP socket (the only inet sockets this kind restores)."""
    return (file.sock_type, file.protocol) in ((SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP))


def is_tcp(file: InetFile) -> bool:
    return file.protocol == IPPROTO_TCP and file.sock_type == SOCK_STREAM


def is_connection(file: InetFile) -> bool:
    """An ESTABLISHED TCP connection (:mod:`ckpt.files.tcp_repair`)."""
    return is_tcp(file) and file.state == "ESTABLISHED"


def endpoint(address: InetAddress | None) -> str:
    """"127.0.0.1:8080", "[::1]:8080", "[fe80::1%2]:53"."""
    if address is None:
        return "?"
    addr = address.addr
    if ":" in addr:
        scope = f"%{address.scope_id}" if address.scope_id else ""
        return f"[{addr}{scope}]:{address.port}"
    return f"{addr}:{address.port}"


def is_bound(address: InetAddress) -> bool:
    """Whether a restore binds: a port, or an address that is not the wildcard."""
    return bool(address.port) or address.addr not in ("0.0.0.0", "::")


# -- dump -----------------------------------------------------------------------------------


class Inet(FileKind):
    """Kind "inet" (record ``file_inet``): every socket of family AF_INET or AF_INET6;
    those that are neither TCP nor UDP are recorded to be refused by name."""

    names = ("inet",)

    def claims(self, probe: Probe) -> str | None:
        if probe.file.kind != "socket" or probe.file.deleted:
            return None
        try:
            family = getsockopt_int(probe.getfd(), SOL_SOCKET, SO_DOMAIN)
        except OSError:
            return None
        return "inet" if family in (AF_INET, AF_INET6) else None

    def dump(self, probe: Probe) -> dict[str, Any]:
        return capture(probe.getfd(), probe.pid)

    # -- what a checkpoint says -------------------------------------------------------------

    def describe(self, file: InetFile) -> str:
        return describe(file)

    def reasons(self, file: InetFile, subject: Subject) -> list[str]:
        who = f"{subject} {subject.verb('is', 'are')} {describe(file)}"
        if not supported(file):
            return [f"{who}, which ckpt cannot restore (only TCP and UDP sockets)"]
        out = []
        state = file.state
        if is_tcp(file):
            if state == "ESTABLISHED":
                tcp = file.tcp
                if tcp is None:
                    out.append(f"{who}, which the dump could not read (TCP_REPAIR needs CAP_NET_ADMIN)")
                elif tcp.tcpi_options & tcp_repair.TCPI_OPT_USEC_TS:
                    out.append(f"{who} with microsecond TCP timestamps, which TCP_REPAIR cannot restore")
            elif state not in ("LISTEN", "CLOSE"):
                out.append(f"{who}, which ckpt cannot restore (of TCP connections, only ESTABLISHED ones, "
                           "with ckpt restore --tcp-established)")
            elif state == "LISTEN" and file.accept_queue:
                n = file.accept_queue
                out.append(f"{who} with {n} connection{'s' if n != 1 else ''} not yet accepted, which ckpt "
                           "cannot restore (they live in the kernel's accept queue; dump again once accepted)")
            elif state == "CLOSE" and file.segments:
                out.append(f"{who} whose connection has ended, which ckpt cannot restore yet")
        else:
            if file.rqueue:
                out.append(f"{who} with datagrams received and not yet read ({file.rqueue} bytes of receive "
                           "buffer), which ckpt cannot restore")
            if file.wqueue:
                out.append(f"{who} with datagrams not yet sent ({file.wqueue} bytes), which ckpt cannot "
                           "restore")
        if file.error:
            out.append(f"{who} with a pending socket error (SO_ERROR), which ckpt cannot restore")
        if file.filter is None:
            out.append(f"{who} with an eBPF socket filter, which the kernel does not hand back")
        ulp = file.name_options.get("TCP_ULP")
        if ulp:
            out.append(f"{who} with the TCP upper layer protocol {ulp!r}, which ckpt cannot restore")
        return out + option_reasons(file, who)

    def notes(self, file: InetFile, subject: Subject) -> list[str]:
        tcp = file.tcp if is_connection(file) else None
        if tcp is None:
            return []
        out = [f"{subject} {subject.verb('is', 'are')} {describe(file)}: restored only by ckpt restore "
               "--tcp-established (root's images, on this host, after dump --kill)"]
        if tcp.tcpi_options & tcp_repair.TCPI_OPT_ECN:
            out.append(f"{subject}: the connection had negotiated ECN, which TCP_REPAIR does not restore: it "
                       "comes back without")
        return out

    def before_kill(self, file: InetFile, getfd: Callable[[], int]) -> None:
        if is_connection(file) and file.tcp is not None:
            with borrowed(getfd()) as sock:
                tcp_repair.hold(sock)

    # -- restore ----------------------------------------------------------------------------

    def check(self, planned: PlannedFile) -> None:
        sockopts.check_netns(planned.file.netns, what(planned))

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        build(planned, ctx, final=False).close()

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        return build(planned, ctx, final=True).detach()


def option_reasons(file: InetFile, who: str) -> list[str]:
    """Recorded options a restore cannot set: unknown to this ckpt, of another kind of
    socket, or of a value the kernel does not take (an edited image)."""
    return [f"{who} with {what}" for what in sockopts.unknown(file, file.family, file.protocol)]


def capture(fd: int, pid: int) -> dict[str, Any]:
    """The kind's fields of a ``file_inet`` record for socket ``fd`` (a copy of the frozen
    target ``pid``'s fd)."""
    with borrowed(fd) as sock:
        return _capture(sock, pid)


def _capture(sock: socket.socket, pid: int) -> dict[str, Any]:
    fd = sock.fileno()
    family, protocol = int(sock.family), sock.proto
    sock_type = sock.getsockopt(SOL_SOCKET, SO_TYPE)
    st = os.fstat(fd)
    record: dict[str, Any] = {
        "family": family, "sock_type": sock_type, "protocol": protocol, "state": "CLOSE",
        "local": _address(sock.getsockname()), "peer": None, "backlog": 0, "accept_queue": 0, "segments": 0,
        "rqueue": 0, "wqueue": 0, "shutdown": 0, "error": False, "uid": st.st_uid, "gid": st.st_gid,
        "netns": netns_of(fd, pid), "options": {}, "pair_options": {}, "name_options": {}, "ip_options": b"",
        "filter": b"",
    }
    if (sock_type, protocol) not in ((SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP)):
        return record   # refused by name; nothing more is read from it
    record["peer"] = _peer(sock)
    meminfo = SK_MEMINFO.unpack(sock.getsockopt(SOL_SOCKET, SO_MEMINFO, SK_MEMINFO.size).ljust(SK_MEMINFO.size,
                                                                                               b"\0"))
    record["rqueue"], record["wqueue"] = meminfo[0], max(meminfo[2], meminfo[5])
    if protocol == IPPROTO_TCP:
        info = sock.getsockopt(SOL_TCP, TCP_INFO, TCP_INFO_SIZE).ljust(TCP_INFO_SIZE, b"\0")
        record["state"] = TCP_STATES.get(info[_TCPI_STATE], str(info[_TCPI_STATE]))
        if record["state"] == "LISTEN":
            record["accept_queue"], record["backlog"] = struct.unpack_from("<II", info, _TCPI_UNACKED)
        segs_out, segs_in = struct.unpack_from("<II", info, _TCPI_SEGS)
        record["segments"] = segs_in + segs_out
    elif record["peer"] is not None:
        record["state"] = "ESTABLISHED"
    diag = _diag(record, st.st_ino)
    if protocol == IPPROTO_TCP and record["state"] == "CLOSE" and record["local"].port and diag is None:
        record["local"] = dataclasses.replace(record["local"], port=0)   # a port connect() took and gave back
    # Not polled: a listening socket (no error, no shutdown), and a UDP socket with datagrams
    # queued (udp_poll would look at the first one, first_packet_length; refused anyway).
    if record["state"] != "LISTEN" and not (protocol == IPPROTO_UDP and record["rqueue"]):
        record["error"], record["shutdown"] = _poll_state(fd, protocol)
    if diag is not None:
        record["shutdown"] = diag.shutdown
    record.update(sockopts.read(sock, family, protocol))
    if family == AF_INET:
        record["ip_options"] = sockopts.read_ip_options(sock)
    record["filter"] = sockopts.read_filter(fd)
    if protocol == IPPROTO_TCP and record["state"] == "ESTABLISHED":
        try:
            record["tcp"] = tcp_repair.capture(sock, record["options"])   # after the options: it resets some
        except tcp_repair.NoRepair:
            record["tcp"] = None
    return record


def _address(name: tuple[Any, ...]) -> InetAddress:
    """The ``inet_address`` record of what getsockname/getpeername return."""
    if len(name) == 4:
        return InetAddress(addr=name[0], port=name[1], flowinfo=name[2], scope_id=name[3])
    return InetAddress(addr=name[0], port=name[1])


def _peer(sock: socket.socket) -> InetAddress | None:
    try:
        return _address(sock.getpeername())
    except OSError as err:
        if err.errno == errno.ENOTCONN:
            return None
        raise


def _diag(record: dict[str, Any], ino: int) -> sockdiag.InetSocket | None:
    """The socket of inode ``ino`` as inet_diag lists it, among those in its own state (a
    dump of that state only): a bound UDP socket, a TCP socket in CLOSE that holds a port.
    None when it is not listed (unbound, or in another network namespace) or not asked:
    other TCP states, whose shutdown poll shows (a listener has none, net/ipv4/af_inet.c
    ``inet_shutdown``; a SEND_SHUTDOWN moves a connection out of ESTABLISHED)."""
    if not record["local"].port:
        return None
    if record["protocol"] == IPPROTO_TCP:
        if record["state"] != "CLOSE":
            return None
        state = sockdiag.TCP_BOUND_INACTIVE
    else:
        state = sockdiag.TCP_ESTABLISHED if record["peer"] is not None else sockdiag.TCP_CLOSE
    return sockdiag.inet_sockets(record["family"], record["protocol"], 1 << state).get(ino)


def _poll_state(fd: int, protocol: int) -> tuple[bool, int]:
    """(a pending error, the shutdown bits) as poll shows them, without reading anything:
    POLLERR for ``sk_err`` or a queued error; POLLRDHUP for RCV_SHUTDOWN; for UDP,
    POLLHUP for both directions shut (net/core/datagram.c ``datagram_poll``; a TCP socket
    in CLOSE always has POLLHUP, net/ipv4/tcp.c ``tcp_poll``).  A SEND_SHUTDOWN alone
    shows nowhere: the shutdown of a socket inet_diag lists is its (:func:`_diag`)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLOUT | select.POLLRDHUP)
    revents = 0
    for _, events in poller.poll(0):
        revents |= events
    shutdown = SHUT_RD_BIT if revents & select.POLLRDHUP else 0
    if protocol == IPPROTO_UDP and revents & select.POLLHUP:
        shutdown = SHUT_RD_BIT | SHUT_WR_BIT
    return bool(revents & select.POLLERR), shutdown


def describe(file: InetFile) -> str:
    """"a TCP socket listening on 127.0.0.1:8080", "a UDP socket 127.0.0.1:5000 connected
    to 127.0.0.1:53", "an unbound TCP socket (IPv6)", "a raw IPv4 socket (protocol 1)"."""
    family = _family_name(file.family)
    if not supported(file):
        proto = _PROTOCOL_NAMES.get(file.protocol, f"protocol {file.protocol}")
        kind = _TYPE_NAMES.get(file.sock_type, f"type {file.sock_type}")
        return f"{article(kind)} {kind} {family} socket ({proto})"
    name = "TCP" if is_tcp(file) else "UDP"
    local, peer, state = file.local, file.peer, file.state
    if name == "TCP" and state == "LISTEN":
        return f"a TCP socket listening on {endpoint(local)}"
    if peer is not None:
        if name == "TCP":
            return f"a TCP connection {endpoint(local)} -> {endpoint(peer)} ({state})"
        return f"a UDP socket {endpoint(local)} connected to {endpoint(peer)}"
    if local is not None and is_bound(local):
        return f"a {name} socket bound to {endpoint(local)}"
    if name == "TCP" and state != "CLOSE":
        return f"a TCP socket ({state}, {family})"
    return f"an unbound {name} socket ({family})"


def what(planned: PlannedFile) -> str:
    """"fd 5 (a TCP socket listening on 127.0.0.1:8080)", for errors."""
    return f"{planned.subject} ({describe(planned.file)})"


# -- restore --------------------------------------------------------------------------------


def build(planned: PlannedFile, ctx: RestoreContext, *, final: bool) -> socket.socket:
    """A new socket as ``planned.file`` records it: created as its owner, its options, its
    filter, bound; with ``final`` also listening or connected, shut down as it was, and
    with its status flags (the preflight stops before those).  Every option is read back
    and compared; any difference is refused by name."""
    f = planned.file
    principal = ctx.principal
    if principal is None:
        raise ImageError(f"{what(planned)}: the restore did not say whose images these are")
    connection = is_connection(f)
    if connection:
        _check_connection(planned, ctx, principal)
    _check_owner(planned, principal)
    _check_port(planned, principal)
    _, _, groups = fs.thread_fs_identity()
    unprivileged = caps.without_effective_capabilities() if not principal.trusted else contextlib.nullcontext()
    with trust.acting_as((f.uid, f.gid, groups)), unprivileged:
        sock = socket.socket(f.family, f.sock_type, f.protocol)
        skip = dynamic_options(f)
        try:
            _set_options(sock, planned, principal, skip)
            if connection:
                tcp_repair.enter(sock)
            if final and connection:
                # Bound and connected once every other open file is in place: a listener of
                # its port, at a higher fd, would find the port taken.
                ctx.later(functools.partial(_reconnect, planned, ctx, principal, skip))
                return sock
            if is_bound(f.local):
                _bind(sock, planned)
            if final:
                _connect(sock, planned)
                os.set_blocking(sock.fileno(), not f.flags & os.O_NONBLOCK)
            elif connection:
                skip |= {"SO_REUSEADDR"}   # SK_FORCE_REUSE until repair mode ends
            _verify(sock, planned, final=final, skip=skip)
        except BaseException:
            sock.close()
            raise
    return sock


def dynamic_options(file: InetFile) -> set[str]:
    """Options of a TCP connection that the kernel keeps changing on its own, neither set nor
    compared: the MSS it uses (TCP_MAXSEG; repair mode restores the peer's MSS clamp), the
    buffer sizes it tunes unless the process set them (SO_BUF_LOCK; net/ipv4/tcp_input.c
    ``tcp_rcv_space_adjust``, ``tcp_sndbuf_expand``), the CPU that last received for it."""
    if not is_connection(file):
        return set()
    locks = file.options.get("SO_BUF_LOCK", 0)
    out = {"TCP_MAXSEG", "SO_INCOMING_CPU"}
    if not locks & 1:
        out.add("SO_SNDBUF")
    if not locks & 2:
        out.add("SO_RCVBUF")
    return out


def _check_connection(planned: PlannedFile, ctx: RestoreContext, principal: trust.Principal) -> None:
    """A TCP connection comes back only when asked for, and only from root's images: TCP_REPAIR
    (CAP_NET_ADMIN) can make any connection appear, from any port to any peer."""
    if not ctx.tcp_established:
        raise TargetError(f"{what(planned)}: a TCP connection is restored only with ckpt restore "
                          "--tcp-established")
    if not principal.trusted:
        raise UntrustedImage(f"{what(planned)}: restoring a TCP connection needs TCP_REPAIR (CAP_NET_ADMIN), "
                             f"which the images' owner {principal.describe()} does not have")


def _reconnect(planned: PlannedFile, ctx: RestoreContext, principal: trust.Principal,
               skip: set[str]) -> None:  # pragma: no cover - runs in the restore child
    """Once every open file is in place: bind the connection's socket (in repair mode, whose
    SK_FORCE_REUSE passes its listener and TIME_WAIT) and make the connection again
    (:func:`ckpt.files.tcp_repair.restore`); its end of repair mode waits for every other
    connection (:func:`_resume`)."""
    f = planned.file
    with borrowed(ctx.opened[planned.id]) as sock:
        _bind(sock, planned)
        try:
            tcp_repair.restore(sock, f.tcp, _sockaddr(f.family, f.peer))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise TargetError(f"{what(planned)}: the connection exists already (is the dumped process "
                                  "still running?)") from None
            raise TargetError(f"{what(planned)}: cannot restore the connection: {err.strerror or err}") from None
    ctx.later(functools.partial(_resume, planned, ctx, principal, skip))


def _resume(planned: PlannedFile, ctx: RestoreContext, principal: trust.Principal,
            skip: set[str]) -> None:  # pragma: no cover - runs in the restore child
    """Once every connection is made again (its peer may be one of them: a window probe to
    a socket not there yet would be answered with RST): out of repair mode, the unsent
    bytes sent, the options connect() computed set back, the status flags, all compared."""
    f = planned.file
    with borrowed(ctx.opened[planned.id]) as sock:
        try:
            tcp_repair.resume(sock, f.tcp, f.options)
        except OSError as err:
            raise TargetError(f"{what(planned)}: cannot resume the connection: {err.strerror or err}") from None
        # connect() computed some from the route and the buffers (TCP_WINDOW_CLAMP in
        # tcp_connect_init); the connection had its own.
        _set_options(sock, planned, principal, skip, again=True)
        if f.shutdown & SHUT_RD_BIT:
            # An ESTABLISHED connection shut for reading (a SEND_SHUTDOWN would have moved
            # it to a closing state, refused): RCV_SHUTDOWN alone sends nothing
            # (net/ipv4/tcp.c tcp_shutdown acts on SEND_SHUTDOWN only).
            sock.shutdown(socket.SHUT_RD)
        os.set_blocking(sock.fileno(), not f.flags & os.O_NONBLOCK)
        _verify(sock, planned, final=True, skip=skip)


def _check_owner(planned: PlannedFile, principal: trust.Principal) -> None:
    """A socket of images not root's must be its owner's: the uid of a socket decides which
    SO_REUSEPORT group it may join (net/ipv4/inet_connection_sock.c ``inet_csk_bind_conflict``)."""
    f = planned.file
    if principal.trusted:
        return
    if f.uid != principal.uid or f.gid not in principal.groups:
        raise UntrustedImage(f"{what(planned)} is owned by uid {f.uid} gid {f.gid}, but its images belong "
                             f"to {principal.describe()}: a restore never grants more than the images' owner has")


def unprivileged_port_start() -> int:
    """net.ipv4.ip_unprivileged_port_start of this network namespace (1024 by default)."""
    return int(sockopts.read_sysctl("ipv4/ip_unprivileged_port_start") or 1024)


def _check_port(planned: PlannedFile, principal: trust.Principal) -> None:
    """Binding a port below ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE
    (net/ipv4/af_inet.c ``__inet_bind``, ``inet_port_requires_bind_service``)."""
    port = planned.file.local.port
    if principal.trusted or not port or not is_bound(planned.file.local):
        return
    start = unprivileged_port_start()
    if port < start:
        raise UntrustedImage(f"{what(planned)}: binding port {port} needs CAP_NET_BIND_SERVICE (ports below "
                             f"{start}, net.ipv4.ip_unprivileged_port_start), which the images' owner "
                             f"{principal.describe()} does not have")


def _set_options(sock: socket.socket, planned: PlannedFile, principal: trust.Principal, skip: set[str],
                 again: bool = False) -> None:
    """Attach the filter, set each recorded option that the new socket does not have
    already (:func:`ckpt.files.sockopts.apply`), then the IPv4 options.  ``again``: the
    options only."""
    f = planned.file
    sockopts.apply(sock, sockopts.flat(f), f.family, f.protocol, who=what(planned), trusted=principal.trusted,
                   owner=principal.describe(), skip=skip, program=(f.filter or b"") if not again else b"")
    if f.ip_options and not again:
        try:
            sock.setsockopt(sockopts.SOL_IP, sockopts.IP_OPTIONS, f.ip_options)
        except OSError as err:
            raise TargetError(f"{what(planned)}: cannot set its IPv4 header options: {err.strerror}") from None


def _sockaddr(family: int, address: InetAddress) -> tuple[Any, ...]:
    if family == AF_INET6:
        return address.addr, address.port, address.flowinfo or 0, address.scope_id or 0
    return address.addr, address.port


def bind_address(file: InetFile) -> InetAddress:
    """The address a restore binds to: the recorded one, but for an IPv6 socket that
    connect() bound (IPV6_V6ONLY still 0 with a specific address), the wildcard with its
    port -- a bind to the address itself would set IPV6_V6ONLY (net/ipv6/af_inet6.c
    ``__inet6_bind``), and connect() picks the same address again."""
    local = file.local
    if file.family == AF_INET6 and file.peer is not None and file.options.get("IPV6_V6ONLY") == 0 \
            and local.addr != "::" and not local.addr.startswith("::ffff:"):
        return dataclasses.replace(local, addr="::")
    return local


def _bind(sock: socket.socket, planned: PlannedFile) -> None:
    f = planned.file
    local = bind_address(f)
    try:
        sock.bind(_sockaddr(f.family, local))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise TargetError(f"{what(planned)}: port {local.port} is in use") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise TargetError(f"{what(planned)}: address {local.addr} is not on this machine") from None
        if err.errno == errno.EACCES:
            raise UntrustedImage(f"{what(planned)}: binding port {local.port} needs CAP_NET_BIND_SERVICE, "
                                 "which this restore does not have") from None
        raise TargetError(f"{what(planned)}: cannot bind {endpoint(local)}: {err.strerror}") from None
    except (ValueError, OverflowError, socket.gaierror) as err:
        raise ImageError(f"{what(planned)}: the recorded address {endpoint(local)} is not one ({err})") from None


def _connect(sock: socket.socket, planned: PlannedFile) -> None:
    """listen() for a listening TCP socket, connect() for a connected UDP one, then the
    recorded shutdown (which inet_shutdown records even on a socket that is not connected,
    while returning ENOTCONN: net/ipv4/af_inet.c)."""
    f = planned.file
    try:
        if f.state == "LISTEN":
            sock.listen(f.backlog)
        elif f.peer is not None and not is_tcp(f):
            sock.connect(_sockaddr(f.family, f.peer))
    except OSError as err:
        raise TargetError(f"{what(planned)}: cannot {'listen' if f.state == 'LISTEN' else 'connect'}: "
                          f"{err.strerror}") from None
    how = {SHUT_RD_BIT: socket.SHUT_RD, SHUT_WR_BIT: socket.SHUT_WR,
           SHUT_RD_BIT | SHUT_WR_BIT: socket.SHUT_RDWR}.get(f.shutdown)
    if how is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(how)


def _verify(sock: socket.socket, planned: PlannedFile, *, final: bool, skip: set[str]) -> None:
    """Read the new socket as the dump read the old one (but the options in ``skip``);
    refuse any difference by name."""
    f = planned.file
    fd = sock.fileno()
    sockopts.verify(sock, sockopts.flat(f), f.family, f.protocol, who=what(planned), skip=skip)
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (f.uid, f.gid):
        raise TargetError(f"{what(planned)}: the new socket is owned by uid {st.st_uid} gid {st.st_gid}, not "
                          f"uid {f.uid} gid {f.gid} (restore as root)")
    local = _address(sock.getsockname())
    wanted = f.local if final else bind_address(f)   # connect() sets the address bind_address left out
    if is_bound(wanted) and (local.addr, local.port) != (wanted.addr, wanted.port):
        raise TargetError(f"{what(planned)}: bound to {endpoint(local)} instead of {endpoint(wanted)}")
    if not final:
        return
    if f.state == "LISTEN":
        info = sock.getsockopt(SOL_TCP, TCP_INFO, TCP_INFO_SIZE).ljust(TCP_INFO_SIZE, b"\0")
        backlog = struct.unpack_from("<I", info, _TCPI_SACKED)[0]
        if backlog != f.backlog:
            raise TargetError(f"{what(planned)}: its listen backlog is {backlog} on this machine, not "
                              f"{f.backlog} (net.core.somaxconn is lower?)")


INET = Inet()


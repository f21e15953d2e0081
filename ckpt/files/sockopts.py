"""The socket options of a TCP, UDP or unix socket: which ckpt reads, how, and how it sets them.

One table, :data:`OPTIONS`: each option with its level and number (the uapi
headers of Linux 6.18: include/uapi/asm-generic/socket.h, linux/in.h,
linux/in6.h, linux/tcp.h, linux/udp.h), the sockets it applies to, how its
value is encoded, and what an unprivileged process may not set.  A dump
records every option whose ``getsockopt`` succeeds (:func:`read`); a restore
sets, on a new socket, each recorded value that differs from the new socket's
own (:func:`apply`), then reads them all again and refuses any difference
(:func:`differences`), so that an option the kernel will not give back as it
was (a buffer size it rounds, a value it clamps) is named, not lost.

Values are stored by shape (ckpt/image/schema.py ``file_inet``): ``options``
holds the integers (timeouts in microseconds), ``pair_options`` the two-int
structs (``SO_LINGER``: on, seconds; ``SO_TIMESTAMPING``: flags, PHC index;
``SO_TXTIME``: clock id, flags), ``name_options`` the names
(``TCP_CONGESTION``, ``TCP_ULP``, ``SO_BINDTODEVICE``).

Only ``getsockopt`` reads are done, none of which changes the socket (not
``SO_ERROR``, which clears the pending error, nor ``TCP_SAVED_SYN``, which
frees the saved SYN: net/core/sock.c ``sk_getsockopt``, net/ipv4/tcp.c
``do_tcp_getsockopt``).  What no ``getsockopt`` shows is not seen: multicast
group memberships and the IPv4 multicast interface, TCP MD5 and AO keys, a
per-socket TCP Fast Open key, SO_REUSEPORT BPF programs (docs/FORMAT.md
``file_inet``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .._sys.sock import get_filter
from ..errors import TargetError, UntrustedImage
from ..image.schema import InetFile, UnixFile

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOL_SOCKET, SOL_IP, SOL_IPV6, SOL_TCP, SOL_UDP = 1, 0, 41, 6, 17
IPPROTO_TCP, IPPROTO_UDP = 6, 17

SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_BUF_LOCK = 7, 8, 32, 33, 72
SO_ATTACH_FILTER = SO_GET_FILTER = 26
SO_LOCK_FILTER = 44
SOCK_MIN_BUF = 4608   # below any SOCK_MIN_SNDBUF/SOCK_MIN_RCVBUF of include/net/sock.h on x86-64

# What an unprivileged process may not set; each returns the capability a value needs.
Needs = Callable[[Any], "str | None"]


def _nonzero(cap: str) -> Needs:
    return lambda value: cap if value else None


def _priority(value: Any) -> str | None:
    # net/core/sock.c sk_setsockopt SO_PRIORITY: 0..6 for anyone (sk_set_prio_allowed).
    return None if 0 <= value <= 6 else "CAP_NET_ADMIN"


def _txtime(value: Any) -> str | None:
    # sk_setsockopt SO_TXTIME: a clock other than CLOCK_MONOTONIC needs CAP_NET_ADMIN.
    return None if value[0] == 1 else "CAP_NET_ADMIN"


@dataclass(frozen=True)
class Option:
    """One socket option ckpt reads and restores."""

    name: str
    level: int
    number: int
    codec: str = "int"              # int, i64, timeval, pair, name, ifindex_be
    families: tuple[int, ...] = (AF_INET, AF_INET6)
    protocol: int | None = None     # IPPROTO_TCP or IPPROTO_UDP only; None: both
    needs: Needs | None = None      # the capability a value needs, if any
    late: bool = False              # set after the others (a buffer size another option may raise)

    def applies(self, family: int, protocol: int) -> bool:
        if family == AF_UNIX:
            # A unix socket has the SOL_SOCKET options (net/core/sock.c), but for the CPU that
            # last received for it, which only the inet receive paths update.
            return self.level == SOL_SOCKET and self.name != "SO_INCOMING_CPU"
        return family in self.families and self.protocol in (None, protocol)

    @property
    def group(self) -> str:
        """The record field that holds its value."""
        return {"pair": "pair_options", "name": "name_options"}.get(self.codec, "options")


_V6 = (AF_INET6,)
_V4 = (AF_INET,)

OPTIONS: tuple[Option, ...] = (
    # First: setting IP_TOS sets the priority too (net/ipv4/ip_sockglue.c __ip_sock_set_tos,
    # rt_tos2priority), which SO_PRIORITY may then have changed.
    Option("IP_TOS", SOL_IP, 1),
    # SOL_SOCKET (net/core/sock.c sk_setsockopt, sk_getsockopt)
    Option("SO_REUSEADDR", SOL_SOCKET, 2),
    Option("SO_REUSEPORT", SOL_SOCKET, 15),
    Option("SO_KEEPALIVE", SOL_SOCKET, 9),
    Option("SO_BROADCAST", SOL_SOCKET, 6),
    Option("SO_DONTROUTE", SOL_SOCKET, 5),
    Option("SO_OOBINLINE", SOL_SOCKET, 10),
    Option("SO_NO_CHECK", SOL_SOCKET, 11),
    Option("SO_DEBUG", SOL_SOCKET, 1, needs=_nonzero("CAP_NET_ADMIN")),
    Option("SO_PRIORITY", SOL_SOCKET, 12, needs=_priority),
    Option("SO_MARK", SOL_SOCKET, 36, needs=_nonzero("CAP_NET_ADMIN")),
    Option("SO_RCVMARK", SOL_SOCKET, 75),
    Option("SO_LINGER", SOL_SOCKET, 13, "pair"),
    Option("SO_RCVLOWAT", SOL_SOCKET, 18),
    Option("SO_SNDLOWAT", SOL_SOCKET, 19),     # always 1 on Linux; recorded to be sure
    Option("SO_RCVTIMEO", SOL_SOCKET, 20, "timeval"),
    Option("SO_SNDTIMEO", SOL_SOCKET, 21, "timeval"),
    Option("SO_BINDTODEVICE", SOL_SOCKET, 25, "name"),
    Option("SO_PASSCRED", SOL_SOCKET, 16),
    Option("SO_PASSSEC", SOL_SOCKET, 34),
    Option("SO_PASSPIDFD", SOL_SOCKET, 76, families=()),     # unix only (net/core/sock.c sk_may_scm_recv)
    Option("SO_PASSRIGHTS", SOL_SOCKET, 83, families=()),    # unix only, Linux 6.16; 1 unless turned off
    Option("SO_TIMESTAMP_OLD", SOL_SOCKET, 29),
    Option("SO_TIMESTAMP_NEW", SOL_SOCKET, 63),
    Option("SO_TIMESTAMPNS_OLD", SOL_SOCKET, 35),
    Option("SO_TIMESTAMPNS_NEW", SOL_SOCKET, 64),
    Option("SO_TIMESTAMPING", SOL_SOCKET, 37, "pair"),
    Option("SO_RXQ_OVFL", SOL_SOCKET, 40),
    Option("SO_WIFI_STATUS", SOL_SOCKET, 41),
    Option("SO_PEEK_OFF", SOL_SOCKET, 42),
    Option("SO_NOFCS", SOL_SOCKET, 43),
    Option("SO_SELECT_ERR_QUEUE", SOL_SOCKET, 45),
    Option("SO_BUSY_POLL", SOL_SOCKET, 46),
    Option("SO_PREFER_BUSY_POLL", SOL_SOCKET, 69, needs=_nonzero("CAP_NET_ADMIN")),
    Option("SO_BUSY_POLL_BUDGET", SOL_SOCKET, 70, needs=_nonzero("CAP_NET_ADMIN")),
    Option("SO_MAX_PACING_RATE", SOL_SOCKET, 47, "i64"),
    Option("SO_INCOMING_CPU", SOL_SOCKET, 49),
    Option("SO_ZEROCOPY", SOL_SOCKET, 60),
    Option("SO_TXTIME", SOL_SOCKET, 61, "pair", needs=_txtime),
    Option("SO_TXREHASH", SOL_SOCKET, 74),
    Option("SO_LOCK_FILTER", SOL_SOCKET, SO_LOCK_FILTER, late=True),   # after the filter is attached
    Option("SO_SNDBUF", SOL_SOCKET, SO_SNDBUF, late=True),
    Option("SO_RCVBUF", SOL_SOCKET, SO_RCVBUF, late=True),
    Option("SO_BUF_LOCK", SOL_SOCKET, SO_BUF_LOCK, late=True),          # after the sizes, which set it
    # SOL_IP (net/ipv4/ip_sockglue.c); an IPv6 socket has them too, for IPv4-mapped traffic.
    # The multicast ones are UDP's: a TCP socket refuses to set them (EINVAL), and one accepted
    # holds the TTL and interface of the SYN in them (tcp_v4_syn_recv_sock, tcp_v6_syn_recv_sock).
    Option("IP_TTL", SOL_IP, 2),
    Option("IP_RECVOPTS", SOL_IP, 6),
    Option("IP_RETOPTS", SOL_IP, 7),
    Option("IP_PKTINFO", SOL_IP, 8),
    Option("IP_MTU_DISCOVER", SOL_IP, 10),
    Option("IP_RECVERR", SOL_IP, 11),
    Option("IP_RECVTTL", SOL_IP, 12),
    Option("IP_RECVTOS", SOL_IP, 13),
    Option("IP_FREEBIND", SOL_IP, 15),
    Option("IP_PASSSEC", SOL_IP, 18),
    Option("IP_TRANSPARENT", SOL_IP, 19, needs=_nonzero("CAP_NET_ADMIN")),
    Option("IP_RECVORIGDSTADDR", SOL_IP, 20),
    Option("IP_MINTTL", SOL_IP, 21),
    Option("IP_CHECKSUM", SOL_IP, 23),
    Option("IP_BIND_ADDRESS_NO_PORT", SOL_IP, 24),
    Option("IP_RECVFRAGSIZE", SOL_IP, 25),
    Option("IP_RECVERR_RFC4884", SOL_IP, 26),
    Option("IP_MULTICAST_TTL", SOL_IP, 33, protocol=IPPROTO_UDP),
    Option("IP_MULTICAST_LOOP", SOL_IP, 34, protocol=IPPROTO_UDP),
    Option("IP_MULTICAST_ALL", SOL_IP, 49, protocol=IPPROTO_UDP),
    Option("IP_UNICAST_IF", SOL_IP, 50, "ifindex_be"),
    Option("IP_LOCAL_PORT_RANGE", SOL_IP, 51),
    # SOL_IPV6 (net/ipv6/ipv6_sockglue.c)
    Option("IPV6_V6ONLY", SOL_IPV6, 26, families=_V6),
    Option("IPV6_TCLASS", SOL_IPV6, 67, families=_V6),
    Option("IPV6_UNICAST_HOPS", SOL_IPV6, 16, families=_V6),
    Option("IPV6_MULTICAST_IF", SOL_IPV6, 17, families=_V6, protocol=IPPROTO_UDP),
    Option("IPV6_MULTICAST_HOPS", SOL_IPV6, 18, families=_V6, protocol=IPPROTO_UDP),
    Option("IPV6_MULTICAST_LOOP", SOL_IPV6, 19, families=_V6, protocol=IPPROTO_UDP),
    Option("IPV6_MULTICAST_ALL", SOL_IPV6, 29, families=_V6, protocol=IPPROTO_UDP),
    Option("IPV6_MTU_DISCOVER", SOL_IPV6, 23, families=_V6),
    Option("IPV6_RECVERR", SOL_IPV6, 25, families=_V6),
    Option("IPV6_RECVERR_RFC4884", SOL_IPV6, 31, families=_V6),
    Option("IPV6_FLOWINFO_SEND", SOL_IPV6, 33, families=_V6),
    Option("IPV6_RECVPKTINFO", SOL_IPV6, 49, families=_V6),
    Option("IPV6_RECVHOPLIMIT", SOL_IPV6, 51, families=_V6),
    Option("IPV6_RECVHOPOPTS", SOL_IPV6, 53, families=_V6),
    Option("IPV6_RECVRTHDR", SOL_IPV6, 56, families=_V6),
    Option("IPV6_RECVDSTOPTS", SOL_IPV6, 58, families=_V6),
    Option("IPV6_RECVPATHMTU", SOL_IPV6, 60, families=_V6),
    Option("IPV6_DONTFRAG", SOL_IPV6, 62, families=_V6),
    Option("IPV6_RECVTCLASS", SOL_IPV6, 66, families=_V6),
    Option("IPV6_AUTOFLOWLABEL", SOL_IPV6, 70, families=_V6),
    Option("IPV6_ADDR_PREFERENCES", SOL_IPV6, 72, families=_V6),
    Option("IPV6_MINHOPCOUNT", SOL_IPV6, 73, families=_V6),
    Option("IPV6_RECVORIGDSTADDR", SOL_IPV6, 74, families=_V6),
    Option("IPV6_TRANSPARENT", SOL_IPV6, 75, families=_V6, needs=_nonzero("CAP_NET_ADMIN")),
    Option("IPV6_UNICAST_IF", SOL_IPV6, 76, "ifindex_be", families=_V6),
    Option("IPV6_RECVFRAGSIZE", SOL_IPV6, 77, families=_V6),
    Option("IPV6_FREEBIND", SOL_IPV6, 78, families=_V6),
    # SOL_TCP (net/ipv4/tcp.c do_tcp_setsockopt, do_tcp_getsockopt)
    Option("TCP_NODELAY", SOL_TCP, 1, protocol=IPPROTO_TCP),
    Option("TCP_MAXSEG", SOL_TCP, 2, protocol=IPPROTO_TCP),
    Option("TCP_CORK", SOL_TCP, 3, protocol=IPPROTO_TCP),
    Option("TCP_KEEPIDLE", SOL_TCP, 4, protocol=IPPROTO_TCP),
    Option("TCP_KEEPINTVL", SOL_TCP, 5, protocol=IPPROTO_TCP),
    Option("TCP_KEEPCNT", SOL_TCP, 6, protocol=IPPROTO_TCP),
    Option("TCP_SYNCNT", SOL_TCP, 7, protocol=IPPROTO_TCP),
    Option("TCP_LINGER2", SOL_TCP, 8, protocol=IPPROTO_TCP),
    Option("TCP_DEFER_ACCEPT", SOL_TCP, 9, protocol=IPPROTO_TCP),
    Option("TCP_WINDOW_CLAMP", SOL_TCP, 10, protocol=IPPROTO_TCP),
    Option("TCP_CONGESTION", SOL_TCP, 13, "name", protocol=IPPROTO_TCP),
    Option("TCP_THIN_LINEAR_TIMEOUTS", SOL_TCP, 16, protocol=IPPROTO_TCP),
    Option("TCP_USER_TIMEOUT", SOL_TCP, 18, protocol=IPPROTO_TCP),
    Option("TCP_FASTOPEN", SOL_TCP, 23, protocol=IPPROTO_TCP),
    Option("TCP_NOTSENT_LOWAT", SOL_TCP, 25, protocol=IPPROTO_TCP),
    Option("TCP_SAVE_SYN", SOL_TCP, 27, protocol=IPPROTO_TCP),
    Option("TCP_FASTOPEN_CONNECT", SOL_TCP, 30, protocol=IPPROTO_TCP),
    Option("TCP_ULP", SOL_TCP, 31, "name", protocol=IPPROTO_TCP),
    Option("TCP_FASTOPEN_NO_COOKIE", SOL_TCP, 34, protocol=IPPROTO_TCP),
    Option("TCP_INQ", SOL_TCP, 36, protocol=IPPROTO_TCP),
    Option("TCP_TX_DELAY", SOL_TCP, 37, protocol=IPPROTO_TCP),
    Option("TCP_RTO_MAX_MS", SOL_TCP, 44, protocol=IPPROTO_TCP),
    Option("TCP_RTO_MIN_US", SOL_TCP, 45, protocol=IPPROTO_TCP),
    Option("TCP_DELACK_MAX_US", SOL_TCP, 46, protocol=IPPROTO_TCP),
    # SOL_UDP (net/ipv4/udp.c udp_lib_setsockopt, udp_lib_getsockopt)
    Option("UDP_CORK", SOL_UDP, 1, protocol=IPPROTO_UDP),
    Option("UDP_ENCAP", SOL_UDP, 100, protocol=IPPROTO_UDP),
    Option("UDP_NO_CHECK6_TX", SOL_UDP, 101, protocol=IPPROTO_UDP),
    Option("UDP_NO_CHECK6_RX", SOL_UDP, 102, protocol=IPPROTO_UDP),
    Option("UDP_SEGMENT", SOL_UDP, 103, protocol=IPPROTO_UDP),
    Option("UDP_GRO", SOL_UDP, 104, protocol=IPPROTO_UDP),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
IP_OPTIONS = 4          # SOL_IP: the IPv4 header options (at most 40 bytes)
IFNAMSIZ = 16           # include/uapi/linux/if.h; TCP_CA_NAME_MAX and TCP_ULP_NAME_MAX are 16 too
_INT = struct.Struct("<i")
_SIZES = {"int": 4, "i64": 8, "timeval": 16, "pair": 8, "name": IFNAMSIZ, "ifindex_be": 4}
# getsockopt errors that mean "this kernel or this socket has no such option".
_ABSENT = (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL)


def decode(option: Option, raw: bytes) -> Any:
    """The stored value of ``option`` from its getsockopt bytes."""
    codec = option.codec
    if codec == "name":
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")
    raw = raw.ljust(_SIZES[codec], b"\0")
    if codec == "i64":
        return struct.unpack_from("<q", raw)[0]
    if codec == "timeval":
        sec, usec = struct.unpack_from("<qq", raw)
        return sec * 1_000_000 + usec
    if codec == "pair":
        return struct.unpack_from("<ii", raw)   # a tuple, as readers get a Fixed pair (image/schema.py)
    return struct.unpack_from("<i", raw)[0]


def encode(option: Option, value: Any) -> bytes:
    """The setsockopt bytes that set ``option`` to stored ``value``."""
    codec = option.codec
    if codec == "name":
        return str(value).encode("ascii")
    if codec == "i64":
        return struct.pack("<q", value)
    if codec == "timeval":
        return struct.pack("<qq", *divmod(value, 1_000_000))
    if codec == "pair":
        return struct.pack("<ii", *value)
    if codec == "ifindex_be":
        return struct.pack(">i", value)   # set in network byte order, read in host order
    return struct.pack("<i", value)


@functools.cache
def applicable(family: int, protocol: int) -> tuple[Option, ...]:
    """The options of a socket of ``family`` and ``protocol``, in the order they are set."""
    ordered = sorted(OPTIONS, key=lambda o: o.late)   # stable: table order, the late ones last
    return tuple(o for o in ordered if o.applies(family, protocol))


@functools.cache
def _plan(family: int, protocol: int) -> tuple[tuple[Option, int, int, int, str], ...]:
    return tuple((o, o.level, o.number, _SIZES[o.codec], o.group) for o in applicable(family, protocol))


def read(sock: socket.socket, family: int, protocol: int) -> dict[str, dict[str, Any]]:
    """Every applicable option of ``sock`` this kernel shows, by record field:
    ``{"options": {...}, "pair_options": {...}, "name_options": {...}}``.  ``sock`` may be a
    borrowed view of another process's socket (:func:`ckpt._sys.sock.borrowed`)."""
    out: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    get = sock.getsockopt
    for option, level, number, size, group in _plan(family, protocol):
        try:
            raw = get(level, number, size)
        except OSError as err:
            if err.errno in _ABSENT:
                continue
            raise
        out[group][option.name] = _INT.unpack(raw)[0] if len(raw) == 4 and option.codec == "int" \
            else decode(option, raw)
    return out


def read_one(sock: socket.socket, option: Option) -> Any:
    """The value of one option of ``sock``; None when this kernel or socket has none."""
    try:
        raw = sock.getsockopt(option.level, option.number, _SIZES[option.codec])
    except OSError as err:
        if err.errno in _ABSENT:
            return None
        raise
    return decode(option, raw)


def read_ip_options(sock: socket.socket) -> bytes:
    """The IPv4 header options a socket sends (``IP_OPTIONS``; empty for most)."""
    try:
        return sock.getsockopt(SOL_IP, IP_OPTIONS, 40)
    except OSError as err:
        if err.errno in _ABSENT:
            return b""
        raise


def read_filter(fd: int) -> bytes | None:
    """The classic BPF socket filter (:func:`ckpt._sys.sock.get_filter`; b"" for none), or
    None for an eBPF program, which the kernel does not hand back."""
    try:
        return get_filter(fd)
    except OSError as err:
        if err.errno == errno.EACCES:
            return None
        raise


GROUPS = ("options", "pair_options", "name_options")   # the fields of a record that hold options, by shape


Recorded = InetFile | UnixFile | Mapping[str, Mapping[str, Any]]   # a socket record, or what read() returns


def groups(options: Recorded) -> dict[str, Mapping[str, Any]]:
    """The options of a socket record (``file_inet``, ``file_unix``) or of what :func:`read`
    returns, by the record field that holds them (:data:`GROUPS`)."""
    if isinstance(options, Mapping):
        return {group: options[group] for group in GROUPS}
    return {group: getattr(options, group) for group in GROUPS}


def flat(options: Recorded) -> dict[str, Any]:
    """Every option by name (see :func:`groups`)."""
    out: dict[str, Any] = {}
    for values in groups(options).values():
        out.update(values)
    return out


def describe_value(option: Option, value: Any) -> str:
    """"SO_LINGER (1, 5)", "SO_RCVTIMEO 1.5 s", "TCP_CONGESTION 'reno'"."""
    if option.codec == "timeval":
        return f"{option.name} {value / 1e6:g} s"
    if option.codec == "name":
        return f"{option.name} {value!r}"
    return f"{option.name} {value}"


# -- restore ----------------------------------------------------------------------------------

_SYSCTL = "/proc/sys/net"


def check_netns(netns: int | None, what: str) -> None:
    """Refuse a socket recorded in network namespace ``netns`` (an inode; None: unknown) when
    this restore runs in another: its addresses, ports and abstract names are that one's."""
    if netns is not None:
        ours = os.stat("/proc/self/ns/net").st_ino
        if netns != ours:
            raise TargetError(f"{what} was in network namespace net:[{netns}]; this restore runs in net:[{ours}]")


def read_sysctl(name: str) -> str:
    """/proc/sys/net/NAME of this network namespace, stripped ("" when unreadable)."""
    try:
        with open(f"{_SYSCTL}/{name}") as f:
            return f.read().strip()
    except OSError:
        return ""


def apply(sock: socket.socket, wanted: Mapping[str, Any], family: int, protocol: int, *, who: str,
          trusted: bool, owner: str, skip: Collection[str] = (), program: bytes = b"") -> None:
    """Attach the classic filter ``program`` (if any), then set each option of ``wanted``
    (by name, as :func:`flat` gives them) that ``sock`` does not have already, in table
    order (the buffer sizes and their locks last).  ``who`` names the socket in errors;
    images not ``trusted`` may not ask for what needs a capability (``owner`` names
    their owner: "alice (uid 1000)")."""
    if program:
        attach_filter(sock, program, who)   # before SO_LOCK_FILTER, which forbids it
    for option in applicable(family, protocol):
        if option.name not in wanted or option.name in skip:
            continue   # not recorded (the dumping kernel did not have it), or the kernel's to tune
        value = wanted[option.name]
        if read_one(sock, option) == value:
            continue
        level, number, data = option.level, option.number, encode(option, value)
        cap = option.needs(value) if option.needs else None
        if option.number in (SO_SNDBUF, SO_RCVBUF) and option.level == SOL_SOCKET:
            number, data, cap = buffer_setting(option, value, cap)
        elif option.name == "TCP_CONGESTION" and value not in read_sysctl(
                "ipv4/tcp_allowed_congestion_control").split():
            cap = "CAP_NET_ADMIN"
        if cap and not trusted:
            raise UntrustedImage(f"{who}: {describe_value(option, value)} needs {cap}, which the images' owner "
                                 f"{owner} does not have")
        try:
            sock.setsockopt(level, number, data)
        except OSError as err:
            raise TargetError(f"{who}: cannot set {describe_value(option, value)}: {err.strerror}") from None


def buffer_setting(option: Option, value: int, cap: str | None) -> tuple[int, bytes, str | None]:
    """How to set SO_SNDBUF/SO_RCVBUF to the recorded size: the kernel doubles what it is
    given (net/core/sock.c ``__sock_set_sndbuf``) and caps it at wmem_max/rmem_max, past
    which only SO_SNDBUFFORCE/SO_RCVBUFFORCE (CAP_NET_ADMIN) go.  (option number, value
    bytes, the capability it needs)."""
    send = option.number == SO_SNDBUF
    limit = int(read_sysctl("core/wmem_max" if send else "core/rmem_max") or 0)
    half = value // 2
    if half <= limit:
        return option.number, struct.pack("<i", half), cap
    force = SO_SNDBUFFORCE if send else SO_RCVBUFFORCE
    return force, struct.pack("<i", half), "CAP_NET_ADMIN"


def attach_filter(sock: socket.socket, program: bytes, who: str) -> None:
    """SO_ATTACH_FILTER with a classic BPF program (struct sock_fprog: u16 length, then a
    pointer to the instructions)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("<HxxxxxxQ", len(program) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as err:
        raise TargetError(f"{who}: cannot attach its socket filter: {err.strerror}") from None


def verify(sock: socket.socket, wanted: Mapping[str, Any], family: int, protocol: int, *, who: str,
           skip: Collection[str] = ()) -> None:
    """Read ``sock``'s options as the dump read the old socket's; refuse any difference from
    ``wanted`` (but the options in ``skip``) by name."""
    now = flat(read(sock, family, protocol))
    for name, value in wanted.items():
        if name in skip:
            continue
        if name not in now:
            raise TargetError(f"{who}: this kernel has no socket option {name}")
        if now[name] != value:
            raise TargetError(f"{who}: {describe_value(BY_NAME[name], value)} comes back as {now[name]!r} on "
                              "this kernel")


def unknown(options: Recorded, family: int, protocol: int) -> list[str]:
    """What a restore cannot set of recorded options (see :func:`groups`): phrases naming
    each option unknown to this ckpt, of another kind of socket, or of a value the kernel
    does not take (an edited image)."""
    out = []
    for group, values in groups(options).items():
        for name, value in values.items():
            option = BY_NAME.get(name)
            if option is None:
                out.append(f"socket option {name}, which this ckpt does not know")
            elif option.group != group or not option.applies(family, protocol):
                out.append(f"socket option {name}, which a socket of its kind does not have")
            elif option.codec in ("int", "ifindex_be") and not -(1 << 31) <= value < (1 << 31) \
                    or option.codec == "name" and not (value.isascii() and value.isprintable()):
                out.append(f"{name} {value!r}, a value the kernel does not take (a damaged image?)")
    return out

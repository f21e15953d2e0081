"""The dump side of kind ``"unix"`` (:mod:`ckpt.files.unix`): a unix socket read without changing it.

The target is frozen; its fds taken with ``pidfd_getfd``; nothing here
changes what the process observes.  ``unix_diag`` (:mod:`ckpt._sys.sockdiag`,
one dump of the namespace's sockets per capture) gives every socket's type,
state, name, socket file, peer, the peers of a listener's waiting connections,
its backlog and its shutdown bits; ``getpeername`` the name of an outside
peer; ``getsockopt`` the options (:mod:`ckpt.files.sockopts`, the ``SOL_SOCKET``
ones) and ``SO_PEERCRED``; ``poll`` a pending error
(``SO_ERROR`` would clear it).  The queue is read without consuming it:
``MSG_PEEK`` with a peek offset (``SO_PEEK_OFF``, which each peek advances:
net/core/datagram.c ``__skb_try_recv_from_queue``, ``sk_peek_offset_fwd``),
with ``SO_PASSCRED`` on so that every message comes with the credentials it
carries (pid 0 when none: ``maybe_add_creds`` adds them only when a side had
``SO_PASSCRED`` at the send) and a stream's bytes of different writers are not
glued (``unix_stream_read_generic``); both options are put back as they were,
the peek offset included.  The control buffer holds one ``SCM_CREDENTIALS``
and nothing more, so no fd in flight is ever installed in ckpt: ``MSG_CTRUNC``
tells of one, and fdinfo's ``scm_fds`` then how many (net/unix/af_unix.c
``unix_show_fdinfo``); a datagram's sender is its ``msg_name``, matched to the
process's sockets by name.  A zero-length datagram or packet is seen by the
first peek that reaches it, which marks it ``peeked``; every later peek at an
offset skips it (net/core/datagram.c ``__skb_try_recv_from_queue``): a second
dump, or one after the process's own ``MSG_PEEK``, does not see it.  Where the
sender is the process's peer, its send buffer tells (:func:`_unseen`) and the
socket is refused by name; where several sockets send to one (a bound datagram
socket), nothing does, and such a datagram is lost (CRIU's dump stops reading
at the first zero-length one).  The mark itself shows to a process peeking at
an offset only.
One pass over /proc/*/fd finds other processes holding the process's sockets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
from dataclasses import dataclass, field
from typing import Any

from .. import trust
from .._sys import fs, sockdiag
from .._sys.sock import SO_TYPE, borrowed, getsockopt_int, netns_of
from . import sockopts
from .base import Capture, Probe
from .inet import SK_MEMINFO, SO_MEMINFO
from .sockopts import AF_UNIX, SOL_SOCKET
from .survey import holders as fd_holders, named_holders
from .unix import (CREDS_SPACE, PEEK_BUFFER, SCM_CREDENTIALS, SO_PASSCRED, SO_PEEK_OFF, SOCK_TYPES,
                   STATES, TYPE_NUMBERS, UCRED, is_path, peercred, record_name, show_name)


@dataclass
class _Ours:
    """One unix socket of the target, as the survey found it."""

    diag: sockdiag.UnixSocket
    probe: Probe            # its lowest fd
    file_id: int
    owner: tuple[int, int]  # uid, gid of the socket inode
    fds: list[int] = field(default_factory=list)


@dataclass
class _Survey:
    """What a dump learns once per capture of the target's unix sockets."""

    everyone: dict[int, sockdiag.UnixSocket]       # every unix socket of the namespace, by inode
    ours: dict[int, _Ours]                         # the target's, by inode
    holders: dict[int, list[list[Any]]]            # inode -> [[pid, comm], ...] of other processes
    unscanned: int
    chrooted: bool
    named: dict[tuple[int, bytes], _Ours] = field(default_factory=dict)       # (type, name) -> the first bound
    listening: dict[tuple[int, bytes], _Ours] = field(default_factory=dict)   # (type, name) -> a listener
    peercreds: dict[int, tuple[int, int, int] | None] = field(default_factory=dict)   # inode -> SO_PEERCRED


def record(probe: Probe) -> dict[str, Any]:
    """The kind's fields of the ``file_unix`` record of ``probe``'s socket."""
    return _record(probe, _survey(probe.capture))


def _survey(capture: Capture) -> _Survey:
    """The survey of ``capture`` (made on its first unix socket)."""
    survey = capture.memo.get("unix")
    if survey is None:
        survey = capture.memo["unix"] = _look(capture)
    return survey


def _look(capture: Capture) -> _Survey:
    everyone = capture.view.unix_sockets() if capture.view is not None else sockdiag.unix_sockets()
    ours: dict[int, _Ours] = {}
    for probe in capture.probes:   # by fd number: the lowest fd of each socket comes first
        ino = probe.file.ino
        if probe.file.kind != "socket" or ino not in everyone:
            continue
        if ino not in ours:
            st = os.fstat(probe.getfd())
            ours[ino] = _Ours(everyone[ino], probe, probe.table.ids.get(probe.fd, 0), (st.st_uid, st.st_gid))
        ours[ino].fds.append(probe.fd)
    holders, unscanned = _holders(capture, {f"socket:[{ino}]" for ino, o in ours.items() if max(o.fds) > 2})
    try:
        chrooted = os.readlink(f"/proc/{capture.pid}/root") != "/"
    except OSError:
        chrooted = True
    survey = _Survey(everyone, ours, holders, unscanned, chrooted)
    for o in ours.values():
        name = record_name(o.diag.name)
        if name is not None:
            survey.named.setdefault((o.diag.type, name), o)
            if o.diag.state == sockdiag.TCP_LISTEN:
                survey.listening.setdefault((o.diag.type, name), o)
    return survey


def _holders(capture: Capture, links: set[str]) -> tuple[dict[int, list[list[Any]]], int]:
    """Other processes with an fd on the sockets named by ``links`` (``socket:[INO]``), and
    how many processes ckpt could not look into (ckpt/files/survey.py: every process's fd
    links, read once per freeze; ckpt's own fds count, but the copies this capture took)."""
    if not links:
        return {}, 0
    fds, unscanned = fd_holders(capture.view, capture.pid, capture.copies, links.__contains__)
    out = {int(link[8:-1]): named_holders(pid for pid, _ in holders) for link, holders in fds.items()}
    return out, unscanned


def _record(probe: Probe, survey: _Survey) -> dict[str, Any]:
    """The kind's fields of the ``file_unix`` record of ``probe``'s socket."""
    mine = survey.ours.get(probe.file.ino)
    fd = probe.getfd()
    st = os.fstat(fd)
    sock_type = mine.diag.type if mine is not None else getsockopt_int(fd, SOL_SOCKET, SO_TYPE)
    with borrowed(fd, (AF_UNIX, sock_type, 0)) as sock:
        record: dict[str, Any] = {
            "sock_type": SOCK_TYPES.get(sock_type, "stream"), "state": "unconnected", "name": None, "vfs": None,
            "path": "", "file_owner": None, "dir": None, "uid": st.st_uid, "gid": st.st_gid,
            "netns": netns_of(fd, probe.pid), "link": "none", "peer": None, "peer_file": None, "peer_name": None,
            "listener_file": None, "reconnect": False, "backlog": 0, "pending": 0, "shutdown": 0,
            "error": False, "scm_fds": 0, "oob": False, "peercred": None, "peer_peercred": None,
            "options": {}, "pair_options": {}, "name_options": {}, "filter": b"", "queue": [],
            "holders": survey.holders.get(probe.file.ino, []), "unscanned": survey.unscanned, "problem": "",
        }
        problems: list[str] = []
        if sock_type not in SOCK_TYPES:
            problems.append(f"a unix socket of type {sock_type}, which ckpt does not know")
        if mine is None:
            problems.append("unix_diag does not show it (another network namespace?)")
            record["problem"] = "; ".join(problems)
            return record
        d = mine.diag
        record["state"] = STATES.get(d.state, "")
        if not record["state"]:
            problems.append(f"in state {d.state}, which a unix socket takes only for an instant")
            record["state"] = "unconnected"
        record["name"] = record_name(d.name)
        record["vfs"] = list(d.vfs) if d.vfs else None
        record["shutdown"] = d.shutdown & 3
        record["peercred"] = survey.peercreds[probe.file.ino] = peercred(sock)
        record.update(sockopts.read(sock, AF_UNIX, 0))
        record["filter"] = sockopts.read_filter(fd)
        if is_path(record["name"]):
            problems += _path_facts(record, survey)
        if d.state == sockdiag.TCP_LISTEN:
            record["backlog"], record["pending"] = d.wqueue, len(d.icons)
        else:
            record["error"] = _pending_error(fd)
            problems += _link(record, sock, mine, survey)
            if sock_type == socket.SOCK_STREAM:
                record["oob"] = _oob(sock)
            if not record["oob"]:
                queue, why, in_flight = _peek(sock, sock_type, d, probe.pid)
                if in_flight:
                    # The count is in fdinfo (net/unix/af_unix.c unix_show_fdinfo), read only then.
                    record["scm_fds"] = int(probe.fdinfo().extra.get("scm_fds", "0") or 0) or 1
                else:
                    record["queue"] = queue
                    problems += why
                    problems += _senders(record, survey, probe.file.ino)
                    problems += _unseen(record, mine, survey, probe.capture)
    record["problem"] = "; ".join(problems)
    return record


def _pending_error(fd: int) -> bool:
    """A pending socket error, as ``poll`` shows it (POLLERR) without clearing it."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _oob(sock: socket.socket) -> bool:
    """An out-of-band byte waits (``MSG_OOB|MSG_PEEK`` takes nothing: unix_stream_recv_urg)."""
    try:
        sock.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return False   # EINVAL: none (or SO_OOBINLINE, where it is read in line)
    return True


def _path_facts(record: dict[str, Any], survey: _Survey) -> list[str]:
    """What the socket's path led to at the dump (``path``, ``file_owner``, ``dir``); problems."""
    name = record["name"]
    if survey.chrooted:
        return [f"bound to {show_name(name)} in a chrooted process, whose paths ckpt cannot bind again"]
    if name[:1] != b"/":
        return [f"bound to the relative path {show_name(name)}, which ckpt cannot bind again"]
    path = os.fsdecode(name)
    parent = os.path.dirname(path) or "/"
    try:
        dirfd = fs.openat2(parent, os.O_PATH | os.O_DIRECTORY, fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return [f"bound to {path}, through a symbolic link, which ckpt does not follow"]
        return [f"bound to {path}, whose directory cannot be opened ({err.strerror})"]
    try:
        record["dir"] = trust.FileIdentity.of(fd=dirfd).record()
        try:
            st = os.stat(os.path.basename(path), dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            record["path"] = "unlinked"
            return []
    finally:
        os.close(dirfd)
    vfs = record["vfs"]
    if stat.S_ISSOCK(st.st_mode) and vfs is not None and (st.st_dev, st.st_ino) == tuple(vfs):
        record["path"] = "present"
        record["file_owner"] = [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)]
    else:
        record["path"] = "replaced"
    return []


def _link(record: dict[str, Any], sock: socket.socket, mine: _Ours, survey: _Survey) -> list[str]:
    """How the socket is connected (``link``, ``peer*``, ``listener_file``, ``reconnect``);
    problems found on the way."""
    d = mine.diag
    record["peer"] = d.peer
    stream = record["sock_type"] != "dgram"
    listener = _listener(record_name(d.name), d, survey) if stream and d.state == sockdiag.TCP_ESTABLISHED else None
    if listener is not None:
        record["listener_file"] = listener.file_id   # accepted from it: its name is the listener's
    if d.peer is None:
        return []
    record["peer_name"] = _peer_name(sock)
    problems: list[str] = []
    if listener is not None and max(listener.fds) <= 2:
        problems.append(f"the listener it was accepted from is only at fd {', '.join(map(str, listener.fds))}, "
                        "which a restore replaces")
    peer = survey.ours.get(d.peer) if d.peer else None   # 0: a peer without a socket
    if peer is None:
        waiting = next((o for o in survey.ours.values() if d.ino in o.diag.icons), None)
        if waiting is not None:
            record["link"] = "outside"
            problems.append(f"its connection waits to be accepted by the process's fd {waiting.fds[0]}")
        elif d.peer == 0 and not any(d.ino in s.icons for s in survey.everyone.values()):
            record["link"] = "closed"
            if not stream and record["peer_name"]:
                problems.append(f"connected to {show_name(record['peer_name'])}, a socket since closed, whose "
                                "name ckpt cannot give a new peer")
        else:
            record["link"] = "outside"
            record["reconnect"] = listener is None and _reconnectable(record, survey)
        return problems
    record["peer_file"] = peer.file_id
    record["peer_peercred"] = _peercred_of(peer, survey)
    if max(peer.fds) <= 2:
        problems.append(f"its peer is only at fd {', '.join(map(str, peer.fds))}, which a restore replaces")
    if peer.owner != mine.owner:
        problems.append(f"its two ends belong to different users ({mine.owner} and {peer.owner}: uid, gid)")
    if peer.diag.peer != d.ino or (not stream and record["peercred"] is None):
        # A datagram socket connected to one of the process's sockets with connect(): one
        # way, or both ways (socketpair sets SO_PEERCRED; two connect() calls do not).
        record["link"] = "to"
        if peer.diag.peer not in (None, d.ino):
            problems.append("connected to a socket that is connected to another one")
        return problems
    if listener is not None:
        record["link"] = "server"
    elif stream and _listener(record_name(peer.diag.name), peer.diag, survey) is not None:
        record["link"] = "client"
        record["listener_file"] = _listener(record_name(peer.diag.name), peer.diag, survey).file_id  # type: ignore
    else:
        record["link"] = "pair"
        if record["peercred"] != record["peer_peercred"] and (
                record["peercred"] is None or record["peer_peercred"] is None
                or record["peercred"][1:] != record["peer_peercred"][1:]):
            problems.append("its two ends carry different peer credentials, which socketpair() cannot give")
    return problems


def _listener(name: bytes | None, end: sockdiag.UnixSocket, survey: _Survey) -> _Ours | None:
    """The listener of the process ``end`` (an ESTABLISHED socket) was accepted from: one
    listening on its name, with its socket file for a path."""
    listener = survey.listening.get((end.type, name)) if name is not None else None
    if listener is None or (is_path(name) and listener.diag.vfs != end.vfs):
        return None
    return listener


def _peercred_of(o: _Ours, survey: _Survey) -> tuple[int, int, int] | None:
    """``SO_PEERCRED`` of another socket of the target (read once per capture)."""
    if o.diag.ino not in survey.peercreds:
        with borrowed(o.probe.getfd(), (AF_UNIX, o.diag.type, 0)) as sock:
            survey.peercreds[o.diag.ino] = peercred(sock)
    return survey.peercreds[o.diag.ino]


def _peer_name(sock: socket.socket) -> bytes | None:
    """``getpeername`` as raw bytes; None for an unbound peer (or none)."""
    try:
        name = sock.getpeername()
    except OSError:
        return None
    if isinstance(name, str):
        return os.fsencode(name) or None
    return name or None


def _reconnectable(record: dict[str, Any], survey: _Survey) -> bool:
    """An outside peer ``restore --ext-unix-sk`` can connect to again: a datagram socket bound
    to the name, or for a stream/seqpacket end, a socket listening on it now."""
    name, kind = record["peer_name"], TYPE_NUMBERS[record["sock_type"]]
    if not name:
        return False
    for d in survey.everyone.values():
        if d.type == kind and record_name(d.name) == name and (
                d.ino == record["peer"] or (kind != socket.SOCK_DGRAM and d.state == sockdiag.TCP_LISTEN)):
            return True
    return False


def _peek(sock: socket.socket, sock_type: int, d: sockdiag.UnixSocket, pid: int
          ) -> tuple[list[dict[str, Any]], list[str], bool]:
    """The messages queued in ``sock``, read with ``MSG_PEEK`` at a peek offset (module
    docstring), problems, and whether fds are in flight in the queue (a message came with
    more than its credentials: ``MSG_CTRUNC``, without an fd installed here -- the control
    buffer has no room for one, net/core/scm.c ``scm_detach_fds``); its ``SO_PEEK_OFF`` and
    ``SO_PASSCRED`` are put back as they were."""
    if sock_type == socket.SOCK_STREAM and not d.rqueue:
        return [], [], False   # unix_inq_len: every byte of a stream socket's queue
    peek_off = sock.getsockopt(SOL_SOCKET, SO_PEEK_OFF)
    passcred = sock.getsockopt(SOL_SOCKET, SO_PASSCRED)
    buf = bytearray(PEEK_BUFFER)
    messages: list[dict[str, Any]] = []
    problems: list[str] = []
    in_flight = False
    try:
        if not passcred:
            sock.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
        sock.setsockopt(SOL_SOCKET, SO_PEEK_OFF, 0)
        partial = False
        while True:
            try:
                size, ancdata, flags, address = sock.recvmsg_into(
                    [buf], CREDS_SPACE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            creds = next((data for level, kind, data in ancdata if level == SOL_SOCKET and kind == SCM_CREDENTIALS),
                         None)
            if not size and (creds is None or sock_type == socket.SOCK_STREAM):
                # The end of a stream (whose reads pass credentials even then), or of a
                # seqpacket socket's queue once shut down; a datagram of 0 bytes has some.
                break
            if flags & socket.MSG_CTRUNC:
                in_flight = True   # SCM_RIGHTS (no LSM here gives SCM_SECURITY a label)
                break
            data = bytes(buf[:size])
            sender_pid, uid, gid = UCRED.unpack(creds) if creds else (0, 0, 0)
            who = [uid, gid] if sender_pid else None
            if sender_pid and sender_pid != pid:
                problems.append(f"a queued message carries the credentials of pid {sender_pid}, another "
                                "process (SO_PASSCRED)")
            sender = _address(address) if sock_type == socket.SOCK_DGRAM else None
            last = messages[-1] if messages else None
            if last is not None and (partial or (sock_type == socket.SOCK_STREAM and last["creds"] == who)):
                last["data"] += data   # the rest of a datagram larger than the buffer, or more stream bytes
            else:
                messages.append({"data": data, "sender": None, "sender_name": sender, "creds": who})
            partial = bool(flags & socket.MSG_TRUNC)
    finally:
        sock.setsockopt(SOL_SOCKET, SO_PEEK_OFF, peek_off)
        if not passcred:
            sock.setsockopt(SOL_SOCKET, SO_PASSCRED, 0)
    total = sum(len(m["data"]) for m in messages)
    if sock_type == socket.SOCK_STREAM and total != d.rqueue and not problems and not in_flight:
        problems.append(f"its queue held {d.rqueue} bytes, of which the dump read {total}")
    return messages, problems, in_flight


def _unseen(record: dict[str, Any], mine: _Ours, survey: _Survey, capture: Capture) -> list[str]:
    """A zero-length datagram or packet that a peek returned once is skipped by every later
    peek at an offset (net/core/datagram.c ``__skb_try_recv_from_queue``: ``skb->peeked``):
    an earlier dump of ckpt, or the process's own ``MSG_PEEK``, hides it from this one.
    Where the sender is the peer of the process (a pair, a connection), its send buffer
    counts every buffer it has queued (``unix_outq_len``: their true sizes, which depend on
    the length alone): more than what the messages seen take means some were not seen.
    (Where several sockets send to one, nothing tells: see the module docstring.)"""
    if record["sock_type"] == "stream" or record["link"] not in ("pair", "client", "server"):
        return []
    peer = survey.ours.get(mine.diag.peer or 0)
    if peer is None:
        return []
    expected = 0
    for message in record["queue"]:
        size = _truesize(TYPE_NUMBERS[record["sock_type"]], len(message["data"]), capture)
        if size is None:
            return []
        expected += size
    if peer.diag.wqueue <= expected:
        return []
    unseen = peer.diag.wqueue - expected
    zero = _truesize(TYPE_NUMBERS[record["sock_type"]], 0, capture) or 1
    return [f"its peer has {unseen} bytes of buffers queued that the messages the dump could read do not account for "
            f"(about {max(unseen // zero, 1)} zero-length message(s) that an earlier peek returned -- an earlier "
            "dump, or the process's own MSG_PEEK -- which a peek at an offset skips: the dump cannot tell where "
            "they are; dump again once they are read)"]


def _truesize(kind: int, length: int, capture: Capture) -> int | None:
    """What a ``length``-byte datagram or packet takes of its sender's send buffer on this
    kernel (``skb->truesize``), measured once per capture on a socket pair of ckpt's own;
    None when ckpt cannot send one that long."""
    key = ("unix-truesize", kind, length)
    if key not in capture.memo:
        a, b = socket.socketpair(AF_UNIX, kind | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(OSError):   # SO_SNDBUFFORCE needs CAP_NET_ADMIN
                a.setsockopt(SOL_SOCKET, sockopts.SO_SNDBUFFORCE, 2 * length + (1 << 16))
            before = _wmem(a)
            try:
                a.send(bytes(length), socket.MSG_DONTWAIT)
                capture.memo[key] = _wmem(a) - before
            except OSError:
                capture.memo[key] = None
        finally:
            a.close()
            b.close()
    return capture.memo[key]


def _wmem(sock: socket.socket) -> int:
    """``SO_MEMINFO`` ``wmem_alloc``: the send buffer in use."""
    return SK_MEMINFO.unpack(sock.getsockopt(SOL_SOCKET, SO_MEMINFO, SK_MEMINFO.size).ljust(SK_MEMINFO.size,
                                                                                               b"\0"))[2]


def _address(address: Any) -> bytes | None:
    """A ``recvmsg`` address of AF_UNIX as the raw name; None for an unbound sender."""
    if not address:
        return None
    return os.fsencode(address) if isinstance(address, str) else bytes(address)


def _senders(record: dict[str, Any], survey: _Survey, ino: int) -> list[str]:
    """Which socket of the process sent each queued datagram (``sender``); problems.  A
    socket whose peer, in another process, is connected back to it (a socket pair whose
    ends a parent and its child hold) has its peer's messages only (net/unix/af_unix.c
    ``unix_may_send``): a dumped tree may hold that peer (ckpt/files/handdown.py), a
    single process refuses them (``_outside_reasons``)."""
    link, problems = record["link"], []
    kind = TYPE_NUMBERS[record["sock_type"]]
    peer = survey.everyone.get(record["peer"] or 0)
    for message in record["queue"]:
        if link in ("pair", "client", "server"):
            message["sender"] = record["peer_file"]
            continue
        if link == "closed" or record["sock_type"] != "dgram" or (
                link == "outside" and peer is not None and peer.peer == ino):
            continue
        name = message["sender_name"]
        if name is None:
            if record["name"] is None:
                problems.append("a datagram queued from an unbound socket, which ckpt cannot send again to a "
                                "socket without a name")
                break
            continue
        sender = survey.named.get((kind, name))
        if sender is None:
            problems.append(f"a datagram queued from {show_name(name)}, a socket outside the process")
            break
        if max(sender.fds) <= 2:
            problems.append(f"a datagram queued from {show_name(name)}, only at fd "
                            f"{', '.join(map(str, sender.fds))}, which a restore replaces")
            break
        message["sender"] = sender.file_id
    return problems

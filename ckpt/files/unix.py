"""Unix sockets: stream, datagram and seqpacket; bound, listening, connected, with their queues.

**The model.**  A unix socket is one kernel object behind one open file
description (a socket cannot be reopened: ``open`` of /proc/PID/fd/N fails), so
each socket is one record, kind ``"unix"``.  It may be bound to a path (a
socket file, ``S_IFSOCK``) or to an abstract name (bytes starting with NUL,
no file); listening (stream and seqpacket); connected to a peer.  How it is
connected is its ``link``:

* ``pair``: to a socket of the process that is connected back to it, as
  ``socketpair`` makes them (it sets ``SO_PEERCRED``);
* ``client``/``server``: the two ends of a stream or seqpacket connection made
  through a listener of the process (``listener_file``), the server end being
  the one ``accept`` returned (its name is its listener's);
* ``to``: a datagram socket connected with ``connect`` to a socket of the process (which
  may be connected back to it the same way);
* ``closed``: to a peer that is closed (a stream end then reads the end of
  file after its bytes; a datagram end gets ``ECONNREFUSED``);
* ``outside``: to a socket of no fd of the process (in a dumped tree, two unnamed
  ``outside`` ends of different tasks connected to each other are a pair again:
  :func:`joined`) (a server elsewhere,
  syslog's /dev/log, a D-Bus connection); ``none``: no peer.

The dump side is :mod:`ckpt.files.unix_dump` (the socket read without changing
it: ``unix_diag``, ``MSG_PEEK`` at a peek offset); the restore side is
:mod:`ckpt.files.unix_restore` (each socket made again with its name, peer and
queue, and how a path is bound again safely).

**Refused by name**: fds in flight in a queue (``SCM_RIGHTS``), out-of-band
data, a pending error, connections waiting in a listener's queue, a peer or a
sender outside the process (but ``outside`` links with ``restore
--ext-unix-sk`` and an empty queue), sockets other processes hold too, a
relative path, a path through a symlink, a chrooted process's paths, a
datagram from a named socket not in the process, credentials of another
process on a queued message, an eBPF filter.  (``O_ASYNC`` and the signal owner:
:mod:`ckpt.files.fown`.)

**Limits.**  What a restore gives back differently, and does not say: the
``SO_PEERCRED`` pid is the restored process's and ``SO_PEERGROUPS`` its
groups (uid and gid are the recorded ones); a stream's bytes come back in
other buffers (which no read shows); a zero-length datagram the dump peeked at
is marked ``peeked`` (net/core/datagram.c ``__skb_try_recv_from_queue``),
which only a process peeking at a ``SO_PEEK_OFF`` offset could see, and the
marks a process made are not restored; a zero-length datagram an earlier peek
marked is invisible to the dump: from the process's peer, the dump refuses the
socket (:func:`ckpt.files.unix_dump._unseen`), from another sender it is lost;
a stream socket on an abstract name
that was accepted from a listener since closed comes back holding that name
(the dump cannot tell it from one the process bound); a datagram socket that
another connected to and left stays "connected" in ``unix_diag`` only.
``SCM_SECURITY`` labels are not read (this kernel runs no LSM that sets them).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._sys import sockdiag
from .._sys.sock import SO_DOMAIN, getsockopt_int
from . import sockopts
from ..image.schema import UnixFile
from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject
from .sockopts import AF_UNIX, SOL_SOCKET

if TYPE_CHECKING:
    from ..image.schema import State

SOCK_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
TYPE_NUMBERS = {name: number for number, name in SOCK_TYPES.items()}
STATES = {sockdiag.TCP_CLOSE: "unconnected", sockdiag.TCP_LISTEN: "listening",
          sockdiag.TCP_ESTABLISHED: "connected"}
SO_PEEK_OFF, SO_PASSCRED, SO_PEERCRED, SO_PASSSEC, SO_PASSPIDFD = 42, 16, 17, 34, 76
SCM_CREDENTIALS = 2
UCRED = struct.Struct("=iII")                    # struct ucred: pid, uid, gid
CREDS_SPACE = socket.CMSG_SPACE(UCRED.size)      # room for SCM_CREDENTIALS and nothing else
PEEK_BUFFER = 1 << 18
RCV_SHUTDOWN, SEND_SHUTDOWN = 1, 2
SHUT = {RCV_SHUTDOWN: socket.SHUT_RD, SEND_SHUTDOWN: socket.SHUT_WR, 3: socket.SHUT_RDWR}


def show_name(name: bytes | None) -> str:
    """A socket name for messages: the path, or "@" and the abstract name; "" for none."""
    if name is None:
        return ""
    if name[:1] == b"\0":
        return "@" + name[1:].decode("utf-8", "backslashreplace").replace("\0", "\\0")
    return os.fsdecode(name)


def is_path(name: bytes | None) -> bool:
    """A path name (not an abstract one, nor none)."""
    return bool(name) and name[:1] != b"\0"


def record_name(raw: bytes | None) -> bytes | None:
    """A name as recorded: a path without the NUL the kernel keeps after it
    (net/unix/af_unix.c ``unix_mkname_bsd``), an abstract name as it is."""
    if raw is None:
        return None
    if raw[:1] != b"\0":
        return raw.split(b"\0", 1)[0]
    return raw


def peercred(sock: socket.socket) -> tuple[int, int, int] | None:
    """``SO_PEERCRED`` of ``sock``: (pid, uid, gid), as a record holds it; None when it has
    none (pid 0)."""
    pid, uid, gid = UCRED.unpack(sock.getsockopt(SOL_SOCKET, SO_PEERCRED, UCRED.size))
    return (pid, uid, gid) if pid > 0 else None


def accepted(file: UnixFile) -> bool:
    """The socket is the end ``accept`` returned (its name is its listener's: not bound)."""
    return file.listener_file is not None and file.link in ("server", "closed")


class Unix(FileKind):
    """Kind "unix" (record ``file_unix``)."""

    names = ("unix",)

    def claims(self, probe: Probe) -> str | None:
        if probe.file.kind != "socket" or probe.file.deleted:
            return None
        try:
            return "unix" if getsockopt_int(probe.getfd(), SOL_SOCKET, SO_DOMAIN) == AF_UNIX else None
        except OSError:
            return None

    def dump(self, probe: Probe) -> dict[str, Any]:
        from .unix_dump import record   # it imports this module

        return record(probe)

    # -- what a checkpoint says ----------------------------------------------------------------

    def describe(self, file: UnixFile) -> str:
        return describe(file)

    def reasons(self, file: UnixFile, subject: Subject) -> list[str]:
        return reasons(file, subject)

    def notes(self, file: UnixFile, subject: Subject) -> list[str]:
        if not file.unscanned:
            return []
        return [f"{subject}: the dump could not read the fds of {file.unscanned} other processes, which "
                f"may hold {describe(file)} too"]

    def depends(self, file: UnixFile) -> tuple[int, ...]:
        # The listener a connection is made again through (_connect_through_listener).
        listener = file.listener_file
        return (listener,) if listener is not None and (file.link == "client" or accepted(file)) else ()

    # -- restore -------------------------------------------------------------------------------

    def check(self, planned: PlannedFile) -> None:
        file: UnixFile = planned.file
        sockopts.check_netns(file.netns, what(planned))   # abstract names, unix_diag

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        from .unix_restore import preflight   # it imports this module

        preflight(planned, ctx)

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
        from .unix_restore import make

        return make(planned, ctx)


UNIX = Unix()


# -- what a checkpoint says ------------------------------------------------------------------


def describe(file: UnixFile) -> str:
    """"a unix stream socket listening on /run/x.sock (socket:[7])", "a unix dgram socket
    bound to @name (socket:[8])", "a unix stream socket connected within the process (...)"."""
    kind, link, name = file.sock_type, file.link, file.name
    target = file.target
    if file.state == "listening":
        return f"a unix {kind} socket listening on {show_name(name)} ({target})"
    if link == "outside":
        peer = show_name(file.peer_name) or "a socket outside the process"
        return f"a unix {kind} socket connected to {peer} ({target})"
    if link == "closed":
        return f"a unix {kind} socket whose peer is closed ({target})"
    if link == "pair" and file.peer_file is None:
        return f"a unix {kind} socket connected to a socket of another task of the tree ({target})"
    if link != "none":
        return f"a unix {kind} socket connected within the process ({target})"
    if name is not None:
        return f"a unix {kind} socket bound to {show_name(name)} ({target})"
    return f"an unbound unix {kind} socket ({target})"


def what(planned: PlannedFile) -> str:
    """"fd 5 (a unix stream socket ...)", for errors."""
    return f"{planned.subject} ({describe(planned.file)})"


def reasons(file: UnixFile, subject: Subject) -> list[str]:
    """Why ``file`` cannot be restored at the fds of ``subject`` ([] when it can)."""
    who = f"{subject} {subject.verb('is', 'are')} {describe(file)}"
    out = []
    if file.problem:
        out.append(f"{who}: {file.problem}")
    if file.holders:
        named = ", ".join(f"pid {pid} ({comm})" for pid, comm in file.holders)
        out.append(f"{who}, also open in {named}: ckpt restores a socket only when the process holds all of it")
    if file.scm_fds:
        n = file.scm_fds
        out.append(f"{who} with {n} file descriptor{'s' if n != 1 else ''} in flight in its queue (SCM_RIGHTS), "
                   "which ckpt cannot restore")
    if file.oob:
        out.append(f"{who} with out-of-band data (MSG_OOB) queued, which ckpt cannot restore")
    if file.error:
        out.append(f"{who} with a pending socket error (SO_ERROR), which ckpt cannot restore")
    if file.pending:
        n = file.pending
        out.append(f"{who} with {n} connection{'s' if n != 1 else ''} not yet accepted, which ckpt cannot restore "
                   "(they live in the kernel's queue; dump again once accepted)")
    if file.link == "outside":
        out += _outside_reasons(file, who)
    if file.filter is None:
        out.append(f"{who} with an eBPF socket filter, which the kernel does not hand back")
    out += [f"{who} with {option}" for option in sockopts.unknown(file, AF_UNIX, 0)]
    return out


def _outside_reasons(file: UnixFile, who: str) -> list[str]:
    peer = show_name(file.peer_name)
    if file.queue:
        n = sum(len(m.data) for m in file.queue)
        return [f"{who} with {n} bytes queued from its peer outside the process, which ckpt cannot restore"]
    if not file.reconnect:
        what_peer = f"{peer}, which nobody listens on" if peer else "a socket of another process"
        return [f"{who}: its peer is {what_peer}, which ckpt cannot connect to again"]
    if not file.external:
        return [f"{who}: its peer is outside the process; restore --ext-unix-sk connects it to {peer} again"
                + (" (a new connection: the peer sees a new client)" if file.sock_type != "dgram" else "")]
    return []


def across(file: UnixFile) -> bool:
    """A socket whose peer is in another task of the tree (:func:`joined`): the tree's
    restore makes the two once, as a pair (ckpt/files/handdown.py)."""
    return file.link == "pair" and file.peer_file is None


def joined(states: Mapping[int, State]) -> dict[int, State]:
    """The tasks' ``states`` (pid -> state, every task of one tree) with each two unix sockets
    connected to each other from different tasks made a pair (``link`` "pair", no
    ``peer_file``: :func:`across`), as ``socketpair`` and a fork leave them (zdtm ``cow01``,
    nginx's master and worker channels).  Each was recorded ``outside`` by its own task's
    dump; only unnamed ones connected both ways are joined (a connection accepted from a
    listener holds the listener's name, which a socket pair cannot give), and two ends of
    different owners or peer credentials get a ``problem``, as in one process
    (:mod:`ckpt.files.unix_dump` ``_link``)."""
    ends: dict[int, tuple[int, UnixFile]] = {}
    for pid, state in states.items():
        for f in state.files or ():
            # One a restore's plan hands down already (ckpt.files.inherit.InheritedFile): as recorded.
            f = getattr(getattr(f, "given", None), "was", f)
            if isinstance(f, UnixFile) and (f.link == "outside" or across(f)) and f.peer and f.name is None \
                    and f.listener_file is None:
                ends[f.ino] = (pid, f)
    out = dict(states)
    for pid, state in states.items():
        files, changed = list(state.files or ()), False
        for i, f in enumerate(files):
            if not isinstance(f, UnixFile):
                continue
            # Other holders that are tasks of the tree: by fork (Task.inherited), or refused
            # by ckpt.files.handdown.reasons when shared sideways.
            holders = tuple(h for h in f.holders if h[0] not in states)
            if holders != tuple(f.holders):
                files[i] = f = dataclasses.replace(f, holders=holders)
                changed = True
            other_pid, other = ends.get(f.peer or 0, (pid, None)) if f.link == "outside" and f.ino in ends \
                else (pid, None)
            if other is None or other_pid == pid or other.peer != f.ino or other.sock_type != f.sock_type:
                continue
            problems = [f.problem] if f.problem else []
            if (f.uid, f.gid) != (other.uid, other.gid):
                problems.append(f"its two ends belong to different users ({(f.uid, f.gid)} and "
                                f"{(other.uid, other.gid)}: uid, gid)")
            if (f.peercred or (0, None, None))[1:] != (other.peercred or (0, None, None))[1:]:
                problems.append("its two ends carry different peer credentials, which socketpair() cannot give")
            files[i] = dataclasses.replace(f, link="pair", peer_file=None, reconnect=False,
                                           peer_peercred=other.peercred, problem="; ".join(problems))
            changed = True
        if changed:
            out[pid] = dataclasses.replace(state, files=tuple(files))
    return out


def external(state: State) -> tuple[State, list[str]]:
    """The task ``state`` with every unix socket connected outside the process allowed to be
    connected again (``restore --ext-unix-sk``), and notes saying so.

    Only an ``outside`` link whose peer could be connected to at the dump (a listener's
    name, a bound datagram socket's) and whose queue is empty is allowed: the bytes an
    outside peer sent cannot be sent again by anyone but that peer, and a connection from
    a client outside cannot be made again from here.  The mark is ``UnixFile.external``,
    a field no image holds (``at_restore``), so that no image can allow itself."""
    from .model import from_state   # the registry imports this module
    from .rules import describe as describe_file

    if not state.files:
        return state, []
    table = from_state(state)
    by_file = table.by_file()
    files, notes = [], []
    for file in state.files:
        if isinstance(file, UnixFile) and file.link == "outside" and file.reconnect and not file.queue:
            numbers = tuple(e.fd for e in by_file.get(file.id, []) if e.fd > 2)
            if numbers:
                subject = Subject(numbers)
                notes.append(f"{subject} ({describe_file(file)}) {subject.verb('is', 'are')} connected to "
                             f"{show_name(file.peer_name)} again, as --ext-unix-sk asks"
                             + (": a new connection" if file.sock_type != "dgram" else ""))
            file = dataclasses.replace(file, external=True)
        files.append(file)
    return dataclasses.replace(state, files=tuple(files)), notes

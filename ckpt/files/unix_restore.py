"""The restore side of kind ``"unix"`` (:mod:`ckpt.files.unix`): each socket made again.

In the restore child, ``open`` makes each socket, binds it and listens:
``socketpair`` for a pair (the first end opened makes both, and parks the
other for its own record), ``connect`` and ``accept`` through the process's
listener for a client/server pair (the listener is opened first:
:meth:`ckpt.files.unix.Unix.depends`), a new ``socket`` otherwise.  Then steps
that run once every open file is in place (``RestoreContext.later``) send
each message again into its socket by its sender (the peer, the process's
socket bound to the sender's name, or a new unbound socket), with
``SCM_CREDENTIALS`` of the restored process when it carried some; then, once
every queue is full, ``connect`` a ``to`` link (and an ``outside`` one with
``restore --ext-unix-sk``), set the options (``SO_PASSCRED`` and the others
after the messages, so that the kernel adds no credentials of its own;
``SO_PEEK_OFF`` over the bytes sent), shut down, close a ``closed`` link's
temporary peer; last, compare each socket with its record.  A socket is made
with its recorded owner (the inode's uid and gid, as the filesystem ids), and
the calls that set ``SO_PEERCRED`` (``socketpair``, ``listen``, ``connect``)
run with the effective ids it recorded, so that a peer reads the credentials
it read before -- and images not root's may only record their owner's (a
socket end handed to a root daemon would otherwise say "uid 0").

**Paths.**  A path is bound again where it was: its directory is opened as the
dump saw it (:func:`ckpt.trust.open_verified`: no symlink, the same inode), and
that directory and every one above it must be writable by nobody but root
and the socket file's owner, unless sticky (as OpenSSH's ``safe_path``): ``bind``
follows symlinks in the directories, so nobody else may be able to change
them meanwhile.  The socket file is created by ``bind`` as its recorded owner
and with its recorded permission bits (the umask), as the restored identity
for images not root's.  A socket file left where the path leads is removed
only when it is dead (no live socket is bound to it: ``unix_diag``) and its
owner's -- the one the dumped process leaves there after ``dump --kill``, or an
earlier restore of the same checkpoint (a unix socket never unlinks its file),
nothing anyone could still use; anything else there (another file, a live
socket, someone else's socket file) refuses the restore by name and is left
where it is.  A path the process's socket file was unlinked from (or
replaced at) is bound and unlinked again.  Abstract names are bound again;
one in use refuses by name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import socket
import stat
from collections.abc import Iterator
from typing import Any

from .. import trust
from .._sys import fs, sockdiag
from .._sys.sock import borrowed, getsockopt_int
from ..errors import ImageError, TargetError, UntrustedImage
from . import sockopts
from ..image.schema import UnixFile, UnixMessage
from .base import PlannedFile, RestoreContext
from .sockopts import AF_UNIX, SOL_SOCKET
from .unix import (RCV_SHUTDOWN, SCM_CREDENTIALS, SEND_SHUTDOWN, SHUT, SO_PASSCRED, SO_PASSPIDFD, SO_PASSSEC,
                   STATES, TYPE_NUMBERS, UCRED, accepted, is_path, peercred, record_name, show_name,
                   what)


def _allowed(ctx: RestoreContext, uid: int, gid: int) -> bool:
    """Whether the restore may make something owned by, or carrying the credentials of, ``uid``
    and ``gid``: root-trusted images anything; others their owner's uid and groups."""
    principal = ctx.principal
    if principal is None or principal.trusted:
        return True
    return uid == principal.uid and gid in principal.groups


def _owner_text(ctx: RestoreContext) -> str:
    return ctx.principal.describe() if ctx.principal is not None else "?"


def _identities(file: UnixFile) -> list[tuple[str, int, int]]:
    """Every (what, uid, gid) the restore of ``file`` gives something."""
    out = [("the socket", file.uid, file.gid)]
    if file.file_owner is not None:
        out.append(("its socket file", file.file_owner[0], file.file_owner[1]))
    if file.peercred is not None and _makes_peercred(file):
        out.append(("its SO_PEERCRED", file.peercred[1], file.peercred[2]))
    if file.peer_peercred is not None and file.link in ("pair", "client", "server"):
        out.append(("its peer's SO_PEERCRED", file.peer_peercred[1], file.peer_peercred[2]))
    for message in file.queue:
        if message.creds is not None:
            out.append(("a queued message's credentials", *message.creds))
            break
    return out


def _makes_peercred(file: UnixFile) -> bool:
    """The restore makes the socket's SO_PEERCRED (listen, socketpair, connect through a listener)."""
    return file.state == "listening" or file.link in ("pair", "client", "server", "closed")


def preflight(planned: PlannedFile, ctx: RestoreContext) -> None:
    """Before the fork, as the restore child will (its filesystem identity): refuse what the
    restore would refuse, without creating anything."""
    f: UnixFile = planned.file
    for label, uid, gid in _identities(f):
        if not _allowed(ctx, uid, gid):
            raise UntrustedImage(f"{what(planned)}: {label} has uid {uid} gid {gid}, but its images belong to "
                                 f"{_owner_text(ctx)}: a restore never grants more than the images' owner has")
    if os.geteuid() != 0:
        for label, uid, gid in _identities(f):
            if (uid, gid) != (os.geteuid(), os.getegid()):
                raise TargetError(f"{what(planned)}: {label} has uid {uid} gid {gid}, which only root can give "
                                  "it (restore as root)")
    if f.link == "outside":
        if not f.external:
            raise TargetError(f"{what(planned)}: its peer is outside the process (restore --ext-unix-sk)")
        _peer_there(planned)
    trusted = ctx.principal is None or ctx.principal.trusted
    options = sockopts.flat(f)
    with socket.socket(AF_UNIX, TYPE_NUMBERS[f.sock_type]) as fresh:
        default = sockopts.flat(sockopts.read(fresh, AF_UNIX, 0))
    for option in sockopts.applicable(AF_UNIX, 0):
        value = options.get(option.name)
        if value is None or trusted or value == default.get(option.name):
            continue   # a value a new socket has already is not set (sockopts.apply)
        cap = option.needs(value) if option.needs else None
        if option.number in (sockopts.SO_SNDBUF, sockopts.SO_RCVBUF) and option.level == SOL_SOCKET:
            cap = sockopts.buffer_setting(option, value, cap)[2]
        if cap:
            raise UntrustedImage(f"{what(planned)}: {sockopts.describe_value(option, value)} needs {cap}, which "
                                 f"the images' owner {_owner_text(ctx)} does not have")
    name = f.name
    if name is not None and not accepted(f):
        if is_path(name):
            with _directory(planned, ctx) as dirfd:
                _clear_path(planned, dirfd, remove=False)
        else:
            _abstract_free(planned, name)


def _peer_there(planned: PlannedFile) -> None:
    """``--ext-unix-sk``: something to connect to at the peer's name now (a socket of its type
    bound to it; listening, for a stream or seqpacket socket), which the restored identity may
    connect to (write permission on a socket file: net/unix/af_unix.c ``unix_find_bsd``)."""
    f: UnixFile = planned.file
    name, kind = f.peer_name, TYPE_NUMBERS[f.sock_type]
    if is_path(name):
        path = os.fsdecode(name)
        if not os.path.exists(path):
            raise TargetError(f"{what(planned)}: {path} is gone; --ext-unix-sk has nothing to connect it to")
        if not os.access(path, os.W_OK, effective_ids=True):
            uid, gid, _ = fs.thread_fs_identity()
            raise UntrustedImage(f"{what(planned)}: uid {uid} (gid {gid}) may not connect to {path}")
        return
    for d in sockdiag.unix_sockets(sockdiag.UDIAG_SHOW_NAME).values():
        if d.type == kind and d.name == name and (kind == socket.SOCK_DGRAM or d.state == sockdiag.TCP_LISTEN):
            return
    raise TargetError(f"{what(planned)}: nothing listens on {show_name(name)} now; --ext-unix-sk has nothing to "
                      "connect it to")


def _abstract_free(planned: PlannedFile, name: bytes | None) -> None:
    """Refuse an abstract name another socket of its type holds now."""
    file: UnixFile = planned.file
    kind = TYPE_NUMBERS[file.sock_type]
    for d in sockdiag.unix_sockets(sockdiag.UDIAG_SHOW_NAME).values():
        # A connected socket may only share its listener's name: bind() says whether it holds it.
        if d.type == kind and d.name == name and d.state != sockdiag.TCP_ESTABLISHED:
            raise TargetError(f"{what(planned)}: the abstract name {show_name(name)} is in use by another socket "
                              f"(socket:[{d.ino}]; is the dumped process still running?)")


@contextlib.contextmanager
def _directory(planned: PlannedFile, ctx: RestoreContext) -> Iterator[int]:
    """The directory of the socket's path, opened as the dump saw it (no symlink, the same
    inode), after checking that nobody but root and the file's owner may change it or any
    directory above it (module docstring, "Paths")."""
    f: UnixFile = planned.file
    path = os.fsdecode(f.name)
    parent = os.path.dirname(path) or "/"
    expected = trust.FileIdentity.from_record(f.dir)
    if expected is None:
        raise ImageError(f"{what(planned)}: the checkpoint does not say which directory {parent} was")
    dirfd = trust.open_verified(parent, os.O_PATH | os.O_DIRECTORY, expected, f"{what(planned)}: its directory "
                                f"{parent}", same_boot=ctx.same_boot, mode=stat.S_IFDIR)
    try:
        owner = f.file_owner[0] if f.file_owner is not None else f.uid
        allowed = {0, owner} | ({ctx.principal.uid} if ctx.principal is not None else set())
        for directory in [parent, *_ancestors(parent)]:
            st = os.lstat(directory)
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid not in allowed:
                raise UntrustedImage(f"{what(planned)}: {directory} is owned by uid {st.st_uid}, who could move the "
                                     "socket's path elsewhere while the restore binds it")
            if mode & 0o022 and not mode & stat.S_ISVTX:
                raise UntrustedImage(f"{what(planned)}: {directory} is writable by group or others (mode "
                                     f"{mode:04o}) and not sticky: they could move the socket's path while the "
                                     "restore binds it")
        # As the restored identity (images not root's): bind() creates the file as it.
        if not os.access(parent, os.W_OK | os.X_OK, effective_ids=True):
            uid, gid, _ = fs.thread_fs_identity()
            raise UntrustedImage(f"{what(planned)}: uid {uid} (gid {gid}) may not create a socket file in {parent}")
    except BaseException:
        os.close(dirfd)
        raise
    try:
        yield dirfd
    finally:
        os.close(dirfd)


def _ancestors(path: str) -> list[str]:
    parts, out = path.rstrip("/").split("/"), []
    for i in range(len(parts) - 1, 0, -1):
        out.append("/".join(parts[:i]) or "/")
    return out


def _clear_path(planned: PlannedFile, dirfd: int, *, remove: bool) -> None:
    """Make sure the socket's path is free for ``bind``: nothing there, or a dead socket file
    of the socket's owner -- a socket file no live socket is bound to (``unix_diag``), as the
    dumped process leaves it, or an earlier restore of it (a unix socket never unlinks its
    file) -- which ``remove`` unlinks.  Anything else is refused, and left where it is."""
    f: UnixFile = planned.file
    base = os.path.basename(os.fsdecode(f.name))
    try:
        st = os.stat(base, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    owner = f.file_owner[0] if f.file_owner is not None else f.uid
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner:
        what_there = "a socket file of uid {st.st_uid}" if stat.S_ISSOCK(st.st_mode) else "another file"
        raise TargetError(f"{what(planned)}: {show_name(f.name)} is {what_there.format(st=st)} now; ckpt "
                          f"removes only a socket file of uid {owner} that no socket is bound to")
    for d in sockdiag.unix_sockets(sockdiag.UDIAG_SHOW_VFS).values():
        if d.vfs == (st.st_dev, st.st_ino):
            raise TargetError(f"{what(planned)}: {show_name(f.name)} is in use by a live socket "
                              f"(socket:[{d.ino}]; is the dumped process still running?)")
    if remove:
        os.unlink(base, dir_fd=dirfd)


# -- restore, in the child -------------------------------------------------------------------


def _groups(ctx: RestoreContext) -> list[int]:
    creds = ctx.creds
    return list(creds.groups) if creds else fs.thread_fs_identity()[2]


def _as(ctx: RestoreContext, uid: int, gid: int, peer: tuple[int, int, int] | None = None) -> Any:
    """The block runs with filesystem identity ``uid``/``gid`` (what a new socket inode and a
    bound socket file are owned by) and, for ``peer`` (pid, uid, gid), those effective ids
    (what ``SO_PEERCRED`` copies)."""
    effective = (peer[1], peer[2]) if peer is not None else None
    return trust.acting_as((uid, gid, _groups(ctx)), effective)


def make(planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
    """In the restore child: the socket of ``planned``, made, bound and listening; the rest
    once every open file is in place (:func:`_fill`, then :func:`_finish`, then :func:`_verify`)."""
    f: UnixFile = planned.file
    fd = ctx.unpark(("unix", planned.id))
    if fd is None:
        fd = _new(planned, ctx)
    try:
        if f.name is not None and not accepted(f):
            _bind(fd, planned, ctx)
        if f.state == "listening":
            with _as(ctx, f.uid, f.gid, f.peercred), borrowed(fd) as sock:
                try:
                    sock.listen(f.backlog)
                except OSError as err:
                    raise TargetError(f"{what(planned)}: cannot listen: {err.strerror}") from None
        fcntl.fcntl(fd, fcntl.F_SETFL, f.flags & os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    ctx.later(functools.partial(_fill, planned, ctx))
    return fd


def _new(planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
    """A new socket for ``planned`` (the first end of a pair to be opened makes both ends and
    parks the other for it)."""
    f: UnixFile = planned.file
    kind = TYPE_NUMBERS[f.sock_type]
    link = f.link
    try:
        if link == "client" or accepted(f):
            return _connect_through_listener(planned, ctx, kind)
        if link in ("pair", "closed"):
            with _as(ctx, f.uid, f.gid, f.peercred):
                mine, other = socket.socketpair(AF_UNIX, kind | socket.SOCK_CLOEXEC)
            ctx.park(("unix", f.peer_file) if link == "pair" else ("unix-closed", planned.id), other.detach())
            return mine.detach()
        with _as(ctx, f.uid, f.gid):
            return socket.socket(AF_UNIX, kind | socket.SOCK_CLOEXEC).detach()
    except OSError as err:
        raise TargetError(f"{what(planned)}: cannot make the socket: {err.strerror}") from None


def _connect_through_listener(planned: PlannedFile, ctx: RestoreContext, kind: int) -> int:  # pragma: no cover
    """Both ends of a connection made through a listener of the process (opened first:
    :meth:`Unix.depends`): a client connects to its name, as the accepted end's peer
    credentials say it did, and the listener accepts the other end.  The end that is not
    ``planned``'s is parked for its own record (a ``closed`` link's client, for its last
    step, which closes it)."""
    f: UnixFile = planned.file
    accepted_is_mine = accepted(f)
    connect_as = f.peercred if accepted_is_mine else f.peer_peercred
    name = f.name if accepted_is_mine else f.peer_name
    with _as(ctx, f.uid, f.gid):
        client = socket.socket(AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        early = _shut_before_connect(planned, ctx)
        if early:
            client.shutdown(SHUT[early])
        with _as(ctx, f.uid, f.gid, connect_as):
            client.connect(name)
        # accept() makes the server end's inode, owned by the fs ids of its caller (sock_alloc).
        with _as(ctx, f.uid, f.gid), borrowed(ctx.opened[f.listener_file]) as listener:
            server, _ = listener.accept()
    except OSError as err:
        client.close()
        raise TargetError(f"{what(planned)}: cannot connect through {show_name(name)} again: "
                          f"{err.strerror}") from None
    _clear_pass_flags(server.fileno())   # inherited from the listener (unix_sock_inherit_flags)
    if f.link == "client":
        ctx.park(("unix", f.peer_file), server.detach())
        return client.detach()
    ctx.park(("unix", f.peer_file) if f.link == "server" else ("unix-closed", planned.id), client.detach())
    return server.detach()


def _shut_before_connect(planned: PlannedFile, ctx: RestoreContext) -> int:
    """The shutdown bits of a connection's client that its server end does not mirror: the
    client shut itself down before it connected (a shutdown of a connected stream sets the
    mirror bit on the peer, net/unix/af_unix.c unix_shutdown; connect and accept copy
    none).  Such a client could receive or send nothing after, so its queue is empty."""
    f: UnixFile = planned.file
    peer = ctx.records.get(f.peer_file) if f.peer_file is not None else None
    if peer is None:
        return 0
    client, server = (peer, f) if accepted(f) else (f, peer)
    return client.shutdown & ~_mirror(server.shutdown)


def _mirror(bits: int) -> int:
    """The bits a shutdown of ``bits`` sets on a connected stream peer (RCV <-> SEND)."""
    return (RCV_SHUTDOWN if bits & SEND_SHUTDOWN else 0) | (SEND_SHUTDOWN if bits & RCV_SHUTDOWN else 0)


def _clear_pass_flags(fd: int) -> None:
    """No SO_PASSCRED, SO_PASSPIDFD, SO_PASSSEC until the queues are filled: with one of them
    on, the kernel adds the restorer's credentials to every message sent (maybe_add_creds)."""
    for number in (SO_PASSCRED, SO_PASSPIDFD, SO_PASSSEC):
        with contextlib.suppress(OSError):
            if getsockopt_int(fd, SOL_SOCKET, number):
                with borrowed(fd) as sock:
                    sock.setsockopt(SOL_SOCKET, number, 0)


def _bind(fd: int, planned: PlannedFile, ctx: RestoreContext) -> None:  # pragma: no cover - in the child
    """Bind to the recorded name: an abstract one as it is; a path in its directory as the
    dump saw it, as its socket file's owner and with its permission bits, then unlinked
    again if the process had its file unlinked (module docstring, "Paths")."""
    f: UnixFile = planned.file
    name = f.name
    with borrowed(fd) as sock:
        if not is_path(name):
            try:
                sock.bind(name)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise TargetError(f"{what(planned)}: the abstract name {show_name(name)} is in use") from None
                raise TargetError(f"{what(planned)}: cannot bind {show_name(name)}: {err.strerror}") from None
            return
        # A path whose file was unlinked is bound and unlinked again at once: mode 0600 meanwhile.
        owner = f.file_owner or (f.uid, f.gid, 0o600)
        with _directory(planned, ctx) as dirfd:
            _clear_path(planned, dirfd, remove=True)
            umask = os.umask(~owner[2] & 0o777)
            try:
                with _as(ctx, owner[0], owner[1]):
                    sock.bind(name)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise TargetError(f"{what(planned)}: {show_name(name)} was taken meanwhile") from None
                raise TargetError(f"{what(planned)}: cannot bind {show_name(name)}: {err.strerror}") from None
            finally:
                os.umask(umask)
            base = os.path.basename(os.fsdecode(name))
            st = os.stat(base, dir_fd=dirfd, follow_symlinks=False)
            if f.path != "present":
                ours = sockdiag.unix_socket(os.fstat(fd).st_ino, sockdiag.UDIAG_SHOW_VFS)
                if ours is not None and ours.vfs == (st.st_dev, st.st_ino):
                    os.unlink(base, dir_fd=dirfd)
            elif (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != owner:
                raise TargetError(f"{what(planned)}: its socket file came out owned by uid {st.st_uid} gid "
                                  f"{st.st_gid} mode {stat.S_IMODE(st.st_mode):04o}, not uid {owner[0]} gid "
                                  f"{owner[1]} mode {owner[2]:04o}")


def _fill(planned: PlannedFile, ctx: RestoreContext) -> None:  # pragma: no cover - in the child
    """Once every open file is in place: send the recorded messages into the socket, each
    by its sender; then ask for the last step (after every socket's messages)."""
    f: UnixFile = planned.file
    fd = ctx.opened[planned.id]
    temporary: socket.socket | None = None
    try:
        for message in f.queue:
            if f.link == "closed":
                sender = ctx.parked[("unix-closed", planned.id)]
            elif message.sender is not None:
                sender = ctx.opened[message.sender]
            else:
                if temporary is None:
                    with _as(ctx, f.uid, f.gid):
                        temporary = socket.socket(AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sender = temporary.fileno()
            # A connected end sends to its peer; any other sender to the socket's name.
            dest = None if f.link in ("pair", "client", "server", "closed") else f.name
            _send(planned, sender, message, dest, ctx)
    finally:
        if temporary is not None:
            temporary.close()
    ctx.later(functools.partial(_finish, planned, ctx, fd))


def _send(planned: PlannedFile, sender: int, message: UnixMessage, dest: bytes | None,
          ctx: RestoreContext) -> None:  # pragma: no cover - in the child
    """Send one recorded message from ``sender`` (to ``dest`` for an unconnected datagram
    socket), with the restored process's credentials when it carried some."""
    data = memoryview(message.data)
    ancillary = []
    if message.creds is not None:
        uid, gid = message.creds
        ancillary = [(SOL_SOCKET, SCM_CREDENTIALS, UCRED.pack(os.getpid(), uid, gid))]
    _room(sender, len(data), ctx)
    flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
    with borrowed(sender) as sock:
        done = 0
        while True:
            try:
                if dest is not None:
                    sent = sock.sendmsg([data[done:]], ancillary, flags, dest)
                else:
                    sent = sock.sendmsg([data[done:]], ancillary, flags)
            except OSError as err:
                raise TargetError(f"{what(planned)}: cannot queue its {len(data)}-byte message again: "
                                  f"{err.strerror}") from None
            done += sent
            if done >= len(data) or planned.file.sock_type != "stream":
                return
            ancillary = []


def _room(sender: int, size: int, ctx: RestoreContext) -> None:  # pragma: no cover - in the child
    """Let ``sender`` hold ``size`` more bytes in its peer's queue (they count against the
    sender's send buffer until read: sock_alloc_send_pskb); its own size is set back by its
    last step."""
    with borrowed(sender) as sock:
        now = sock.getsockopt(SOL_SOCKET, sockopts.SO_SNDBUF)
        need = 2 * size + (1 << 16)
        if need <= now // 2:
            return
        trusted = ctx.principal is None or ctx.principal.trusted
        number = sockopts.SO_SNDBUFFORCE if trusted and os.geteuid() == 0 else sockopts.SO_SNDBUF
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_SOCKET, number, need)


def _finish(planned: PlannedFile, ctx: RestoreContext, fd: int) -> None:  # pragma: no cover - in the child
    """Once every queue is filled: connect a ``to`` link (and an ``outside`` one), set the
    options, shut down, close a ``closed`` link's temporary peer, and compare."""
    f: UnixFile = planned.file
    with borrowed(fd) as sock:
        if f.link in ("to", "outside"):
            try:
                with _as(ctx, f.uid, f.gid, (0, f.uid, f.gid) if f.link == "outside" else None):
                    sock.connect(f.peer_name)
            except OSError as err:
                raise TargetError(f"{what(planned)}: cannot connect to {show_name(f.peer_name)} again: "
                                  f"{err.strerror}") from None
        options = sockopts.flat(f)
        trusted = ctx.principal is None or ctx.principal.trusted
        sockopts.apply(sock, options, AF_UNIX, 0, who=what(planned), trusted=trusted, owner=_owner_text(ctx),
                       program=f.filter or b"")
        # Only the bits it lacks: a stream's peer, or a shutdown before connect
        # (_shut_before_connect), set some already, and a second shutdown would mirror them
        # onto the peer again.
        now = sockdiag.unix_socket(os.fstat(fd).st_ino)
        how = SHUT.get(f.shutdown & ~(now.shutdown if now is not None else 0))
        if how is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(how)
        if f.link == "closed":   # the peer's close sets both bits of a stream end (unix_release_sock)
            os.close(ctx.unpark(("unix-closed", planned.id)))
    ctx.later(functools.partial(_verify, planned, fd))


def _verify(planned: PlannedFile, fd: int) -> None:  # pragma: no cover - in the child
    """Once every socket is connected: read the new socket as the dump read the old one;
    refuse a difference by name."""
    f: UnixFile = planned.file
    with borrowed(fd) as sock:
        sockopts.verify(sock, sockopts.flat(f), AF_UNIX, 0, who=what(planned))
        _compare(sock, planned)


def _compare(sock: socket.socket, planned: PlannedFile) -> None:  # pragma: no cover - in the child
    f: UnixFile = planned.file
    st = os.fstat(sock.fileno())
    if (st.st_uid, st.st_gid) != (f.uid, f.gid):
        raise TargetError(f"{what(planned)}: the new socket is owned by uid {st.st_uid} gid {st.st_gid}, not "
                          f"uid {f.uid} gid {f.gid} (restore as root)")
    d = sockdiag.unix_socket(st.st_ino)
    if d is None:
        raise TargetError(f"{what(planned)}: unix_diag does not show the new socket")
    checks = [("name", show_name(record_name(d.name)), show_name(f.name)),
              ("shutdown", d.shutdown & 3, f.shutdown)]
    if f.sock_type != "dgram":
        # A datagram socket's state says only whether some socket ever connected to it
        # (unix_dgram_connect sets the other's too), which nothing but unix_diag shows.
        checks.append(("state", STATES.get(d.state, str(d.state)), f.state))
    if f.state == "listening":
        checks.append(("listen backlog", d.wqueue, f.backlog))
    if _makes_peercred(f) and f.peercred is not None:
        now = peercred(sock)
        checks.append(("SO_PEERCRED uid and gid", now[1:] if now else None, f.peercred[1:]))
    for label, now, recorded in checks:
        if now != recorded:
            raise TargetError(f"{what(planned)}: its {label} came out as {now!r}, not {recorded!r}")

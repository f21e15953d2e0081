"""Pipes and FIFOs: every end, the bytes in flight, status flags, the pipe's size.

**The model.**  A pipe is one kernel object (``struct pipe_inode_info``: a ring of
page buffers, fs/pipe.c) that open file descriptions point at.  ``pipe2`` makes
two, the read end (``O_RDONLY``) and the write end (``O_WRONLY``); opening a
FIFO by path, or ``/proc/PID/fd/N`` of a pipe, makes more (``fifo_open``), each
with its own access mode and status flags: ``O_NONBLOCK``, and ``O_DIRECT``,
which makes a write end write *packets* (each ``write`` of up to a page is a
buffer that a ``read`` returns alone, dropping what it does not take).  A
checkpoint records each description (kind ``"pipe"``, an anonymous pipe named
``pipe:[INO]``, or ``"fifo"``, a named one, by path) with what belongs to the
pipe itself: its size (``F_GETPIPE_SZ``), the owner and mode of an anonymous
pipe's inode, and -- in the record of the pipe's lowest file id -- the bytes in
it and, for packets, their lengths.

**Dump** (the target frozen; its fds taken with ``pidfd_getfd``).  The bytes are
copied with ``tee(2)`` into a pipe of ckpt's own as large as the target's, then
read from there: the target's pipe is never read, its buffers stay as they were
(``tee`` takes references to them).  Packet boundaries come from reads of copies
(:func:`_buffered`): a ``read`` stops at the end of a packet, and a one-byte read
of a packet drops the whole of it.  A pipe is restored only when the process
holds all of it, which the dump checks three ways:

* no other process has an fd on it: one pass over ``/proc/*/fd`` for the
  pipes and FIFOs the target has at fds >= 3 (a shared description, after a
  fork before exec, is invisible otherwise: it adds no reader or writer);
* an end the process lacks is closed everywhere: ``poll`` on an end the process
  has reports ``POLLHUP`` (no writer) or ``POLLERR`` (no reader) (fs/pipe.c
  ``pipe_poll``) -- this catches ends no scan sees (in flight in a unix socket,
  in a process ckpt may not read); a FIFO reader opened ``O_NONBLOCK`` with no
  writer gets no ``POLLHUP`` until a writer came and went (``fifo_open`` sets
  ``f_pipe``), so for an empty FIFO only the scan answers;
* no description of it is only at fds 0-2, which a restore replaces.

Anything else is refused by name; ``restore --inherit-fd N:pipe:[INO]`` (or
``N:PATH`` for a FIFO) gives the process a pipe of the caller's instead
(:mod:`ckpt.files.inherit`).  The bytes and the lacking ends are recorded even
so, and at fds 0-2 too: in a dumped tree, the other holders may be its tasks,
and the tree restores the pipe once for all of them (:mod:`ckpt.files.handdown`).

**Restore** (in the restore child).  The first description of a pipe to be
opened makes the pipe: ``pipe2`` for an anonymous one (then its size, owner and
mode), the FIFO opened ``O_RDWR`` by path (:func:`ckpt.trust.open_verified`: the
recorded identity, no symlink, as the restored process for untrusted images),
which never waits and holds it open while its descriptions are opened.  Each
description is then ``pipe2``'s own read or write end when it was one (no
``O_LARGEFILE``: pipe2 does not set it, an ``open`` does), else a reopen of the
pipe through ``/proc/self/fd`` (or of the FIFO by path) with its access mode;
``F_SETFL`` sets its status flags.  The record holding the data writes it
through a write end of ckpt's: in one ``write`` (the pipe is empty and as large
as it was), or one ``write`` per packet with ``O_DIRECT``.  Whatever ckpt kept
is closed before the process runs: an end the process did not have is closed
again (a reader sees the end of file after the data; a writer gets ``EPIPE``).

**Limits.**  The data fit the pipe's size: up to 64 KiB by default, up to
``/proc/sys/fs/pipe-max-size`` (1 MiB) for a user, more for root; copying them
costs a ``tee`` and a few reads while the target is frozen, and the scan one
readlink per fd of every other process (docs/DESIGN.md, "Pipes and FIFOs").  A restore of
images that are not root-trusted never makes a pipe larger than
``pipe-max-size`` (the images' owner could not).  The bytes come back, not the
page layout of the ring: a pipe that held many part-filled buffers (splice,
packets written by another writer) may take a little more before it is full.
A FIFO read end's ``POLLHUP`` before any writer came (fifo_open ``f_pipe``) is
not restored; neither are the times of a pipe's inode.  The scan does not look
into threads that unshared their fd table (``CLONE_FILES``), nor at fds in flight
in unix sockets but through ``poll``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import procfs, trust
from .._sys import fs
from .._sys.kcmp import kcmp_file
from .._sys.pipe import bytes_in, tee
from ..errors import ImageError, UntrustedImage
from ..image.schema import PipeFile
from .base import REOPEN_MASK, SETFL_MASK, Capture, FileKind, PlannedFile, Probe, RestoreContext, Subject
from .regular import expected_identity
from .survey import holders as fd_holders, named_holders

PAGE_SIZE = 4096
PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"
_O_LARGEFILE = 0o100000   # as the kernel sets it on every open of a 64-bit process (os.O_LARGEFILE is 0)
_ENDS = {os.O_RDONLY: "read", os.O_WRONLY: "write", os.O_RDWR: "both"}

PipeKey = tuple[Any, ...]   # ("pipe", ino) or ("fifo", dev, ino): one pipe object


def _key(kind: str, dev: int, ino: int) -> PipeKey:
    return ("pipe", ino) if kind == "pipe" else ("fifo", dev, ino)


def _end(flags: int) -> str:
    """"the read end", "the write end", "both ends"."""
    end = _ENDS.get(flags & os.O_ACCMODE, "both")
    return "both ends" if end == "both" else f"the {end} end"


# -- dump (the target is frozen) ---------------------------------------------------------


@dataclass
class _Facts:
    """What a dump learns once per pipe object (the records of its descriptions share it)."""

    size: int
    uid: int
    gid: int
    holders: list[list[Any]] = field(default_factory=list)   # [[pid, comm], ...] outside the target
    hidden: str = ""           # "read" / "write": that end is open somewhere no scan saw
    unscanned: int = 0         # processes whose fds ckpt could not read
    problem: str = ""
    data: bytes | None = None  # None: not recorded (the pipe is refused, or only at fds 0-2)
    packets: list[int] | None = None
    recorded: bool = False     # its first record (the one with the data) is written


class Pipe(FileKind):
    """Kinds "pipe" and "fifo" (record ``file_pipe``)."""

    names = ("pipe", "fifo")

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        if f.kind != "fifo" or f.deleted:
            return None   # a FIFO unlinked while open has no path to reopen: ckpt.files.unsupported
        return "pipe" if f.target.startswith("pipe:[") else "fifo"

    def dump(self, probe: Probe) -> dict[str, Any]:
        facts = _facts_of(probe)
        first, facts.recorded = not facts.recorded, True
        return {
            "pipe_size": facts.size, "uid": facts.uid, "gid": facts.gid,
            "holders": facts.holders, "hidden": facts.hidden, "unscanned": facts.unscanned,
            "problem": facts.problem,
            "data": facts.data if first else None, "packets": facts.packets if first else None,
        }

    # -- what a checkpoint says ------------------------------------------------------------

    def describe(self, file: PipeFile) -> str:
        target = file.target
        return f"a pipe ({target})" if file.kind == "pipe" else f"the FIFO {target}"

    def reasons(self, file: PipeFile, subject: Subject) -> list[str]:
        what = f"{subject} {subject.verb('is', 'are')} {self.describe(file)}, {_end(file.flags)}"
        out = []
        hint = (f"restore --inherit-fd N:{file.target} gives the process the caller's fd N instead")
        holders = file.holders
        if holders:
            named = ", ".join(f"pid {pid} ({comm})" for pid, comm in holders)
            out.append(f"{what}, also open in {named}: ckpt restores a pipe only when the process holds "
                       f"all of it ({hint})")
        elif file.hidden:
            out.append(f"{what}; its {file.hidden} end is open outside the process (in a process ckpt "
                       f"could not look into, or in flight in a unix socket) ({hint})")
        if file.problem:
            out.append(f"{what}: {file.problem}")
        return out

    def notes(self, file: PipeFile, subject: Subject) -> list[str]:
        if not file.unscanned:
            return []
        return [f"{subject}: the dump could not read the fds of {file.unscanned} other processes, which "
                f"may hold {self.describe(file)} too"]

    # -- restore ---------------------------------------------------------------------------

    def check(self, planned: PlannedFile) -> None:
        f = planned.file
        if f.kind == "fifo" and not os.path.exists(f.target):
            raise ImageError(f"{planned.subject}: the FIFO {f.target} no longer exists")

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        f = planned.file
        _check_size(planned, ctx)
        _check_owner(planned, ctx)
        if f.kind == "fifo":
            # Opening a FIFO wakes whoever waits to open its other end: check it without
            # opening it (O_PATH), and the access as the restored process would be checked.
            os.close(trust.open_verified(f.target, os.O_PATH, expected_identity(planned, ctx), planned.what,
                                         same_boot=ctx.same_boot, mode=f.mode or None))
            want = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(f.flags & os.O_ACCMODE, os.R_OK | os.W_OK)
            if not os.access(f.target, want, effective_ids=True, follow_symlinks=False):
                uid, gid, _ = fs.thread_fs_identity()
                raise UntrustedImage(f"{planned.what}: uid {uid} (gid {gid}) may not open it for "
                                     f"{_end(f.flags)}")

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
        f = planned.file
        key = _key(f.kind, f.dev, f.ino)
        if _kept(ctx, key) is None:
            _make(planned, ctx, key)
        if f.data is not None:
            _fill(planned, ctx, key)
        fd = _description(planned, ctx, key)
        fcntl.fcntl(fd, fcntl.F_SETFL, f.flags & SETFL_MASK)
        return fd


PIPE = Pipe()


def _facts_of(probe: Probe) -> _Facts:
    """The facts of ``probe``'s pipe, worked out on the first of its fds the dump records."""
    memo = probe.capture.memo
    f = probe.file
    key = _key("pipe" if f.target.startswith("pipe:[") else "fifo", f.dev, f.ino)
    facts = memo.get(("pipe", key))
    if facts is None:
        facts = memo[("pipe", key)] = _look(probe, key)
    return facts


def _look(probe: Probe, key: PipeKey) -> _Facts:
    """What the dump records of pipe ``key``, from its first fd ``probe`` and the
    target's other fds on it (the module docstring's three checks, then its bytes)."""
    capture = probe.capture
    mine = probe.getfd()
    st = os.fstat(mine)
    facts = _Facts(fcntl.fcntl(mine, fcntl.F_GETPIPE_SZ), st.st_uid, st.st_gid)
    groups = capture.memo.get("pipe-fds")
    if groups is None:
        groups = capture.memo["pipe-fds"] = {}
        for p in capture.probes:
            if p.file.kind == "fifo":
                groups.setdefault((p.file.dev, p.file.ino), []).append(p)
    same = groups[probe.file.dev, probe.file.ino]
    kept = [p for p in same if p.fd > 2]
    if not kept and not _tree_child(capture.pid):
        return facts   # only at fds 0-2, which a restore replaces: nothing more to look at
    if kept:   # (only at fds 0-2 in a tree's task: its other end may be another task's)
        for low in (p for p in same if p.fd <= 2):
            if not any(kcmp_file(capture.pid, low.fd, capture.pid, p.fd) == 0 for p in kept):
                facts.problem = (f"{_end(low.file.flags)} of it is at fd {low.fd} only, which a restore replaces "
                                 "with its own stream")
        found, facts.unscanned = _holders(capture)
        facts.holders = found.get(key, [])
    readable = [p for p in same if p.file.flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)]
    writable = [p for p in same if p.file.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)]
    # An end the process lacks must be closed everywhere, or be another task's of the same
    # tree (ckpt.files.handdown.tree_view).  A FIFO reader opened O_NONBLOCK while it had no
    # writer sees no POLLHUP until one came and went (fifo_open sets f_pipe): there, no
    # POLLHUP with bytes in the FIFO means a writer.
    if readable and not writable and not _revents(readable[0]) & select.POLLHUP \
            and (key[0] == "pipe" or bytes_in(readable[0].getfd())):
        facts.hidden = "write"
    if writable and not readable and not _revents(writable[0]) & select.POLLERR:
        facts.hidden = "read"
    # The bytes are recorded even when another process holds the pipe (then refused for a
    # single process): in a tree that process may be a task restored with it.
    if facts.problem:
        return facts
    if not readable:
        facts.data = b""   # no reader anywhere: nobody can ever read what is in it
        return facts
    try:
        facts.data, facts.packets, facts.problem = _buffered(capture, readable[0].getfd(), facts.size)
    except OSError as err:
        facts.problem = f"ckpt could not copy the bytes in it ({err.strerror or err})"
    if facts.problem:
        facts.data = facts.packets = None
    return facts


def _tree_child(pid: int) -> bool:
    """``pid`` is a task of a tree this dump froze, not its root: its parent is traced by a
    thread of this process (the tree's tracer, ckpt/live/tree.py).  A pipe at its fds 0-2
    may be handed down to it by the tree's restore (ckpt/files/handdown.py)."""
    try:
        tracer = procfs.read_status(procfs.read_stat(pid).ppid).tracer_pid
    except (OSError, ValueError):
        return False
    return tracer != 0 and os.path.exists(f"/proc/self/task/{tracer}")


def _revents(probe: Probe) -> int:
    """What ``poll`` says of ``probe``'s description now (POLLHUP, POLLERR always come)."""
    poller = select.poll()
    poller.register(probe.getfd(), 0)
    return next((events for _, events in poller.poll(0)), 0)


def _holders(capture: Capture) -> tuple[dict[PipeKey, list[list[Any]]], int]:
    """The other processes that have an fd on the target's pipes and FIFOs at fds >= 3, by
    pipe, and how many processes ckpt could not look into (once per capture).

    From the fd links of every other process (ckpt/files/survey.py, read once per freeze):
    pipes are told by their ``pipe:[INO]`` link (pipefs is one superblock); a FIFO by its
    path's name, then its stat.  This process's own fds count, except the copies the
    capture took."""
    memo = capture.memo
    if "pipe-holders" in memo:
        return memo["pipe-holders"]
    pipes: set[str] = set()
    fifos: dict[tuple[int, int], str] = {}
    for p in capture.probes:
        if p.fd > 2 and p.file.kind == "fifo" and not p.file.deleted:
            if p.file.target.startswith("pipe:["):
                pipes.add(p.file.target)
            else:
                fifos[p.file.dev, p.file.ino] = os.path.basename(p.file.target)
    names = set(fifos.values())
    found: dict[PipeKey, set[int]] = {}

    def wanted(link: str) -> bool:
        return link in pipes or bool(names) and link.startswith("/") and os.path.basename(link) in names

    links, unscanned = fd_holders(capture.view, capture.pid, capture.copies, wanted)
    for link, fds in links.items():
        if link in pipes:
            found.setdefault(("pipe", int(link[6:-1])), set()).update(pid for pid, _ in fds)
            continue
        for pid, fd in fds:   # a FIFO: its name matched, its device and inode must too
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue   # closed meanwhile
            if (st.st_dev, st.st_ino) in fifos:
                found.setdefault(("fifo", st.st_dev, st.st_ino), set()).add(pid)
    result = ({key: named_holders(pids) for key, pids in found.items()}, unscanned)
    memo["pipe-holders"] = result
    return result


def _buffered(capture: Capture, src: int, size: int) -> tuple[bytes, list[int] | None, str]:
    """The bytes in the pipe of ``src`` (a readable description of it, never read), and
    the lengths of its packets when they are packets; or a problem.

    Read from a copy (:func:`_copy_of`), a pipe tells its packets apart: a ``read``
    stops at the end of a packet, and a read that takes part of a packet drops the rest
    of it (fs/pipe.c ``pipe_read``, ``PIPE_BUF_FLAG_PACKET``).  So a first one-byte
    read shows whether the pipe starts with a packet.  If not, the bytes are a stream:
    the read of all but the last byte must leave that byte (a packet at the end would
    be dropped whole), which is then read.  If so, the bytes are read from a second
    copy with reads as large as what is left, one packet each, and a third copy checks
    that each of them is a whole packet.  Anything else (a writer that switched packet
    mode on or off with bytes in the pipe) is a problem."""
    total = bytes_in(src)
    if not total:
        return b"", None, ""
    mixed = "it holds bytes written both in packet mode (O_DIRECT) and not, whose boundaries ckpt cannot tell"
    with _copy_of(capture, src, size, total) as copy:
        head = os.read(copy, 1)
        left = bytes_in(copy)
        if left == total - 1:   # a stream (or a packet of one byte, which every read sees the same)
            body = os.read(copy, left - 1) if left > 1 else b""
            if len(body) == max(left - 1, 0) and bytes_in(copy) == min(left, 1):
                return head + body + (os.read(copy, 1) if left else b""), None, ""
    with _copy_of(capture, src, size, total) as copy:
        parts: list[bytes] = []
        while left := bytes_in(copy):
            parts.append(os.read(copy, left))
    with _copy_of(capture, src, size, total) as copy:
        for part in parts:
            before = bytes_in(copy)
            os.read(copy, 1)
            if before - bytes_in(copy) != len(part):
                return b"", None, mixed
    return b"".join(parts), [len(part) for part in parts], ""


@contextmanager
def _copy_of(capture: Capture, src: int, size: int, total: int) -> Iterator[int]:
    """The read end of a pipe of ckpt's holding a ``tee`` of every buffer of ``src``'s pipe
    (one pipe per capture, grown to the largest pipe copied, emptied after each use)."""
    if "pipe-copy" not in capture.memo:
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        capture.own += [r, w]
        capture.memo["pipe-copy"] = (r, w)
    r, w = capture.memo["pipe-copy"]
    if fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) < size:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)   # as many slots as the target's pipe
    try:
        copied = tee(src, w, total)
        if copied != total:
            raise OSError(errno.EAGAIN, f"tee copied {copied} of {total} bytes")
        yield r
    finally:
        while left := bytes_in(r):
            os.read(r, left)


# -- restore -----------------------------------------------------------------------------


def pipe_max_size() -> int:
    """/proc/sys/fs/pipe-max-size: the largest pipe a user without CAP_SYS_RESOURCE may make."""
    with open(PIPE_MAX_SIZE) as f:
        return int(f.read())


def _as_root(ctx: RestoreContext) -> bool:
    """True when the restore may make what root may: root restoring root-trusted images."""
    return ctx.trusted and os.geteuid() == 0


def _check_size(planned: PlannedFile, ctx: RestoreContext) -> None:
    """Refuse a pipe larger than pipe-max-size unless the restore may make what root may
    (fs/pipe.c pipe_set_size: above it, only CAP_SYS_RESOURCE)."""
    size, limit = planned.file.pipe_size, pipe_max_size()
    if size > limit and not _as_root(ctx):
        uid = fs.thread_fs_identity()[0] if os.geteuid() == 0 else os.geteuid()
        raise UntrustedImage(f"{planned.what}: a pipe of {size} bytes, above {PIPE_MAX_SIZE} ({limit}): "
                             f"uid {uid} could not make it")


def _check_owner(planned: PlannedFile, ctx: RestoreContext) -> None:
    """Refuse an anonymous pipe owned by someone the restore cannot make its owner: pipe2
    gives the pipe the maker's fsuid and fsgid (fs/pipe.c get_pipe_inode), and only a
    restore that may make what root may gives it another (fchown).  A process that made
    its pipe before it changed its ids has one of another owner, which ``fstat`` and the
    access checks of /proc/PID/fd/N see: not given silently to the images' owner."""
    f = planned.file
    if f.kind != "pipe" or _as_root(ctx):
        return
    uid, gid, _ = fs.thread_fs_identity()   # preflight runs with the restore child's identity
    if (f.uid, f.gid) != (uid, gid):
        raise UntrustedImage(f"{planned.what}: a pipe owned by uid {f.uid} (gid {f.gid}): uid {uid} "
                             f"(gid {gid}) could not make it so")


# What the restore child keeps of a pipe while its descriptions are opened, under
# ("pipe", key, ...) in RestoreContext.parked (closed before the process runs): a FIFO
# opened O_RDWR ("src"); pipe2's read and write ends ("read", "write"), renamed
# "read given" / "write given" once a description is one with them.
_KEPT = ("src", "read", "read given", "write", "write given")
_END_OF = {os.O_RDONLY: "read", os.O_WRONLY: "write"}


def _kept(ctx: RestoreContext, key: PipeKey) -> int | None:
    """An fd of the pipe the child keeps (to reopen it through /proc/self/fd), or None
    before the pipe is made."""
    return next((ctx.parked[("pipe", key, k)] for k in _KEPT if ("pipe", key, k) in ctx.parked), None)


def _make(planned: PlannedFile, ctx: RestoreContext, key: PipeKey) -> None:  # pragma: no cover - child
    """Make the pipe of ``planned`` (the first of its descriptions to be opened) and keep
    what its other descriptions need (see ``_KEPT``)."""
    f = planned.file
    _check_size(planned, ctx)
    if f.kind == "fifo":
        src = trust.open_verified(f.target, os.O_RDWR, expected_identity(planned, ctx), planned.what,
                                  same_boot=ctx.same_boot, mode=f.mode or None)
        queued = bytes_in(src)
        if queued:
            os.close(src)
            raise ImageError(f"{planned.what}: the FIFO holds {queued} bytes already (another process has it "
                             "open): ckpt will not mix them with the ones it restores")
        _resize(src, f.pipe_size)
        ctx.park(("pipe", key, "src"), src)
        return
    r, w = os.pipe2(os.O_CLOEXEC)
    _resize(r, f.pipe_size)
    st = os.fstat(r)
    if (st.st_uid, st.st_gid) != (f.uid, f.gid) and _as_root(ctx):
        os.fchown(r, f.uid, f.gid)   # pipe2 gave it the restorer's fsuid (fs/pipe.c get_pipe_inode)
    if stat.S_IMODE(f.mode) and stat.S_IMODE(f.mode) != stat.S_IMODE(st.st_mode):
        os.fchmod(r, stat.S_IMODE(f.mode))
    ctx.park(("pipe", key, "read"), r)
    ctx.park(("pipe", key, "write"), w)


def _resize(fd: int, size: int) -> None:  # pragma: no cover - in the child
    if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) != size:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def _fill(planned: PlannedFile, ctx: RestoreContext, key: PipeKey) -> None:  # pragma: no cover - child
    """Write the recorded bytes into the (empty) pipe through a write end of ckpt's: the
    FIFO's src, pipe2's write end while no description is one with it, else a new one."""
    f = planned.file
    data, packets = f.data, f.packets
    if not data:
        return
    own = -1
    if ("pipe", key, "src") in ctx.parked:
        writer = ctx.parked[("pipe", key, "src")]
    elif ("pipe", key, "write") in ctx.parked:
        writer = ctx.parked[("pipe", key, "write")]   # its own record sets its flags when it takes it
    else:
        writer = own = os.open(f"/proc/self/fd/{_kept(ctx, key)}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.fcntl(writer, fcntl.F_SETFL, os.O_NONBLOCK | (os.O_DIRECT if packets else 0))
        view, done = memoryview(data), 0
        for length in packets or [len(data)]:
            if os.write(writer, view[done:done + length]) != length:
                raise ImageError(f"{planned.what}: its {len(data)} bytes do not fit a pipe of {f.pipe_size}")
            done += length
    finally:
        if own >= 0:
            os.close(own)


def _description(planned: PlannedFile, ctx: RestoreContext, key: PipeKey) -> int:  # pragma: no cover
    """A new fd of the pipe with the recorded access mode: one with pipe2's own end for a
    record of one, else a new description (a reopen of the pipe, or of the FIFO by path)."""
    f = planned.file
    access = f.flags & os.O_ACCMODE
    if f.kind == "fifo":
        # O_DIRECT is refused by open on a FIFO (EINVAL) but taken by F_SETFL; the
        # FIFO is held open O_RDWR (src), so no open of an end waits or fails.
        return trust.open_verified(f.target, f.flags & REOPEN_MASK & ~(os.O_DIRECT | os.O_ASYNC),
                                   expected_identity(planned, ctx), planned.what, same_boot=ctx.same_boot,
                                   mode=f.mode or None)
    end = _END_OF.get(access)
    if end is not None and not f.flags & _O_LARGEFILE and ("pipe", key, end) in ctx.parked:
        fd = ctx.parked.pop(("pipe", key, end))
        ctx.parked[("pipe", key, f"{end} given")] = fd
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
    return os.open(f"/proc/self/fd/{_kept(ctx, key)}", access | os.O_CLOEXEC)

"""Terminals: pty pairs the process holds whole, its controlling terminal, and
``restore --shell-job``.

**The model.**  A terminal is a ``struct tty_struct`` (drivers/tty/tty_io.c) behind
open file descriptions; a pty is two of them linked (drivers/tty/pty.c): the
*master*, made by each open of /dev/ptmx (or /dev/pts/ptmx) and never reopened,
and the *slave* /dev/pts/N, N the pty's index.  The pair's settings -- termios,
window size -- are the slave's, which an fd of either end reads and sets
(tty_ioctl.c ``tty_mode_ioctl``); packet mode and the lock are the master's; the
exclusive flag is per end.  A terminal is the *controlling terminal* of at most
one session, which has a foreground process group.  Every fd of a character
device that is a terminal is a record of kind ``"tty"`` whose ``tty`` says which:

* ``master``: a pty master; ``slave``: /dev/pts/N; ``current``: an fd of
  /dev/tty (its terminal is the one it led to: ``TIOCGDEV``); ``other``: any
  other terminal (a virtual console, a serial line, /dev/console).

**Dump** (the target frozen, each fd a ``pidfd_getfd`` copy; nothing is read or
set): ``TIOCGDEV``, ``TCGETS2``, ``TIOCGWINSZ``, ``TIOCGEXCL``, ``FIONREAD`` (bytes
waiting for this end's reader), and on a master ``TIOCGPTN``, ``TIOCGPTLCK``,
``TIOCGPKT``, ``poll`` (``POLLHUP``: its slave was opened and closed again,
TTY_OTHER_CLOSED), ``TIOCGSID``/``TIOCGPGRP`` (the pair's session and foreground
group: only a master answers them for a terminal that is not ckpt's own).  A
slave's pair is *inside* the process when the process holds the master of the
same index and no other process has an fd on either end or has the slave as
its controlling terminal (one pass over ``/proc/*/stat`` and ``/proc/*/fd``,
masters told apart by their fdinfo ``tty-index``, done only when the process
holds a master).  /proc/PID/stat gives the process's own terminal (``tty_nr``),
session and process group (recorded in ``state.process``).

**Restore.**  A pair inside the process is made again in the restore child: a
new master (/dev/ptmx, verified to be the ptmx device), unlocked, with the
recorded termios, window size and packet mode, and each slave description
opened from it with ``TIOCGPTPEER`` (no path: the slave of *this* master,
whatever /dev/pts holds); a master whose slave had been closed gets one opened
and closed (``POLLHUP`` again); the lock and exclusive flags last.  The index is
the next free one, not the recorded one: getting it back would mean opening
and dropping pairs until the kernel hands it out (CRIU's way), which races with
every other user of ptys and fails when the index is taken -- a program that
kept the slave's name sees the new one (the restore notes it).  When the pair's
slave was the process's controlling terminal and the process led its session,
the child calls ``setsid`` and ``TIOCSCTTY`` (:func:`settle`), which gives it
the session, group and foreground group it had; a process that had no
controlling terminal drops the one it inherits from ckpt (``TIOCNOTTY``).

**Session and process group** (recorded ``session`` and ``pgid``).  One process
is restored, so it can lead again what it led, and join nothing else: a session
leader gets ``setsid`` (the leader of a new session, as it was of its own; with
``--same-pid`` the ids are the old ones), a process that led only its group gets
``setpgid(0, 0)`` -- a group of its own in ckpt restore's session, as CRIU's
``restore_pgid`` gives a root task that is no session leader (``setsid`` would make
it lead a session it did not); a member of another process's group stays in ckpt
restore's group and session.  The last two are notes (:func:`session_notes`).
Under ``--shell-job`` the process stays in ckpt restore's group, a job of the caller.

**Terminals outside the process** -- the terminal it was started from, a slave
whose master another process holds -- are refused, but by ``restore
--shell-job`` (as CRIU's option): the process stays in the session and process
group of the ``ckpt restore`` command, a job of the caller's shell, so its
controlling terminal is the caller's; its fds 0-2 are ckpt's streams as always;
an fd >= 3 of that terminal is a new open of the caller's terminal, opened by
ckpt as the caller before the fork (:func:`handed_down`), so the process never
gets a terminal its restorer could not open; the recorded termios is set on the
caller's terminal (an editor in raw mode stays in raw mode), not the window size
(the terminal's own).  Unlike CRIU, which makes a restored group leader lead
its own group and the terminal's foreground, ckpt keeps it in its own command's
group: ckpt waits for it, and job control (Ctrl-Z, ``fg``) then stops and
continues both together.

**Refused by name**: bytes queued in a pty (they cannot be read without being
consumed, and writing them back would run them through the line discipline
again: CRIU reads and writes them back, ckpt refuses), a pair another process
shares, a pair that is the controlling terminal of another session, /dev/tty of
a pty of the process, other terminals (virtual consoles, serial lines) but as
the controlling terminal under ``--shell-job``.  (``O_ASYNC`` and the signal owner:
:mod:`ckpt.files.fown`.)

**Limits.**  A partial line typed into a slave in canonical mode is invisible to
the dump (``FIONREAD`` counts whole lines only, n_tty.c ``inq_canon``) and is
lost; bytes the kernel has not yet moved from a pty's flip buffer to the line
discipline (a write a moment before the freeze) are not counted; a pair in
another devpts instance than the restoring ckpt's /dev/ptmx comes back in
ckpt's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import select
import signal
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import procfs
from .._sys import tty as ttyio
from ..errors import ImageError, UntrustedImage, UsageError
from ..image.schema import State, TtyFile
from .base import REOPEN_MASK, SETFL_MASK, Capture, FileKind, PlannedFile, Probe, RestoreContext, Subject

if TYPE_CHECKING:
    from .restore import FdPlan

PTMX = os.makedev(5, 2)          # /dev/ptmx and /dev/pts/ptmx (Documentation/admin-guide/devices.txt)
CURRENT_TTY = os.makedev(5, 0)   # /dev/tty
PTS_MAJORS = range(136, 144)     # UNIX98_PTY_SLAVE_MAJOR .. + UNIX98_PTY_MAJOR_COUNT - 1
NOT_TERMINALS = frozenset({1, 10})   # memory devices (/dev/null, ...), misc devices: never asked
_OPEN_MASK = os.O_ACCMODE | os.O_NONBLOCK   # what TIOCGPTPEER and a terminal's open take of the flags


def pts_index(rdev: int) -> int:
    """The N of /dev/pts/N from a slave's device number."""
    return (os.major(rdev) - PTS_MAJORS.start) * 256 + os.minor(rdev)


def is_terminal_device(rdev: int) -> bool:
    """A device number that is a terminal for sure (/dev/tty, console, ptmx, vt, serial, pts)."""
    return os.major(rdev) in (4, 5) or os.major(rdev) in PTS_MAJORS


def terminal_name(rdev: int) -> str:
    """"/dev/pts/3", "/dev/tty1" (from sysfs), or "the terminal 4:64"."""
    if os.major(rdev) in PTS_MAJORS:
        return f"/dev/pts/{pts_index(rdev)}"
    with contextlib.suppress(OSError):
        with open(f"/sys/dev/char/{os.major(rdev)}:{os.minor(rdev)}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return "/dev/" + line[8:].strip()
    return f"the terminal {os.major(rdev)}:{os.minor(rdev)}"


# -- dump (the target is frozen) ---------------------------------------------------------


class Tty(FileKind):
    """Kind "tty" (record ``file_tty``)."""

    names = ("tty",)

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        if f.kind != "chardev" or f.deleted:
            return None
        if is_terminal_device(f.rdev):
            return "tty"
        if os.major(f.rdev) in NOT_TERMINALS:
            return None
        try:   # a terminal of another driver (USB serial, ...): TCGETS answers (tty_io.c)
            return "tty" if os.isatty(probe.getfd()) else None
        except OSError:
            return None

    def dump(self, probe: Probe) -> dict[str, Any]:
        fd = probe.getfd()
        rdev = probe.file.rdev
        which = "master" if rdev == PTMX else "slave" if os.major(rdev) in PTS_MAJORS else \
            "current" if rdev == CURRENT_TTY else "other"
        record: dict[str, Any] = {
            "tty": which, "real": 0, "name": "", "index": -1, "termios": None, "winsize": None,
            "locked": False, "packet": False, "exclusive": False, "hup": False, "inq": 0,
            "peer_file": None, "holders": [], "session": "none", "foreground": "none", "problem": "",
            "ctty": False, "owner": None,
        }
        try:
            record["real"] = ttyio.real_device(fd)
            record["termios"] = ttyio.get_termios2(fd)
            record["winsize"] = list(ttyio.get_winsize(fd))
            record["exclusive"] = ttyio.exclusive(fd)
            record["inq"] = ttyio.queued(fd)
        except OSError as err:   # a hung-up terminal answers EIO
            record["problem"] = f"ckpt could not read its settings ({err.strerror or err})"
        if which == "master":
            record["index"] = index = ttyio.pty_index(fd)
            record["name"] = f"/dev/pts/{index}"
            record["locked"] = ttyio.locked(fd)
            record["packet"] = ttyio.packet_mode(fd)
            record["hup"] = bool(_revents(fd) & select.POLLHUP)
            record["session"], record["foreground"] = _ownership(fd, probe.pid)
            record["holders"] = _outside(probe.capture).get(index, [])
        else:
            real = record["real"] or rdev
            record["name"] = terminal_name(real)
            record["ctty"] = real == _controlling(probe.capture)
            if which == "slave":   # /dev/pts/N's owner: grantpt's, or what the process fchown()ed
                st = os.fstat(fd)
                record["owner"] = [st.st_uid, st.st_gid]
            if os.major(real) in PTS_MAJORS:
                record["index"] = pts_index(real)
                master = _masters(probe.capture).get(record["index"])
                if master is not None:
                    record["peer_file"] = probe.table.ids.get(master.fd)
                    record["session"], record["foreground"] = _ownership(master.getfd(), probe.pid)
                    record["holders"] = _outside(probe.capture).get(record["index"], [])
        return record

    # -- what a checkpoint says ------------------------------------------------------------

    def describe(self, file: TtyFile) -> str:
        which = file.tty
        if which == "master":
            return f"the master of the pty {file.name or '?'}"
        if which == "slave":
            return f"the pty slave {file.name or file.target}"
        if which == "current":
            return f"/dev/tty (the terminal {file.name or '?'})"
        return f"the terminal {file.name or file.target}"

    def reasons(self, file: TtyFile, subject: Subject) -> list[str]:
        what = f"{subject} {subject.verb('is', 'are')} {self.describe(file)}"
        out = []
        if file.problem:
            out.append(f"{what}: {file.problem}")
        if file.shell_job:
            return out
        if outside(file):
            if file.tty == "current" and file.peer_file is not None:
                out.append(f"{what}, a pty of the process itself, which ckpt cannot restore yet")
            elif not file.ctty:
                out.append(f"{what}, a terminal outside the process that is not its controlling terminal "
                           "(restore --shell-job gives only that one)")
            # (its controlling terminal outside: session_reasons(), which --shell-job lifts)
            return out
        if file.holders:
            named = ", ".join(f"pid {pid} ({comm})" for pid, comm in file.holders)
            out.append(f"{what}, whose pty is also open in {named} (or is its controlling terminal): ckpt "
                       "restores a pty only when the process holds all of it")
        if file.inq:
            side = "the slave wrote and the master" if file.tty == "master" else "the master wrote and the slave"
            out.append(f"{what}, with {file.inq} bytes {side} has not read: ckpt cannot copy a terminal's "
                       "queue without consuming it")
        if file.session == "other":
            out.append(f"{what}, whose pty is the controlling terminal of a session another process leads")
        return out

    def notes(self, file: TtyFile, subject: Subject) -> list[str]:
        if file.tty == "master" and not file.shell_job:
            return [f"{subject}: the pty {file.name} is made anew and gets the next free index (the "
                    "restore names it when it changed)"]
        return []

    def depends(self, file: TtyFile) -> tuple[int, ...]:
        if file.tty == "slave" and file.peer_file is not None and not file.shell_job:
            return (file.peer_file,)
        return ()

    # -- restore ---------------------------------------------------------------------------

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
        f = planned.file
        if f.shell_job:
            fd = ctx.unpark(("tty-shell", planned.id))
            if fd is None:
                raise AssertionError(f"{planned.what}: the caller's terminal was not handed down")
            fcntl.fcntl(fd, fcntl.F_SETFL, f.flags & SETFL_MASK)
            return fd
        if f.tty == "master":
            return _make_pair(planned, ctx)
        master = ctx.opened[f.peer_file]
        # Without O_CLOEXEC: TIOCGPTPEER opens the peer with dentry_open(), which keeps the
        # flag in f_flags (drivers/tty/tty_io.c ptm_open_peer; open(2) drops it in
        # fs/open.c build_open_flags), where F_GETFL and fdinfo show it for good, whatever
        # FD_CLOEXEC the registry gives each fd (place()).  Nothing runs exec meanwhile.
        fd = ttyio.open_peer(master, f.flags & _OPEN_MASK | os.O_NOCTTY)
        try:
            _give_owner(planned, ctx, fd)
        except BaseException:
            os.close(fd)
            raise
        if f.exclusive:   # after every other open of the slave (tty_io.c tty_reopen: EBUSY)
            ctx.later(lambda: ttyio.set_exclusive(ctx.opened[planned.id], True))
        return fd


TTY = Tty()


def outside(file: TtyFile) -> bool:
    """The terminal of ``file`` is not a pty pair the process holds: its other end is
    elsewhere (a slave or /dev/tty without the process's master), or it is no pty."""
    return file.tty != "master" and (file.peer_file is None or file.tty == "current")


def _revents(fd: int) -> int:
    poller = select.poll()
    poller.register(fd, 0)
    return next((events for _, events in poller.poll(0)), 0)


def _ownership(master: int, pid: int) -> tuple[str, str]:
    """Whose the pty of ``master`` is: its session ("none", "process": led by ``pid``,
    "other") and its foreground group ("none", "process": led by ``pid``, "other")."""
    try:
        sid = ttyio.session(master)
    except OSError as err:
        if err.errno != errno.ENOTTY:
            raise
        return "none", "none"
    pgrp = ttyio.foreground(master)
    return ("process" if sid == pid else "other",
            "none" if pgrp <= 0 else "process" if pgrp == pid else "other")


def _controlling(capture: Capture) -> int:
    """The target's controlling terminal (/proc/PID/stat tty_nr; 0: none), once per capture."""
    if "tty-ctty" not in capture.memo:
        capture.memo["tty-ctty"] = procfs.read_stat(capture.pid).tty_nr
    return capture.memo["tty-ctty"]


def _masters(capture: Capture) -> dict[int, Probe]:
    """The target's pty masters at any fd, by index (once per capture)."""
    memo = capture.memo
    if "tty-masters" not in memo:
        found: dict[int, Probe] = {}
        for p in capture.probes:
            if p.file.kind == "chardev" and p.file.rdev == PTMX and not p.file.deleted:
                with contextlib.suppress(OSError):
                    found.setdefault(ttyio.pty_index(p.getfd()), p)
        memo["tty-masters"] = found
    return memo["tty-masters"]


def _outside(capture: Capture) -> dict[int, list[list[Any]]]:
    """By index of a pty whose master the target holds: [pid, comm] of every other process
    with an fd on either end, or with its slave as controlling terminal (once per capture:
    one read of /proc/PID/stat and one readlink per fd of every other process; a ptmx fd's
    index from its fdinfo ``tty-index``, drivers/tty/pty.c ``pty_show_fdinfo``).  The
    copies this capture took are not counted."""
    memo = capture.memo
    if "tty-outside" in memo:
        return memo["tty-outside"]
    indices = set(_masters(capture))
    found: dict[int, set[int]] = {}
    me = os.getpid()
    for entry in os.listdir("/proc") if indices else ():
        if not entry.isdigit() or int(entry) == capture.pid:
            continue
        pid = int(entry)
        try:
            tty_nr = procfs.read_stat(pid).tty_nr
            if os.major(tty_nr) in PTS_MAJORS and pts_index(tty_nr) in indices:
                found.setdefault(pts_index(tty_nr), set()).add(pid)
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue   # exited, or not ours to read (a pipe's scan counts those)
        for name in names:
            if pid == me and int(name) in capture.copies:
                continue
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
                if link.startswith("/dev/pts/") and link[9:].isdigit():
                    index = int(link[9:])
                elif link in ("/dev/ptmx", "/dev/pts/ptmx"):
                    with open(f"/proc/{pid}/fdinfo/{name}") as info:
                        index = next((int(line.split()[1]) for line in info if line.startswith("tty-index:")), -1)
                else:
                    continue
            except (OSError, ValueError):
                continue
            if index in indices:
                found.setdefault(index, set()).add(pid)
    out: dict[int, list[list[Any]]] = {}
    for index, pids in found.items():
        out[index] = []
        for pid in sorted(pids):
            try:
                out[index].append([pid, procfs.read_comm(pid)])
            except OSError:
                out[index].append([pid, "?"])
    memo["tty-outside"] = out
    return out


# -- restore -----------------------------------------------------------------------------


def _give_owner(planned: PlannedFile, ctx: RestoreContext, fd: int) -> None:  # pragma: no cover - in the child
    """Give the new /dev/pts/N of ``fd`` the recorded owner and permissions.  The new pty
    has the restorer's fsuid and fsgid, or devpts' ``uid=``/``gid=`` mount options
    (fs/devpts/inode.c devpts_pty_new), so only a difference is asked for, and only as the
    images' owner could have: any owner for root-trusted images; else its own uid and one
    of its groups (the kernel checks it again, the child acting as that user: fs/attr.c
    chown_ok, chgrp_ok)."""
    f = planned.file
    owner = f.owner
    if owner is None:
        return   # an older image: the new pty's owner, as before
    st = os.fstat(fd)
    mode = stat.S_IMODE(f.mode)
    if (st.st_uid, st.st_gid) != owner and not ctx.trusted:
        principal = ctx.principal
        if principal is None or owner[0] != principal.uid or owner[1] not in principal.groups:
            whose = principal.describe() if principal is not None else "another user"
            raise UntrustedImage(f"{planned.what} is owned by uid {owner[0]} gid {owner[1]}, but its images "
                                 f"belong to {whose}: a restore never grants more than the images' owner has")
    try:
        if (st.st_uid, st.st_gid) != owner:
            os.fchown(fd, owner[0], owner[1])
        if mode and mode != stat.S_IMODE(st.st_mode):
            os.fchmod(fd, mode)
    except OSError as err:
        raise UntrustedImage(f"{planned.what}: cannot give {terminal_name(st.st_rdev)} its owner uid {owner[0]} "
                             f"gid {owner[1]} and mode {mode:o}: {err.strerror}") from None


def _make_pair(planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
    """A new pty master with the recorded settings (see the module docstring)."""
    f = planned.file
    fd = os.open("/dev/ptmx", f.flags & REOPEN_MASK & _OPEN_MASK | os.O_NOCTTY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_rdev != PTMX:
        os.close(fd)
        raise ImageError(f"{planned.what}: /dev/ptmx is not the ptmx device ({os.major(st.st_rdev)}:"
                         f"{os.minor(st.st_rdev)})")
    ttyio.set_locked(fd, False)
    if f.termios is not None:
        ttyio.set_termios2(fd, f.termios)
    if f.winsize is not None:
        ttyio.set_winsize(fd, f.winsize)
    if f.packet:
        ttyio.set_packet_mode(fd, True)
    if f.hup:   # its slave had been closed: TTY_OTHER_CLOSED again (pty.c pty_close)
        os.close(ttyio.open_peer(fd, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))

    def finish() -> None:   # once its slaves are open (a locked pty's slave cannot be)
        placed = ctx.opened[planned.id]
        if f.locked:
            ttyio.set_locked(placed, True)
        if f.exclusive:
            ttyio.set_exclusive(placed, True)
    ctx.later(finish)
    return fd


def settle(state: State, fd_plan: FdPlan, shell_job: bool = False,
           own_session: bool = False) -> list[str]:  # pragma: no cover - in the child
    """In the restore child, once its open files are in place: give it the controlling
    terminal it had (``setsid``, ``TIOCSCTTY`` on its pty), keep the caller's under
    ``--shell-job`` with the recorded settings, or drop the one inherited from ckpt when it
    had none.  ``own_session`` (``restore --detach``): a process without a terminal of its
    own leads a new session rather than stay in ckpt restore's, which it outlives (a later
    Ctrl-C or hangup of the caller's job must not reach it).  Returns notes (a pty whose
    index changed)."""
    ctx = fd_plan.context
    notes = []
    for item in fd_plan.files:
        if item.kind is not TTY or item.file.tty != "master" or item.file.shell_job:
            continue
        new = ttyio.pty_index(ctx.opened[item.id])
        if new != item.file.index:
            notes.append(f"{item.subject}: the pty /dev/pts/{item.file.index} is /dev/pts/{new} now")
    tty_nr = state.process.tty_nr if state.process is not None else None
    if not tty_nr and own_session and not shell_job:
        os.setsid()   # a forked child leads no group: setsid cannot fail (kernel/sys.c ksys_setsid)
        return notes
    if tty_nr is None:
        return notes   # an older image: the session is ckpt's, as it always was
    if not tty_nr:
        leads = _leads(state)
        if leads == "session":
            # A forked child leads no group, so setsid cannot fail (kernel/sys.c ksys_setsid);
            # the new session has no controlling terminal.
            os.setsid()
            return notes
        with contextlib.suppress(OSError):   # ENXIO: ckpt has no controlling terminal either
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                ttyio.drop_controlling(fd)
            finally:
                os.close(fd)
        if leads == "group":
            # A group of its own inside ckpt restore's session (as CRIU's restore_pgid for a
            # root task that does not lead its session): not setsid, which would make it lead
            # a session it did not lead.  Always allowed to the caller itself (kernel/sys.c
            # setpgid: pid == pgid == the caller, not a session leader).
            os.setpgid(0, 0)
        return notes
    if shell_job and _controlling_master(state) is None:
        record = controlling_record(state)
        if record is not None and record.termios is not None:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            # A background job setting termios gets SIGTTOU unless it blocks it (tty_jobctrl.c
            # __tty_check_change): ckpt's own job may be in the background.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTTOU])
            try:
                ttyio.set_termios2(fd, record.termios)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
                os.close(fd)
        return notes
    master = _controlling_master(state)
    assert master is not None, "restorability refuses a controlling terminal outside the process"
    os.setsid()   # a forked child leads no group: setsid cannot fail (kernel/sys.c ksys_setsid)
    peer = ttyio.open_peer(ctx.opened[master.id], os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        ttyio.take_controlling(peer)   # its foreground group is now the process's (tty_jobctrl.c __proc_set_tty)
    finally:
        os.close(peer)
    return notes


# -- what the process's controlling terminal asks of a restore ---------------------------


def controlling_record(state: State) -> TtyFile | None:
    """A record of the process's controlling terminal (recorded ``tty_nr``), at any fd."""
    tty_nr = _tty_nr(state)
    if not tty_nr:
        return None
    return next((f for f in state.files or () if f.kind == "tty" and f.tty != "master"
                 and f.real == tty_nr), None)


def _leads(state: State) -> str:
    """What the process led: "session" (its session, and so its group: a session leader
    cannot change its group, kernel/sys.c setpgid), "group" (its process group only),
    "none" (a member of another process's group), "unknown" (an older image)."""
    process = state.process
    if process is None or process.session is None or process.pgid is None:
        return "unknown"
    pid = state.target.pid if state.target is not None else process.pid
    return "session" if process.session == pid else "group" if process.pgid == pid else "none"


def session_notes(state: State) -> list[str]:
    """How a restore gives back the process's session and process group, where it differs.

    One process is restored, so a session or group another process led cannot be joined
    again (setpgid joins only a group of the caller's session, setsid makes a new one,
    kernel/sys.c): a session leader leads a new session (:func:`settle`), a group leader a
    new group of its own in ckpt restore's session, a member stays in ckpt restore's
    session and group.  A controlling terminal outside the process is --shell-job's, whose
    notes say where it goes (:func:`shell_job`)."""
    process = state.process
    leads = _leads(state)
    if process is None or leads in ("session", "unknown") or (_tty_nr(state) and _controlling_master(state) is None):
        return []
    if leads == "group":
        return [f"it led its process group {process.pgid} in session {process.session}, which another process "
                "leads: restored, it leads a group of its own in ckpt restore's session"]
    return [f"it was a member of process group {process.pgid} (session {process.session}), which another process "
            "leads: restored, it is in ckpt restore's process group and session"]


def _tty_nr(state: State) -> int | None:
    """The recorded controlling terminal (0: none; None: an older image that did not say)."""
    return state.process.tty_nr if state.process is not None else None


def _controlling_master(state: State) -> TtyFile | None:
    """The master, held by the process, of the pty that is its controlling terminal."""
    tty_nr = _tty_nr(state)
    if not tty_nr or os.major(tty_nr) not in PTS_MAJORS:
        return None
    return next((f for f in state.files or () if f.kind == "tty" and f.tty == "master"
                 and f.index == pts_index(tty_nr)), None)


def session_reasons(state: State, shell_job: bool = False) -> tuple[list[str], list[str]]:
    """What the process's controlling terminal stands in the way of a restore: (reasons,
    reasons ``restore --shell-job`` lifts; none when ``shell_job``, the option given).
    An outside terminal at fds >= 3 is the kind's own reason (:meth:`Tty.reasons`);
    this is the session's."""
    tty_nr = _tty_nr(state)
    if not tty_nr or state.process is None:
        return [], []
    process = state.process
    pid = state.target.pid if state.target is not None else process.pid
    name = terminal_name(tty_nr)
    master = _controlling_master(state)
    if master is None:
        if shell_job:
            return [], []
        held = [e.fd for e in state.fds or () if e.fd > 2 and any(
            f.id == e.file and f.kind == "tty" and f.ctty for f in state.files or ())]
        at = f" (open at {Subject(tuple(held))})" if held else ""
        return [], [f"its controlling terminal {name}{at} is outside the process (the terminal it was started "
                    "from?): restorable with restore --shell-job, which makes it a job of the caller's terminal"]
    what = f"its controlling terminal is the pty {name}, of its own master"
    if process.session != pid:
        return [f"{what}, but the process did not lead its session (session {process.session}): ckpt "
                "gives a controlling terminal only to a process it makes a session leader"], []
    if master.foreground != "process":
        return [f"{what}, whose foreground process group was not the process's own"], []
    return [], []


def shell_job(state: State) -> tuple[State, list[str]]:
    """The task ``state`` with what ``restore --shell-job`` allows marked (the open files
    of the process's controlling terminal outside the process, at fds >= 3), and notes
    saying so; :func:`session_reasons` and :func:`settle` are told of the option apart.

    ``UsageError`` when ckpt restore has no controlling terminal to give."""
    tty_nr = _tty_nr(state)
    if not tty_nr or _controlling_master(state) is not None:
        return state, []   # nothing outside to give: the option changes nothing
    mine = _own_terminal()
    if mine is None:
        raise UsageError("--shell-job: ckpt restore has no controlling terminal to give the process "
                         "(run it from a terminal)")
    notes = [f"the process's controlling terminal ({terminal_name(tty_nr)}) is ckpt restore's, "
             f"{terminal_name(mine)}: it is a job of the caller's session, in ckpt restore's process group, "
             "as --shell-job asks"]
    record = controlling_record(state)
    if record is not None and record.termios is not None:
        notes.append(f"{terminal_name(mine)} gets the process's terminal settings (termios); the window size is "
                     "the terminal's own")
    files = []
    from .model import from_state   # the registry imports this module

    by_file = from_state(state).by_file()
    for file in state.files or ():
        if file.kind == "tty" and outside(file) and file.ctty:
            numbers = tuple(e.fd for e in by_file.get(file.id, []) if e.fd > 2)
            if numbers:
                subject = Subject(numbers)
                notes.append(f"{subject} ({TTY.describe(file)}) {subject.verb('is', 'are')} a new open of "
                             f"{terminal_name(mine)}, as --shell-job asks")
            file = dataclasses.replace(file, shell_job=True)
        files.append(file)
    return dataclasses.replace(state, files=tuple(files)), notes


def _own_terminal() -> int | None:
    """The device number of ckpt's own controlling terminal, or None."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return ttyio.real_device(fd)
    finally:
        os.close(fd)


def _open_own(file: TtyFile) -> int:
    """A new open file description of ckpt's controlling terminal, as ``file`` was opened:
    /dev/tty for an fd of /dev/tty, else the terminal's own path, checked to be it."""
    flags = file.flags & REOPEN_MASK & _OPEN_MASK | os.O_NOCTTY | os.O_CLOEXEC
    if file.tty == "current":
        return os.open("/dev/tty", flags)
    mine = _own_terminal()
    assert mine is not None, "shell_job() checked it"
    path = terminal_name(mine)
    fd = os.open(path, flags | os.O_NOFOLLOW)
    if os.fstat(fd).st_rdev != mine or not os.isatty(fd):
        os.close(fd)
        raise UsageError(f"--shell-job: {path} is not ckpt restore's controlling terminal")
    return fd


@contextmanager
def handed_down(fd_plan: FdPlan) -> Iterator[set[int]]:
    """For the fork of the restore child: a new open of ckpt's terminal for each fd >= 3
    ``--shell-job`` gives it, opened by ckpt as the caller (so the process gets no terminal
    its restorer could not open) and parked above every fd number the child places; yields
    them (the child keeps them) and closes them in the caller on exit."""
    def opener(item: PlannedFile) -> Callable[[], int]:
        def open_own() -> int:
            try:
                return _open_own(item.file)
            except OSError as err:
                raise UsageError(f"--shell-job: ckpt cannot open its own terminal for {item.what}: "
                                 f"{err.strerror}") from None
        return open_own

    openers = [(item.id, opener(item)) for item in fd_plan.files
               if item.kind is TTY and item.file.shell_job]
    with fd_plan.context.handing_down("tty-shell", openers) as fds:
        yield fds

"""Who gets an open file's signals: the owner (``F_SETOWN_EX``), the signal (``F_SETSIG``) and
``O_ASYNC`` (signal-driven I/O), for every kind of open file at once.

Every open file description has an ``f_owner`` (fs/fcntl.c): the thread, process or
process group its signals go to, the signal (``F_SETSIG``; 0 means ``SIGIO``), and the real
and effective uids of the task that set the owner.  A description with ``O_ASYNC`` signals
its owner when it becomes ready (``kill_fasync``: sockets, pipes and FIFOs, terminals,
inotify, some devices -- whatever has a ``->fasync``), and a socket signals ``SIGURG`` to it
for out-of-band data whether ``O_ASYNC`` is set or not.  nginx's master does ``FIOASYNC`` and
``F_SETOWN(master)`` on its end of each worker's channel (``ngx_spawn_process``).

**Dump.**  :func:`read` asks the description itself, through the dump's copy of an fd
(``pidfd_getfd``): ``F_GETOWN_EX``, ``F_GETSIG``, ``F_GETOWNER_UIDS``.  The record
(:class:`ckpt.image.schema.Fown`, the common field ``fown`` of every file record) is written
when an owner or a signal is set, or ``O_ASYNC`` is.  An owner that exited reads as 0
(``f_getown_ex`` reports only a live one): it gets no signal, before or after.

**Rules** (:func:`reasons`).  The owner must be a thread, process or process group the
restore brings back: its recorded id is mapped to the one it has then (the root of a tree,
or a single process, gets a new pid by default).  A process group is one a task of the
tree leads or one a restore recreates with its id (its leader dead); the group a root
shares with its parent stays the caller's, which a restore does not own.  ``O_ASYNC`` in a
checkpoint without the record (an older ckpt) is refused.  From images that are not
root-trusted, the recorded uids must be the images' owner's (:func:`check_identity`): those
uids decide whom the signals may reach (fs/fcntl.c ``sigio_perm``: the owner's real or saved
uid must be one of them, or the effective one root).

**Restore** (:func:`settings`, :func:`apply`), once every task and thread exists and is
rebuilt, before any runs.  ``f_modown`` stores the *caller's* uid and euid with the owner,
so the call is made by a process with the recorded ones, which is not the restored task:
its credentials are its own (a worker holds its master's channel, whose owner root set).
ckpt forks a helper that takes each description through ``pidfd_getfd``, sets its uids
(``setresuid``), and makes the calls: ``F_SETSIG``; ``F_SETOWN_EX`` with the id mapped;
then ``FIOASYNC`` -- on an fd placed at the task's own fd number, because ``fasync`` records
the fd number it was called with and an ``F_SETSIG`` signal carries it as ``si_fd``
(fs/fcntl.c ``fasync_insert_entry``, ``send_sigio_to_task``).  The owner comes first: a
terminal's ``->fasync`` makes the caller or the terminal's foreground group the owner when
none is set (drivers/tty/tty_io.c ``__tty_fasync``); a recorded "no owner" is set again after.
fds 0-2, which a restore replaces with its own streams, are left alone (a note says so).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import termios
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._sys import pidfd as pidfd_sys
from ..errors import KernelUnsupported, TargetError, UntrustedImage
from ..image.schema import File, Fown, State, Task
from .base import STD_STREAMS, Probe, Subject
from .model import from_state

if TYPE_CHECKING:
    from ..trust import Principal

# include/uapi/asm-generic/fcntl.h
F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX, F_GETOWNER_UIDS = 15, 16, 17
OWNER_TYPES = ("tid", "pid", "pgrp")   # F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP: their numbers are the index
O_ASYNC = 0o20000                      # FASYNC
_O_PATH = 0o10000000                   # an O_PATH fd takes no F_GETOWN_EX (fs/fcntl.c check_fcntl_cmd)
_OWNER_WHAT = {"tid": "thread", "pid": "process", "pgrp": "process group"}


# -- dump -------------------------------------------------------------------------------------


def of(probe: Probe) -> dict[str, object] | None:
    """:func:`read` of a dumped fd; None for a regular file without asking: it has no
    ``->fasync`` (no O_ASYNC) and signals its owner only to break a lease, which a restore
    refuses anyway -- so the common many-fd case costs no ``pidfd_getfd``."""
    if stat.S_ISREG(probe.file.mode):
        return None
    return read(probe.getfd(), probe.file.flags)


def read(fd: int, flags: int) -> dict[str, object] | None:
    """The ``fown`` record's fields of the open file ``fd`` (this process's copy of the
    target's fd), whose ``f_flags`` are ``flags``; None when no owner, no signal and no
    O_ASYNC is set."""
    if flags & _O_PATH:
        return None
    kind, owner = struct.unpack("ii", fcntl.fcntl(fd, F_GETOWN_EX, bytes(8)))
    signum = fcntl.fcntl(fd, F_GETSIG)
    if not owner and not signum and not flags & O_ASYNC:
        return None
    try:
        uid, euid = struct.unpack("II", fcntl.fcntl(fd, F_GETOWNER_UIDS, bytes(8)))
    except OSError as err:
        if err.errno == errno.EINVAL:
            raise KernelUnsupported("F_GETOWNER_UIDS", "CONFIG_CHECKPOINT_RESTORE: whose credentials an open "
                                    "file's signal owner carries cannot be read") from None
        raise
    return {"type": OWNER_TYPES[kind] if 0 <= kind < len(OWNER_TYPES) else "pid", "id": owner,
            "uid": uid, "euid": euid, "signal": signum}


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owners:
    """The recorded ids a restore brings back, that a file's owner may name."""

    tids: frozenset[int]     # every thread of every live task
    pids: frozenset[int]     # every task, zombies included (a zombie owner gets no signal either way)
    pgrps: frozenset[int]    # the process groups the restore makes (led by a task, or by a helper)

    def has(self, fown: Fown) -> bool:
        """The owner is one of these (or none)."""
        if not fown.id:
            return True
        return fown.id in {"tid": self.tids, "pid": self.pids, "pgrp": self.pgrps}[fown.type]


def owners(states: Sequence[State], tree: Sequence[Task] = ()) -> Owners:
    """What a restore of ``states`` (the root's first; a single process's alone) brings back;
    ``tree``: the tree's :class:`ckpt.image.schema.Task` records (empty for a single process).

    A single process leads its restored group when it led it (ckpt/files/tty.py ``settle``);
    in a tree, the builder (ckpt/pstree.py) makes every group its tasks are in, with its id,
    but the root's when the root does not lead it: the root stays in the caller's."""
    tids = frozenset(t.tid for s in states for t in s.threads or ())
    if tree:
        root = tree[0]
        pids = frozenset(t.pid for t in tree)
        pgrps = {t.pgid for t in tree}
        if root.pgid != root.pid:
            pgrps.discard(root.pgid)
        return Owners(tids, pids, frozenset(pgrps))
    state = states[0]
    pid = _pid(state)
    proc = state.process
    led = proc is not None and proc.pgid is not None and proc.pgid == pid
    return Owners(tids, frozenset({pid}) if pid else frozenset(), frozenset({pid}) if led and pid else frozenset())


def reasons(states: Sequence[State], tree: Sequence[Task] = ()) -> list[str]:
    """Why the signal owners of the open files of ``states`` (the root's first) cannot be
    restored: an owner the restore does not bring back, O_ASYNC whose owner was not recorded.
    Each reason names its task (but the root's) and fds."""
    known = owners(states, tree)
    single = not tree
    out = []
    for i, state in enumerate(states):
        who = "" if i == 0 else f"pid {_pid(state)}: "
        for file, numbers in _restored(state):
            subject = Subject(numbers)
            what = f"{who}{subject} ({_describe(file)})"
            fown = file.fown
            if fown is None:
                if file.flags & O_ASYNC:
                    out.append(f"{what} with O_ASYNC (signal-driven I/O), whose owner this checkpoint did not "
                               "record (written by an older ckpt)")
                continue
            if not known.has(fown):
                where = "the dumped process" if single else "the dumped tree"
                out.append(f"{what} sends its signals (O_ASYNC, SIGURG) to {_OWNER_WHAT[fown.type]} {fown.id}, "
                           f"which is not in {where}: ckpt cannot restore a signal owner it does not restore")
    return out


def notes(state: State) -> list[str]:
    """fds 0-2 whose open file had a signal owner or O_ASYNC: the restore replaces them."""
    out = []
    table = from_state(state)
    for file_id, entries in table.by_file().items():
        file = table.files[file_id]
        numbers = tuple(e.fd for e in entries)
        if file.fown is not None and numbers and all(n in STD_STREAMS for n in numbers):
            out.append(f"{Subject(numbers)} had a signal owner or O_ASYNC, which a restore does not give to the "
                       "stream it replaces it with")
    return out


def check_identity(state: State, principal: Principal, cp_id: int) -> None:
    """Refuse, for images that are not root-trusted, an owner set with uids other than the
    images' owner's (``UntrustedImage``): they decide whom the signals may reach."""
    if principal.trusted:
        return
    uid = principal.uid
    for file, numbers in _restored(state):
        fown = file.fown
        if fown is not None and fown.id and (fown.uid, fown.euid) != (uid, uid):
            raise UntrustedImage(f"checkpoint {cp_id} records {Subject(numbers)} ({_describe(file)}) with a signal "
                                 f"owner set by uid {fown.uid} (effective {fown.euid}), but its images belong to "
                                 f"{principal.describe()}: a restore never grants more than the images' owner has")


def _restored(state: State) -> Iterable[tuple[File, tuple[int, ...]]]:
    """Each open file a restore opens (at fds >= 3), with those fds."""
    table = from_state(state)
    for file_id, entries in table.by_file().items():
        numbers = tuple(e.fd for e in entries if e.fd not in STD_STREAMS)
        if numbers:
            yield table.files[file_id], numbers


def _describe(file: File) -> str:
    from .rules import describe   # rules imports the registry, which imports the kinds
    return describe(file)


def _pid(state: State) -> int:
    if state.target is not None:
        return state.target.pid
    return state.process.pid if state.process is not None else 0


# -- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """The signal owner, signal and O_ASYNC to give one open file of a restored task."""

    pid: int            # the task holding it, now
    fd: int             # its fd number there (its lowest >= 3)
    what: str           # names it in errors
    fown: Fown          # as recorded
    owner: int          # the owner's id now (0: none)
    asynchronous: bool  # O_ASYNC


@dataclass(frozen=True)
class Restored:
    """One live task as a restore made it: the ids its files' owners are mapped with."""

    recorded: int                 # its recorded pid
    pid: int                      # its pid now
    state: State                  # its state as restored (inherited and handed-down files included)
    tids: Mapping[int, int]       # recorded tid -> tid now, of its threads


def settings(tasks: Sequence[Restored], pids: Mapping[int, int], tree: Sequence[Task] = ()) -> list[Setting]:
    """What :func:`apply` sets on the open files of ``tasks`` (the root's first): each
    recorded owner mapped through ``pids`` (recorded pid -> pid now, zombies included),
    the tasks' thread ids, and the process groups as they are now; the owner's own fds
    first, so that the fd number ``fasync`` records is the owner's when several tasks hold
    one open file.  ``TargetError`` for an owner the restore did not bring back (the rules
    refused it before)."""
    tids = {old: new for task in tasks for old, new in task.tids.items()}
    groups = _groups(tasks, pids, tree)
    out = []
    for task in tasks:
        who = f"pid {task.recorded}: " if task is not tasks[0] else ""
        for file, numbers in _restored(task.state):
            fown = file.fown
            if fown is None:
                continue
            what = f"{who}{Subject(numbers)} ({_describe(file)})"
            owner = 0
            if fown.id:
                table = {"tid": tids, "pid": pids, "pgrp": groups}[fown.type]
                if fown.id not in table:
                    raise TargetError(f"{what}: its signal owner, {_OWNER_WHAT[fown.type]} {fown.id}, was not restored")
                owner = table[fown.id]
            out.append(Setting(task.pid, numbers[0], what, fown, owner, bool(file.flags & O_ASYNC)))
    out.sort(key=lambda s: s.pid != s.owner)   # stable: otherwise in task and fd order
    return out


def _groups(tasks: Sequence[Restored], pids: Mapping[int, int], tree: Sequence[Task]) -> dict[int, int]:
    """recorded process group id -> its id now, for the groups a restore makes (:func:`owners`):
    a task's group now, where the task leads it or the group has its recorded id again."""
    members = [(t.pgid, t.pid) for t in tree] if tree else [
        (task.state.process.pgid, task.recorded) for task in tasks[:1]
        if task.state.process is not None and task.state.process.pgid is not None]
    out = {}
    for pgid, member in members:
        now = pids.get(member)
        if now is None or pgid in out:
            continue
        with contextlib.suppress(OSError):
            group = os.getpgid(now)
            leader = pids.get(pgid)
            if group == pgid or (leader is not None and group == leader):
                out[pgid] = group
    return out


def apply(items: Sequence[Setting]) -> None:
    """Give each open file its owner, signal and O_ASYNC, from a helper process with the
    recorded uids (module docstring); ``TargetError`` naming the open file that failed."""
    if not items:
        return
    pidfds: dict[int, int] = {}
    copies: list[int] = []
    report_r = report_w = -1
    try:
        for item in items:
            if item.pid not in pidfds:
                pidfds[item.pid] = pidfd_sys.pidfd_open(item.pid)
            copies.append(pidfd_sys.pidfd_getfd(pidfds[item.pid], item.fd))
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        child = os.fork()
        if child == 0:  # pragma: no cover - the helper
            # Every fd it keeps goes above every fd number a setting places.
            top = max(item.fd for item in items) + 1
            report = fcntl.fcntl(report_w, fcntl.F_DUPFD_CLOEXEC, top)
            try:
                _apply_in_helper(items, [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in copies])
            except BaseException as err:  # noqa: BLE001 - reported to the parent, then exit
                with contextlib.suppress(OSError):
                    os.write(report, " ".join(str(err).split()).encode(errors="replace")[:3500])
                os._exit(1)
            os._exit(0)
        os.close(report_w)
        report_w = -1
        _, status = os.waitpid(child, 0)
        message = b""
        while chunk := os.read(report_r, 4096):
            message += chunk
        if status != 0:
            raise TargetError(f"cannot restore a signal owner: {message.decode(errors='replace') or status}")
    except OSError as err:
        raise TargetError(f"cannot restore the signal owners of the open files: {err}") from None
    finally:
        for fd in [*copies, *pidfds.values(), *(x for x in (report_r, report_w) if x >= 0)]:
            os.close(fd)


def _apply_in_helper(items: Sequence[Setting], copies: Sequence[int]) -> None:  # pragma: no cover
    """In the helper: each setting, on its copy (above every number placed) put at the task's
    fd number; an error names the open file."""
    for item, fd in zip(items, copies):
        try:
            if item.owner:
                _take_uids(item.fown.uid, item.fown.euid)
            os.dup2(fd, item.fd, inheritable=False)
            _set(item.fd, item)
            os.close(item.fd)
        except OSError as err:
            raise TargetError(f"{item.what}: {err.strerror or err}") from None


def _set(fd: int, item: Setting) -> None:  # pragma: no cover - in the helper
    fown = item.fown
    if fown.signal:
        fcntl.fcntl(fd, F_SETSIG, fown.signal)
    owner = struct.pack("ii", OWNER_TYPES.index(fown.type), item.owner)
    if item.owner:
        fcntl.fcntl(fd, F_SETOWN_EX, owner)
    if item.asynchronous and not fcntl.fcntl(fd, fcntl.F_GETFL) & O_ASYNC:
        fcntl.ioctl(fd, termios.FIOASYNC, struct.pack("i", 1))
        if not item.owner:   # a terminal made someone its owner (tty_io.c __tty_fasync): none was
            fcntl.fcntl(fd, F_SETOWN_EX, owner)


def _take_uids(uid: int, euid: int) -> None:  # pragma: no cover - in the helper
    """Real uid ``uid`` and effective ``euid`` from now on, the saved uid kept (root's, when
    ckpt is root: so the next setting may take other ones)."""
    ruid, cur_euid, suid = os.getresuid()
    if (ruid, cur_euid) == (uid, euid):
        return
    if cur_euid != 0 and suid == 0:
        os.setresuid(-1, 0, -1)   # back to root's effective uid, and its capabilities (commoncap.c)
    try:
        os.setresuid(uid, euid, -1)
    except OSError as err:
        raise OSError(err.errno, f"cannot take uid {uid} and euid {euid}, which set its owner: "
                                 f"{err.strerror}") from None


__all__ = ["of", "read", "reasons", "notes", "owners", "Owners", "check_identity", "Setting", "Restored", "settings",
           "apply", "O_ASYNC"]

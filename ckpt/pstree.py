"""Restoring a process tree (issue 9, stage 1): the plan, and the builder that runs in the tasks.

The tree of a checkpoint (``State.tree``: one :class:`ckpt.image.schema.Task` per task,
parents before children) is rebuilt in CRIU's order (criu/cr-restore.c
``restore_task_with_children``, /work/issue9-research/trees.md section 2), by the tasks
themselves, one after the other:

1. *Checks*, before anything is created (:func:`check_shape`, :func:`check_pids`): every
   non-root task's recorded pid is free (each gets it back with ``clone3`` ``set_tid``:
   parents wait for and signal the pids they stored); every session and process group is
   one a task can make or join when it is created (:func:`plan`, CRIU's criu/pstree.c
   ``prepare_pstree_ids``): a task created before its parent's setsid() is created
   first; a session or group whose leader is dead is made by a :class:`Helper` task with
   the leader's pid, which exits and is reaped before the tree is released.  What the
   plan cannot place (a group joined before its leader exists, a dead session's members
   under several parents, ...) is refused by name.
2. *The builder* (:class:`Builder`, in the restore child ckpt forks, and in every task it
   creates): a task sets itself up (the caller's ``setup``: its own files and state, as a
   single process's restore child does), leads its session (``setsid``) and joins its
   process group (``setpgid``), creates its children in order, pre-order depth first (each
   with its recorded pid, each fully built with its own subtree before the next one is
   created, so that a group a later task joins exists), finishes itself (the caller's
   ``finish``: cwd, root, rlimits, umask, which its children must not inherit), reports
   ready and waits in ``pause()`` for ckpt to seize it.  A zombie sets its session and
   group and exits with its recorded status: by ``_exit(code)``, or by killing itself
   with its recorded signal (its core dump bit is lost, as with CRIU's
   ``restore_one_zombie``).  Its parent never reaps it.
3. ckpt collects the reports (:func:`build`), waits until every live task sleeps in
   ``pause()`` and every zombie is one, then seizes each (:func:`seize`) and rebuilds it
   (:mod:`ckpt.rebuild`); the release is the caller's.

If ckpt dies at any instant, no task of the new tree survives: every task asks for
SIGKILL at its parent's death (PR_SET_PDEATHSIG, checked against getppid(): the parent
may have died before), so the tree dies from the root down; once seized, a task also
dies with ckpt (PTRACE_O_EXITKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from . import errors, procfs
from ._sys import ptrace as pt
from ._sys.libc import SYS_clone3, SYS_prctl, syscall
from .errors import CkptError, NotRestorable, TargetError

PR_SET_PDEATHSIG, PR_SET_NAME, PR_SET_DUMPABLE = 1, 15, 4
CLONE_FS, CLONE_FILES, CLONE_PARENT = 0x00000200, 0x00000400, 0x00008000   # include/uapi/linux/sched.h
# What a task can share with its parent (Task.shares), by the clone flag the builder creates it with.
SHARE_FLAGS = {"CLONE_FS": CLONE_FS, "CLONE_FILES": CLONE_FILES}
SYS_pause = 34                      # arch/x86/entry/syscalls/syscall_64.tbl
BUILD_FAILED = 125                  # exit status of a task that could not build itself
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
# Signals whose default action does not end a process (man 7 signal): no zombie died of one.
_NOT_FATAL = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH, *STOP_SIGNALS})
_LINE_MAX = 3500                    # a report line stays below PIPE_BUF: one atomic write
DEFAULT_BUILD_TIMEOUT = 60.0


class TaskRecord(Protocol):
    """What the builder reads of a task (:class:`ckpt.image.schema.Task` has these fields)."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str                  # "alive" | "stopped" | "zombie"
    exit_status: int | None
    stop_signal: int | None
    comm: str
    inherited: tuple[tuple[int, int], ...]
    shares: tuple[str, ...]


def live(task: TaskRecord) -> bool:
    """The task runs (or is stopped) and has a checkpoint of its own; not a zombie."""
    return task.state != "zombie"


def describe(task: TaskRecord) -> str:
    return f"pid {task.pid} ({task.comm})"


# -- the plan ---------------------------------------------------------------------------------


def build_order(tasks: Sequence[TaskRecord]) -> list[TaskRecord]:
    """The order the builder creates the tasks in: pre-order depth first from the root
    (``tasks[0]``), each task's children in their order in ``tasks`` (pid order), those it
    creates before its setsid() first, the members of a dead session's helper in the
    helper's place (:func:`plan`)."""
    return plan(tasks)[0].order


def lowest_common_ancestor(pids: Iterable[int], parents: Mapping[int, int]) -> int:
    """The lowest common ancestor of ``pids`` in a tree (``parents``: pid -> ppid; the root's
    parent is not a key): the task that creates what they share before it creates them."""
    pids = sorted(pids)
    line = [pids[0]]
    while line[-1] in parents and parents[line[-1]] in parents:
        line.append(parents[line[-1]])
    best = 0
    for pid in pids[1:]:
        up = pid
        while up not in line:
            up = parents[up]
        best = max(best, line.index(up))
    return line[best]


def _children(tasks: Sequence[TaskRecord]) -> dict[int, list[TaskRecord]]:
    out: dict[int, list[TaskRecord]] = {t.pid: [] for t in tasks}
    for t in tasks[1:]:
        out[t.ppid].append(t)
    return out


@dataclass
class Helper:
    """A temporary task in a dead leader's place (CRIU's ``TASK_HELPER``, criu/pstree.c
    ``prepare_pstree_ids``): created with the leader's pid, it makes the session (setsid)
    or the process group (setpgid) the leader made, so that the tasks in it can be
    created in it or join it; then it exits and its creator reaps it before the tree is
    released, so its pid is free again, as it was when the tree was dumped.

    A *session* helper is created by the parent of the session's members, and creates
    them itself with CLONE_PARENT (their parent is the creator; their session and group,
    the helper's: kernel/fork.c ``copy_process`` takes both from the caller).  A *group*
    helper is created by the group's first member (in build order), which joins the group
    and reaps it; a zombie helper still holds its group (it stays attached to its pgid
    until it is reaped: kernel/exit.c ``release_task``)."""

    pid: int
    creator: int                         # the recorded pid of the task that creates it
    kind: str                            # "session" | "group"
    members: list[TaskRecord] = field(default_factory=list)   # a session helper creates these

    def describe(self) -> str:
        return f"the helper for the dead leader of {'session' if self.kind == 'session' else 'process group'} {self.pid}"


@dataclass
class Plan:
    """How the builder creates a tree (:func:`plan`)."""

    # recorded pid -> what the task creates, in order: tasks, and session helpers
    children: dict[int, list[TaskRecord | Helper]]
    early: set[int]                      # tasks created before their parent's setsid()
    group_helpers: dict[int, Helper]     # recorded pid of a group's first member -> its helper
    helpers: list[Helper]
    order: list[TaskRecord]              # build order of the tasks (helpers left out)


def plan(tasks: Sequence[TaskRecord]) -> tuple[Plan, list[str]]:
    """The builder's plan for ``tasks`` (root first, parents before children), and why
    it cannot build them ([] when it can): :func:`shape_reasons`.

    Sessions (criu/pstree.c ``prepare_pstree_ids``): a task in a session that is neither
    its parent's nor its own was created before an ancestor called setsid() (each such
    ancestor, up to one in that session, creates it, or the ancestor it descends from,
    before its setsid(): CRIU's ``born_sid``), or its session's leader is dead (a session
    helper in the leader's place creates it).  Process groups: a group whose leader is
    dead is made by a group helper (:class:`Helper`)."""
    reasons: list[str] = []
    by_pid = {t.pid: t for t in tasks}
    root = tasks[0]
    kids = _children(tasks)
    born: dict[int, int] = {}              # leader pid -> the session it must be created in
    early: set[int] = set()
    session_helpers: dict[int, Helper] = {}
    for t in tasks[1:]:
        parent = by_pid[t.ppid]
        if t.sid in (t.pid, parent.sid):
            continue
        path = _before_setsid(t, by_pid, root)
        if path is not None:
            for child in path:
                leader = by_pid[child.ppid]
                if born.setdefault(leader.pid, t.sid) != t.sid:
                    reasons.append(f"{describe(leader)} would have to be created in both session "
                                   f"{born[leader.pid]} and session {t.sid} (its descendants are in both), "
                                   "which ckpt cannot restore")
                early.add(child.pid)
            continue
        if t.sid in by_pid or t.sid == root.sid:
            reasons.append(f"{describe(t)} is in session {t.sid}, and its parent {describe(parent)} in session "
                           f"{parent.sid}; no ancestor between it and the session it was created in called "
                           "setsid() after creating it, which ckpt cannot restore")
            continue
        helper = session_helpers.setdefault(t.sid, Helper(t.sid, parent.pid, "session"))
        if helper.creator != parent.pid:
            reasons.append(f"{describe(t)} is in session {t.sid}, whose leader is dead, as are children of "
                           f"pid {helper.creator}; one helper in the leader's place can be the child of only "
                           "one of their parents, so ckpt cannot restore that")
            continue
        helper.members.append(t)
    children: dict[int, list[TaskRecord | Helper]] = {}
    members = {m.pid for h in session_helpers.values() for m in h.members}
    for pid, own in kids.items():
        first = [c for c in own if c.pid in early]
        entries: list[TaskRecord | Helper] = list(first)
        for c in own:
            if c.pid in early:
                continue
            if c.pid in members:
                helper = session_helpers[c.sid]
                if helper not in entries:
                    entries.append(helper)
                continue
            entries.append(c)
        children[pid] = entries
    order: list[TaskRecord] = []
    stack: list[TaskRecord] = [root]
    while stack:
        task = stack.pop()
        order.append(task)
        below: list[TaskRecord] = []
        for entry in children[task.pid]:
            below += entry.members if isinstance(entry, Helper) else [entry]
        stack.extend(reversed(below))
    group_helpers: dict[int, Helper] = {}
    by_group: dict[int, Helper] = {}
    for t in order[1:]:
        if t.pgid == t.pid or t.pgid in by_pid or t.pgid in session_helpers:
            continue
        if t.pgid == root.pgid and t.sid == root.sid:
            continue   # the root's group, which exists whether the root leads it or not
        if t.pgid not in by_group:
            by_group[t.pgid] = group_helpers[t.pid] = Helper(t.pgid, t.pid, "group")
        else:
            first = by_pid[by_group[t.pgid].creator]
            if first.sid != t.sid:
                reasons.append(f"{describe(t)} is in process group {t.pgid}, whose leader is dead, in session "
                               f"{t.sid}, and {describe(first)} in that group in session {first.sid}, which "
                               "the kernel does not allow")
    helpers = list(session_helpers.values()) + list(group_helpers.values())
    return Plan(children, early, group_helpers, helpers, order), reasons


def _before_setsid(t: TaskRecord, by_pid: dict[int, TaskRecord], root: TaskRecord) -> list[TaskRecord] | None:
    """The tasks (``t`` or its ancestors) each to be created by its parent before the
    parent's setsid(), so that ``t`` is created in its session ``t.sid``: the path up to the
    first ancestor in that session, through session leaders only (a task that leads no
    session was created in the one it is in); None when there is no such path."""
    path: list[TaskRecord] = []
    child, ancestor = t, by_pid.get(t.ppid)
    while ancestor is not None and ancestor.sid != t.sid:
        if ancestor.sid != ancestor.pid or ancestor is root:
            return None   # it was created in its own session, or (the root) in ckpt's
        path.append(child)
        child, ancestor = ancestor, by_pid.get(ancestor.ppid)
    return path if ancestor is not None else None


def check_shape(tasks: Sequence[TaskRecord], what: str = "the checkpoint") -> None:
    """Refuse (``NotRestorable``, every reason by name) a tree the builder cannot build
    (:func:`shape_reasons`)."""
    reasons = shape_reasons(tasks)
    if reasons:
        raise NotRestorable(what, reasons)


def shape_reasons(tasks: Sequence[TaskRecord]) -> list[str]:
    """Why the builder cannot build this tree ([] when it can); ckpt.restorability applies them.

    ``tasks``: the root first, parents before children.  What is refused: a task whose
    session it cannot have been created in (:func:`plan`), a session whose leader is dead
    with members under several parents, a process group whose leader is created after a
    member (the builder creates tasks one by one) or is not its leader, a zombie with
    children, records that cannot be (a zombie without a wait status, a stopped task
    without a stop signal)."""
    if not tasks:
        return []
    reasons: list[str] = []
    root = tasks[0]
    by_pid: dict[int, TaskRecord] = {}
    for t in tasks:
        if t.pid in by_pid:
            reasons.append(f"{describe(t)} is recorded twice")
        by_pid[t.pid] = t
        if t is not root and t.ppid not in by_pid:
            reasons.append(f"{describe(t)} comes before its parent {t.ppid} or has no parent in the tree")
    if reasons:
        return reasons
    the_plan, reasons = plan(tasks)
    order = {t.pid: i for i, t in enumerate(the_plan.order)}
    children = _children(tasks)
    helped = {m.pid for h in the_plan.helpers for m in h.members}
    for t in tasks:
        reasons += _record_reasons(t, children[t.pid])
        reasons += _sharing_reasons(t, t is root, t.pid in helped)
        if t.sid == t.pid and t.pgid != t.pid:
            reasons.append(f"{describe(t)} leads session {t.sid} but is in process group {t.pgid}, which the "
                           "kernel does not allow")
        if t is root:
            inside = [f"{name} {value}" for name, value in (("process group", t.pgid), ("session", t.sid))
                      if value != t.pid and value in by_pid]
            if inside:
                reasons.append(f"the root {describe(t)} is in the {' and '.join(inside)} of one of its "
                               "descendants, which ckpt cannot restore")
            continue
        parent = by_pid[t.ppid]
        if t.pgid in (t.pid, parent.pgid):
            continue
        leader = by_pid.get(t.pgid)
        if leader is None:
            continue   # the root's group, or one a helper makes (plan)
        if leader.pgid != leader.pid or leader.sid != t.sid:
            reasons.append(f"{describe(t)} is in process group {t.pgid}, which its leader {describe(leader)} "
                           "does not lead in its session")
        elif order[leader.pid] > order[t.pid]:
            reasons.append(f"{describe(t)} is in process group {t.pgid}, whose leader {describe(leader)} "
                           "ckpt creates after it (tasks are created parents first, siblings in pid order)")
    return reasons


def _sharing_reasons(t: TaskRecord, root: bool, helped: bool) -> list[str]:
    """Why the builder cannot give ``t`` what it shared with its parent (``Task.shares``)."""
    shares = t.shares
    if not shares:
        return []
    unknown = [flag for flag in shares if flag not in SHARE_FLAGS]
    if unknown:
        return [f"{describe(t)} shares {', '.join(unknown)} with its parent, which ckpt cannot restore"]
    if root:
        return [f"the root {describe(t)} is recorded sharing {', '.join(shares)} with its parent, outside the tree"]
    if not live(t):
        return [f"zombie {describe(t)} is recorded sharing {', '.join(shares)} with its parent"]
    if helped:
        return [f"{describe(t)} shares {', '.join(shares)} with its parent, but is created by the helper of a dead "
                "session leader, which ckpt cannot restore"]
    return []


def _record_reasons(t: TaskRecord, children: list[TaskRecord]) -> list[str]:
    if t.state == "zombie":
        status = t.exit_status
        if status is None or not (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return [f"zombie {describe(t)} has no exit status (recorded: {status})"]
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in _NOT_FATAL:
            return [f"zombie {describe(t)} died of signal {os.WTERMSIG(status)}, which does not end a process"]
        if children:
            return [f"zombie {describe(t)} has children ({', '.join(describe(c) for c in children)})"]
    elif t.state == "stopped":
        if t.stop_signal not in STOP_SIGNALS:
            return [f"stopped {describe(t)} was stopped by signal {t.stop_signal}, which is no stop signal"]
    elif t.state != "alive":
        return [f"{describe(t)} has state {t.state!r}"]
    return []


def check_pids(tasks: Sequence[TaskRecord]) -> None:
    """Every non-root task's recorded pid is free here (``TargetError`` naming each one
    taken, and by what): clone3 gives a task the pid it asks for or fails (EEXIST), and
    nothing may be created before that is known."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
    except (OSError, ValueError):
        pid_max = 1 << 22
    taken = []
    wanted = [(t.pid, describe(t), False) for t in tasks[1:]]
    wanted += [(h.pid, f"pid {h.pid} ({h.describe()})", True) for h in plan(tasks)[0].helpers]
    for pid, who, helper in wanted:
        if pid >= pid_max:
            taken.append(f"{who} is above this system's pid_max {pid_max}")
            continue
        try:
            holder, state = procfs.read_comm(pid), procfs.read_stat(pid).state
        except (FileNotFoundError, ProcessLookupError):
            if helper and _pid_in_use(pid):
                taken.append(f"{who} is taken: it is the process group or session of running processes")
            continue
        except OSError:
            holder, state = "?", "?"
        what = "a zombie not reaped yet" if state == "Z" else "a running process"
        taken.append(f"{who} is taken by {what} ({holder})")
    if taken:
        raise TargetError("the tree's tasks get their recorded pids back, and " + "; ".join(taken))


def _pid_in_use(pid: int) -> bool:
    """Whether ``pid`` is the process group or session of a process (a pid stays allocated
    while any process has it as its pgid or sid, so clone3 cannot give it: kernel/pid.c
    ``alloc_pid``).  Only the helpers' pids can be: a task's own pid is free if no process has it."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    stat = procfs.read_stat(int(name))
                    if pid in (stat.pgrp, stat.session):
                        return True
    return False


# -- the builder, in the tasks ----------------------------------------------------------------

# Not releasing the GIL around clone3 (PyDLL), and calling CPython's own fork hooks, make
# clone3 what os.fork() is for the interpreter (Modules/posixmodule.c os_fork_impl).
_pysyscall = ctypes.PyDLL(None, use_errno=True).syscall
_pysyscall.restype = ctypes.c_long
_CLONE_ARGS = struct.Struct("<11Q")  # struct clone_args up to cgroup (CLONE_ARGS_SIZE_VER2)


def clone_with_pid(pid: int | None, flags: int = 0) -> int:
    """fork(), with the child's pid ``pid`` when given (``clone3`` ``set_tid``: needs
    CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN over the pid namespace, kernel/pid.c
    ``alloc_pid``).  In the parent: the child's pid; in the child: 0.  ``OSError`` EEXIST
    when the pid is taken, EPERM without the capability.  ``flags``: 0 or CLONE_PARENT
    (the child's parent is the caller's; its exit signal then is the caller's own, and
    clone3 wants none given: kernel/fork.c ``clone3_args_valid``), with ``SHARE_FLAGS``'
    flags or'd in."""
    tids = (ctypes.c_int32 * 1)(pid or 0)
    exit_signal = 0 if flags & CLONE_PARENT else signal.SIGCHLD
    args = ctypes.create_string_buffer(_CLONE_ARGS.pack(flags, 0, 0, 0, exit_signal, 0, 0, 0,
                                                        ctypes.addressof(tids) if pid else 0, 1 if pid else 0, 0))
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.pythonapi.PyOS_BeforeFork()
    res = _pysyscall(ctypes.c_long(SYS_clone3), ctypes.c_void_p(ctypes.addressof(args)),
                     ctypes.c_long(_CLONE_ARGS.size))
    err = ctypes.get_errno()
    if res == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if res < 0:
        raise OSError(err, os.strerror(err))
    return res


def die_with_parent(parent: int) -> None:
    """SIGKILL at the parent's death, until ckpt traces the task with PTRACE_O_EXITKILL.

    PR_SET_PDEATHSIG fires when the parent exits after it is set; a parent that died
    before is seen by getppid() no longer being ``parent`` (the task was reparented to
    init or a subreaper): exit at once.  Credential changes clear the signal
    (kernel/cred.c ``commit_creds``), so this runs again after them."""
    syscall(SYS_prctl, PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(BUILD_FAILED)


Setup = Callable[[TaskRecord, set[int]], list[str]]
Finish = Callable[[TaskRecord], list[str]]


class _SubtreeFailed(Exception):
    """A child of this task failed to build (it reported why)."""


@dataclass
class Builder:
    """Builds the tree inside the tasks; :meth:`run` runs in the root, forked by ckpt.

    ``setup(task, keep)``: the task's own setup, which must keep the fds in ``keep`` open
    (above ``fd_floor``); ``finish(task)``: what its children must not inherit.  Both
    return notes.  ``report_fd``: the write end of ckpt's report pipe."""

    tasks: Sequence[TaskRecord]
    report_fd: int
    setup: Setup | None = None
    finish: Finish | None = None
    fd_floor: int = 3
    _plan: Plan | None = None
    # How the recorded root's pid, group and session read once it is restored.
    _translate: dict[int, int] = field(default_factory=dict)
    _done_fd: int | None = None   # this task's end of its parent's done pipe
    _shared_table = False          # this task shares its parent's fd table (CLONE_FILES)

    def run(self, parent: int) -> NoReturn:  # pragma: no cover - runs in the restore child
        """Build the root (this process, ckpt's child) and the whole tree under it."""
        self._plan = plan(self.tasks)[0]
        self._task(self.tasks[0], parent, done_fd=None)

    def _report(self, *fields: object) -> None:
        line = "\t".join(" ".join(str(f).split()) for f in fields)[:_LINE_MAX] + "\n"
        os.write(self.report_fd, line.encode(errors="replace"))

    def _task(self, task: TaskRecord, parent: int, done_fd: int | None) -> NoReturn:  # pragma: no cover
        """In the task ``task`` just created: build it and its subtree, then wait forever."""
        try:
            die_with_parent(parent)
            root = task is self.tasks[0]
            # Its fds are its parent's (one table): what it closes, its parent loses.
            self._shared_table = "CLONE_FILES" in task.shares
            if not root and os.getpid() != task.pid:
                raise TargetError(f"{describe(task)} was created with pid {os.getpid()}")
            self.report_fd = _above(self.report_fd, self.fd_floor)
            keep = {self.report_fd}
            if done_fd is not None:
                done_fd = _above(done_fd, self.fd_floor)
                keep.add(done_fd)
            self._done_fd = done_fd
            if not live(task):
                self._zombie(task, keep)
            notes = self.setup(task, keep) if self.setup is not None else []
            die_with_parent(parent)   # a credential change in setup cleared it (kernel/cred.c commit_creds)
            assert self._plan is not None
            entries = self._plan.children[task.pid]
            for entry in entries:   # those created in the session this task was created in
                if not isinstance(entry, Helper) and entry.pid in self._plan.early:
                    self._create(entry)
            self._join(task, root)
            for entry in entries:
                if isinstance(entry, Helper):
                    self._session_helper(entry)
                elif entry.pid not in self._plan.early:
                    self._create(entry)
            notes += self.finish(task) if self.finish is not None else []
            for note in notes:
                self._report("note", task.pid, note)
            self._report("ready", task.pid)
        except _SubtreeFailed:
            os._exit(BUILD_FAILED)
        except BaseException as err:  # noqa: BLE001 - reported to ckpt, then exit
            with contextlib.suppress(OSError):
                self._report("error", task.pid, type(err).__name__ if isinstance(err, CkptError) else "", one_line(err))
            os._exit(BUILD_FAILED)
        if not self._shared_table:   # else the parent's too, which closes it
            os.close(self.report_fd)
        self._done()
        while True:   # ckpt seizes the task here: PTRACE_INTERRUPT stops it inside pause()
            signal.pause()

    def _join(self, task: TaskRecord, root: bool) -> None:  # pragma: no cover - in a task
        """Lead the session and the group the task led, or join its group (setsid, setpgid:
        before the children that inherit them are created).  A root that does not lead
        them stays in ckpt's; the tree's tasks in the root's group or session follow it."""
        if task.sid == task.pid and os.getsid(0) != os.getpid():
            os.setsid()
        pgid = self._translate.get(task.pgid, task.pgid)
        if task.pgid == task.pid:
            pgid = os.getpid()
        if root:
            if task.pgid == task.pid and os.getpgrp() != os.getpid():
                os.setpgid(0, 0)
            self._translate = {task.pid: os.getpid(), task.pgid: os.getpgrp(), task.sid: os.getsid(0)}
        elif os.getpgrp() != pgid:
            helper = self._plan.group_helpers.get(task.pid) if self._plan is not None else None
            if helper is not None:   # the group's leader is dead: a helper makes the group
                self._spawn(helper.pid, helper.describe(), lambda parent, done: self._helper(helper, parent, done))
            os.setpgid(0, pgid)
            if helper is not None:
                os.waitpid(helper.pid, 0)   # a zombie until now, it held the group

    def _create(self, child: TaskRecord, flags: int = 0) -> None:  # pragma: no cover - in a task
        """Create ``child`` with its recorded pid, sharing with this task what it shared with
        its parent (``shares``), and wait until it and its whole subtree are built (:meth:`_spawn`)."""
        for flag in child.shares:
            flags |= SHARE_FLAGS[flag]
        self._spawn(child.pid, describe(child), lambda parent, done: self._task(child, parent, done), flags)

    def _spawn(self, pid: int, what: str, body: Callable[[int, int], NoReturn],
               flags: int = 0) -> None:  # pragma: no cover - in a task
        """Create a task with pid ``pid`` that runs ``body(its parent, its done fd)``, and wait
        until it reports it is built (its one byte on the done pipe; EOF without it: it failed).
        With CLONE_FILES the child closes nothing of the pipe (:meth:`_await_sharer`)."""
        me = os.getpid()
        parent = os.getppid() if flags & CLONE_PARENT else me
        done_r, done_w = os.pipe2(os.O_CLOEXEC)
        # Above every placed fd: a child sharing the table must not move them (_task's _above).
        done_r, done_w = _above(done_r, self.fd_floor), _above(done_w, self.fd_floor)
        try:
            got = clone_with_pid(pid, flags)
        except OSError as err:
            os.close(done_r)
            os.close(done_w)
            why = "it is taken" if err.errno == errno.EEXIST else err.strerror
            raise TargetError(f"cannot create {what} with its pid: {why}") from None
        if got == 0:
            if not flags & CLONE_FILES:
                os.close(done_r)
                if self._done_fd is not None:   # the parent's own, which only the parent writes
                    os.close(self._done_fd)
            body(parent, done_w)
        if flags & CLONE_FILES:
            self._await_sharer(got, done_r, done_w)
            return
        os.close(done_w)
        try:
            report = b""
            while chunk := os.read(done_r, 16):
                report += chunk
        finally:
            os.close(done_r)
        if report != b"k":
            raise _SubtreeFailed()

    def _await_sharer(self, pid: int, done_r: int, done_w: int) -> None:  # pragma: no cover - in a task
        """Wait for a child created with CLONE_FILES to report it is built.  Its fds are this
        task's: the write end of the done pipe stays open in the one table whatever the child
        does, so no EOF tells of its failure -- its exit does (waitid WNOWAIT: it stays a
        zombie for ckpt's error path).  No fd is opened meanwhile: the child places its
        files at numbers free in the table, and would replace it.  Both ends are closed
        here, once it is done."""
        report = b""
        poller = select.poll()   # (poll, not epoll: no fd of its own; select stops at fd 1023)
        poller.register(done_r, select.POLLIN)
        try:
            while not report:
                if poller.poll(20):
                    report = os.read(done_r, 1)
                elif os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
        finally:
            os.close(done_r)
            os.close(done_w)
        if report != b"k":
            raise _SubtreeFailed()

    def _session_helper(self, helper: Helper) -> None:  # pragma: no cover - in a task
        """Create the helper of a dead session, which creates this task's children in it; reap it."""
        self._spawn(helper.pid, helper.describe(), lambda parent, done: self._helper(helper, parent, done))
        os.waitpid(helper.pid, 0)

    def _helper(self, helper: Helper, parent: int, done_fd: int) -> NoReturn:  # pragma: no cover
        """In a helper just created: make its session or group, create the session's members
        (their parent is the helper's, by CLONE_PARENT), report, and exit for its parent to reap."""
        try:
            die_with_parent(parent)
            self._done_fd = done_fd
            if helper.kind == "session":
                os.setsid()
            else:
                os.setpgid(0, 0)
            for member in helper.members:
                self._create(member, CLONE_PARENT)
        except _SubtreeFailed:
            os._exit(BUILD_FAILED)
        except BaseException as err:  # noqa: BLE001 - reported to ckpt, then exit
            with contextlib.suppress(OSError):
                self._report("error", helper.creator, type(err).__name__ if isinstance(err, CkptError) else "",
                             f"{helper.describe()}: {one_line(err)}")
            os._exit(BUILD_FAILED)
        self._done()
        os._exit(0)

    def _done(self) -> None:  # pragma: no cover - in a task
        """Tell the parent this task and its subtree are built."""
        if self._done_fd is not None:
            os.write(self._done_fd, b"k")
            if not self._shared_table:   # else the parent's, which closes it (_await_sharer)
                os.close(self._done_fd)
            self._done_fd = None

    def _zombie(self, task: TaskRecord, keep: set[int]) -> NoReturn:  # pragma: no cover
        """Become the zombie ``task`` was: its session and group, its name, then its death."""
        for fd in _open_fds():
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._join(task, root=False)
        name = os.fsencode(task.comm)[:15]
        buf = ctypes.create_string_buffer(name + b"\0")
        syscall(SYS_prctl, PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0)
        os.close(self.report_fd)
        self._done()
        status = task.exit_status or 0
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        sig = os.WTERMSIG(status)
        # No core: a core file would be written where the original's was not (the bit is lost,
        # as with CRIU's restore_one_zombie); the action is the default one, the signal unblocked.
        syscall(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0, 0)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(BUILD_FAILED)   # not reached: check_shape refused a signal that does not kill


def _above(fd: int, floor: int) -> int:  # pragma: no cover - in a task
    """``fd`` moved to a number >= ``floor`` (close-on-exec), clear of every fd the task places."""
    if fd >= floor:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    os.close(fd)
    return new


def _open_fds() -> list[int]:  # pragma: no cover - in a task
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


# -- ckpt's side -----------------------------------------------------------------------------


@dataclass
class Built:
    """A tree the builder made: every task in place, the live ones asleep in pause()."""

    root: int                              # the root's pid (ckpt's child)
    pids: dict[int, int]                   # recorded pid -> pid now
    notes: dict[int, list[str]]            # recorded pid -> the notes its setup made
    order: list[TaskRecord]                # the tasks in the order they were created

    def live_pids(self) -> list[int]:
        """The pids, now, of the live tasks, in creation order."""
        return [self.pids[t.pid] for t in self.order if live(t)]


def build(tasks: Sequence[TaskRecord], *, setup: Setup | None = None, finish: Finish | None = None,
          fd_floor: int = 3, same_pid: bool = False, timeout: float = DEFAULT_BUILD_TIMEOUT) -> Built:
    """Create the tree ``tasks`` (root first, parents before children): fork the root (with its
    recorded pid when ``same_pid``), which builds the rest (:class:`Builder`); wait until every
    live task sleeps in pause() and every zombie is one.

    On any failure the tree is killed and its root reaped, and the error a task reported is
    raised (as the ``CkptError`` class it raised, else ``TargetError``)."""
    root = tasks[0]
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    me = os.getpid()
    try:
        pid = clone_with_pid(root.pid if same_pid else None)
    except OSError as err:
        os.close(report_r)
        os.close(report_w)
        if err.errno == errno.EEXIST:
            raise TargetError(f"pid {root.pid} is in use; restore without --same-pid to get a new one") from None
        raise TargetError(f"cannot create the restore child: {err.strerror}") from None
    if pid == 0:  # pragma: no cover - the root
        os.close(report_r)
        Builder(tasks, report_w, setup, finish, max(fd_floor, 3)).run(me)
    os.close(report_w)
    pids = {t.pid: t.pid for t in tasks}
    pids[root.pid] = pid
    built = Built(pid, pids, {}, build_order(tasks))
    try:
        lines = _read_reports(report_r, time.monotonic() + timeout)
        ready = set()
        for kind, task_pid, rest in lines:
            if kind == "note":
                built.notes.setdefault(task_pid, []).append(rest[0])
            elif kind == "ready":
                ready.add(task_pid)
        for kind, task_pid, rest in lines:
            if kind == "error":
                raise _task_error(tasks, task_pid, *rest)
        missing = [t for t in tasks if live(t) and t.pid not in ready]
        if missing:
            raise TargetError("the restore's tasks failed without a report: "
                              + ", ".join(describe(t) for t in missing))
        settle(built, time.monotonic() + timeout)
    except BaseException:
        kill(built, seized=())
        raise
    finally:
        os.close(report_r)
    return built


def read_all(fd: int, deadline: float | None = None) -> bytes:
    """What a pipe holds until every writer closed it, or (``deadline`` None, an fd set
    non-blocking) until it holds nothing more; ``TargetError`` past ``deadline``."""
    chunks = []
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TargetError("the restore's tasks did not build the tree within the time allowed")
            if not select.select([fd], [], [], min(left, 1.0))[0]:
                continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _read_reports(fd: int, deadline: float) -> list[tuple[str, int, list[str]]]:
    """The report lines until every task closed the pipe: (kind, recorded pid, fields)."""
    out = []
    for line in read_all(fd, deadline).decode(errors="replace").splitlines():
        kind, _, rest = line.partition("\t")
        pid_text, _, tail = rest.partition("\t")
        with contextlib.suppress(ValueError):
            out.append((kind, int(pid_text), tail.split("\t", 1) if kind == "error" else [tail]))
    return out


def one_line(err: BaseException) -> str:
    """An error as one line of a report: a CkptError's message, another's type and message."""
    return " ".join(str(err).split()) if isinstance(err, CkptError) else " ".join(f"{type(err).__name__}: {err}".split())


def reported_error(name: str, text: str, otherwise: str) -> CkptError:
    """The error a restore child reported: the CkptError class it raised (``name``) when it
    takes a message alone, else TargetError(``otherwise``)."""
    cls = getattr(errors, name, None) if name else None
    if isinstance(cls, type) and issubclass(cls, CkptError) and cls.__init__ is CkptError.__init__:
        return cls(text)
    return TargetError(otherwise)


def _task_error(tasks: Sequence[TaskRecord], pid: int, name: str = "", text: str = "") -> CkptError:
    task = next((t for t in tasks if t.pid == pid), None)
    who = describe(task) if task is not None else f"pid {pid}"
    root = task is tasks[0]
    return reported_error(name, f"restore: {text}" if root else f"restore of {who}: {text}",
                          f"{'the restore child' if root else f'the restore task {who}'} could not set itself "
                          f"up: {text}")


def settle(built: Built, deadline: float) -> None:
    """Wait until every live task sleeps in pause() (it may still be on its way after its
    report) and every zombie has exited: then nothing in the tree runs."""
    waiting = {built.pids[t.pid]: t for t in built.order}
    while waiting:
        for pid, task in list(waiting.items()):
            if _settled(pid, task):
                del waiting[pid]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TargetError("the restore's tasks did not settle: "
                              + ", ".join(describe(t) for t in waiting.values()))
        time.sleep(0.001)


def _settled(pid: int, task: TaskRecord) -> bool:
    try:
        if not live(task):
            return procfs.read_stat(pid).state == "Z"
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split(" ", 1)[0] == str(SYS_pause)
    except (FileNotFoundError, ProcessLookupError):
        raise TargetError(f"the restore's task {describe(task)} exited (as pid {pid})") from None


def seize(pid: int, options: int) -> None:
    """Attach to a task asleep in pause() and stop it there (PTRACE_SEIZE with ``options``,
    PTRACE_INTERRUPT: a PTRACE_EVENT_STOP inside the syscall, kernel/signal.c
    do_jobctl_trap)."""
    try:
        pt.seize(pid, options)
        pt.interrupt(pid)
        while True:
            status = pt.StopStatus(pid, pt.wait_tid(pid)[1])
            if status.exited:
                raise TargetError(f"the restore's task {pid} exited while being seized")
            if status.event == pt.PTRACE_EVENT_STOP:
                return
            pt.cont(pid, 0)   # a signal-delivery stop (SIGKILL only reaches us as an exit)
    except OSError as err:
        raise TargetError(f"cannot seize the restore's task {pid}: {err.strerror}") from None


def kill(built: Built, seized: Iterable[int]) -> None:
    """SIGKILL every live task of the tree, then reap what ckpt may reap: the threads it
    traces (the tracer sees their deaths first; a leader after its other threads) and the
    root, its child.  The rest die of their parents' death signal, and init reaps them."""
    traced = {pid: _threads(pid) for pid in seized}
    for pid in reversed(built.live_pids()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid, tids in traced.items():
        for tid in sorted(tids, key=lambda tid: tid == pid):
            if tid != built.root:
                with contextlib.suppress(ChildProcessError, OSError):
                    pt.wait_tid(tid)
    with contextlib.suppress(ChildProcessError, OSError):
        pt.wait_tid(built.root)


def _threads(pid: int) -> list[int]:
    try:
        return procfs.list_threads(pid)
    except OSError:
        return [pid]

"""A process tree under ptrace: every task of it frozen together, and thawed together.

:class:`FrozenTree` is :class:`~ckpt.live.freeze.FrozenProcess` for a root and all
its descendants (issue 9).  One tracer thread serves every process (ptrace binds a
tracee to the thread that seized it, and one thread keeps waits and injections
serial), and the freeze runs in passes:

1. seize and interrupt every thread of every process of the frontier (at first the
   root) before waiting for any, so that their stop latencies overlap;
2. wait for all of them; a thread that forks meanwhile reports the fork
   (``PTRACE_O_TRACEFORK``/``TRACEVFORK``/``TRACECLONE``), its child arrives
   auto-attached and stopped, and is adopted in the same pass;
3. read the threads and children of the processes that just stopped: a stopped
   task forks no more, so its list of children is exact; new ones are the next
   frontier;
4. when a pass finds nothing new, one more pass reads every process again (a
   ``clone(CLONE_PARENT)`` by a task not yet stopped, or a reparenting to a
   subreaper of the tree, gives a new child to a task stopped earlier); when that
   finds nothing either, the tree is complete: every task is stopped, none can
   fork, exit or be reaped any more (only SIGKILL from outside ends a stopped task).

Zombies are recorded (their wait status is /proc/PID/stat field 52), never
seized (kernel/ptrace.c ``ptrace_attach`` refuses an ``exit_state``); their
parent is stopped, so they stay.  A group-stopped task is seized like any other:
its ``PTRACE_EVENT_STOP`` carries its stop signal instead of SIGTRAP
(kernel/signal.c ``do_jobctl_trap``), it is recorded "stopped", and the detach
leaves it stopped (kernel/ptrace.c ``__ptrace_unlink`` re-arms
``JOBCTL_STOP_PENDING`` for a group stop in effect).  A task that exits during
the freeze is not part of the tree (it exited before the checkpoint instant; its
parent, stopped, keeps it as a zombie, found by the last pass).  Membership is
decided once everything is stopped, by the parent links /proc gives then: a
process seized under a pid that was reused by a process outside the tree, or
reparented out of the tree because its parent exited, is released and left out.

Refused by name (:class:`~ckpt.errors.TargetError`), as CRIU refuses them: a task
traced by another tracer, a vfork parent, a task in another pid namespace than the
root's, a zombie leader whose threads still run, and the kernel objects
``CLONE_VM``, ``CLONE_SIGHAND`` shared between processes (kcmp(2); CRIU's
``dump_task_kobj_ids``).  A ``CLONE_FS`` fs_struct (cwd, root, umask) or a
``CLONE_FILES`` fd table is recorded when it is shared along a line of descent
(``TreeTask.shares``: the restore creates the child with the flag, as CRIU's
criu/pstree.c ``prepare_pstree_kobj_ids``), refused otherwise.

If ckpt dies at any instant, the tracer thread dies with it and the kernel
detaches every tracee (kernel/exit.c ``exit_ptrace``): the tree runs on, stopped
tasks stay stopped, and nothing of ckpt is left in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .. import procfs
from .._sys import ptrace as pt
from .._sys.kcmp import KCMP_FILES, KCMP_FS, KCMP_SIGHAND, KCMP_VM, kcmp_task
from ..errors import AccessDenied, CkptError, FreezeTimeout, TargetError, TargetExited
from .freeze import (DEFAULT_FREEZE_TIMEOUT, SEIZE_OPTIONS, FrozenProcess, FrozenThread, TracerSession,
                     check_target, refuse_strict_seccomp, wrap_process_errors)
from .tracer import TracerThread

TREE_OPTIONS = SEIZE_OPTIONS | pt.PTRACE_O_TRACEFORK | pt.PTRACE_O_TRACEVFORK
STOP_SIGNALS = frozenset((signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU))
ALIVE, STOPPED, ZOMBIE = "alive", "stopped", "zombie"

# What two processes must not share (kcmp type, the clone flag that shares it, what it is).
SHARED_OBJECTS = ((KCMP_VM, "CLONE_VM", "memory (one mm)"), (KCMP_FILES, "CLONE_FILES", "one fd table"),
                  (KCMP_FS, "CLONE_FS", "one cwd/root/umask (fs_struct)"),
                  (KCMP_SIGHAND, "CLONE_SIGHAND", "one table of signal handlers"))
# Of those, what a child may share with its parent: the restore creates it with the flag.
WITH_PARENT = frozenset({KCMP_FS, KCMP_FILES})


@dataclass(frozen=True)
class TreeTask:
    """One task of a frozen tree, as /proc showed it with everything stopped (the
    fields mean what ``ckpt.image.schema.Task``'s do)."""

    pid: int
    ppid: int                 # the parent's pid (the root's: its real parent, outside the tree)
    pgid: int
    sid: int
    state: str                # "alive" | "stopped" | "zombie"
    exit_status: int | None   # zombie only: the raw wait status, as os.waitpid gives it
    stop_signal: int | None   # stopped only: the signal that stopped it
    start_time: int           # clock ticks after boot (stat field 22)
    comm: str
    shares: tuple[str, ...] = ()   # the clone flags of what it shares with its parent ("CLONE_FS", "CLONE_FILES")


class FrozenTree(TracerSession):
    """``root`` and every descendant frozen, until :meth:`thaw` (see the module docstring).

    Use as ``with FrozenTree(pid) as tree: ...``; ``tree.processes[pid]`` is the
    :class:`FrozenProcess` of each live task (registers, injection, memory reads),
    all served by the tree's one tracer thread (:meth:`run`).  :meth:`thaw` releases
    every process (group-stopped ones stay stopped), :meth:`kill` SIGKILLs every live
    task at once and waits for each.
    """

    def __init__(self, root: int, timeout: float = DEFAULT_FREEZE_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout
        self.tasks: dict[int, TreeTask] = {}
        self.order: list[int] = []
        self.processes: dict[int, FrozenProcess] = {}
        self.freeze_time = 0.0
        self.adopted: set[int] = set()   # pids that arrived through a fork event during the freeze
        self._zombies: dict[int, procfs.Stat] = {}
        self._waiting: list[tuple[FrozenProcess, FrozenThread]] = []
        self._tracer: TracerThread | None = None
        self._thawed = False
        self._owns_tracer = True
        self._root_start = 0

    # -- the session ----------------------------------------------------------------

    def __enter__(self) -> FrozenTree:
        check_target(self.root)
        with wrap_process_errors(self.root, "reading /proc"):
            self._root_start = procfs.start_time(self.root)
        self._start(f"ckpt-tree-tracer-{self.root}", (self.root, *descendants(self.root)))
        return self

    # -- freezing -------------------------------------------------------------------

    def _freeze(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        frontier, waiting, everything = [self.root], [], False
        while True:
            for pid in frontier:
                waiting += self._seize_process(pid)
            self._wait_all(waiting, deadline)
            if everything:
                scan = list(self.processes.values())
            else:
                scan = list({id(proc): proc for proc, _ in waiting if self.processes.get(proc.pid) is proc}.values())
            frontier, waiting = [], []
            for proc in scan:
                with wrap_process_errors(proc.pid, "freeze", attached=True):
                    waiting += [(proc, thread) for thread in proc.seize_new_threads()]
                    frontier += [pid for pid in _children(proc.pid)
                                 if pid not in self.processes and pid not in self._zombies]
            if frontier or waiting:
                everything = False
            elif everything:
                break
            else:
                everything = True
            if time.monotonic() > deadline:
                raise FreezeTimeout(f"the tree of pid {self.root} kept changing for {self.timeout:g} s (new tasks "
                                    "in every pass); every task was released and nothing was written")
        self.freeze_time = time.monotonic() - t0
        self._settle()

    def _seize_process(self, pid: int) -> list[tuple[FrozenProcess, FrozenThread]]:
        """Seize and interrupt every thread of a process found as a child (or the root);
        a zombie is only recorded.  Its threads, to be waited for."""
        try:
            stat = procfs.read_stat(pid)
            tids = procfs.list_threads(pid)
        except (FileNotFoundError, ProcessLookupError):
            return []   # exited and reaped meanwhile: not in the tree
        if stat.state in ("Z", "X"):
            self._record_zombie(pid, stat, tids)
            return []
        if stat.state == "D" and (child := _vfork_child(pid)):
            raise self._vfork_parent(pid, child)
        proc = FrozenProcess.in_session(pid, self._tracer, timeout=self.timeout, options=TREE_OPTIONS,
                                        on_new_process=self._adopt)
        self.processes[pid] = proc
        seized = []
        for tid in tids:
            try:
                thread = proc.seize_thread(tid)
            except OSError as err:
                if err.errno != errno.EPERM:
                    with wrap_process_errors(pid, "ptrace seize", attached=True):
                        raise
                self._refuse_unseizable(pid, tid, err)
                if tid == pid and not seized:   # exited between the stat and the seize: a zombie now
                    del self.processes[pid]
                    return self._seize_process(pid)
                continue
            if thread is not None:
                seized.append((proc, thread))
        if not proc.threads:
            del self.processes[pid]
        return seized

    def _record_zombie(self, pid: int, stat: procfs.Stat, tids: list[int]) -> None:
        if stat.state == "X":
            return   # being reaped right now (its parent is not stopped: not a task of the tree)
        if len(tids) > 1:
            raise TargetError(f"pid {pid} ({stat.comm}) is a zombie thread group leader whose other threads still "
                              "run: ckpt cannot checkpoint it (CRIU refuses it too)")
        self._zombies[pid] = stat

    def _refuse_unseizable(self, pid: int, tid: int, err: OSError) -> None:
        """PTRACE_SEIZE failed with EPERM: traced by someone else (refused), a zombie
        (returns), or not allowed (AccessDenied)."""
        try:
            status = procfs.read_status(tid)
        except (FileNotFoundError, ProcessLookupError):
            return
        if status.tracer_pid:
            comm = _comm(pid)
            raise TargetError(f"pid {pid} ({comm}) of the tree of pid {self.root} is traced by pid "
                              f"{status.tracer_pid} ({_comm(status.tracer_pid)}): ckpt cannot freeze it")
        if status.state in ("Z", "X"):
            return
        raise AccessDenied(pid, "ptrace seize", err.strerror or "")

    def _adopt(self, thread: FrozenThread, pid: int, event: int) -> None:
        """A thread being stopped forked ``pid``: the new process arrives auto-attached and
        stopped (or, after a vfork, its parent waits for it uninterruptibly: refused)."""
        if event == pt.PTRACE_EVENT_VFORK:
            raise self._vfork_parent(procfs.read_status(thread.tid).tgid, child=pid)
        if pid in self.processes:
            return
        proc = FrozenProcess.in_session(pid, self._tracer, timeout=self.timeout, options=TREE_OPTIONS,
                                        on_new_process=self._adopt)
        new = proc.threads[pid] = FrozenThread(pid)
        self.processes[pid] = proc
        self.adopted.add(pid)
        self._waiting.append((proc, new))

    def _wait_all(self, waiting: list[tuple[FrozenProcess, FrozenThread]], deadline: float) -> None:
        """Wait for every thread of ``waiting`` (which grows with each fork adopted)."""
        self._waiting = waiting
        i = 0
        while i < len(waiting):
            proc, thread = waiting[i]
            i += 1
            if self.processes.get(proc.pid) is not proc or proc.threads.get(thread.tid) is not thread:
                continue   # its process exited meanwhile
            try:
                with wrap_process_errors(proc.pid, "freeze", attached=True):
                    proc.wait_stopped(thread, deadline)
            except TargetExited:
                if proc.pid == self.root:
                    raise
                del self.processes[proc.pid]   # exited before the instant of the checkpoint
            except FreezeTimeout:
                if child := _vfork_child(proc.pid):
                    raise self._vfork_parent(proc.pid, child) from None
                raise

    def _vfork_parent(self, pid: int, child: int) -> TargetError:
        return TargetError(f"pid {pid} ({_comm(pid)}) of the tree of pid {self.root} is a vfork parent: it waits, "
                           f"uninterruptibly, until its child {child} execs or exits (kernel/fork.c "
                           "wait_for_vfork_done), so ckpt cannot freeze it; retry once the child has exec'd")

    # -- what the tree is, now that everything is stopped ------------------------------

    def _settle(self) -> None:
        """Read every task, keep those linked to the root, release the others, refuse what
        ckpt cannot checkpoint, and keep each process's registers for the thaw."""
        stats: dict[int, procfs.Stat] = dict(self._zombies)
        for pid in list(self.processes):
            try:
                stats[pid] = procfs.read_stat(pid)
            except (FileNotFoundError, ProcessLookupError):
                if pid == self.root:
                    raise TargetExited(self.root, "freeze") from None
                del self.processes[pid]   # SIGKILLed from outside meanwhile
        root = stats[self.root]
        if root.start_time != self._root_start:
            raise TargetExited(self.root, "freeze (its pid now belongs to another process)")
        children: dict[int, list[int]] = {}
        for pid, stat in stats.items():
            children.setdefault(stat.ppid, []).append(pid)
        self.order = []
        todo = [self.root]
        while todo:   # depth first, parents before children, siblings by pid
            pid = todo.pop()
            self.order.append(pid)
            todo += sorted(children.get(pid, ()), reverse=True)
        members = set(self.order)
        for pid in [p for p in self.processes if p not in members]:
            # Not the task found under its parent (a reused pid), or reparented out of the
            # tree (its parent exited before the instant of the checkpoint).
            with contextlib.suppress(CkptError, OSError):
                self.processes.pop(pid).thaw()
        for pid in self.order:
            stat = stats[pid]
            state, exit_status, stop_signal = ALIVE, None, None
            if pid in self._zombies:
                state, exit_status = ZOMBIE, stat.exit_code
            else:
                leader = self.processes[pid].threads.get(pid)
                signo = leader.stop_signal if leader is not None else 0
                if signo in STOP_SIGNALS:
                    state, stop_signal = STOPPED, signo
            self.tasks[pid] = TreeTask(pid=pid, ppid=stat.ppid, pgid=stat.pgrp, sid=stat.session, state=state,
                                       exit_status=exit_status, stop_signal=stop_signal,
                                       start_time=stat.start_time, comm=stat.comm)
        self._refuse()
        for proc in self.processes.values():
            with wrap_process_errors(proc.pid, "freeze", attached=True):
                proc.frozen()
            proc.freeze_time = self.freeze_time

    def _refuse(self) -> None:
        """Refuse, by name, a tree ckpt cannot checkpoint (see the module docstring)."""
        namespace = _pid_namespace(self.root)
        for pid in self.processes:
            if pid == self.root:
                continue   # check_target did
            with wrap_process_errors(pid, "reading /proc", attached=True):
                if _pid_namespace(pid) != namespace:
                    raise TargetError(f"pid {pid} ({self.tasks[pid].comm}) of the tree of pid {self.root} is in "
                                      "another pid namespace than the root: ckpt cannot checkpoint it")
                refuse_strict_seccomp(pid)
        live = sorted(self.processes)
        for kind, flag, what in SHARED_OBJECTS:
            for group in _sharing_groups(live, kind):
                if kind in WITH_PARENT:
                    self._share_with_parents(group, flag, what)
                    continue
                a, b = group[:2]
                raise TargetError(f"pids {a} ({self.tasks[a].comm}) and {b} ({self.tasks[b].comm}) of the tree "
                                  f"of pid {self.root} share {what} ({flag}): ckpt cannot checkpoint processes "
                                  "sharing it")

    def _share_with_parents(self, group: list[int], flag: str, what: str) -> None:
        """Record, for processes sharing one object the builder can recreate (``WITH_PARENT``),
        which share it with their parent (``TreeTask.shares``), as CRIU does (criu/pstree.c
        ``prepare_pstree_kobj_ids``: a child shares its parent's table when the ids match,
        made by clone(flag)).  The object must be one line of descent: one process of the
        group (the first to have it) whose parent does not share it, every other one's
        parent sharing it; otherwise (``clone(CLONE_PARENT|flag)`` by a task whose parent
        has another one, then that parent's own unshare) it is refused by name."""
        members = set(group)
        tops = [pid for pid in group if self.tasks[pid].ppid not in members or pid == self.root]
        if len(tops) != 1:
            a, b = sorted(tops)[:2]
            raise TargetError(f"pids {a} ({self.tasks[a].comm}) and {b} ({self.tasks[b].comm}) of the tree of pid "
                              f"{self.root} share {what} ({flag}), and neither got it from its parent: ckpt restores "
                              "only one shared with the parent")
        for pid in group:
            if pid != tops[0]:
                self.tasks[pid] = dataclasses.replace(self.tasks[pid], shares=self.tasks[pid].shares + (flag,))

    # -- thawing --------------------------------------------------------------------

    def _thaw(self, stop: bool) -> None:
        for proc in self.processes.values():
            with contextlib.suppress(CkptError, OSError):
                proc.thaw(stop=stop)

    def _kill(self) -> None:
        for pid in self.processes:   # all at once, while none runs
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.processes.values():
            proc.kill()

    def wait_reaped(self, timeout: float = 2.0) -> list[int]:
        """After :meth:`kill`: wait until every task but the root has been reaped (their
        parents died too, so they were reparented to init or a subreaper, which reaps them
        soon), so that a restore right after finds their pids free.  The root is its own
        parent's to reap (perhaps the caller's).  Returns the pids still held."""
        deadline = time.monotonic() + timeout
        left = list(self.order[1:])
        held: list[int] = []
        while True:
            left = [pid for pid in left if _same_process(pid, self.tasks[pid].start_time)]
            # A zombie a subreaper inherited (not init) is reaped when that process gets to
            # it -- perhaps the very caller, once this returns: not waited for.
            held += [pid for pid in left if _parent(pid) not in (1, None)]
            left = [pid for pid in left if pid not in held]
            if not left or time.monotonic() >= deadline:
                return sorted(held + left)
            time.sleep(0.002)


def _parent(pid: int) -> int | None:
    try:
        return procfs.read_stat(pid).ppid
    except (FileNotFoundError, ProcessLookupError):
        return None


def _same_process(pid: int, start_time: int) -> bool:
    """``pid`` is still (the zombie of) the process that started at ``start_time``."""
    try:
        return procfs.start_time(pid) == start_time
    except (FileNotFoundError, ProcessLookupError):
        return False


def _children(pid: int) -> list[int]:
    try:
        return procfs.read_children(pid)
    except (FileNotFoundError, ProcessLookupError):
        return []


def descendants(root: int) -> Iterator[int]:
    """Every descendant of ``root`` as /proc shows it now (the tree may change meanwhile)."""
    todo = _children(root)
    while todo:
        pid = todo.pop()
        yield pid
        todo += _children(pid)


def _vfork_child(pid: int) -> int | None:
    """The child a process waits for in vfork(), if it does: a child sharing its memory
    while it sleeps uninterruptibly (kernel/fork.c wait_for_vfork_done, "D"; its wchan
    says kernel_clone once that is inlined, so the mm is what tells)."""
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if kcmp_task(pid, child, KCMP_VM) == 0:
                return child
    return None


def _comm(pid: int) -> str:
    try:
        return procfs.read_comm(pid)
    except OSError:
        return "?"


def _sharing_groups(pids: list[int], kind: int) -> list[list[int]]:
    """The processes of ``pids`` that share one kernel object of type ``kind`` (kcmp(2)), in
    groups of two or more (each sorted).  kcmp orders the objects (kernel/kcmp.c
    ``kcmp_ptr``): sorted by it, processes sharing one are neighbours; O(n log n) calls
    instead of every pair."""
    ranked = sorted(pids, key=functools.cmp_to_key(lambda a, b: kcmp_task(a, b, kind)))
    groups: list[list[int]] = []
    run = ranked[:1]
    for a, b in zip(ranked, ranked[1:]):
        if kcmp_task(a, b, kind) == 0:
            run.append(b)
            continue
        if len(run) > 1:
            groups.append(sorted(run))
        run = [b]
    if len(run) > 1:
        groups.append(sorted(run))
    return groups


def _pid_namespace(pid: int) -> str:
    """The pid namespace a process is in ("pid:[INODE]"; fs/proc/namespaces.c)."""
    return os.readlink(f"/proc/{pid}/ns/pid")

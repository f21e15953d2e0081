"""Whether a checkpoint can be restored, decided from what it recorded.

The one home of these rules.  ``ckpt dump`` applies them inside the frozen
window before a ``--kill`` (a target ckpt could not bring back is thawed, not
killed) and reports them (``DumpReport.restorable`` / ``unrestorable``);
``ckpt inspect``, ``ckpt verify`` and :func:`ckpt.restore.check` apply them to
a stored checkpoint.  They read only the checkpoint's task state and VMA
records, so every machine gives the same answer.  What depends on the machine
that restores -- a mapped file still there and unchanged, the vDSO layout, a
free pid -- is checked by :mod:`ckpt.restore` when it restores.

A *reason* makes a checkpoint unrestorable: restore refuses it, ``dump --kill``
refuses to kill.  A *note* names something a restore gives back differently
without losing it silently: fds 0-2 become the restoring ckpt's own streams
(or the files it is given), see :func:`std_stream_notes`.  The rules over
open files and fds are each kind's, in :mod:`ckpt.files` (``files.reasons``,
``files.notes``); this module applies them with the others.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import cgroups, files, seccomp
from ._sys import sched
from .image.schema import MM_FLAGS_VERSION, FdV1, State
from .tracker import DEVICE, FILE_PRIVATE, FILE_SHARED, SHMEM

_DELETED_SUFFIX = " (deleted)"
# How /proc/PID/maps names the ring of an io_setup() context: a shared mapping
# of a file of the internal aio filesystem (fs/aio.c aio_private_file), which
# the kernel never links.  ckpt classifies it as shared memory, which it is
# not: the kernel keeps the context (its ctx id is the ring's address).
AIO_RING = "/[aio] (deleted)"
# A System V shared memory segment: ipc/shm.c newseg names its shmem file "SYSV%08x" after
# the key, and shm_get_unmapped_area... maps it with the segment's id as the inode
# (newseg: file_inode(file)->i_ino = shp->shm_perm.id), which /proc/PID/maps shows.
SYSV_SEGMENT = re.compile(r"/SYSV([0-9a-f]{8}) \(deleted\)")
SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 1, 2          # include/uapi/linux/seccomp.h
CAP_IPC_LOCK = 14                                         # include/uapi/linux/capability.h

# Clocks a POSIX timer can be created on (kernel/time/posix-timers.c posix_clocks[]
# with a timer_create; the coarse and raw ones have none).
TIMER_CLOCKS = {0: "CLOCK_REALTIME", 1: "CLOCK_MONOTONIC", 7: "CLOCK_BOOTTIME", 8: "CLOCK_REALTIME_ALARM",
                9: "CLOCK_BOOTTIME_ALARM", 11: "CLOCK_TAI"}
ALARM_CLOCKS = frozenset({8, 9})   # need CAP_WAKE_ALARM (kernel/time/alarmtimer.c alarm_timer_create)
CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID = 2, 3
CPUCLOCK_PERTHREAD, CPUCLOCK_FD = 4, 3
SIGEV_THREAD_ID = 4


class VmaLike(Protocol):
    """The fields of a VMA record the rules read (:class:`ckpt.image.VmaRecord`)."""

    start: int
    end: int
    kind: str
    path: str
    inode: int


@dataclass(frozen=True)
class Verdict:
    """The rules' answer for one checkpoint."""

    reasons: tuple[str, ...] = ()   # each one alone makes the checkpoint unrestorable
    notes: tuple[str, ...] = ()     # what a restore gives back differently
    # Reasons a restore option lifts (a terminal outside the process: restore --shell-job);
    # the checkpoint is restorable (dump --kill kills), but only with the option.
    shell_job: tuple[str, ...] = ()

    @property
    def restorable(self) -> bool:
        """True when nothing stands in the way of a restore (on a suitable machine), perhaps
        with an option (:attr:`needs`)."""
        return not self.reasons

    @property
    def needs(self) -> tuple[str, ...]:
        """The restore options it needs: ``("--shell-job",)`` or ()."""
        return ("--shell-job",) if self.shell_job else ()

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` keys: ``restorable``, ``unrestorable`` (the reasons), ``restore_notes``,
        ``restorable_with`` (the options a restore needs) and ``needs_option`` (why)."""
        return {"restorable": self.restorable, "unrestorable": list(self.reasons),
                "restore_notes": list(self.notes), "restorable_with": list(self.needs),
                "needs_option": list(self.shell_job)}


def assess(state: State, vmas: Iterable[VmaLike], *, kind: str = "full", shell_job: bool = False,
           tree_pids: frozenset[int] = frozenset(), tree_task: bool = False) -> Verdict:
    """Apply every rule to a checkpoint's task ``state`` and VMA records.

    ``kind`` is the checkpoint's kind: a ``pre`` dump holds memory only.  ``tree_pids``:
    the tasks of the tree the state is part of (its children among them come back with it);
    ``tree_task``: the state is one of a tree's tasks, whose tree-wide rules are the root's.
    """
    if kind == "pre":
        return Verdict(reasons=("it is a pre-dump (memory only); restore a later full or "
                                "incremental checkpoint",))
    if not state.threads:
        return Verdict(reasons=("no task state was recorded (a damaged image?)",))
    try:
        return _assess(state, vmas, shell_job, tree_pids, alone=not tree_pids and not tree_task)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        # An edited or damaged record: not restorable, and inspect/verify still answer.
        return Verdict(reasons=(f"the recorded task state is malformed ({type(err).__name__}: {err})",))


def assess_tree(tasks: Sequence[tuple[State, Iterable[VmaLike]]], *, kind: str = "full",
                shell_job: bool = False, tree_task: bool = False) -> Verdict:
    """The rules for a checkpoint of a process tree: ``tasks`` are the root's state (with its
    ``tree``) and VMA records, then every other live task's.  Each task's reasons and notes,
    those of the others named by pid, and what the tree itself cannot give back.
    ``tree_task``: ``tasks`` is one task of a tree alone (see :func:`assess`)."""
    tree = tasks[0][0].tree
    if not tree and len(tasks) == 1:
        return assess(tasks[0][0], tasks[0][1], kind=kind, shell_job=shell_job, tree_task=tree_task)
    pids = frozenset(t.pid for t in tree)
    reasons: list[str] = []
    notes: list[str] = []
    lifted: list[str] = []
    from .files import handdown   # here: ckpt.files imports this module (through ckpt.trust)

    # Pipes whose other holders are tasks of the tree are the tree's (ckpt/files/handdown.py).
    live = {_pid(state) or 0: state for state, _ in tasks}
    viewed = handdown.tree_view(tree, live)
    tasks = [(viewed[_pid(state) or 0], vmas) for state, vmas in tasks]
    for i, (state, vmas) in enumerate(tasks):
        verdict = assess(state, vmas, kind=kind, shell_job=shell_job, tree_pids=pids)
        who = "" if i == 0 else f"pid {_pid(state)}: "
        reasons += [who + r for r in verdict.reasons]
        notes += [who + n for n in verdict.notes]
        lifted += [who + n for n in verdict.shell_job]
    if kind != "pre":
        reasons += (tree_reasons(tree) + handdown.reasons(tree, viewed) + shared_memory_reasons(tasks)
                    + tcp_across_tasks_reasons(tasks) + files.fown.reasons([s for s, _ in tasks], tree)
                    + shared_with_parent_reasons(tree, tasks))
    return Verdict(reasons=tuple(reasons), notes=tuple(dict.fromkeys(notes)), shell_job=tuple(lifted))


def assess_checkpoint(cp: Any, *, shell_job: bool = False) -> Verdict:
    """:func:`assess` of a stored checkpoint (:class:`ckpt.image.Checkpoint`), of every task
    of a tree's (:func:`assess_tree`)."""
    if not cp.tree:
        return assess(cp.state, cp.vmas, kind=cp.kind, shell_job=shell_job)
    return assess_tree([(task.state, task.vmas) for task in cp.tasks()], kind=cp.kind, shell_job=shell_job)


def tcp_across_tasks_reasons(tasks: Sequence[tuple[State, Iterable[VmaLike]]]) -> list[str]:
    """A TCP connection whose two ends are in two tasks of the tree: each task's rebuild
    resumes its end (TCP_REPAIR off) while the other end does not exist yet, and the first
    segment either sends gets a reset (zdtm socket-tcp-local: "Connection reset by peer" on
    the first write after restore).  Within one process both ends are made before either
    resumes.  Without a network lock that holds the packets until every task is rebuilt
    (CRIU's), refused by name."""
    ends: dict[tuple[str, int, str, int], int] = {}   # (local addr, port, peer addr, port) -> pid

    def plain(addr: str) -> str:   # an IPv4-mapped IPv6 address (an AF_INET6 end) is the IPv4 one
        with contextlib.suppress(ValueError):
            mapped = getattr(ipaddress.ip_address(addr), "ipv4_mapped", None)
            if mapped is not None:
                return str(mapped)
        return addr

    for state, _ in tasks:
        pid = _pid(state) or 0
        for f in state.files or ():
            local, peer = getattr(f, "local", None), getattr(f, "peer", None)
            if getattr(f, "tcp", None) is not None and local is not None and peer is not None:
                ends[(plain(local.addr), local.port, plain(peer.addr), peer.port)] = pid
    reasons = []
    for (laddr, lport, paddr, pport), pid in sorted(ends.items()):
        other = ends.get((paddr, pport, laddr, lport))
        if other is not None and other != pid and (laddr, lport) < (paddr, pport):
            reasons.append(f"the TCP connection {laddr}:{lport} <-> {paddr}:{pport} has its ends in pid {pid} "
                           f"and pid {other}: restoring it across processes needs a network lock ckpt does not "
                           "have yet")
    return reasons


def shared_memory_reasons(tasks: Sequence[tuple[State, Iterable[VmaLike]]]) -> list[str]:
    """Memory two tasks of a tree share that a restore would give each its own copy of, a
    write by one no longer seen by the other: SysV or huge-page shared memory, a memfd or
    deleted file whose content no one record keeps.  Shared anonymous memory (a MAP_SHARED
    mapping inherited over fork) the root's ``shared_memory`` records with its mappers is
    restored shared (ckpt/treememory.py); a memfd or deleted file kept once (``stored_by``)
    is made once and handed down (ckpt/files/handdown.py).  Objects are told by device and inode, as /proc/PID/maps and fstat
    give them at dump."""
    from . import namedshm, treememory

    holders: dict[tuple[str, int], dict[int, str]] = {}   # (dev, inode) -> pid -> what
    inherited = {t.pid: {fd for fd, _ in t.inherited} for t in tasks[0][0].tree}
    restored = {(r.dev, r.inode): set(r.mappers) for r in tasks[0][0].shared_memory}
    anon: set[tuple[str, int]] = set()
    from .files.handdown import objects_made_once   # memfds and deleted files: made once, handed down
    made_once = {(f"{os.major(d):02x}:{os.minor(d):02x}", i) for d, i in objects_made_once([s for s, _ in tasks])}

    def hold(key: tuple[str, int], pid: int, what: str) -> None:
        holders.setdefault(key, {}).setdefault(pid, what)

    def key_of(obj: Any) -> tuple[str, int]:
        return f"{os.major(obj.dev):02x}:{os.minor(obj.dev):02x}", obj.ino

    for state, vmas in tasks:
        pid = _pid(state) or 0
        objects = {o.id: o for o in state.objects}
        for v in vmas:
            obj = objects.get(getattr(v, "object", None) or -1)
            if obj is not None:
                hold(key_of(obj), pid, f"{obj.type} {obj.name!r} mapped at {v.start:#x}")
            elif v.kind == SHMEM and v.inode and not namedshm.named(v):   # SysV, /dev/shm: by key, path
                hold((v.dev, v.inode), pid, f"{v.path or 'shared memory'} at {v.start:#x}")
                if treememory.anon_shared(v):
                    anon.add((v.dev, v.inode))
        # An object open at an fd the parent's open file gives (Task.inherited) is the
        # parent's, shared through fork; one open otherwise would be made anew.
        files = {f.id: f for f in state.files or ()}
        for fd in state.fds or ():
            f = files.get(fd.file)
            obj = objects.get(getattr(f, "object", None) or -1) if f is not None else None
            if obj is not None and fd.fd not in inherited.get(pid, ()):
                hold(key_of(obj), pid, f"{obj.type} {obj.name!r} at fd {fd.fd}")
    reasons = []
    for key, by_pid in holders.items():
        if len(by_pid) > 1 and not (key in anon and restored.get(key) == set(by_pid)) and key not in made_once:
            named = ", ".join(f"pid {pid} ({what})" for pid, what in sorted(by_pid.items()))
            reasons.append(f"memory shared between processes of the tree ({named}); ckpt cannot restore it "
                           "shared yet")
    return reasons


def shared_with_parent_reasons(tree: Sequence[Any], tasks: Sequence[tuple[State, Iterable[VmaLike]]]) -> list[str]:
    """What a restore cannot give a task that shares its parent's fs_struct or fd table
    (``Task.shares``; ckpt/pstree.py creates it with CLONE_FS, CLONE_FILES).

    CLONE_FS: the parent sets cwd, root and umask for both (ckpt/restore.py
    ``_child_finish``): the task's own record must say the same, or the restore would
    silently differ (an edited image).  CLONE_FILES: a memfd or deleted file the task maps
    is made or handed down through fds of the one table, which the tree's hand-down
    (ckpt/files/handdown.py) closes in each task as if it were its own: refused by name."""
    procs = {_pid(state): state.process for state, _ in tasks}
    reasons = []
    for state, vmas in tasks:
        pid = _pid(state)
        task = next((t for t in tree if t.pid == pid), None)
        if task is not None and "CLONE_FILES" in task.shares \
                and any(getattr(v, "object", None) is not None for v in vmas):
            reasons.append(f"pid {pid} shares its parent's fd table (CLONE_FILES) and maps a memfd or a deleted "
                           "file, which ckpt cannot restore in a shared table yet")
    for task in tree:
        if "CLONE_FS" not in task.shares:
            continue
        mine, parents = procs.get(task.pid), procs.get(task.ppid)
        if mine is None or parents is None:
            continue   # no checkpoint of one of them: refused as such elsewhere
        differ = [name for name in ("cwd", "cwd_id", "root", "root_id", "umask")
                  if getattr(mine, name) != getattr(parents, name)]
        if differ:
            reasons.append(f"pid {task.pid} shares its cwd, root and umask with its parent pid {task.ppid} "
                           f"(CLONE_FS), but their records differ ({', '.join(differ)})")
    return reasons


def tree_reasons(tree: Sequence[Any]) -> list[str]:
    """What a restore cannot rebuild of a tree's shape (:func:`ckpt.pstree.shape_reasons`:
    sessions and groups whose leader is gone...).  Open files shared outside the fork line
    are :func:`ckpt.files.handdown.reasons`'."""
    from .pstree import shape_reasons   # here: pstree is the restore's, imported only for trees

    return shape_reasons(tree)


def _assess(state: State, vmas: Iterable[VmaLike], shell_job: bool = False,
            tree_pids: frozenset[int] = frozenset(), alone: bool = True) -> Verdict:
    from . import namedshm   # here: it imports ckpt.trust, which imports this module

    vmas = list(vmas)
    reasons = (mapping_reasons([v for v in vmas if not namedshm.recorded(state, v)]) + namedshm.reasons(state, vmas)
               + files.objects.reasons(state, vmas))
    table = files.table(state)
    reasons += files.reasons(table)
    reasons += files.fown.reasons([state]) if alone else []   # a tree's: assess_tree
    reasons += seccomp_reasons(state)
    reasons += mm_reasons(state, vmas)
    reasons += timer_reasons(state)
    reasons += sched_reasons(state)
    reasons += thread_creds_reasons(state)
    reasons += directory_reasons(state)
    reasons += namespace_reasons(state)
    if state.process is not None:
        reasons += cgroups.thread_reasons(state.process.cgroups,
                                          [(t.tid, t.cgroups) for t in state.threads or () if t.cgroups is not None])
    children = [c for c in state.process.children if c.pid not in tree_pids] if state.process is not None else ()
    if children:
        pid = _pid(state) or "?"
        named = ", ".join(f"pid {c.pid} ({c.comm})" for c in children)
        reasons.append(f"pid {pid} has children ({named}); ckpt restores one process, "
                       "not a process tree, yet")
    session, lifted = files.tty.session_reasons(state, shell_job)   # the controlling terminal
    reasons += session
    notes = (sched_notes(state) + pdeathsig_notes(state) + files.notes(table) + files.fown.notes(state)
             + files.tty.session_notes(state) + lifted)
    return Verdict(reasons=tuple(reasons), notes=tuple(notes), shell_job=tuple(lifted))


def namespace_reasons(state: State) -> list[str]:
    """Time namespaces a restore does not recreate (the restored process runs in ckpt's
    own, with ckpt's clocks): the process's own, or the one it unshared for its children
    (CRIU refuses both: "Can't dump nested time namespace")."""
    process = state.process
    out = []
    if process is not None and process.timens_own:
        out.append("it runs in a time namespace of its own (other clock offsets, /proc/PID/timens_offsets), "
                   "which ckpt does not recreate")
    if process is not None and process.timens_children:
        out.append("it unshared a time namespace for its children (/proc/PID/ns/time_for_children is not its "
                   "own), which ckpt does not recreate")
    return out


def directory_reasons(state: State) -> list[str]:
    """A working directory or root deleted while the process was in it: no path leads
    there any more (readlink of /proc/PID/cwd ends in " (deleted)"), so a restore has no
    directory to give back."""
    process = state.process
    if process is None:
        return []
    return [f"its {what} {path} was deleted; a restore has no such directory to give back"
            for what, path in (("working directory", process.cwd), ("root", process.root or ""))
            if path.endswith(" (deleted)")]


def thread_creds_reasons(state: State) -> list[str]:
    """Threads whose credentials are not the leader's (a raw setresuid(2) in one
    thread, without glibc's broadcast to all): a restore gives every thread the
    process's, so it refuses rather than change a thread's identity."""
    out = []
    for thread in state.threads or ():
        creds = thread.creds
        if creds:
            out.append(f"thread {thread.tid} has credentials of its own (uids "
                       + "/".join(map(str, creds.uids)) + ", gids " + "/".join(map(str, creds.gids))
                       + "), which ckpt does not restore per thread")
    return out


def pdeathsig_notes(state: State) -> list[str]:
    """A parent-death signal is restored, but the parent it watches is the restored
    process's new one (the ``ckpt restore`` command, or what a detached restore
    leaves it to), not the one it had."""
    out = []
    for thread in state.threads or ():
        sig = thread.pdeathsig
        if sig:
            out.append(f"thread {thread.tid} asked for {_signal_name(sig)} at its parent's death "
                       "(PR_SET_PDEATHSIG): restored, it follows its new parent")
    return out


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def cpu_clock(clock: int) -> tuple[int, bool, bool] | None:
    """A CPU-time or clock-device clock id decoded as (pid, per_thread, is_fd); None
    for the other clocks.  Encoding (include/linux/posix-timers_types.h): ((~pid) << 3)
    | type, type 0-2 a CPU clock (| 4 for a thread's) and 3 a clock device's fd; pid 0
    is the caller.  The static CLOCK_PROCESS/THREAD_CPUTIME_ID are kept in that form
    by timer_create (kernel/time/posix-cpu-timers.c process_cpu_timer_create)."""
    if clock == CLOCK_PROCESS_CPUTIME_ID:
        return 0, False, False
    if clock == CLOCK_THREAD_CPUTIME_ID:
        return 0, True, False
    if clock >= 0:
        return None
    return ~(clock >> 3), bool(clock & CPUCLOCK_PERTHREAD), clock & 3 == CPUCLOCK_FD


def _pid(state: State) -> int | None:
    """The dumped process's pid, as the state records it."""
    if state.target is not None:
        return state.target.pid
    return state.process.pid if state.process is not None else None


def timer_reasons(state: State) -> list[str]:
    """POSIX timers a restore cannot recreate as they were: on a clock device, on the
    CPU clock of another process or of an unknown thread, on a clock with no timers,
    or signalling a thread that is gone."""
    pid = _pid(state)
    tids = {t.tid for t in state.threads or ()}
    out = []
    for timer in state.process.posix_timers if state.process is not None else ():
        what = f"POSIX timer {timer.id}"
        clock = timer.clock
        decoded = cpu_clock(clock)
        if decoded is None:
            if clock not in TIMER_CLOCKS:
                out.append(f"{what} is on clock {clock}, on which this kernel creates no timers")
        else:
            owner, per_thread, is_fd = decoded
            if is_fd:
                out.append(f"{what} is on a dynamic clock (a clock device's file descriptor), fd {owner}, "
                           "which ckpt cannot restore")
            elif owner == 0 and per_thread and len(tids) > 1:
                out.append(f"{what} is on the CPU-time clock of the thread that created it, which "
                           f"/proc/PID/timers does not name (the process has {len(tids)} threads)")
            elif owner and per_thread and owner not in tids:
                out.append(f"{what} is on the CPU-time clock of thread {owner}, not a thread of this process")
            elif owner and not per_thread and owner != pid:
                out.append(f"{what} is on the CPU-time clock of pid {owner}, another process")
        if timer.notify & SIGEV_THREAD_ID and timer.notify_pid not in tids:
            out.append(f"{what} signals thread {timer.notify_pid}, which has exited")
    return out


def sched_reasons(state: State) -> list[str]:
    """Scheduling a restore cannot give back: an unknown policy, utilization clamps."""
    out = []
    for t in state.threads or ():
        s = t.sched
        if not s:
            continue
        if s.policy not in sched.POLICY_NAMES:
            out.append(f"thread {t.tid} has scheduling policy {s.policy}, unknown to ckpt")
        low, high = s.util_min, s.util_max
        if low or high not in (0, sched.SCHED_CAPACITY_SCALE):
            out.append(f"thread {t.tid} has utilization clamps (min {low}, max {high}), which ckpt "
                       "cannot restore yet")
    return out


def sched_notes(state: State) -> list[str]:
    """What a restore gives back differently: a timer slack of 0 outside an RT policy
    (a thread cloned by an RT thread inherits 0 as its default; PR_SET_TIMERSLACK 0 means
    "the default" and the default is not readable, kernel/sys.c)."""
    out = []
    for t in state.threads or ():
        s = t.sched
        if s and t.timer_slack_ns == 0 and s.policy not in sched.RT_POLICIES | {sched.SCHED_DEADLINE}:
            out.append(f"thread {t.tid} has timer slack 0 without an RT policy; it gets its default slack")
    return out


def describe_clock(clock: int) -> str:
    """"CLOCK_MONOTONIC", "the CPU-time clock of pid 12", ... for messages."""
    decoded = cpu_clock(clock)
    if decoded is None:
        return TIMER_CLOCKS.get(clock, f"clock {clock}")
    owner, per_thread, is_fd = decoded
    if is_fd:
        return f"the clock device of fd {owner}"
    whose = ("the creating thread" if per_thread else "the process") if owner == 0 else \
        f"{'thread' if per_thread else 'pid'} {owner}"
    return f"the CPU-time clock of {whose}"


def seccomp_reasons(state: State) -> list[str]:
    """Seccomp state a restore cannot give back (without its filters a thread would
    be allowed more than it was).

    Filters are per thread: each thread record has its mode and its newest
    filter (``ckpt.taskstate._capture_seccomp``).  A checkpoint of an older
    ckpt has the leader's mode only (``creds.seccomp``) and no filters."""
    threads = state.threads or ()
    process = state.process
    if process is None:
        return []
    if threads and threads[0].seccomp_mode is None:
        mode = process.creds.seccomp
        if not mode:
            return []
        what = {1: "strict mode", 2: "a filter"}.get(mode, f"mode {mode}")
        return [f"the process runs under seccomp ({what}), whose filters this checkpoint does not hold "
                "(taken by an older ckpt)"]
    nodes = process.seccomp_filters
    strict, unread, used = [], [], set()
    for t in threads:
        if t.seccomp_mode == SECCOMP_MODE_STRICT:
            strict.append(t.tid)
        elif t.seccomp_mode == SECCOMP_MODE_FILTER:
            if t.seccomp_filter is None:
                unread.append(t.tid)
            index = t.seccomp_filter
            while index is not None and index not in used:
                used.add(index)
                index = nodes[index].prev
    out = []
    if strict:
        out.append(f"{_threads(strict)} in seccomp strict mode, which ckpt cannot restore")
    if unread:
        why = process.seccomp_unreadable or "not recorded"
        out.append(f"{_threads(unread)} under seccomp filters the dump could not read ({why})")
    for index in sorted(used):
        problem = seccomp.filter_problem(nodes[index].insns, nodes[index].flags)
        if problem:
            holders = [t.tid for t in threads if index in seccomp.chain(nodes, t.seccomp_filter)]
            out.append(f"a seccomp filter of {_threads(holders, runs=False)} {problem}")
    return out


def _threads(tids: Sequence[int], runs: bool = True) -> str:
    named = ", ".join(map(str, tids))
    verb = (" runs" if len(tids) == 1 else " run") if runs else ""
    return f"thread {named}{verb}" if len(tids) == 1 else f"threads {named}{verb}"


def mm_reasons(state: State, vmas: Iterable[VmaLike]) -> list[str]:
    """Address-space state a restore cannot give back: memory it could not lock
    again, guard regions or membarrier registrations the dump could not see.

    mlock is restored with the process's own credentials and RLIMIT_MEMLOCK
    (mm/mlock.c ``do_mlock``: locked pages beyond the limit need CAP_IPC_LOCK),
    so a checkpoint where the kernel would refuse is refused before anything
    is created.  What an older ckpt did not record (state versions before
    :data:`MM_FLAGS_VERSION`) is not judged."""
    mm, process = state.mm, state.process
    if mm is None or process is None:
        return []
    out = []
    vmas = list(vmas)
    locked = sum(v.end - v.start for v in vmas if "lo" in getattr(v, "flags", ()))
    limit = process.rlimits.get("RLIMIT_MEMLOCK", (-1, -1))[0]
    can_lock = process.creds.cap_eff >> CAP_IPC_LOCK & 1
    if locked and 0 <= limit < locked and limit < 1 << 63 and not can_lock:
        out.append(f"{locked // 1024} KiB of its memory is locked (mlock), more than its RLIMIT_MEMLOCK "
                   f"({limit // 1024} KiB) lets a process without CAP_IPC_LOCK lock again")
    if (state.version or 0) < MM_FLAGS_VERSION:
        return out
    if mm.guard is None and any("gu" in getattr(v, "flags", ()) for v in vmas):
        out.append("it has guard regions (MADV_GUARD_INSTALL) that this kernel cannot report (no PAGE_IS_GUARD)")
    if mm.mlockall is None:
        out.append("whether mlockall(MCL_FUTURE) was in effect could not be told")
    if mm.membarrier is None:
        why = mm.membarrier_unreadable or "unknown"
        out.append(f"its membarrier registrations could not be read ({why})")
    return out


def mapping_reasons(vmas: Iterable[VmaLike]) -> list[str]:
    """Mappings a restore cannot recreate: device memory, and file mappings whose
    file cannot be reopened by path (deleted, or not a file: an io_uring ring,
    a DRM buffer, ...).  One reason per object, naming each of its ranges."""
    found: dict[tuple[str, str], list[str]] = {}
    for vma in vmas:
        where = f"{vma.start:#x}-{vma.end:#x}"
        path = vma.path or "?"
        if path == AIO_RING:
            found.setdefault(("aio", path), []).append(where)
        elif segment := SYSV_SEGMENT.fullmatch(path):
            found.setdefault(("sysv", f"key {int(segment.group(1), 16):#x} (shmid {vma.inode})"), []).append(where)
        elif "um" in getattr(vma, "flags", ()):
            found.setdefault(("missing", "uffd"), []).append(where)
        elif vma.kind == DEVICE:
            found.setdefault(("device", path), []).append(where)
        elif vma.kind in (FILE_PRIVATE, FILE_SHARED) and getattr(vma, "object", None) is None:
            # (A memfd or deleted file kept as a file object: ckpt/files/objects.py judges it.)
            if path.endswith(_DELETED_SUFFIX):
                found.setdefault(("deleted", path), []).append(where)
            elif not path.startswith("/"):
                found.setdefault(("object", path), []).append(where)
    out = []
    for (what, path), where in found.items():
        at = ", ".join(where)
        if what == "aio":
            out.append(f"the mapping at {at} is the ring of an AIO context (io_setup), which ckpt cannot "
                       "restore yet")
        elif what == "sysv":   # path: the segment's key and id
            out.append(f"the mapping at {at} is the System V shared memory segment {path}, which ckpt cannot "
                       "restore yet (it would come back as shared memory of the process alone, detached from "
                       "the segment)")
        elif what == "missing":
            # Its pages not yet present were read as absent (zeros): they are the handler's to fill.
            out.append(f"the memory at {at} was registered for missing-page faults with a userfaultfd (a lazy "
                       "restore's page server still filling it, or the process's own): the pages it did not "
                       "have yet are not in the checkpoint; dump it again once that page server has exited")
        elif what == "device":
            out.append(f"the device mapping {path} at {at} cannot be restored")
        elif what == "deleted":
            out.append(f"the mapping at {at} is of a deleted file ({path}), whose content the checkpoint does "
                       "not hold (the dump reads it through /proc/PID/map_files, which needs CAP_SYS_ADMIN or "
                       "CAP_CHECKPOINT_RESTORE)")
        else:
            out.append(f"the mapping of {path} at {at} is not a file ckpt can reopen")
    return out


def std_stream_notes(fds: files.FdTable | Sequence[FdV1],
                     given: Mapping[int, str | os.PathLike[str] | None] | None = None) -> list[str]:
    """One note per fd 0-2 a restore replaces (:func:`ckpt.files.std_stream_notes`):
    "fd 1 was a pipe (pipe:[7]); it is now ckpt's stdout (/dev/pts/0)".  ``fds`` is a
    checkpoint's fd table, or its version-1 fd records."""
    table = fds if isinstance(fds, files.FdTable) else files.from_v1(fds)
    return files.std_stream_notes(table, given)

"""Restoring process trees (issue 9, stage 1): ckpt.pstree's plan and builder on their own.

The builder is run from hand-made task records (the fields of ckpt.image.schema.Task) in
a forked child of the test, and the tree it makes is checked through /proc: every task's
pid, parent, process group, session, name, state, a zombie's wait status.  The end-to-end
restore of a dumped tree is in test_trees.py.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ckpt import pstree, procfs
from ckpt.errors import NotRestorable, TargetError


@dataclass(frozen=True)
class Rec:
    """A task record with the fields of ckpt.image.schema.Task the builder reads."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str = "alive"
    exit_status: int | None = None
    stop_signal: int | None = None
    start_time: int | None = None
    comm: str = "task"
    inherited: tuple[tuple[int, int], ...] = ()
    shares: tuple[str, ...] = ()


def free_pids(count: int) -> list[int]:
    """``count`` pids no process has now, from the top of the pid space (the busy machine
    allocates from below: kernel/pid.c alloc_pid cycles upwards from the last one)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    low = max(300, pid_max - 4000)
    free = [p for p in range(low, pid_max) if not os.path.exists(f"/proc/{p}")]
    return sorted(random.sample(free, count))


@pytest.fixture
def built() -> Iterator[list[pstree.Built]]:
    """The trees a test built; each is killed (and its root reaped) at teardown."""
    trees: list[pstree.Built] = []
    yield trees
    for tree in trees:
        pstree.kill(tree, seized=())
        for pid in tree.pids.values():   # gone once init reaped what the root left
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.01)


def shape(tasks: list[Rec], root_pid: int) -> list[Rec]:
    """The records as /proc shows the tasks now (the root under its recorded pid)."""
    out = []
    for t in tasks:
        pid = root_pid if t is tasks[0] else t.pid
        stat = procfs.read_stat(pid)

        def recorded(value: int) -> int:
            return tasks[0].pid if value == root_pid else value

        out.append(Rec(pid=t.pid, ppid=t.ppid if t is tasks[0] else recorded(stat.ppid), pgid=recorded(stat.pgrp),
                       sid=recorded(stat.session), state="zombie" if stat.state == "Z" else "alive",
                       exit_status=stat.exit_code if stat.state == "Z" else None, comm=stat.comm))
    return out


def expected(tasks: list[Rec]) -> list[Rec]:
    """What ``shape`` must give: a stopped task is built running (ckpt stops it at release)."""
    return [Rec(pid=t.pid, ppid=t.ppid, pgid=t.pgid, sid=t.sid, state="zombie" if t.state == "zombie" else "alive",
                exit_status=t.exit_status, comm=t.comm if t.state == "zombie" else "python3")
            for t in tasks]


def a_tree() -> list[Rec]:
    """root: a parent with a grandchild, a group leader and a member of its group created after
    it, a session leader with a child in its session, two zombies (exit 42, SIGTERM), a
    task that was stopped.  The root leads nothing: it is in the test's group and session."""
    root_pid, parent, grandchild, group, member, session, inside, exit42, killed, stopped = free_pids(10)
    pg, sid = os.getpgrp(), os.getsid(0)
    return [
        Rec(root_pid, os.getpid(), pg, sid, comm="root"),
        Rec(parent, root_pid, pg, sid),
        Rec(group, root_pid, group, sid),
        Rec(member, root_pid, group, sid),
        Rec(session, root_pid, session, session),
        Rec(exit42, root_pid, pg, sid, state="zombie", exit_status=42 << 8, comm="zt-exit42"),
        Rec(killed, root_pid, group, sid, state="zombie", exit_status=signal.SIGTERM, comm="zt-killed"),
        Rec(stopped, root_pid, pg, sid, state="stopped", stop_signal=signal.SIGSTOP),
        Rec(grandchild, parent, pg, sid),
        Rec(inside, session, session, session),
    ]


def in_pid_order(tasks: list[Rec]) -> list[Rec]:
    """Parents before children, siblings in pid order (the order of State.tree)."""
    out = [tasks[0]]
    for t in out:
        out += sorted((c for c in tasks if c.ppid == t.pid and c is not tasks[0]), key=lambda c: c.pid)
    return out


@pytest.mark.timeout(60)
def test_builder_makes_the_recorded_tree(built: list[pstree.Built]) -> None:
    """Every non-root task gets its recorded pid and parent, its group and session (led,
    joined or inherited), a zombie its name and wait status; every live task waits in
    pause(), untraced; nothing of the tree is reaped."""
    tasks = in_pid_order(a_tree())
    pstree.check_shape(tasks)
    pstree.check_pids(tasks)
    tree = pstree.build(tasks)
    built.append(tree)
    assert tree.pids == {t.pid: (tree.root if t is tasks[0] else t.pid) for t in tasks}
    assert shape(tasks, tree.root) == expected(tasks)
    for t in tasks:
        if t.state != "zombie":
            pid = tree.pids[t.pid]
            assert procfs.read_stat(pid).state == "S"
            assert procfs.read_status(pid).tracer_pid == 0
            with open(f"/proc/{pid}/syscall") as f:
                assert f.read().split()[0] == str(pstree.SYS_pause)
    # The builder's pipes are gone from every task: only 0-2 and what the test process had.
    ours = set(os.listdir("/proc/self/fd"))
    for pid in tree.live_pids():
        assert set(os.listdir(f"/proc/{pid}/fd")) <= ours | {"0", "1", "2"}, pid


@pytest.mark.timeout(60)
def test_taken_pid_is_refused_by_name_before_anything_is_created(built: list[pstree.Built]) -> None:
    """A recorded pid that a running process has: refused naming the pid, the task and
    the process holding it, and nothing of the tree is created."""
    tasks = in_pid_order(a_tree())
    holder = os.fork()
    if holder == 0:  # pragma: no cover - a process holding a pid
        time.sleep(60)
        os._exit(0)
    try:
        taken = tasks[3]
        tasks[3] = Rec(holder, taken.ppid, taken.pgid, taken.sid, comm="wanted")
        tasks = in_pid_order(tasks)
        with pytest.raises(TargetError, match=f"pid {holder} \\(wanted\\) is taken by a running process \\(python"):
            pstree.check_pids(tasks)
        for t in tasks[1:]:
            if t.pid != holder:
                assert not os.path.exists(f"/proc/{t.pid}"), t
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


@pytest.mark.timeout(60)
def test_pid_taken_meanwhile_fails_and_kills_what_was_built(built: list[pstree.Built]) -> None:
    """A pid taken between the check and the clone3: the builder fails naming it, and the
    tasks already created die with it."""
    tasks = in_pid_order(a_tree())
    last = tasks[-1]
    holder = os.fork()
    if holder == 0:  # pragma: no cover
        time.sleep(60)
        os._exit(0)
    try:
        tasks[-1] = Rec(holder, last.ppid, last.pgid, last.sid, comm="late")
        tasks = in_pid_order(tasks)
        with pytest.raises(TargetError, match=f"cannot create pid {holder} \\(late\\) with its pid: it is taken"):
            pstree.build(tasks)
        deadline = time.monotonic() + 10
        others = [t.pid for t in tasks[1:] if t.pid != holder]
        while any(os.path.exists(f"/proc/{p}") for p in others) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [p for p in others if os.path.exists(f"/proc/{p}")] == []
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


@pytest.mark.parametrize("case,reason", [
    ("session of a task that is not an ancestor", "pid {b} (task) is in session {sid}, and its parent pid {root} "
     "(task) in session 7; no ancestor between it and the session it was created in called setsid()"),
    ("dead session with members under two parents", "is in session {x}, whose leader is dead, as are children of "
     "pid {root}"),
    ("created in two sessions", "pid {sid} (task) would have to be created in both session"),
    ("dead group in two sessions", "is in process group {x}, whose leader is dead, in session"),
    ("group leader created later", "whose leader pid {b} (task) ckpt creates after it"),
    ("zombie with children", "has children"),
    ("stopped without a stop signal", "which is no stop signal"),
    ("root sharing with its parent", "the root pid {root} (task) is recorded sharing CLONE_FILES with its parent"),
    ("zombie sharing with its parent", "zombie pid {sid} (task) is recorded sharing CLONE_FS with its parent"),
    ("sharing what the builder cannot create", "pid {sid} (task) shares CLONE_VM with its parent, which ckpt cannot"),
    ("sharer created by a session helper", "pid {b} (task) shares CLONE_FS with its parent, but is created by the "
     "helper of a dead session leader"),
])
def test_shapes_the_builder_cannot_build_are_refused_by_name(case: str, reason: str) -> None:
    root, a, b, x = 1000, 1001, 1002, 1003
    tasks = [Rec(root, 1, 7, 7), Rec(a, root, 7, 7), Rec(b, root, 7, 7)]
    if case == "session of a task that is not an ancestor":
        tasks = [Rec(root, 1, 7, 7), Rec(a, root, a, a), Rec(b, root, 7, a)]
    elif case == "dead session with members under two parents":
        tasks = [Rec(root, 1, 7, 7), Rec(a, root, 7, 7), Rec(b, root, x, x), Rec(1004, a, x, x)]
    elif case == "created in two sessions":
        # a leads its session; its children b and c are in two other sessions, both dead: a
        # was created in one session only.
        tasks = [Rec(root, 1, 7, 7), Rec(x, root, x, x), Rec(a, x, a, a), Rec(b, a, x, x), Rec(1004, a, 7, 7)]
    elif case == "dead group in two sessions":
        tasks = [Rec(root, 1, 7, 7), Rec(a, root, x, 7), Rec(b, root, b, b), Rec(1004, b, x, b)]
    elif case == "group leader created later":
        tasks = [Rec(root, 1, 7, 7), Rec(a, root, b, 7), Rec(b, root, b, 7)]
    elif case == "zombie with children":
        tasks = [Rec(root, 1, 7, 7), Rec(a, root, 7, 7, state="zombie", exit_status=0), Rec(b, a, 7, 7)]
    elif case == "stopped without a stop signal":
        tasks[1] = Rec(a, root, 7, 7, state="stopped", stop_signal=signal.SIGTERM)
    elif case == "root sharing with its parent":
        tasks[0] = Rec(root, 1, 7, 7, shares=("CLONE_FILES",))
    elif case == "zombie sharing with its parent":
        tasks[1] = Rec(a, root, 7, 7, state="zombie", exit_status=0, shares=("CLONE_FS",))
    elif case == "sharing what the builder cannot create":
        tasks[1] = Rec(a, root, 7, 7, shares=("CLONE_VM",))
    elif case == "sharer created by a session helper":
        tasks[2] = Rec(b, root, x, x, shares=("CLONE_FS",))
    with pytest.raises(NotRestorable) as caught:
        pstree.check_shape(tasks)
    assert reason.format(x=x, sid=a, b=b, root=root) in str(caught.value)


def helper_tree() -> tuple[list[Rec], list[int]]:
    """Shapes that need helper tasks (criu/pstree.c prepare_pstree_ids), all under one root
    that leads nothing:
    - session ``dead_s``, whose leader is dead: two children of the root in it (one leading a
      group of its own, with a child), the root being a subreaper they were reparented to;
    - process group ``dead_g``, whose leader is dead: a live child of the root and a zombie
      child (zdtm zombie01's shape: a zombie whose group leader is gone);
    The pids of the two dead leaders come second.
    - ``leader`` called setsid() after creating ``early`` (in the root's session), and
      created ``late`` after; ``early`` leads a session of its own after creating ``earlier``
      (so ``leader`` and ``early`` both create a child before their setsid())."""
    (root_pid, dead_s, s_one, s_two, s_kid, dead_g, g_live, g_zombie, leader, early, late, earlier,
     inner) = free_pids(13)
    pg, sid = os.getpgrp(), os.getsid(0)
    return [
        Rec(root_pid, os.getpid(), pg, sid, comm="root"),
        Rec(s_one, root_pid, dead_s, dead_s),
        Rec(s_two, root_pid, s_two, dead_s),
        Rec(g_live, root_pid, dead_g, sid),
        Rec(g_zombie, root_pid, dead_g, sid, state="zombie", exit_status=0, comm="zt-zombie01"),
        Rec(leader, root_pid, leader, leader),
        Rec(s_kid, s_two, s_two, dead_s),
        Rec(early, leader, early, early),
        Rec(late, leader, leader, leader),
        Rec(earlier, early, pg, sid),
        Rec(inner, early, early, early),
    ], [dead_s, dead_g]


@pytest.mark.timeout(60)
def test_builder_makes_dead_leaders_sessions_and_groups_with_helpers(built: list[pstree.Built]) -> None:
    """A session and a process group whose leaders are dead, and tasks created before their
    parent's setsid(), are built as recorded (pid, parent, group, session of every task, the
    zombie's status); the helpers that made them are gone (reaped: their pids are free)."""
    tasks, helper_pids = helper_tree()
    tasks = in_pid_order(tasks)
    assert pstree.shape_reasons(tasks) == []
    the_plan = pstree.plan(tasks)[0]
    assert sorted(h.pid for h in the_plan.helpers) == sorted(helper_pids)
    pstree.check_pids(tasks)
    tree = pstree.build(tasks)
    built.append(tree)
    assert shape(tasks, tree.root) == expected(tasks)
    for pid in helper_pids:
        assert not os.path.exists(f"/proc/{pid}"), pid
    kids = sorted(int(line.split()[0]) for line in
                  open(f"/proc/{tree.root}/task/{tree.root}/children").read().split())
    assert kids == sorted(t.pid for t in tasks if t.ppid == tasks[0].pid)


@pytest.mark.timeout(60)
def test_helper_pid_taken_is_refused_by_name(built: list[pstree.Built]) -> None:
    """The pid a helper needs (the dead leader's) taken by a process: refused by name."""
    tasks, helper_pids = helper_tree()
    holder = os.fork()
    if holder == 0:  # pragma: no cover - a process holding a pid
        time.sleep(60)
        os._exit(0)
    try:
        tasks = in_pid_order([Rec(t.pid, t.ppid, holder if t.pgid == helper_pids[1] else t.pgid, t.sid,
                                  t.state, t.exit_status, comm=t.comm) for t in tasks])
        with pytest.raises(TargetError, match=f"pid {holder} \\(the helper for the dead leader of process group "
                                              f"{holder}\\) is taken by a running process"):
            pstree.check_pids(tasks)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


@pytest.mark.timeout(60)
def test_tree_dies_with_its_builder_parent(built: list[pstree.Built]) -> None:
    """No task outlives the task that created it (PR_SET_PDEATHSIG in every task): killing
    the root kills the whole tree, down to the grandchildren."""
    tasks = in_pid_order(a_tree())
    tree = pstree.build(tasks)
    built.append(tree)
    os.kill(tree.root, signal.SIGKILL)
    os.waitpid(tree.root, 0)
    assert_all_gone(tasks[1:])


def assert_all_gone(tasks: list[pstree.TaskRecord], timeout: float = 10) -> None:
    """Within ``timeout``, no pid of ``tasks`` exists any more."""
    deadline = time.monotonic() + timeout
    left = tasks
    while left and time.monotonic() < deadline:
        left = [t for t in left if os.path.exists(f"/proc/{t.pid}")]
        time.sleep(0.01)
    assert left == []


@pytest.mark.timeout(60)
def test_a_task_that_cannot_set_itself_up_fails_the_build_by_name_and_kills_the_tree(
        built: list[pstree.Built]) -> None:
    """The error a task's own setup raises (as its CkptError class, naming the task) ends the
    build, and no task of the tree is left: those built already die with their parents."""
    tasks = in_pid_order(a_tree())
    failing = next(t for t in tasks if t.ppid != tasks[0].pid and t is not tasks[0])   # a grandchild

    def setup(task: pstree.TaskRecord, keep: set[int]) -> list[str]:
        if task.pid == failing.pid:
            raise TargetError("cannot open its files")
        return [f"set up {task.pid}"]

    with pytest.raises(TargetError, match=f"^restore of pid {failing.pid} \\(task\\): cannot open its files$"):
        pstree.build(tasks, setup=setup)
    assert_all_gone(tasks[1:])


@pytest.mark.timeout(60)
def test_notes_of_each_task_reach_ckpt(built: list[pstree.Built]) -> None:
    tasks = in_pid_order(a_tree())
    tree = pstree.build(tasks, setup=lambda task, keep: [f"set up {task.pid}"], finish=lambda task: ["finished"])
    built.append(tree)
    assert tree.notes == {t.pid: [f"set up {t.pid}", "finished"] for t in tasks if t.state != "zombie"}


def sharing_tree() -> list[Rec]:
    """A root with a child sharing its fd table and its fs_struct, itself with a child sharing
    its table, and a child sharing nothing."""
    root_pid, sharer, inner, own = free_pids(4)
    pg, sid = os.getpgrp(), os.getsid(0)
    return in_pid_order([
        Rec(root_pid, os.getpid(), pg, sid, comm="root"),
        Rec(sharer, root_pid, pg, sid, shares=("CLONE_FS", "CLONE_FILES"), comm="sharer"),
        Rec(inner, sharer, pg, sid, shares=("CLONE_FILES",), comm="inner"),
        Rec(own, root_pid, pg, sid, comm="own"),
    ])


@pytest.mark.timeout(60)
def test_builder_creates_children_sharing_what_they_shared(built: list[pstree.Built]) -> None:
    """Each task recorded sharing its parent's fd table or fs_struct is created with the flag
    (kcmp says they share it); the others are not; the builder's own fds are not left in
    the shared table (the sharers close none of them: the parent does)."""
    from ckpt._sys.kcmp import KCMP_FILES, KCMP_FS, kcmp_task

    tasks = sharing_tree()
    before = set(os.listdir("/proc/self/fd"))   # what the root inherits (no setup closes them)
    tree = pstree.build(tasks)
    built.append(tree)
    root, sharer, inner, own = (tree.pids[t.pid] for t in sorted(tasks, key=lambda t: ("root", "sharer", "inner",
                                                                                         "own").index(t.comm)))
    assert kcmp_task(root, sharer, KCMP_FILES) == 0 and kcmp_task(root, sharer, KCMP_FS) == 0
    assert kcmp_task(sharer, inner, KCMP_FILES) == 0 and kcmp_task(sharer, inner, KCMP_FS) != 0
    assert kcmp_task(root, own, KCMP_FILES) != 0 and kcmp_task(root, own, KCMP_FS) != 0
    assert set(os.listdir(f"/proc/{root}/fd")) <= before


@pytest.mark.timeout(60)
def test_a_sharer_that_cannot_set_itself_up_fails_the_build_by_name(built: list[pstree.Built]) -> None:
    """A task sharing its parent's fd table leaves the done pipe open in the table when it
    dies: its parent sees its exit instead of an end of file, and the build fails by name."""
    tasks = sharing_tree()
    failing = next(t for t in tasks if t.comm == "inner")

    def setup(task: pstree.TaskRecord, keep: set[int]) -> list[str]:
        if task.pid == failing.pid:
            raise TargetError("cannot open its files")
        return []

    with pytest.raises(TargetError, match=f"^restore of pid {failing.pid} \\(inner\\): cannot open its files$"):
        pstree.build(tasks, setup=setup)
    assert_all_gone(tasks[1:])

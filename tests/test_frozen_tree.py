"""FrozenTree (ckpt/live/tree.py): a process and every descendant frozen together.

Real trees: zdtm_tree (a child with a grandchild, a group leader, a session leader,
two zombies, a stopped child; it checks itself once woken) and tree_forker (fans,
a tree that forks without end, and the shapes ckpt must refuse).  While frozen,
every live task sits in a ptrace stop of ckpt's tracer; after the thaw every task
is as it was and zdtm_tree still passes its own checks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt import errors, procfs
from ckpt._sys import ptrace as pt
from ckpt.live.freeze import FrozenProcess, FrozenThread
from ckpt.live.tree import FrozenTree
from helpers import Target
from test_trees import Tree, assert_as_it_was, assert_runs_to_the_end, set_up, tree  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def state(pid: int) -> str:
    return procfs.read_stat(pid).state


def assert_all_frozen(frozen: FrozenTree) -> None:
    """Every live task (every thread) in a ptrace stop of the tree's one tracer; zombies untouched."""
    tracers = set()
    for pid, task in frozen.tasks.items():
        if task.state == "zombie":
            assert state(pid) == "Z" and procfs.read_status(pid).tracer_pid == 0, pid
            assert pid not in frozen.processes
            continue
        for tid in procfs.list_threads(pid):
            assert procfs.read_stat(tid).state == "t", (pid, tid)
            tracers.add(procfs.read_status(tid).tracer_pid)
    assert len(tracers) == 1 and 0 not in tracers, tracers


def assert_order(frozen: FrozenTree) -> None:
    """Root first, parents before children, siblings by pid, every task once."""
    assert frozen.order[0] == frozen.root and sorted(frozen.order) == sorted(frozen.tasks)
    seen: set[int] = set()
    for pid in frozen.order:
        task = frozen.tasks[pid]
        assert pid == frozen.root or task.ppid in seen, (pid, task.ppid)
        seen.add(pid)
    for parent in frozen.order:
        siblings = [pid for pid in frozen.order if frozen.tasks[pid].ppid == parent and pid != frozen.root]
        assert siblings == sorted(siblings), siblings


def test_every_task_is_frozen_at_once_and_recorded_as_it_is(tree: Callable[..., Tree]) -> None:
    """zdtm_tree: all live tasks stopped together; pid, ppid, group, session, state,
    wait status, stop signal, start time and name of every task as /proc says; after
    the thaw each task is as it was (state, group, session, signals, wait status, not
    traced) and the tree passes its own checks (its zombies reapable with their
    statuses, the stopped child stopped with its report still due, memory intact)."""
    started = tree()
    before = set_up(started.pids)
    names = {pid: name for name, pid in started.pids.items()}

    with FrozenTree(started.target.pid) as frozen:
        assert_all_frozen(frozen)
        assert sorted(frozen.tasks) == sorted(started.pids.values())
        assert_order(frozen)
        for pid, task in frozen.tasks.items():
            was = before[names[pid]]
            assert (task.pid, task.ppid, task.pgid, task.sid, task.start_time, task.comm) == \
                (pid, was.ppid, was.pgrp, was.session, was.start_time, was.comm), names[pid]
        states = {names[pid]: (t.state, t.exit_status, t.stop_signal) for pid, t in frozen.tasks.items()}
        assert states == {
            "root": ("alive", None, None), "zt-parent": ("alive", None, None),
            "zt-grandchild": ("alive", None, None), "zt-group": ("alive", None, None),
            "zt-session": ("alive", None, None), "zt-exit42": ("zombie", 42 << 8, None),
            "zt-killed": ("zombie", signal.SIGTERM, None), "zt-stopped": ("stopped", None, signal.SIGSTOP)}
        live = {pid for pid, t in frozen.tasks.items() if t.state != "zombie"}
        assert set(frozen.processes) == live
        for pid, proc in frozen.processes.items():
            assert proc.pid == pid and sorted(proc.threads) == procfs.list_threads(pid)
            assert proc.regs().rip and proc.freeze_time == frozen.freeze_time
        assert 0 < frozen.freeze_time < 5

    assert_as_it_was(started.pids, before)
    assert_runs_to_the_end(started, 0, ["PASS"])


def test_a_second_freeze_finds_every_register_as_the_first_left_it(tree: Callable[..., Tree]) -> None:
    """The thaw changes no register or signal mask of any thread (each live task sleeps
    in pause() or is stopped: it is where it was), and uses no fd in any task."""
    started = tree()
    before = set_up(started.pids)
    fds = {name: sorted(os.listdir(f"/proc/{pid}/fd")) for name, pid in started.pids.items()
           if before[name].state != "Z"}

    def registers() -> dict[int, tuple[dict[str, int], int]]:
        with FrozenTree(started.target.pid) as frozen:
            return {tid: (pt.regs_to_dict(proc.regs(tid)), proc.sigmask(tid))
                    for proc in frozen.processes.values() for tid in proc.threads}

    first = registers()
    assert_as_it_was(started.pids, before)
    assert registers() == first
    assert {name: sorted(os.listdir(f"/proc/{started.pids[name]}/fd")) for name in fds} == fds
    assert_as_it_was(started.pids, before)
    assert_runs_to_the_end(started, 0, ["PASS"])


def test_thaw_stop_leaves_every_live_task_stopped(spawn: Callable[..., Target],
                                                  programs: dict[str, Path]) -> None:
    target = spawn([programs["tree_forker"], "fan", "3"])
    with FrozenTree(target.pid) as frozen:
        pids = list(frozen.processes)
        assert len(pids) == 4
        frozen.thaw(stop=True)
    try:
        deadline = time.monotonic() + 5
        while {state(pid) for pid in pids} != {"T"} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {pid: state(pid) for pid in pids} == dict.fromkeys(pids, "T")
        assert all(procfs.read_status(pid).tracer_pid == 0 for pid in pids)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_kill_leaves_nothing_running(tree: Callable[..., Tree]) -> None:
    """kill(): SIGKILL to every live task, each waited for: when it returns, no task of
    the tree runs (the root is a zombie for its parent, the test, to reap)."""
    started = tree()
    set_up(started.pids)
    with FrozenTree(started.target.pid) as frozen:
        live = set(frozen.processes)
        frozen.kill()
    left = {}
    for name, pid in started.pids.items():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            stat = procfs.read_stat(pid)
            if stat.start_time == started.start_times[pid] and stat.state not in ("Z", "X"):
                left[name] = stat.state
    assert left == {}
    assert state(started.target.pid) == "Z" and started.target.pid in live
    assert started.target.proc.wait(timeout=10) == -signal.SIGKILL
    assert started.left_behind() == {}


@pytest.mark.timeout(300)
def test_a_tree_that_forks_all_the_time_is_frozen_whole(spawn: Callable[..., Target],
                                                        programs: dict[str, Path]) -> None:
    """tree_forker churn: the root forks (and kills and reaps) without end, each child
    forks a grandchild.  Every freeze holds a consistent tree: every child of every
    frozen task is in it, frozen or a zombie, every task's parent too; forks caught
    mid-freeze (fork events) are adopted; after the thaw the tree forks on."""
    target = spawn([programs["tree_forker"], "churn", "6"])
    adopted = 0
    for _ in range(15):
        with FrozenTree(target.pid) as frozen:
            assert_all_frozen(frozen)
            assert_order(frozen)
            for pid, task in frozen.tasks.items():
                assert pid == frozen.root or task.ppid in frozen.tasks, task
                if task.state != "zombie":
                    assert set(procfs.read_children(pid)) <= set(frozen.tasks), pid
            assert len(frozen.tasks) >= 7   # the root, and a child and grandchild per family
            adopted += len(frozen.adopted)
            last = max(frozen.tasks)
        deadline = time.monotonic() + 10
        while max(procfs.read_children(target.pid), default=0) <= last and time.monotonic() < deadline:
            time.sleep(0.005)   # it forks on (pids grow until they wrap: rare enough)
        assert state(target.pid) in "RS"
    print(f"forks adopted through fork events in 15 freezes: {adopted}")


def test_a_fork_completed_while_the_interrupt_is_on_its_way_is_adopted(
        spawn: Callable[..., Target], programs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The root is seized, and interrupted only 20 ms later (a window a real freeze has
    for microseconds): the fork or clone it completes meanwhile stops it with a fork
    event, the new child arrives auto-attached, and the tree adopts it: frozen, in
    ``tasks`` as the root's child, released at the thaw like every other task."""
    target = spawn([programs["tree_forker"], "churn", "40"])
    seize_thread = FrozenProcess.seize_thread

    def late_interrupt(self: FrozenProcess, tid: int) -> FrozenThread | None:
        if tid != target.pid:
            return seize_thread(self, tid)
        pt.seize(tid, self.options)
        time.sleep(0.02)
        thread = self.threads[tid] = FrozenThread(tid)
        pt.interrupt(tid)
        return thread

    monkeypatch.setattr(FrozenProcess, "seize_thread", late_interrupt)
    for _ in range(3):
        with FrozenTree(target.pid) as frozen:
            assert_all_frozen(frozen)
            [new] = frozen.adopted
            assert frozen.tasks[new].ppid == target.pid and frozen.tasks[new].state == "alive"
            assert new in frozen.processes and state(new) == "t"
        # Released by the thaw (the detach is done when thaw returns).  The root kills and
        # reaps it after 40 more forks, which can come first on a busy machine.
        try:
            assert procfs.read_status(new).tracer_pid == 0
        except FileNotFoundError:
            pass


REFUSALS = {
    "traced": "is traced by pid",
    "clone-files-sibling": "share one fd table (CLONE_FILES), and neither got it from its parent",
    "clone-vm": "share memory (one mm) (CLONE_VM)",
    "clone-fs-sibling": "(CLONE_FS), and neither got it from its parent",
    "pidns": "is in another pid namespace",
}


@pytest.mark.parametrize("mode", sorted(REFUSALS))
def test_refused_by_name_and_released(spawn: Callable[..., Target], programs: dict[str, Path], mode: str) -> None:
    """What ckpt cannot freeze (traced by another tracer) or checkpoint (kernel objects
    shared between processes, another pid namespace) is refused by name (TargetError),
    and every task is left as it was: not stopped, not traced by ckpt."""
    target = spawn([programs["tree_forker"], mode])
    pids = [target.pid, *procfs.read_children(target.pid)]
    time.sleep(0.05)
    before = {pid: (state(pid), procfs.read_status(pid).tracer_pid) for pid in pids}
    assert len(pids) >= 2 and all(s in "SR" for s, _ in before.values()), before
    with pytest.raises(errors.TargetError) as raised:
        with FrozenTree(target.pid):
            pass
    message = str(raised.value)
    assert REFUSALS[mode] in message and "\n" not in message, message
    names = {pid: procfs.read_comm(pid) for pid in pids}
    assert any(f"{pid} ({names[pid]})" in message for pid in pids[1:]), message
    # Released, each task goes back to where it was (running for a moment on its way there).
    deadline = time.monotonic() + 5
    while (after := {pid: (state(pid), procfs.read_status(pid).tracer_pid) for pid in pids}) != before \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert after == before


@pytest.mark.parametrize("flag", ["CLONE_FS", "CLONE_FILES"])
def test_a_child_sharing_its_parents_fs_struct_or_fd_table_is_recorded(
        spawn: Callable[..., Target], programs: dict[str, Path], flag: str) -> None:
    """A child made by clone(CLONE_FS) or clone(CLONE_FILES) is frozen and recorded sharing
    its parent's cwd, root and umask or fd table (``TreeTask.shares``), which a restore
    gives back (tests/test_tree_clone.py)."""
    target = spawn([programs["tree_forker"], flag.lower().replace("_", "-")])
    [child] = procfs.read_children(target.pid)
    with FrozenTree(target.pid) as frozen:
        assert frozen.tasks[child].shares == (flag,)
        assert frozen.tasks[target.pid].shares == ()


def test_a_vfork_parent_is_refused_at_once(spawn: Callable[..., Target], programs: dict[str, Path]) -> None:
    """A vfork parent cannot be stopped until its child execs or exits: refused by name
    without waiting for the freeze timeout, and released."""
    target = spawn([programs["vfork_parent"], "3"])
    deadline = time.monotonic() + 5
    while state(target.pid) != "D" and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    with pytest.raises(errors.TargetError) as raised:
        with FrozenTree(target.pid, timeout=20):
            pass
    assert time.monotonic() - started < 2
    assert f"pid {target.pid} (vfork_parent)" in str(raised.value) and "vfork parent" in str(raised.value)
    assert not isinstance(raised.value, errors.FreezeTimeout)
    assert procfs.read_status(target.pid).tracer_pid == 0
    assert target.readline(10) == "done"   # it went on once its child exited


FREEZER = """
import sys, time
from ckpt.live.tree import FrozenTree
with FrozenTree(int(sys.argv[1])) as frozen:
    print("frozen", *frozen.processes, flush=True)
    time.sleep(600)
"""


def test_sigkill_of_the_freezer_leaves_the_tree_running(tree: Callable[..., Tree]) -> None:
    """ckpt SIGKILLed while the tree is frozen: the kernel detaches every task (the
    tracer exits), the stopped child stays stopped, and the tree passes its checks."""
    started = tree()
    before = set_up(started.pids)
    freezer = subprocess.Popen([sys.executable, "-c", FREEZER, str(started.target.pid)], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")
    try:
        assert freezer.stdout is not None
        words = freezer.stdout.readline().split()
        assert words[0] == "frozen", words
        frozen = [int(w) for w in words[1:]]
        assert sorted(frozen) == sorted(pid for name, pid in started.pids.items() if before[name].state != "Z")
        assert {pid: state(pid) for pid in frozen} == dict.fromkeys(frozen, "t")
    finally:
        freezer.kill()
        freezer.wait(timeout=30)
    assert_as_it_was(started.pids, before)
    assert_runs_to_the_end(started, 0, ["PASS"])

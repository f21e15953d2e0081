"""Process trees (issue 9, stage 1): the self-checking target, and a dump that touches
only the root leaving the whole tree as it was.

``zdtm_tree`` forks a small tree (a child with a grandchild, a group leader, a session
leader, two zombies, a stopped child) and checks it from the inside on SIGUSR1: its
recorded pids still its children, the zombies reapable with their statuses, the stopped
child stopped, groups and sessions as set up, each process's private memory.  A dump
records the whole tree and must leave every task of it exactly as it was (no stop
continued, no zombie reaped, nothing left traced); ``dump --kill`` and ``restore`` bring
it back, same shape, and it passes its own checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ckpt import errors, procfs, pstree
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import Target, run_ckpt
from test_restore import Profile, Restore, restoring, run_to_end

CHILDREN = ("zt-parent", "zt-group", "zt-session", "zt-exit42", "zt-killed", "zt-stopped")
NAMES = (*CHILDREN, "zt-grandchild")


@dataclass(frozen=True)
class Task:
    """What a dump must leave as it was, of one task of the tree (/proc/PID/stat, status)."""

    comm: str
    state: str          # R/S alive, Z zombie, T stopped
    ppid: int
    pgrp: int
    session: int
    start_time: int     # the same process, not a reused pid
    exit_code: int      # a zombie's wait status (stat field 52)
    tracer_pid: int
    sig_pnd: int
    shd_pnd: int
    sig_blk: int


def task(pid: int) -> Task:
    stat, status = procfs.read_stat(pid), procfs.read_status(pid)
    return Task(comm=stat.comm, state=stat.state, ppid=stat.ppid, pgrp=stat.pgrp, session=stat.session,
                start_time=stat.start_time, exit_code=stat.exit_code, tracer_pid=status.tracer_pid,
                sig_pnd=status.sig_pnd, shd_pnd=status.shd_pnd, sig_blk=status.sig_blk)


def snapshot(pids: dict[str, int]) -> dict[str, Task]:
    return {name: task(pid) for name, pid in pids.items()}


def children_by_name(pid: int) -> dict[str, int]:
    return {procfs.read_comm(child): child for child in procfs.read_children(pid)}


class Tree:
    """A running zdtm_tree: the root's Target and the pid of every task, by name.

    Each task is also held by a pidfd, so that teardown can SIGKILL exactly these
    processes (never a reused pid), whatever state the test left them in."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pids = {"root": target.pid, **children_by_name(target.pid)}
        assert sorted(self.pids) == sorted(("root", *CHILDREN)), self.pids
        grandchildren = children_by_name(self.pids["zt-parent"])
        assert list(grandchildren) == ["zt-grandchild"], grandchildren
        self.pids.update(grandchildren)
        self.start_times = {pid: procfs.start_time(pid) for pid in self.pids.values()}
        self.pidfds = {name: os.pidfd_open(pid) for name, pid in self.pids.items() if name != "root"}

    def kill(self) -> None:
        """SIGKILL every task (the root's children die with it anyway: PR_SET_PDEATHSIG)."""
        for pidfd in self.pidfds.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        self.target.kill()
        for pidfd in self.pidfds.values():
            os.close(pidfd)
        self.pidfds.clear()

    def left_behind(self, timeout: float = 10) -> dict[str, str]:
        """The tasks still there (name -> state letter), once ``timeout`` has passed."""
        deadline = time.monotonic() + timeout
        while True:
            left = {}
            for name, pid in self.pids.items():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    stat = procfs.read_stat(pid)
                    if stat.start_time == self.start_times[pid]:
                        left[name] = stat.state
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)


@pytest.fixture
def tree(spawn: Callable[..., Target], programs: dict[str, Path]) -> Iterator[Callable[..., Tree]]:
    """tree(*flags) -> a started zdtm_tree; every task of it is killed at teardown."""
    trees: list[Tree] = []

    def start(*flags: str) -> Tree:
        started = Tree(spawn([programs["zdtm_tree"], *flags]))
        trees.append(started)
        return started

    try:
        yield start
    finally:
        for started in trees:
            started.kill()


def assert_runs_to_the_end(started: Tree, rc: int, lines: list[str]) -> None:
    assert run_to_end(started.target) == (rc, lines)
    # The root reaped everything it started: no task of the tree is left, not even a zombie.
    assert started.left_behind() == {}


SET_UP = {"root": "S", "zt-parent": "S", "zt-grandchild": "S", "zt-group": "S", "zt-session": "S",
          "zt-exit42": "Z", "zt-killed": "Z", "zt-stopped": "T"}


def set_up(pids: dict[str, int], timeout: float = 10) -> dict[str, Task]:
    """The snapshot of the tree once it is the one zdtm_tree.c describes (each live task
    asleep in pause(): it may still be on its way there just after "ready"), checked, so
    that "unchanged" means something."""
    deadline = time.monotonic() + timeout
    while True:
        before = snapshot(pids)
        states = {name: t.state for name, t in before.items()}
        if states == SET_UP or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert states == SET_UP, states
    root = before["root"]
    assert os.WEXITSTATUS(before["zt-exit42"].exit_code) == 42
    assert os.WTERMSIG(before["zt-killed"].exit_code) == signal.SIGTERM
    for name, t in before.items():
        leader = pids[name] if name in ("zt-group", "zt-session") else root.pgrp
        assert (t.pgrp, t.session) == (leader, pids[name] if name == "zt-session" else root.session), name
        assert t.tracer_pid == 0, name
    return before


def assert_as_it_was(pids: dict[str, int], before: dict[str, Task], timeout: float = 5) -> None:
    """Every task is as it was before the dump (given the time to get back into pause():
    a task on its way there is R for a moment)."""
    deadline = time.monotonic() + timeout
    while (after := snapshot(pids)) != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert after == before


def test_target_passes_without_a_checkpoint_and_fails_when_damaged(tree: Callable[..., Tree]) -> None:
    """The self-check itself: untouched it passes; a zombie reaped early and a live child
    killed make exactly those two checks fail; and either way nothing is left behind."""
    assert_runs_to_the_end(tree(), 0, ["PASS"])
    damaged = tree("-c")
    rc, lines = run_to_end(damaged.target)
    assert rc == 1 and len(lines) == 2, lines
    assert lines[0].startswith(f"FAIL: zt-exit42 (pid {damaged.pids['zt-exit42']}): cannot be reaped"), lines
    assert lines[1].startswith(f"FAIL: zt-session (pid {damaged.pids['zt-session']}): killed by signal 9"), lines
    assert damaged.left_behind() == {}


def assert_recorded(started: Tree, before: dict[str, Task], images_dir: Path, checkpoint: int) -> None:
    """The checkpoint holds the whole tree as it was: each task with its parent, group,
    session, state, a zombie's wait status, the stopped one's signal; each live task's
    own checkpoint with its own threads and memory; fds 0-2 of every child inherited."""
    from ckpt.image import ImageDir

    cp = ImageDir(images_dir).checkpoint(checkpoint)
    by_pid = {t.pid: t for t in cp.tree}
    names = {pid: name for name, pid in started.pids.items()}
    assert [names[t.pid] for t in cp.tree][0] == "root" and set(by_pid) == set(names)
    states = {"S": "alive", "Z": "zombie", "T": "stopped"}
    for name, was in before.items():
        t = by_pid[started.pids[name]]
        assert (t.ppid, t.pgid, t.sid, t.state, t.start_time) == (
            was.ppid, was.pgrp, was.session, states[was.state], was.start_time), name
        assert t.exit_status == (was.exit_code if was.state == "Z" else None), name
        assert t.stop_signal == (signal.SIGSTOP if was.state == "T" else None), name
        if name != "root" and was.state != "Z":
            assert {fd for fd, parent_fd in t.inherited if fd == parent_fd} >= {0, 1, 2}, (name, t.inherited)
        assert t.shared_with == (), name
    seen = set()
    for t in cp.tree:
        assert t.ppid in seen or t.pid == cp.pid, "a parent comes before its children"
        seen.add(t.pid)
        if t.state == "zombie":
            continue
        task_cp = cp.task(t.pid)
        assert task_cp.pid == t.pid and task_cp.state.target.pid == t.pid
        assert [th.tid for th in task_cp.state.threads] == [t.pid]
        assert task_cp.pages_present > 0


@pytest.mark.timeout(180)
def test_plain_dumps_of_a_tree_leave_it_as_it_was(tree: Callable[..., Tree], images_dir: Path) -> None:
    """Two dumps without --kill (a full one, then an incremental one with the root
    tracked in between): each records the whole tree, restorable, and is transparent:
    every task keeps its state, group, session, pending and blocked signals and wait
    status, none is left traced, and the tree still passes its own checks."""
    started = tree()
    before = set_up(started.pids)
    for kind in ("full", "incremental"):
        result = run_ckpt("dump", "--pid", started.target.pid, "-D", images_dir, "--json", timeout=150)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["kind"] == kind and report["restorable"] is True, report["unrestorable"]
        assert report["processes"] == len(NAMES) + 1, report
        assert_as_it_was(started.pids, before)
        # Every live task is tracked as the root is: the second dump of each is incremental.
        from ckpt.image import ImageDir

        cp = ImageDir(images_dir).checkpoint(report["id"])
        tasks = cp.tasks()
        assert [t.kind for t in tasks] == [kind] * 6, [(t.pid, t.kind) for t in tasks]
        assert all(t.parent == cp.parent for t in tasks) and all(t.state.tracking.armed for t in tasks)
        if kind == "incremental":
            assert all(t.pages_stored < t.pages_present // 4 for t in tasks), [(t.pages_stored, t.pages_present)
                                                                            for t in tasks]
        assert_recorded(started, before, images_dir, report["id"])
    verify = run_ckpt("verify", images_dir, timeout=60)
    assert verify.returncode == 0, verify.stderr
    inspect = run_ckpt("inspect", images_dir, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    assert f"a tree of {len(NAMES) + 1} processes: {started.target.pid} (zdtm_tree)" in inspect.stdout, inspect.stdout
    assert_runs_to_the_end(started, 0, ["PASS"])


SHARING = r"""
import ctypes, os, signal
# Two children: the first dups its stdin to fd 7 (the parent's fd 0, at another number);
# both keep one pipe that the parent then closes: a description two siblings share, not
# through their parent.
r, w = os.pipe()
kids = []
for n in range(2):
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG: nothing outlives the test
        if n == 0:
            os.dup2(0, 7)
        signal.pause()
        os._exit(0)
    kids.append(pid)
os.close(r)
os.close(w)
print("ready", os.getpid(), *kids, flush=True)
signal.pause()
"""


@pytest.mark.timeout(120)
def test_open_files_shared_in_a_tree_are_recorded_and_sharing_outside_the_fork_line_handed_down(
        spawn: Callable[..., Target], images_dir: Path) -> None:
    """kcmp across processes: a child's fd that is its parent's description (inherited,
    even at another number) is recorded with the parent's fd; a pipe two siblings share
    after their parent closed it is recorded as shared with the first, and no longer
    refused (ckpt/files/handdown.py; restored in tests/test_tree_files.py)."""
    import sys

    class Sharing(Target):
        def wait_ready(self, timeout: float = 60) -> Target:
            words = self.readline(timeout).split()
            assert words[:2] == ["ready", str(self.pid)], words
            self.kids = [int(w) for w in words[2:]]
            return self

    started = spawn([sys.executable, "-c", SHARING], cls=Sharing)
    first, second = started.kids
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--json", timeout=100)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    from ckpt.image import ImageDir

    tree = {t.pid: t for t in ImageDir(images_dir).checkpoint(report["id"]).tree}
    assert (7, 0) in tree[first].inherited and (0, 0) in tree[first].inherited, tree[first]
    assert tree[first].shared_with == ()
    pipe_fds = {fd for fd, _pid, _fd in tree[second].shared_with}
    assert len(pipe_fds) == 2 and {pid for _fd, pid, _ in tree[second].shared_with} == {first}, tree[second]
    # (The first child's fd 7, the harness's stdin pipe, is refused: its writer is outside the tree.)
    assert not [r for r in report["unrestorable"] if f"pid {second}: fd" in r or "not through their parents" in r], \
        report["unrestorable"]


# -- restore ------------------------------------------------------------------------------------


def dump_kill(started: Tree, images_dir: Path, dumps_before: int = 0) -> dict[str, Task]:
    """``dump --kill`` of a set-up tree (after ``dumps_before`` plain dumps: then every task's
    last checkpoint is incremental); returns its snapshot from before, once every task of the
    original tree is gone (the root reaped; init reaps what it left)."""
    before = set_up(started.pids)
    for _ in range(dumps_before):
        result = run_ckpt("dump", "--pid", started.target.pid, "-D", images_dir, timeout=150)
        assert result.returncode == 0, result.stderr
    result = run_ckpt("dump", "--pid", started.target.pid, "-D", images_dir, "--kill", timeout=150)
    assert result.returncode == 0, result.stderr
    started.target.proc.wait(timeout=30)
    assert started.left_behind() == {}
    return before


def comparable(tasks: dict[str, Task], root: int) -> dict[str, tuple[str, int, int, int, int]]:
    """(state, ppid, pgid, sid, zombie's wait status) per task, the root's own pid written as "root" (-1)."""
    def name(pid: int) -> int:
        return -1 if pid == root else pid

    return {n: (t.state, name(t.ppid) if n != "root" else 0, name(t.pgrp), name(t.session), t.exit_code)
            for n, t in tasks.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dumps_before", [0, 2], ids=["full", "incremental"])
def test_dump_kill_and_restore_of_a_tree_passes_its_own_checks(
        tree: Callable[..., Tree], images_dir: Path, tmp_path: Path, dumps_before: int) -> None:
    """The whole tree comes back from ``dump --kill``: every task but the root with its
    recorded pid and parent, groups and sessions as they were (the root's, which it does
    not lead, are ckpt restore's), the zombies unreaped with their statuses, the stopped
    child stopped (from a full checkpoint, and from a chain whose last checkpoint of every
    task is incremental); then the tree's own checks pass -- the root reaps its zombies
    (waitpid of the recorded pids), sees the stop, and each child checks itself."""
    started = tree()
    expected = Profile.of(started.target.pid)
    before = dump_kill(started, images_dir, dumps_before)
    with restoring(images_dir, tmp_path, expected) as run:
        root = run.pid
        assert root is not None
        deadline = time.monotonic() + 10
        while True:
            after = snapshot({**started.pids, "root": root})
            if {n: t.state for n, t in after.items()} == SET_UP or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        want = comparable(before, started.target.pid)
        got = comparable(after, root)
        # The root, restored as ckpt restore's child, is in ckpt's group and session, and so
        # are the children that were in the root's.
        ckpt_group, ckpt_session = os.getpgid(run.proc.pid), os.getsid(run.proc.pid)
        for name, (state, ppid, pgid, sid, status) in want.items():
            if pgid == before["root"].pgrp:
                pgid = ckpt_group
            if sid == before["root"].session:
                sid = ckpt_session
            want[name] = (state, ppid, pgid, sid, status)
        assert got == want
        assert all(t.tracer_pid == 0 for t in after.values()), after
        rc = run.go()
        lines = run.output()
        assert rc == 0 and lines == ["PASS"], run.explain()
    assert started.left_behind() == {}


@pytest.mark.timeout(300)
def test_restore_of_a_tree_refuses_a_taken_pid_by_name_and_creates_nothing(
        tree: Callable[..., Tree], images_dir: Path, tmp_path: Path) -> None:
    """A recorded pid of the tree that another process has now: the restore is refused,
    naming the pid, the task and the holder, before any task is created."""
    started = tree()
    dump_kill(started, images_dir)
    wanted = started.pids["zt-grandchild"]
    holder = pstree.clone_with_pid(wanted)
    if holder == 0:  # pragma: no cover - a process holding the grandchild's pid
        time.sleep(120)
        os._exit(0)
    try:
        run = Restore(images_dir, tmp_path)
        try:
            rc = run.wait(120)
            err = run.ckpt_err.read_text()
            assert rc == errors.TargetError.exit_code, run.explain()
            assert err.startswith("ckpt: ") and err.count("\n") == 1, err
            assert f"pid {wanted} (zt-grandchild) is taken by a running process (python" in err, err
            assert [name for name, pid in started.pids.items()
                    if name != "root" and os.path.exists(f"/proc/{pid}") and pid != holder] == []
        finally:
            run.close()
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


def _traced_by(pid: int, tracer: int) -> bool:
    with contextlib.suppress(OSError):
        return procfs.read_status(pid).tracer_pid == tracer
    return False


@pytest.mark.timeout(300)
@pytest.mark.parametrize("instant", ["building", "rebuilding"])
def test_ckpt_killed_mid_restore_leaves_no_task_of_the_tree(
        instant: str, tree: Callable[..., Tree], images_dir: Path, tmp_path: Path) -> None:
    """ckpt SIGKILLed while the tasks build the tree (the first task with its recorded pid
    exists, none is traced yet), or while it rebuilds them (a task traced by ckpt): every
    task of the new tree dies (PR_SET_PDEATHSIG down the tree, PTRACE_O_EXITKILL)."""
    started = tree()
    dump_kill(started, images_dir)
    recorded = [pid for name, pid in started.pids.items() if name != "root"]
    run = Restore(images_dir, tmp_path)
    try:
        deadline = time.monotonic() + 60
        caught = False
        while not caught and run.proc.poll() is None and time.monotonic() < deadline:
            if instant == "building":
                caught = any(os.path.exists(f"/proc/{pid}") for pid in recorded)
            else:
                caught = any(_traced_by(pid, run.proc.pid) for pid in recorded)
            if caught:
                run.proc.kill()
        assert caught, "the restore was not caught " + instant + run.explain()
        run.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        left = recorded
        while left and time.monotonic() < deadline:
            left = [pid for pid in recorded if os.path.exists(f"/proc/{pid}")]
            time.sleep(0.01)
        assert left == [], {pid: procfs.read_comm(pid) for pid in left if os.path.exists(f"/proc/{pid}")}
    finally:
        run.close()


SHARED_MEMORY = r"""
import ctypes, mmap, os, signal
# mmap.mmap(-1, n) is MAP_SHARED|MAP_ANONYMOUS: parent and child write one buffer.
buf = mmap.mmap(-1, 1 << 20)
memfd = os.memfd_create("both")
os.ftruncate(memfd, 1 << 16)
mapped = mmap.mmap(memfd, 1 << 16)   # MAP_SHARED of the memfd, in both after the fork
kid = os.fork()
if kid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    buf[:5] = b"child"
    signal.pause()
    os._exit(0)
print("ready", os.getpid(), kid, flush=True)
signal.pause()
"""


@pytest.mark.timeout(120)
def test_a_memfd_shared_between_processes_of_a_tree_is_restorable(
        spawn: Callable[..., Target], images_dir: Path) -> None:
    """A memfd both map, and the MAP_SHARED buffer both map: neither is a reason any more
    (the memfd is made once and handed down, ckpt/files/handdown.py, tests/test_tree_programs.py;
    the buffer is restored shared, tests/test_tree_memory.py), so dump --kill kills."""
    import sys

    class Forked(Target):
        def wait_ready(self, timeout: float = 60) -> Target:
            words = self.readline(timeout).split()
            assert words[:2] == ["ready", str(self.pid)], words
            self.kid = int(words[2])
            return self

    started = spawn([sys.executable, "-c", SHARED_MEMORY], cls=Forked)
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=100)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"] and report["killed"], report["unrestorable"]
    assert not [r for r in report["unrestorable"] if r.startswith("memory shared between processes of the tree")]


@pytest.mark.timeout(300)
def test_dumps_of_a_tree_that_forks_and_kills_all_the_time_are_consistent(
        spawn: Callable[..., Target], programs: dict[str, Path], images_dir: Path) -> None:
    """tree_forker churn: children come and go between the running phase of a dump (which
    prepares and copies each task it sees) and the freeze (which decides what the tree is).
    Every dump succeeds; each checkpoint holds exactly the tasks of its tree, every one of
    them with its own checkpoint, parents before children; the chain verifies."""
    from ckpt.image import ImageDir

    target = spawn([programs["tree_forker"], "churn", "6"])
    for _ in range(6):
        result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--json", timeout=120)
        assert result.returncode == 0, result.stderr
        cp = ImageDir(images_dir).checkpoint(json.loads(result.stdout)["id"])
        assert cp.tree and cp.tree[0].pid == target.pid
        live = [t.pid for t in cp.tree if t.state != "zombie"]
        assert [t.pid for t in cp.tasks()] == live
        assert {t.pid for t in cp.tree} >= {t.ppid for t in cp.tree[1:]}
    verify = run_ckpt("verify", images_dir, timeout=120)
    assert verify.returncode == 0, verify.stderr


TCP_ACROSS = r"""
import os, signal, socket
server = socket.socket(socket.AF_INET6)
server.bind(("::", 0))           # the child connects over IPv4: one end's address is IPv4-mapped
server.listen(1)
port = server.getsockname()[1]
kid = os.fork()
if kid == 0:
    client = socket.create_connection(("127.0.0.1", port))
    signal.pause()
    os._exit(0)
conn, _ = server.accept()
print("ready", os.getpid(), kid, port, flush=True)
signal.pause()
"""


@pytest.mark.timeout(120)
def test_a_tcp_connection_between_two_tasks_is_refused_by_name(
        spawn: Callable[..., Target], images_dir: Path) -> None:
    """Each task's rebuild would resume its end while the other does not exist yet, and the
    first segment gets a reset (zdtm socket-tcp-local): without a network lock, refused --
    by name, before the kill, even with one end's address IPv4-mapped."""
    import sys

    class Pair(Target):
        def wait_ready(self, timeout: float = 60) -> Target:
            words = self.readline(timeout).split()
            assert words[:2] == ["ready", str(self.pid)], words
            self.kid, self.port = int(words[2]), int(words[3])
            return self

    started = spawn([sys.executable, "-c", TCP_ACROSS], cls=Pair)
    try:
        result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=100)
        assert result.returncode == errors.KillRefused.exit_code, result.stderr
        reasons = [r for r in json.loads(result.stdout)["unrestorable"] if "needs a network lock" in r]
        assert len(reasons) == 1 and f":{started.port} " in reasons[0] + " ", reasons
        assert f"pid {started.pid}" in reasons[0] and f"pid {started.kid}" in reasons[0], reasons
        assert started.alive() and os.path.exists(f"/proc/{started.kid}")
    finally:
        os.kill(started.kid, signal.SIGKILL)

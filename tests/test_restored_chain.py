"""A restored process keeps its chain (issue 10 items 2 and 3).

After ``ckpt restore`` of checkpoint K, ``ckpt dump`` of the restored process into the
same images directory is an incremental child of K (a branch when K is not the newest):
the restore armed write tracking before releasing the process and handed it to a holder
(ckpt/restoretracking.py).  Without a holder the dump is full, still K's child; a process
the restore did not make is refused as before.  And a process dumped into A then B says
so: B's dump says tracking moved, A's next dump says why it is full.

The target is zdtm_counter (tests/programs/zdtm_counter.c): it writes 8 pages of a
16 MiB buffer per 10 ms step and can check, on SIGUSR1, that its whole buffer is what its
counter says; a process restored from any checkpoint of the chain passes that check only
if every page of every link is right.  Restored processes are held by pidfd and killed at
the end of each test; holders end with their targets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import tracking
from helpers import REPO_ROOT, Target, ckpt_argv, ckpt_env, run_ckpt
from test_restore import (Profile, Restore, counter_state, kill_by_pidfd, signal_until_exit, state_or_gone,
                          wait_pidfd)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_IMAGE = 7       # ImageError: "holds checkpoints of another process"
STEP_PAGES = 8       # pages zdtm_counter writes per step
BUFFER_PAGES = 4096  # its buffer: a full dump stores at least these


def ckpt_json(*args: Any, timeout: float = 120) -> dict[str, Any]:
    result = run_ckpt(*args, "--json", timeout=timeout)
    assert result.returncode == 0, f"ckpt {' '.join(map(str, args))} exited {result.returncode}: {result.stderr!r}"
    return json.loads(result.stdout)


class Restored:
    """Restored processes of a test: by pidfd, killed at the end (detached ones are not our children)."""

    def __init__(self, images_dir: Path, workdir: Path) -> None:
        self.images_dir = images_dir
        self.workdir = workdir
        self.pidfds: dict[int, int] = {}
        self.attached: list[Restore] = []
        self.outputs: dict[int, Path] = {}   # detached processes' stdout
        self.n = 0

    def restore(self, checkpoint: int | None = None, *, attached: bool = False,
                expected: Profile | None = None, images_dir: Path | None = None) -> int:
        """Restore (the newest, or ``checkpoint``; of ``images_dir``, default the test's); the pid."""
        images_dir = images_dir or self.images_dir
        self.n += 1
        args = [] if checkpoint is None else ["--checkpoint", checkpoint]
        if attached:
            assert expected is not None
            run = Restore(images_dir, self.workdir, *args, name=f"restore-{self.n}")
            self.attached.append(run)
            pid = run.find(expected)
            self.pidfds[pid] = os.pidfd_open(pid)
            return pid
        out = self.workdir / f"restore-{self.n}.stdout"
        report = ckpt_json("restore", "-D", images_dir, "--detach", "--stdout", out, *args)
        pid = report["pid"]
        self.pidfds[pid] = os.pidfd_open(pid)
        self.outputs[pid] = out
        return pid

    def wait_running(self, pid: int, expected: Profile, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not (state_or_gone(pid) in ("R", "S") and Profile.of(pid) == expected):
            assert time.monotonic() < deadline, f"restored process {pid} is not running as expected"
            time.sleep(0.05)

    def check(self, pid: int) -> str:
        """SIGUSR1: the process checks its buffer against its counter; its PASS line."""
        assert signal_until_exit(self.pidfds[pid], 30), f"restored process {pid} did not exit on SIGUSR1"
        out = self.outputs.get(pid)
        if out is None:
            run = next(r for r in self.attached if r.pid == pid)
            run.wait(30)
            lines = run.output()
        else:
            lines = out.read_text().splitlines()
        assert lines and lines[-1].startswith("PASS"), f"restored process {pid} failed its check: {lines}"
        return lines[-1]

    def close(self) -> None:
        for pidfd in self.pidfds.values():
            with contextlib.suppress(OSError, RuntimeError):
                kill_by_pidfd(pidfd)
            os.close(pidfd)
        for run in self.attached:
            run.close()


@pytest.fixture
def restored(images_dir: Path, tmp_path: Path) -> Iterator[Restored]:
    r = Restored(images_dir, tmp_path)
    try:
        yield r
    finally:
        r.close()


def counter_in(images_dir: Path, checkpoint: int, counter_addr: int) -> int:
    cp = ckpt.ImageDir(images_dir).checkpoint(checkpoint)
    return int.from_bytes(cp.read_memory(counter_addr, 8), "little")


def start_chain(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path
                ) -> tuple[int, Profile]:
    """zdtm_counter dumped twice, the second time with --kill; (counter address, profile)."""
    target = spawn([programs["zdtm_counter"]])
    counter_addr, _, _ = counter_state(target)
    expected = Profile.of(target.pid)
    first = ckpt_json("dump", "-t", target.pid, "-D", images_dir)
    assert (first["id"], first["kind"]) == (1, "full")
    time.sleep(0.2)
    second = ckpt_json("dump", "-t", target.pid, "-D", images_dir, "--kill")
    assert (second["id"], second["kind"], second["parent"]) == (2, "incremental", 1)
    target.kill()
    return counter_addr, expected


def assert_incremental_child(report: dict[str, Any], parent: int, new_id: int, images_dir: Path,
                             counter_addr: int) -> None:
    """``report`` is an incremental child of ``parent`` storing about what the process wrote
    since: every page it wrote (8 per step), not much more, far less than a full dump."""
    assert report["kind"] == "incremental", f"the dump of a restored process is not incremental: {report}"
    assert (report["id"], report["parent"]) == (new_id, parent), report
    steps = counter_in(images_dir, new_id, counter_addr) - counter_in(images_dir, parent, counter_addr)
    assert 0 < steps * STEP_PAGES < BUFFER_PAGES // 2, f"the test wrote too much or nothing: {steps} steps"
    # Every page written since the restore is stored (a step half done at either end adds up to 8).
    assert steps * STEP_PAGES <= report["pages_copied"] <= (steps + 1) * STEP_PAGES + 128, (
        f"{steps} steps ({steps * STEP_PAGES} pages written) but {report['pages_copied']} pages stored")
    assert report["pages_copied"] < BUFFER_PAGES // 2


@needs_kernel
@pytest.mark.timeout(240)
@pytest.mark.parametrize("attached", [False, True], ids=["detach", "attached"])
def test_a_restored_process_keeps_its_chain_through_kill_restore_cycles(
        attached: bool, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
        restored: Restored) -> None:
    counter_addr, expected = start_chain(programs, spawn, images_dir)
    restored_id = 2
    for cycle in range(3):
        pid = restored.restore(attached=attached, expected=expected)
        restored.wait_running(pid, expected)
        listed = {t["target_pid"]: t for t in ckpt_json("track", "list")["tracked"]}
        assert pid in listed and listed[pid]["checkpoint_id"] == restored_id and listed[pid]["state"] == "consistent", (
            f"cycle {cycle}: no holder tracks the restored process for checkpoint {restored_id}: {listed}")
        time.sleep(0.25)
        report = ckpt_json("dump", "-t", pid, "-D", images_dir)
        assert_incremental_child(report, restored_id, restored_id + 1, images_dir, counter_addr)
        time.sleep(0.15)
        final = ckpt_json("dump", "-t", pid, "-D", images_dir, "--kill")
        assert (final["kind"], final["parent"], final["killed"]) == ("incremental", restored_id + 1, True), final
        assert wait_pidfd(restored.pidfds[pid], 10)
        restored_id += 2
    pid = restored.restore(attached=attached, expected=expected)
    assert restored.check(pid).startswith("PASS")
    assert run_ckpt("verify", images_dir).returncode == 0


@needs_kernel
@pytest.mark.timeout(180)
def test_a_branch_continues_the_restored_checkpoint_and_each_head_restores(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, restored: Restored) -> None:
    counter_addr, expected = start_chain(programs, spawn, images_dir)
    pid = restored.restore()
    time.sleep(0.2)
    ckpt_json("dump", "-t", pid, "-D", images_dir, "--kill")          # 3, parent 2
    # An older checkpoint restored, then dumped: a branch of checkpoint 1.
    old = restored.restore(1)
    restored.wait_running(old, expected)
    time.sleep(0.2)
    branch = ckpt_json("dump", "-t", old, "-D", images_dir)
    assert_incremental_child(branch, 1, 4, images_dir, counter_addr)
    assert any("branch" in n for n in branch["notes"]), branch["notes"]
    time.sleep(0.1)
    again = ckpt_json("dump", "-t", old, "-D", images_dir, "--kill")  # 5, parent 4: its own newest
    assert (again["kind"], again["parent"]) == ("incremental", 4), again
    # The first line's process, restored from 3, continues 3 although 4 and 5 are newer.
    first_line = restored.restore(3)
    restored.wait_running(first_line, expected)
    time.sleep(0.2)
    other = ckpt_json("dump", "-t", first_line, "-D", images_dir)
    assert_incremental_child(other, 3, 6, images_dir, counter_addr)
    assert restored.check(first_line).startswith("PASS")
    parents = {cp.id: cp.parent for cp in ckpt.ImageDir(images_dir).checkpoints}
    assert parents == {1: None, 2: 1, 3: 2, 4: 1, 5: 4, 6: 3}, parents
    assert run_ckpt("verify", images_dir).returncode == 0
    for head in (5, 6):
        pid = restored.restore(head)
        assert restored.check(pid).startswith("PASS"), f"the head of a branch, checkpoint {head}"


@needs_kernel
@pytest.mark.timeout(120)
def test_without_its_holder_the_dump_is_full_and_still_a_child(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, restored: Restored) -> None:
    start_chain(programs, spawn, images_dir)
    pid = restored.restore(1)
    assert run_ckpt("track", "stop", pid).returncode == 0
    report = ckpt_json("dump", "-t", pid, "-D", images_dir, "--kill")
    assert (report["kind"], report["parent"], report["id"]) == ("full", 1, 3), report
    assert any("full" in n and "holder" in n for n in report["notes"]), report["notes"]
    pid = restored.restore(3)
    assert restored.check(pid).startswith("PASS")


@needs_kernel
@pytest.mark.timeout(120)
def test_a_process_the_restore_did_not_make_is_still_refused(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path,
        restored: Restored) -> None:
    start_chain(programs, spawn, images_dir)
    stranger = spawn([programs["zdtm_counter"]])
    result = run_ckpt("dump", "-t", stranger.pid, "-D", images_dir)
    assert result.returncode == EXIT_IMAGE and "another process" in result.stderr, result
    # A process restored from another directory has no lineage in this one.
    other_dir = tmp_path / "other"
    ckpt_json("dump", "-t", stranger.pid, "-D", other_dir, "--kill")
    stranger.kill()
    from_other = restored.restore(images_dir=other_dir)
    result = run_ckpt("dump", "-t", from_other, "-D", images_dir)
    assert result.returncode == EXIT_IMAGE and "another process" in result.stderr, result
    assert len(ckpt.ImageDir(images_dir).checkpoints) == 2


def holders_of(pid: int) -> list[tracking.HolderProcess]:
    return [h for h in tracking.find_holders() if h.target_pid == pid]


@needs_kernel
@pytest.mark.timeout(240)
def test_a_restore_killed_at_any_point_leaves_no_holder_behind(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    _, expected = start_chain(programs, spawn, images_dir)
    # How long an attached restore takes until its process runs, to spread the kills over it.
    run = Restore(images_dir, tmp_path, name="timing")
    t0 = time.monotonic()
    try:
        run.find(expected)
        span = time.monotonic() - t0
    finally:
        run.close()
    outcomes = []
    for i, fraction in enumerate((0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)):
        out = tmp_path / f"killed-{i}.stdout"
        argv = ckpt_argv("restore", "-D", images_dir, "--stdout", out, "--stderr", tmp_path / "killed.stderr")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ckpt_env(), cwd=REPO_ROOT)
        seen: dict[int, int] = {}
        try:
            deadline = time.monotonic() + span * fraction
            while time.monotonic() < deadline:
                for child in _children(proc.pid):
                    if child not in seen:
                        with contextlib.suppress(OSError):
                            seen[child] = os.pidfd_open(child)
                time.sleep(0.005)
            proc.kill()
            proc.wait(timeout=30)
            time.sleep(0.5)
            # Whatever was left: a released process with a consistent holder, or nothing.
            holder_pids = {h.pid for h in tracking.find_holders()}
            for child, pidfd in seen.items():
                if child in holder_pids:
                    continue   # a holder ckpt started: looked at through its target
                alive = state_or_gone(child) not in ("Z", "X", "gone")
                holders = holders_of(child)
                if alive and holders and not any(h.attached for h in holders):
                    record, why = tracking.lookup(child)
                    assert record is not None and record.checkpoint_id == 2, (
                        f"kill at {fraction:.2f}: a holder of {child} without a consistent record ({why})")
                    outcomes.append("tracked")
                else:
                    deadline = time.monotonic() + 5
                    while holders_of(child) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert not holders_of(child), f"kill at {fraction:.2f}: a holder of {child} was left behind"
                    outcomes.append("alive" if alive else "gone")
        finally:
            _end(proc, seen)
    assert "tracked" in outcomes, outcomes   # the latest kills come after the hand-over


@needs_kernel
@pytest.mark.timeout(180)
def test_a_restore_killed_once_its_holder_started_leaves_none_behind(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """SIGKILL to ckpt restore the moment the holder of the process it restores appears (the
    process not released yet, or just released): the holder exits with ckpt -- unless the
    hand-over was complete by then, when it keeps a consistent record of a live process."""
    start_chain(programs, spawn, images_dir)
    caught = 0
    for attempt in range(6):
        argv = ckpt_argv("restore", "-D", images_dir, "--stdout", tmp_path / f"held-{attempt}.stdout")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=ckpt_env(), cwd=REPO_ROOT)
        seen: dict[int, int] = {}
        try:
            deadline = time.monotonic() + 60
            holder = None
            while holder is None and proc.poll() is None:
                assert time.monotonic() < deadline, "no holder appeared"
                for child in _children(proc.pid):
                    if child not in seen:
                        with contextlib.suppress(OSError):
                            seen[child] = os.pidfd_open(child)
                    found = holders_of(child)
                    if found:
                        holder = found[0]
                        break
            proc.kill()
            proc.wait(timeout=30)
            assert holder is not None, "the restore ended before its holder was seen"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(h.attached for h in tracking.find_holders(holder.target_pid)):
                time.sleep(0.05)
            left = tracking.find_holders(holder.target_pid)
            if left:
                # Killed after the hand-over: a detached holder, a consistent record, a live process.
                record, why = tracking.lookup(holder.target_pid)
                assert not any(h.attached for h in left) and record is not None and record.checkpoint_id == 2, (
                    f"attempt {attempt}: the holder of {holder.target_pid} outlived the killed restore ({why})")
                assert state_or_gone(holder.target_pid) in ("R", "S")
            else:
                assert tracking.lookup(holder.target_pid)[0] is None
                caught += holder.attached
        finally:
            _end(proc, seen)
        if caught >= 2:
            break
    assert caught, "no attempt killed the restore while its holder was attached"


@needs_kernel
@pytest.mark.timeout(120)
def test_a_restore_that_fails_after_arming_leaves_no_holder_and_no_origin(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step after the arming fails (made to, in ckpt's own code): the half-built process is
    killed, and neither its holder nor an origin record is left."""
    from ckpt.errors import CkptError, TargetError
    from ckpt.rebuild import Rebuilder
    from ckpt.restore import restore

    start_chain(programs, spawn, images_dir)
    armed: list[int] = []
    arm = Rebuilder.arm_tracking

    def arm_then_fail(self: Rebuilder) -> None:
        arm(self)
        armed.append(self.pid)
        deadline = time.monotonic() + 10   # its interpreter may still be starting
        while not holders_of(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holders_of(self.pid), f"the arming started no holder: {self.tracking.why_not if self.tracking else None}"
        raise TargetError("made to fail after arming")

    monkeypatch.setattr(Rebuilder, "arm_tracking", arm_then_fail)
    out = tmp_path / "failed.stdout"
    with pytest.raises(CkptError, match="made to fail"):
        restore(images_dir, stdout=out, stderr=out)
    assert armed
    assert not holders_of(armed[0]) and tracking.lookup(armed[0])[0] is None
    assert tracking.lookup_origin(armed[0]) is None
    assert not tracking.origin_path(armed[0]).exists()


def _end(proc: subprocess.Popen[bytes], seen: dict[int, int]) -> None:
    """Kill and reap a ckpt restore, and kill every process it made (held by pidfd)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pidfd in seen.values():
        with contextlib.suppress(OSError, RuntimeError):
            kill_by_pidfd(pidfd)
        os.close(pidfd)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# ---------------------------------------------------------------------------
# item 3: one process, two directories


@pytest.mark.timeout(120)
def test_dumping_into_a_second_directory_says_tracking_moved(
        programs: dict[str, Path], spawn: Callable[..., Target], tmp_path: Path) -> None:
    target = spawn([programs["zdtm_counter"]])
    a, b = tmp_path / "a", tmp_path / "b"
    ckpt_json("dump", "-t", target.pid, "-D", a)
    into_b = ckpt_json("dump", "-t", target.pid, "-D", b)
    assert into_b["kind"] == "full"
    moved = [n for n in into_b["notes"] if "tracking moves" in n]
    assert moved and str(a) in moved[0] and str(b) in moved[0] and "will be full" in moved[0], into_b["notes"]
    listed = {t["target_pid"]: t for t in ckpt_json("track", "list")["tracked"]}
    assert listed[target.pid]["images_dir"] == str(b), listed
    human = run_ckpt("track", "list").stdout
    assert str(b) in human, human
    again_b = ckpt_json("dump", "-t", target.pid, "-D", b)
    assert again_b["kind"] == "incremental" and not any("moves" in n for n in again_b["notes"]), again_b
    back_to_a = ckpt_json("dump", "-t", target.pid, "-D", a)
    assert back_to_a["kind"] == "full" and back_to_a["parent"] == 1, back_to_a
    why = [n for n in back_to_a["notes"] if n.startswith("this dump is full")]
    assert why and f"moved to {b}" in why[0], back_to_a["notes"]
    assert any("tracking moves" in n and str(a) in n for n in back_to_a["notes"]), back_to_a["notes"]
    # A renamed directory is still the one tracked (identity, not path).
    renamed = tmp_path / "a-renamed"
    os.rename(a, renamed)
    after_rename = ckpt_json("dump", "-t", target.pid, "-D", renamed)
    assert after_rename["kind"] == "incremental", after_rename


@needs_kernel
@pytest.mark.timeout(240)
def test_a_restored_tree_keeps_its_chain(programs: dict[str, Path], spawn: Callable[..., Target],
                                         images_dir: Path, restored: Restored) -> None:
    """zdtm_tree (a root, children, a grandchild, zombies, a stopped task): every live task of a
    restored tree continues its own sub-checkpoint incrementally (its pid is the recorded one)."""
    target = spawn([programs["zdtm_tree"]])
    ckpt_json("dump", "-t", target.pid, "-D", images_dir)
    ckpt_json("dump", "-t", target.pid, "-D", images_dir, "--kill")
    target.kill()
    restored_id = 2
    for cycle in range(2):
        pid = restored.restore()
        time.sleep(0.3)
        report = ckpt_json("dump", "-t", pid, "-D", images_dir, "--kill")
        assert (report["kind"], report["parent"], report["id"]) == ("incremental", restored_id, restored_id + 1), report
        cp = ckpt.ImageDir(images_dir).checkpoint(restored_id + 1)
        tasks = cp.tasks()
        assert len(tasks) > 3, tasks
        assert all(t.kind == "incremental" and t.parent == restored_id for t in tasks), (
            f"cycle {cycle}: not every task continued its chain: {[(t.pid, t.kind, t.parent) for t in tasks]}")
        # Nothing written since the restore but what the tasks' stacks and libc touch.
        assert report["pages_copied"] < 64 * len(tasks), report["pages_copied"]
        assert wait_pidfd(restored.pidfds[pid], 10)
        restored_id += 1
    pid = restored.restore()
    assert restored.check(pid) == "PASS"

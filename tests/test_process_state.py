"""Process state a restore used to drop without a word (issue 8, item 3, first part).

Interval timers (setitimer/alarm) and POSIX timers with their remaining times,
ids and signals; scheduling policy, RT priority and nice per thread; timer
slack per thread; the child-subreaper, THP-disable and dumpable flags;
oom_score_adj; loginuid.  Each is captured at dump and restored, or refused
by name.

Targets check themselves, in the manner of CRIU's zdtm (tests/programs/
zdtm_timers.c, zdtm_procstate.c): each is first dumped twice while it runs
(no --kill) and asked (SIGUSR2) whether anything changed -- a dump must be
invisible, an armed timer still fires on time -- then dumped with --kill,
restored, and told (SIGUSR1) to check everything again.

Images that are not root's may not ask for more than their owner could have
(ckpt/trust.py): an RT policy above the restorer's RLIMIT_RTPRIO, a nice value
below what RLIMIT_NICE allows, an oom_score_adj below the restorer's own, an
alarm-clock timer (CAP_WAKE_ALARM), or another user's loginuid.  Those tests
play the owner with the real second user (``other_user``), who dumps their own
process and edits the images.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, tracking  # noqa: F401  (tracking lets the spawn fixture stop holders)
from ckpt.image.schema import State
from helpers import Target, canned_state, proc_status_field, run_ckpt
from test_restore import Profile, checkpointed_counter, restore_and_check, run_to_end
from users import require_root
from test_trust_restore import (DROP_AND_EXEC, UserEnv, assert_crafted_refused, describe, detached,  # noqa: F401
                                edit_meta, restore_detached, uenv, user_dump, user_images, user_site, wait_running)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

SCHED_FIFO = 1
UNSET_LOGINUID = 4294967295

TIMER_CORRUPTIONS = ["real", "virtual", "prof", "a", "b", "c", "d", "e", "f", "hole"]
PROCSTATE_CORRUPTIONS = ["policy", "rtprio", "nice", "resetonfork", "subreaper", "thp", "slack", "nnp",
                         "dumpable", "oom", "affinity", "ioprio", "pdeathsig", "securebits", "ksm", "coredump"]


# ---------------------------------------------------------------------------
# Helpers


def ask_steady(target: Target) -> list[str]:
    """SIGUSR2: the target checks that nothing changed; its lines up to "steady"/"unsteady"."""
    os.kill(target.pid, signal.SIGUSR2)
    lines = []
    while True:
        line = target.readline(30)
        lines.append(line)
        if line in ("steady", "unsteady"):
            return lines


def dump_twice_while_running(target: Target, images_dir: Path, pause: float = 0.3) -> None:
    """Two dumps that leave the target running; it must not notice either."""
    for _ in range(2):
        time.sleep(pause)
        ckpt.dump(target.pid, images_dir)
    time.sleep(pause)
    lines = ask_steady(target)
    assert lines[-1] == "steady", f"the dumps disturbed the running target: {lines}"


def kill_dump_restore(target: Target, images_dir: Path, workdir: Path,
                      inspect: Callable[[Any], None] | None = None) -> list[str]:
    """Final dump with --kill, restore, the restored target's own checks: its output lines."""
    expected = Profile.of(target.pid)
    ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    return restore_and_check(images_dir, workdir, expected, inspect=inspect)


def last_state(images_dir: Path) -> State:
    return ckpt.ImageDir(images_dir).checkpoints[-1].state


def thread_nices(pid: int) -> dict[str, int]:
    """Thread name -> nice value (getpriority works per thread, RT threads included)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            out[f.read().strip()] = os.getpriority(os.PRIO_PROCESS, int(tid))
    return out


def loginuid(pid: int) -> int:
    with open(f"/proc/{pid}/loginuid") as f:
        return int(f.read())


# ---------------------------------------------------------------------------
# The targets alone: they pass untouched and fail when damaged


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [["zdtm_timers"], ["zdtm_procstate"], ["zdtm_procstate", "-s", "-p", "-d",
                                                                          "-o", "500", "-x"]], ids=" ".join)
def test_timers_and_procstate_targets_pass_untouched(argv: list[str], programs: dict[str, Path],
                                                      spawn: Callable[..., Target]) -> None:
    if "-s" in argv:
        require_root()   # SCHED_FIFO: CAP_SYS_NICE
    target = spawn([programs[argv[0]], *argv[1:]])
    time.sleep(0.5)
    assert ask_steady(target)[-1] == "steady"
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1] == "PASS", f"{argv} exited {rc}: {lines}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program,damage", [("zdtm_timers", c) for c in TIMER_CORRUPTIONS]
                         + [("zdtm_procstate", c) for c in PROCSTATE_CORRUPTIONS])
def test_timers_and_procstate_targets_fail_when_damaged(program: str, damage: str, programs: dict[str, Path],
                                                        spawn: Callable[..., Target],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZDTM_CORRUPT", damage)
    if program == "zdtm_procstate":
        require_root()
    argv = [programs[program]] + (["-s", "-p", "-d", "-o", "500", "-x"] if program == "zdtm_procstate" else [])
    target = spawn(argv)
    rc, lines = run_to_end(target)
    assert rc == 1 and any(line.startswith("FAIL: ") for line in lines), f"{damage}: {rc} {lines}"
    assert "PASS" not in lines


# ---------------------------------------------------------------------------
# Timers


@needs_kernel
@pytest.mark.timeout(150)
def test_timers_survive_dumps_and_a_restore(programs: dict[str, Path], spawn: Callable[..., Target],
                                            images_dir: Path, tmp_path: Path) -> None:
    """ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, and POSIX timers A (SIGEV_SIGNAL with a value),
    B (SIGEV_THREAD_ID to the worker thread), C (SIGEV_NONE), D and E (on the CPU clocks of
    the worker thread and of the process, by tid and pid: both new after the restore), F
    (expired, its signal queued and blocked): the same ids (with a hole between A and B),
    signals, values, threads, intervals, and remaining times."""
    target = spawn([programs["zdtm_timers"]])
    dump_twice_while_running(target, images_dir)
    time.sleep(0.5)
    started = time.monotonic()
    lines = kill_dump_restore(target, images_dir, tmp_path)
    took = time.monotonic() - started
    state = last_state(images_dir)
    recorded = {t.id: t for t in state.process.posix_timers}
    itimers = state.process.itimers
    assert sorted(recorded) == [0, 2, 3, 4, 5, 6], f"the dump recorded timers {sorted(recorded)}"
    seen = {}
    for line in lines:
        words = line.split()
        if words[0] == "timer":
            seen[words[1]] = (int(words[2]), int(words[3]), int(words[4]))
        elif words[0] == "itimer":
            seen[words[1]] = (int(words[2]), int(words[3]))
    # C (SIGEV_NONE, 1000 s once): the restored remaining time is the recorded one, less
    # what elapsed since the restore began -- not a fresh 1000 s, nor the time the
    # process spent dead (CRIU's rule, docs/DESIGN.md "Timers").
    c_id, c_left, _ = seen["c"]
    recorded_c = recorded[c_id].value_ns
    assert recorded_c < 999_000_000_000, "timer C ran for over a second before the final dump"
    assert recorded_c - (took + 1) * 1e9 <= c_left <= recorded_c, (
        f"timer C: {c_left} ns left after the restore, {recorded_c} recorded ({took:.2f} s to restore)")
    # ITIMER_PROF (1000 s of CPU, once): the process was idle, so the remaining CPU time is the
    # recorded one -- not one clock tick more (set_cpu_itimer adds a tick: 4 ms at HZ=250), and
    # less at most the ticks its few runs since the restore were charged (tick-based accounting).
    prof_left, _ = seen["prof"]
    recorded_prof = itimers.prof.value_us
    assert recorded_prof - 10_000 <= prof_left <= recorded_prof + 1000, (
        f"ITIMER_PROF: {prof_left} us left after the restore, {recorded_prof} recorded")
    assert lines[-1] == "PASS"


@needs_kernel
@pytest.mark.timeout(120)
def test_timers_recorded_as_the_kernel_shows_them(programs: dict[str, Path], spawn: Callable[..., Target],
                                                  images_dir: Path) -> None:
    """The record of each POSIX timer matches /proc/PID/timers, and the dump (which reads the
    remaining times by injected timer_gettime/getitimer) leaves the target running."""
    target = spawn([programs["zdtm_timers"]])
    with open(f"/proc/{target.pid}/timers") as f:
        proc_timers = f.read()
    worker = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    ckpt.dump(target.pid, images_dir)
    state = last_state(images_dir)
    timers = {t.id: t for t in state.process.posix_timers}
    assert re.findall(r"^ID: (\d+)$", proc_timers, re.M) == ["6", "5", "4", "3", "2", "0"]
    a, b, c, f, d, e = (timers[i] for i in (0, 2, 3, 4, 5, 6))
    assert (a.clock, a.notify, a.signal, a.sigval, a.notify_pid) == (
        1, 0, signal.SIGRTMIN + 1, 0x5eed1234, target.pid)
    assert (b.clock, b.notify, b.signal, b.notify_pid) == (0, 4, signal.SIGRTMIN + 2, worker)
    assert (c.clock, c.notify) == (7, 1)
    assert (f.signal, f.sigval, f.value_ns) == (signal.SIGRTMIN + 3, 0xf00d, 0)   # fired, signal queued
    # pthread_getcpuclockid / clock_getcpuclockid: ((~id) << 3) | CPUCLOCK_SCHED (2), | 4 for a thread.
    assert (d.clock, e.clock) == ((~worker << 3) | 4 | 2, (~target.pid << 3) | 2)
    assert (a.interval_ns, b.interval_ns, c.interval_ns) == (300_000_000, 400_000_000, 0)
    assert 0 < a.value_ns <= 300_000_000 and 0 < b.value_ns <= 400_000_000
    assert state.process.itimers.real.interval_us == 250_000
    assert state.process.itimers.virtual.interval_us == 50_000
    assert ask_steady(target)[-1] == "steady"


# ---------------------------------------------------------------------------
# Scheduling, prctl state, oom_score_adj


@needs_kernel
@pytest.mark.timeout(120)
def test_sched_policy_priority_and_nice_per_thread_survive(programs: dict[str, Path],
                                                           spawn: Callable[..., Target], images_dir: Path,
                                                           tmp_path: Path) -> None:
    """main: SCHED_BATCH nice 2; rt: SCHED_FIFO 10 over nice 3; nice: nice 5 with reset-on-fork."""
    require_root()   # SCHED_FIFO: CAP_SYS_NICE (RLIMIT_RTPRIO is 0 here)
    target = spawn([programs["zdtm_procstate"], "-s"])
    dump_twice_while_running(target, images_dir)
    nices = thread_nices(target.pid)
    assert nices == {"zdtm_procstate": 2, "rt": 3, "nice": 5}, nices

    def inspect(run: Any) -> None:
        assert thread_nices(run.pid) == nices

    assert kill_dump_restore(target, images_dir, tmp_path, inspect)[-1] == "PASS"


@needs_kernel
@pytest.mark.timeout(120)
def test_prctl_subreaper_thp_slack_and_dumpable_survive(programs: dict[str, Path],
                                                        spawn: Callable[..., Target], images_dir: Path,
                                                        tmp_path: Path) -> None:
    """A child subreaper with THP disabled except where advised, timer slack per thread (the
    RT thread's 0), no_new_privs in one thread but not the leader (the leader's alone used to
    be given to every thread), and -- a root process -- not dumpable (a root process's flag
    used to go unrecorded)."""
    require_root()
    target = spawn([programs["zdtm_procstate"], "-s", "-p", "-d"])
    dump_twice_while_running(target, images_dir)
    assert kill_dump_restore(target, images_dir, tmp_path)[-1] == "PASS"


@needs_kernel
@pytest.mark.timeout(120)
def test_oom_score_adj_survives(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                                tmp_path: Path) -> None:
    target = spawn([programs["zdtm_procstate"], "-o", "500"])
    dump_twice_while_running(target, images_dir)
    assert last_state(images_dir).process.oom_score_adj == 500

    def inspect(run: Any) -> None:
        with open(f"/proc/{run.pid}/oom_score_adj") as f:
            assert int(f.read()) == 500

    assert kill_dump_restore(target, images_dir, tmp_path, inspect)[-1] == "PASS"


CAP_SYS_RESOURCE = 24
IOPRIO_BE_6, IOPRIO_IDLE = (2 << 13) | 6, 3 << 13


@needs_kernel
@pytest.mark.timeout(120)
def test_affinity_ioprio_pdeathsig_securebits_mdwe_ksm_and_coredump_filter_survive(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """Per thread: CPU affinity, I/O priority, parent-death signal; per process: securebits,
    memory-deny-write-execute, KSM merge-any, coredump_filter.  Each used to be dropped
    without a word (the restored process ran anywhere, at the default I/O priority, with
    securebits 0 and MDWE off); the restored target checks every one itself."""
    require_root()   # PR_SET_SECUREBITS: CAP_SETPCAP
    if os.cpu_count() is None or os.cpu_count() < 2:
        pytest.skip("the target binds one thread to CPU 1: it needs two CPUs")
    target = spawn([programs["zdtm_procstate"], "-x"])
    dump_twice_while_running(target, images_dir)
    state = last_state(images_dir)
    threads = {t.comm: t for t in state.threads}
    assert threads["zdtm_procstate"].cpu_affinity == (1,) and threads["nice"].cpu_affinity == (0,)
    assert threads["zdtm_procstate"].ioprio == IOPRIO_BE_6 and threads["nice"].ioprio == IOPRIO_IDLE
    assert (threads["zdtm_procstate"].pdeathsig, threads["rt"].pdeathsig, threads["nice"].pdeathsig) == (
        signal.SIGWINCH, 0, signal.SIGURG)
    proc = state.process
    assert (proc.securebits, proc.mdwe, proc.ksm_merge_any, proc.coredump_filter) == (0x44, 1, True, 7)
    assert all(t.creds is None for t in state.threads)

    def inspect(run: Any) -> None:
        assert os.sched_getaffinity(run.pid) == {1}
        with open(f"/proc/{run.pid}/coredump_filter") as f:
            assert int(f.read(), 16) == 7

    lines = kill_dump_restore(target, images_dir, tmp_path, inspect)
    assert lines[-1] == "PASS", lines


@needs_kernel
@pytest.mark.timeout(120)
def test_a_thread_with_credentials_of_its_own_is_refused_by_name(programs: dict[str, Path],
                                                                 spawn: Callable[..., Target],
                                                                 images_dir: Path) -> None:
    """One thread changed its saved gid with a raw setresgid (no glibc broadcast): a restore
    would give it the leader's credentials.  dump --kill refuses, naming the thread and its
    ids, and leaves the target running; restore refuses the checkpoint too."""
    require_root()
    target = spawn([programs["zdtm_procstate"], "-c"])
    nice_tid = next(int(t) for t in os.listdir(f"/proc/{target.pid}/task")
                    if open(f"/proc/{target.pid}/task/{t}/comm").read().strip() == "nice")
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
    assert result.returncode == 10, result.stderr
    assert re.search(rf"thread {nice_tid} has credentials of its own \(uids 0/0/0/0, gids 0/0/1/0\)",
                     result.stderr), result.stderr
    assert os.path.exists(f"/proc/{target.pid}") and proc_status_field(target.pid, "State")[0] in "SR"
    restored = run_ckpt("restore", "-D", images_dir)
    assert restored.returncode != 0 and "credentials of its own" in restored.stderr, restored.stderr


@needs_kernel
@pytest.mark.timeout(120)
def test_oom_score_adj_below_the_floor_needs_cap_sys_resource(programs: dict[str, Path],
                                                               spawn: Callable[..., Target], tmp_path: Path) -> None:
    """Root's images asking for oom_score_adj -500: restored where root has CAP_SYS_RESOURCE;
    refused by name where it lacks it (this VM's bounding set does: fs/proc/base.c
    __set_oom_adj gives EACCES below oom_score_adj_min), never restored at 0 without a word."""
    images = tmp_path / "images"
    checkpointed_counter(programs, spawn, images, tmp_path)
    edit_meta(images / "000001" / "meta.ckpt", _set_process(oom_score_adj=-500))
    result = restore_detached(images, tmp_path)
    if int(proc_status_field(os.getpid(), "CapEff"), 16) >> CAP_SYS_RESOURCE & 1:
        with detached(result) as pid:
            with open(f"/proc/{pid}/oom_score_adj") as f:
                assert int(f.read()) == -500
        return
    assert result.returncode == errors.TargetError.exit_code, result.stderr
    assert re.search(r"oom_score_adj -500 cannot be set \(Permission denied\).*CAP_SYS_RESOURCE",
                     result.stderr), result.stderr


@needs_kernel
@pytest.mark.timeout(120)
def test_loginuid_survives(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                           tmp_path: Path) -> None:
    """A loginuid set by the process (this session's is unset, so it may) comes back: root may
    set it (CAP_AUDIT_CONTROL)."""
    if loginuid(os.getpid()) != UNSET_LOGINUID:
        pytest.skip("this session has a loginuid: the target could not set its own")
    stop = tmp_path / "stop"
    target = spawn(["/bin/sh", "-c", 'echo 4242 > /proc/self/loginuid && exec "$0" "$@"',
                    programs["zdtm_counter"], "-s", stop])
    assert loginuid(target.pid) == 4242
    ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    stop.touch()
    assert last_state(images_dir).process.loginuid == 4242
    with detached(restore_detached(images_dir, tmp_path)) as pid:
        wait_running(pid)
        assert loginuid(pid) == 4242, describe(pid)


# ---------------------------------------------------------------------------
# Refused by name


def _timer_record(**fields: Any) -> dict[str, Any]:
    record = {"id": 7, "clock": 1, "notify": 0, "signal": signal.SIGRTMIN, "sigval": 0, "notify_pid": 0,
              "value_ns": 5_000_000_000, "interval_ns": 0}
    record.update(fields)
    return record


# Encoded CPU clocks (include/linux/posix-timers_types.h): ((~pid) << 3) | type, type
# 0 PROF, 1 VIRT, 2 SCHED, 3 a clock device's fd; | 4 for a thread's clock (pid 0: the caller).
CLOCKS_REFUSED = {
    "another process": ((~1 << 3) | 2, r"CPU-time clock of pid 1, another process"),
    "unknown thread": ((~0 << 3) | 4 | 2, r"CPU-time clock of the thread that created it"),
    "fd clock": ((~3 << 3) | 3, r"dynamic clock \(a clock device's file descriptor\)"),
}


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CLOCKS_REFUSED))
def test_timers_on_clocks_ckpt_cannot_recreate_are_refused(case: str, programs: dict[str, Path],
                                                            spawn: Callable[..., Target], images_dir: Path,
                                                            tmp_path: Path) -> None:
    """A timer on another process's CPU clock, on a thread CPU clock in a multi-threaded process
    (which thread is not shown), or on a clock device: refused by name by inspect and restore."""
    clock, named = CLOCKS_REFUSED[case]
    target = spawn([programs["zdtm_timers"]])
    ckpt.dump(target.pid, images_dir)
    cp = ckpt.ImageDir(images_dir).checkpoints[-1]

    def add(body: dict[str, Any]) -> None:
        body["state"]["process"]["posix_timers"].append(_timer_record(clock=clock, notify_pid=body["pid"]))

    edit_meta(cp.path / "meta.ckpt", add)
    shown = run_ckpt("inspect", images_dir)
    assert re.search(named, shown.stdout), shown.stdout + shown.stderr
    refused = restore_detached(images_dir, tmp_path)
    assert refused.returncode == errors.NotRestorable.exit_code, refused.stderr
    assert re.search(named, refused.stderr) and "POSIX timer 7" in refused.stderr, refused.stderr


def _set_thread(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        for thread in body["state"]["threads"]:
            thread["sched"].update(fields)
    return change


def _set_process(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["state"]["process"].update(fields)
    return change


def _add_alarm_timer(body: dict[str, Any]) -> None:
    body["state"]["process"]["posix_timers"].append(_timer_record(clock=8, notify_pid=body["pid"]))


UNTRUSTED = {
    "SCHED_FIFO": (_set_thread(policy=SCHED_FIFO, priority=10), r"SCHED_FIFO priority 10.*RLIMIT_RTPRIO"),
    "SCHED_DEADLINE": (_set_thread(policy=6, runtime=10**6, deadline=10**7, period=10**7),
                       r"SCHED_DEADLINE.*CAP_SYS_NICE"),
    "nice -5": (_set_thread(nice=-5), r"nice -5.*RLIMIT_NICE"),
    "oom_score_adj -500": (_set_process(oom_score_adj=-500), r"oom_score_adj -500, below this restore's own 0"),
    "alarm timer": (_add_alarm_timer, r"POSIX timer 7 on CLOCK_REALTIME_ALARM.*CAP_WAKE_ALARM"),
}


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("crafted", list(UNTRUSTED))
def test_sched_and_oom_beyond_the_images_owner_are_refused(crafted: str, uenv: UserEnv, user_images: Path,
                                                           tmp_path: Path) -> None:
    assert_crafted_refused(uenv, user_images, tmp_path, *UNTRUSTED[crafted])


@needs_kernel
@pytest.mark.timeout(120)
def test_sched_the_owners_own_nice_and_oom_restore(uenv: UserEnv, spawn: Callable[..., Target],
                                                   tmp_path: Path) -> None:
    """What the user could do themselves -- nice 7, oom_score_adj 300 -- comes back when root
    restores their images (as the user)."""
    stop = uenv.file("stop", b"")
    stop.unlink()
    script = 'echo 300 > /proc/self/oom_score_adj && exec /usr/bin/nice -n 7 "$0" "$@"'
    target = spawn([sys.executable, "-c", DROP_AND_EXEC, str(uenv.user.uid), str(uenv.user.gid),
                    str(uenv.home), "/bin/sh", "-c", script, str(uenv.bin / "zdtm_counter"), "-s", str(stop)])
    assert os.getpriority(os.PRIO_PROCESS, target.pid) == 7
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    uenv.file("stop", b"")
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        assert int(proc_status_field(pid, "Uid").split()[0]) == uenv.user.uid
        assert os.getpriority(os.PRIO_PROCESS, pid) == 7, describe(pid)
        with open(f"/proc/{pid}/oom_score_adj") as f:
            assert int(f.read()) == 300


@needs_kernel
@pytest.mark.timeout(120)
def test_loginuid_of_another_user_is_not_granted(uenv: UserEnv, user_images: Path, tmp_path: Path) -> None:
    """Images not root's that record another loginuid (root's, 0): the restore does not forge
    it (audit would blame root) and says so in a note; the owner's own uid is granted."""
    ours = loginuid(os.getpid())
    edit_meta(user_images / "000001" / "meta.ckpt", _set_process(loginuid=0))
    result = restore_detached(user_images, tmp_path)
    with detached(result) as pid:
        wait_running(pid)
        assert loginuid(pid) == ours, describe(pid)
        assert re.search(r"note: loginuid 0 not restored.*images .*belong to", result.stderr), result.stderr
    if ours != UNSET_LOGINUID:
        return  # the owner's own uid can only be granted where this session's loginuid may change
    edit_meta(user_images / "000001" / "meta.ckpt", _set_process(loginuid=uenv.user.uid))
    with detached(restore_detached(user_images, tmp_path, name="own")) as pid:
        wait_running(pid)
        assert loginuid(pid) == uenv.user.uid


# ---------------------------------------------------------------------------
# Pure parts: /proc/PID/timers, the rules


PROC_TIMERS = """ID: 10
signal: 14/000000000000000a
notify: signal/pid.14742
ClockID: 1
ID: 5
signal: 36/00001234abcd5678
notify: signal/tid.14743
ClockID: -6
ID: 7
signal: 0/0000000000000000
notify: none/pid.14742
ClockID: 7
ID: 8
signal: 34/00007f0000001000
notify: thread/pid.14742
ClockID: 0
"""


def test_timers_parse_proc_timers() -> None:
    """fs/proc/base.c show_timer: "signal: %d/%px", "notify: %s/%s.%d" (tid when SIGEV_THREAD_ID)."""
    from ckpt.procfs import PosixTimer, parse_timers

    assert parse_timers(PROC_TIMERS) == [
        PosixTimer(10, 14, 10, 0, 14742, 1), PosixTimer(5, 36, 0x1234abcd5678, 4, 14743, -6),
        PosixTimer(7, 0, 0, 1, 14742, 7), PosixTimer(8, 34, 0x7f0000001000, 2, 14742, 0)]
    assert parse_timers("") == []


def test_sched_unknown_policy_and_utilization_clamps_are_refused() -> None:
    from ckpt import restorability

    def state(**sched: int) -> dict[str, Any]:
        base = {"policy": 0, "flags": 0, "nice": 0, "priority": 0, "runtime": 0, "deadline": 0, "period": 0}
        return canned_state({"threads": [{"tid": 5, "sched": {**base, **sched}}]})

    assert restorability.sched_reasons(state()) == []
    assert restorability.sched_reasons(state(util_min=0, util_max=1024)) == []
    assert restorability.sched_reasons(state(policy=4)) == [
        "thread 5 has scheduling policy 4, unknown to ckpt"]
    assert restorability.sched_reasons(state(util_min=200, util_max=1024)) == [
        "thread 5 has utilization clamps (min 200, max 1024), which ckpt cannot restore yet"]


def test_timers_signalling_a_thread_that_exited_are_refused() -> None:
    from ckpt import restorability

    state = {"target": {"pid": 5}, "threads": [{"tid": 5}, {"tid": 6}],
             "process": {"posix_timers": [_timer_record(notify=4, notify_pid=6),
                                          _timer_record(id=8, notify=4, notify_pid=9),
                                          _timer_record(id=9, clock=(~6 << 3) | 4 | 2),
                                          _timer_record(id=10, clock=(~5 << 3) | 2),
                                          _timer_record(id=11, clock=5)]}}
    assert restorability.timer_reasons(canned_state(state)) == [
        "POSIX timer 8 signals thread 9, which has exited",
        "POSIX timer 11 is on clock 5, on which this kernel creates no timers"]


# A periodic ITIMER_REAL whose SIGALRM is pending (blocked) at the dump: getitimer shows no
# time left, and the kernel re-arms it only when the signal is dequeued.
PENDING_ALARM = r"""
import os, signal, sys, time
count = 0
def on_alarm(sig, frame):
    global count
    count += 1
signal.signal(signal.SIGALRM, on_alarm)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGUSR1])
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
time.sleep(0.3)
print("ready", os.getpid(), flush=True)
signal.sigwait([signal.SIGUSR1])
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])
time.sleep(0.5)
print("alarms", count, flush=True)
"""


@needs_kernel
@pytest.mark.timeout(120)
def test_a_periodic_alarm_whose_signal_is_pending_keeps_ticking(spawn: Callable[..., Target], images_dir: Path,
                                                                tmp_path: Path) -> None:
    """It used to come back disarmed: one SIGALRM (the pending one), then none."""
    target = spawn([sys.executable, "-c", PENDING_ALARM])
    ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    itimer = last_state(images_dir).process.itimers.real
    assert itimer.value_us == 0 and itimer.interval_us == 50_000, itimer
    with detached(restore_detached(images_dir, tmp_path)) as pid:
        os.kill(pid, signal.SIGUSR1)
        out = tmp_path / "restored.out"
        deadline = time.monotonic() + 30
        while "alarms" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    count = int(out.read_text().split()[-1])
    assert count >= 4, f"{count} SIGALRM in 0.5 s of a 50 ms periodic timer"

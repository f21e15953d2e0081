"""Restore, tested in the manner of CRIU's zdtm: targets that check themselves.

Each target (tests/programs/zdtm_*) sets up some state, prints ``ready PID``
and waits for SIGUSR1; then it checks that all of its state is still what it
set up, prints ``PASS`` (or one ``FAIL: what`` line per problem) and exits 0
(or 1).  A test dumps the target and kills it, restores it with
``python -m ckpt restore`` in a subprocess (the restored process's stdout and
stderr go to files), finds the restored process among the descendants of that
ckpt process, sends it SIGUSR1 and expects ckpt to exit 0 -- ckpt exits with
the restored process's status -- with ``PASS`` in the restored stdout.

The restored process counts as "restored" (safe to signal) once it is a
descendant of the ckpt process, not ptraced, running or sleeping, with the
same thread count, caught-signal set and per-thread blocked masks as the
original had before the dump, on two polls in a row.

Every process is reaped or killed: targets by the ``spawn`` fixture, ckpt
subprocesses here, restored processes through a pidfd (SIGKILL, then wait for
it to exit) whether or not they are our children.  Refusals run ckpt under a
small child-subreaper wrapper, so that anything ckpt leaves behind is adopted
by the wrapper, reported and killed.

The first tests run the targets without any checkpoint: a target must pass
untouched and must fail when its state is damaged on purpose (ZDTM_CORRUPT).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import ckpt
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt._sys.pidfd import pidfd_getfd
from helpers import (
    REPO_ROOT,
    Target,
    TargetCommandError,
    ckpt_argv,
    ckpt_env,
    proc_status_field,
    run_ckpt,
)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

NOBODY = 65534
EXIT_IMAGE = 7        # corrupt frame, mapped file changed or missing
EXIT_UNSUPPORTED = 9  # unsupported process state (an fd of an unsupported kind)
PYHEAP_MB = 200

SINGLE_CORRUPTIONS = ["heap", "brkheap", "stack", "anon", "zero", "filecow", "fileclean",
                      "fileoff", "shared", "fd", "fdflags", "cloexec", "handler", "sigign",
                      "sigmask", "pending", "umask", "cwd", "tls", "brk"]


# ---------------------------------------------------------------------------
# /proc


def _status(path: str) -> dict[str, str]:
    with open(path, errors="surrogateescape") as f:
        return {name: value.strip() for name, _, value in (line.partition(":") for line in f)}


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), after the parenthesised comm (which
    may be any bytes: another test's process names itself with a byte that is not UTF-8)."""
    with open(f"/proc/{pid}/stat", errors="surrogateescape") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2:].split()


def descendants(ancestor: int) -> list[int]:
    """Live descendants of ``ancestor`` (any depth), from the ppid of every process."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent[int(name)] = int(_stat_fields(int(name))[1])
            except (OSError, IndexError, ValueError):
                continue
    found: list[int] = []
    frontier = {ancestor}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier}
        found.extend(sorted(frontier))
    return found


def state_or_gone(pid: int) -> str:
    try:
        return _stat_fields(pid)[0]
    except (OSError, IndexError):
        return "gone"


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def lookalikes(binary: Path, images_dir: Path, exclude: Sequence[int] = ()) -> list[str]:
    """Live processes (not zombies) whose command line names this session's ``binary`` (a
    restored target) or ``images_dir`` (a restore in progress).  Not the comm alone: other
    test sessions may run the same programs at the same time."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude or int(name) == os.getpid():
            continue
        pid = int(name)
        if state_or_gone(pid) in ("Z", "X", "gone"):
            continue
        cmdline = read_text(f"/proc/{pid}/cmdline")
        if str(binary) in cmdline or str(images_dir) in cmdline:
            found.append(f"pid {pid} comm {read_text(f'/proc/{pid}/comm')!r} cmdline {cmdline!r}")
    return found


@dataclass(frozen=True)
class Profile:
    """What a restored process must show before it may be signalled."""

    threads: int
    sigcgt: int
    sigblk: tuple[int, ...]   # per thread, sorted

    @classmethod
    def of(cls, pid: int) -> Profile:
        tids = os.listdir(f"/proc/{pid}/task")
        blocked = []
        for tid in tids:
            with contextlib.suppress(FileNotFoundError):
                blocked.append(int(_status(f"/proc/{pid}/task/{tid}/status")["SigBlk"], 16))
        return cls(len(tids), int(proc_status_field(pid, "SigCgt"), 16), tuple(sorted(blocked)))


def wait_pidfd(pidfd: int, timeout: float) -> bool:
    """True once the process of ``pidfd`` has exited (zombie or reaped) -- any process, child or not."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def kill_by_pidfd(pidfd: int, timeout: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    if not wait_pidfd(pidfd, timeout):
        raise RuntimeError(f"a restored process survived SIGKILL for {timeout} s")


def signal_until_exit(pidfd: int, timeout: float, sig: int = signal.SIGUSR1) -> bool:
    """``sig`` every 0.2 s (a target may be between its ``go`` check and pause()) until it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, sig)
        if wait_pidfd(pidfd, 0.2):
            return True
    return False


# ---------------------------------------------------------------------------
# Targets


def read_rest(target: Target, timeout: float = 10) -> list[str]:
    """The lines the target prints until it closes its stdout."""
    lines = []
    with contextlib.suppress(TargetCommandError):
        while True:
            lines.append(target.readline(timeout))
    return lines


def run_to_end(target: Target, timeout: float = 60, sig: int = signal.SIGUSR1) -> tuple[int, list[str]]:
    """Send ``sig`` (SIGUSR1) until the (never checkpointed) target exits: (exit code, its output)."""
    deadline = time.monotonic() + timeout
    while target.proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{target!r} did not exit within {timeout} s of signal {sig}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            target.proc.wait(timeout=0.2)
    return target.proc.returncode, read_rest(target)


def single_argv(programs: dict[str, Path], workdir: Path, *flags: str) -> list[str | Path]:
    cwd = workdir / "cwd"
    cwd.mkdir(exist_ok=True)
    return [programs["zdtm_single"], *flags, workdir / "map.bin", workdir / "data.bin", cwd]


def pyheap_argv(programs: dict[str, Path], megabytes: int) -> list[str | Path]:
    return [sys.executable, programs["zdtm_pyheap"], str(megabytes)]


def counter_state(target: Target) -> tuple[int, int, int]:
    """(counter address, buffer address, buffer length) from zdtm_counter's ``state`` line."""
    words = target.readline().split()
    assert words[0] == "state" and len(words) == 4, f"zdtm_counter said {words!r}"
    return int(words[1], 16), int(words[2], 16), int(words[3])


class NobodyTarget(Target):
    """A Target started as user and group nobody (65534), no supplementary groups."""

    def __init__(self, argv: Sequence[str | os.PathLike[str]], name: str | None = None) -> None:
        # Target.__init__, with a preexec_fn and /tmp as cwd.
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name

        def drop() -> None:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)

        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, cwd="/tmp", preexec_fn=drop)
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, name=f"{self.name}-{self.pid}-stdout",
                                        daemon=True)
        self._reader.start()


def dump_and_kill(target: Target, images_dir: Path) -> None:
    """Final checkpoint (ckpt.dump after="kill"), then reap the killed target."""
    ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()


def checkpointed_counter(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                         tmp_path: Path) -> Profile:
    """zdtm_counter, dumped with --kill; restored copies stop counting (its stop file
    exists).  Returns the profile a restored copy must show."""
    stop = tmp_path / "stop"
    target = spawn([programs["zdtm_counter"], "-s", stop])
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    stop.touch()
    return expected


# ---------------------------------------------------------------------------
# ckpt restore


class Restore:
    """One non-detached ``ckpt restore`` subprocess and the process it restores.

    The restored process's stdout and stderr are files (``--stdout``/``--stderr``);
    ckpt's own stdin is /dev/null and its stdout/stderr are files too, so that
    nothing here can block on a pipe a restored process keeps open.
    """

    def __init__(self, images_dir: Path, workdir: Path, *args: str | os.PathLike[str] | int,
                 name: str = "restore") -> None:
        self.out = workdir / f"{name}.stdout"
        self.err = workdir / f"{name}.stderr"
        self.ckpt_out = workdir / f"{name}.ckpt-stdout"
        self.ckpt_err = workdir / f"{name}.ckpt-stderr"
        for path in (self.out, self.err):
            path.write_text("")
        self.argv = ckpt_argv("restore", "-D", images_dir, "--stdout", self.out, "--stderr", self.err,
                              *args)
        with open(self.ckpt_out, "w") as out, open(self.ckpt_err, "w") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=ckpt_env(), cwd=REPO_ROOT)
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.seen: dict[int, int] = {}   # every descendant of ckpt seen -> a pidfd, to kill at close

    def explain(self) -> str:
        rc = self.proc.poll()
        return (f"\n  ckpt: {' '.join(map(str, self.argv[3:]))} -> "
                f"{'still running' if rc is None else f'exit {rc}'}"
                f"\n  ckpt stderr: {read_text(str(self.ckpt_err))!r}"
                f"\n  ckpt stdout: {read_text(str(self.ckpt_out))!r}"
                f"\n  restored pid {self.pid} stdout: {read_text(str(self.out))!r}"
                f"\n  restored stderr: {read_text(str(self.err))!r}")

    def find(self, expected: Profile, timeout: float = 60) -> int:
        """Wait until the restored process is complete (see the module docstring); its pid."""
        deadline = time.monotonic() + timeout
        candidate = None
        seen = "no descendant of ckpt yet"
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("ckpt restore exited before a restored process was seen" + self.explain())
            ready = None
            for pid in descendants(self.proc.pid):
                self._watch(pid)
                try:
                    profile = Profile.of(pid)
                    tracer = int(proc_status_field(pid, "TracerPid"))
                    state = state_or_gone(pid)
                except (OSError, KeyError, ValueError):
                    continue
                if profile == expected and tracer == 0 and state in ("R", "S"):
                    ready = pid
                    break
                seen = f"pid {pid} state {state} tracer {tracer} {profile}"
            if ready is not None and ready == candidate and ready in self.seen:
                self.pidfd = self.seen[ready]
                self.pid = ready
                return ready
            candidate = ready
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no complete restored process within {timeout} s: wanted {expected}, "
                    f"last saw {seen}" + self.explain())
            time.sleep(0.05)

    def _watch(self, pid: int) -> None:
        """Keep a pidfd of a descendant of ckpt (checked to still be one after opening it)."""
        if pid in self.seen:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        if pid in descendants(self.proc.pid):
            self.seen[pid] = pidfd
        else:
            os.close(pidfd)   # gone, and the pid possibly reused meanwhile

    def go(self, timeout: float = 60, sig: int = signal.SIGUSR1) -> int:
        """``sig`` (SIGUSR1) to the restored process until it exits; ckpt's exit code."""
        assert self.pidfd is not None
        if not signal_until_exit(self.pidfd, timeout, sig):
            raise AssertionError(f"the restored process did not exit within {timeout} s of signal {sig}"
                                 + self.explain())
        return self.wait(30)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ckpt restore did not exit within {timeout} s" + self.explain()) from None

    def output(self) -> list[str]:
        return self.out.read_text().splitlines()

    def close(self) -> None:
        """Kill whatever is still alive: every descendant of ckpt seen (by pidfd), then ckpt; reap ckpt."""
        try:
            if self.proc.poll() is None:
                for pid in descendants(self.proc.pid):
                    self._watch(pid)
            for pidfd in self.seen.values():
                kill_by_pidfd(pidfd)
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)
        finally:
            for pidfd in self.seen.values():
                os.close(pidfd)
            self.seen.clear()
            self.pidfd = None


@contextlib.contextmanager
def restoring(images_dir: Path, workdir: Path, expected: Profile, *args: str | os.PathLike[str] | int,
              name: str = "restore") -> Iterator[Restore]:
    """Start ``ckpt restore`` and wait for the restored process; clean everything up on exit."""
    run = Restore(images_dir, workdir, *args, name=name)
    try:
        run.find(expected)
        yield run
    finally:
        run.close()


def restore_and_check(images_dir: Path, workdir: Path, expected: Profile,
                      *args: str | os.PathLike[str] | int, name: str = "restore",
                      inspect: Callable[[Restore], None] | None = None, go: int = signal.SIGUSR1) -> list[str]:
    """Restore, let the restored target check itself (``go``: the signal it waits for),
    expect exit 0 and PASS; its output."""
    with restoring(images_dir, workdir, expected, *args, name=name) as run:
        if inspect is not None:
            inspect(run)
        rc = run.go(sig=go)
        lines = run.output()
        assert rc == 0 and lines and lines[-1].startswith("PASS"), (
            f"the restored target failed its own checks (ckpt exit {rc})" + run.explain())
        return lines


# A child subreaper around ckpt: whatever ckpt leaves behind is adopted by it.
# argv: REPORT_PATH CKPT_ARGV...; writes {"rc": N, "left": [...]} to REPORT_PATH.
SUBREAPER = r"""
import contextlib, ctypes, json, os, signal, subprocess, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
child = subprocess.Popen(sys.argv[2:])
try:
    rc = child.wait(timeout=45)
except subprocess.TimeoutExpired:
    child.kill()
    child.wait()
    rc = "timeout"

def info(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return int(fields[1]), fields[0], stat[stat.index("(") + 1:stat.rindex(")")], cmdline
    except (OSError, ValueError, IndexError):
        return None

def adopted():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            i = info(int(name))
            if i is not None and i[0] == os.getpid():
                out[int(name)] = i
    return out

# Processes ckpt killed without reaping get a moment to die before they count.
deadline = time.monotonic() + 2
while True:
    alive = {pid: i for pid, i in adopted().items() if i[1] not in ("Z", "X")}
    if not alive or time.monotonic() > deadline:
        break
    time.sleep(0.05)
left = [f"pid {pid} state {i[1]} comm {i[2]!r} cmdline {i[3]!r}" for pid, i in sorted(alive.items())]
for pid in alive:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        time.sleep(0.02)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "left": left}, f)
"""


@dataclass
class Refusal:
    images_dir: Path
    rc: int | str
    stderr: str
    stdout: str
    left: list[str]
    restored_out: str

    def explain(self) -> str:
        return (f"\n  exit {self.rc}\n  stderr: {self.stderr!r}\n  stdout: {self.stdout!r}"
                f"\n  left behind: {self.left}\n  restored stdout: {self.restored_out!r}")


def restore_refused(images_dir: Path, workdir: Path, *args: str | os.PathLike[str] | int,
                    name: str = "refused") -> Refusal:
    """Run ``ckpt restore`` under the subreaper wrapper; what it said and what it left behind."""
    report = workdir / f"{name}.report.json"
    out = workdir / f"{name}.stdout"
    argv = [sys.executable, "-c", SUBREAPER, str(report),
            *ckpt_argv("restore", "-D", images_dir, "--stdout", out, "--stderr", workdir / f"{name}.stderr",
                       *args)]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                            env=ckpt_env(), cwd=REPO_ROOT)
    assert result.returncode == 0, f"the subreaper wrapper failed: {result.stderr!r}"
    data = json.loads(report.read_text())
    return Refusal(images_dir, data["rc"], result.stderr, result.stdout, data["left"], read_text(str(out)))


def assert_refused(refusal: Refusal, code: int | None, *patterns: str, binary: Path | None = None,
                   exclude: Sequence[int] = ()) -> str:
    """One ``ckpt: `` line on stderr matching every pattern, exit ``code`` (any non-zero if None),
    nothing left behind.  Returns the line."""
    lines = [line for line in refusal.stderr.splitlines() if line.strip()]
    if code is None:
        assert isinstance(refusal.rc, int) and refusal.rc != 0, "restore did not fail" + refusal.explain()
    else:
        assert refusal.rc == code, f"wanted exit {code}" + refusal.explain()
    assert len(lines) == 1 and lines[0].startswith("ckpt: "), (
        "wanted exactly one 'ckpt: ' line on stderr" + refusal.explain())
    for pattern in patterns:
        assert re.search(pattern, lines[0]), f"stderr does not match {pattern!r}" + refusal.explain()
    assert not refusal.left, "ckpt left processes behind" + refusal.explain()
    assert "PASS" not in refusal.restored_out, "a restored process ran" + refusal.explain()
    if binary is not None:
        found = lookalikes(binary, refusal.images_dir, exclude)
        assert not found, f"processes of {binary.name} appeared: {found}"
    return lines[0]


# ---------------------------------------------------------------------------
# The targets alone (no checkpoint): they pass untouched, and fail when damaged


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", ["zdtm_single", "zdtm_single -p", "zdtm_threads", "zdtm_pyheap",
                                     "zdtm_counter"])
def test_target_passes_without_a_checkpoint(program: str, programs: dict[str, Path],
                                            spawn: Callable[..., Target], tmp_path: Path) -> None:
    name, *flags = program.split()
    if name == "zdtm_single":
        argv = single_argv(programs, tmp_path, *flags)
    elif name == "zdtm_pyheap":
        argv = pyheap_argv(programs, 20)
    else:
        argv = [programs[name]]
    target = spawn(argv)
    if name in ("zdtm_pyheap", "zdtm_counter"):
        target.readline()  # checksum / state line
    time.sleep(0.1)
    rc, lines = run_to_end(target)
    assert rc == 0 and lines and lines[-1].startswith("PASS"), f"{program} exited {rc}: {lines}"


def _corruptions() -> list[tuple[str, str]]:
    cases = [("zdtm_single", c) for c in SINGLE_CORRUPTIONS]
    cases += [("zdtm_threads", c) for c in ("tls", "local", "stack", "main")]
    cases += [("zdtm_pyheap", c) for c in ("heap", "thread", "local")]
    cases += [("zdtm_counter", c) for c in ("buffer", "counter")]
    return cases


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program,damage", _corruptions())
def test_target_fails_when_its_state_is_damaged(program: str, damage: str, programs: dict[str, Path],
                                                spawn: Callable[..., Target], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZDTM_CORRUPT", damage)
    if program == "zdtm_single":
        argv = single_argv(programs, tmp_path, "-p")
    elif program == "zdtm_pyheap":
        argv = pyheap_argv(programs, 20)
    else:
        argv = [programs[program]]
    target = spawn(argv)
    rc, lines = run_to_end(target)
    assert rc == 1, f"{program} with {damage} damaged exited {rc}: {lines}"
    assert any(line.startswith("FAIL: ") for line in lines), lines
    assert not any(line.startswith("PASS") for line in lines), lines


# ---------------------------------------------------------------------------
# Restored targets check themselves


@needs_kernel
@pytest.mark.timeout(90)
def test_single_threaded_state_survives(programs: dict[str, Path], spawn: Callable[..., Target],
                                        images_dir: Path, tmp_path: Path) -> None:
    target = spawn(single_argv(programs, tmp_path))
    expected = Profile.of(target.pid)
    umask = proc_status_field(target.pid, "Umask")
    comm, cmdline = read_text(f"/proc/{target.pid}/comm"), read_text(f"/proc/{target.pid}/cmdline")
    dump_and_kill(target, images_dir)

    def inspect(run: Restore) -> None:
        assert proc_status_field(run.pid, "Umask") == umask == "0027"
        assert read_text(f"/proc/{run.pid}/comm") == comm == "zdtm_single"
        assert read_text(f"/proc/{run.pid}/cmdline") == cmdline
        fds = {fd: os.readlink(f"/proc/{run.pid}/fd/{fd}") for fd in (0, 1, 2)}
        assert fds == {0: "/dev/null", 1: str(run.out), 2: str(run.err)}, (
            "fds 0-2 of the restored process should be ckpt's stdin and the --stdout/--stderr files")

    lines = restore_and_check(images_dir, tmp_path, expected, inspect=inspect)
    assert lines == ["PASS"]


@needs_kernel
@pytest.mark.timeout(90)
def test_pending_signal_survives(programs: dict[str, Path], spawn: Callable[..., Target],
                                 images_dir: Path, tmp_path: Path) -> None:
    """zdtm_single -p: a SIGHUP sent to itself while blocked is still pending after the restore
    (the dump records it: state["process"]["sig_pending_shared"])."""
    target = spawn(single_argv(programs, tmp_path, "-p"))
    assert int(proc_status_field(target.pid, "ShdPnd"), 16) & (1 << (signal.SIGHUP - 1))
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)

    def inspect(run: Restore) -> None:
        pending = int(proc_status_field(run.pid, "ShdPnd"), 16)
        assert pending & (1 << (signal.SIGHUP - 1)), f"restored ShdPnd is {pending:#x}: SIGHUP lost"

    assert restore_and_check(images_dir, tmp_path, expected, inspect=inspect) == ["PASS"]


@needs_kernel
@pytest.mark.timeout(90)
def test_threads_survive(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                         tmp_path: Path) -> None:
    target = spawn([programs["zdtm_threads"]])
    time.sleep(0.1)   # the polling threads are in their nanosleep loop, the others in futex waits
    expected = Profile.of(target.pid)
    assert expected.threads == 9
    dump_and_kill(target, images_dir)

    def inspect(run: Restore) -> None:
        assert len(os.listdir(f"/proc/{run.pid}/task")) == 9

    assert restore_and_check(images_dir, tmp_path, expected, inspect=inspect) == ["PASS"]


@needs_kernel
@pytest.mark.timeout(120)
def test_cpython_heap_and_thread_survive(programs: dict[str, Path], spawn: Callable[..., Target],
                                         images_dir: Path, tmp_path: Path) -> None:
    target = spawn(pyheap_argv(programs, PYHEAP_MB), ready_timeout=90)
    words = target.readline().split()
    assert words[0] == "checksum", words
    checksum = words[1]
    expected = Profile.of(target.pid)
    assert expected.threads == 2
    dump_and_kill(target, images_dir)
    lines = restore_and_check(images_dir, tmp_path, expected)
    assert lines == [f"PASS checksum {checksum}"], "the restored heap checksum differs from the original's"


# ---------------------------------------------------------------------------
# A chain: every restorable checkpoint restores to its own moment


@needs_kernel
@pytest.mark.timeout(150)
@pytest.mark.parametrize("pre_dumps", [0, 2], ids=["full+4incremental", "2pre+3dumps"])
def test_every_checkpoint_of_a_chain_restores_its_own_state(
        pre_dumps: int, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
        tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    target = spawn([programs["zdtm_counter"], "-s", stop])
    counter_addr, buf_addr, buf_len = counter_state(target)
    expected = Profile.of(target.pid)
    links = 5
    with ckpt.Dumper(target.pid, images_dir) as dumper:
        for i in range(links):
            time.sleep(0.3)
            dumper.dump(pre=i < pre_dumps, after="kill" if i == links - 1 else "run")
    target.kill()
    # Restored processes stop counting at their first step: each keeps its checkpoint's counter.
    stop.touch()

    checkpoints = ckpt.ImageDir(images_dir).checkpoints
    assert [cp.id for cp in checkpoints] == list(range(1, links + 1))
    kinds = [cp.kind for cp in checkpoints]
    assert kinds[:pre_dumps] == ["pre"] * pre_dumps
    assert all(kind in ("full", "incremental") for kind in kinds[pre_dumps:]), kinds
    if not pre_dumps:
        assert kinds[0] == "full" and kinds[1:] == ["incremental"] * (links - 1), kinds
    restorable = checkpoints[pre_dumps:]
    in_image = {cp.id: int.from_bytes(cp.read_memory(counter_addr, 8), "little") for cp in restorable}
    ids = [cp.id for cp in restorable]
    assert all(in_image[a] < in_image[b] for a, b in zip(ids, ids[1:])), (
        f"the counter in the images does not grow along the chain: {in_image}")

    reported = {}
    for cp in restorable:
        lines = restore_and_check(images_dir, tmp_path, expected, "--checkpoint", cp.id,
                                  name=f"restore-{cp.id}")
        match = re.fullmatch(r"PASS counter=(\d+) crc=([0-9a-f]{8})", lines[-1])
        assert match, lines
        counter, crc = int(match[1]), int(match[2], 16)
        # The checkpoint may have caught a step half-done; the restored process completes it.
        assert counter - in_image[cp.id] in (0, 1), (
            f"checkpoint {cp.id} holds counter {in_image[cp.id]}, its restored process reports {counter}")
        if counter == in_image[cp.id]:
            assert crc == zlib.crc32(cp.read_memory(buf_addr, buf_len)), (
                f"the buffer restored from checkpoint {cp.id} differs from what the image reader gives")
        reported[cp.id] = counter
    assert all(reported[a] < reported[b] for a, b in zip(ids, ids[1:])), reported

    for cp in checkpoints[:pre_dumps]:
        refusal = restore_refused(images_dir, tmp_path, "--checkpoint", cp.id, name=f"refused-{cp.id}")
        assert_refused(refusal, None, binary=programs["zdtm_counter"])


# ---------------------------------------------------------------------------
# Refusals


@needs_kernel
@pytest.mark.timeout(90)
@pytest.mark.parametrize("change", ["append", "mtime", "delete"])
def test_refuses_a_changed_mapped_file(change: str, programs: dict[str, Path],
                                       spawn: Callable[..., Target], images_dir: Path,
                                       tmp_path: Path) -> None:
    target = spawn(single_argv(programs, tmp_path))
    dump_and_kill(target, images_dir)
    mapped = tmp_path / "map.bin"
    if change == "append":
        with open(mapped, "ab") as f:
            f.write(b"x")
    elif change == "mtime":
        st = mapped.stat()
        os.utime(mapped, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    else:
        mapped.unlink()
    refusal = restore_refused(images_dir, tmp_path)
    assert_refused(refusal, EXIT_IMAGE, re.escape(os.path.realpath(tmp_path)) + r"/map\.bin",
                   binary=programs["zdtm_single"])


@contextlib.contextmanager
def holding(pid: int, fd: int) -> Iterator[int]:
    """This process's own copy of ``pid``'s ``fd`` (pidfd_getfd), for the block."""
    pidfd = os.pidfd_open(pid)
    try:
        copy = pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        yield copy
    finally:
        os.close(copy)


@needs_kernel
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind,named", [("pipe", r"pipe|fifo"), ("socket", r"socket")])
def test_refuses_an_unsupported_fd(kind: str, named: str, programs: dict[str, Path],
                                   spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    target = spawn([programs["zdtm_counter"], "-f", kind])
    assert re.match(rf"({named}):", os.readlink(f"/proc/{target.pid}/fd/5"))
    # A pipe whose read end is closed restores (ckpt/files/pipe.py), and so does a socket
    # whose peer is closed (ckpt/files/unix.py): this process holding it too makes it one
    # a restore cannot give back.
    held = holding(target.pid, 5)
    # dump --kill refuses such a target (test_restorable.py); dump it, then kill it.
    with held:
        ckpt.dump(target.pid, images_dir)
    target.kill()
    refusal = restore_refused(images_dir, tmp_path)
    assert_refused(refusal, EXIT_UNSUPPORTED, r"\bfd 5\b", named, binary=programs["zdtm_counter"])


@needs_kernel
@pytest.mark.timeout(90)
def test_refuses_a_corrupt_frame(programs: dict[str, Path], spawn: Callable[..., Target],
                                 images_dir: Path, tmp_path: Path) -> None:
    target = spawn([programs["zdtm_counter"]])
    dump_and_kill(target, images_dir)
    pages = images_dir / "000001" / "pages.ckpt"
    data = bytearray(pages.read_bytes())
    assert len(data) > 1 << 20, "16 MiB of pseudo-random pages should not compress away"
    data[len(data) // 2] ^= 0x40
    pages.write_bytes(bytes(data))
    refusal = restore_refused(images_dir, tmp_path)
    assert_refused(refusal, EXIT_IMAGE, r"checkpoint\D{0,3}0*1\b|\b000001\b", binary=programs["zdtm_counter"])


# ---------------------------------------------------------------------------
# Exit status, signals, --detach, --same-pid, credentials


@needs_kernel
@pytest.mark.timeout(60)
def test_exit_status_of_the_restored_process_is_ckpts(programs: dict[str, Path],
                                                      spawn: Callable[..., Target], images_dir: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZDTM_CORRUPT", "buffer")   # the restored process damages itself, then checks
    expected = checkpointed_counter(programs, spawn, images_dir, tmp_path)
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        assert rc == 1, "ckpt should exit with the restored process's status" + run.explain()
        assert any(line.startswith("FAIL: ") for line in run.output()), run.explain()


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_and_reported_as_128_plus_signal(
        sig: signal.Signals, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
        tmp_path: Path) -> None:
    expected = checkpointed_counter(programs, spawn, images_dir, tmp_path)
    with restoring(images_dir, tmp_path, expected) as run:
        run.proc.send_signal(sig)
        assert run.pidfd is not None
        assert wait_pidfd(run.pidfd, 10), f"{sig.name} to ckpt did not end the restored process" + run.explain()
        rc = run.wait(30)
        assert rc == 128 + sig, f"wanted exit {128 + sig} after {sig.name}" + run.explain()
        assert not run.output(), "the restored process should have died of the signal" + run.explain()


@needs_kernel
@pytest.mark.timeout(90)
def test_a_sigint_just_after_the_release_is_passed_on_not_an_interruption(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """A SIGINT that reaches an attached ``ckpt restore`` just after the release, while it
    hands write tracking to its holder, belongs to the restored process: ckpt holds it
    and passes it on (restore.hold_forwarded).  It used to interrupt ckpt there: exit
    130, "interrupted", and the restored process left running on its own."""
    checkpointed_counter(programs, spawn, images_dir, tmp_path)
    log = tmp_path / "restore.log"
    run = Restore(images_dir, tmp_path, "--log-file", log, name="early-sigint")
    restored = None
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"restore: release: ", read_text(str(log))):   # marked as the release ends
            assert run.proc.poll() is None and time.monotonic() < deadline, "no release" + run.explain()
            time.sleep(0.0005)
        run.proc.send_signal(signal.SIGINT)   # hand-over of the tracking is under way (tens of ms)
        created = re.search(r"restore: create: .*?pid (\d+)", read_text(str(log)))
        assert created, read_text(str(log))
        restored = os.pidfd_open(int(created.group(1)))
        rc = run.wait(30)
        assert "interrupted" not in read_text(str(run.ckpt_err)), "ckpt took the SIGINT as its own" + run.explain()
        assert rc == 128 + signal.SIGINT, "wanted the restored process's death by SIGINT" + run.explain()
        assert wait_pidfd(restored, 10), "the restored process outlived ckpt" + run.explain()
    finally:
        if restored is not None:
            with contextlib.suppress(OSError, RuntimeError):
                kill_by_pidfd(restored)
            os.close(restored)
        run.close()


def _detached_checks(pid: int, expected: Profile, out: Path, timeout: float = 10) -> None:
    """The detached restored process is complete; SIGUSR1 makes it pass and exit (not our child)."""
    pidfd = os.pidfd_open(pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                profile, tracer = Profile.of(pid), int(proc_status_field(pid, "TracerPid"))
            except (OSError, KeyError):
                raise AssertionError(f"the detached process {pid} is gone before SIGUSR1: "
                                     f"{read_text(str(out))!r}") from None
            if profile == expected and tracer == 0 and state_or_gone(pid) in ("R", "S"):
                break
            assert time.monotonic() < deadline, (
                f"detached process {pid}: {profile}, tracer {tracer}; wanted {expected}")
            time.sleep(0.05)
        assert signal_until_exit(pidfd, 30), f"detached process {pid} did not exit after SIGUSR1"
        assert state_or_gone(pid) in ("Z", "X", "gone")
        lines = out.read_text().splitlines()
        assert lines and lines[-1].startswith("PASS"), f"detached process {pid} printed {lines}"
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            kill_by_pidfd(pidfd)
        os.close(pidfd)


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("json_output", [False, True], ids=["plain", "json"])
def test_detach_returns_at_once_and_the_process_lives_on(
        json_output: bool, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
        tmp_path: Path) -> None:
    expected = checkpointed_counter(programs, spawn, images_dir, tmp_path)
    out, ckpt_out, ckpt_err = tmp_path / "detached.stdout", tmp_path / "ckpt.stdout", tmp_path / "ckpt.stderr"
    argv = ckpt_argv("restore", "-D", images_dir, "--detach", "--stdout", out,
                     "--stderr", tmp_path / "detached.stderr", *(["--json"] if json_output else []))
    pid = None
    try:
        with open(ckpt_out, "w") as o, open(ckpt_err, "w") as e:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=ckpt_env(),
                                    cwd=REPO_ROOT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=30)
            raise AssertionError("ckpt restore --detach did not return while the restored process lives")
        stdout = ckpt_out.read_text()
        assert rc == 0, f"ckpt restore --detach exited {rc}: {read_text(str(ckpt_err))!r}"
        if json_output:
            pid = json.loads(stdout)["pid"]
            assert isinstance(pid, int)
        else:
            # The restored pid is the number in the output that is a process looking like the target.
            alive = []
            for n in set(re.findall(r"\b\d+\b", stdout)):
                with contextlib.suppress(OSError, KeyError, ValueError):
                    if Profile.of(int(n)) == expected:
                        alive.append(int(n))
            assert len(alive) == 1, f"no (or more than one) restored pid in {stdout!r}"
            pid = alive[0]
        assert state_or_gone(pid) not in ("Z", "X", "gone"), f"the detached process {pid} is not alive"
        _detached_checks(pid, expected, out)
    finally:
        if pid is not None and state_or_gone(pid) not in ("Z", "X", "gone"):
            with contextlib.suppress(OSError, RuntimeError):
                fd = os.pidfd_open(pid)
                try:
                    kill_by_pidfd(fd)
                finally:
                    os.close(fd)


@needs_kernel
@pytest.mark.timeout(60)
def test_api_restore_detach_returns_at_once(programs: dict[str, Path], spawn: Callable[..., Target],
                                         images_dir: Path, tmp_path: Path) -> None:
    expected = checkpointed_counter(programs, spawn, images_dir, tmp_path)
    stdin, out, err = tmp_path / "in.txt", tmp_path / "api.stdout", tmp_path / "api.stderr"
    stdin.write_text("nothing to read\n")
    for path in (out, err):
        path.write_text("")
    # detach=True: the default waits, as ckpt restore (test_restore_terminal.py).
    res = ckpt.restore(images_dir, detach=True, stdin=stdin, stdout=str(out), stderr=err)
    pid = res.pid
    pidfd = os.pidfd_open(pid)
    # Detached from the API, the process may still be this process's child (ckpt forks it from
    # the caller and does not wait): then it is ours to reap once it has exited.
    ours = int(_stat_fields(pid)[1]) == os.getpid()
    try:
        assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == [str(stdin), str(out), str(err)]
        _detached_checks(pid, expected, out)
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            kill_by_pidfd(pidfd)
        os.close(pidfd)
        if ours:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


# A Python target whose SIGUSR1 handler runs on an alternate signal stack if the thread has
# one: CPython installs its handlers with SA_ONSTACK (Modules/signalmodule.c).
ONSTACK_TARGET = r"""
import os, signal
go = []
signal.signal(signal.SIGUSR1, lambda *a: go.append(1))
print("ready", os.getpid(), flush=True)
while not go:
    signal.pause()
print("PASS", flush=True)
"""


@needs_kernel
@pytest.mark.timeout(60)
def test_api_restore_from_a_thread_with_an_alternate_signal_stack(spawn: Callable[..., Target],
                                                                  images_dir: Path, tmp_path: Path) -> None:
    """The restore child is forked from the caller's thread and keeps its sigaltstack (kernel/fork.c
    copy_process); a restored thread that had none must not keep it.  Before: the restored
    process died of SIGSEGV in its first SA_ONSTACK handler when the caller had an alternate
    stack (faulthandler.enable() makes one, as pytest does)."""
    import faulthandler

    faulthandler.enable()
    target = spawn([sys.executable, "-c", ONSTACK_TARGET], cls=Target)
    dump_and_kill(target, images_dir)
    out = tmp_path / "api.stdout"
    res = ckpt.restore(images_dir, detach=True, stdin=os.devnull, stdout=out, stderr=tmp_path / "api.stderr")
    pidfd = os.pidfd_open(res.pid)
    try:
        signal_until_exit(pidfd, 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        _, status = os.waitpid(res.pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"status {status:#x}: {out.read_text()!r}"
    assert out.read_text().splitlines() == ["PASS"]


@needs_kernel
@pytest.mark.timeout(90)
def test_same_pid(programs: dict[str, Path], spawn: Callable[..., Target], tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    for attempt in range(2):
        images_dir = tmp_path / f"images-{attempt}"
        target = spawn([programs["zdtm_counter"], "-s", stop])
        old_pid = target.pid
        expected = Profile.of(old_pid)
        dump_and_kill(target, images_dir)
        stop.touch()
        if os.path.exists(f"/proc/{old_pid}"):
            stop.unlink()
            continue   # the pid was taken meanwhile
        try:
            with restoring(images_dir, tmp_path, expected, "--same-pid", name=f"same-pid-{attempt}") as run:
                assert run.pid == old_pid, f"--same-pid restored pid {run.pid}, not {old_pid}" + run.explain()
                rc = run.go()
                assert rc == 0 and run.output()[-1].startswith("PASS"), run.explain()
        except AssertionError:
            # Everything this restore made is reaped by now: a process with that pid is another one.
            if attempt == 0 and os.path.exists(f"/proc/{old_pid}"):
                stop.unlink()
                continue
            raise
        return
    pytest.skip(f"pid {old_pid} was taken by another process right after the dump, twice")


@needs_kernel
@pytest.mark.timeout(90)
def test_same_pid_refused_while_the_original_lives(programs: dict[str, Path], spawn: Callable[..., Target],
                                                   images_dir: Path, tmp_path: Path) -> None:
    target = spawn([programs["zdtm_counter"]])
    ckpt.dump(target.pid, images_dir)   # the target keeps running
    refusal = restore_refused(images_dir, tmp_path, "--same-pid")
    assert_refused(refusal, None, binary=programs["zdtm_counter"], exclude=[target.pid])
    assert target.alive(), "the original must not be touched by a refused restore"


@needs_kernel
@pytest.mark.timeout(90)
def test_credentials_survive(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                             tmp_path: Path) -> None:
    # nobody cannot reach pytest's 0700 temporary directories: a 0755 one in /tmp.
    top = Path(tempfile.mkdtemp(prefix="ckpt-zdtm-nobody-", dir="/tmp"))
    try:
        top.chmod(0o755)
        binary = top / "zdtm_single"
        shutil.copyfile(programs["zdtm_single"], binary)
        binary.chmod(0o755)
        work = top / "work"
        (work / "cwd").mkdir(parents=True)
        for path in (work, work / "cwd"):
            os.chown(path, NOBODY, NOBODY)
        target = spawn([binary, work / "map.bin", work / "data.bin", work / "cwd"], cls=NobodyTarget)
        for field in ("Uid", "Gid"):
            assert proc_status_field(target.pid, field).split() == [str(NOBODY)] * 4
        expected = Profile.of(target.pid)
        dump_and_kill(target, images_dir)

        def inspect(run: Restore) -> None:
            assert run.pid is not None
            for field in ("Uid", "Gid"):
                assert proc_status_field(run.pid, field).split() == [str(NOBODY)] * 4, (
                    f"restored {field}: {proc_status_field(run.pid, field)}")
            assert proc_status_field(run.pid, "Groups") == ""
            for field in ("CapEff", "CapPrm"):
                assert int(proc_status_field(run.pid, field), 16) == 0, (
                    f"restored {field}: {proc_status_field(run.pid, field)}")

        assert restore_and_check(images_dir, tmp_path, expected, inspect=inspect) == ["PASS"]
    finally:
        shutil.rmtree(top, ignore_errors=True)


FS_IDS = r"""
import ctypes, os, signal
libc = ctypes.CDLL(None)
os.setresgid(1001, 1002, 1003)
libc.setfsgid(1004)                  # as root: any fs gid
os.setresuid(1001, 1002, 1003)
libc.setfsuid(1003)                  # the saved uid: allowed without privilege (setfsuid(2))
print("ready", os.getpid(), flush=True)
signal.pause()
"""


@needs_kernel
@pytest.mark.timeout(90)
def test_fs_ids_that_differ_from_the_effective_ones_survive(spawn: Callable[..., Target], images_dir: Path) -> None:
    """setresgid/setresuid set the fs id to the effective one (kernel/sys.c): a restore that
    sets the real/effective/saved ids only gave back fsgid 1002 for 1004, fsuid 1002 for 1003."""
    target = spawn([sys.executable, "-c", FS_IDS])
    before = {field: proc_status_field(target.pid, field).split() for field in ("Uid", "Gid")}
    assert before == {"Uid": ["1001", "1002", "1003", "1003"], "Gid": ["1001", "1002", "1003", "1004"]}
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", timeout=60)
    assert result.returncode == 0, result.stderr
    restored = run_ckpt("restore", "-D", images_dir, "--detach", "--json", timeout=60)
    assert restored.returncode == 0, restored.stderr
    pid = json.loads(restored.stdout)["pid"]
    try:
        assert {field: proc_status_field(pid, field).split() for field in ("Uid", "Gid")} == before
    finally:
        os.kill(pid, signal.SIGKILL)

"""Restorability (issue 7, items 10 and 11): decided before a ``--kill``, reported, refused by name.

Each target (tests/programs/resource_target.c) holds one resource a restore
cannot give back -- a pipe or a socket this process holds too, a deleted file above the ghost limit, an
io_uring, a POSIX/flock/OFD lock, a lease.  ``ckpt dump --kill`` of it
must refuse (exit 10, one line naming the reason), leave it running, untraced
and able to use that resource; ``--json``, ``inspect`` and ``verify`` must say
why the checkpoint is not restorable, and ``restore`` must refuse it by name.
A target holding nothing of the kind is still killed and restored, and the
notes of the dump and of the restore name the fds 0-2 that a restore replaces.
A seccomp filter, once refused here too, is restored (issue 8): the target is
killed, restored, and its filter still works.  A child, once refused here too, comes
back with its parent (issue 9: tests/test_trees.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import subprocess
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt import procfs, restorability
from ckpt._sys.pidfd import pidfd_getfd
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.errors import KillRefused
from ckpt.image import schema
from helpers import (REPO_ROOT, Target, canned_record, canned_state, ckpt_argv, ckpt_env, proc_state,
                     require_feature, run_ckpt, tracer_pid)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_NOT_RESTORABLE = 9   # errors.NotRestorable (a TargetError)
EXIT_KILL_REFUSED = 10    # errors.KillRefused
NR_IO_URING_SETUP = 425
IO_URING_PARAMS_SIZE = 120  # sizeof(struct io_uring_params)

# kind -> (takes a PATH, the reason a refusal must name; {path} and {child} are filled in)
CASES: dict[str, tuple[bool, str]] = {
    "pipe": (False, r"fd 5 is a pipe \(pipe:\[\d+\]\)"),
    "socket": (False, r"fd 5 is a unix stream socket connected within the process \(socket:\[\d+\]\), also open "
                      r"in pid \d+"),
    # A deleted file is kept up to the ghost limit (ckpt/files/ghost.py); this one is larger.
    "deleted": (True, r"fd 5 refers to the deleted file {path}: its 2,101,248 bytes of data are more than the "
                      r"ghost limit \(1,048,576 bytes; dump --ghost-limit\)"),
    "iouring": (False, r"fd 5 is an io_uring \(anon_inode:\[io_uring\]\)"),
    "fcntl": (True, r"fd 5 holds a POSIX write lock on {path} \(bytes 100-149\)"),
    "flock": (True, r"fd 5 holds a flock exclusive lock on {path}"),
    "ofd": (True, r"fd 5 holds an OFD write lock on {path} \(bytes 0-EOF\)"),
    "lease": (True, r"fd 5 holds a read lease on {path}"),
}
# What /proc/locks shows for each lock kind while the target holds it.
LOCK_KINDS = {"fcntl": "POSIX", "flock": "FLOCK", "ofd": "OFDLCK", "lease": "LEASE"}


def io_uring_available() -> tuple[bool, str]:
    """Can this process create an io_uring?  (kernel.io_uring_disabled, seccomp, CONFIG_IO_URING)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(IO_URING_PARAMS_SIZE)
    fd = libc.syscall(NR_IO_URING_SETUP, 1, params)
    if fd < 0:
        err = ctypes.get_errno()
        try:
            disabled = Path("/proc/sys/kernel/io_uring_disabled").read_text().strip()
        except OSError:
            disabled = "absent"
        return False, f"io_uring_setup: {os.strerror(err)} (kernel.io_uring_disabled = {disabled})"
    os.close(fd)
    return True, ""


def start(kind: str, programs: dict[str, Path], spawn: Callable[..., Target], tmp_path: Path) -> tuple[Target, str]:
    """A resource_target holding ``kind``; returns it and the reason a refusal must name."""
    if kind == "iouring":
        require_feature("io_uring", *io_uring_available())
    takes_path, reason = CASES.get(kind, (False, ""))
    path = tmp_path / f"{kind}.res"
    target = spawn([programs["resource_target"], kind, *([path] if takes_path else [])])
    words = target.readline().split()
    assert words[:2] == ["holding", kind], words
    if kind in ("pipe", "socket"):
        # Both ends of a pipe, or of a socket pair, restore (ckpt/files/pipe.py, unix.py);
        # one that this process holds too does not: keep a copy of fd 5 while the target lives.
        pidfd = os.pidfd_open(target.pid)
        try:
            weakref.finalize(target, os.close, pidfd_getfd(pidfd, 5))
        finally:
            os.close(pidfd)
    assert target.cmd("check") == "", f"{kind}: the resource does not work before any dump"
    return target, reason.format(path=re.escape(str(path)), child=words[2])


def assert_healthy(target: Target, kind: str, tmp_path: Path) -> None:
    """Running (not stopped, not traced, not killed), answering, its resource still working."""
    assert target.alive(), f"{target!r} is gone (state {proc_state(target.pid) if target.alive() else 'dead'})"
    assert proc_state(target.pid) in ("R", "S"), f"{target!r} is in state {proc_state(target.pid)}"
    assert tracer_pid(target.pid) == 0, f"{target!r} is still traced"
    assert target.cmd("ping").isdigit()
    assert target.cmd("check") == "", f"{kind}: the resource no longer works after the refused dump"
    if kind in LOCK_KINDS:
        ino = os.stat(tmp_path / f"{kind}.res").st_ino
        with open("/proc/locks") as f:
            held = [lk for lk in procfs.parse_locks(f.read()) if lk.ino == ino and not lk.blocked]
        assert [lk.kind for lk in held] == [LOCK_KINDS[kind]], f"/proc/locks for inode {ino}: {held}"


def kill_restored(pid: int) -> None:
    """SIGKILL a restored process (not necessarily our child) and wait until it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 10)
    finally:
        os.close(pidfd)


def restore_refused(images_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``ckpt restore --detach`` that should refuse; anything it restores anyway is killed."""
    result = run_ckpt("restore", "-D", images_dir, "--detach", "--json", "--stdin", "/dev/null",
                      "--stdout", tmp_path / "restored.out", "--stderr", tmp_path / "restored.err")
    if result.returncode == 0:
        kill_restored(json.loads(result.stdout)["pid"])
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ckpt: "), f"wanted one 'ckpt: ' line: {result.stderr!r}"
    return lines[0]


# ---------------------------------------------------------------------------
# dump --kill of what a restore would refuse


@needs_kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", list(CASES))
def test_dump_kill_refuses_an_unrestorable_target_and_leaves_it_running(
        kind: str, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
        tmp_path: Path) -> None:
    target, reason = start(kind, programs, spawn, tmp_path)

    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == EXIT_KILL_REFUSED, (
        f"dump --kill of a target holding {kind}: exit {result.returncode}, stderr {result.stderr!r}")
    line = one_error_line(result)
    assert re.search(reason, line) and "left running" in line, line
    report = json.loads(result.stdout)
    assert report["restorable"] is False and report["killed"] is False, report
    assert any(re.search(reason, r) for r in report["unrestorable"]), report["unrestorable"]
    assert_healthy(target, kind, tmp_path)

    # The checkpoint was written, and says why it is not restorable.
    rows = json.loads(run_ckpt("inspect", images_dir, "--json").stdout)["checkpoints"]
    assert [(r["id"], r["restorable"]) for r in rows] == [(report["id"], False)], rows
    assert rows[0]["unrestorable"] == report["unrestorable"]
    table = run_ckpt("inspect", images_dir)
    assert table.returncode == 0 and re.search(rf"checkpoint {report['id']} is not restorable: .*{reason}",
                                               table.stdout), table.stdout
    verify = run_ckpt("verify", images_dir)
    assert verify.returncode == 0, verify.stderr
    assert re.search(rf"checkpoint {report['id']}: intact but not restorable: .*{reason}", verify.stdout), (
        verify.stdout)
    assert "not restorable: checkpoint 1" in verify.stdout.splitlines()[-1], verify.stdout

    # Once the target is gone, restore refuses the checkpoint by the same name.
    target.kill()
    refused = restore_refused(images_dir, tmp_path)
    assert refused.returncode == EXIT_NOT_RESTORABLE, (
        f"restore: exit {refused.returncode}, stdout {refused.stdout!r}, stderr {refused.stderr!r}")
    assert re.search(reason, one_error_line(refused)), refused.stderr


@needs_kernel
@pytest.mark.timeout(120)
def test_api_dump_kill_raises_kill_refused_with_the_report(programs: dict[str, Path],
                                                          spawn: Callable[..., Target],
                                                          images_dir: Path, tmp_path: Path) -> None:
    target, reason = start("fcntl", programs, spawn, tmp_path)
    with pytest.raises(KillRefused) as caught:
        ckpt.dump(target.pid, images_dir, after="kill")
    assert caught.value.exit_code == EXIT_KILL_REFUSED
    assert any(re.search(reason, r) for r in caught.value.reasons), caught.value.reasons
    assert caught.value.report.checkpoint.id == 1 and not caught.value.report.restorable
    assert_healthy(target, "fcntl", tmp_path)
    # The refused kill left tracking consistent: the next dump is incremental.
    report = ckpt.dump(target.pid, images_dir)
    assert report.kind == "incremental" and report.unrestorable == caught.value.reasons


# ---------------------------------------------------------------------------
# A restorable target: killed, restored, and fds 0-2 named in notes


def restored_pid(ckpt_stderr: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """The pid ``ckpt restore`` reports on stderr ("restored checkpoint N as pid P")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"restored checkpoint \d+ as pid (\d+)", ckpt_stderr.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"ckpt restore exited {proc.poll()} without a restored pid: "
                         f"{ckpt_stderr.read_text()!r}")


def restore_and_finish(images_dir: Path, tmp_path: Path, *args: str | Path) -> tuple[str, str, str]:
    """``ckpt restore ARGS`` (waiting for the process); SIGUSR1 makes the restored
    target print PASS and exit.  Returns (ckpt's stdout file, ckpt's stderr, restored stdout)."""
    ckpt_out, ckpt_err = tmp_path / "ckpt.out", tmp_path / "ckpt.err"
    with open(ckpt_out, "w") as out, open(ckpt_err, "w") as err:
        proc = subprocess.Popen(ckpt_argv("restore", "-D", images_dir, "--stdin", "/dev/null", *args),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=ckpt_env(), cwd=REPO_ROOT)
    pid = None
    try:
        pid = restored_pid(ckpt_err, proc)
        deadline = time.monotonic() + 20
        while proc_state(pid) not in ("S", "R") or tracer_pid(pid) != 0:
            assert time.monotonic() < deadline, f"restored pid {pid} never ran untraced"
            time.sleep(0.02)
        # Sent again until it exits: ``while (!go) pause();`` can miss one (test_restore).
        deadline = time.monotonic() + 30
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"restored pid {pid} did not exit after SIGUSR1"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
            time.sleep(0.5)
        assert proc.returncode == 0, f"restore exited {proc.returncode}: {ckpt_err.read_text()!r}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid is not None:
            kill_restored(pid)
    restored = Path(args[args.index("--stdout") + 1]).read_text() if "--stdout" in args else ""
    return ckpt_out.read_text(), ckpt_err.read_text(), restored


@needs_kernel
@pytest.mark.timeout(120)
def test_a_restorable_target_is_still_killed_and_restores(programs: dict[str, Path],
                                                          spawn: Callable[..., Target],
                                                          images_dir: Path, tmp_path: Path) -> None:
    target, _ = start("none", programs, spawn, tmp_path)
    stdout_pipe = os.readlink(f"/proc/{target.pid}/fd/1")
    assert stdout_pipe.startswith("pipe:[")

    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"] is True and report["unrestorable"] == [] and report["killed"] is True, report
    # Item 11: the dump's notes say that fds 0-2 are not restored, naming the pipe.
    assert any(f"fd 1 is a pipe ({stdout_pipe})" in note for note in report["restore_notes"]), report
    target.wait_state("Z", timeout=10)
    target.kill()
    assert target.proc.returncode == -signal.SIGKILL

    rows = json.loads(run_ckpt("inspect", images_dir, "--json").stdout)["checkpoints"]
    assert rows[0]["restorable"] is True and rows[0]["unrestorable"] == []
    verify = run_ckpt("verify", images_dir)
    assert verify.returncode == 0 and verify.stdout.splitlines()[-1].endswith(": OK"), verify.stdout

    out = tmp_path / "restored.out"
    _, ckpt_err, restored = restore_and_finish(images_dir, tmp_path, "--stdout", out,
                                               "--stderr", tmp_path / "restored.err")
    assert restored.splitlines()[-1:] == ["PASS"], restored
    assert f"note: fd 1 was a pipe ({stdout_pipe}); it is now {out}" in ckpt_err, ckpt_err


@needs_kernel
@pytest.mark.timeout(120)
def test_a_seccomp_filtered_target_is_killed_and_restored_with_its_filter(programs: dict[str, Path],
                                                                         spawn: Callable[..., Target],
                                                                         images_dir: Path, tmp_path: Path) -> None:
    """Issue 8: the seccomp case of the refusals above now restores.  The restored
    target checks on SIGUSR1 that syscall 1000 still fails with EPERM (its filter)
    before it prints PASS."""
    target, _ = start("seccomp", programs, spawn, tmp_path)
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"] is True and report["killed"] is True, report
    target.wait_state("Z", timeout=10)
    target.kill()
    out = tmp_path / "restored.out"
    _, _, restored = restore_and_finish(images_dir, tmp_path, "--stdout", out, "--stderr", tmp_path / "restored.err")
    assert restored.splitlines()[-1:] == ["PASS"], restored


@needs_kernel
@pytest.mark.timeout(120)
def test_restore_names_the_pipe_it_replaced_with_its_own_stdout(programs: dict[str, Path],
                                                                spawn: Callable[..., Target],
                                                                images_dir: Path, tmp_path: Path) -> None:
    """Item 11: a target whose stdout was a pipe restores, and the restore says that
    fd 1 is now ckpt's own stdout instead."""
    target, _ = start("none", programs, spawn, tmp_path)
    stdout_pipe = os.readlink(f"/proc/{target.pid}/fd/1")
    assert stdout_pipe.startswith("pipe:[")
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
    assert result.returncode == 0, result.stderr
    assert re.search(r"on restore: fds 0-2 are not restored \(fd 0 is a pipe \(pipe:\[\d+\]\), "
                     + re.escape(f"fd 1 is a pipe ({stdout_pipe})"), result.stdout), result.stdout
    target.kill()

    ckpt_out, ckpt_err, _ = restore_and_finish(images_dir, tmp_path)
    ckpt_stdout_path = str(tmp_path / "ckpt.out")
    assert f"note: fd 1 was a pipe ({stdout_pipe}); it is now ckpt's stdout ({ckpt_stdout_path})" in ckpt_err, (
        ckpt_err)
    assert re.search(r"note: fd 0 was a pipe \(pipe:\[\d+\]\); it is now /dev/null", ckpt_err), ckpt_err
    assert ckpt_out.splitlines()[-1:] == ["PASS"], ckpt_out  # the restored process wrote to ckpt's stdout


# ---------------------------------------------------------------------------
# The rules themselves, on canned records


def _state(**process: object) -> dict[str, object]:
    # Version 1: fd records that are each their own open file (schema.FD_V1).
    return {"version": 1, "threads": [{"tid": 10}], "target": {"pid": 10},
            "process": {"pid": 10, "creds": {"seccomp": 0}, **process}, "fds": []}


def _fd(num: int, kind: str, target: str, **extra: object) -> dict[str, object]:
    return {"fd": num, "kind": kind, "target": target, "anon_type": "", "deleted": False, "mode": 0,
            "rdev": 0, "locks": [], **extra}


class _Vma:
    def __init__(self, start: int, kind: str, path: str) -> None:
        self.start, self.end, self.kind, self.path = start, start + 0x1000, kind, path


@pytest.mark.parametrize("state,vmas,expected", [
    (_state(), [], []),
    ({**_state(), "fds": [_fd(0, "fifo", "pipe:[7]"), _fd(3, "regular", "/x")]}, [], []),
    ({**_state(), "fds": [_fd(4, "fifo", "pipe:[7]")]}, [], [r"^fd 4 is a pipe \(pipe:\[7\]\)"]),
    ({**_state(), "fds": [_fd(3, "regular", "/x (deleted)", deleted=True)]}, [],
     [r"^fd 3 refers to a deleted file \(/x \(deleted\)\)"]),
    ({**_state(), "fds": [_fd(3, "anon", "anon_inode:[eventfd]", anon_type="eventfd")]}, [],
     [r"^fd 3 is an eventfd \(anon_inode:\[eventfd\]\)"]),
    # A lock counts on fds 0-2 too: those are replaced, and the lock would be gone.
    ({**_state(), "fds": [_fd(1, "regular", "/db", locks=[
        {"kind": "POSIX", "access": "WRITE", "start": 0, "end": None}])]}, [],
     [r"^fd 1 holds a POSIX write lock on /db \(bytes 0-EOF\)"]),
    ({**_state(), "fds": [_fd(3, "regular", "/db", locks=[
        {"kind": "FLOCK", "access": "READ", "start": 0, "end": None},
        {"kind": "LEASE", "access": "WRITE", "start": 0, "end": None}])]}, [],
     [r"^fd 3 holds a flock shared lock on /db", r"^fd 3 holds a write lease on /db"]),
    (_state(creds={"seccomp": 2}), [], [r"seccomp \(a filter\)"]),
    (_state(children=[{"pid": 11, "comm": "worker"}, {"pid": 12, "comm": "worker"}]), [],
     [r"^pid 10 has children \(pid 11 \(worker\), pid 12 \(worker\)\)"]),
    (_state(), [_Vma(0x1000, "device", "/dev/dri/card0")], [r"^the device mapping /dev/dri/card0 at 0x1000-0x2000"]),
    (_state(), [_Vma(0x1000, "file-shared", "anon_inode:[io_uring]"),
                _Vma(0x3000, "file-shared", "anon_inode:[io_uring]")],
     [r"^the mapping of anon_inode:\[io_uring\] at 0x1000-0x2000, 0x3000-0x4000 is not a file"]),
    (_state(), [_Vma(0x1000, "file-private", "/lib/x.so (deleted)")], [r"^the mapping at 0x1000-0x2000 is of a "
                                                                        r"deleted file"]),
    (_state(), [_Vma(0x1000, "shmem", "/memfd:x (deleted)")], []),   # its content is stored
    ({"version": 1, "threads": []}, [], [r"^no task state was recorded"]),
])
def test_assess_table(state: dict[str, object], vmas: list[_Vma], expected: list[str]) -> None:
    verdict = restorability.assess(canned_state(state), vmas)
    assert len(verdict.reasons) == len(expected), verdict.reasons
    for pattern, reason in zip(expected, verdict.reasons):
        assert re.search(pattern, reason), (pattern, reason)
    assert verdict.restorable == (not expected)


def test_a_pre_dump_is_never_restorable() -> None:
    verdict = restorability.assess(canned_state(_state()), [], kind="pre")
    assert not verdict.restorable and "pre-dump" in verdict.reasons[0]


def test_std_stream_notes_skip_the_same_terminal_or_null_device() -> None:
    null = os.stat("/dev/null")
    fds = [_fd(0, "chardev", "/dev/null", mode=null.st_mode, rdev=null.st_rdev), _fd(1, "fifo", "pipe:[9]")]
    notes = restorability.std_stream_notes([canned_record(schema.FD_V1, fd) for fd in fds],
                                           {0: "/dev/null", 1: "/tmp/out", 2: "/dev/null"})
    assert notes == ["fd 1 was a pipe (pipe:[9]); it is now /tmp/out", "fd 2 was closed; it is now /dev/null"]

"""Invariant 5, bad input: one clear line, the documented exit code, nothing left behind.

Every error case checks that the ``ckpt`` command printed exactly one line on
stderr starting with ``ckpt: `` (never a traceback), exited with the error's
code, created no checkpoint, and left the target as it found it: running (not
in state T/t), not traced, with the same fds.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

import ckpt
from ckpt import errors
from ckpt.image.schema import TASK_STATE_VERSION
from helpers import (
    MIB,
    PAGE,
    MemTarget,
    Target,
    assert_image_matches,
    ckpt_argv,
    ckpt_env,
    fd_table,
    proc_state,
    proc_status_field,
    read_target_memory,
    run_ckpt,
    tracer_pid,
)

pytestmark = pytest.mark.usefixtures("ckpt_kernel")


def assert_clean_error(result: subprocess.CompletedProcess[str], exit_codes: int | set[int],
                       mentions: tuple[str, ...] = ()) -> str:
    """The command failed with one ``ckpt: `` line on stderr and an expected code; return the line."""
    codes = {exit_codes} if isinstance(exit_codes, int) else exit_codes
    output = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert "Traceback" not in result.stderr + result.stdout, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr; {output}"
    assert lines[0].startswith("ckpt: "), output
    assert result.returncode in codes, f"expected exit code {sorted(codes)}; {output}"
    for word in mentions:
        assert word.lower() in lines[0].lower(), f"the message should name {word!r}; {output}"
    return lines[0]


def assert_no_checkpoint(images_dir: Path) -> None:
    """No checkpoint, nor staging directory, exists in ``images_dir``.

    Checkpoints and staging areas are directories; plain files (a lock, the
    images directory's marker) may remain from setting the directory up.
    """
    if not images_dir.exists():
        return
    left = sorted(e.name for e in images_dir.iterdir() if e.is_dir())
    assert not left, f"a failed dump left {left} in {images_dir}"


def dir_listing(images_dir: Path) -> list[str]:
    """Everything in an images directory except its lock file."""
    return sorted(name for name in os.listdir(images_dir) if name != ".lock")


def assert_target_untouched(target: Target, fds_before: dict[int, str]) -> None:
    state = proc_state(target.pid)
    assert state not in ("T", "t"), f"ckpt left target {target.pid} stopped (state {state})"
    assert tracer_pid(target.pid) == 0, f"ckpt left target {target.pid} traced"
    assert fd_table(target.pid) == fds_before, "ckpt changed the target's fd table"


@pytest.mark.parametrize("command", ["dump", "pre-dump"])
def test_unknown_pid(command: str, images_dir: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process now
    pid = child.pid
    assert not os.path.exists(f"/proc/{pid}")

    line = assert_clean_error(run_ckpt(command, "--pid", pid, "-D", images_dir),
                              errors.NoSuchProcess.exit_code)
    assert str(pid) in line
    assert_no_checkpoint(images_dir)
    with pytest.raises(errors.NoSuchProcess):
        ckpt.dump(pid, images_dir, pre=command == "pre-dump")
    assert_no_checkpoint(images_dir)


def test_kernel_thread_is_access_denied(images_dir: Path) -> None:
    comm = Path("/proc/2/comm")
    if not comm.exists() or comm.read_text().strip() != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here (a PID namespace?)")
    assert_clean_error(run_ckpt("dump", "--pid", "2", "-D", images_dir), errors.AccessDenied.exit_code)
    assert_no_checkpoint(images_dir)
    assert tracer_pid(2) == 0
    assert proc_state(2) not in ("T", "t")


def test_a_filter_blocking_userfaultfd_does_not_stop_the_dump(spawn, programs, images_dir: Path) -> None:
    """userfaultfd(2) fails with ENOSYS in the target (a seccomp filter), the very syscall
    a dump injects to track writes.  The dump suspends the target's filters while it is
    frozen (PTRACE_O_SUSPEND_SECCOMP, as CRIU's): it used to give up, "kernel without
    userfaultfd".  Now two dumps succeed, the second incremental, the images hold the
    target's memory, and the target runs on with its filter, its fds and its memory as
    they were."""
    target = spawn([programs["seccomp_target"]])
    word, addr, length = target.readline().split()
    assert word == "buffer"
    addr, length = int(addr, 16), int(length)
    fds = fd_table(target.pid)
    buffer = read_target_memory(target.pid, addr, length)

    first = ckpt.dump(target.pid, images_dir)
    second = ckpt.dump(target.pid, images_dir)
    assert (first.kind, second.kind) == ("full", "incremental")
    assert_target_untouched(target, fds)
    assert read_target_memory(target.pid, addr, length) == buffer
    assert ckpt.ImageDir(images_dir).checkpoints[-1].read_memory(addr, length) == buffer
    assert proc_status_field(target.pid, "Seccomp") == "2"

    # It still runs: a tick printed after the dumps.
    target.drain()
    assert target.readline(timeout=5).startswith("tick ")


def test_target_exiting_during_a_dump(spawn, programs, tmp_path: Path) -> None:
    """Kill the target as soon as ckpt has attached to it, in the middle of a dump."""
    size = 128 * MIB
    outcomes = []
    for attempt in range(3):
        images_dir = tmp_path / f"images-{attempt}"
        target = spawn([programs["memtarget"]], cls=MemTarget)
        addr = target.map(size, thp="nohuge")
        target.fill(addr, size, 1)
        ckpt.dump(target.pid, images_dir)  # a chain the failed dump must leave intact
        target.fill(addr, size, 2)  # every page written: the next dump has work to do
        before = dir_listing(images_dir)

        cli = subprocess.Popen(ckpt_argv("dump", "--pid", target.pid, "-D", images_dir),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ckpt_env())
        try:
            killed = False
            while cli.poll() is None:
                try:
                    attached = tracer_pid(target.pid) != 0 or proc_state(target.pid) in ("T", "t")
                except (FileNotFoundError, ProcessLookupError):
                    break
                if attached:
                    os.kill(target.pid, signal.SIGKILL)
                    killed = True
                    break
            stdout, stderr = cli.communicate(timeout=90)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        target.kill()
        result = subprocess.CompletedProcess(cli.args, cli.returncode, stdout, stderr)

        if not killed:
            outcomes.append("missed")
            assert result.returncode == 0, result.stderr
            continue
        if result.returncode == 0:
            # Killed after everything was captured: a complete checkpoint is acceptable.
            outcomes.append("completed")
            assert len(list(ckpt.ImageDir(images_dir).checkpoints)) == 2
        else:
            outcomes.append("failed")
            assert_clean_error(result, {errors.TargetExited.exit_code, errors.NoSuchProcess.exit_code})
            assert dir_listing(images_dir) == before, "the failed dump left something behind"
            assert len(list(ckpt.ImageDir(images_dir).checkpoints)) == 1
        ckpt.ImageDir(images_dir).verify()
        assert run_ckpt("verify", images_dir).returncode == 0
        if outcomes[-1] == "failed":
            break
    assert "failed" in outcomes, f"the target was never killed mid-dump: {outcomes}"


def test_not_an_images_directory(memtarget: MemTarget, tmp_path: Path) -> None:
    directory = tmp_path / "not-images"
    directory.mkdir()
    (directory / "notes.txt").write_text("not a checkpoint\n")
    fds = fd_table(memtarget.pid)

    assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", directory),
                       errors.NotAnImageDir.exit_code)
    assert set(os.listdir(directory)) - {".lock"} == {"notes.txt"}
    assert (directory / "notes.txt").read_text() == "not a checkpoint\n"
    assert_target_untouched(memtarget, fds)
    memtarget.map(PAGE)  # and it still serves commands

    for command in ("inspect", "verify"):
        assert_clean_error(run_ckpt(command, directory), errors.NotAnImageDir.exit_code)
    with pytest.raises(errors.NotAnImageDir):
        ckpt.dump(memtarget.pid, directory)
    assert set(os.listdir(directory)) - {".lock"} == {"notes.txt"}


def test_locked_images_directory(memtarget: MemTarget, images_dir: Path) -> None:
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 1)
    ckpt.dump(memtarget.pid, images_dir)
    memtarget.memset(addr + 3 * PAGE, 3 * PAGE, 0x77)  # must survive the refused dumps
    lock_path = images_dir / ".lock"
    assert lock_path.exists(), "ckpt is expected to lock DIR/.lock with flock"
    fds = fd_table(memtarget.pid)

    with open(lock_path, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", images_dir, timeout=60),
                           errors.ImageDirLocked.exit_code)
        with pytest.raises(errors.ImageDirLocked):
            ckpt.dump(memtarget.pid, images_dir)
        assert len(list(ckpt.ImageDir(images_dir).checkpoints)) == 1
        assert_target_untouched(memtarget, fds)

    # The refused dumps lost nothing: the next one still holds the pages written before them.
    report = ckpt.dump(memtarget.pid, images_dir, after="stop")
    memtarget.wait_state("T")
    assert report.kind == "incremental"
    assert report.checkpoint.read_memory(addr + 3 * PAGE, 3 * PAGE) == b"\x77" * (3 * PAGE)
    assert_image_matches(report.checkpoint, memtarget.pid)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_verify_names_the_corrupt_checkpoint(memtarget: MemTarget, images_dir: Path, where: str) -> None:
    addr = memtarget.map(4 * MIB, thp="nohuge")
    memtarget.fill(addr, 4 * MIB, 5)
    checkpoint = ckpt.dump(memtarget.pid, images_dir).checkpoint
    assert run_ckpt("verify", images_dir).returncode == 0

    pages = images_dir / "000001" / "pages.ckpt"
    size = pages.stat().st_size
    assert size > 0
    offset = {"first": 0, "middle": size // 2, "last": size - 1}[where]
    with open(pages, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))

    result = run_ckpt("verify", images_dir)
    assert result.returncode != 0
    line = assert_clean_error(result, errors.CorruptImage.exit_code)
    assert "000001" in line or re.search(rf"checkpoint\W+{re.escape(str(checkpoint.id))}\b", line), (
        f"the message does not name the checkpoint: {line!r}"
    )
    with pytest.raises(errors.CorruptImage):
        ckpt.ImageDir(images_dir).verify()


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_missing_images_directory(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_clean_error(run_ckpt(command, missing), errors.ImageError.exit_code)
    assert not missing.exists(), f"ckpt {command} must not create the directory it reads"


# -- options refused before anything is touched ---------------------------------------------------


@pytest.mark.parametrize("command", ["dump", "pre-dump"])
def test_bad_compression_level_is_refused_before_attaching(command: str, memtarget: MemTarget,
                                                           images_dir: Path) -> None:
    """``--compress 99`` used to raise ValueError (a traceback) after attaching and
    creating the images directory."""
    fds = fd_table(memtarget.pid)
    result = run_ckpt(command, "--pid", memtarget.pid, "-D", images_dir, "--compress", "99")
    output = f"exit {result.returncode}\nstderr: {result.stderr!r}"
    assert "Traceback" not in result.stderr, output
    assert result.returncode == errors.UsageError.exit_code, output
    assert len(result.stderr.splitlines()) == 1 and "--compress" in result.stderr, output
    assert not images_dir.exists(), "a refused option created the images directory"
    assert_target_untouched(memtarget, fds)

    for level in (99, -2, True):
        with pytest.raises(errors.UsageError, match="compression level"):
            ckpt.dump(memtarget.pid, images_dir, pre=command == "pre-dump", compression_level=level)
    with pytest.raises(errors.UsageError, match="compression level"):
        ckpt.Dumper(memtarget.pid, images_dir, compression_level=20)
    with pytest.raises(errors.UsageError, match="pre-dump"):
        ckpt.dump(memtarget.pid, images_dir, pre=True, after="kill")
    assert not images_dir.exists()
    assert_target_untouched(memtarget, fds)


def test_count_and_interval_must_be_positive_numbers(memtarget: MemTarget, images_dir: Path) -> None:
    for option in (("--every", "1s", "--count", "0"), ("--every", "nan"), ("--every", "1e999s")):
        result = run_ckpt("dump", "--pid", memtarget.pid, "-D", images_dir, *option)
        assert result.returncode == errors.UsageError.exit_code, (option, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not images_dir.exists()


# -- an interrupt after the commit ----------------------------------------------------------------


def test_sigint_after_the_commit_between_periodic_dumps(memtarget: MemTarget, images_dir: Path) -> None:
    """Ctrl-C is how ``dump --every`` ends: the checkpoints it took are not a failure."""
    fds = fd_table(memtarget.pid)
    cli = subprocess.Popen(ckpt_argv("dump", "--pid", memtarget.pid, "-D", images_dir, "--every", "60s"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=ckpt_env())
    try:
        assert cli.stdout is not None
        first = cli.stdout.readline()  # printed after the commit; then it sleeps 60 s
        assert first.startswith("checkpoint 1 (full)"), first
        cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    output = f"exit {cli.returncode}\nstdout: {stdout!r}\nstderr: {stderr!r}"
    assert cli.returncode == 0, output
    assert stderr.splitlines() == ["ckpt: stopped by SIGINT: 1 checkpoint taken, the last is checkpoint 1"], output
    assert len(ckpt.ImageDir(images_dir).checkpoints) == 1
    ckpt.ImageDir(images_dir).verify()
    assert_target_untouched(memtarget, fds)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_after_the_commit_says_the_checkpoint_was_taken(sig: int, memtarget: MemTarget, images_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A real signal sent to ckpt itself while it hands the tracking over, after the
    commit: the dump succeeded, so it must not be reported as interrupted."""
    from ckpt import cli

    # ckpt.dump is a lazy name that a first import of the ckpt.dump module (by
    # cli.main below) would shadow with the module: resolve it first.
    assert callable(ckpt.dump)
    from ckpt.tasktracking import TaskTracking

    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 3)
    fds = fd_table(memtarget.pid)
    hand_over = TaskTracking.hand_over

    def signalled(self: TaskTracking, checkpoint_id: int) -> list[str]:
        assert (images_dir / f"{checkpoint_id:06d}").is_dir(), "committed before the hand-over"
        os.kill(os.getpid(), sig)  # Python raises at its next check, in the hand-over
        return hand_over(self, checkpoint_id)

    monkeypatch.setattr(TaskTracking, "hand_over", signalled)
    code = cli.main(["dump", "--pid", str(memtarget.pid), "-D", str(images_dir)])
    out, err = capsys.readouterr()
    output = f"exit {code}\nstdout: {out!r}\nstderr: {err!r}"
    name = signal.Signals(sig).name
    assert code == 0, output
    assert err.splitlines() == [f"ckpt: checkpoint 1 was taken; {name} arrived after its commit, before "
                                "tracking was handed over: the next dump will be full"], output
    assert out.startswith("checkpoint 1 (full)"), output
    assert_target_untouched(memtarget, fds)

    # The Python API says the same with an exception that carries the report
    # (SIGTERM raises through the handler the command installs, as in ckpt.cli).
    previous = signal.signal(signal.SIGTERM, cli._on_sigterm)
    try:
        with pytest.raises(errors.InterruptedAfterCommit) as info:
            ckpt.dump(memtarget.pid, images_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = info.value.report
    assert report.checkpoint.id == 2 and report.kind == "full" and info.value.signal_name == name
    assert report.checkpoint.read_memory(addr, MIB) == read_target_memory(memtarget.pid, addr, MIB)
    monkeypatch.undo()
    images = ckpt.ImageDir(images_dir)
    images.verify()
    assert [cp.id for cp in images.checkpoints] == [1, 2]
    assert_target_untouched(memtarget, fds)
    # Tracking was not handed over: the next dump is full, and complete.
    memtarget.memset(addr, PAGE, 0x5A)
    report = ckpt.dump(memtarget.pid, images_dir, after="stop")
    memtarget.wait_state("T")
    assert report.kind == "full" and report.checkpoint.id == 3
    assert_image_matches(report.checkpoint, memtarget.pid)


# -- crafted images: an attacker edits meta.ckpt and recomputes its crc ----------------------------


def edit_meta(images_dir: Path, checkpoint_id: int, edit: Callable[[dict[str, Any]], object]) -> None:
    """Apply ``edit`` to the msgpack body of a checkpoint's meta.ckpt; keep the header valid."""
    from ckpt.image.format import META_HEADER

    path = images_dir / f"{checkpoint_id:06d}" / "meta.ckpt"
    data = path.read_bytes()
    magic, version, _, _ = META_HEADER.unpack_from(data)
    body = msgpack.unpackb(data[META_HEADER.size:], raw=False, strict_map_key=False)
    edit(body)
    blob = msgpack.packb(body, use_bin_type=True)
    path.write_bytes(META_HEADER.pack(magic, version, zlib.crc32(blob), len(blob)) + blob)


def assert_refused_everywhere(images_dir: Path, mentions: tuple[str, ...],
                              code: int = errors.CorruptImage.exit_code) -> None:
    """``inspect``, ``verify`` and ``restore`` all refuse the images with one line naming the field."""
    for argv in (("inspect", images_dir), ("verify", images_dir),
                 ("restore", "-D", images_dir, "--detach", "--stdin", "/dev/null", "--stdout", "/dev/null",
                  "--stderr", "/dev/null")):
        result = run_ckpt(*argv)
        if argv[0] == "restore" and result.returncode == 0 and result.stdout.strip().isdigit():
            os.kill(int(result.stdout), signal.SIGKILL)  # restored from a crafted image: gone
        line = assert_clean_error(result, code, mentions)
        assert line.startswith("ckpt: checkpoint 1: meta.ckpt: ") or "CKPT-IMAGES" in line, line


@pytest.fixture
def checkpointed(memtarget: MemTarget, images_dir: Path) -> Path:
    """An images directory holding one full checkpoint of a live memtarget."""
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 9)
    ckpt.dump(memtarget.pid, images_dir, after="kill")
    return images_dir


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """An edit that sets the field at ``path`` ("state.threads.0.regs.rip") of a meta body."""
    *parents, last = path.split(".")

    def edit(body: dict[str, Any]) -> None:
        node: Any = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def edit(body: dict[str, Any]) -> None:
        node: Any = body
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return edit


# Each of these made restore (or dump) fail with a traceback (TypeError, KeyError,
# IndexError, AssertionError, struct.error), or act on garbage, while inspect and
# verify said the images were fine.
MALFORMED_STATE = {
    "register-not-a-u64": (_set("state.threads.0.regs.rip", "x"), "state.threads[0].regs.rip is str 'x'"),
    "register-negative": (_set("state.threads.0.regs.rsp", -1), "state.threads[0].regs.rsp is -1"),
    "regs-not-a-map": (_set("state.threads.0.regs", [1, 2, 3]), "state.threads[0].regs is list"),
    "mm-missing": (_delete("state.mm"), "state.mm is missing"),
    "uids-empty": (_set("state.process.creds.uids", []), "state.process.creds.uids"),
    "groups-not-u32": (_set("state.process.creds.groups", [-1]), "state.process.creds.groups[0]"),
    "sigaction-key-not-a-signal": (_set("state.sigactions", {"abc": {}}), "state.sigactions key 'abc'"),
    "sigaction-for-sigkill": (_set("state.sigactions", {9: {"handler": 1, "flags": 0, "restorer": 0, "mask": 0}}),
                              "state.sigactions[9]"),
    "signal-number-65": (_set("state.sigactions", {65: {"handler": 1, "flags": 0, "restorer": 0, "mask": 0}}),
                         "state.sigactions key 65"),
    "exe-longer-than-PATH_MAX": (_set("state.mm.exe", "/" * 20000), "state.mm.exe"),
    "cwd-with-a-NUL": (_set("state.process.cwd", "/tmp\0/etc"), "state.process.cwd contains a NUL"),
    "siginfo-short": (_set("state.threads.0.pending", [b"12"]), "state.threads[0].pending[0]"),
    "siginfo-of-signal-0": (_set("state.process.pending", [bytes(128)]), "state.process.pending[0]"),
    "sigaltstack-flags-not-i32": (_set("state.threads.0.sigaltstack.flags", 1 << 40),
                                  "state.threads[0].sigaltstack.flags"),
    "auxv-huge": (_set("state.mm.auxv", bytes(1 << 16)), "state.mm.auxv"),
    "fd-without-target": (_delete("state.files.0.target"), "state.files[0].target is missing"),
    "fd-without-file": (_delete("state.fds.0.file"), "state.fds[0].file is missing"),
    "rlimit-not-a-pair": (_set("state.process.rlimits.RLIMIT_NOFILE", [1, 2, 3]),
                          "state.process.rlimits['RLIMIT_NOFILE']"),
    "target-of-another-pid": (_set("state.target.pid", 1), "state.target.pid"),
    "tracking-armed-garbage": (_set("state.tracking.armed", b"\x01" * 16), "state.tracking.armed"),
    "threads-empty": (_set("state.threads", []), "state.threads"),
    # Each record class refuses a missing field, a wrong type, a value out of range by name.
    "thread-without-sigmask": (_delete("state.threads.0.sigmask"), "state.threads[0].sigmask is missing"),
    "robust-list-without-len": (_delete("state.threads.0.robust_list.len"),
                                "state.threads[0].robust_list.len is missing"),
    "creds-cap-not-an-int": (_set("state.process.creds.cap_eff", "all"), "state.process.creds.cap_eff is str"),
    "sched-policy-unknown-range": (_set("state.threads.0.sched.policy", 9), "state.threads[0].sched.policy is 9"),
    "itimer-without-value": (_delete("state.process.itimers.real.value_us"),
                             "state.process.itimers.real.value_us is missing"),
    "guard-not-a-range-array": (_set("state.mm.guard", "x"), "state.mm.guard is str"),
    "process-comm-not-a-name": (_set("state.process.comm", 5), "state.process.comm is int"),
    "target-as-a-list": (_set("state.target", [1]), "state.target is list"),
    "vma-perms-short": (_set("vmas.0.perms", "r"), "vmas[0].perms"),
    "time-past-any-calendar": (_set("time", 1e300), "time is 1e+300"),  # inspect: OverflowError
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STATE))
def test_malformed_task_state_is_refused_on_open(case: str, checkpointed: Path) -> None:
    edit, mention = MALFORMED_STATE[case]
    edit_meta(checkpointed, 1, edit)
    assert_refused_everywhere(checkpointed, (mention,))
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        ckpt.ImageDir(checkpointed).checkpoint(1)


def test_valid_state_restore_cannot_reproduce_is_refused_by_name(checkpointed: Path) -> None:
    """20,000 supplementary groups are valid (NGROUPS_MAX is 65,536) but do not fit the
    restorer's argument area (60 KiB: a seccomp filter takes up to 32 KiB): restore
    failed an assertion (a traceback)."""
    edit_meta(checkpointed, 1, _set("state.process.creds.groups", list(range(1000, 21000))))
    assert run_ckpt("verify", checkpointed).returncode == 0
    result = run_ckpt("restore", "-D", checkpointed, "--detach", "--stdin", "/dev/null", "--stdout", "/dev/null",
                      "--stderr", "/dev/null")
    if result.returncode == 0 and result.stdout.strip().isdigit():
        os.kill(int(result.stdout), signal.SIGKILL)
    assert_clean_error(result, errors.TargetError.exit_code, ("restore credentials", "argument area"))


def test_thread_list_with_duplicates_is_refused(checkpointed: Path) -> None:
    """Two threads with one tid made restore clone a second leader (then fail on rseq, EBUSY)."""
    edit_meta(checkpointed, 1, lambda m: m["state"]["threads"].append(dict(m["state"]["threads"][0])))
    assert_refused_everywhere(checkpointed, ("state.threads[1].tid", "again"))


def test_thread_list_without_the_leader_is_refused(checkpointed: Path) -> None:
    edit_meta(checkpointed, 1, _set("state.threads.0.tid", 1))
    assert_refused_everywhere(checkpointed, ("state.threads", "leader"))


def test_absurd_present_set_is_refused(checkpointed: Path) -> None:
    """A present set covering the whole address space was accepted: inspect reported
    2^35 pages and restore went ahead."""
    edit_meta(checkpointed, 1, _set("present", (0).to_bytes(8, "little") + (1 << 47).to_bytes(8, "little")))
    assert_refused_everywhere(checkpointed, ("present", "lies in no VMA"))


def test_mapping_path_with_a_nul_byte_is_refused(checkpointed: Path) -> None:
    """restore died with ``ValueError: embedded null byte`` (a traceback)."""
    def edit(body: dict[str, Any]) -> None:
        index = next(i for i, v in enumerate(body["vmas"]) if v["kind"] == "file-private")
        body["vmas"][index]["path"] += "\0/etc/shadow"
        body["edited"] = index

    edit_meta(checkpointed, 1, edit)
    assert_refused_everywhere(checkpointed, ("path contains a NUL byte",))
    # The same as raw bytes (msgpack bin, the form of a non-UTF-8 name).
    edit_meta(checkpointed, 1, lambda m: m["vmas"][m["edited"]].__setitem__("path", b"/bin/sh\0"))
    assert_refused_everywhere(checkpointed, ("path contains a NUL byte",))


def test_newer_task_state_version_is_not_called_corrupt(checkpointed: Path) -> None:
    from ckpt.image.schema import TASK_STATE_VERSION

    edit_meta(checkpointed, 1, _set("state.version", TASK_STATE_VERSION + 1))
    assert_refused_everywhere(checkpointed, ("state.version", "newer", "upgrade ckpt"), errors.ImageError.exit_code)
    with pytest.raises(errors.ImageError, match="newer") as info:
        ckpt.ImageDir(checkpointed).checkpoint(1)
    assert not isinstance(info.value, errors.CorruptImage)


def test_unknown_keys_are_ignored(checkpointed: Path) -> None:
    """Keys a newer writer may add (FORMAT.md §7) are not refused: readers ignore them (the
    records they get have no place for a key the schema does not declare), and
    schema.undescribed names each one."""
    def edit(body: dict[str, Any]) -> None:
        body["future"] = 1
        body["vmas"][0]["future"] = [1]
        body["state"]["future"] = {"x": b"y"}
        body["state"][7] = "int key"
        body["state"]["threads"][0]["future"] = None
        body["state"]["process"]["creds"]["future"] = 2

    edit_meta(checkpointed, 1, edit)
    for command in ("inspect", "verify"):
        result = run_ckpt(command, checkpointed)
        assert result.returncode == 0, result.stderr
    cp = ckpt.ImageDir(checkpointed).checkpoint(1)
    assert not hasattr(cp.state, "future") and not hasattr(cp.state.threads[0], "future")
    assert cp.state.threads and not hasattr(cp.state.process.creds, "future")
    from ckpt.image import schema
    from ckpt.image.format import META_HEADER

    body = msgpack.unpackb((checkpointed / "000001" / "meta.ckpt").read_bytes()[META_HEADER.size:],
                           raw=False, strict_map_key=False)
    assert {"future", "vmas[0].future", "state.future", "state.7", "state.threads[0].future",
            "state.process.creds.future"} <= set(schema.undescribed(body))
    assert callable(ckpt.restore)  # resolve the lazy name before importing its module
    from ckpt.restore import check

    check(cp)  # everything restore verifies before forking accepts it


def test_a_task_state_of_an_older_version_still_opens_and_restores(checkpointed: Path) -> None:
    """A version-3 state (before seccomp filters and the mm flags) has none of their keys:
    readers get the record's defaults, which say "not recorded", and judge nothing of them."""
    def to_version_3(body: dict[str, Any]) -> None:
        state = body["state"]
        state["version"] = 3
        for key in ("guard", "mlockall", "membarrier", "membarrier_unreadable"):
            state["mm"].pop(key, None)
        for thread in state["threads"]:
            for key in ("seccomp_mode", "seccomp_filter", "no_new_privs"):
                thread.pop(key, None)
        for key in ("seccomp_filters", "seccomp_unreadable"):
            state["process"].pop(key, None)

    edit_meta(checkpointed, 1, to_version_3)
    cp = ckpt.ImageDir(checkpointed).checkpoint(1)
    state = cp.state
    assert state.version == 3 and (state.mm.guard, state.mm.mlockall, state.mm.membarrier) == (None, None, None)
    assert all(t.seccomp_mode is None and t.seccomp_filter is None for t in state.threads)
    assert state.process.seccomp_filters == () and state.process.creds.seccomp == 0
    verdict = ckpt.restorability.assess(state, cp.vmas, kind=cp.kind)
    assert verdict.restorable, verdict.reasons
    assert callable(ckpt.restore)
    from ckpt.restore import check

    check(cp)


@pytest.mark.parametrize("content", [
    b"ckpt images directory\nformat-version 0\n",
    b"ckpt images directory\nformat-version \xc2\xb2\n",  # "2" superscript: str.isdigit() says yes
    b"ckpt images directory\nformat-version -1\n",
    b"ckpt images directory\n",
], ids=["version-0", "unicode-digit", "negative", "no-version-line"])
def test_marker_with_a_bad_format_version_is_refused(content: bytes, checkpointed: Path) -> None:
    (checkpointed / "CKPT-IMAGES").write_bytes(content)
    assert_refused_everywhere(checkpointed, ("CKPT-IMAGES",))


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_marker_that_is_not_a_regular_file_is_refused(kind: str, checkpointed: Path, tmp_path: Path) -> None:
    """A FIFO in place of the marker hung every command; a symlink was followed."""
    marker = checkpointed / "CKPT-IMAGES"
    good = marker.read_bytes()
    marker.unlink()
    if kind == "fifo":
        os.mkfifo(marker)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(good)
        marker.symlink_to(tmp_path / "elsewhere")
    else:
        marker.mkdir()
    for command in ("inspect", "verify"):
        assert_clean_error(run_ckpt(command, checkpointed, timeout=30), errors.NotAnImageDir.exit_code,
                           ("CKPT-IMAGES",))


_NON_UTF8_TARGET = """
import ctypes, os, sys, time
os.chdir(sys.argv[1])
ctypes.CDLL(None).prctl(15, b"name\\xff", 0, 0, 0)  # PR_SET_NAME
print("ready", os.getpid(), flush=True)
time.sleep(600)
"""


def test_names_that_are_not_utf8_are_stored_exactly(spawn, images_dir: Path, tmp_path: Path) -> None:
    """A cwd or thread name that is not UTF-8 made every dump die with a TypeError
    traceback (msgpack str must be UTF-8): such names are stored as bin."""
    where = tmp_path / os.fsdecode(b"dir\xff")
    where.mkdir()
    target = spawn([sys.executable, "-c", _NON_UTF8_TARGET, where])
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    state = ckpt.ImageDir(images_dir).head.state
    assert state.process.cwd == os.readlink(f"/proc/{target.pid}/cwd") == str(where)
    assert os.fsencode(state.threads[0].comm) == b"name\xff"
    target.kill()

    result = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", "/dev/null", "--stdout", "/dev/null",
                      "--stderr", "/dev/null")
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    try:
        assert os.readlink(f"/proc/{pid}/cwd") == str(where)
        with open(f"/proc/{pid}/comm", "rb") as f:
            assert f.read() == b"name\xff\n"
    finally:
        os.kill(pid, signal.SIGKILL)


# -- the schema itself ---------------------------------------------------------------------------

_SCHEMA_TARGET = """
import os, signal, sys, threading, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGUSR2, lambda *a: None)
started = threading.Event()
def work():
    started.set()
    time.sleep(600)
worker = threading.Thread(target=work, daemon=True)
worker.start()
started.wait()
signal.pthread_kill(worker.ident, signal.SIGUSR1)   # queued to one thread
os.kill(os.getpid(), signal.SIGUSR2)                # queued to the process
log = open(sys.argv[1], "a")
top = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
print("ready", os.getpid(), flush=True)
time.sleep(600)
"""


def test_a_dump_writes_nothing_the_schema_does_not_describe(spawn, images_dir: Path, tmp_path: Path) -> None:
    """Readers ignore undescribed keys: every field the dumper writes must be described
    (and so checked).  A field added to the state fails here until it has its schema line."""
    from ckpt.image import schema
    from ckpt.image.format import META_HEADER

    target = spawn([sys.executable, "-c", _SCHEMA_TARGET, str(tmp_path / "log")])
    ckpt.dump(target.pid, images_dir, pre=True)
    ckpt.dump(target.pid, images_dir)
    report = ckpt.dump(target.pid, images_dir)
    state = report.checkpoint.state
    assert len(state.threads) == 2 and any(t.pending for t in state.threads)
    assert state.process.pending and state.sigactions and state.fds
    kinds = [cp.kind for cp in ckpt.ImageDir(images_dir).checkpoints]
    assert kinds[0] == "pre" and len(kinds) == 3 and "pre" not in kinds[1:], kinds
    for cp in ckpt.ImageDir(images_dir).checkpoints:
        data = (cp.path / "meta.ckpt").read_bytes()
        body = msgpack.unpackb(data[META_HEADER.size:], raw=False, strict_map_key=False)
        assert schema.undescribed(body) == [], f"checkpoint {cp.id} holds fields no schema record describes"


def test_every_schema_record_is_documented() -> None:
    """docs/FORMAT.md has a section per record naming each of its fields."""
    from ckpt.image import schema

    text = (Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md").read_text()
    sections = dict(re.findall(r"^#### `([a-z0-9_]+)`\n(.*?)(?=^##)", text, re.M | re.S))
    for record in schema.RECORDS:
        assert record.name in sections, f"FORMAT.md has no section '#### `{record.name}`'"
        missing = [key for key in record.fields if f"`{key}`" not in sections[record.name]]
        assert not missing, f"FORMAT.md's `{record.name}` section does not name {missing}"


def test_register_record_matches_the_kernel_struct() -> None:
    from ckpt._sys import ptrace
    from ckpt.image import schema

    assert schema.REG_NAMES == ptrace.REG_NAMES == tuple(schema.REGS.fields)


def test_a_field_a_record_does_not_declare_cannot_be_written(spawn, images_dir: Path) -> None:
    """The records of the task state are frozen classes: a dump that sets a field the schema
    does not declare fails where it does it (TypeError), before anything is written, and a
    value of the wrong type in a declared field is refused before the commit."""
    import dataclasses

    from ckpt.image import schema

    target = spawn([sys.executable, "-c", "import os, time; print('ready', os.getpid(), flush=True); "
                    "time.sleep(60)"])
    cp = ckpt.dump(target.pid, images_dir).checkpoint
    state = cp.state
    with pytest.raises(TypeError, match="future"):
        dataclasses.replace(state.process, future=1)
    with pytest.raises(TypeError, match="future"):
        schema.Itimer(value_us=1, interval_us=0, future=1)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.threads[0].sigmask = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        object.__setattr__(state.process.creds, "future", 2)   # slots: no place for it at all
    with pytest.raises(TypeError, match="sigmask"):
        schema.Thread(tid=1, regs=state.threads[0].regs, clear_child_tid=0,  # type: ignore[call-arg]
                      robust_list=state.threads[0].robust_list)
    # A declared field of the wrong type: refused by the writer's check, naming it; nothing committed.
    bad = dataclasses.replace(state, process=dataclasses.replace(state.process, umask="022"))
    images = ckpt.ImageDir(images_dir)
    with images.lock(), images.new_checkpoint(kind="full", parent=None, pid=target.pid) as writer:
        with pytest.raises(schema.SchemaError, match=r"state.process.umask is str '022'"):
            writer.commit(vmas=list(cp.vmas), present=[], whole=[], state=bad)
    assert [c.id for c in ckpt.ImageDir(images_dir).checkpoints] == [cp.id]


def test_record_classes_and_their_records_agree() -> None:
    """One declaration: each record class's schema record has exactly its fields, required
    where the class has no default, and readers get that class back."""
    import dataclasses

    from ckpt.image import schema

    classes = [r.cls for r in schema.RECORDS if r.cls is not None]
    assert schema.State in classes and schema.Thread in classes and schema.Creds in classes
    for cls in classes:
        # at_restore fields are a restore's, never an image's: not in the record
        fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("at_restore")]
        assert [f.name for f in fields] == list(cls.RECORD.fields), cls
        for f in fields:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            assert cls.RECORD.fields[f.name].required == required, (cls, f.name)
        assert cls.__dataclass_params__.frozen and "__slots__" in vars(cls), cls


def test_a_restore_only_field_cannot_come_from_an_image() -> None:
    """--shell-job and --ext-unix-sk mark a record at restore (at_restore fields): an image
    that holds a key of that name gets a record without the mark."""
    from ckpt.image import schema

    tty = {"id": 1, "kind": "tty", "target": "/dev/pts/3", "flags": 2, "pos": 0, "mode": 0o20620, "dev": 1,
           "ino": 2, "rdev": 3, "tty": "slave", "real": 0, "name": "/dev/pts/3", "index": -1, "termios": None,
           "winsize": None, "locked": False, "packet": False, "exclusive": False, "hup": False, "inq": 0,
           "peer_file": None, "holders": [], "session": "none", "foreground": "none", "ctty": True,
           "problem": "", "shell_job": True}
    record = schema.ByKind(schema.FILE_RECORDS, schema.FILE)
    record.check(tty)
    built = record.build(tty)
    assert isinstance(built, schema.TtyFile) and built.shell_job is False
    assert "shell_job" not in record.wire(built, encode=True)
    with pytest.raises(TypeError, match="shell_job"):
        schema.TtyFile.of(tty)


@pytest.mark.parametrize("name", ["meta.ckpt", "pages.ckpt"])
def test_a_fifo_in_place_of_a_checkpoint_file_is_refused_not_waited_on(name: str, checkpointed: Path) -> None:
    """Opening a FIFO for reading waits for a writer (fs/pipe.c fifo_open): every
    reader opened images with a blocking open and hung there."""
    path = checkpointed / "000001" / name
    path.unlink()
    os.mkfifo(path, 0o600)
    for args in (("inspect", checkpointed), ("verify", checkpointed), ("restore", "-D", checkpointed)):
        assert_clean_error(run_ckpt(*args, timeout=30), errors.ImageError.exit_code, (name,))


def test_a_fifo_swapped_in_for_an_open_file_is_refused_not_waited_on(memtarget: MemTarget, images_dir: Path,
                                                                      tmp_path: Path) -> None:
    """A restore reopens the files the process had; one replaced by a FIFO after the
    dump made the restore child's open wait forever."""
    data = tmp_path / "data"
    data.write_bytes(b"x" * 4096)
    memtarget.cmd(f"openfile {data} 0")
    ckpt.dump(memtarget.pid, images_dir, after="kill")
    data.unlink()
    os.mkfifo(data, 0o600)
    assert_clean_error(run_ckpt("restore", "-D", images_dir, timeout=30), errors.ImageError.exit_code,
                       (str(data),))

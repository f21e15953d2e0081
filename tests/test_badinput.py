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
from pathlib import Path

import pytest

import ckpt
from ckpt import errors
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


def test_seccomp_blocked_userfaultfd_is_kernel_unsupported(spawn, programs, images_dir: Path) -> None:
    target = spawn([programs["seccomp_target"]])
    word, addr, length = target.readline().split()
    assert word == "buffer"
    addr, length = int(addr, 16), int(length)
    fds = fd_table(target.pid)
    buffer = read_target_memory(target.pid, addr, length)

    assert_clean_error(run_ckpt("dump", "--pid", target.pid, "-D", images_dir),
                       errors.KernelUnsupported.exit_code, mentions=("userfaultfd",))
    assert_no_checkpoint(images_dir)
    assert_target_untouched(target, fds)
    assert read_target_memory(target.pid, addr, length) == buffer
    assert proc_status_field(target.pid, "Seccomp") == "2"

    with pytest.raises(errors.KernelUnsupported, match="(?i)userfaultfd"):
        ckpt.dump(target.pid, images_dir)
    assert_no_checkpoint(images_dir)
    assert_target_untouched(target, fds)
    assert read_target_memory(target.pid, addr, length) == buffer

    # It still runs: a tick printed after ckpt gave up.
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

"""``ckpt restore --lazy`` (issue 11 item 3): the process runs before its memory arrives.

The target is lazy_target (tests/programs/lazy_target.c): 256 MiB of varied content
(random words, zeros, text) in private anonymous memory, plus a read-only and a separate
mapping; it checksums all of it on SIGUSR1, rewrites a share of its pages on SIGUSR2,
write(2)s its last page straight from memory on SIGHUP and forks a child that checksums
its memory on SIGWINCH.  One chain of three checkpoints (a full dump, two incrementals
with writes between them) is made per module; each test restores it, with ``ckpt restore
-d --json`` (its stdout and stderr to files), and compares what the restored process
computes with what the original computed.  Restored processes are held by pidfd and
killed at the end; page servers end with them (or are killed by the test).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO_ROOT, Target, ckpt_argv, ckpt_env, run_ckpt
from test_restore import kill_by_pidfd, wait_pidfd

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

MIB = 256
PAGE = 4096
DEATH = "page server of its lazy restore"


@pytest.fixture(scope="module")
def chain(programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Images of lazy_target: checkpoints 1 (full), 2 and 3 (after writes); its checksum
    at checkpoint 3 and the address of its big mapping."""
    images = tmp_path_factory.mktemp("lazy") / "images"
    target = Target([programs["lazy_target"], str(MIB)])
    try:
        target.wait_ready(60)
        base = int(target.readline().split()[1], 16)
        for step in range(3):
            if step:
                os.kill(target.pid, signal.SIGUSR2)
                assert target.readline(60) == f"mutated {step}"
            result = run_ckpt("dump", "-t", target.pid, "-D", images, timeout=300)
            assert result.returncode == 0, result.stderr
        os.kill(target.pid, signal.SIGUSR1)
        line = target.readline(60)
        assert line.startswith("sum "), line
        yield {"images": images, "sum": line.split()[1], "base": base}
    finally:
        target.kill()


class Restored:
    """A restored process (detached: not our child), by pidfd; its output files."""

    def __init__(self, workdir: Path, name: str, result: dict[str, Any]) -> None:
        self.pid: int = result["pid"]
        self.server: int | None = result.get("page_server")
        self.notes: list[str] = result["notes"]
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        self.pidfd = os.pidfd_open(self.pid)
        self.server_fd = os.pidfd_open(self.server) if self.server else -1

    def line(self, prefix: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out.read_bytes().decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
            assert not wait_pidfd(self.pidfd, 0.05), f"the process died: {self.err.read_text()!r}"
        raise AssertionError(f"no '{prefix}' line within {timeout} s: {self.out.read_bytes()[-200:]!r}")

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def present(self, address: int) -> bool:
        with open(f"/proc/{self.pid}/pagemap", "rb") as f:
            f.seek(address // PAGE * 8)
            return bool(struct.unpack("<Q", f.read(8))[0] >> 63)

    def close(self) -> None:
        kill_by_pidfd(self.pidfd)
        os.close(self.pidfd)
        if self.server_fd >= 0:
            assert wait_pidfd(self.server_fd, 30), "the page server outlived its process"
            os.close(self.server_fd)


@pytest.fixture
def restore(tmp_path: Path) -> Iterator[Callable[..., Restored]]:
    made: list[Restored] = []

    def run(images: Path, *extra: str, name: str = "r") -> Restored:
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        result = run_ckpt("restore", "-D", images, "-d", "--json", "--stdout", out, "--stderr", err, *extra)
        assert result.returncode == 0, result.stderr
        restored = Restored(tmp_path, name, json.loads(result.stdout))
        made.append(restored)
        return restored

    try:
        yield run
    finally:
        for restored in made:
            restored.close()


@needs_kernel
def test_a_lazy_restore_runs_before_its_memory_and_computes_what_an_eager_one_does(
        chain: dict[str, Any], restore: Callable[..., Restored]) -> None:
    eager = restore(chain["images"], name="eager")
    lazy = restore(chain["images"], "--lazy", name="lazy")
    # It runs before its pages are resident: well below the ~192 MiB of stored pages.  (The
    # server fills in the background from the start: 64 MiB was passed once while another
    # test run loaded the machine, hence a bound with room; ``not_yet`` below checks that
    # the page copied last was still missing.)
    assert lazy.server is not None and eager.server is None
    assert lazy.rss() < 128 << 20, lazy.rss()
    assert any("restored lazily" in note for note in lazy.notes), lazy.notes
    # A fault the kernel takes on the process's behalf (write(2) from a page not there yet)
    # is answered too: with UFFD_USER_MODE_ONLY it would fail with EFAULT.
    last = chain["base"] + (MIB << 20) - PAGE
    not_yet = not lazy.present(last)
    for restored in (eager, lazy):
        os.kill(restored.pid, signal.SIGHUP)
        assert restored.line("emitted") == "emitted 4096"
    assert lazy.out.read_bytes() == eager.out.read_bytes()
    for restored in (eager, lazy):
        os.kill(restored.pid, signal.SIGUSR1)
        assert restored.line("sum") == f"sum {chain['sum']}"
    assert not_yet, "the last page (stored in the oldest checkpoint, copied last) was resident already"


@needs_kernel
def test_a_child_forked_before_the_memory_arrived_reads_the_checkpoint_not_zeros(
        chain: dict[str, Any], restore: Callable[..., Restored]) -> None:
    lazy = restore(chain["images"], "--lazy", name="fork")
    os.kill(lazy.pid, signal.SIGWINCH)   # the child checksums memory the server fills for it
    assert lazy.line("child sum") == f"child sum {chain['sum']}"
    os.kill(lazy.pid, signal.SIGUSR1)
    assert lazy.line("sum") == f"sum {chain['sum']}"


@needs_kernel
def test_once_the_server_is_done_every_page_is_resident_and_no_range_is_registered(
        chain: dict[str, Any], restore: Callable[..., Restored]) -> None:
    lazy = restore(chain["images"], "--lazy", name="done")
    assert lazy.server_fd >= 0
    assert wait_pidfd(lazy.server_fd, 120), "the page server did not finish"
    # No VMA is registered with a userfaultfd any more ("um": VM_UFFD_MISSING) once the
    # watchdog, which holds a copy of the uffd, has exited right after the server: no
    # missing page can be a request to anybody; every stored page was copied in.
    deadline = time.monotonic() + 10
    while True:
        smaps = Path(f"/proc/{lazy.pid}/smaps").read_text()
        if not any(" um" in line for line in smaps.splitlines() if line.startswith("VmFlags:")):
            break
        assert time.monotonic() < deadline, "a VMA is still registered with the server's uffd"
        time.sleep(0.02)
    fds = [os.readlink(f"/proc/{lazy.pid}/fd/{n}") for n in os.listdir(f"/proc/{lazy.pid}/fd")]
    assert not any("userfaultfd" in f for f in fds), f"a uffd left in the process: {fds}"
    assert lazy.rss() > (MIB << 20) * 5 // 8   # 3/4 of the blocks hold data (some zero words)
    os.kill(lazy.pid, signal.SIGUSR1)
    assert lazy.line("sum") == f"sum {chain['sum']}"


@needs_kernel
def test_killing_the_page_server_kills_the_process_with_a_message(
        chain: dict[str, Any], restore: Callable[..., Restored]) -> None:
    lazy = restore(chain["images"], "--lazy", name="killed")
    assert lazy.server is not None
    os.kill(lazy.server, signal.SIGSTOP)   # it cannot finish (and its watchdog go) before the kill
    assert not wait_pidfd(lazy.server_fd, 0), "the server finished before it could be killed"
    os.kill(lazy.pid, signal.SIGUSR1)   # faulting its memory in: waits on the stopped server
    os.kill(lazy.server, signal.SIGKILL)
    assert wait_pidfd(lazy.pidfd, 30), "the process was left running (or hanging) without its page server"
    message = lazy.err.read_text()
    assert DEATH in message and f"(pid {lazy.server})" in message, message
    # It never printed a checksum of memory it did not have.
    assert "sum" not in lazy.out.read_bytes().decode(errors="replace")


@needs_kernel
def test_an_attached_lazy_restore_waits_for_the_process(chain: dict[str, Any], tmp_path: Path) -> None:
    out, pidfile = tmp_path / "attached.out", tmp_path / "pid"
    proc = subprocess.Popen(ckpt_argv("restore", "-D", chain["images"], "--lazy", "--stdout", out,
                                      "--pidfile", pidfile),
                            env=ckpt_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while "sum" not in out.read_bytes().decode(errors="replace"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert f"sum {chain['sum']}" in out.read_text()
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(60) == 128 + signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(60)


@needs_kernel
def test_a_sigterm_to_the_server_of_an_attached_lazy_restore_ends_it_and_the_process(
        chain: dict[str, Any], tmp_path: Path) -> None:
    """An attached restore holds SIGTERM & co. for its process from the release on
    (restore.hold_forwarded); the page server it forks must not inherit that: a plain
    SIGTERM ends the server, and the watchdog kills the process with its message."""
    out, err, pidfile, log = tmp_path / "held.out", tmp_path / "held.err", tmp_path / "pid", tmp_path / "log"
    proc = subprocess.Popen(ckpt_argv("restore", "-D", chain["images"], "--lazy", "--stdout", out,
                                      "--stderr", err, "--pidfile", pidfile, "--log-file", log),
                            env=ckpt_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.02)
        started = re.search(r"start the page server: .*?pid (\d+)", log.read_text())
        assert started, log.read_text()
        server = int(started.group(1))
        server_fd = os.pidfd_open(server)
        try:
            os.kill(server, signal.SIGSTOP)   # not done before the SIGTERM
            os.kill(server, signal.SIGTERM)
            os.kill(server, signal.SIGCONT)
            assert wait_pidfd(server_fd, 30), "SIGTERM did not end the page server (signals held?)"
        finally:
            os.close(server_fd)
        assert proc.wait(60) == 128 + signal.SIGKILL
        assert DEATH in err.read_text(), err.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(60)


@needs_kernel
def test_lazy_refuses_a_process_tree_by_name_before_anything_is_made(
        programs: dict[str, Path], spawn: Callable[..., Target], tmp_path: Path) -> None:
    target = spawn([programs["tree_forker"], "fan", "1"])
    images = tmp_path / "images"
    result = run_ckpt("dump", "-t", target.pid, "-D", images, timeout=300)
    assert result.returncode == 0, result.stderr
    result = run_ckpt("restore", "-D", images, "-d", "--lazy")
    assert result.returncode != 0
    assert "process tree" in result.stderr and "--lazy" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@needs_kernel
def test_a_corrupt_frame_met_by_the_server_kills_the_process_and_names_it(
        chain: dict[str, Any], restore: Callable[..., Restored], tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(chain["images"], images)
    pages = images / "000001" / "pages.ckpt"
    with open(pages, "r+b") as f:   # a byte in the middle: a frame of the big mapping
        f.seek(pages.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    lazy = restore(images, "--lazy", name="corrupt")
    os.kill(lazy.pid, signal.SIGUSR1)
    assert wait_pidfd(lazy.pidfd, 60), "the process kept running on memory the server could not restore"
    message = lazy.err.read_text()
    assert DEATH in message and "crc32" in message, message
    assert "sum" not in lazy.out.read_bytes().decode(errors="replace")


@needs_kernel
def test_the_python_api_restores_lazily(chain: dict[str, Any], tmp_path: Path) -> None:
    import ckpt

    out, err = tmp_path / "api.out", tmp_path / "api.err"
    result = ckpt.restore(chain["images"], detach=True, lazy=True, stdout=out, stderr=err)
    try:
        assert result.page_server is not None and result.to_dict()["page_server"] == result.page_server
        os.kill(result.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while "sum" not in out.read_bytes().decode(errors="replace"):
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        assert f"sum {chain['sum']}" in out.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(result.pid, signal.SIGKILL)
        os.waitpid(result.pid, 0)


@needs_kernel
def test_memory_moved_or_dropped_before_it_arrived_reads_as_after_an_eager_restore(
        chain: dict[str, Any], restore: Callable[..., Restored]) -> None:
    eager = restore(chain["images"], name="eager-moved")
    lazy = restore(chain["images"], "--lazy", name="lazy-moved")
    sums = []
    for restored in (lazy, eager):   # the lazy one first: its server has copied little yet
        os.kill(restored.pid, signal.SIGPWR)   # mremap (UFFD_EVENT_REMAP), MADV_DONTNEED (REMOVE)
        assert restored.line("moved") == "moved"
        os.kill(restored.pid, signal.SIGUSR1)
        sums.append(restored.line("sum"))
    assert sums[0] == sums[1] != f"sum {chain['sum']}"


@needs_kernel
def test_a_dump_taken_while_the_memory_still_arrives_is_refused_by_name(
        chain: dict[str, Any], restore: Callable[..., Restored], tmp_path: Path) -> None:
    """Pages the server has not copied yet are not present: a dump meanwhile would store them as
    absent (zeros).  The checkpoint is written as not restorable and the restore says why."""
    lazy = restore(chain["images"], "--lazy", name="dumped")
    assert lazy.server is not None
    images = tmp_path / "again"
    os.kill(lazy.server, signal.SIGSTOP)   # still filling throughout the dump
    try:
        assert not wait_pidfd(lazy.server_fd, 0), "the server finished before the dump"
        result = run_ckpt("dump", "-t", lazy.pid, "-D", images, timeout=300)
    finally:
        os.kill(lazy.server, signal.SIGCONT)
    assert "missing-page faults" in result.stdout + result.stderr, result.stderr
    refused = run_ckpt("restore", "-D", images, "-d")
    assert refused.returncode != 0 and "missing-page faults" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


@needs_kernel
def test_a_process_that_writes_all_the_time_checks_itself_after_a_lazy_restore(
        programs: dict[str, Path], spawn: Callable[..., Target], restore: Callable[..., Restored],
        tmp_path: Path) -> None:
    """zdtm_counter rewrites pages of its 16 MiB buffer every 10 ms from its release on (write
    faults on pages not there yet: copied in first, then written); on SIGUSR1 it checks every
    page of the buffer against its counter."""
    target = spawn([programs["zdtm_counter"]])
    images = tmp_path / "counter"
    for _ in range(2):   # a full checkpoint and an incremental one
        time.sleep(0.3)
        result = run_ckpt("dump", "-t", target.pid, "-D", images, timeout=300)
        assert result.returncode == 0, result.stderr
    target.kill()
    lazy = restore(images, "--lazy", name="counter")
    assert lazy.server is not None
    time.sleep(0.3)   # counting on memory as it arrives
    os.kill(lazy.pid, signal.SIGUSR1)
    assert wait_pidfd(lazy.pidfd, 60), "it did not finish its check"
    out = lazy.out.read_text()
    assert "PASS counter=" in out and "FAIL" not in out, out

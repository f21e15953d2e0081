"""Terminals (ckpt/files/tty.py): pty pairs the process holds whole, its controlling
terminal, and ``restore --shell-job``.

zdtm_tty (tests/programs/zdtm_tty.c) sets up two pty pairs with chosen settings,
is dumped twice while it runs (what it checks must not change), then dumped with
--kill and restored, and checks its own pairs: termios, window size, packet mode,
lock, exclusive, a closed slave's POLLHUP, bytes both ways; in "ctty" mode the pair
is its controlling terminal and it leads its session.  Then the refusals, and a
program on a terminal the test makes (its fds 0-2 and its controlling terminal),
dumped with --kill, refused without --shell-job and restored with it from a
process whose controlling terminal is another pty of the test: it reads a line
typed on that pty and answers on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors
from ckpt.image.schema import State, TtyFile
from helpers import REPO_ROOT, Target, ckpt_argv, ckpt_env, run_ckpt
from test_restore import Profile, dump_and_kill, restore_and_check, run_to_end
from test_trust_restore import (DROP_AND_EXEC, EXIT_UNTRUSTED, UserEnv, assert_refused, detached, edit_meta,
                                restore_detached, user_dump)
from test_trust_restore import uenv, user_site  # noqa: F401  (fixtures)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")


def ttys(state: State) -> dict[int, TtyFile]:
    """fd number -> its tty record."""
    by_id = {f.id: f for f in state.files or ()}
    return {e.fd: by_id[e.file] for e in state.fds or () if isinstance(by_id[e.file], TtyFile)}


# ---------------------------------------------------------------------------
# A pty pair inside the process


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["pair", "ctty"])
def test_the_target_checks_itself(mode: str, programs: dict[str, Path], spawn: Callable[..., Target]) -> None:
    target = spawn([programs["zdtm_tty"], mode])
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["pair", "ctty"])
def test_dumps_while_running_change_nothing_it_sees(mode: str, programs: dict[str, Path],
                                                    spawn: Callable[..., Target], images_dir: Path) -> None:
    target = spawn([programs["zdtm_tty"], mode])
    for _ in range(2):
        report = ckpt.dump(target.pid, images_dir)
        assert report.restorable, report.unrestorable
        time.sleep(0.1)
    mine = ttys(report.checkpoint.state)
    assert {fd: r.tty for fd, r in mine.items()} == {10: "master", 11: "slave", 12: "slave", 13: "master"}
    assert mine[11].peer_file == mine[12].peer_file == mine[10].id, mine
    assert mine[10].packet and mine[11].exclusive and mine[13].locked and mine[13].hup, mine
    assert mine[12].winsize == (33, 101, 7, 9) and mine[10].termios == mine[11].termios
    assert mine[11].ctty == (mode == "ctty") and mine[10].session == ("process" if mode == "ctty" else "none")
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["pair", "ctty"])
def test_restore_after_kill(mode: str, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                            tmp_path: Path) -> None:
    """Dumped twice while running, then with --kill: the restored pairs carry bytes both ways
    with their settings; in "ctty" mode the pty is its controlling terminal again and it leads
    its session and group."""
    target = spawn([programs["zdtm_tty"], mode])
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    restore_and_check(images_dir, tmp_path, expected)


@needs_kernel
@pytest.mark.timeout(60)
def test_queued_bytes_refuse_a_kill(programs: dict[str, Path], spawn: Callable[..., Target],
                                    images_dir: Path) -> None:
    """Bytes the master wrote and the slave has not read cannot be copied without reading
    them: dump --kill refuses by name and leaves the target running, the bytes in place."""
    target = spawn([programs["zdtm_tty"], "queued"])
    with pytest.raises(errors.KillRefused) as refused:
        ckpt.dump(target.pid, images_dir, after="kill")
    reasons = refused.value.report.unrestorable
    assert any(re.match(r"fd 11 is the pty slave /dev/pts/\d+, with 5 bytes the master wrote and the slave has "
                        r"not read", r) for r in reasons), reasons
    assert target.alive()
    with open(f"/proc/{target.pid}/fdinfo/10") as f:
        assert "tty-index" in f.read()


# ---------------------------------------------------------------------------
# A program on a terminal the test makes: restore --shell-job


SHELL_PROGRAM = r"""
import os, sys
answer = os.open(os.ttyname(0), os.O_RDWR | os.O_NOCTTY)   # fd 3: its terminal by path
print("ready", os.getpid(), flush=True)
line = sys.stdin.readline()
os.write(answer, f"got {line.strip()} sid {os.getsid(0)} pgid {os.getpgrp()} fg {os.tcgetpgrp(answer)}\n".encode())
"""


@contextlib.contextmanager
def on_terminal(argv: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[int, int]]:
    """Run ``argv`` on a new pty as its controlling terminal (``login_tty``: a session of its
    own); yields (pid, master fd).  Killed and reaped on exit."""
    master, slave = pty.openpty()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        try:
            os.close(master)
            os.login_tty(slave)
            os.closerange(3, 1 << 16)   # nothing of this process's (a pipe of the test runner)
            os.execvpe(argv[0], argv, env if env is not None else os.environ)
        finally:
            os._exit(127)
    os.close(slave)
    try:
        yield pid, master
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(master)


def read_until(master: int, pattern: str, timeout: float = 30) -> str:
    """What the master reads until ``pattern`` matches it (or EIO: the slave is closed)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen.decode(errors="replace")):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not read within {timeout} s; read {seen!r}")
        if select.select([master], [], [], left)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"{pattern!r} not read before the terminal closed; read {seen!r}")
            seen += chunk
    return seen.decode(errors="replace")


@needs_kernel
@pytest.mark.timeout(120)
def test_shell_job(images_dir: Path) -> None:
    with on_terminal([sys.executable, "-c", SHELL_PROGRAM]) as (pid, master):
        pid = int(re.search(r"ready (\d+)", read_until(master, r"ready \d+"))[1])
        dumped = run_ckpt("dump", "--pid", pid, "-D", images_dir, "--kill", "--json")
        assert dumped.returncode == 0, dumped.stderr
        report = json.loads(dumped.stdout)
        assert report["killed"] and report["restorable"] and report["restorable_with"] == ["--shell-job"], report
        assert any("--shell-job" in note for note in report["restore_notes"]), report
    refused = run_ckpt("restore", "-D", images_dir)
    assert refused.returncode == errors.NotRestorable.exit_code, refused.stderr
    assert re.search(r"its controlling terminal /dev/pts/\d+ \(open at fd 3\) is outside the process.*"
                     r"restorable with restore --shell-job", refused.stderr), refused.stderr
    # ckpt restore --shell-job on another terminal, whose session it leads (as a shell's job
    # would be its group's leader, in the foreground): the program answers there.
    runner = "import os, sys; os.execvpe(sys.argv[1], sys.argv[1:], os.environ)"
    argv = [sys.executable, "-c", runner, *ckpt_argv("restore", "-D", images_dir, "--shell-job")]
    with on_terminal(argv, env=ckpt_env()) as (ckpt_pid, master):
        read_until(master, r"restored checkpoint \d+ as pid \d+")
        os.write(master, b"hello\n")
        text = read_until(master, r"got hello sid -?\d+ pgid -?\d+ fg -?\d+")
        got = re.search(r"got hello sid (\d+) pgid (\d+) fg (\d+)", text)
        # In ckpt restore's session and group, the foreground job of its terminal.
        assert got is not None and {int(got[1]), int(got[2]), int(got[3])} == {ckpt_pid}, text
        _, status = os.waitpid(ckpt_pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, text)


@needs_kernel
@pytest.mark.timeout(60)
def test_shell_job_needs_a_terminal(images_dir: Path) -> None:
    with on_terminal([sys.executable, "-c", SHELL_PROGRAM]) as (pid, master):
        pid = int(re.search(r"ready (\d+)", read_until(master, r"ready \d+"))[1])
        assert run_ckpt("dump", "--pid", pid, "-D", images_dir, "--kill").returncode == 0
    result = subprocess.run(ckpt_argv("restore", "-D", images_dir, "--shell-job"), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60, env=ckpt_env(), cwd=REPO_ROOT,
                            start_new_session=True)   # a session of its own: no terminal
    lines = result.stderr.strip().splitlines()
    assert result.returncode == errors.UsageError.exit_code and len(lines) == 1, result.stderr
    assert "--shell-job: ckpt restore has no controlling terminal" in lines[0], result.stderr


@needs_kernel
@pytest.mark.timeout(120)
def test_no_controlling_terminal_stays_none(programs: dict[str, Path], spawn: Callable[..., Target],
                                           images_dir: Path, tmp_path: Path) -> None:
    """A process that had no controlling terminal, restored by a ckpt restore that has one
    (run from a terminal), does not get ckpt's: the child drops it (TIOCNOTTY)."""
    # The target in a session of its own, without a terminal: setsid(1) runs it.
    proc = subprocess.Popen(["setsid", "-w", programs["zdtm_tty"], "pair"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline().split()[1])
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4]) == 0
        assert run_ckpt("dump", "--pid", pid, "-D", images_dir, "--kill").returncode == 0
    finally:
        proc.kill()
        proc.wait()
    out = tmp_path / "restored.out"
    runner = "import os, sys; os.execvpe(sys.argv[1], sys.argv[1:], os.environ)"
    argv = [sys.executable, "-c", runner, *ckpt_argv("restore", "-D", images_dir, "--stdout", out)]
    with on_terminal(argv, env=ckpt_env()) as (ckpt_pid, master):
        restored = int(re.search(r"as pid (\d+)", read_until(master, r"as pid \d+"))[1])
        stat = Path(f"/proc/{restored}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[4]) == 0, f"the restored process has controlling terminal {stat[4]}"
        os.kill(restored, signal.SIGUSR1)
        _, status = os.waitpid(ckpt_pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out.read_text())
    assert out.read_text().splitlines()[-1:] == ["PASS"]


# ---------------------------------------------------------------------------
# The slave's owner, for images that are not root's


USER_PTY = """
import os, signal
master, slave = os.openpty()
print("ready", os.getpid(), flush=True)
signal.pause()
"""


@needs_kernel
@pytest.mark.timeout(180)
def test_a_slave_owner_beyond_the_images_owner_is_refused(uenv: UserEnv, spawn: Callable[..., Target],
                                                          tmp_path: Path) -> None:
    """A user's process with a pty pair: its slave's owner is recorded (the user's) and the
    user's images restore with it; edited to root's, root's restore refuses by name instead
    of giving the user a pty slave owned by root."""
    user = uenv.user
    target = spawn([sys.executable, "-c", DROP_AND_EXEC, str(user.uid), str(user.gid), str(uenv.home),
                    uenv.python, "-c", USER_PTY])
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    state = ckpt.ImageDir(images).checkpoint(1).state
    slaves = [f for f in state.files or () if isinstance(f, TtyFile) and f.tty == "slave"]
    assert [f.owner for f in slaves] == [(user.uid, user.gid)], slaves
    with detached(restore_detached(images, tmp_path)) as pid:
        fds = [os.stat(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
        owners = {(st.st_uid, st.st_gid) for st in fds if os.major(st.st_rdev) in range(136, 144)}
        assert owners == {(user.uid, user.gid)}, owners

    def to_root(body: dict[str, Any]) -> None:
        for f in body["state"]["files"]:
            if f["kind"] == "tty" and f["tty"] == "slave":
                f["owner"] = [0, 0]
    edit_meta(images / "000001" / "meta.ckpt", to_root)
    assert_refused(restore_detached(images, tmp_path, name="edited"), EXIT_UNTRUSTED,
                   r"fd \d+ \(/dev/pts/\d+\) is owned by uid 0 gid 0, but its images belong to",
                   re.escape(user.name))

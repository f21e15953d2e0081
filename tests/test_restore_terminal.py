"""An attached ``ckpt restore`` on a terminal behaves as a foreground command (issue 10 item 7).

The restore runs on a real pty (``pty.fork``: ckpt leads the pty's session, its group is the
foreground job) and the test types the terminal's control characters into the master.  The
target counts the SIGINTs and SIGQUITs it gets:

- a process that led neither its session nor its group is in ckpt's process group: the
  terminal's ^C reaches it once, directly; ckpt does not pass it on again (it did: twice);
- one that led its own group keeps it: ^C reaches ckpt only, which passes it on once;
- a signal sent to ckpt with kill(2) is passed on once, in both cases;
- ^\\ does not kill ckpt while the process lives on (it did: ckpt died of SIGQUIT);
- SIGTERM to ckpt ends the process, and ckpt exits 143 with it.

And ``-d``/``--detach`` gives the process a session of its own; ``--pidfile`` is written
0600, and refused when it exists, before anything is restored.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import stat
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ckpt
from helpers import REPO_ROOT, Target, ckpt_argv, ckpt_env, run_ckpt
from test_restore import dump_and_kill

# Drops a controlling terminal it may have inherited from the test run (TIOCNOTTY works for a
# non-leader: drivers/tty/tty_jobctrl.c tiocnotty), so that the dump records none.
COUNTER = r"""
import fcntl, os, signal, sys, termios
mode = sys.argv[1]
try:
    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
except OSError:
    pass
else:
    with open(os.devnull) as _:
        try:
            fcntl.ioctl(fd, termios.TIOCNOTTY)
        except OSError:
            pass
    os.close(fd)
if mode == "group":
    os.setpgid(0, 0)
counts = {}
def counted(sig, frame):
    name = signal.Signals(sig).name.lower()
    counts[name] = counts.get(name, 0) + 1
    os.write(1, f"{name} {counts[name]}\n".encode())
signal.signal(signal.SIGINT, counted)
signal.signal(signal.SIGQUIT, counted)
print("ready", os.getpid(), flush=True)
while True:
    signal.pause()
"""

QUIET = 0.6   # seconds without a second copy of a signal that count as "once"


class Terminal:
    """A command on a new pty: its pid, and what it wrote there."""

    def __init__(self, argv: list[str]) -> None:
        env = ckpt_env()
        pid, fd = pty.fork()
        if pid == 0:   # pragma: no cover - the child execs ckpt at once
            try:
                os.chdir(REPO_ROOT)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.text = pid, fd, ""
        attrs = termios.tcgetattr(fd)   # no echo of the typed ^C in the output; ISIG stays on
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.status: int | None = None

    def read(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return
            try:
                data = os.read(self.fd, 4096)
            except OSError:   # EIO: every slave fd is closed
                return
            if not data:
                return
            self.text += data.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        end = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text)
            if match:
                return match
            if time.monotonic() > end:
                raise AssertionError(f"no {pattern!r} on the terminal within {timeout} s: {self.text!r}")
            self.read(0.2)

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = status
                break
            if time.monotonic() > end:
                raise AssertionError(f"ckpt did not end within {timeout} s: {self.text!r}")
            self.read(0.1)
        self.read(0.2)
        return self.status

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait()
        os.close(self.fd)


def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()   # state ppid pgrp session tty_nr tpgid ...


@pytest.fixture
def counter_images(spawn: Callable[..., Target], images_dir: Path, request: pytest.FixtureRequest) -> Path:
    target = spawn([sys.executable, "-c", COUNTER, request.param])
    dump_and_kill(target, images_dir)
    return images_dir


@contextlib.contextmanager
def restored_on_a_terminal(images: Path, *args: str) -> Iterator[tuple[Terminal, int]]:
    term = Terminal(ckpt_argv("restore", "-D", images, *args))
    pid = 0
    try:
        pid = int(term.wait_for(r"restored checkpoint \d+ as pid (\d+)").group(1))
        yield term, pid
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        term.close()


def count(term: Terminal, name: str) -> int:
    term.read(QUIET)
    return len(re.findall(rf"^{name} \d+$", term.text, re.M))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counter_images", ["member", "group"], indirect=True)
def test_terminal_signals_reach_the_restored_process_once(counter_images: Path, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.params["counter_images"]
    with restored_on_a_terminal(counter_images) as (term, pid):
        ckpt_group = stat_fields(term.pid)[2]
        group, foreground = stat_fields(pid)[2], os.tcgetpgrp(term.fd)
        if mode == "member":   # in ckpt's foreground job, as any command run from the terminal
            assert group == ckpt_group == str(foreground), (group, ckpt_group, foreground)
        else:                  # it led its group: it keeps one of its own
            assert group == str(pid) != ckpt_group, (group, ckpt_group)
        assert stat_fields(pid)[3] == str(term.pid), "attached: in ckpt restore's session"

        term.type(b"\x03")   # the terminal's ^C (VINTR)
        term.wait_for(r"(?m)^sigint 1$")
        assert count(term, "sigint") == 1, f"^C reached it twice: {term.text!r}"

        os.kill(term.pid, signal.SIGINT)   # kill(2) to ckpt: SI_USER, passed on once
        term.wait_for(r"(?m)^sigint 2$")
        assert count(term, "sigint") == 2, term.text

        term.type(b"\x1c")   # ^\ (VQUIT)
        term.wait_for(r"(?m)^sigquit 1$")
        assert count(term, "sigquit") == 1, term.text
        assert os.waitpid(term.pid, os.WNOHANG) == (0, 0), f"ckpt ended on ^\\: {term.text!r}"

        os.kill(term.pid, signal.SIGTERM)
        status = term.wait()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM, (status, term.text)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counter_images", ["member"], indirect=True)
def test_detach_gives_a_session_and_a_pidfile(counter_images: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "restored.pid"
    result = run_ckpt("restore", "-D", counter_images, "-d", "--pidfile", pidfile, timeout=60)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    try:
        assert pidfile.read_text() == f"{pid}\n"
        assert stat.S_IMODE(pidfile.stat().st_mode) == 0o600
        fields = stat_fields(pid)
        assert fields[2] == fields[3] == str(pid), f"detached: a session of its own, not {fields[2:4]}"
        assert fields[4] == "0", "and no controlling terminal"
        # The file exists: refused before anything is restored (criu's O_EXCL).
        again = run_ckpt("restore", "-D", counter_images, "--detach", "--pidfile", pidfile, timeout=60)
        assert again.returncode == 2 and "--pidfile" in again.stderr and "exists" in again.stderr, again
        assert pidfile.read_text() == f"{pid}\n"
        link = tmp_path / "link.pid"
        link.symlink_to(tmp_path / "elsewhere")
        refused = run_ckpt("restore", "-D", counter_images, "-d", "--pidfile", link, timeout=60)
        assert refused.returncode == 2 and not (tmp_path / "elsewhere").exists(), refused
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counter_images", ["member"], indirect=True)
def test_pidfile_of_an_attached_restore_and_json_with_the_exit_code(counter_images: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "restored.pid"
    term = Terminal(ckpt_argv("restore", "-D", counter_images, "--pidfile", pidfile, "--json"))
    try:
        end = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text().endswith("\n"):
            assert time.monotonic() < end, term.text
            term.read(0.1)
        pid = int(pidfile.read_text())
        assert stat_fields(pid)[1] == str(term.pid)
        os.kill(pid, signal.SIGTERM)
        status = term.wait()
        assert os.WEXITSTATUS(status) == 143, term.text
        import json

        summary = json.loads(term.text[term.text.index("{"):term.text.rindex("}") + 1])
        assert summary["pid"] == pid and summary["exit_code"] == 143, summary
    finally:
        term.close()


STOPPER = r"""
import os, sys, time
print("ready", os.getpid(), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
sys.exit(7)
"""


@pytest.mark.timeout(120)
def test_api_restore_waits_by_default_as_the_cli(spawn: Callable[..., Target], images_dir: Path,
                                                 tmp_path: Path) -> None:
    """``ckpt.restore()`` and ``ckpt restore`` agree: both wait for the process."""
    flag = tmp_path / "go"
    target = spawn([sys.executable, "-c", STOPPER, flag])
    dump_and_kill(target, images_dir)
    flag.touch()
    result = ckpt.restore(images_dir, stdin=os.devnull, stdout=tmp_path / "out", stderr=tmp_path / "err")
    assert result.exit_status is not None and result.exit_code == 7, result
    with pytest.raises(ChildProcessError):
        os.waitpid(result.pid, os.WNOHANG)   # reaped already
    assert result.to_dict()["exit_code"] == 7


TREE = r"""
import os, signal
kid = os.fork()
if kid == 0:
    while True:
        signal.pause()
print("ready", os.getpid(), flush=True)
print(kid, flush=True)
while True:
    signal.pause()
"""


@pytest.mark.timeout(120)
def test_detach_gives_a_tree_a_session_of_its_own(spawn: Callable[..., Target], images_dir: Path) -> None:
    """A tree whose root led nothing: detached, the root leads a new session and the child,
    in the root's group in the original, is in the root's new group and session."""
    target = spawn([sys.executable, "-c", TREE])
    kid = int(target.readline())
    assert stat_fields(kid)[2] == stat_fields(target.pid)[2] != str(target.pid)
    dump_and_kill(target, images_dir)
    result = run_ckpt("restore", "-D", images_dir, "-d", "--stdin", os.devnull, "--stdout", os.devnull, timeout=100)
    assert result.returncode == 0, result.stderr
    root = int(result.stdout.split()[0])
    try:
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
        assert len(children) == 1, children
        for pid in (root, int(children[0])):
            assert stat_fields(pid)[2:4] == [str(root), str(root)], (pid, stat_fields(pid)[2:4])
    finally:
        os.killpg(root, signal.SIGKILL)


# ckpt.restore() waiting on the main thread while another thread of the caller, which blocks
# nothing, takes a SIGTERM (thread-directed here, as the kernel may hand a process-directed one
# to any thread that does not block it): it is passed on all the same, and the caller lives.
OTHER_THREAD = r"""
import os, signal, sys, threading, time
import ckpt
main = threading.get_native_id()

def other():
    while open(f"/proc/self/task/{main}/syscall").read().split()[0] != "128":   # rt_sigtimedwait
        time.sleep(0.01)
    print("restored", open(f"/proc/self/task/{main}/children").read().strip(), flush=True)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=other, daemon=True).start()
result = ckpt.restore(sys.argv[1], stdin=os.devnull, stdout=os.devnull, stderr=os.devnull)
print("exit", result.exit_code, flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counter_images", ["member"], indirect=True)
def test_a_signal_another_thread_takes_is_passed_on(counter_images: Path) -> None:
    import subprocess

    run = subprocess.run([sys.executable, "-c", OTHER_THREAD, counter_images], capture_output=True, text=True,
                         timeout=90, env=ckpt_env(), cwd=REPO_ROOT)
    words = run.stdout.split()
    try:
        # words[1] is the restored process; the children listed after it are the tracking
        # holder the restore started (ckpt/restoretracking.py), which ends with the process.
        assert run.returncode == 0 and words[-2:] == ["exit", "143"], (run.returncode, run.stdout, run.stderr)
    finally:
        if words[:1] == ["restored"]:   # the caller died before it: the process lives on
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(words[1]), signal.SIGKILL)

"""Open files shared between the processes of a tree (issue 9, stage 2; ckpt/files/handdown.py).

Real trees, ``dump --kill``, ``restore``, then each tree checks itself:

* a pipeline made by a parent that closed both ends (a writer child at fd 1, a reader
  child at fd 0, bytes in flight at the dump) and a file description the two siblings
  share (its offset is one: "WR" only if it is);
* zdtm ``pipe00``'s shape: parent and child each hold one end of two pipes, at fds >= 3;
* a real bash pipeline, checkpointed in the middle of its run, whose output is checked.

Each needs its pipe made once, by the common ancestor of its holders, and handed down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import Target, run_ckpt
from test_restore import Profile, restoring

# The children wait for SIGUSR2 with only it blocked, the root for SIGUSR1: the root's
# signal profile is its own (test_restore.Restore.find looks for it).
# No ctypes in the targets: libffi may map memory shared between the processes (refused).
# Their stderr is /dev/null: the spawn fixture's is a deleted file, which the tasks would
# share as a file object (memory sharing's rules, issue 9 stage 3).
PIPELINE = r"""
import os, signal, sys
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
path = sys.argv[1]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2])
r, w = os.pipe()
os.write(w, b"queued-before-dump\n")
f = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(f, 9)
os.close(f)
kids = []
for role in ("writer", "reader"):
    pid = os.fork()
    if pid == 0:
        if role == "writer":
            os.dup2(w, 1)
        else:
            os.dup2(r, 0)
            os.dup2(2, 1)   # not the test's pipe: the root's exit ends its output
        os.close(r)
        os.close(w)
        signal.pthread_sigmask(signal.SIG_SETMASK, [signal.SIGUSR2])
        signal.sigwait([signal.SIGUSR2])
        if role == "writer":
            for _ in range(100):
                os.write(1, b"after\n")
            os.write(9, b"W")
            os._exit(0)
        got = b""
        while chunk := os.read(0, 65536):
            got += chunk
        os.write(9, b"R")
        os._exit(0 if got == b"queued-before-dump\n" + b"after\n" * 100 else 3)
    kids.append(pid)
os.close(r)
os.close(w)
os.close(9)
print("ready", os.getpid(), *kids, flush=True)
signal.sigwait([signal.SIGUSR1])
for kid in kids:
    os.kill(kid, signal.SIGUSR2)
codes = [os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1]) for kid in kids]
with open(path, "rb") as f:
    content = f.read()
print("PASS" if codes == [0, 0] and content == b"WR" else f"FAIL {codes} {content!r}", flush=True)
"""

PIPE00 = r"""
import os, signal
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2])
p1, p2 = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(p1[1], 11)
    os.dup2(p2[0], 12)
else:
    os.dup2(p1[0], 12)
    os.dup2(p2[1], 11)
for fd in (*p1, *p2):
    os.close(fd)
if pid == 0:
    os.write(11, b"child-before")
    signal.pthread_sigmask(signal.SIG_SETMASK, [signal.SIGUSR2])
    signal.sigwait([signal.SIGUSR2])
    got = b""
    while len(got) < len(b"parent-beforeparent-after") and (chunk := os.read(12, 100)):
        got += chunk
    ok = got == b"parent-beforeparent-after"
    os.write(11, b"child-after")
    os.close(11)
    os._exit(0 if ok else 3)
os.write(11, b"parent-before")   # in flight at the dump, both ways
print("ready", os.getpid(), pid, flush=True)
signal.sigwait([signal.SIGUSR1])
os.kill(pid, signal.SIGUSR2)
first = os.read(12, 100)
os.write(11, b"parent-after")
rest = b""
while chunk := os.read(12, 100):
    rest += chunk
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
ok = first + rest == b"child-beforechild-after" and code == 0
print("PASS" if ok else f"FAIL {first!r} {rest!r} {code}", flush=True)
"""


class Forked(Target):
    def wait_ready(self, timeout: float = 60) -> Target:
        words = self.readline(timeout).split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.kids = [int(w) for w in words[2:]]
        self.pidfds = [os.pidfd_open(kid) for kid in self.kids]
        # Its signal profile is the one to restore only once it waits in sigwait: that
        # unblocks the signals waited for until it returns (kernel/signal.c do_sigtimedwait).
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{self.pid}/syscall").read_text().split()[0] != "128":   # rt_sigtimedwait
            assert time.monotonic() < deadline, "the target never waited for its signal"
            time.sleep(0.01)
        return self


@pytest.fixture
def forked(spawn: Callable[..., Target]) -> Iterator[Callable[..., Forked]]:
    """forked(argv) -> a started tree whose children are SIGKILLed at teardown too."""
    started: list[Forked] = []

    def start(argv: list[str]) -> Forked:
        target = spawn(argv, cls=Forked)
        assert isinstance(target, Forked)
        started.append(target)
        return target

    try:
        yield start
    finally:
        for target in started:
            for pidfd in target.pidfds:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)


def gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def dump_kill(target: Forked, images_dir: Path) -> dict:
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    target.proc.wait(timeout=30)
    assert gone(target.kids)
    return json.loads(result.stdout)


def restore_and_pass(images_dir: Path, tmp_path: Path, expected: Profile) -> list[str]:
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        lines = run.output()
        assert rc == 0 and lines == ["PASS"], run.explain()
        return lines


@pytest.mark.timeout(300)
def test_a_pipeline_and_a_description_siblings_share_come_back_shared(
        forked: Callable[..., Forked], images_dir: Path, tmp_path: Path) -> None:
    """The parent made the pipe and the file description, then closed them: the writer's
    fd 1 and the reader's fd 0 are two descriptions of one pipe held by siblings, the file
    at fd 9 one description both hold (``shared_with``).  Restored, the bytes queued at the
    dump reach the reader once, the reader sees the end of file when the writer exits (no
    stray write end anywhere: the parent closed what it made for them), and the two
    writes to the file land at one offset."""
    shared = tmp_path / "shared.txt"
    target = forked([sys.executable, "-c", PIPELINE, str(shared)])
    writer, reader = target.kids
    expected = Profile.of(target.pid)
    report = dump_kill(target, images_dir)
    assert report.get("unrestorable", []) == [], report
    from ckpt.image import ImageDir

    tree = {t.pid: t for t in ImageDir(images_dir).checkpoint(report["id"]).tree}
    assert [(fd, other) for fd, other, _ in tree[reader].shared_with] == [(9, writer)], tree[reader]
    restore_and_pass(images_dir, tmp_path, expected)


@pytest.mark.timeout(300)
def test_pipes_whose_ends_a_parent_and_its_child_hold_come_back_with_their_bytes(
        forked: Callable[..., Forked], images_dir: Path, tmp_path: Path) -> None:
    """zdtm pipe00's shape: two pipes, one end of each in the parent, the other in the
    child, at fds 11 and 12, each holding bytes at the dump."""
    target = forked([sys.executable, "-c", PIPE00])
    expected = Profile.of(target.pid)
    dump_kill(target, images_dir)
    restore_and_pass(images_dir, tmp_path, expected)


BASH_JOB = r"""
exec 2>/dev/null
out=$1
{ for i in $(seq 1 30); do echo line$i; sleep 0.05; done; } | cat | sed s/line/L/ > "$out"
echo done
"""


@pytest.mark.timeout(300)
def test_a_bash_pipeline_checkpointed_mid_run_finishes_with_its_whole_output(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """bash made the pipes of ``{ ...; } | cat | sed > out`` and closed them; the subshell,
    cat and sed hold one end each, sleep inherits the subshell's write end.  Dumped in the
    middle of the run and restored, the job ends with every line, in order."""
    out = tmp_path / "out.txt"

    class Bash(Target):
        def wait_ready(self, timeout: float = 60) -> Target:
            deadline = time.monotonic() + timeout
            while not (out.exists() and out.stat().st_size == 0 and len(os.listdir(f"/proc/{self.pid}/task"))):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.4)   # some lines through, most still to come
            return self

    target = spawn(["bash", "-c", BASH_JOB, "bash", str(out)], cls=Bash)
    expected = Profile.of(target.pid)
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    target.proc.wait(timeout=30)
    from ckpt.image import ImageDir

    tree = ImageDir(images_dir).checkpoint(json.loads(result.stdout)["id"]).tree
    assert sorted(t.comm for t in tree) == ["bash", "bash", "cat", "sed", "sleep"], tree
    assert gone([t.pid for t in tree])
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.wait(60)
        assert rc == 0 and run.output() == ["done"], run.explain()   # sed's stdout is its own file
    assert out.read_text().split() == [f"L{i}" for i in range(1, 31)]


# A parent and its child each hold one end of three socket pairs (a seqpacket one, as zdtm
# cow01, a stream one, as nginx's channels, a datagram one), messages queued both ways at
# the dump.
SOCKETPAIRS = r"""
import os, signal, socket
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2])
packets = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
stream = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
grams = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
pid = os.fork()
mine = 0 if pid else 1
os.dup2(packets[mine].fileno(), 11)
os.dup2(stream[mine].fileno(), 12)
os.dup2(grams[mine].fileno(), 13)
for s in (*packets, *stream, *grams):
    s.close()
p = socket.socket(fileno=11)
s = socket.socket(fileno=12)
g = socket.socket(fileno=13)
me = b"parent" if pid else b"child"
p.send(me + b"-packet-1")
p.send(me + b"-packet-2")
s.sendall(me + b"-bytes-before;")
g.send(me + b"-datagram")

def check(other):
    ok = g.recv(100) == other + b"-datagram"
    ok = ok and [p.recv(100) for _ in range(3)] == [other + b"-packet-1", other + b"-packet-2", other + b"-packet-3"]
    got = b""
    want = other + b"-bytes-before;" + other + b"-bytes-after;"
    while len(got) < len(want) and (chunk := s.recv(100)):
        got += chunk
    return ok and got == want

if pid == 0:
    signal.pthread_sigmask(signal.SIG_SETMASK, [signal.SIGUSR2])
    signal.sigwait([signal.SIGUSR2])
    p.send(b"child-packet-3")
    s.sendall(b"child-bytes-after;")
    os._exit(0 if check(b"parent") else 3)
print("ready", os.getpid(), pid, flush=True)
signal.sigwait([signal.SIGUSR1])
os.kill(pid, signal.SIGUSR2)
p.send(b"parent-packet-3")
s.sendall(b"parent-bytes-after;")
ok = check(b"child")
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print("PASS" if ok and code == 0 else f"FAIL {ok} {code}", flush=True)
"""


@pytest.mark.timeout(300)
def test_socket_pairs_whose_ends_a_parent_and_its_child_hold_come_back_connected(
        forked: Callable[..., Forked], images_dir: Path, tmp_path: Path) -> None:
    """A seqpacket, a stream and a datagram socket pair made by the parent before its fork, each task
    then keeping one end of each: restored, each pair is one pair again (made once by the
    parent and handed down), with the messages each side had queued at the dump, in order."""
    target = forked([sys.executable, "-c", SOCKETPAIRS])
    expected = Profile.of(target.pid)
    report = dump_kill(target, images_dir)
    assert report.get("unrestorable", []) == [], report
    restore_and_pass(images_dir, tmp_path, expected)

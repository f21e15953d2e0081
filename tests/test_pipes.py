"""Pipes and FIFOs (ckpt/files/pipe.py, issue 8 item 2): both ends, the bytes in flight,
O_NONBLOCK and packet mode per open file, the pipe's size; refused by name when an end is
outside the process; ``restore --inherit-fd`` (ckpt/files/inherit.py).

The target, tests/programs/zdtm_pipe.c, holds five pipes and a FIFO with bytes in flight
(one pipe each way, a part-read one, a full 1 MiB one, one in packet mode), a dup, a
second read description, a pipe whose write end is closed and one whose read end is;
after SIGUSR1 it checks its fds, flags, sizes and bytes itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files, tracking  # noqa: F401  (tracking lets the spawn fixture stop holders)
from ckpt._sys.pipe import bytes_in
from ckpt.image import schema
from ckpt.image.schema import PipeFile, State
from helpers import REPO_ROOT, Target, canned_state, ckpt_argv, ckpt_env, proc_state, run_ckpt, tracer_pid
from test_badinput import assert_clean_error, edit_meta
from test_files import InheritingTarget
from test_restorable import kill_restored, one_error_line, restored_pid
from test_restore import Profile, dump_and_kill, holding, restore_and_check, run_to_end, signal_until_exit
from test_trust_restore import (EXIT_UNTRUSTED, UserEnv, assert_refused, copy_images, detached, restore_detached,
                                user_dump, wait_running)
from test_trust_restore import uenv, user_site  # noqa: F401  (fixtures: the second user, ckpt's modules for it)
from test_trust_restore import edit_meta as edit_user_meta

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_KILL_REFUSED = errors.KillRefused.exit_code
EXIT_NOT_RESTORABLE = errors.NotRestorable.exit_code
EXIT_USAGE = errors.UsageError.exit_code
BIG = 1 << 20
# zdtm_pipe's fds: fd -> (kind, access mode, bytes in its pipe)
LAYOUT = {10: ("pipe", os.O_RDONLY, 2900), 11: ("pipe", os.O_WRONLY, 2900), 12: ("pipe", os.O_RDONLY, 5000),
          13: ("pipe", os.O_WRONLY, 5000), 14: ("pipe", os.O_WRONLY, 2900), 15: ("pipe", os.O_RDONLY, BIG - 100),
          16: ("pipe", os.O_WRONLY, BIG - 100), 17: ("pipe", os.O_RDONLY, 5030), 18: ("pipe", os.O_WRONLY, 5030),
          19: ("fifo", os.O_RDONLY, 700), 20: ("fifo", os.O_WRONLY, 700), 21: ("fifo", os.O_RDWR, 700),
          22: ("pipe", os.O_RDONLY, 50), 23: ("pipe", os.O_WRONLY, 0), 24: ("pipe", os.O_RDONLY, 2900)}

# A Python target holding the fd numbers given in argv[1] ("5,6"), inherited from the test.
# On SIGUSR1 (sent until it exits) it prints what the first of them holds, then PASS.
READER = r"""
import os, signal, sys
fds = [int(n) for n in sys.argv[1].split(",")]
os.set_blocking(fds[0], False)
go = []
signal.signal(signal.SIGUSR1, lambda *a: go.append(1))
print("ready", os.getpid(), flush=True)
while not go:
    signal.pause()
try:
    data = os.read(fds[0], 1000).decode()
except BlockingIOError:
    data = "(nothing)"
print("got", data.strip(), "nonblocking" if not os.get_blocking(fds[0]) else "blocking", flush=True)
print("PASS", flush=True)
"""


def pipe_argv(programs: dict[str, Path], tmp_path: Path) -> list[str | Path]:
    return [programs["zdtm_pipe"], tmp_path / "fifo"]


def file_of(state: State, fd: int) -> PipeFile:
    """The record of the pipe or FIFO at ``fd``."""
    entry = next(e for e in state.fds if e.fd == fd)
    return next(f for f in state.files if f.id == entry.file)


def signal_to_exit(pid: int, timeout: float = 30) -> None:
    """SIGUSR1 to ``pid`` (any process) until it is gone."""
    pidfd = os.pidfd_open(pid)
    try:
        assert signal_until_exit(pidfd, timeout), f"pid {pid} did not exit within {timeout} s of SIGUSR1"
    finally:
        os.close(pidfd)


@contextlib.contextmanager
def sibling(*fds: int) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding ``fds`` (fork before exec, as a shell's other child would)."""
    proc = subprocess.Popen(["sleep", "600"], pass_fds=fds)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def reader(spawn: Callable[..., Target], fds: tuple[int, ...]) -> Target:
    """A READER target holding ``fds`` (numbers of this process's fds, inherited as they are)."""
    argv = [sys.executable, "-c", READER, ",".join(map(str, fds))]
    return spawn(argv, cls=lambda argv: InheritingTarget(argv, fds))


# ---------------------------------------------------------------------------
# The target checks what it should; a dump leaves it as it was


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage,named", [(None, ""), ("data", "pipe A"), ("packets", "pipe D: packet 0")])
def test_the_target_checks_itself(damage: str | None, named: str, programs: dict[str, Path],
                                  spawn: Callable[..., Target], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if damage:
        monkeypatch.setenv("ZDTM_CORRUPT", damage)
    rc, lines = run_to_end(spawn(pipe_argv(programs, tmp_path)))
    if damage is None:
        assert rc == 0 and lines[-1:] == ["PASS"], lines
    else:
        assert rc == 1 and any(line.startswith(f"FAIL: {named}") for line in lines), lines


@needs_kernel
@pytest.mark.timeout(60)
def test_dumps_leave_the_pipes_as_they_were(programs: dict[str, Path], spawn: Callable[..., Target],
                                            images_dir: Path, tmp_path: Path) -> None:
    """tee(2) takes references to the buffers: two dumps consume nothing and change no flag."""
    target = spawn(pipe_argv(programs, tmp_path))
    for _ in range(2):
        assert ckpt.dump(target.pid, images_dir).restorable
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(60)
def test_each_pipe_is_recorded_with_its_bytes_once(programs: dict[str, Path], spawn: Callable[..., Target],
                                                   images_dir: Path, tmp_path: Path) -> None:
    target = spawn(pipe_argv(programs, tmp_path))
    report = ckpt.dump(target.pid, images_dir)
    assert report.restorable, report.unrestorable
    state = report.checkpoint.state
    by_pipe: dict[int, list[PipeFile]] = {}
    for fd, (kind, access, queued) in LAYOUT.items():
        f = file_of(state, fd)
        assert (f.kind, f.flags & os.O_ACCMODE) == (kind, access), (fd, f)
        assert f.holders == () and f.hidden == "" and f.problem == "" and f.unscanned == 0, f
        if f not in by_pipe.setdefault(f.ino, []):
            by_pipe[f.ino].append(f)
    for records in by_pipe.values():
        first, *others = sorted(records, key=lambda f: f.id)
        assert all(f.data is None and f.packets is None for f in others), "the bytes once, in the first"
        fd = next(e.fd for e in state.fds if e.file == first.id)
        assert first.data is not None and len(first.data) == LAYOUT[fd][2], (fd, first)
    assert file_of(state, 15).pipe_size == BIG and file_of(state, 10).pipe_size == 65536
    assert file_of(state, 17).packets == (10, 20, 4096, 904) and file_of(state, 10).packets is None
    assert file_of(state, 18).flags & (os.O_DIRECT | os.O_NONBLOCK) == os.O_DIRECT | os.O_NONBLOCK
    assert file_of(state, 10).flags & os.O_NONBLOCK and not file_of(state, 24).flags & os.O_NONBLOCK
    assert file_of(state, 11) is file_of(state, 14) or file_of(state, 11).id == file_of(state, 14).id
    assert file_of(state, 10).id != file_of(state, 24).id
    assert file_of(state, 19).target == str(tmp_path / "fifo")
    assert file_of(state, 10).data[:4] == bytes(((i * 7 + 31 + (i >> 8)) & 0xFF) for i in range(100, 104))
    rows = {r["fd"]: r for r in json.loads(run_ckpt("inspect", images_dir, "--fds", "--json").stdout)["fds"]}
    assert all(rows[fd]["restorable"] and rows[fd]["kind"] in ("pipe", "fifo") for fd in LAYOUT), rows


def _pipe_holding(writes: list[tuple[str, bytes]]) -> tuple[int, int]:
    """A pipe of this process (read end, write end) written as ``writes`` says: each
    ("stream" | "packet", bytes), packets through O_DIRECT (fs/pipe.c pipe_write: a
    packet is a buffer of its own; a stream write merges into a stream buffer)."""
    r, w = os.pipe2(os.O_NONBLOCK)
    for mode, data in writes:
        fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK | (os.O_DIRECT if mode == "packet" else 0))
        assert os.write(w, data) == len(data)
    return r, w


@pytest.mark.parametrize("writes,packets,mixed", [
    ([("stream", b"s" * 5000)], None, False),
    ([("stream", b"s")], None, False),
    ([("stream", b"st")], None, False),
    ([], None, False),
    ([("packet", b"a" * 10), ("packet", b"b" * 20), ("packet", b"c" * 5000)], [10, 20, 4096, 904], False),
    ([("packet", b"a"), ("packet", b"bb"), ("packet", b"ccc")], [1, 2, 3], False),
    ([("stream", b"abcde"), ("packet", b"XYZ")], None, False),     # merged into the stream buffer
    ([("stream", b"s" * 4096), ("packet", b"XYZ")], None, True),   # a full page, then a packet
    ([("packet", b"abc"), ("stream", b"defgh")], None, True),
])
def test_the_bytes_of_a_pipe_and_its_packets(writes: list[tuple[str, bytes]], packets: list[int] | None,
                                             mixed: bool) -> None:
    """ckpt.files.pipe._buffered on pipes of this process: the bytes, the packet lengths, or a
    problem when packets and stream bytes are mixed; the pipe itself keeps every byte."""
    from ckpt.files.base import Capture
    from ckpt.files.pipe import _buffered

    r, w = _pipe_holding(writes)
    capture = Capture(os.getpid())
    try:
        expected = b"".join(data for _, data in writes)
        data, found, problem = _buffered(capture, r, 65536)
        if mixed:
            assert problem.startswith("it holds bytes written both in packet mode") and data == b""
        else:
            assert (data, found, problem) == (expected, packets, "")
        assert bytes_in(r) == len(expected), "the pipe was read"
        assert not capture.own or bytes_in(capture.own[0]) == 0, "the copy is left empty for the next pipe"
    finally:
        for fd in (r, w, *capture.own):
            os.close(fd)


MIXED = r"""
import fcntl, os, time
r, w = os.pipe2(os.O_NONBLOCK)
os.write(w, b"s" * 4096)
fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK | os.O_DIRECT)
os.write(w, b"XYZ")
os.dup2(r, 7)
os.dup2(w, 8)
print("ready", os.getpid(), flush=True)
time.sleep(600)
"""


@needs_kernel
@pytest.mark.timeout(60)
def test_a_pipe_mixing_packets_and_stream_bytes_is_refused(spawn: Callable[..., Target], images_dir: Path) -> None:
    target = spawn([sys.executable, "-c", MIXED], cls=Target)
    report = ckpt.dump(target.pid, images_dir)
    assert any(re.search(r"fds \d+, 7 are a pipe \(pipe:\[\d+\]\), the read end: it holds bytes written both in "
                         r"packet mode \(O_DIRECT\) and not", reason) for reason in report.unrestorable), \
        report.unrestorable
    assert target.alive()


# ---------------------------------------------------------------------------
# Restore


@needs_kernel
@pytest.mark.timeout(120)
def test_pipes_restore_with_their_ends_flags_sizes_and_bytes(programs: dict[str, Path],
                                                             spawn: Callable[..., Target], images_dir: Path,
                                                             tmp_path: Path) -> None:
    """The restored target's own checks (module docstring).  Before: dump --kill refused,
    "fd 10 is a pipe (pipe:[N]), which ckpt cannot restore yet"."""
    target = spawn(pipe_argv(programs, tmp_path))
    old = {fd: os.readlink(f"/proc/{target.pid}/fd/{fd}") for fd in LAYOUT}
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)

    def inspect(run: Any) -> None:
        now = {fd: os.readlink(f"/proc/{run.pid}/fd/{fd}") for fd in LAYOUT}
        assert {now[fd] for fd in (19, 20, 21)} == {str(tmp_path / "fifo")}, now
        assert now[10] == now[11] == now[14] == now[24] != old[10] and now[10].startswith("pipe:["), now

    restore_and_check(images_dir, tmp_path, expected, inspect=inspect)


# ---------------------------------------------------------------------------
# Refused: an end outside the process


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["sibling holds both ends", "parent holds the write end"])
def test_a_pipe_shared_with_another_process_is_refused(case: str, spawn: Callable[..., Target],
                                                       images_dir: Path, tmp_path: Path) -> None:
    """A pipe made before a fork and exec: its ends are the target's and another process's.
    ``dump --kill`` refuses by name (and leaves the target running), restore refuses."""
    r, w = os.pipe()
    ino = os.fstat(r).st_ino
    try:
        with contextlib.ExitStack() as stack:
            if case == "sibling holds both ends":
                other = stack.enter_context(sibling(r, w))
                target = reader(spawn, (r, w))
                os.close(w)
                w = -1
                holder = rf"pid {other.pid} \(sleep\)"
            else:
                target = reader(spawn, (r,))
                holder = rf"pid {os.getpid()} \(\S+\)"
            os.close(r)
            r = -1
            result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
            assert result.returncode == EXIT_KILL_REFUSED, result.stderr
            line = one_error_line(result)
            assert re.search(rf"fds? \d+.* a pipe \(pipe:\[{ino}\]\), the read end, also open in {holder}", line), line
            assert f"--inherit-fd N:pipe:[{ino}]" in line, line
            assert target.alive() and tracer_pid(target.pid) == 0
            target.kill()
            refused = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", os.devnull,
                               "--stdout", tmp_path / "out", "--stderr", tmp_path / "err")
            assert re.search(rf"also open in {holder}", assert_clean_error(refused, EXIT_NOT_RESTORABLE))
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def reader_of_a_new_pipe(spawn: Callable[..., Target]) -> tuple[Target, int, int]:
    """A READER holding the read end of a new pipe, and nothing else of it here: (the target,
    the fd number of its read end, the write end -- this process's, to be closed by the caller)."""
    r, w = os.pipe()
    try:
        return reader(spawn, (r,)), r, w
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pipe", "fifo"])
def test_an_end_in_flight_is_refused(kind: str, spawn: Callable[..., Target], images_dir: Path,
                                     tmp_path: Path) -> None:
    """The write end sent over a unix socket and not received: no process has it, yet the
    pipe has a writer -- poll on the read end shows no POLLHUP (for a FIFO read end opened
    O_NONBLOCK with no writer, that means something only while bytes are in it)."""
    if kind == "pipe":
        target, fd, w = reader_of_a_new_pipe(spawn)
        what = r"a pipe \(pipe:\[\d+\]\)"
    else:
        os.mkfifo(tmp_path / "fifo", 0o600)
        fd = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        try:
            target = reader(spawn, (fd,))
        finally:
            os.close(fd)
        w = os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"from the writer in flight\n")
        what = f"the FIFO {re.escape(str(tmp_path / 'fifo'))}"
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        socket.send_fds(a, [b"x"], [w])
        os.close(w)
        report = ckpt.dump(target.pid, images_dir)
    finally:
        a.close()
        b.close()
    assert any(re.search(rf"fd {fd} is {what}, the read end; its write end is open outside the process", reason)
               for reason in report.unrestorable), report.unrestorable


@needs_kernel
@pytest.mark.timeout(60)
def test_an_end_closed_everywhere_is_no_refusal(spawn: Callable[..., Target], images_dir: Path) -> None:
    """The same reader once the write end is closed everywhere: restorable (the reader will
    see the end of file after the bytes, as it would have)."""
    target, fd, w = reader_of_a_new_pipe(spawn)
    os.write(w, b"last words\n")
    os.close(w)
    report = ckpt.dump(target.pid, images_dir)
    assert report.restorable, report.unrestorable
    assert file_of(report.checkpoint.state, fd).data == b"last words\n"


@needs_kernel
@pytest.mark.timeout(60)
def test_a_fifo_open_elsewhere_is_refused(programs: dict[str, Path], spawn: Callable[..., Target],
                                          images_dir: Path, tmp_path: Path) -> None:
    target = spawn(pipe_argv(programs, tmp_path))
    mine = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        report = ckpt.dump(target.pid, images_dir)
    finally:
        os.close(mine)
    fifo = re.escape(str(tmp_path / "fifo"))
    for fd, end in ((19, "the read end"), (20, "the write end"), (21, "both ends")):
        assert any(re.search(rf"^fd {fd} is the FIFO {fifo}, {end}, also open in pid {os.getpid()} ", reason)
                   for reason in report.unrestorable), report.unrestorable
    assert not any("a pipe (pipe:" in reason for reason in report.unrestorable), report.unrestorable


# ---------------------------------------------------------------------------
# --inherit-fd


@pytest.fixture
def outside_images(spawn: Callable[..., Target], images_dir: Path) -> tuple[Path, int, str]:
    """A READER whose pipe's write end this process held, dumped (not restorable) and killed:
    (images, the fd number of its read end, the pipe's key "pipe:[INO]")."""
    r, w = os.pipe()
    try:
        target = reader(spawn, (r,))
        os.write(w, b"old bytes\n")
        key = os.readlink(f"/proc/{target.pid}/fd/{r}")
        report = ckpt.dump(target.pid, images_dir)
        assert not report.restorable and key in " ".join(report.unrestorable)
        target.kill()
    finally:
        os.close(r)
        os.close(w)
    return images_dir, r, key


def _restore_with_pipe(images: Path, tmp_path: Path, run: Callable[[int, Path], int]) -> tuple[str, int]:
    """Give a fresh pipe's read end to a restore (``run(fd, out) -> restored pid``), write a
    line into it, let the restored READER read it; (its output, the pipe's inode)."""
    r, w = os.pipe()
    out = tmp_path / "restored.out"
    out.write_text("")
    pid = None
    try:
        pid = run(r, out)
        os.write(w, b"new bytes\n")
        deadline = time.monotonic() + 20
        while proc_state(pid) not in ("S", "R") or tracer_pid(pid) != 0:
            assert time.monotonic() < deadline, f"restored pid {pid} never ran untraced"
            time.sleep(0.02)
        link = os.readlink(f"/proc/{pid}/fd/{r}")
        assert link == os.readlink(f"/proc/self/fd/{r}"), "the restored process has the caller's pipe"
        signal_to_exit(pid)
        return out.read_text(), os.fstat(r).st_ino
    finally:
        os.close(r)
        os.close(w)
        if pid is not None:
            kill_restored(pid)


@needs_kernel
@pytest.mark.timeout(120)
def test_inherit_fd_gives_the_restored_process_the_callers_pipe(outside_images: tuple[Path, int, str],
                                                                tmp_path: Path) -> None:
    """``ckpt restore --inherit-fd N:pipe:[INO]``: the restored process reads, at its own fd,
    what the caller writes into its pipe; its O_NONBLOCK is set on it, and noted."""
    images, fd, key = outside_images
    ckpt_err = tmp_path / "ckpt.err"

    def run(given: int, out: Path) -> int:
        with open(tmp_path / "ckpt.out", "w") as o, open(ckpt_err, "w") as e:
            proc = subprocess.Popen(ckpt_argv("restore", "-D", images, "--stdin", os.devnull, "--stdout", out,
                                              "--stderr", tmp_path / "restored.err",
                                              "--inherit-fd", f"{given}:{key}"),
                                    stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=ckpt_env(), cwd=REPO_ROOT,
                                    pass_fds=(given,))
        procs.append(proc)
        return restored_pid(ckpt_err, proc)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        output, _ = _restore_with_pipe(images, tmp_path, run)
        assert procs[0].wait(timeout=30) == 0, ckpt_err.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert output.splitlines() == ["got new bytes nonblocking", "PASS"], (output, ckpt_err.read_text())
    said = ckpt_err.read_text()
    assert re.search(rf"note: fd {fd} \(a pipe \({re.escape(key)}\)\) is the caller's fd \d+ \(pipe:\[\d+\]\), "
                     rf"as --inherit-fd \d+:{re.escape(key)} asks", said), said
    assert re.search(rf"note: fd {fd}: the caller's fd \d+ is one open file with fd {fd}; it now has the "
                     r"process's status flags \(O_RDONLY\|O_NONBLOCK\)", said), said


@needs_kernel
@pytest.mark.timeout(120)
def test_inherit_fd_from_the_python_api(outside_images: tuple[Path, int, str], tmp_path: Path) -> None:
    images, fd, key = outside_images

    def run(given: int, out: Path) -> int:
        result = ckpt.restore(images, detach=True, stdin=os.devnull, stdout=out, stderr=tmp_path / "restored.err",
                              inherit_fds={given: key})
        pids.append(result.pid)
        assert any("is the caller's fd" in note for note in result.notes), result.notes
        return result.pid

    pids: list[int] = []
    output, _ = _restore_with_pipe(images, tmp_path, run)
    for pid in pids:   # the restored process is this process's child: reap it
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert output.splitlines() == ["got new bytes nonblocking", "PASS"], output


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["no such key", "fd not open", "not a pipe", "the other end", "malformed",
                                  "only at fds 0-2"])
def test_inherit_fd_refusals(case: str, outside_images: tuple[Path, int, str], tmp_path: Path) -> None:
    images, fd, key = outside_images
    r, w = os.pipe()
    regular = os.open(tmp_path / "regular", os.O_RDWR | os.O_CREAT, 0o600)
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    stdin_key = next(f.target for f in ckpt.ImageDir(images).checkpoint(1).state.files
                     if f.id == next(e.file for e in ckpt.ImageDir(images).checkpoint(1).state.fds
                                        if e.fd == 0))
    value, mention = {
        "no such key": (f"{r}:pipe:[1]", "the checkpoint has no open file pipe:[1]"),
        "fd not open": (f"{closed}:{key}", f"fd {closed} is not open"),
        "not a pipe": (f"{regular}:{key}", f"fd {regular} is a regular file, not a pipe or FIFO"),
        "the other end": (f"{w}:{key}", f"fd {w} is open for writing; the process had it open for reading"),
        "malformed": (f"x{r}:{key}", "expected N:KEY"),
        "only at fds 0-2": (f"{r}:{stdin_key}", "only at fds 0-2"),
    }[case]
    try:
        result = subprocess.run(ckpt_argv("restore", "-D", images, "--detach", "--stdin", os.devnull,
                                          "--stdout", tmp_path / "o", "--stderr", tmp_path / "e",
                                          "--inherit-fd", value),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                                env=ckpt_env(), cwd=REPO_ROOT, pass_fds=(r, w, regular))
        if result.returncode == 0:
            kill_restored(int(result.stdout.split()[0]))
        assert_clean_error(result, EXIT_USAGE, (mention,))
    finally:
        for n in (r, w, regular):
            os.close(n)


@needs_kernel
@pytest.mark.timeout(60)
def test_an_image_saying_inherited_is_refused(outside_images: tuple[Path, int, str], tmp_path: Path) -> None:
    images, fd, key = outside_images

    def forge(body: dict[str, Any]) -> None:
        record = next(f for f in body["state"]["files"] if f["target"] == key)
        record["kind"] = "inherited"
        record["given"] = {"fd": 0}

    edit_meta(images, 1, forge)
    refused = run_ckpt("restore", "-D", images, "--detach", "--stdin", os.devnull, "--stdout", tmp_path / "o",
                       "--stderr", tmp_path / "e")
    assert_clean_error(refused, EXIT_NOT_RESTORABLE, ("which only a restore's --inherit-fd makes",))


# ---------------------------------------------------------------------------
# Images: trust and malformed records


@needs_kernel
@pytest.mark.timeout(180)
def test_a_users_pipe_restores_as_the_user_and_no_larger_than_they_could_make(
        uenv: UserEnv, spawn: Callable[..., Target], tmp_path: Path) -> None:
    """The user's zdtm_counter with the write end of a pipe (its read end closed), dumped by the
    user with --kill.  Root restores it as the user: the pipe is the user's; an image edited to
    ask for a pipe above pipe-max-size is refused (the user could not make one); root's copy of
    the images restores the pipe with the owner it had (fchown)."""
    target = spawn(uenv.argv("zdtm_counter", "-f", "pipe"))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    state = ckpt.ImageDir(images).checkpoint(1).state
    assert file_of(state, 5).uid == uenv.user.uid and file_of(state, 5).kind == "pipe"
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        st = os.stat(f"/proc/{pid}/fd/5")
        assert (st.st_uid, st.st_gid) == (uenv.user.uid, uenv.user.gid)
    trusted = copy_images(images, tmp_path / "root-images", None)
    with detached(restore_detached(trusted, tmp_path, name="trusted")) as pid:
        wait_running(pid)
        st = os.stat(f"/proc/{pid}/fd/5")
        assert (st.st_uid, st.st_gid) == (uenv.user.uid, uenv.user.gid), "root's restore gives the pipe its owner"

    max_size = int(Path("/proc/sys/fs/pipe-max-size").read_text())

    def bigger(body: dict[str, Any]) -> None:
        next(f for f in body["state"]["files"] if f["kind"] == "pipe" and f["flags"] & 3 == 1 and
             f["ino"] == file_of(state, 5).ino)["pipe_size"] = max_size * 2

    def roots(body: dict[str, Any]) -> None:
        for f in body["state"]["files"]:
            if f["kind"] == "pipe" and f["ino"] == file_of(state, 5).ino:
                f["uid"], f["gid"] = 0, 0

    # Before the size edit (the user's images are edited in place): a pipe root owned is
    # refused by name, not given silently to the user (it was: pipe2 made it the user's).
    pristine = (images / "000001" / "meta.ckpt").read_bytes()
    edit_user_meta(images / "000001" / "meta.ckpt", roots)
    assert_refused(restore_detached(images, tmp_path, name="roots"), EXIT_UNTRUSTED,
                   rf"a pipe owned by uid 0 \(gid 0\): uid {uenv.user.uid} \(gid {uenv.user.gid}\) could not "
                   "make it so")
    (images / "000001" / "meta.ckpt").write_bytes(pristine)

    edit_user_meta(images / "000001" / "meta.ckpt", bigger)
    assert_refused(restore_detached(images, tmp_path, name="bigger"), EXIT_UNTRUSTED,
                   rf"a pipe of {max_size * 2} bytes, above /proc/sys/fs/pipe-max-size \({max_size}\): "
                   rf"uid {uenv.user.uid} could not make it")


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,mention", [("data beyond its size", "data is 70000 bytes, more than the pipe holds"),
                                          ("packets", "packets do not add up"),
                                          ("a packet larger than a page", "packets[0] is 5000"),
                                          ("hidden", "hidden is str 'sideways'")])
def test_a_malformed_pipe_record_is_refused_on_open(case: str, mention: str, programs: dict[str, Path],
                                                    spawn: Callable[..., Target], images_dir: Path,
                                                    tmp_path: Path) -> None:
    target = spawn(pipe_argv(programs, tmp_path))
    ckpt.dump(target.pid, images_dir)

    def damage(body: dict[str, Any]) -> None:
        records = body["state"]["files"]
        pipes = [f for f in records if f["kind"] == "pipe"]
        a = next(f for f in pipes if f["data"] and f["pipe_size"] == 65536 and not f["packets"])
        d = next(f for f in pipes if f["packets"])
        if case == "data beyond its size":
            a["data"] = b"x" * 70000
        elif case == "packets":
            d["packets"][0] += 1
        elif case == "a packet larger than a page":
            d["packets"] = [5000, len(d["data"]) - 5000]
        else:
            a["hidden"] = "sideways"

    edit_meta(images_dir, 1, damage)
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        ckpt.ImageDir(images_dir).checkpoint(1)


def test_the_pipe_record_is_in_the_schema() -> None:
    assert schema.FILE_RECORDS["pipe"] is schema.FILE_PIPE is schema.FILE_RECORDS["fifo"]
    assert files.kind_named("pipe") is files.kind_named("fifo") is not None


@needs_kernel
@pytest.mark.timeout(60)
def test_the_dumps_own_copies_are_not_holders(spawn: Callable[..., Target]) -> None:
    """The capture's pidfd_getfd copies are not "another process" holding the pipe; a copy
    this process keeps of its own is."""
    r, w = os.pipe()
    try:
        target = reader(spawn, (r,))
    finally:
        os.close(r)
        os.close(w)   # the target's read end alone: its write end is closed everywhere
    with holding(target.pid, r):
        verdict = _verdict_now(target.pid)
        assert any(f"also open in pid {os.getpid()} " in reason for reason in verdict), verdict
    assert _verdict_now(target.pid) == [], "the capture's own copies counted as holders"


def _verdict_now(pid: int) -> list[str]:
    """The reasons over the fd table of ``pid`` as a dump would record it now."""
    from ckpt.live import FrozenProcess

    with FrozenProcess(pid):
        table = files.capture(pid)
    state = {"version": schema.TASK_STATE_VERSION, **table}
    return files.reasons(files.table(canned_state(state)))

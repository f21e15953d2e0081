"""Unix sockets (ckpt/files/unix.py, unix_dump.py, unix_restore.py; issue 8 item 2): stream,
datagram and seqpacket sockets; socket pairs, connections through a listener, listeners on a
path and an abstract name, datagram sockets bound and connected, with their queues both ways;
refused by name when they cannot come back; ``restore --ext-unix-sk``.

The target, tests/programs/zdtm_unix.c, holds one of each (its docstring lists them) and,
after SIGUSR1, checks its fds, names, options, peer credentials, every queued byte and
boundary, and that the sockets still work.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files, tracking  # noqa: F401  (tracking lets the spawn fixture stop holders)
from ckpt._sys import sockdiag
from ckpt.image import schema
from ckpt.image.schema import State, UnixFile
from helpers import Target, tracer_pid
from test_badinput import assert_clean_error, edit_meta
from test_restorable import kill_restored, one_error_line
from test_restore import Profile, dump_and_kill, holding, restore_and_check, run_to_end, signal_until_exit
from test_trust_restore import (EXIT_UNTRUSTED, UserEnv, assert_refused, copy_images, detached, restore_detached,
                                user_dump, wait_running)
from test_trust_restore import uenv, user_site  # noqa: F401  (fixtures: the second user, ckpt's modules for it)
from test_trust_restore import edit_meta as edit_user_meta

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_KILL_REFUSED = errors.KillRefused.exit_code
EXIT_NOT_RESTORABLE = errors.NotRestorable.exit_code
EXIT_TARGET = errors.TargetError.exit_code
SO_PEEK_OFF = 42
# zdtm_unix's fds: fd -> (type, link, number of queued messages)
LAYOUT = {10: ("stream", "pair", 1), 11: ("stream", "pair", 1), 12: ("dgram", "pair", 2), 13: ("dgram", "pair", 2),
          14: ("seqpacket", "pair", 2), 15: ("seqpacket", "pair", 1), 16: ("stream", "none", 0),
          17: ("seqpacket", "none", 0), 18: ("dgram", "none", 3), 19: ("dgram", "to", 0), 20: ("dgram", "none", 0),
          21: ("stream", "client", 1), 22: ("stream", "server", 1), 23: ("stream", "closed", 1),
          24: ("stream", "client", 0), 25: ("stream", "server", 0)}


def unix_argv(programs: dict[str, Path], where: Path, *extra: str) -> list[str | Path]:
    where.mkdir(exist_ok=True)
    return [programs["zdtm_unix"], where, *extra]


def file_of(state: State, fd: int) -> UnixFile:
    entry = next(e for e in state.fds if e.fd == fd)
    file = next(f for f in state.files if f.id == entry.file)
    assert isinstance(file, UnixFile), file
    return file


def id_of(state: State, fd: int) -> int:
    return next(e.file for e in state.fds if e.fd == fd)


def python_target(spawn: Callable[..., Target], script: str, *args: str | os.PathLike[str]) -> Target:
    """A Python target running ``script`` (which prints "ready PID" and waits for SIGUSR1)."""
    return spawn([sys.executable, "-c", script, *map(os.fspath, args)])


# Sets up what argv[1] names, prints "ready PID", and on SIGUSR1 runs what argv[1] checks.
GO = r"""
import os, signal, socket, sys, time
go = []
signal.signal(signal.SIGUSR1, lambda *a: go.append(1))
def ready():
    print("ready", os.getpid(), flush=True)
    while not go:
        signal.pause()
"""


# ---------------------------------------------------------------------------
# The target checks what it should; a dump leaves it as it was


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", [None, "data"])
def test_the_target_checks_itself(damage: str | None, programs: dict[str, Path], spawn: Callable[..., Target],
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if damage:
        monkeypatch.setenv("ZDTM_CORRUPT", damage)
    rc, lines = run_to_end(spawn(unix_argv(programs, tmp_path / "socks")))
    if damage is None:
        assert rc == 0 and lines[-1:] == ["PASS"], lines
    else:
        assert rc == 1 and any(line.startswith("FAIL: fd 10: its 3000 bytes") for line in lines), lines


@needs_kernel
@pytest.mark.timeout(60)
def test_dumps_leave_the_sockets_as_they_were(programs: dict[str, Path], spawn: Callable[..., Target],
                                              images_dir: Path, tmp_path: Path) -> None:
    """The queues are peeked at, never read; SO_PEEK_OFF and SO_PASSCRED, which the peek
    changes, are put back: after two dumps the target finds every byte, boundary, sender,
    credential and option as it set them."""
    target = spawn(unix_argv(programs, tmp_path / "socks"))
    for _ in range(2):
        report = ckpt.dump(target.pid, images_dir)
        assert report.restorable, report.unrestorable
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(60)
def test_each_socket_is_recorded(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                                 tmp_path: Path) -> None:
    socks = tmp_path / "socks"
    target = spawn(unix_argv(programs, socks))
    report = ckpt.dump(target.pid, images_dir)
    assert report.restorable, report.unrestorable
    state = report.checkpoint.state
    for fd, (kind, link, queued) in LAYOUT.items():
        f = file_of(state, fd)
        assert (f.kind, f.sock_type, f.link, len(f.queue)) == ("unix", kind, link, queued), (fd, f)
        assert f.problem == "" and f.holders == () and not f.scm_fds, f
    for a, b in ((10, 11), (12, 13), (14, 15), (21, 22)):
        assert file_of(state, a).peer_file == id_of(state, b) and file_of(state, b).peer_file == id_of(state, a)
    assert file_of(state, 19).peer_file == id_of(state, 18)
    assert file_of(state, 21).listener_file == file_of(state, 22).listener_file == id_of(state, 16)
    listener = file_of(state, 16)
    assert (listener.state, listener.name, listener.path, listener.backlog) == (
        "listening", os.fsencode(socks / "listen.sock"), "present", 7)
    assert listener.file_owner == (0, 0, 0o660)
    assert file_of(state, 17).name == f"\0zdtm_unix.{target.pid}".encode()
    assert [len(m.data) for m in file_of(state, 13).queue] == [100, 50]
    assert [m.creds for m in file_of(state, 13).queue] == [None, (os.getuid(), os.getgid())]
    dgram = file_of(state, 18).queue
    assert [(m.data, m.sender, m.sender_name) for m in dgram] == [
        (b"one", None, None), (b"two", id_of(state, 20), f"\0zdtm_unix_sender.{target.pid}".encode()),
        (b"three", None, None)]
    assert dgram[2].creds == (os.getuid(), os.getgid()) and dgram[0].creds is None
    assert file_of(state, 12).options["SO_PEEK_OFF"] == 1 and file_of(state, 10).options["SO_PEEK_OFF"] == -1
    assert file_of(state, 13).options["SO_PASSCRED"] == 1 and file_of(state, 12).options["SO_PASSCRED"] == 0
    assert file_of(state, 15).shutdown == 1 and file_of(state, 14).shutdown == 2
    assert file_of(state, 23).shutdown == 3 and file_of(state, 23).queue[0].data == b"last words"
    assert file_of(state, 10).peercred == (target.pid, os.getuid(), os.getgid())
    rows = {r["fd"]: r for r in files.rows(files.table(state)) if r["fd"] in LAYOUT}
    assert all(rows[fd]["restorable"] and rows[fd]["kind"] == "unix" for fd in LAYOUT), rows
    assert rows[16]["what"].startswith(f"a unix stream socket listening on {socks / 'listen.sock'} (socket:["), rows


# ---------------------------------------------------------------------------
# Restore


@needs_kernel
@pytest.mark.timeout(120)
def test_unix_sockets_restore_with_their_names_peers_and_queues(programs: dict[str, Path],
                                                                 spawn: Callable[..., Target], images_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Dumped twice while running, then with --kill (an incremental chain): the restored
    target's own checks (module docstring) pass, after a client outside it connected to its
    restored listener (and is answered).  Before: dump --kill refused, "fd 10 is a socket
    (socket:[N]), which ckpt cannot restore yet"."""
    socks = tmp_path / "socks"
    target = spawn(unix_argv(programs, socks, "client"))
    old = {fd: os.readlink(f"/proc/{target.pid}/fd/{fd}") for fd in LAYOUT}
    expected = Profile.of(target.pid)
    for _ in range(2):
        assert ckpt.dump(target.pid, images_dir).restorable
    dump_and_kill(target, images_dir)
    assert [cp.kind for cp in ckpt.ImageDir(images_dir).checkpoints] == ["full", "incremental", "incremental"]
    client = socket.socket(socket.AF_UNIX)

    def inspect(run: Any) -> None:
        now = {fd: os.readlink(f"/proc/{run.pid}/fd/{fd}") for fd in LAYOUT}
        assert all(now[fd].startswith("socket:[") and now[fd] != old[fd] for fd in LAYOUT), now
        st = os.stat(socks / "listen.sock")
        assert (st.st_mode & 0o7777, st.st_uid) == (0o660, 0)
        client.connect(os.fspath(socks / "listen.sock"))
        client.sendall(b"ping")

    try:
        restore_and_check(images_dir, tmp_path, expected, inspect=inspect)
        client.settimeout(10)
        assert client.recv(4) == b"pong"
    finally:
        client.close()


ZERO = GO + r"""
a, b = socket.socketpair(socket.AF_UNIX, getattr(socket, sys.argv[1]))
a.send(b"first"); a.send(b""); a.send(b"last")
os.dup2(a.fileno(), 7); os.dup2(b.fileno(), 8)
ready()
got = [b.recv(100, socket.MSG_DONTWAIT) for _ in range(3)]
print("PASS" if got == [b"first", b"", b"last"] else f"FAIL: {got}", flush=True)
"""


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["SOCK_DGRAM", "SOCK_SEQPACKET"])
def test_a_zero_length_message_comes_back(kind: str, spawn: Callable[..., Target], images_dir: Path,
                                          tmp_path: Path) -> None:
    """A datagram (or packet) of 0 bytes between two others, seen by the first peek."""
    target = python_target(spawn, ZERO, kind)
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    assert [m.data for m in file_of(ckpt.ImageDir(images_dir).checkpoint(1).state, 8).queue] == [
        b"first", b"", b"last"]
    restore_and_check(images_dir, tmp_path, expected)


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["SOCK_DGRAM", "SOCK_SEQPACKET"])
def test_a_zero_length_message_an_earlier_peek_saw_is_refused(kind: str, spawn: Callable[..., Target],
                                                              images_dir: Path, tmp_path: Path) -> None:
    """A peek marks a zero-length buffer it returns, and every later peek at an offset skips it
    (net/core/datagram.c): the second dump cannot see the datagram the first one recorded.
    Its sender's send buffer tells that something is missing: refused by name, not lost."""
    target = python_target(spawn, ZERO, kind)
    assert ckpt.dump(target.pid, images_dir).restorable
    with pytest.raises(errors.KillRefused):
        ckpt.dump(target.pid, images_dir, after="kill")
    assert target.alive()
    report = ckpt.dump(target.pid, images_dir)
    assert any(re.search(r"fds \d+, 8 are a unix \w+ socket connected within the process .*: its peer has \d+ bytes of "
                         r"buffers queued that the messages the dump could read do not account for \(about 1 "
                         r"zero-length message", reason) for reason in report.unrestorable), report.unrestorable
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines   # the datagram is still there


# ---------------------------------------------------------------------------
# Refused by name


OUTSIDE = GO + r"""
stream = socket.socket(socket.AF_UNIX); stream.connect(sys.argv[1])
dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); dgram.connect(sys.argv[2])
ready()
stream.sendall(b"hello")
print("reply", stream.recv(100).decode(), flush=True)
dgram.send(b"log line")
print("PASS", flush=True)
"""


@contextlib.contextmanager
def server(where: Path) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A stream listener and a datagram socket of this process, outside any target."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.fspath(where / "server.sock"))
    listener.listen(8)
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(os.fspath(where / "log.sock"))
    try:
        yield listener, log
    finally:
        listener.close()
        log.close()


@needs_kernel
@pytest.mark.timeout(120)
def test_a_peer_outside_the_process_is_refused(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path,
                                               run_ckpt: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    with server(tmp_path) as (listener, log):
        target = python_target(spawn, OUTSIDE, tmp_path / "server.sock", tmp_path / "log.sock")
        accepted, _ = listener.accept()
        result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
        line = one_error_line(result)
        assert result.returncode == EXIT_KILL_REFUSED, result.stderr
        assert re.search(rf"fd 3 is a unix stream socket connected to {re.escape(str(tmp_path))}/server.sock "
                         r"\(socket:\[\d+\]\): its peer is outside the process; restore --ext-unix-sk connects it "
                         "to", line), line
        assert re.search(r"fd 4 is a unix dgram socket connected to .*/log.sock", line), line
        assert target.alive() and tracer_pid(target.pid) == 0
        target.kill()
        accepted.close()
    refused = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", os.devnull, "--stdout", tmp_path / "o",
                       "--stderr", tmp_path / "e")
    assert_clean_error(refused, EXIT_NOT_RESTORABLE, ("its peer is outside the process", "--ext-unix-sk"))

    # Only the user's --ext-unix-sk allows it (UnixFile.external, a field no image holds): an
    # image that says "external" itself is refused the same.
    def allow_itself(body: dict[str, Any]) -> None:
        outside = [f for f in body["state"]["files"] if f["kind"] == "unix" and f["link"] == "outside"]
        assert len(outside) == 2, outside
        for f in outside:
            f["external"] = True

    edit_meta(images_dir, 1, allow_itself)
    refused = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", os.devnull, "--stdout", tmp_path / "o",
                       "--stderr", tmp_path / "e")
    assert_clean_error(refused, EXIT_NOT_RESTORABLE, ("its peer is outside the process", "--ext-unix-sk"))


@needs_kernel
@pytest.mark.timeout(120)
def test_ext_unix_sk_connects_to_the_peer_again(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path,
                                                run_ckpt: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """``ckpt restore --ext-unix-sk``: a new connection to the same listener, the datagram socket
    connected to the same name; noted.  The server sees a new client, with the credentials of
    the socket's owner."""
    with server(tmp_path) as (listener, log):
        target = python_target(spawn, OUTSIDE, tmp_path / "server.sock", tmp_path / "log.sock")
        first, _ = listener.accept()
        report = ckpt.dump(target.pid, images_dir)
        assert not report.restorable
        target.kill()
        first.close()
        result = run_ckpt("restore", "-D", images_dir, "--detach", "--ext-unix-sk", "--stdin", os.devnull,
                          "--stdout", tmp_path / "restored.out", "--stderr", tmp_path / "restored.err")
        assert result.returncode == 0, result.stderr
        pid = int(result.stdout.split()[0])
        try:
            assert re.search(r"note: fd 3 \(a unix stream socket connected to .*/server.sock \(socket:\[\d+\]\)\) is "
                             r"connected to .*/server.sock again, as --ext-unix-sk asks", result.stderr), result.stderr
            listener.settimeout(20)
            again, _ = listener.accept()
            pid_, uid, gid = struct.unpack("iII", again.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            assert (pid_, uid, gid) == (pid, 0, 0)
            pidfd = os.pidfd_open(pid)
            try:
                os.kill(pid, 10)
                again.settimeout(20)
                assert again.recv(5) == b"hello"
                again.sendall(b"welcome")
                log.settimeout(20)
                assert log.recv(100) == b"log line"
                assert signal_until_exit(pidfd, 20)
            finally:
                os.close(pidfd)
            again.close()
        finally:
            kill_restored(pid)
    assert (tmp_path / "restored.out").read_text().splitlines() == ["reply welcome", "PASS"]


@needs_kernel
@pytest.mark.timeout(120)
def test_ext_unix_sk_with_the_peer_gone_is_refused(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path,
                                                   run_ckpt: Callable[..., Any]) -> None:
    with server(tmp_path) as (listener, _):
        target = python_target(spawn, OUTSIDE, tmp_path / "server.sock", tmp_path / "log.sock")
        first, _ = listener.accept()
        with first:
            ckpt.dump(target.pid, images_dir)
            target.kill()
    (tmp_path / "server.sock").unlink()
    refused = run_ckpt("restore", "-D", images_dir, "--detach", "--ext-unix-sk", "--stdin", os.devnull,
                       "--stdout", tmp_path / "o", "--stderr", tmp_path / "e")
    assert_clean_error(refused, EXIT_TARGET, (f"{tmp_path}/server.sock is gone; --ext-unix-sk has nothing to "
                                              "connect it to",))


@needs_kernel
@pytest.mark.timeout(120)
def test_bytes_from_outside_are_refused_even_with_ext_unix_sk(spawn: Callable[..., Target], images_dir: Path,
                                                              tmp_path: Path, run_ckpt: Callable[..., Any]) -> None:
    """Bytes the peer outside sent and the process did not read yet: only that peer could send
    them again, on the connection that is gone."""
    with server(tmp_path) as (listener, _):
        target = python_target(spawn, OUTSIDE, tmp_path / "server.sock", tmp_path / "log.sock")
        first, _ = listener.accept()
        with first:
            first.sendall(b"unread")
            ckpt.dump(target.pid, images_dir)
            target.kill()
    refused = run_ckpt("restore", "-D", images_dir, "--detach", "--ext-unix-sk", "--stdin", os.devnull,
                       "--stdout", tmp_path / "o", "--stderr", tmp_path / "e")
    assert_clean_error(refused, EXIT_NOT_RESTORABLE, ("fd 3 is a unix stream socket connected to",
                                                      "with 6 bytes queued from its peer outside the process"))


IN_FLIGHT = GO + r"""
a, b = socket.socketpair()
socket.send_fds(a, [b"x"], [0, 1])
os.dup2(b.fileno(), 7)
ready()
"""

OOB = GO + r"""
a, b = socket.socketpair()
a.send(b"ab"); a.send(b"!", socket.MSG_OOB)
ready()
"""

FROM_OUTSIDE = GO + r"""
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind(sys.argv[1])
ready()
"""

RELATIVE = GO + r"""
os.chdir(sys.argv[1])
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("relative.sock")
ready()
"""


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["fds in flight", "out-of-band", "datagram from outside", "relative path",
                                  "held by another process", "pending connection"])
def test_what_cannot_come_back_is_refused_by_name(case: str, spawn: Callable[..., Target], images_dir: Path,
                                                  programs: dict[str, Path], tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        if case == "fds in flight":
            target = python_target(spawn, IN_FLIGHT)
            pattern = (r"fds \d+, 7 are a unix stream socket connected within the process \(socket:\[\d+\]\) with 2 "
                       r"file descriptors in flight in its queue \(SCM_RIGHTS\)")
        elif case == "out-of-band":
            target = python_target(spawn, OOB)
            pattern = r"fd \d+ is a unix stream socket .* with out-of-band data \(MSG_OOB\) queued"
        elif case == "datagram from outside":
            target = python_target(spawn, FROM_OUTSIDE, tmp_path / "d.sock")
            sender = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            sender.bind(b"\0ckpt-test-outside-sender")
            sender.sendto(b"hi", os.fspath(tmp_path / "d.sock"))
            pattern = (r"fd 3 is a unix dgram socket bound to .*/d.sock \(socket:\[\d+\]\): a datagram queued from "
                       r"@ckpt-test-outside-sender, a socket outside the process")
        elif case == "relative path":
            target = python_target(spawn, RELATIVE, tmp_path)
            pattern = r"fd 3 is a unix dgram socket bound to relative.sock .*: bound to the relative path relative.sock"
        elif case == "held by another process":
            target = spawn(unix_argv(programs, tmp_path / "socks"))
            stack.enter_context(holding(target.pid, 12))
            pattern = rf"fd 12 is a unix dgram socket connected within the process .*, also open in pid {os.getpid()} "
        else:
            target = spawn(unix_argv(programs, tmp_path / "socks"))
            waiting = stack.enter_context(socket.socket(socket.AF_UNIX))
            waiting.connect(os.fspath(tmp_path / "socks" / "listen.sock"))
            pattern = r"fd 16 is a unix stream socket listening on .*listen.sock .* with 1 connection not yet accepted"
        report = ckpt.dump(target.pid, images_dir)
    assert any(re.search(pattern, reason) for reason in report.unrestorable), report.unrestorable
    assert target.alive()


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["another file at the path", "another user's socket file", "the process still runs",
                                  "abstract name taken"])
def test_a_name_taken_since_the_dump_is_refused(case: str, programs: dict[str, Path], spawn: Callable[..., Target],
                                                images_dir: Path, tmp_path: Path,
                                                run_ckpt: Callable[..., Any]) -> None:
    """A restore binds the recorded names again.  It removes a socket file left at a path only
    when it is dead (no live socket is bound to it) and its owner's; anything else refuses by
    name, and is left as it is."""
    socks = tmp_path / "socks"
    target = spawn(unix_argv(programs, socks))
    path = socks / "listen.sock"
    with contextlib.ExitStack() as stack:
        if case == "the process still runs":
            ckpt.dump(target.pid, images_dir)
            mention = (f"{path} is in use by a live socket", "is the dumped process still running?")
        else:
            pid = target.pid
            dump_and_kill(target, images_dir)
            if case == "another file at the path":
                path.unlink()
                path.write_text("someone else's\n")
                mention = (f"{path} is another file now; ckpt removes only a socket file of uid 0 that no socket is "
                           "bound to",)
            elif case == "another user's socket file":
                os.chown(path, 4321, 4321)   # dead, as the process left it, but no longer root's
                mention = (f"{path} is a socket file of uid 4321 now; ckpt removes only a socket file of uid 0",)
            else:
                taken = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
                taken.bind(f"\0zdtm_unix.{pid}".encode())
                mention = (f"the abstract name @zdtm_unix.{pid} is in use by another socket",)
        refused = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", os.devnull, "--stdout",
                           tmp_path / "o", "--stderr", tmp_path / "e")
        assert_clean_error(refused, EXIT_TARGET, mention)
    if case == "another file at the path":
        assert path.read_text() == "someone else's\n"
    elif case == "another user's socket file":
        assert path.is_socket() and path.stat().st_uid == 4321


@needs_kernel
@pytest.mark.timeout(120)
def test_a_dead_socket_file_is_replaced(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                                        tmp_path: Path) -> None:
    """After dump --kill the socket files stay where the process bound them (unix sockets do
    not unlink on close): the restore removes them, being the very files the sockets were
    bound to, and binds again."""
    socks = tmp_path / "socks"
    target = spawn(unix_argv(programs, socks))
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    assert (socks / "listen.sock").is_socket() and (socks / "dgram.sock").is_socket()

    def inspect(run: Any) -> None:
        # The files at the paths are the ones the restored sockets are bound to (a removed
        # file's inode number may well be given to the new one).
        for fd, name in ((16, "listen.sock"), (18, "dgram.sock")):
            restored = sockdiag.unix_socket(os.stat(f"/proc/{run.pid}/fd/{fd}").st_ino)
            st = os.stat(socks / name)
            assert restored is not None and restored.vfs == (st.st_dev, st.st_ino), (fd, restored)

    restore_and_check(images_dir, tmp_path, expected, inspect=inspect)


# ---------------------------------------------------------------------------
# Trust: images of another user


@pytest.fixture
def user_unix(uenv: UserEnv, programs: dict[str, Path]) -> Path:
    """The user's copy of zdtm_unix and a directory of theirs for its sockets."""
    shutil.copyfile(programs["zdtm_unix"], uenv.bin / "zdtm_unix")
    (uenv.bin / "zdtm_unix").chmod(0o755)
    socks = uenv.home / "socks"
    socks.mkdir()
    uenv.user.owns(socks)
    return socks


@needs_kernel
@pytest.mark.timeout(180)
def test_a_users_sockets_restore_as_the_user(uenv: UserEnv, user_unix: Path, spawn: Callable[..., Target],
                                             tmp_path: Path) -> None:
    """The user's zdtm_unix, dumped by the user with --kill, restored by root: the socket files
    are the user's, and every SO_PEERCRED says the user (the target checks uid and gid against
    its own); its sockets work.  So too from root's copy of the images (restored as recorded:
    the restorer, root, makes the sockets with the user's ids)."""
    target = spawn(uenv.argv("zdtm_unix", user_unix))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    trusted = copy_images(images, tmp_path / "root-images", None)
    for name, source in (("restored", images), ("trusted", trusted)):
        with detached(restore_detached(source, tmp_path, name=name)) as pid:
            wait_running(pid)
            for sock in ("listen.sock", "dgram.sock"):
                st = os.stat(user_unix / sock)
                assert (st.st_uid, st.st_gid) == (uenv.user.uid, uenv.user.gid), (name, sock)
            assert (os.stat(user_unix / "listen.sock").st_mode & 0o7777) == 0o660
            pidfd = os.pidfd_open(pid)
            try:
                assert signal_until_exit(pidfd, 30)
            finally:
                os.close(pidfd)
        output = (tmp_path / f"{name}.out").read_text()
        assert output.splitlines()[-1:] == ["PASS"], (name, output)


@needs_kernel
@pytest.mark.timeout(180)
def test_the_user_restores_their_own_sockets(uenv: UserEnv, user_unix: Path, spawn: Callable[..., Target]) -> None:
    """Not root: the restore acts as the user throughout (no identity to take), and the
    sockets come back the same."""
    target = spawn(uenv.argv("zdtm_unix", user_unix))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    with detached(restore_detached(images, uenv.home, runner=uenv.ckpt)) as pid:
        wait_running(pid)
        pidfd = os.pidfd_open(pid)
        try:
            assert signal_until_exit(pidfd, 30)
        finally:
            os.close(pidfd)
    assert (uenv.home / "restored.out").read_text().splitlines()[-1:] == ["PASS"], \
        (uenv.home / "restored.out").read_text()


def _in_etc(body: dict[str, Any]) -> None:
    st = os.stat("/etc")
    for f in body["state"]["files"]:
        if f["kind"] == "unix" and f["name"] and f["name"].endswith(b"listen.sock"):
            f["name"] = b"/etc/ckpt-test-unix.sock"
            f["dir"] = {"dev": st.st_dev, "ino": st.st_ino}
            f["path"], f["file_owner"], f["vfs"] = "unlinked", None, None


def _peercred_root(body: dict[str, Any]) -> None:
    for f in body["state"]["files"]:
        if f["kind"] == "unix" and f["link"] == "pair" and f["sock_type"] == "stream":
            f["peercred"] = [f["peercred"][0], 0, 0]


def _creds_root(body: dict[str, Any]) -> None:
    for f in body["state"]["files"]:
        for message in f.get("queue", []) if f["kind"] == "unix" else []:
            if message["creds"] is not None:
                message["creds"] = [0, 0]


@needs_kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("crafted,pattern", [
    (_peercred_root, r"its SO_PEERCRED has uid 0 gid 0, but its images belong to"),
    (_creds_root, r"a queued message's credentials has uid 0 gid 0, but its images belong to"),
    (_in_etc, r"uid \d+ \(gid \d+\) may not create a socket file in /etc"),
], ids=["peercred root", "message credentials root", "socket file in /etc"])
def test_a_users_edited_images_get_nothing_more(crafted: Callable[[dict[str, Any]], None], pattern: str,
                                                uenv: UserEnv, user_unix: Path, spawn: Callable[..., Target],
                                                tmp_path: Path) -> None:
    """Images are the user's word: a socket that says root is its peer, a message that says
    root sent it, a socket file where only root may create one -- refused, as the user could
    not have made them."""
    target = spawn(uenv.argv("zdtm_unix", user_unix))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    edit_user_meta(images / "000001" / "meta.ckpt", crafted)
    assert_refused(restore_detached(images, tmp_path), EXIT_UNTRUSTED, pattern)
    assert not Path("/etc/ckpt-test-unix.sock").exists()


# ---------------------------------------------------------------------------
# Pieces


def test_unix_diag_shows_this_processs_sockets(tmp_path: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, listener:
        listener.bind(os.fspath(tmp_path / "l.sock"))
        listener.listen(5)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with client:
            client.connect(os.fspath(tmp_path / "l.sock"))
            a.send(b"12345")
            b.shutdown(socket.SHUT_WR)
            ino = {s: os.fstat(s.fileno()).st_ino for s in (a, b, listener, client)}
            everyone = sockdiag.unix_sockets()
            st = os.stat(tmp_path / "l.sock")
            assert everyone[ino[a]].peer == ino[b] and everyone[ino[b]].peer == ino[a]
            assert everyone[ino[b]].rqueue == 5 and everyone[ino[a]].shutdown == 1 and everyone[ino[b]].shutdown == 2
            lst = everyone[ino[listener]]
            assert (lst.state, lst.name, lst.vfs, lst.icons, lst.wqueue) == (
                sockdiag.TCP_LISTEN, os.fsencode(tmp_path / "l.sock") + b"\0", (st.st_dev, st.st_ino),
                (ino[client],), 5)
            assert everyone[ino[client]].peer == 0   # a connection not accepted yet: no socket behind it
            assert sockdiag.unix_socket(ino[a]) == everyone[ino[a]]
            assert sockdiag.unix_socket(1) is None


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_STREAM])
def test_a_queue_is_peeked_without_being_read(kind: int) -> None:
    """ckpt.files.unix_dump._peek on this process's sockets: every message with its boundary
    and credentials; the queue, SO_PEEK_OFF and SO_PASSCRED are as they were."""
    from ckpt.files.unix_dump import _peek

    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, 32, 1 << 20)   # SO_SNDBUFFORCE: a datagram larger than the peek buffer
        a.send(b"first")
        if kind != socket.SOCK_STREAM:
            a.send(b"")
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        a.send(b"x" * 300_000 if kind == socket.SOCK_DGRAM else b"second")
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        b.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 2)
        diag = sockdiag.unix_socket(os.fstat(b.fileno()).st_ino)
        assert diag is not None
        messages, problems, in_flight = _peek(b, kind, diag, os.getpid())
        assert problems == [] and not in_flight
        last = b"x" * 300_000 if kind == socket.SOCK_DGRAM else b"second"
        me = [os.getuid(), os.getgid()]
        if kind == socket.SOCK_STREAM:
            assert [(m["data"], m["creds"]) for m in messages] == [(b"first", None), (last, me)]
        else:
            assert [(m["data"], m["creds"]) for m in messages] == [(b"first", None), (b"", None), (last, me)]
        assert b.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == 2
        assert b.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 0
        b.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
        assert b.recv(10) == (b"firstsecon" if kind == socket.SOCK_STREAM else b"first")


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,mention", [
    ("pair without a peer", "peer_file is nil for a link 'pair'"),
    ("a path with a NUL", "name is a path with a NUL byte or longer than sun_path holds"),
    ("a name too long", "name is 121 bytes, expected bin (1..108 bytes)"),
    ("a link of no kind", "link is str 'sideways'"),
    ("credentials of three", "queue[0].creds is"),
])
def test_a_malformed_unix_record_is_refused_on_open(case: str, mention: str, programs: dict[str, Path],
                                                    spawn: Callable[..., Target], images_dir: Path,
                                                    tmp_path: Path) -> None:
    target = spawn(unix_argv(programs, tmp_path / "socks"))
    ckpt.dump(target.pid, images_dir)

    def damage(body: dict[str, Any]) -> None:
        unix = [f for f in body["state"]["files"] if f["kind"] == "unix"]
        pair = next(f for f in unix if f["link"] == "pair")
        if case == "pair without a peer":
            pair["peer_file"] = None
        elif case == "a path with a NUL":
            next(f for f in unix if f["path"] == "present")["name"] = b"/tmp/a\0b"
        elif case == "a name too long":
            next(f for f in unix if f["path"] == "present")["name"] = b"/" + b"x" * 120
        elif case == "a link of no kind":
            pair["link"] = "sideways"
        else:
            next(f for f in unix if f["queue"])["queue"][0]["creds"] = [1, 2, 3]

    edit_meta(images_dir, 1, damage)
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        ckpt.ImageDir(images_dir).checkpoint(1)


def test_the_unix_record_is_in_the_schema() -> None:
    assert schema.FILE_RECORDS["unix"] is schema.FILE_UNIX
    assert files.kind_named("unix") is not None


PAIR_AT_13_14 = GO + r"""
a, b = socket.socketpair()
os.dup2(a.fileno(), 13); os.dup2(b.fileno(), 14); a.close(); b.close()
ready()
"""


@pytest.mark.timeout(60)
def test_inherit_fd_of_one_end_of_a_pair_within_the_process_is_refused(spawn: Callable[..., Target],
                                                                      images_dir: Path) -> None:
    """Given the caller's socket for fd 13, fd 14 (its peer in the process) came back
    connected to a socket nobody held -- EOF on its first read -- without a word."""
    target = python_target(spawn, PAIR_AT_13_14)
    dump_and_kill(target, images_dir)
    key = file_of(ckpt.ImageDir(images_dir).checkpoints[-1].state, 13).target
    mine, theirs = socket.socketpair()
    given = mine.fileno()
    with mine, theirs:
        try:
            result = ckpt.restore(images_dir, detach=True, inherit_fds={given: key})
        except errors.UsageError as err:
            refused = str(err)
        else:
            kill_restored(result.pid)
            pytest.fail("the restore was not refused")
    assert re.fullmatch(rf"--inherit-fd {given}:{re.escape(key)}: {re.escape(key)} is connected within the "
                        r"process to fd 14 \(a unix stream socket .*\), which would be left connected to nothing; "
                        r"--inherit-fd gives an open file whose other end is outside the process", refused), refused

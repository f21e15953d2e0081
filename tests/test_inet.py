"""TCP and UDP sockets on IPv4 and IPv6 (ckpt/files/inet.py): listening, bound, unbound,
UDP connected, with their options; what is refused, by name; what images not root's
may not ask for.

The self-checking target, tests/programs/zdtm_inet.c, holds fourteen sockets (two TCP
listeners, IPv4 with a dozen options and O_NONBLOCK, dup'd, and IPv6 v6-only; UDP
bound, connected, v6-only on the wildcard, unbound; TCP unbound and bound; five
shut down: UDP connected for writing and for reading, bound both ways and for
writing, TCP bound for writing); after SIGUSR1 it compares every socket with what it
read at setup, then accepts new connections on the same ports (checking what the
accepted sockets inherit), passes datagrams and finds the shutdowns hold.  ``python3 -m http.server`` is the real server: dumped while
serving, killed, restored, it answers on its port.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files
from ckpt._sys import caps
from ckpt._sys.pidfd import pidfd_getfd
from ckpt._sys.sock import borrowed, get_filter
from ckpt.files.inet import SHUT_RD_BIT, SHUT_WR_BIT
from ckpt.image.schema import TASK_STATE_VERSION, InetAddress, InetFile, State
from helpers import Target, canned_state, run_ckpt
from test_badinput import assert_clean_error, edit_meta
from test_restore import NOBODY, NobodyTarget, Profile, dump_and_kill, restore_and_check, run_to_end
from test_trust_restore import (UserEnv, assert_refused, detached, restore_detached, uenv,  # noqa: F401
                                user_dump, user_site, wait_exit, wait_running)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_TARGET = errors.TargetError.exit_code
EXIT_UNTRUSTED = errors.UntrustedImage.exit_code
EXIT_KILL_REFUSED = errors.KillRefused.exit_code
TCP_INFO = 11
LAST = 23   # zdtm_inet's sockets are at fds 10 to LAST


def inet_files(state: State) -> dict[int, InetFile]:
    """fd -> its file record, for the inet sockets of a checkpoint."""
    by_id = {f.id: f for f in state.files}
    return {e.fd: by_id[e.file] for e in state.fds if by_id[e.file].kind == "inet"}


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# The target checks what it should


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", [None, "option"])
def test_the_target_checks_its_sockets(damage: str | None, programs: dict[str, Path], spawn: Callable[..., Target],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Straight through it passes; with TCP_NODELAY cleared on fd 10 it fails."""
    if damage:
        monkeypatch.setenv("ZDTM_CORRUPT", damage)
    target = spawn([programs["zdtm_inet"]])
    rc, lines = run_to_end(target)
    if damage is None:
        assert rc == 0 and lines[-1:] == ["PASS"], lines
    else:
        assert rc == 1 and "FAIL: fd 10 TCP_NODELAY is 0, was 1 (first int)" in lines, lines


# ---------------------------------------------------------------------------
# Dump: what is recorded, and the dump changes nothing the target sees


@needs_kernel
@pytest.mark.timeout(60)
def test_sockets_are_recorded_from_the_fd_itself(programs: dict[str, Path], spawn: Callable[..., Target],
                                                 images_dir: Path) -> None:
    target = spawn([programs["zdtm_inet"]])
    state = ckpt.dump(target.pid, images_dir).checkpoint.state
    socks = inet_files(state)
    assert sorted(socks) == list(range(10, LAST + 1)), sorted(socks)
    ids = {e.fd: e.file for e in state.fds}
    assert ids[10] == ids[11] and len({ids[n] for n in range(11, LAST + 1)}) == LAST - 10
    v4, v6 = socks[10], socks[12]
    assert (v4.family, v4.sock_type, v4.protocol, v4.state) == (socket.AF_INET, 1, 6, "LISTEN")
    assert v4.local.addr == "127.0.0.1" and v4.local.port > 0 and v4.peer is None
    assert v4.backlog == 7 and v4.accept_queue == 0 and v4.flags & os.O_NONBLOCK
    opts = v4.options
    assert (opts["SO_REUSEADDR"], opts["SO_KEEPALIVE"], opts["TCP_NODELAY"], opts["TCP_KEEPIDLE"],
            opts["TCP_KEEPINTVL"], opts["TCP_KEEPCNT"]) == (1, 1, 1, 42, 7, 3)
    assert (opts["SO_RCVBUF"], opts["SO_SNDBUF"], opts["SO_BUF_LOCK"]) == (131072, 65536, 3)
    assert (opts["IP_TOS"], opts["IP_TTL"], opts["SO_PRIORITY"], opts["SO_RCVLOWAT"]) == (0x10, 33, 5, 3)
    assert (opts["SO_RCVTIMEO"], opts["SO_SNDTIMEO"], opts["TCP_USER_TIMEOUT"]) == (1_500_000, 2_500_000, 12345)
    assert v4.pair_options["SO_LINGER"] == (1, 5) and v4.name_options["TCP_CONGESTION"] == "reno"
    assert v4.uid == os.getuid() and v4.netns == os.stat("/proc/self/ns/net").st_ino
    assert (v6.family, v6.local.addr, v6.backlog) == (socket.AF_INET6, "::1", 3)
    assert v6.options["IPV6_V6ONLY"] == 1 and v6.options["SO_REUSEPORT"] == 1
    assert "IPV6_V6ONLY" not in v4.options
    udp, connected, wildcard = socks[13], socks[14], socks[15]
    assert (udp.protocol, udp.state, udp.options["SO_BROADCAST"]) == (17, "CLOSE", 1)
    assert connected.state == "ESTABLISHED" and connected.peer.port == wildcard.local.port
    assert wildcard.local.addr == "::" and wildcard.options["IPV6_V6ONLY"] == 1
    assert socks[16].local.port == 0 and socks[17].local.port > 0 and socks[17].state == "CLOSE"
    assert socks[18].local == InetAddress(addr="::", port=0, flowinfo=0, scope_id=0)
    # sk_shutdown from inet_diag: poll shows no SEND_SHUTDOWN of a UDP socket, nor of a TCP
    # socket in CLOSE (the UDP SHUT_WR of CRIU's zdtm socket_udp_shutdown was recorded 0).
    assert {fd: socks[fd].shutdown for fd in range(10, LAST + 1) if socks[fd].shutdown} == {
        19: SHUT_WR_BIT, 20: SHUT_RD_BIT, 21: SHUT_RD_BIT | SHUT_WR_BIT, 22: SHUT_WR_BIT, 23: SHUT_WR_BIT}
    assert (socks[19].state, socks[20].state, socks[22].state, socks[23].state) == (
        "ESTABLISHED", "ESTABLISHED", "CLOSE", "CLOSE")
    verdict = ckpt.restorability.assess(state, [])
    assert not [r for r in verdict.reasons if "socket" in r], verdict.reasons
    rows = {r["fd"]: r for r in json.loads(run_ckpt("inspect", images_dir, "--fds", "--json").stdout)["fds"]}
    assert rows[10]["what"] == f"a TCP socket listening on 127.0.0.1:{v4.local.port}"
    assert rows[14]["what"] == (f"a UDP socket [::1]:{connected.local.port} connected to "
                                f"[::1]:{wildcard.local.port}")
    assert rows[16]["what"] == "an unbound TCP socket (IPv4)" and rows[10]["restore"].startswith("restored")


@needs_kernel
@pytest.mark.timeout(60)
def test_dumps_leave_the_sockets_as_they_were(programs: dict[str, Path], spawn: Callable[..., Target],
                                              images_dir: Path) -> None:
    """Two dumps while it runs: every socket, option and flag it checks is as it was."""
    target = spawn([programs["zdtm_inet"]])
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


# ---------------------------------------------------------------------------
# Restore


@needs_kernel
@pytest.mark.timeout(120)
def test_sockets_restore_and_serve_on_their_ports(programs: dict[str, Path], spawn: Callable[..., Target],
                                                  images_dir: Path, tmp_path: Path) -> None:
    """Dumped twice while running, then with --kill; the restored target finds every socket
    as it was (address, options, backlog, O_NONBLOCK, the dup) and accepts new connections
    on the same ports, and its shut-down sockets still shut (a send through fd 19, UDP
    SHUT_WR, fails).  Before ckpt/files/inet.py: refused, "fd 10 ... a socket"; before
    the shutdown came from inet_diag: "FAIL: fd 19 (shut for writing) can send"."""
    target = spawn([programs["zdtm_inet"]])
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    socks = inet_files(ckpt.ImageDir(images_dir).checkpoint(3).state)

    def inspect(run: Any) -> None:
        listening = {(s.laddr, s.lport) for s in listeners() if s.pid == run.pid}
        assert ("127.0.0.1", socks[10].local.port) in listening, listening
        assert ("::1", socks[12].local.port) in listening, listening

    restore_and_check(images_dir, tmp_path, expected, inspect=inspect)


@needs_kernel
@pytest.mark.timeout(120)
def test_root_images_of_nobodys_sockets_restore_as_nobodys(programs: dict[str, Path], spawn: Callable[..., Target],
                                                          images_dir: Path, tmp_path: Path) -> None:
    """Root dumps nobody's zdtm_inet (root's images): the restore child, root, creates the
    sockets as their owner, nobody -- not as root, which would put them in root's
    SO_REUSEPORT groups and show them as root's."""
    top = Path(tempfile.mkdtemp(prefix="ckpt-inet-nobody-", dir="/tmp"))
    try:
        top.chmod(0o755)
        binary = top / "zdtm_inet"
        shutil.copyfile(programs["zdtm_inet"], binary)
        binary.chmod(0o755)
        target = spawn([binary], cls=NobodyTarget)
        expected = Profile.of(target.pid)
        dump_and_kill(target, images_dir)

        def inspect(run: Any) -> None:
            for fd in range(10, LAST + 1):
                st = os.stat(f"/proc/{run.pid}/fd/{fd}")
                assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), (fd, st.st_uid, st.st_gid)

        assert restore_and_check(images_dir, tmp_path, expected, inspect=inspect) == ["PASS"]
    finally:
        shutil.rmtree(top, ignore_errors=True)


class Listener:
    """One listening TCP socket of /proc/net/tcp{,6}, with the pid holding it."""

    def __init__(self, laddr: str, lport: int, inode: int, pid: int | None) -> None:
        self.laddr, self.lport, self.inode, self.pid = laddr, lport, inode, pid


def listeners() -> list[Listener]:
    """The listening TCP sockets of this namespace, each with the process that holds it."""
    owners: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owners[int(link[8:-1])] = int(pid)
    out = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":   # TCP_LISTEN
                    continue
                hexaddr, hexport = fields[1].split(":")
                raw = bytes.fromhex(hexaddr)
                # /proc/net/tcp prints each 32-bit word of the address in host order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.append(Listener(socket.inet_ntop(family, raw), int(hexport, 16), int(fields[9]),
                                    owners.get(int(fields[9]))))
    return out


# ---------------------------------------------------------------------------
# A real server: python3 -m http.server


HTTP_SERVER = ("import os, sys\nprint('ready', os.getpid(), flush=True)\n"
               "os.execv(sys.executable, [sys.executable, '-m', 'http.server', *sys.argv[1:]])\n")


def get(port: int, path: str = "/", timeout: float = 5) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
        return reply.read()


def wait_serving(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@needs_kernel
@pytest.mark.timeout(180)
def test_python_http_server_comes_back_and_serves(spawn: Callable[..., Target], images_dir: Path,
                                                  tmp_path: Path) -> None:
    """``python3 -m http.server``, dumped twice while a client keeps asking it for a file,
    then killed (dump --kill once idle: a request in flight is an established connection,
    which is refused by name), restored, and answering with the same file on its port."""
    site = tmp_path / "site"
    site.mkdir()
    body = os.urandom(20_000).hex().encode()
    (site / "data.txt").write_bytes(body)
    port = free_port()
    target = spawn([sys.executable, "-c", HTTP_SERVER, str(port), "--bind", "127.0.0.1", "--directory", str(site)])
    wait_serving(port)
    assert get(port, "/data.txt") == body

    stop = threading.Event()
    served: list[int] = []
    failed: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                served.append(len(get(port, "/data.txt")))
            except OSError as err:
                failed.append(repr(err))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            before = len(served)
            ckpt.dump(target.pid, images_dir)
            deadline = time.monotonic() + 10
            while len(served) < before + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failed and set(served) == {len(body)} and len(served) > 6, (failed, len(served))

    # Once idle (no request in flight, the handler threads gone), the final dump kills it.
    deadline = time.monotonic() + 30
    while len(os.listdir(f"/proc/{target.pid}/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    report = ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    assert report.restorable, report.unrestorable
    with pytest.raises(OSError):
        get(port, timeout=1)

    result = restore_detached(images_dir, tmp_path)
    with detached(result) as pid:
        wait_running(pid)
        assert get(port, "/data.txt") == body
        assert get(port, "/data.txt") == body   # and again: it keeps serving
        assert any(s.pid == pid and s.lport == port for s in listeners())


# ---------------------------------------------------------------------------
# Refused by name


SOCKET_TARGET = r"""
import os, socket, sys, time
what = sys.argv[1]
if what == "pending":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(5)
elif what == "udp":
    s = socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
elif what == "connected":
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
elif what == "raw":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
elif what == "error":
    s = socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.connect(("127.0.0.1", int(sys.argv[2])))
    s.send(b"x")
elif what == "ended":
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
elif what == "filter":
    import ctypes, struct
    s = socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    program = struct.pack("<HBBI", 0x06, 0, 0, 0xFFFF) * 2    # BPF_RET|BPF_K 0xffff, twice
    code = ctypes.create_string_buffer(program, len(program))
    s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("<HxxxxxxQ", 2, ctypes.addressof(code)))  # SO_ATTACH_FILTER
    s.setsockopt(socket.SOL_SOCKET, 44, 1)                                                     # SO_LOCK_FILTER
elif what == "priority":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 7); s.bind(("127.0.0.1", 0)); s.listen()
os.dup2(s.fileno(), 20)
s.close()
s = socket.socket(fileno=20)
print("ready", os.getpid(), flush=True)
print("port", s.getsockname()[1], flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "accept":
        c, _ = s.accept(); print("ok", c.recv(100).decode(), flush=True); c.close()
    elif cmd[0] == "recv":
        print("ok", s.recv(100).decode(), flush=True)
    elif cmd[0] == "error":
        print("ok", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
    elif cmd[0] == "read":
        print("ok", s.recv(100), flush=True)
time.sleep(600)   # restored with /dev/null as stdin
"""


def socket_target(spawn: Callable[..., Target], what: str, *args: str | int) -> tuple[Target, int]:
    target = spawn([sys.executable, "-c", SOCKET_TARGET, what, *map(str, args)])
    words = target.readline().split()
    assert words[0] == "port", words
    return target, int(words[1])


def refused_kill(target: Target, images_dir: Path, *mentions: str) -> None:
    """``dump --kill`` refuses by name and leaves the target running; so does a restore."""
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
    assert_clean_error(result, EXIT_KILL_REFUSED, ("fd 20", *mentions))
    assert target.alive()
    cp = ckpt.ImageDir(images_dir).checkpoints[-1]
    assert_clean_error(run_ckpt("restore", "-D", images_dir, "--checkpoint", cp.id), EXIT_TARGET,
                       ("fd 20", *mentions))


@needs_kernel
@pytest.mark.timeout(60)
def test_a_listener_with_connections_not_yet_accepted_is_refused(spawn: Callable[..., Target],
                                                                  images_dir: Path) -> None:
    """The accept queue lives in the kernel: refused by name, and the dump took nothing
    from it (the target accepts the connection afterwards, with its data)."""
    target, port = socket_target(spawn, "pending")
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"waiting")
        deadline = time.monotonic() + 5
        while files_of(target)[20].accept_queue != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        refused_kill(target, images_dir, f"listening on 127.0.0.1:{port}", "1 connection not yet accepted")
        assert target.cmd("accept") == "waiting"


def files_of(target: Target) -> dict[int, InetFile]:
    """The inet records of a frozen read of ``target`` (ckpt.files.capture)."""
    from ckpt.live import FrozenProcess

    with FrozenProcess(target.pid):
        captured = files.capture(target.pid)
    return inet_files(canned_state({"version": TASK_STATE_VERSION, **captured}))


@needs_kernel
@pytest.mark.timeout(60)
def test_udp_datagrams_not_yet_read_are_refused_then_restorable_once_read(spawn: Callable[..., Target],
                                                                           images_dir: Path) -> None:
    """Decided: a restore does not drop queued datagrams silently, it refuses them by name.
    The dump read none of them (the target reads the datagram afterwards); once it has,
    ``dump --kill`` goes through."""
    target, port = socket_target(spawn, "udp")
    with socket.socket(type=socket.SOCK_DGRAM) as sender:
        sender.sendto(b"queued", ("127.0.0.1", port))
    time.sleep(0.1)
    refused_kill(target, images_dir, f"UDP socket bound to 127.0.0.1:{port}", "datagrams received and not yet read")
    assert target.cmd("recv") == "queued"
    report = ckpt.dump(target.pid, images_dir, after="kill")
    assert report.restorable, report.unrestorable


@needs_kernel
@pytest.mark.timeout(60)
def test_a_pending_socket_error_is_refused_and_left_pending(spawn: Callable[..., Target],
                                                            images_dir: Path) -> None:
    """A connected UDP socket got ICMP port unreachable: its SO_ERROR is pending.  Reading
    SO_ERROR would clear it; the dump sees it through poll and leaves it to the target."""
    target, _ = socket_target(spawn, "error", free_port())
    time.sleep(0.1)
    refused_kill(target, images_dir, "pending socket error")
    assert target.cmd("error") == str(errno.ECONNREFUSED)


@needs_kernel
@pytest.mark.timeout(60)
def test_a_half_closed_connection_is_refused_by_name(spawn: Callable[..., Target], images_dir: Path) -> None:
    """The peer closed its side (the target's end is CLOSE_WAIT): only ESTABLISHED connections
    are restored.  The dump took nothing from it: the target still reads its data."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        target, port = socket_target(spawn, "connected", server.getsockname()[1])
        conn, _ = server.accept()
        conn.sendall(b"still here")
        conn.close()   # FIN
        time.sleep(0.1)
        refused_kill(target, images_dir, f"a TCP connection 127.0.0.1:{port} -> 127.0.0.1:"
                     f"{server.getsockname()[1]} (CLOSE_WAIT)", "only ESTABLISHED ones")
        assert target.cmd("read") == "b'still here'"


@needs_kernel
@pytest.mark.timeout(60)
def test_a_connection_that_ended_is_refused_by_name(spawn: Callable[..., Target], images_dir: Path) -> None:
    """The peer reset the connection: first the error is pending (refused, and left for the
    target to read), then the socket is a CLOSE one that was connected (refused too: a
    restore would make a fresh socket of it)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        target, _ = socket_target(spawn, "ended", server.getsockname()[1])
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()   # RST
    time.sleep(0.1)
    refused_kill(target, images_dir, "pending socket error", "whose connection has ended")
    assert target.cmd("error") == str(errno.ECONNRESET)
    refused_kill(target, images_dir, "whose connection has ended")


@needs_kernel
@pytest.mark.timeout(60)
def test_other_protocols_are_refused_by_name(spawn: Callable[..., Target], images_dir: Path) -> None:
    target, _ = socket_target(spawn, "raw")
    refused_kill(target, images_dir, "a raw IPv4 socket (ICMP)", "only TCP and UDP")


@needs_kernel
@pytest.mark.timeout(60)
def test_a_port_in_use_at_restore_is_named(spawn: Callable[..., Target], images_dir: Path,
                                           tmp_path: Path) -> None:
    """The port is taken between the dump and the restore: refused before anything is
    created, naming the port."""
    target, port = socket_target(spawn, "pending")
    dump_and_kill(target, images_dir)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert_clean_error(run_ckpt("restore", "-D", images_dir, "--detach"), EXIT_TARGET,
                           (f"port {port} is in use", "fd 20"))


@needs_kernel
@pytest.mark.timeout(60)
def test_root_images_restore_a_privileged_option(spawn: Callable[..., Target], images_dir: Path,
                                                 tmp_path: Path) -> None:
    """Root's images keep SO_PRIORITY 7 (which needs CAP_NET_ADMIN)."""
    target, port = socket_target(spawn, "priority")
    dump_and_kill(target, images_dir)
    result = restore_detached(images_dir, tmp_path)
    with detached(result) as pid:
        wait_running(pid)
        assert any(s.pid == pid and s.lport == port for s in listeners())
        assert sockopt_of(pid, 20, socket.SOL_SOCKET, socket.SO_PRIORITY) == 7


@needs_kernel
@pytest.mark.timeout(60)
def test_a_socket_filter_comes_back_locked(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """A classic BPF filter, locked with SO_LOCK_FILTER: attached again, then locked."""
    target, _ = socket_target(spawn, "filter")
    dump_and_kill(target, images_dir)
    record = inet_files(ckpt.ImageDir(images_dir).checkpoint(1).state)[20]
    assert len(record.filter) == 16 and record.options["SO_LOCK_FILTER"] == 1
    with detached(restore_detached(images_dir, tmp_path)) as pid:
        wait_running(pid)
        pidfd = os.pidfd_open(pid)
        try:
            fd = pidfd_getfd(pidfd, 20)
        finally:
            os.close(pidfd)
        try:
            assert get_filter(fd) == record.filter
            with borrowed(fd) as sock:
                assert sock.getsockopt(socket.SOL_SOCKET, 44) == 1
        finally:
            os.close(fd)


def sockopt_of(pid: int, fd: int, level: int, name: int) -> int:
    """An int socket option of another process's fd (through pidfd_getfd)."""
    pidfd = os.pidfd_open(pid)
    try:
        with socket.socket(fileno=pidfd_getfd(pidfd, fd)) as s:
            return s.getsockopt(level, name)
    finally:
        os.close(pidfd)


def test_no_effective_capability_is_enforced_by_the_kernel() -> None:
    """The backstop for images not root's: a socket made without effective capabilities
    cannot bind a privileged port nor set SO_PRIORITY 7, even by root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with caps.without_effective_capabilities():
        with socket.socket() as s:
            with pytest.raises(PermissionError):
                s.bind(("127.0.0.1", 1))
            with pytest.raises(PermissionError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 7)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 7)   # and back afterwards


# ---------------------------------------------------------------------------
# Images not root's (issue 7): a restore grants at most what their owner could have


@pytest.fixture
def user_inet_images(uenv: UserEnv, programs: dict[str, Path], spawn: Callable[..., Target]) -> Path:
    """The user's own zdtm_inet, dumped by the user with --kill."""
    shutil.copyfile(programs["zdtm_inet"], uenv.bin / "zdtm_inet")
    (uenv.bin / "zdtm_inet").chmod(0o755)
    target = spawn(uenv.argv("zdtm_inet"))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    return images


def _edit_socket(fd: int, change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        state = body["state"]
        file_id = next(e["file"] for e in state["fds"] if e["fd"] == fd)
        change(next(f for f in state["files"] if f["id"] == file_id))
    return edit


def _set(group: str, name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda f: f[group].__setitem__(name, value)


CRAFTED_SOCKETS = {
    "privileged port": (lambda f: f["local"].__setitem__("port", 80),
                        r"binding port 80 needs CAP_NET_BIND_SERVICE"),
    "SO_PRIORITY 7": (_set("options", "SO_PRIORITY", 7), r"SO_PRIORITY 7 needs CAP_NET_ADMIN"),
    "SO_MARK": (_set("options", "SO_MARK", 99), r"SO_MARK 99 needs CAP_NET_ADMIN"),
    "IP_TRANSPARENT": (_set("options", "IP_TRANSPARENT", 1), r"IP_TRANSPARENT 1 needs CAP_NET_ADMIN"),
    "buffer beyond rmem_max": (_set("options", "SO_RCVBUF", 1 << 30), r"SO_RCVBUF \d+ needs CAP_NET_ADMIN"),
    "root's socket": (lambda f: f.__setitem__("uid", 0), r"owned by uid 0"),
}


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("crafted", list(CRAFTED_SOCKETS))
def test_sockets_beyond_the_images_owner_are_refused(crafted: str, uenv: UserEnv, user_inet_images: Path,
                                                     tmp_path: Path) -> None:
    """The user edits their images (fd 10, a listener on 127.0.0.1) and asks root to
    restore them: refused by name, nothing created."""
    from test_trust_restore import edit_meta as edit_user_meta

    change, named = CRAFTED_SOCKETS[crafted]
    edit_user_meta(user_inet_images / "000001" / "meta.ckpt", _edit_socket(10, change))
    assert_refused(restore_detached(user_inet_images, tmp_path), EXIT_UNTRUSTED, named, "fds 10, 11",
                   uenv.user.name)


@needs_kernel
@pytest.mark.timeout(120)
def test_the_users_sockets_restore_as_theirs(uenv: UserEnv, user_inet_images: Path, tmp_path: Path) -> None:
    """Unedited, root restores them: the sockets belong to the user (their uid decides
    SO_REUSEPORT groups), and the target passes its own checks."""
    result = restore_detached(user_inet_images, tmp_path)
    with detached(result) as pid:
        wait_running(pid)
        for fd in range(10, LAST + 1):
            assert os.stat(f"/proc/{pid}/fd/{fd}").st_uid == uenv.user.uid
        # Sent again until it exits: ``while (!go) pause();`` can miss one (test_restore).
        deadline = time.monotonic() + 30
        while not wait_exit(pid, 0.5):
            assert time.monotonic() < deadline, f"restored pid {pid} did not exit after SIGUSR1"
            os.kill(pid, signal.SIGUSR1)
    lines = (tmp_path / "restored.out").read_text().splitlines()
    assert lines[-1:] == ["PASS"], lines


# ---------------------------------------------------------------------------
# Images: what readers refuse


@needs_kernel
@pytest.mark.timeout(60)
def test_a_damaged_socket_record_is_refused_by_name(programs: dict[str, Path], spawn: Callable[..., Target],
                                                    images_dir: Path) -> None:
    """An address that is none, an unknown option: refused on open, or by name at restore."""
    target = spawn([programs["zdtm_inet"]])
    dump_and_kill(target, images_dir)
    edit_meta(images_dir, 1, lambda body: _edit_socket(13, lambda f: f["options"].__setitem__("SO_NOSUCH", 1))(body))
    assert_clean_error(run_ckpt("restore", "-D", images_dir, "--detach"), EXIT_TARGET,
                       ("fd 13", "socket option SO_NOSUCH, which this ckpt does not know"))
    edit_meta(images_dir, 1, lambda body: _edit_socket(13, lambda f: f["local"].__setitem__("addr", "1.2.3"))(body))
    assert_clean_error(run_ckpt("inspect", images_dir), errors.CorruptImage.exit_code, ("local.addr", "1.2.3"))


# ---------------------------------------------------------------------------
# Established connections: ckpt restore --tcp-established (TCP_REPAIR)


class TcpPeer:
    """zdtm_tcp and this test's end of its connection to us (fd 13)."""

    def __init__(self, programs: dict[str, Path], spawn: Callable[..., Target], argv: list[Any] | None = None
                 ) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        port = self.listener.getsockname()[1]
        self.target = spawn(argv + [str(port)] if argv else [programs["zdtm_tcp"], str(port)])
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(30)
        self.conn.sendall(b"from-test-before")   # left unread in the target's fd 13 until SIGUSR1
        words = self.target.readline().split()
        assert words[0] == "written", words
        self.written = int(words[1])

    def received(self) -> bytes:
        """What the target sent us, to its end (its close)."""
        data = b""
        while chunk := self.conn.recv(4096):
            data += chunk
        return data

    def close(self) -> None:
        self.conn.close()
        self.listener.close()


@pytest.fixture
def tcp_peer(programs: dict[str, Path], spawn: Callable[..., Target]) -> Iterator[TcpPeer]:
    peer = TcpPeer(programs, spawn)
    try:
        yield peer
    finally:
        peer.close()


@pytest.mark.timeout(60)
def test_the_tcp_target_checks_its_connections(tcp_peer: TcpPeer) -> None:
    rc, lines = run_to_end(tcp_peer.target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines
    assert tcp_peer.received() == b"from-target-before" + b"from-target-after"
    assert tcp_peer.written > 16384, "the pattern must overflow the receive window: data in the send queue"


@needs_kernel
@pytest.mark.timeout(60)
def test_connections_are_recorded_and_left_as_they_were(tcp_peer: TcpPeer, images_dir: Path) -> None:
    """Two dumps read every connection in repair mode (queues by MSG_PEEK, sequence numbers,
    windows) and leave it as it was: the target then passes, its peer gets every byte, and
    SO_REUSEADDR (reset by leaving repair mode) is what it was."""
    ckpt.dump(tcp_peer.target.pid, images_dir)
    state = ckpt.dump(tcp_peer.target.pid, images_dir).checkpoint.state
    socks = inet_files(state)
    client, server, external = socks[11], socks[12], socks[13]
    assert {f.state for f in (client, server, external)} == {"ESTABLISHED"}
    assert client.tcp.inq and server.tcp.inq == b"from-client"
    assert external.tcp.inq == b"from-test-before" and external.tcp.outq == b""
    assert socks[15].family == socket.AF_INET6 and socks[15].tcp.inq == b"v6-server"
    assert socks[16].tcp.inq == b"v6-client" and socks[17].state == "LISTEN"
    pattern = bytes((i * 13 + 7) & 0xFF for i in range(tcp_peer.written))
    assert client.tcp.inq + server.tcp.outq == pattern, "queued: all of it, once, in order"
    assert server.tcp.unsent > 0, "some of it never sent (the receive window is full)"
    assert server.options["SO_REUSEADDR"] == 1 and client.tcp.mss_clamp > 0
    assert sockopt_of(tcp_peer.target.pid, 12, socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    notes = ckpt.restorability.assess(state, []).notes
    assert any("fd 13 is a TCP connection" in n and "--tcp-established" in n for n in notes), notes
    rc, lines = run_to_end(tcp_peer.target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines
    assert tcp_peer.received() == b"from-target-before" + b"from-target-after"


@needs_kernel
@pytest.mark.timeout(120)
def test_connections_come_back_with_tcp_established(tcp_peer: TcpPeer, images_dir: Path, tmp_path: Path) -> None:
    """Dumped twice while running, then killed: the kill closes nothing the peers can see
    (repair mode), the restore with --tcp-established gives back the five connections
    (IPv4 and IPv6, both ends of two of them in the target) with every byte in flight -- a pattern larger than the receive window, half in one
    socket's receive queue and half (partly never sent) in the other's send queue."""
    target = tcp_peer.target
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    assert tcp_peer.conn.recv(18) == b"from-target-before"
    tcp_peer.conn.settimeout(0.3)
    with pytest.raises(TimeoutError):
        tcp_peer.conn.recv(100)   # neither FIN (b"") nor RST (ConnectionResetError)
    tcp_peer.conn.settimeout(30)
    restore_and_check(images_dir, tmp_path, expected, "--tcp-established")
    assert tcp_peer.received() == b"from-target-after"


@needs_kernel
@pytest.mark.timeout(60)
def test_connections_are_refused_without_tcp_established(tcp_peer: TcpPeer, images_dir: Path) -> None:
    dump_and_kill(tcp_peer.target, images_dir)
    result = run_ckpt("restore", "-D", images_dir, "--detach")
    assert_clean_error(result, EXIT_TARGET, ("fd 11", "TCP connection", "--tcp-established"))


@needs_kernel
@pytest.mark.timeout(120)
def test_a_user_cannot_dump_or_restore_connections(uenv: UserEnv, programs: dict[str, Path],
                                                  spawn: Callable[..., Target], tmp_path: Path) -> None:
    """The user's own dump cannot read a connection (TCP_REPAIR needs CAP_NET_ADMIN): dump
    --kill refuses by name.  Root's dump of the user's process, the images then given to the
    user: restoring the connections is refused (TCP_REPAIR makes any connection appear)."""
    from test_trust_restore import copy_images

    shutil.copyfile(programs["zdtm_tcp"], uenv.bin / "zdtm_tcp")
    (uenv.bin / "zdtm_tcp").chmod(0o755)
    peer = TcpPeer(programs, spawn, uenv.argv("zdtm_tcp"))
    try:
        result = uenv.ckpt("dump", "--pid", peer.target.pid, "-D", uenv.home / "mine", "--kill")
        assert_clean_error(result, EXIT_KILL_REFUSED, ("fd 11", "TCP_REPAIR needs CAP_NET_ADMIN"))
        assert peer.target.alive()
        root_images = tmp_path / "root-images"
        dump_and_kill(peer.target, root_images)
        given = copy_images(root_images, uenv.home / "given", uenv.user)
        assert_refused(restore_detached(given, tmp_path, "--tcp-established"), EXIT_UNTRUSTED,
                       "TCP_REPAIR", "CAP_NET_ADMIN", uenv.user.name)
    finally:
        peer.close()

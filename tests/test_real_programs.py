"""Real programs from Debian and the registries, checkpointed while serving and restored.

Issue 8: redis, memcached, ``python3 -m http.server``, a Node.js and a Go HTTP
server.  Each is started on a free port, given data, dumped while a client
keeps using it (full, then incremental), dumped with ``--kill``, restored from
the chain, and must answer on the same port with the data it had.  The
programs are installed by ``.ci/run`` (Debian packages redis-server, memcached,
nodejs, golang-go); a missing one skips the test, and fails it under CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import require_feature, run_ckpt

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

GO_SERVER = """package main

import (
\t"fmt"
\t"net/http"
\t"os"
)

func main() {
\tstate := os.Args[2]
\thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "go", state) })
\thttp.ListenAndServe("127.0.0.1:"+os.Args[1], nil)
}
"""

NODE_SERVER = """
const state = process.argv[3];
require('http').createServer((q, r) => r.end('node ' + state + '\\n')).listen(+process.argv[2], '127.0.0.1');
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(program: str) -> str:
    path = shutil.which(program)
    require_feature(program, path is not None, f"{program} is not installed (.ci/run installs it)")
    assert path is not None
    return path


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def talk(port: int, request: bytes, until: bytes) -> bytes:
    """Send ``request`` and read until the answer ends with ``until``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(until):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def http_get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        return answer.read()


class Server:
    """A server process in its own session (its fds: /dev/null and what it opens)."""

    def __init__(self, argv: list[str], port: int, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                                     cwd=cwd, env=env)
        self.port = port
        wait_port(port)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill()


def checkpoint_and_restore(server: Server, images: Path, probe: Callable[[], bytes]) -> None:
    """Dump twice while a client keeps asking, then --kill; restore; the same answer, from
    the same executable (/proc/PID/exe: python restoring the python http.server once got a
    note "/proc/PID/exe not restored (Device or resource busy)" for a link that was right)."""
    expected = probe()
    exe = os.stat(f"/proc/{server.proc.pid}/exe")
    stop = threading.Event()
    errors: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                assert probe() == expected
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)
                return

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for _ in range(2):
            result = run_ckpt("dump", "--pid", server.proc.pid, "-D", images)
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        thread.join()
    assert not errors, f"a client saw a wrong answer while the server was dumped: {errors[0]!r}"
    result = run_ckpt("dump", "--pid", server.proc.pid, "-D", images, "--kill", "--json")
    assert result.returncode == 0, result.stderr
    server.proc.wait(timeout=10)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    restored = run_ckpt("restore", "-D", images, "--detach")
    assert restored.returncode == 0, restored.stderr
    pid = int(restored.stdout.split()[0])
    try:
        assert "exe not restored" not in restored.stderr, restored.stderr
        now = os.stat(f"/proc/{pid}/exe")
        assert (now.st_dev, now.st_ino) == (exe.st_dev, exe.st_ino)
        wait_port(server.port)
        assert probe() == expected
        assert probe() == expected
    finally:
        os.kill(pid, signal.SIGKILL)


def test_redis(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    server = Server([need("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(tmp_path)], port)
    servers.append(server)
    for i in range(1000):
        assert talk(port, f"SET key{i} value{i}\r\n".encode(), b"\r\n") == b"+OK\r\n"
    checkpoint_and_restore(server, tmp_path / "images",
                           lambda: talk(port, b"GET key777\r\n", b"\r\nvalue777\r\n"))


def test_memcached(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    user = ["-u", "root"] if os.geteuid() == 0 else []
    server = Server([need("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user], port)
    servers.append(server)
    assert talk(port, b"set answer 0 0 2\r\n42\r\n", b"\r\n") == b"STORED\r\n"
    checkpoint_and_restore(server, tmp_path / "images", lambda: talk(port, b"get answer\r\n", b"END\r\n"))


def test_python_http_server(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("the same page\n")
    server = Server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                     "--directory", str(tmp_path / "www")], port)
    servers.append(server)
    checkpoint_and_restore(server, tmp_path / "images", lambda: http_get(port))


def test_node_http_server(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "server.js"
    script.write_text(NODE_SERVER)
    server = Server([need("node"), str(script), str(port), f"state-{port}"], port)
    servers.append(server)
    checkpoint_and_restore(server, tmp_path / "images", lambda: http_get(port))


def test_go_http_server(servers: list[Server], tmp_path: Path) -> None:
    go = need("go")
    src = tmp_path / "gosrv"
    src.mkdir()
    (src / "main.go").write_text(GO_SERVER)
    env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"),
               GOFLAGS="-mod=mod", GO111MODULE="on", HOME=str(tmp_path))
    subprocess.run([go, "mod", "init", "gosrv"], cwd=src, env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([go, "build", "-o", str(src / "gosrv"), "."], cwd=src, env=env, check=True,
                   capture_output=True, timeout=600)
    port = free_port()
    server = Server([str(src / "gosrv"), str(port), f"state-{port}"], port)
    servers.append(server)
    checkpoint_and_restore(server, tmp_path / "images", lambda: http_get(port))

"""Real process trees from Debian, checkpointed while serving and restored (issue 9).

nginx as deployed: a master (root) and 2 workers (www-data, Debian's default ``user``),
started the way tools/compare_programs.py ``start_nginx`` starts it (its own session, its
own prefix directory, a free port on 127.0.0.1).  The master talks to each worker over a
socket pair made before the fork (``ngx_spawn_process``: ``FIOASYNC`` and ``F_SETOWN`` on
the master's end, ckpt/files/fown.py), and the workers share the master's listener.  Dumped
(then dumped again with ``--kill``), restored with ``--same-pid``: the workers come back as the restored
master's children with their pids, the page is served, the channels work -- a SIGHUP
reload starts new workers with the new configuration and retires the old ones by a
message on their channel, and a SIGQUIT ends the whole tree gracefully.

The Debian package ``nginx`` is installed by ``.ci/run``; without it the test skips (and
fails under CI).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckpt import procfs
from ckpt._sys import pidfd as pidfd_sys
from ckpt.files import fown
from helpers import require_feature, run_ckpt

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

# As tools/compare_programs.py NGINX_CONF, with Debian's default worker user, and notices logged.
NGINX_CONF = """
daemon off;
user www-data www-data;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log notice;   # the workers log their graceful exits
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; root {d}/www; {extra} }}
}}
"""


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get(port: int) -> tuple[bytes, dict[str, str]]:
    """The page at / and the answer's headers."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as answer:
        return answer.read(), dict(answer.headers)


def serves(port: int) -> bool:
    with contextlib.suppress(OSError):
        get(port)
        return True
    return False


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if procfs.read_stat(int(name)).ppid == pid:
                    out.append(int(name))
    return sorted(out)


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return procfs.read_stat(pid).state != "Z"
    return False


class Nginx:
    """nginx in a 0755 directory of its own under /tmp (the workers, www-data, read its page)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ckpt-nginx-", dir="/tmp"))
        self.dir.chmod(0o755)
        with socket_bound() as port:
            self.port = port
        (self.dir / "www").mkdir()
        (self.dir / "tmp").mkdir()
        (self.dir / "www" / "index.html").write_text(f"the same page {self.port}\n")
        self.conf = self.dir / "nginx.conf"
        self.configure("")
        self.pidfds: dict[int, int] = {}
        self.proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-c", str(self.conf), "-p", str(self.dir)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     close_fds=True, start_new_session=True)
        self.watch(self.proc.pid)
        wait_for("nginx to serve", lambda: serves(self.port))
        wait_for("nginx's 2 workers", lambda: len(children(self.proc.pid)) == 2)
        for worker in children(self.proc.pid):
            self.watch(worker)

    def configure(self, extra: str) -> None:
        self.conf.write_text(NGINX_CONF.format(d=self.dir, port=self.port, extra=extra))

    def watch(self, pid: int) -> None:
        """Keep a pidfd of ``pid``, to kill it at the end whatever became of it."""
        if pid not in self.pidfds:
            with contextlib.suppress(OSError):
                self.pidfds[pid] = os.pidfd_open(pid)

    def close(self) -> None:
        for pidfd in self.pidfds.values():
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def nginx() -> Iterator[Callable[[], Nginx]]:
    require_feature("nginx", shutil.which("nginx") is not None, "nginx is not installed (.ci/run installs it)")
    started: list[Nginx] = []

    def start() -> Nginx:
        started.append(Nginx())
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.close()


def channel_owners(master: int) -> dict[int, tuple[str, int]]:
    """fd -> (owner type, owner id) of the master's open files with O_ASYNC (its channels)."""
    out = {}
    pidfd = pidfd_sys.pidfd_open(master)
    try:
        for name in os.listdir(f"/proc/{master}/fd"):
            fd = pidfd_sys.pidfd_getfd(pidfd, int(name))
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                record = fown.read(fd, flags)
                if flags & fown.O_ASYNC and record is not None:
                    out[int(name)] = (str(record["type"]), int(record["id"]))   # type: ignore[call-overload]
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return out


@pytest.mark.timeout(300)
def test_nginx_master_and_workers_come_back_serving_and_reload(nginx: Callable[[], Nginx], tmp_path: Path) -> None:
    server = nginx()
    master = server.proc.pid
    workers = children(master)
    page, _ = get(server.port)
    before = channel_owners(master)
    assert len(before) >= 2 and set(before.values()) == {("pid", master)}, before   # its end of each channel
    images = tmp_path / "images"
    result = run_ckpt("dump", "--pid", master, "-D", images, "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout).get("unrestorable", []) == [], result.stdout
    assert get(server.port)[0] == page   # left running, it still serves
    result = run_ckpt("dump", "--pid", master, "-D", images, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    server.proc.wait(timeout=30)
    wait_for("the workers to be gone", lambda: not any(alive(w) for w in workers))
    assert not serves(server.port)

    # --same-pid, as the dump recommends for a tree: nginx keeps its pid (ngx_pid) and gives it
    # to F_SETOWN for each new worker's channel; with a new pid a reload fails with ESRCH
    # ("fcntl(F_SETOWN) failed while spawning").
    restored = run_ckpt("restore", "-D", images, "--detach", "--same-pid", timeout=150)
    assert restored.returncode == 0, restored.stderr
    new_master = int(restored.stdout.split()[0])
    assert new_master == master
    server.watch(new_master)
    for worker in workers:
        server.watch(worker)
    # The workers are the restored master's children, with their pids (nginx's
    # ngx_processes[] holds them); the master's channel ends signal the master as it is now.
    assert children(new_master) == workers, (children(new_master), workers)
    assert [procfs.read_status(w).uids[0] for w in workers] == [33, 33]   # www-data
    assert set(channel_owners(new_master).values()) == {("pid", new_master)}
    wait_for("nginx to serve again", lambda: serves(server.port))
    for _ in range(4):
        assert get(server.port)[0] == page

    # SIGHUP: the master rereads its configuration, starts 2 new workers (each told of the
    # others over its channel: ngx_pass_open_channel) and tells the old ones to quit over
    # theirs (ngx_signal_worker_processes writes NGX_CMD_QUIT).
    server.configure('add_header X-Reloaded "yes";')
    os.kill(new_master, signal.SIGHUP)
    wait_for("the old workers to quit", lambda: not any(alive(w) for w in workers))
    wait_for("2 new workers", lambda: len(children(new_master)) == 2)
    fresh = children(new_master)
    for worker in fresh:
        server.watch(worker)
    assert not set(fresh) & set(workers)
    body, headers = get(server.port)
    assert body == page and headers.get("X-Reloaded") == "yes", headers
    # The old workers logged their exit to the error log they share with the master (a
    # worker's fd 3 is the master's, not the /dev/null a restore gives fds 0-2); their
    # channel ends, closing, signalled the master (O_ASYNC: SIGIO to the owner, restored).
    log = (server.dir / "error.log").read_text().split("reconfiguring", 1)[-1]
    for worker in workers:
        assert f"{worker}#{worker}: gracefully shutting down" in log, log
    assert f"{master}#{master}: signal 29 (SIGIO) received" in log, log

    # SIGQUIT: a graceful end of the whole tree (the master quits its workers over the channels).
    pidfd = os.pidfd_open(new_master)
    try:
        os.kill(new_master, signal.SIGQUIT)
        wait_for("the master to exit", lambda: not alive(new_master), timeout=30)
    finally:
        os.close(pidfd)
    wait_for("the workers to exit", lambda: not any(alive(w) for w in fresh))
    assert not (server.dir / "nginx.pid").exists()   # removed by the master on its way out
    assert not serves(server.port)

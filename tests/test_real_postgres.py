"""postgres from Debian: a postmaster and its backends, checkpointed and restored (issue 9).

Started as a user would (tools/compare_programs.py ``start_postgres``: ``initdb``, then
``postgres -D DATA`` as the ``postgres`` user, on a free port of 127.0.0.1), postgres is a
tree (postmaster, checkpointer, background writer, walwriter, autovacuum launcher, logical
replication launcher) sharing 140-odd MB of MAP_SHARED anonymous memory, a small System V
segment (its interlock: postgres checks its attach count at startup) and dynamic shared
memory in /dev/shm/PostgreSQL.N.  A table gets rows, ``dump --kill`` takes the whole tree,
the restore brings it back: a query returns the rows, new rows are written, and
``pg_ctl stop -m fast`` stops it cleanly.  Needs the Debian packages postgresql and
postgresql-client (a missing one skips the test, and fails it under CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import REPO_ROOT, require_feature, run_ckpt

# tools/compare_programs.py knows how a user starts postgres and which IPC it leaves behind.
_spec = importlib.util.spec_from_file_location("compare_programs", REPO_ROOT / "tools" / "compare_programs.py")
assert _spec is not None and _spec.loader is not None
compare_programs = sys.modules.setdefault("compare_programs", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(compare_programs)   # (registered first: its dataclasses look their module up)

pytestmark = pytest.mark.usefixtures("ckpt_kernel")


def tree_of(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
              "logical replication launcher")


def background(postmaster: int) -> dict[int, str]:
    """The postmaster's long-lived children, pid -> title ("postgres: checkpointer"); not the
    client backends and autovacuum workers, which come and go."""
    out = {}
    for pid in tree_of(postmaster)[1:]:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.removeprefix("postgres: ").strip() in BACKGROUND:
            out[pid] = title
    return out


class Postgres:
    """One cluster in a directory of the test: its data, socket directory and port."""

    def __init__(self, home: Path) -> None:
        self.bin = Path(next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres")))).parent)
        self.user = pwd.getpwnam("postgres")
        self.home, self.data, self.sock = home, home / "data", home / "sock"
        self.port = compare_programs.free_port()
        self.env = dict(os.environ, LC_ALL="C.UTF-8", HOME=str(home))
        self.pid = 0
        self.restored: list[int] = []
        self.ipc_before = compare_programs.postgres_ipc()

    def as_postgres(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[], env=self.env,
                              capture_output=True, text=True, timeout=120, **kwargs)

    def start(self) -> None:
        self.sock.mkdir(parents=True)
        for path in (self.home, self.sock):
            shutil.chown(path, "postgres", "postgres")
        initdb = self.as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
                                   "--no-sync"])
        assert initdb.returncode == 0, initdb.stderr
        log = open(self.home / "postgres.log", "ab")
        proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k",
                                 str(self.sock), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                                start_new_session=True, env=self.env, user=self.user.pw_uid, group=self.user.pw_gid,
                                extra_groups=[])
        log.close()
        self.proc, self.pid = proc, proc.pid
        self.wait_answer()

    def wait_answer(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.psql("select 1", check=False)
            if result.returncode == 0 and result.stdout.strip() == "1":
                return
            assert time.monotonic() < deadline, f"postgres does not answer: {result.stderr}"
            time.sleep(0.2)

    def psql(self, sql: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                                 "-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True,
                                timeout=30)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def query(self, sql: str) -> str:
        return self.psql(sql).stdout.strip()

    def cleanup(self, pids: list[int]) -> None:
        for pid in pids:
            if pid:
                for p in tree_of(pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        compare_programs.remove_postgres_ipc(self.ipc_before)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Postgres]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    require_feature("postgres", bool(found) and shutil.which("psql") is not None,
                    "postgres or psql is not installed (.ci/run installs postgresql, postgresql-client)")
    # A directory postgres can reach (pytest's are under a 0700 one), root's: the images stay root's.
    top = Path(tempfile.mkdtemp(prefix="ckpt-postgres-", dir="/tmp"))
    os.chmod(top, 0o755)
    pg = Postgres(top / "pg")
    try:
        yield pg
    finally:
        pg.cleanup([pg.pid, *pg.restored])
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.timeout(600)
def test_postgres_comes_back_with_its_rows_writes_more_and_stops_cleanly(postgres: Postgres, tmp_path: Path) -> None:
    pg = postgres
    pg.start()
    pg.psql("create table kv(k int primary key, v text); "
            "insert into kv select n, 'row ' || n from generate_series(1, 1000) n")
    assert pg.query("select count(*), sum(k) from kv") == "1000|500500"
    before = background(pg.pid)
    assert len(before) >= 4, before   # checkpointer, background writer, walwriter, launchers
    images = tmp_path / "images"
    result = run_ckpt("dump", "--pid", pg.pid, "-D", images, "--kill", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"] and report["killed"], report["unrestorable"]
    pg.proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{p}") for p in before):
        assert time.monotonic() < deadline, "the killed backends are still there"
        time.sleep(0.1)
    log = pg.home / "postgres.log"
    # --same-pid, as the dump recommends for a tree: postmaster.pid names the postmaster's pid,
    # which pg_ctl signals (without it the restored postmaster has a new pid, and pg_ctl fails).
    restored = run_ckpt("restore", "-D", images, "--detach", "--json", "--same-pid", "--stdout", log, "--stderr", log,
                        timeout=300)
    assert restored.returncode == 0, restored.stderr
    root = json.loads(restored.stdout)["pid"]
    pg.restored.append(root)
    assert root == pg.pid
    assert background(root) == before, "the background processes are the restored postmaster's children again"
    pg.wait_answer(timeout=20)
    assert pg.query("select v from kv where k = 777") == "row 777"
    assert pg.query("select count(*), sum(k) from kv") == "1000|500500"
    pg.psql("insert into kv select n, 'new ' || n from generate_series(1001, 1500) n")
    assert pg.query("select count(*), max(v) from kv where k > 1000") == "500|new 1500"
    stop = pg.as_postgres([str(pg.bin / "pg_ctl"), "stop", "-D", str(pg.data), "-m", "fast", "-w", "-t", "60"])
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not os.path.exists(f"/proc/{root}") or Path(f"/proc/{root}/stat").read_text().split()[2] == "Z"
    assert not (pg.data / "postmaster.pid").exists()
    text = log.read_text()
    assert "database system is shut down" in text, text[-2000:]

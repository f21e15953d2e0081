"""Sixteen widely used programs checkpointed and restored by ckpt and by CRIU 4.2, side by side.

    python3 tools/compare_programs.py [--runs 1] [--only NAME...] [--tools ckpt,criu]
                                      [--json] [--criu /work/shared/criu/criu] [--list]

For each program and each tool, on a fresh instance each time: start the program
(its own session, stdio to files or /dev/null, a free port on 127.0.0.1), give it
state (keys, a table, a counter that runs), dump it as a user would and restore it:

    ckpt dump --pid PID -D DIR --kill          ckpt restore -D DIR --detach [--stdout F --stderr F]
    criu dump -t PID -D DIR --shell-job        criu restore -D DIR -d --shell-job

(the program in a terminal, sqlite3, is restored in the foreground of a new tmux
window instead: ``ckpt restore -D DIR --shell-job``, ``criu restore -D DIR --shell-job``), then
check that it came back *the same*: it answers with the data set before the dump,
on the same port; a counter continues where it was; output resumes.

Each result is one of ``same`` (back and the same), ``refused`` (the tool declined,
by name: ckpt's exit 9/10, CRIU's error line), ``wrong`` (restored, but the check
saw a difference) or ``failed`` (an error, a crash, no answer).  Dump and restore
are timed by wall clock (the command's own run; for the terminal program, restore
is the time until the restored process exists); with ``--runs N`` the median of the
runs is reported.  Progress lines go to stderr; the table (or ``--json``) to stdout.

Needs root (CRIU does; ``memcached -u root``; postgres is run as the ``postgres``
user).  Installs nothing: a program that is not installed is reported ``missing``.
Every process it starts (and every one reparented to it: it is a child subreaper)
is killed and reaped, and every directory it makes is removed, whatever happens.
Stdlib only; ckpt is run as ``python3 -m ckpt`` from this checkout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CRIU_DEFAULT = Path("/work/shared/criu/criu")
PR_SET_CHILD_SUBREAPER = 36
CMD_TIMEOUT = 120

GO_HTTP = """package main

import (
\t"fmt"
\t"net/http"
\t"os"
\t"sync/atomic"
)

func main() {
\tstate := os.Args[2]
\tvar hits int64
\thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
\t\tfmt.Fprintf(w, "go %s %d\\n", state, atomic.AddInt64(&hits, 1))
\t})
\thttp.ListenAndServe("127.0.0.1:"+os.Args[1], nil)
}
"""

GO_LOOP = """package main

import (
\t"fmt"
\t"time"
)

func main() {
\tacc := int64(0)
\tfor i := int64(1); ; i++ {
\t\tacc = (acc*31 + i) % 1000000007
\t\tfmt.Printf("%d %d\\n", i, acc)
\t\ttime.Sleep(100 * time.Millisecond)
\t}
}
"""

NODE_HTTP = """
const state = process.argv[3];
let hits = 0;
require('http').createServer((q, r) => r.end('node ' + state + ' ' + (++hits) + '\\n'))
  .listen(+process.argv[2], '127.0.0.1');
"""

PY_LOOP = """
import sys, time
acc = 0
i = 0
while True:
    i += 1
    acc = (acc * 31 + i) % 1000000007
    for _ in range(20000):      # some real computing between two lines
        acc = (acc * 7 + 3) % 1000000007
    print(i, acc, flush=True)
    time.sleep(0.1)
"""

PERL_LOOP = r"""
$| = 1; my $acc = 0;
for (my $i = 1; ; $i++) {
    $acc = ($acc * 31 + $i) % 1000000007;
    for (1 .. 20000) { $acc = ($acc * 7 + 3) % 1000000007; }
    print "$i $acc\n";
    select(undef, undef, undef, 0.1);
}
"""

BASH_LOOP = 'acc=0; i=0; while :; do i=$((i+1)); acc=$(( (acc*31 + i) % 1000000007 )); echo "$i $acc"; sleep 0.1; done'

NGINX_CONF = """
daemon off;
user root root;
master_process {master};
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; root {d}/www; }}
}}
"""


class CheckFailed(Exception):
    """The restored program answered, but not as before (a 'wrong' result)."""


class NoAnswer(Exception):
    """The restored program is gone or does not answer (a 'failed' result)."""


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``ready`` until it is true; NoAnswer naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (OSError, ValueError, subprocess.SubprocessError, NoAnswer):
            pass
        time.sleep(0.05)
    raise NoAnswer(f"{what} (after {timeout:.0f}s)")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def talk(port: int, request: bytes, until: bytes) -> bytes:
    """Send ``request``; read until the answer ends with ``until`` (or EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(until):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def http_get(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.read()


def answer(what: str, call: Callable[[], bytes]) -> bytes:
    """``call()``, its OSError turned into NoAnswer (the program did not answer)."""
    try:
        return call()
    except OSError as err:
        raise NoAnswer(f"{what}: {err}") from None


def expect(what: str, got: object, want: object) -> None:
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, expected {want!r}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every process now."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")   # a comm may be any bytes
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            table[int(entry)] = (int(stat[stat.rindex(")") + 2:].split()[1]), comm)
    return table


def descendants(pid: int) -> list[int]:
    table = proc_table()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.append(child)
                todo.append(child)
    return found


def kill_tree(pid: int | None) -> None:
    """SIGKILL ``pid`` and every descendant of it, by pid."""
    if not pid:
        return
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap_all() -> None:
    """Kill and reap every child of this tool (it is a subreaper: orphans of what it ran)."""
    me = os.getpid()
    for _ in range(50):
        mine = [p for p, (ppid, _) in proc_table().items() if ppid == me]
        for pid in mine:
            kill_tree(pid)
        reap_zombies()
        if not mine:
            return
        time.sleep(0.05)


def counter_lines(path: Path) -> list[tuple[int, int]]:
    """The complete "i acc" lines of a counter program's output."""
    lines = path.read_text(errors="replace").split("\n")[:-1]   # the last may be partial
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise CheckFailed(f"{path.name}: a line that is not 'i acc': {line!r}")
        out.append((int(parts[0]), int(parts[1])))
    return out


def check_counter(path: Path, before: int, inner: Callable[[int], int] | None) -> str:
    """Lines 1..N with each acc the recurrence of the one before, N past ``before`` + 2."""
    wait_for(f"{path.name} to grow past line {before + 2}",
             lambda: len(counter_lines(path)) >= before + 3, timeout=10)
    lines = counter_lines(path)
    acc = 0
    for n, (i, got) in enumerate(lines, 1):
        if i != n:
            raise CheckFailed(f"line {n} counts {i}: the counter {'restarted' if i == 1 else 'jumped'}")
        acc = (acc * 31 + i) % 1000000007
        if inner:
            acc = inner(acc)
        if got != acc:
            raise CheckFailed(f"line {n}: acc {got}, the recurrence gives {acc}")
    return f"counter continued {before} -> {len(lines)}, every line consistent"


def py_inner(acc: int) -> int:
    # 20000 steps of acc = 7*acc + 3 (mod p) is an affine map: a*acc + b, precomputed once.
    return (INNER_A * acc + INNER_B) % 1000000007


def _inner_coefficients() -> tuple[int, int]:
    a, b = 1, 0
    for _ in range(20000):
        a, b = (a * 7) % 1000000007, (b * 7 + 3) % 1000000007
    return a, b


INNER_A, INNER_B = _inner_coefficients()


# --------------------------------------------------------------------------- one instance

@dataclass
class Instance:
    """One started program: its process, its directory, what the check needs."""

    dir: Path
    proc: subprocess.Popen | None = None
    pid: int = 0
    port: int = 0
    out: Path | None = None      # stdout file (restored with --stdout by ckpt)
    err: Path | None = None
    memo: dict = field(default_factory=dict)
    tmux: list[str] = field(default_factory=list)   # tmux command prefix (terminal programs)

    def popen(self, argv: list[str], *, stdout_file: bool = False, user: str | None = None,
              cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        """Start ``argv`` in a new session; stdout to ``out.txt`` (O_APPEND) if asked."""
        self.err = self.dir / "err.txt"
        out = subprocess.DEVNULL
        if stdout_file:
            self.out = self.dir / "out.txt"
            out = open(self.out, "ab")
        err = open(self.err, "ab")
        kwargs: dict = {}
        if user:
            import pwd
            entry = pwd.getpwnam(user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         close_fds=True, start_new_session=True, cwd=cwd, env=env,
                                         **kwargs)
        finally:
            err.close()
            if out is not subprocess.DEVNULL:
                out.close()
        self.pid = self.proc.pid


@dataclass
class Program:
    """A program of the set: how to start it, give it state and check it came back."""

    name: str
    why: str
    needs: tuple[str, ...]
    start: Callable[[Instance], None]
    check: Callable[[Instance, int], str]        # (instance, restored pid) -> what was checked
    tcp: bool = False                            # --tcp-established (none needs it: no live client)
    terminal: bool = False                       # lives in a tmux pane; restored in the foreground


# ----- servers

def start_redis(inst: Instance) -> None:
    inst.port = free_port()
    inst.popen(["redis-server", "--port", str(inst.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(inst.dir)])
    wait_for("redis to listen", lambda: port_open(inst.port))
    payload = b"".join(f"*3\r\n$3\r\nSET\r\n${len(f'key{i}')}\r\nkey{i}\r\n${len(f'value{i}')}\r\nvalue{i}\r\n".encode()
                       for i in range(1000))
    expect("SET x1000", talk(inst.port, payload, b"+OK\r\n" * 1000).count(b"+OK"), 1000)
    for n in range(1, 4):
        expect("INCR", talk(inst.port, b"INCR hits\r\n", b"\r\n"), f":{n}\r\n".encode())


def check_redis(inst: Instance, pid: int) -> str:
    wait_for("redis to listen again", lambda: port_open(inst.port))
    expect("GET key777", answer("GET", lambda: talk(inst.port, b"GET key777\r\n", b"value777\r\n")),
           b"$8\r\nvalue777\r\n")
    expect("DBSIZE", answer("DBSIZE", lambda: talk(inst.port, b"DBSIZE\r\n", b"\r\n")), b":1001\r\n")
    expect("INCR", answer("INCR", lambda: talk(inst.port, b"INCR hits\r\n", b"\r\n")), b":4\r\n")
    return "GET key777, DBSIZE 1001, INCR 3 -> 4 on the same port"


def start_memcached(inst: Instance) -> None:
    inst.port = free_port()
    inst.popen(["memcached", "-l", "127.0.0.1", "-p", str(inst.port), "-U", "0", "-u", "root"])
    wait_for("memcached to listen", lambda: port_open(inst.port))
    expect("set", talk(inst.port, b"set answer 0 0 2\r\n42\r\n", b"\r\n"), b"STORED\r\n")
    expect("set", talk(inst.port, b"set hits 0 0 1\r\n0\r\n", b"\r\n"), b"STORED\r\n")
    for n in range(1, 4):
        expect("incr", talk(inst.port, b"incr hits 1\r\n", b"\r\n"), f"{n}\r\n".encode())


def check_memcached(inst: Instance, pid: int) -> str:
    wait_for("memcached to listen again", lambda: port_open(inst.port))
    expect("get answer", answer("get", lambda: talk(inst.port, b"get answer\r\n", b"END\r\n")),
           b"VALUE answer 0 2\r\n42\r\nEND\r\n")
    expect("incr", answer("incr", lambda: talk(inst.port, b"incr hits 1\r\n", b"\r\n")), b"4\r\n")
    return "get answer = 42, incr 3 -> 4 on the same port"


def start_pyhttp(inst: Instance) -> None:
    inst.port = free_port()
    (inst.dir / "www").mkdir()
    (inst.dir / "www" / "index.html").write_text(f"the same page {inst.port}\n")
    inst.popen([sys.executable, "-m", "http.server", str(inst.port), "--bind", "127.0.0.1",
                "--directory", str(inst.dir / "www")])
    wait_for("http.server to serve", lambda: http_get(inst.port) != b"")


def check_file_served(inst: Instance, pid: int) -> str:
    wait_for("the server to listen again", lambda: port_open(inst.port))
    want = f"the same page {inst.port}\n".encode()
    expect("GET /index.html", answer("GET", lambda: http_get(inst.port, "/index.html")), want)
    expect("GET /index.html again", answer("GET", lambda: http_get(inst.port, "/index.html")), want)
    return "GET /index.html twice, same page on the same port"


def start_node(inst: Instance) -> None:
    inst.port = free_port()
    script = inst.dir / "server.js"
    script.write_text(NODE_HTTP)
    inst.popen(["node", str(script), str(inst.port), f"state-{inst.port}"])
    wait_for("node to listen", lambda: port_open(inst.port))
    for n in range(1, 4):
        expect("GET", http_get(inst.port), f"node state-{inst.port} {n}\n".encode())


def check_node(inst: Instance, pid: int) -> str:
    wait_for("node to listen again", lambda: port_open(inst.port))
    expect("GET", answer("GET", lambda: http_get(inst.port)), f"node state-{inst.port} 4\n".encode())
    return "hit counter 3 -> 4, same state string, same port"


def go_binary(source: str, name: str) -> Path:
    """Build ``source`` once per run of this tool (in BUILD_DIR), as a user would: go build."""
    exe = BUILD_DIR / name
    if exe.exists():
        return exe
    src = BUILD_DIR / f"{name}-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_text(source)
    env = dict(os.environ, GOFLAGS="-mod=mod", GO111MODULE="on")
    if not (src / "go.mod").exists():
        subprocess.run(["go", "mod", "init", name], cwd=src, env=env, check=True, capture_output=True,
                       timeout=CMD_TIMEOUT)
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=src, env=env, check=True, capture_output=True,
                   timeout=900)
    return exe


def start_gohttp(inst: Instance) -> None:
    inst.port = free_port()
    inst.popen([str(go_binary(GO_HTTP, "gohttp")), str(inst.port), f"state-{inst.port}"])
    wait_for("the go server to listen", lambda: port_open(inst.port))
    for n in range(1, 4):
        expect("GET", http_get(inst.port), f"go state-{inst.port} {n}\n".encode())


def check_gohttp(inst: Instance, pid: int) -> str:
    wait_for("the go server to listen again", lambda: port_open(inst.port))
    expect("GET", answer("GET", lambda: http_get(inst.port)), f"go state-{inst.port} 4\n".encode())
    return "hit counter 3 -> 4, same state string, same port"


def start_nginx(master: str) -> Callable[[Instance], None]:
    def start(inst: Instance) -> None:
        inst.port = free_port()
        (inst.dir / "www").mkdir()
        (inst.dir / "tmp").mkdir()
        (inst.dir / "www" / "index.html").write_text(f"the same page {inst.port}\n")
        os.chmod(inst.dir, 0o755)            # the workers (www-data) read the page
        conf = inst.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(master=master, d=inst.dir, port=inst.port))
        inst.popen(["nginx", "-c", str(conf), "-p", str(inst.dir)])
        wait_for("nginx to serve", lambda: http_get(inst.port, "/index.html") != b"")
        if master == "on":
            wait_for("nginx's 2 workers", lambda: len(descendants(inst.pid)) == 2)
    return start


def postgres_ipc() -> set[str]:
    """postgres's SysV shared memory segments ("shm:ID") and POSIX ones in /dev/shm (paths):
    a postgres killed by SIGKILL leaves them behind, so cleanup removes the ones it made."""
    import pwd
    uid = pwd.getpwnam("postgres").pw_uid
    found = set()
    with open("/proc/sysvipc/shm") as f:
        head = f.readline().split()
        for line in f:
            row = dict(zip(head, line.split()))
            if int(row["uid"]) == uid:
                found.add(f"shm:{row['shmid']}")
    for path in Path("/dev/shm").glob("PostgreSQL.*"):
        if path.stat().st_uid == uid:
            found.add(str(path))
    return found


def remove_postgres_ipc(before: set[str]) -> None:
    for name in postgres_ipc() - before:
        if name.startswith("shm:"):
            subprocess.run(["ipcrm", "-m", name[4:]], capture_output=True, timeout=20)
        else:
            Path(name).unlink(missing_ok=True)


def start_postgres(inst: Instance) -> None:
    inst.port = free_port()
    inst.memo["ipc_before"] = postgres_ipc()
    # the images stay in inst.dir (root's, 0755): ckpt refuses to write under another user's dir
    os.chmod(inst.dir, 0o755)
    home = inst.dir / "pg"
    data, sock = home / "data", home / "sock"
    sock.mkdir(parents=True)
    for path in (home, sock):
        shutil.chown(path, "postgres", "postgres")
    initdb = next(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    pg_env = dict(os.environ, LC_ALL="C.UTF-8", HOME=str(home))
    import pwd
    pg = pwd.getpwnam("postgres")
    subprocess.run([str(initdb), "-D", str(data), "--auth=trust", "-U", "postgres", "--no-sync"],
                   user=pg.pw_uid, group=pg.pw_gid, extra_groups=[], env=pg_env, check=True,
                   capture_output=True, timeout=CMD_TIMEOUT)
    inst.popen([str(initdb.parent / "postgres"), "-D", str(data), "-p", str(inst.port), "-k", str(sock),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], user="postgres", env=pg_env)
    wait_for("postgres to accept", lambda: psql(inst, "select 1") == "1", timeout=30)
    psql(inst, "create table kv(k text primary key, v text); create sequence hits; "
               "insert into kv values ('answer', 'forty-two')")
    expect("select", psql(inst, "select v from kv where k = 'answer'"), "forty-two")
    for n in range(1, 4):
        expect("nextval", psql(inst, "select nextval('hits')"), str(n))


def psql(inst: Instance, sql: str) -> str:
    result = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(inst.port), "-U", "postgres", "-d", "postgres",
                             "-tAq", "-c", sql], capture_output=True, text=True, timeout=20)
    if result.returncode:
        raise NoAnswer(f"psql: {result.stderr.strip()}")
    return result.stdout.strip()


def check_postgres(inst: Instance, pid: int) -> str:
    wait_for("postgres to accept again", lambda: psql(inst, "select 1") == "1", timeout=20)
    expect("select", psql(inst, "select v from kv where k = 'answer'"), "forty-two")
    expect("nextval", psql(inst, "select nextval('hits')"), "4")
    return "a row inserted before, nextval 3 -> 4, same port"


# ----- everyday tools

def start_sleep(inst: Instance) -> None:
    inst.popen(["sleep", "3600"])
    wait_for("sleep to sleep", lambda: Path(f"/proc/{inst.pid}/wchan").read_text() != "0")


def check_sleep(inst: Instance, pid: int) -> str:
    time.sleep(1)
    if not alive(pid):
        raise NoAnswer("the restored sleep is gone")
    expect("cmdline", Path(f"/proc/{pid}/cmdline").read_bytes(), b"sleep\x003600\x00")
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    expect("state after 1 s", state, "S")
    return "alive 1 s later, still asleep, same argv"


def start_counter(argv: list[str], name: str) -> Callable[[Instance], None]:
    def start(inst: Instance) -> None:
        inst.popen(argv if name != "python" else [sys.executable, "-c", PY_LOOP], stdout_file=True)
        assert inst.out is not None
        wait_for(f"{name} to count to 5", lambda: len(counter_lines(inst.out)) >= 5)
    return start


def check_counter_program(inner: Callable[[int], int] | None) -> Callable[[Instance, int], str]:
    def check(inst: Instance, pid: int) -> str:
        assert inst.out is not None
        return check_counter(inst.out, inst.memo["lines_at_dump"], inner)
    return check


def start_tail(inst: Instance) -> None:
    log = inst.dir / "log.txt"
    log.write_text("".join(f"line {i}\n" for i in range(1, 21)))
    inst.popen(["tail", "-n", "3", "-f", str(log)], stdout_file=True)
    wait_for("tail to print", lambda: inst.out.read_text() == "line 18\nline 19\nline 20\n")
    with open(log, "a") as f:
        f.write("line 21\n")
    wait_for("tail to follow", lambda: inst.out.read_text().endswith("line 21\n"))


def check_tail(inst: Instance, pid: int) -> str:
    time.sleep(0.5)
    with open(inst.dir / "log.txt", "a") as f:
        f.write("after restore\n")
    want = "line 18\nline 19\nline 20\nline 21\nafter restore\n"
    try:
        wait_for("tail to print the line appended after restore",
                 lambda: inst.out.read_text() == want, timeout=8)
    except NoAnswer:
        got = inst.out.read_text()
        if alive(pid):
            raise CheckFailed(f"output {got!r}, expected {want!r}") from None
        raise
    return "a line appended after restore followed, nothing repeated"


def start_top(inst: Instance) -> None:
    inst.popen(["top", "-b", "-d", "0.3", "-w", "200"], stdout_file=True,
               env=dict(os.environ, TERM="dumb", COLUMNS="200"))
    wait_for("top to print 3 screens", lambda: inst.out.read_text().count("\ntop - ") >= 2)


def check_top(inst: Instance, pid: int) -> str:
    before = inst.memo["screens_at_dump"]
    try:
        wait_for("top to print again", lambda: top_screens(inst) >= before + 3, timeout=8)
    except NoAnswer:
        if alive(pid):
            raise CheckFailed(f"{top_screens(inst) - before} screens in 8 s after restore") from None
        raise
    screens = inst.out.read_text(errors="replace").split("top - ")
    last = screens[-2]                      # the last complete screen, printed after restore
    tops = [line.split()[0] for line in last.splitlines() if line.split()[-1:] == ["top"]]
    if str(pid) not in tops:
        # top lists itself; after restore under a new pid the list shows that one
        raise CheckFailed(f"the restored top (pid {pid}) is not in its own list: the 'top' lines "
                          f"of its last screen (top - {last.splitlines()[0]}) have pids {tops}")
    return "3 more screens after restore, listing itself"


def top_screens(inst: Instance) -> int:
    return inst.out.read_text(errors="replace").count("top - ")


def start_sqlite(inst: Instance) -> None:
    tmux = ["tmux", "-L", f"ckpt-progs-{os.getpid()}-{inst.dir.name}", "-f", "/dev/null"]
    inst.tmux = tmux
    # window 0 only keeps the session alive when sqlite3's window closes at the dump
    subprocess.run([*tmux, "new-session", "-d", "-s", "s", "-x", "160", "-y", "50", "sleep", "3600"],
                   check=True, timeout=20, env=dict(os.environ, TERM="xterm"))
    subprocess.run([*tmux, "new-window", "-d", "-t", "s:1", "sqlite3", ":memory:"], check=True, timeout=20)
    pane_pid = subprocess.run([*tmux, "list-panes", "-t", "s:1", "-F", "#{pane_pid}"], capture_output=True,
                              text=True, check=True, timeout=20).stdout.split()[0]
    inst.pid = int(pane_pid)
    wait_for("sqlite3's prompt", lambda: "sqlite>" in capture(inst, "s:1"))
    state = f"state-{os.getpid()}-{inst.dir.name}"
    inst.memo["state"] = state
    send(inst, "s:1", f"create table t(x); insert into t values('{state}');")
    send(inst, "s:1", "select upper(x) from t;")
    wait_for("sqlite3 to answer", lambda: state.upper() in capture(inst, "s:1"))


def send(inst: Instance, target: str, line: str) -> None:
    # tmux reads an argument ending in ';' as a command separator: end it with a space
    subprocess.run([*inst.tmux, "send-keys", "-t", target, "-l", line + " "], check=True, timeout=20)
    subprocess.run([*inst.tmux, "send-keys", "-t", target, "Enter"], check=True, timeout=20)


def capture(inst: Instance, target: str) -> str:
    return subprocess.run([*inst.tmux, "capture-pane", "-p", "-t", target], capture_output=True, text=True,
                          timeout=20).stdout


def check_sqlite(inst: Instance, pid: int) -> str:
    want = inst.memo["state"].upper()
    time.sleep(0.5)
    send(inst, "s:2", "select upper(x) from t;")
    try:
        wait_for("the restored sqlite3 to answer", lambda: want in capture(inst, "s:2"), timeout=8)
    except NoAnswer:
        screen = " | ".join(line for line in capture(inst, "s:2").splitlines() if line.strip())[-300:]
        if alive(pid):
            raise CheckFailed(f"no {want} on the new terminal; it shows: {screen!r}") from None
        raise NoAnswer(f"restored sqlite3 gone; the terminal shows: {screen!r}") from None
    return "the in-memory table answers a query typed in a new terminal"


PROGRAMS: list[Program] = [
    Program("redis", "the most used key-value server: epoll, a pipe pair, a TCP listener, bio threads",
            ("redis-server",), start_redis, check_redis),
    Program("memcached", "the other classic cache: libevent epoll, eventfd, pipes, worker threads",
            ("memcached",), start_memcached, check_memcached),
    Program("python-http", "python3 -m http.server, the one-line file server everybody uses",
            (), start_pyhttp, check_file_served),
    Program("node-http", "Node.js HTTP server: libuv epoll, eventfds, signal pipes, V8 threads",
            ("node",), start_node, check_node),
    Program("go-http", "Go net/http server: Go runtime netpoller (epoll + eventfd/pipe), many threads",
            ("go",), start_gohttp, check_gohttp),
    Program("go-loop", "a Go program with no network: its runtime still sets up epoll for timers",
            ("go",), lambda inst: start_counter([str(go_binary(GO_LOOP, "goloop"))], "go")(inst),
            check_counter_program(None)),
    Program("nginx-single", "nginx with master_process off: one process, epoll, listener, log files",
            ("nginx",), start_nginx("off"), check_file_served),
    Program("nginx-master", "nginx as deployed: a master and 2 worker processes sharing the listener",
            ("nginx",), start_nginx("on"), check_file_served),
    Program("postgresql", "the most used SQL server: a process tree with SysV/POSIX shared memory",
            ("psql",), start_postgres, check_postgres),
    Program("sleep", "the simplest process: one blocked syscall to restart with its remaining time",
            ("sleep",), start_sleep, check_sleep),
    Program("bash-loop", "a shell script loop as users write it: bash forking sleep every 0.1 s",
            ("bash",), start_counter(["bash", "-c", BASH_LOOP], "bash"), check_counter_program(None)),
    Program("python-loop", "a Python compute loop: an interpreter's heap, progress to a file",
            (), start_counter([], "python"), check_counter_program(py_inner)),
    Program("perl-loop", "a Perl compute loop: another interpreter, select() sleeps",
            ("perl",), start_counter(["perl", "-e", PERL_LOOP], "perl"), check_counter_program(py_inner)),
    Program("tail-f", "tail -f on a log: inotify watch on a file, output to a file",
            ("tail",), start_tail, check_tail),
    Program("top-b", "top in batch mode: keeps /proc files open and rereads them",
            ("top",), start_top, check_top),
    Program("sqlite3-tty", "sqlite3 shell in a terminal (tmux pty), an in-memory table",
            ("sqlite3", "tmux"), start_sqlite, check_sqlite, terminal=True),
]


# --------------------------------------------------------------------------- running one

@dataclass
class Outcome:
    program: str
    tool: str
    run: int
    result: str              # same / refused / wrong / failed / missing
    reason: str
    dump_s: float | None = None
    restore_s: float | None = None
    dump_cmd: str = ""
    restore_cmd: str = ""


# CRIU's words when it declines something it does not support (criu/files*.c, sk-*.c, ...)
CRIU_REFUSAL = re.compile(r"unsupported|not supported|can't dump|cannot dump|can not dump", re.I)


def first_reason(text: str, tool: str) -> str:
    """The line that says why: ckpt's last 'ckpt: ...' line, CRIU's first 'Error' line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if tool == "criu":
        # CRIU logs its failed attempt to raise its own RLIMIT_NOFILE as an error on every run
        # here (no CAP_SYS_RESOURCE in this sandbox) and goes on (criu/util.c rlimit_unlimit_nofile)
        errors = [line for line in lines if "Error" in line and "RLIMIT_NOFILE for self" not in line]
        return errors[0] if errors else (lines[-1] if lines else "")
    return lines[-1] if lines else ""


def criu_log(images: Path, name: str) -> str:
    try:
        return (images / name).read_text(errors="replace")
    except OSError:
        return ""


def ckpt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckpt", *args]


def ckpt_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT, env=env,
                            stdin=subprocess.DEVNULL)
    return result, time.monotonic() - start


def prepare_for_dump(program: Program, inst: Instance) -> None:
    """Note what the check compares with (counter lines, top screens) right before the dump."""
    if inst.out is not None and program.name.endswith("loop"):
        inst.memo["lines_at_dump"] = len(counter_lines(inst.out))
    if program.name == "top-b":
        inst.memo["screens_at_dump"] = top_screens(inst)


def wait_gone(inst: Instance) -> None:
    """After a dump that killed it: reap the target (its pid must be free for CRIU)."""
    if inst.proc is not None:
        try:
            inst.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    wait_for(f"pid {inst.pid} to be gone", lambda: not alive(inst.pid), timeout=10)
    # Its children were reparented to this tool (a subreaper) when it died: reap them too, or
    # their zombies keep the pids that CRIU restores the tree with ("Can't fork ...: File exists").
    reap_zombies()


def reap_zombies() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def run_one(program: Program, tool: str, run: int, criu: Path, root: Path) -> Outcome:
    """One fresh instance of ``program`` through ``tool``; everything it started is killed."""
    outcome = Outcome(program.name, tool, run, "failed", "")
    missing = [n for n in program.needs if shutil.which(n) is None]
    if missing:
        outcome.result, outcome.reason = "missing", f"not installed: {', '.join(missing)}"
        return outcome
    root.mkdir(mode=0o755, exist_ok=True)    # made again if something swept /tmp meanwhile
    inst = Instance(dir=Path(tempfile.mkdtemp(prefix=f"{program.name}-{tool}-", dir=root)))
    images = inst.dir / "images"
    restored = 0
    try:
        try:
            program.start(inst)
        except (NoAnswer, CheckFailed, subprocess.SubprocessError, OSError) as err:
            outcome.reason = f"the program did not start: {err}"
            return outcome
        time.sleep(0.3)
        prepare_for_dump(program, inst)
        if tool == "ckpt":
            dump = ckpt_cmd("dump", "--pid", str(inst.pid), "-D", str(images), "--kill")
            if program.tcp:
                dump.append("--tcp-established")
            env = ckpt_env()
        else:
            images.mkdir(mode=0o700)
            dump = [str(criu), "dump", "-t", str(inst.pid), "-D", str(images), "--shell-job", "-o", "dump.log"]
            if program.tcp:
                dump.append("--tcp-established")
            env = None
        outcome.dump_cmd = " ".join(dump)
        result, outcome.dump_s = timed(dump, env)
        if result.returncode != 0:
            text = result.stderr + (criu_log(images, "dump.log") if tool == "criu" else "")
            outcome.reason = f"dump exit {result.returncode}: {first_reason(text, tool)}"
            refused = result.returncode in (9, 10) if tool == "ckpt" else bool(CRIU_REFUSAL.search(outcome.reason))
            outcome.result = "refused" if refused else "failed"
            return outcome
        wait_gone(inst)
        if inst.port:
            wait_for(f"port {inst.port} to be free", lambda: not port_open(inst.port), timeout=10)
        if program.terminal:
            restored = restore_in_terminal(program, tool, inst, images, criu, outcome)
        else:
            if tool == "ckpt":
                restore = ckpt_cmd("restore", "-D", str(images), "--detach")
                if inst.out is not None:
                    restore += ["--stdout", str(inst.out), "--stderr", str(inst.err)]
                if program.tcp:
                    restore.append("--tcp-established")
            else:
                restore = [str(criu), "restore", "-D", str(images), "-d", "--shell-job", "-o", "restore.log"]
                if program.tcp:
                    restore.append("--tcp-established")
            outcome.restore_cmd = " ".join(restore)
            result, outcome.restore_s = timed(restore, env)
            if result.returncode != 0:
                text = result.stderr + (criu_log(images, "restore.log") if tool == "criu" else "")
                outcome.reason = f"restore exit {result.returncode}: {first_reason(text, tool)}"
                refused = result.returncode in (9, 10) if tool == "ckpt" else bool(CRIU_REFUSAL.search(outcome.reason))
                outcome.result = "refused" if refused else "failed"
                return outcome
            restored = int(result.stdout.split()[0]) if tool == "ckpt" else inst.pid
        try:
            outcome.reason = program.check(inst, restored)
            outcome.result = "same"
        except CheckFailed as err:
            outcome.result, outcome.reason = "wrong", str(err)
        except NoAnswer as err:
            gone = "" if alive(restored) else f" (restored pid {restored} is gone)"
            outcome.result, outcome.reason = "failed", f"no answer: {err}{gone}"
        return outcome
    except (NoAnswer, subprocess.SubprocessError, OSError, ValueError) as err:
        outcome.result, outcome.reason = "failed", f"{type(err).__name__}: {err}"
        return outcome
    except Exception as err:  # noqa: BLE001 - a bug of this tool: said, and the next program runs
        outcome.result, outcome.reason = "failed", f"compare_programs error {type(err).__name__}: {err}"
        return outcome
    finally:
        cleanup(inst, restored)


def cleanup(inst: Instance, restored: int) -> None:
    """Kill and reap everything of one instance and remove its directory; each step is tried
    even when one before it failed."""
    steps: list[Callable[[], object]] = [lambda: kill_tree(restored), lambda: kill_tree(inst.pid)]
    if inst.tmux:
        steps.append(lambda: subprocess.run([*inst.tmux, "kill-server"], capture_output=True, timeout=20))
    steps += [reap_all, lambda: shutil.rmtree(inst.dir, ignore_errors=True)]
    if "ipc_before" in inst.memo:
        steps.append(lambda: remove_postgres_ipc(inst.memo["ipc_before"]))
    for step in steps:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - the other steps must still run
            print(f"cleanup of {inst.dir.name}: {type(err).__name__}: {err}", file=sys.stderr)


def restore_in_terminal(program: Program, tool: str, inst: Instance, images: Path, criu: Path,
                        outcome: Outcome) -> int:
    """Restore in the foreground of a new tmux window, as a user at a terminal would."""
    if tool == "ckpt":
        # its controlling terminal is outside the process: a job of the caller's, as CRIU's --shell-job
        cmd = ckpt_cmd("restore", "-D", str(images), "--shell-job")
        env_args = ["-e", f"PYTHONPATH={REPO}"]
    else:
        cmd = [str(criu), "restore", "-D", str(images), "--shell-job", "-o", "restore.log"]
        env_args = []
    outcome.restore_cmd = " ".join(cmd) + "   (in a new tmux window)"
    old = inst.pid
    comm = program.needs[0]
    start = time.monotonic()
    subprocess.run([*inst.tmux, "new-window", "-d", "-t", "s:2", *env_args, *cmd], check=True, timeout=20)

    def found() -> int:
        for pid, (_, name) in proc_table().items():
            if name == comm and (pid != old or tool == "criu") and alive(pid):
                return pid
        return 0
    try:
        wait_for(f"a restored {comm}", lambda: found() != 0, timeout=30)
    except NoAnswer:
        text = capture(inst, "s:2") + criu_log(images, "restore.log")
        raise NoAnswer(f"restore: {first_reason(text, tool) or 'no process'}") from None
    outcome.restore_s = time.monotonic() - start
    return found()


# --------------------------------------------------------------------------- report

def summarize(outcomes: list[Outcome], tools: list[str]) -> list[dict]:
    """One row per program: per tool the result (of the first run, which all runs must share
    to be called 'same'), the reason, and the median dump and restore times."""
    rows = []
    for program in dict.fromkeys(o.program for o in outcomes):
        row: dict = {"program": program, "why": next(p.why for p in PROGRAMS if p.name == program)}
        for tool in tools:
            mine = [o for o in outcomes if o.program == program and o.tool == tool]
            if not mine:
                continue
            results = [o.result for o in mine]
            result = results[0] if len(set(results)) == 1 else "flaky"
            worst = next((o for o in mine if o.result != "same"), mine[0])
            dumps = [o.dump_s for o in mine if o.dump_s is not None and o.result != "missing"]
            restores = [o.restore_s for o in mine if o.restore_s is not None]
            row[tool] = {
                "result": result, "results": results, "reason": worst.reason,
                "dump_s": round(statistics.median(dumps), 3) if dumps else None,
                "restore_s": round(statistics.median(restores), 3) if restores else None,
                "runs": len(mine), "dump_cmd": worst.dump_cmd, "restore_cmd": worst.restore_cmd,
            }
        rows.append(row)
    return rows


def table(rows: list[dict], tools: list[str]) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"
    lines = []
    head = f"{'program':14}"
    for tool in tools:
        head += f" | {tool + ' result':14} {'dump s':>6} {'rest s':>6}"
    lines.append(head)
    for row in rows:
        line = f"{row['program']:14}"
        for tool in tools:
            cell = row.get(tool, {})
            line += f" | {cell.get('result', '-'):14} {fmt(cell.get('dump_s')):>6} {fmt(cell.get('restore_s')):>6}"
        lines.append(line)
    lines.append("")
    for tool in tools:
        same = sum(1 for r in rows if r.get(tool, {}).get("result") == "same")
        lines.append(f"{tool}: {same}/{len(rows)} back and the same")
    lines.append("")
    for row in rows:
        for tool in tools:
            cell = row.get(tool)
            if cell and cell["result"] != "same":
                lines.append(f"{row['program']} [{tool}] {cell['result']}: {cell['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these programs (see --list)")
    parser.add_argument("--tools", default="ckpt,criu", help="comma-separated: ckpt, criu (default both)")
    parser.add_argument("--runs", type=int, default=1, help="fresh instances per program and tool (default 1)")
    parser.add_argument("--criu", type=Path, default=CRIU_DEFAULT, help=f"the CRIU binary (default {CRIU_DEFAULT})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--list", action="store_true", help="list the programs and why each is in the set")
    args = parser.parse_args(argv)
    if args.list:
        for p in PROGRAMS:
            print(f"{p.name:14} {p.why}")
        return 0
    tools = [t for t in args.tools.split(",") if t]
    if set(tools) - {"ckpt", "criu"} or not tools:
        parser.error("--tools takes ckpt and/or criu")
    chosen = PROGRAMS
    if args.only:
        unknown = set(args.only) - {p.name for p in PROGRAMS}
        if unknown:
            parser.error(f"unknown program(s): {', '.join(sorted(unknown))} (see --list)")
        chosen = [p for p in PROGRAMS if p.name in args.only]
    if os.geteuid() != 0:
        parser.error("run as root (CRIU needs it; memcached and postgres are started for root's tests)")
    if "criu" in tools and not args.criu.exists():
        parser.error(f"no CRIU at {args.criu}")

    global BUILD_DIR
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # not "ckpt-*": other runs on a shared machine sweep /tmp/ckpt-* away
    root = Path(tempfile.mkdtemp(prefix="compare-programs-"))
    os.chmod(root, 0o755)    # nginx's workers and postgres (other users) reach their own 0755 dirs
    BUILD_DIR = root / "build"
    outcomes: list[Outcome] = []
    interrupted = False
    try:
        for program in chosen:
            for tool in tools:
                for run in range(1, args.runs + 1):
                    print(f"[{program.name} {tool} run {run}/{args.runs}] ...", file=sys.stderr, flush=True)
                    outcome = run_one(program, tool, run, args.criu, root)
                    outcomes.append(outcome)
                    times = f"dump {outcome.dump_s or 0:.2f}s restore {outcome.restore_s or 0:.2f}s"
                    print(f"[{program.name} {tool} run {run}/{args.runs}] {outcome.result} ({times}): "
                          f"{outcome.reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reap_all()
        shutil.rmtree(root, ignore_errors=True)
    rows = summarize(outcomes, tools)
    if args.json:
        print(json.dumps({"runs": args.runs, "tools": tools, "programs": rows,
                          "outcomes": [asdict(o) for o in outcomes],
                          "counts": {t: sum(1 for r in rows if r.get(t, {}).get("result") == "same")
                                     for t in tools},
                          "total": len(rows)}, indent=1))
    else:
        print(table(rows, tools))
    return 130 if interrupted else 0


BUILD_DIR = Path("/nonexistent")

if __name__ == "__main__":
    sys.exit(main())

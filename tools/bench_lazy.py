#!/usr/bin/env python3
"""Lazy restore against eager restore (and CRIU), paired in one run (issue 11 item 3).

  python3 tools/bench_lazy.py --gib 4 --reps 5            # lazy_target, one full checkpoint
  python3 tools/bench_lazy.py --redis-mib 1024 --reps 5 --criu /work/shared/criu/criu

lazy_target (tests/programs/lazy_target.c, GIB GiB of varied memory): for each rep, eager
then lazy ``ckpt restore -d --json`` of the same checkpoint; reported per mode:
  command      wall time of the ``ckpt restore -d`` command (Python start included)
  release      inside the restore: from its start to the process's release (--log-file marks)
  answer       from the command's start until the process answered (SIGHUP: it write(2)s one
               page of its memory to its stdout)
  resident     from the command's start until every stored page is in (lazy: the page
               server exited; eager: the command returned)
redis (1 GiB of values, DEBUG POPULATE): time from the restore command's start to the first
PONG and to the first GET of a random key, for eager, lazy and ``criu restore -d``.
Medians [min-max].  Restored processes are killed after each measure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spread(values: list[float]) -> str:
    """``median [min-max]`` in milliseconds (tools/benchlib.py's form, finer)."""
    ms = [v * 1e3 for v in values]
    return f"{statistics.median(ms):8.1f} [{min(ms):.1f}-{max(ms):.1f}] ms"


def ckpt(*args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["--log-file", str(log)] if log else []
    return subprocess.run([sys.executable, "-m", "ckpt", *pre, *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)


def until_release(log: Path) -> float:
    """Seconds from the restore's start to the release, from its --log-file marks."""
    total = 0.0
    for line in log.read_text().splitlines():
        m = re.search(r"restore: (.*?): ([0-9.]+) ms", line)
        if m:
            total += float(m.group(2)) / 1e3
            if m.group(1) == "release":
                return total
    return float("nan")


def wait_pid(pid: int, timeout: float = 600) -> None:
    fd = os.pidfd_open(pid)
    try:
        import select
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def kill(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        import select
        select.select([fd], [], [], 30)
    finally:
        os.close(fd)


def wait_line(path: Path, prefix: bytes, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(prefix) for line in path.read_bytes().splitlines()):
            return
        time.sleep(0.0005)
    raise SystemExit(f"no {prefix!r} in {path}")


def target_scenario(args: argparse.Namespace, tmp: Path) -> None:
    binary = tmp / "lazy_target"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(ROOT / "tests/programs/lazy_target.c")], check=True)
    out = tmp / "target.out"
    target = subprocess.Popen([str(binary), str(args.gib * 1024)], stdout=open(out, "wb"),
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_line(out, b"base")
        images = tmp / "images"
        t0 = time.monotonic()
        r = ckpt("dump", "-t", str(target.pid), "-D", str(images), "--kill")
        assert r.returncode == 0, r.stderr
        print(f"dumped {args.gib} GiB in {time.monotonic() - t0:.1f} s")
    finally:
        target.kill()
        target.wait()
    results: dict[str, dict[str, list[float]]] = {m: {"command": [], "release": [], "answer": [], "resident": []}
                                                  for m in ("eager", "lazy")}
    for rep in range(args.reps):
        for mode in ("eager", "lazy"):
            out, log = tmp / f"{mode}{rep}.out", tmp / f"{mode}{rep}.log"
            out.touch()
            t0 = time.monotonic()
            r = ckpt("restore", "-D", str(images), "-d", "--json", "--stdout", str(out),
                     *(["--lazy"] if mode == "lazy" else []), log=log)
            t1 = time.monotonic()
            assert r.returncode == 0, r.stderr
            res = json.loads(r.stdout)
            os.kill(res["pid"], signal.SIGHUP)
            wait_line(out, b"emitted")
            t2 = time.monotonic()
            if res.get("page_server"):
                wait_pid(res["page_server"])
            t3 = time.monotonic() if mode == "lazy" else t1
            kill(res["pid"])
            row = results[mode]
            row["command"].append(t1 - t0)
            row["release"].append(until_release(log))
            row["answer"].append(t2 - t0)
            row["resident"].append(t3 - t0)
    print(f"\n{args.gib} GiB checkpoint, {args.reps} reps, median [min-max]")
    print("  the last lazy restore's steps until the page server ran:")
    for line in (tmp / f"lazy{args.reps - 1}.log").read_text().splitlines():
        m = re.search(r"restore: (plan|create|write the pages|register the lazy memory|release|start the page "
                      r"server): ([0-9.]+ ms)", line)
        if m:
            print(f"    {m.group(1)}: {m.group(2)}")
    for mode, row in results.items():
        for name, values in row.items():
            print(f"  {mode:6s} {name:9s} {spread(values)}")


def _first_answers(port: int, key: bytes, command: subprocess.Popen[str]) -> tuple[float, float]:
    """Times of the first PONG and of the first GET reply from a server being restored
    (connections are tried every millisecond while the restore runs)."""
    while True:
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            if command.poll() not in (None, 0):
                raise SystemExit(f"restore failed: {command.communicate()[1]}")
            time.sleep(0.001)
    with conn:
        conn.sendall(b"PING\r\n")
        assert conn.recv(64).startswith(b"+PONG")
        t_ping = time.monotonic()
        conn.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        got = b""
        while len(got) < 1024:
            got += conn.recv(65536)
        return t_ping, time.monotonic()


def redis_scenario(args: argparse.Namespace, tmp: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp), "--enable-debug-command", "yes"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              cwd=tmp, start_new_session=True)
    keys = args.redis_mib * 1024 // 1    # 1 KiB values
    cli = ["redis-cli", "-p", str(port)]
    try:
        for _ in range(500):
            if subprocess.run([*cli, "PING"], capture_output=True, text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.01)
        subprocess.run([*cli, "DEBUG", "POPULATE", str(keys), "key", "1024"], check=True, capture_output=True)
        rss = int(re.search(r"used_memory:(\d+)", subprocess.run([*cli, "INFO", "memory"], capture_output=True,
                                                                  text=True).stdout).group(1))
        print(f"redis: {keys} keys, used_memory {rss / 2**20:.0f} MiB")
        if args.criu:
            (tmp / "criu").mkdir()
            r = subprocess.run([str(args.criu), "dump", "-t", str(server.pid), "-D", str(tmp / "criu"),
                                "--shell-job", "--leave-running", "-o", "dump.log"],
                               capture_output=True, text=True, cwd=tmp)
            if r.returncode:
                raise SystemExit(f"criu dump failed: {r.stderr} {(tmp / 'criu' / 'dump.log').read_text()[-2000:]}")
        r = ckpt("dump", "-t", str(server.pid), "-D", str(tmp / "images"), "--kill")
        assert r.returncode == 0, r.stderr
    finally:
        server.kill()
        server.wait()
    modes = ["eager", "lazy"] + (["criu"] if args.criu else [])
    results: dict[str, dict[str, list[float]]] = {m: {"command": [], "PING": [], "GET": [], "resident": []}
                                                  for m in modes}
    rng = random.Random(1)
    for _ in range(args.reps):
        for mode in modes:
            if mode == "criu":
                argv = [str(args.criu), "restore", "-D", str(tmp / "criu"), "--shell-job", "-d",
                        "--pidfile", str(tmp / "criu.pid"), "-o", "restore.log"]
                where, env = tmp, None
            else:
                argv = [sys.executable, "-m", "ckpt", "restore", "-D", str(tmp / "images"), "-d", "--json",
                        *(["--lazy"] if mode == "lazy" else [])]
                where, env = ROOT, dict(os.environ, PYTHONPATH=str(ROOT))
            t0 = time.monotonic()
            command = subprocess.Popen(argv, cwd=where, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, text=True)
            # The first answer, however early: the process may answer before the command exits.
            key = f"key:{rng.randrange(keys)}".encode()
            t_ping, t_get = _first_answers(port, key, command)
            stdout, stderr = command.communicate()
            t_cmd = time.monotonic()
            assert command.returncode == 0, stderr
            if mode == "criu":
                pid, server_pid = int((tmp / "criu.pid").read_text()), None
                (tmp / "criu.pid").unlink()
            else:
                res = json.loads(stdout)
                pid, server_pid = res["pid"], res.get("page_server")
            if server_pid:
                wait_pid(server_pid)
            t_res = time.monotonic()
            kill(pid)
            row = results[mode]
            row["command"].append(t_cmd - t0)
            row["PING"].append(t_ping - t0)
            row["GET"].append(t_get - t0)
            row["resident"].append(t_res - t0 if mode == "lazy" else float("nan"))
    print(f"\nredis with {args.redis_mib} MiB of values, {args.reps} reps, from the restore command's "
          "start: median [min-max]")
    for mode, row in results.items():
        for name, values in row.items():
            if not all(v != v for v in values):
                print(f"  {mode:6s} {name:9s} {spread(values)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=int, default=0, help="lazy_target scenario with this many GiB")
    p.add_argument("--redis-mib", type=int, default=0, help="redis scenario with this many MiB of values")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--criu", type=Path, help="CRIU binary for the redis baseline")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up the images on timeout
    tmp = Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    try:
        if args.gib:
            target_scenario(args, tmp)
        if args.redis_mib:
            redis_scenario(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

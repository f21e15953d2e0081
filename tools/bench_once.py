#!/usr/bin/env python3
"""Issue 11 item 4: what an incremental stores when the target writes all the time.

For each ckpt checkout given (``--ckpt DIR``, e.g. the main checkout then a branch:
the same command before and after a change), a fresh target under a steady write
load gets one full dump then ``--dumps`` incrementals, one per ``--period``, each a
one-shot ``ckpt dump --json`` run with that checkout first on PYTHONPATH.  Printed
per checkout, as median [min-max] over the incrementals: the compressed bytes written
(pages.ckpt) in MiB and in % of the full dump's, the raw page bytes in pages.ckpt
against the unique pages the index points to (a page stored twice counts twice in
the first), the pages the frozen round found written, the frozen and wall times, and
the dump process's peak RSS.  With redis, the client's worst stall: its longest wait
for the replies of one pipelined batch while a dump ran, against the longest outside
the dumps (the same series, CLOCK_MONOTONIC in both processes).

With ``--criu BIN``, CRIU 4.2 on the same load as the baseline: full dumps only (it
cannot dump incrementally on this kernel), frozen for the whole dump.

Targets:
  redis   redis-server (no persistence, TCP on loopback) with --keys keys of --value
          bytes, and a client sending --sets SET/s of random keys (pipelined, every 10 ms)
  rate    tools/bench_target.c: --mib MiB of random data, a thread rewriting
          random whole pages at --mbps MB/s

Standard library only; imports nothing from the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path[:0] = [str(TOOLS)]
from benchlib import spread  # noqa: E402

PAGE = 4096

REDIS_WRITER = r"""
import json, os, random, select, socket, sys, time
port, keys, value, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
def cmd(k, v):
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)
def drain(n):                          # n replies ("+OK\r\n"): a CRLF may span two recv()s
    got, tail = 0, b""
    while got < n:
        data = tail + s.recv(1 << 20)
        got += data.count(b"\r\n")
        tail = data[-1:] if data.endswith(b"\r") else b""
blob = os.urandom(1 << 20)
def val():
    o = random.randrange(0, len(blob) - value)
    return blob[o:o + value]
for first in range(0, keys, 1000):   # load
    s.sendall(b"".join(cmd(b"key:%d" % i, val()) for i in range(first, min(keys, first + 1000))))
    drain(min(keys, first + 1000) - first)
def line():                           # one line of fd 0, unbuffered: select() sees what is left
    got = b""
    while not got.endswith(b"\n"):
        c = os.read(0, 1)
        if not c:
            sys.exit(0)
        got += c
    return got
print("ready", flush=True)
line()                                # go
batch = max(1, int(rate / 100))
t0, sent = time.monotonic(), 0
replies = []                          # (sent, answered) of every batch, CLOCK_MONOTONIC
while True:
    due = int((time.monotonic() - t0) * rate)
    if due > sent:
        n = min(due - sent, 10 * batch)
        t = time.monotonic()
        s.sendall(b"".join(cmd(b"key:%d" % random.randrange(keys), val()) for _ in range(n)))
        drain(n)
        replies.append((t, time.monotonic()))
        sent += n
    if select.select([0], [], [], 0.01)[0]:   # "replies": the timestamps so far
        line()
        print(json.dumps(replies), flush=True)
        replies = []
"""


class Client:
    """The redis client's timestamps: every pipelined batch of SETs, when it was sent and
    when its last reply came (CLOCK_MONOTONIC, which this process shares)."""

    def __init__(self, writer: subprocess.Popen[str]) -> None:
        self.writer = writer

    def replies(self, timeout: float = 60) -> list[tuple[float, float]]:
        """The batches since the last call: (sent, answered)."""
        assert self.writer.stdin is not None and self.writer.stdout is not None
        self.writer.stdin.write("replies\n")
        self.writer.stdin.flush()
        if not select.select([self.writer.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"the redis client did not answer within {timeout:g} s (redis stopped replying?)")
        return [tuple(r) for r in json.loads(self.writer.stdout.readline())]  # type: ignore[misc]


def stalls(replies: list[tuple[float, float]], dumps: list[tuple[float, float]]) -> tuple[float, float]:
    """The client's worst wait for a batch's replies, in ms: (during a dump, outside the
    dumps).  A batch is "during" a dump when its wait overlaps the dump's wall time."""
    during, outside = [0.0], [0.0]
    for sent, answered in replies:
        busy = any(sent < end and answered > start for start, end in dumps)
        (during if busy else outside).append((answered - sent) * 1e3)
    return max(during), max(outside)


@contextmanager
def redis_target(tmp: Path, args: argparse.Namespace) -> Iterator[tuple[int, Client | None]]:
    # TCP on loopback, not a unix socket: CRIU cannot dump one end of a unix stream
    # connection whose peer is outside the tree (it can with --tcp-established).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    writer = None
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.01)
        writer = subprocess.Popen([sys.executable, "-c", REDIS_WRITER, str(port), str(args.keys), str(args.value),
                                   str(args.sets)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=tmp)
        assert writer.stdout is not None and writer.stdin is not None
        if writer.stdout.readline().strip() != "ready":
            raise RuntimeError("the redis client did not load its keys")
        writer.stdin.write("go\n")
        writer.stdin.flush()
        yield server.pid, Client(writer)
    finally:
        for p in (writer, server):
            if p is not None:
                p.kill()
                p.wait()


@contextmanager
def rate_target(tmp: Path, args: argparse.Namespace) -> Iterator[tuple[int, Client | None]]:
    binary = tmp / "bench_target"
    subprocess.run(["cc", "-O2", "-pthread", "-o", str(binary), str(TOOLS / "bench_target.c"), "-lm"], check=True)
    t = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp)
    assert t.stdin is not None and t.stdout is not None

    def cmd(line: str) -> str:
        t.stdin.write(line + "\n")  # type: ignore[union-attr]
        t.stdin.flush()  # type: ignore[union-attr]
        return t.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        ready = t.stdout.readline().split()
        cmd(f"alloc {args.mib} random")
        if not cmd(f"rate {args.mbps:g}").startswith("ok"):
            raise RuntimeError("bench_target refused the rate")
        yield int(ready[1]), None
    finally:
        t.kill()
        t.wait()


def ckpt_dump(checkout: Path, pid: int, images: Path) -> dict:
    """One ``ckpt dump --json`` of that checkout; its summary, with the dump's peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    with tempfile.TemporaryFile() as out:
        dump = subprocess.Popen([sys.executable, "-m", "ckpt", "dump", "--pid", str(pid), "-D", str(images),
                                 "--json"], env=env, cwd="/", stdout=out)
        _, status, usage = os.wait4(dump.pid, 0)
        dump.returncode = os.waitstatus_to_exitcode(status)
        if dump.returncode:
            raise RuntimeError(f"ckpt dump exited {dump.returncode}")
        out.seek(0)
        summary = json.loads(out.read())
    summary["max_rss_mib"] = usage.ru_maxrss / 1024
    return summary


def criu_series(criu: Path, args: argparse.Namespace) -> tuple[list[tuple[float, int]], tuple[float, float] | None]:
    """CRIU 4.2 on the same load: it cannot dump incrementally on this kernel (no
    soft-dirty: /work/shared/criu/README), so each checkpoint is a full ``criu dump
    --leave-running``, which keeps the target frozen throughout; (seconds, image bytes)
    per dump, and the redis client's worst stalls (:func:`stalls`; None for ``rate``)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-once-criu-"))
    out = []
    try:
        target = redis_target if args.target == "redis" else rate_target
        with target(tmp, args) as (pid, client):
            if client is not None:
                client.replies()   # from here on
            spans = []
            for n in range(args.criu_dumps):
                time.sleep(args.period)
                images = tmp / f"criu{n}"
                images.mkdir()
                t0 = time.monotonic()
                subprocess.run([str(criu), "dump", "-t", str(pid), "-D", str(images), "--shell-job",
                                "--leave-running", "--tcp-established", "--network-lock", "skip", "-o", "dump.log"], check=True, capture_output=True, timeout=600)
                spans.append((t0, time.monotonic()))
                out.append((time.monotonic() - t0, sum(f.stat().st_size for f in images.rglob("*") if f.is_file())))
            time.sleep(args.period)
            stall = stalls(client.replies(), spans) if client is not None else None
        return out, stall
    finally:
        if not args.keep_criu_logs:
            shutil.rmtree(tmp, ignore_errors=True)


def series(checkout: Path, args: argparse.Namespace) -> tuple[dict, list[dict], tuple[float, float] | None]:
    """One full dump then the incrementals; with redis, the client's worst stalls during
    the incrementals and outside them (:func:`stalls`), else None."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-once-"))
    try:
        target = redis_target if args.target == "redis" else rate_target
        with target(tmp, args) as (pid, client):
            time.sleep(args.period)
            full = ckpt_dump(checkout, pid, tmp / "images")
            if client is not None:
                client.replies()   # the incrementals' series from here on
            incs, spans = [], []
            for _ in range(args.dumps):
                time.sleep(args.period)
                t0 = time.monotonic()
                incs.append(ckpt_dump(checkout, pid, tmp / "images"))
                spans.append((t0, time.monotonic()))
            time.sleep(args.period)
            stall = stalls(client.replies(), spans) if client is not None else None
        return full, incs, stall
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", type=Path, help="a ckpt checkout (repeat); default: this one")
    p.add_argument("--target", choices=["redis", "rate"], default="redis")
    p.add_argument("--dumps", type=int, default=10)
    p.add_argument("--period", type=float, default=1.0)
    p.add_argument("--sets", type=float, default=20000, help="redis: SET/s")
    p.add_argument("--keys", type=int, default=200000, help="redis: keys loaded")
    p.add_argument("--value", type=int, default=1024, help="redis: value bytes")
    p.add_argument("--mib", type=int, default=256, help="rate: MiB of the region")
    p.add_argument("--mbps", type=float, default=50, help="rate: MB/s rewritten")
    p.add_argument("--criu", type=Path, help="CRIU binary for the baseline (e.g. /work/shared/criu/criu)")
    p.add_argument("--criu-dumps", type=int, default=3)
    p.add_argument("--keep-criu-logs", action="store_true", help="keep CRIU's images and dump.log (debugging)")
    args = p.parse_args(argv)
    checkouts = args.ckpt or [TOOLS.parent]
    load = (f"redis, {args.keys} keys x {args.value} B, {args.sets:g} SET/s" if args.target == "redis"
            else f"bench_target, {args.mib} MiB, {args.mbps:g} MB/s of random pages")
    print(f"{load}; 1 full + {args.dumps} incrementals, one per {args.period:g} s; median [min-max]")
    for checkout in checkouts:
        full, incs, stall = series(checkout, args)
        full_mib = full["bytes_compressed"] / 2**20
        print(f"\n{checkout}: full {full_mib:.1f} MiB compressed, {full['pages_stored']} pages, "
              f"frozen {full['frozen_ms']:.1f} ms")
        rows = [
            ("incremental, MiB compressed", [d["bytes_compressed"] / 2**20 for d in incs]),
            ("incremental, % of the full", [100 * d["bytes_compressed"] / full["bytes_compressed"] for d in incs]),
            ("pages in pages.ckpt (raw/4 KiB)", [d["bytes_raw"] / PAGE for d in incs]),
            ("unique pages indexed", [float(d["pages_stored"]) for d in incs]),
            ("pages written, frozen round", [float(d["pages_written"]) for d in incs]),
            ("frozen ms", [d["frozen_ms"] for d in incs]),
            ("wall ms", [d["wall_ms"] for d in incs]),
            ("dump's peak RSS, MiB", [d["max_rss_mib"] for d in incs]),
        ]
        for name, values in rows:
            print(f"  {name:36s} {spread(values, 10)}")
        if stall is not None:
            print(f"  {'client worst stall, ms':36s} {stall[0]:10.2f} during the dumps, {stall[1]:.2f} outside")
    if args.criu is not None:
        criu, stall = criu_series(args.criu, args)
        print(f"\nCRIU 4.2 ({args.criu}): full dumps only on this kernel, target frozen throughout")
        print(f"  {'checkpoint, MiB (raw pages)':36s} {spread([b / 2**20 for _, b in criu], 10)}")
        print(f"  {'frozen ms (= the whole dump)':36s} {spread([t * 1e3 for t, _ in criu], 10)}")
        if stall is not None:
            print(f"  {'client worst stall, ms':36s} {stall[0]:10.2f} during the dumps, {stall[1]:.2f} outside")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark ckpt against baselines measured in the same run.

    python tools/bench.py [--quick] [--json FILE] [--plot FILE] [--only 1,2,...]

Starts its own targets (a C program compiled at run time from
``tools/bench_target.c``, and a CPython process with a large heap), measures,
and prints one table: each ckpt figure next to its baseline, the ratio
(ckpt figure / baseline), the target the project set and whether it was met.
Figures are medians of several repetitions after a warm-up; the spread
``[min-max]`` follows each figure.  ``--quick`` runs the same code on small
sizes with one repetition (a smoke check, under a minute); its verdicts are
indicative only.  Must run as root (ckpt ptraces the targets).

Scenarios and their baselines:

1. Finding dirty pages.  A C target maps 16 GiB (1 and 4 GiB are the first
   part of it), fills it, and is checkpointed once so that ckpt registers and
   write-protects it (a tracking holder keeps the userfaultfd).  Each round
   the target writes one word into 0 / 0.1 / 1 / 10 % of the pages of the
   measured range, scattered (each page with that probability) or contiguous
   (one run), and ckpt's ``PagemapScanner.collect_written`` finds and re-arms
   them.  Figure: ms per GiB scanned.  Baseline: reading ``/proc/PID/pagemap``
   for the same range (8 bytes per page, 4 MiB preads) -- the least a
   soft-dirty tool must do (it would still have to parse it and write
   ``clear_refs``).  The kernel's own time (the ioctls without decoding) and
   the cost of the first write to a protected page (write loop timed by the
   target, protected vs not) are recorded too.
2. Incremental dump.  A 4 GiB target of mixed content (random / zeros /
   text); full dumps, then incremental one-shot dumps (a new ``Dumper`` each
   time, continuing from the holder, as ``ckpt dump`` run again does) after
   the target wrote 0.01-30 % of its pages, scattered.  Figures: wall time,
   frozen time, bytes written, at 1 %.  Baseline: a full dump of the same
   target; bytes are also compared with the zstd size (level 1, 1 MiB frames)
   of exactly the pages the target wrote.  The sweep is the plot.
3. Full dump, 1 GiB of mixed content and a 1 GiB CPython heap.  Figures:
   MB/s of memory dumped (present pages / wall time of ``Dumper.dump``),
   image size, frozen time per GiB, peak RSS of ckpt (VmHWM of a child
   process that runs the dump; its timings are the warm-up).  Baselines:
   ``process_vm_readv`` of the same pages into a reused buffer (the ceiling),
   and the same dump with compression off.
4. Restore of scenario 3's compressed images (a copy of the target, which
   keeps running).  Figure: wall time of ``ckpt.restore(detach=True)``,
   which returns once the process runs again (checked by a command over a
   FIFO, and once by comparing a checksum of the whole region).  Baseline:
   reading and decompressing the same memory from the images alone
   (``Checkpoint.iter_memory``).
5. Migration.  A 2 GiB target rewriting random whole pages at 50 MB/s;
   three pre-dumps back to back, then a dump that kills it.  Figure: frozen
   time of that final dump.  Baseline: frozen time of a single full dump of
   the same target.
6. Cost to the target.  A 64 MiB region written by a loop as fast as it can,
   sequentially or at random 8-byte offsets; the target counts the bytes.
   Throughput while ckpt checkpoints it every 1 s and every 100 ms (one
   ``Dumper`` session, as ``ckpt dump --every``) vs the same loop untracked,
   in alternating windows.  For the random writer the expected loss is the
   kernel's first-write fault times the distinct pages written per period
   (N (1 - exp(-w/N)) for w writes into N pages); the table shows the
   arithmetic.

7. Side by side with CRIU 4.2 (``../shared/criu/criu``, or ``$CKPT_BENCH_CRIU``).
   A C target holding 1 GiB (half random, a quarter zeros, a quarter text),
   its stdin and stdout on named FIFOs (CRIU reopens FIFOs by path, so the
   benchmark can talk to what it restores).  Paired repetitions, each running
   every variant once: ``ckpt dump`` (the command, a full dump each time) by
   default (zstd-1, fsync), with ``--compress 0``, and with ``--no-fsync``
   where the checkout has it, against ``criu dump --leave-running`` (which
   never fsyncs; "criu dump + sync" adds fsync of its files).  Then
   ``ckpt restore -d`` (the target keeps running; the copy gets new FIFOs)
   against ``criu restore -d`` after a ``criu dump`` that ended the target
   (CRIU restores the same pid): wall time of each command until it returned
   with the process running; each restored process answers over its FIFOs,
   and the first of each compares a checksum of the whole region.
8. Redis under 20k SET/s (``tools/bench_once.py``): redis-server with
   200,000 keys of 1 KiB, a client sending 20,000 SET/s of random keys; one
   full ``ckpt dump`` then 10 incrementals one second apart.  Figures: frozen
   time and bytes per incremental, and the client's worst wait for a batch's
   replies during the dumps (its worst outside them in the notes).  Baseline:
   ``criu dump --leave-running`` of the same load, 10 times (CRIU cannot dump
   incrementally on this kernel: its frozen time is the whole dump).
9. Many mappings (``tools/bench_maps.py``): ``tests/programs/many_maps.c``
   with 20,000 one-page mappings that never merge (CRIU's zdtm maps06).
   Figures: frozen time of an incremental after 3 pages were written, and
   ``ckpt restore -d`` until it returned.  Baselines: ``criu dump`` (frozen
   throughout) and ``criu restore -d`` of the same target.
10. Lazy restore.  (a) The C target with 4 GiB (half random), dumped by
   ckpt and by CRIU (which ends it); then, paired per repetition,
   ``ckpt.restore(detach=True)`` eager and with ``lazy=True`` (in-process:
   seconds until it returned with the process running, until it answered
   over its FIFOs, and, lazily, until the page server exited with every
   page resident), the ``ckpt restore --lazy -d`` command, and ``criu
   restore -d``.  The first restore of each kind compares the whole
   region's checksum.  (b) redis-server with 1 GiB of values (``DEBUG
   POPULATE``): from the start of ``ckpt restore -d`` (eager, ``--lazy``) or
   ``criu restore -d`` until a GET over TCP returned the right value.  The
   lazy rows appear when the checkout's ``ckpt restore`` has ``--lazy``.

ckpt commands run from cached bytecode, as an installed ckpt does.

Alongside, the run measures what bounds these figures on the machine that
day: memcpy between warm buffers, the first touch of fresh memory, file write
with fsync where the images go, zstd level 1 alone on scenario 3's memory,
and the first write to a write-protected page.  Sizes of a ``--quick`` run:
scenario 1 over 0.25 and 1 GiB, 0.5 GiB in 2, 0.125 GiB in 3-4 and 7, 0.25 GiB in 5,
1 s windows in 6, 20,000 keys and 3 dumps in 8, 2,000 mappings in 9,
0.25 GiB and redis with 64 MiB in 10.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime
import fcntl
import json
import math
import mmap
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096
MiB = 1 << 20
GiB = 1 << 30
MB = 1e6
TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
PM_SCAN_WP_MATCHING = 1
PAGE_IS_WRITTEN = 1 << 1
FAULT_US_KERNEL_FACTS = 0.71  # KERNEL-FACTS.md F, used only if scenario 1 did not run

PYHEAP_SCRIPT = r'''
import os, random, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
rng = random.Random(20240601)
heap = {}
target = int(sys.argv[1]) * 1024 * 1024
i = 0
while rss() < target:
    for _ in range(20000):
        k = i % 5
        if k == 0:
            v = rng.randbytes(24).hex()
        elif k == 1:
            v = rng.getrandbits(62) | (1 << 40)
        elif k == 2:
            v = rng.random() * 1e6
        elif k == 3:
            v = ("user%d" % rng.randrange(100000), rng.randrange(1 << 30))
        else:
            v = [rng.randrange(1000) for _ in range(4)]
        heap["key%09d" % i] = v
        i += 1
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    w = line.split()
    if w and w[0] == "exit":
        break
    print("ok", len(heap), flush=True)
'''


# -- results -----------------------------------------------------------------------------


@dataclass
class Sample:
    """Repeated measurements of one quantity."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


@dataclass
class Result:
    """One row of the table (and of --json)."""

    scenario: int
    case: str
    value: float
    unit: str
    spread: tuple[float, float]
    baseline_name: str
    baseline: float | None
    baseline_spread: tuple[float, float] | None
    ratio: float | None          # value / baseline
    target: str
    verdict: str                 # "met" | "missed" | "info"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        fig = "-" if math.isnan(self.value) else \
            f"{fmt(self.value)} {self.unit} [{fmt(self.spread[0])}-{fmt(self.spread[1])}]"
        if self.baseline is None:
            base = self.baseline_name
        else:
            base = f"{self.baseline_name} {fmt(self.baseline)} {self.unit}"
            if self.baseline_spread:
                base += f" [{fmt(self.baseline_spread[0])}-{fmt(self.baseline_spread[1])}]"
        ratio = "" if self.ratio is None else f"{fmt(self.ratio)}x"
        return [str(self.scenario), self.case, fig, base, ratio, self.target, self.verdict]


def gib_label(mib: int) -> str:
    return f"{mib / 1024:g} GiB"


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2g}"


def result(scenario: int, case: str, value: Sample, unit: str, baseline_name: str,
           baseline: Sample | None, target: str, ok: bool | None, notes: str = "",
           **extra: Any) -> Result:
    """A row; ``ok`` None means informational (no target applies)."""
    base = baseline.median if baseline is not None else None
    ratio = value.median / base if base else None
    verdict = "info" if ok is None else ("met" if ok else "missed")
    return Result(scenario, case, value.median, unit, (value.lo, value.hi), baseline_name, base,
                  (baseline.lo, baseline.hi) if baseline is not None else None, ratio, target,
                  verdict, notes, extra)


def render_table(rows: Sequence[Result]) -> str:
    header = ["#", "case", "ckpt figure [min-max]", "baseline [min-max]", "ratio", "target", "verdict"]
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.scenario}/{r.case}: {r.notes}" for r in rows if r.notes]
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


# -- configuration -----------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    reps: int
    scan_reps: int
    scan_sizes_mib: list[int]
    scan_fractions: list[float]
    incr_mib: int
    sweep_fractions: list[float]
    full_mib: int
    migr_mib: int
    migr_rate_mbps: float
    loop_mib: int
    loop_window_s: float
    maps: int
    redis_keys: int
    redis_dumps: int
    lazy_mib: int
    redis_lazy_mib: int

    @classmethod
    def make(cls, quick: bool) -> "Config":
        if quick:
            return cls(quick=True, reps=1, scan_reps=1, scan_sizes_mib=[256, 1024],
                       scan_fractions=[0, 1, 10], incr_mib=512, sweep_fractions=[1, 10], full_mib=128,
                       migr_mib=256, migr_rate_mbps=50, loop_mib=64, loop_window_s=1.0, maps=2000,
                       redis_keys=20000, redis_dumps=3, lazy_mib=256,
                       redis_lazy_mib=64)
        return cls(quick=False, reps=3, scan_reps=5, scan_sizes_mib=[1024, 4096, 16384],
                   scan_fractions=[0, 0.1, 1, 10], incr_mib=4096, sweep_fractions=[0.01, 0.1, 1, 3, 10, 30],
                   full_mib=1024, migr_mib=2048, migr_rate_mbps=50, loop_mib=64, loop_window_s=4.0,
                   maps=20000, redis_keys=200000, redis_dumps=10,
                   lazy_mib=4096, redis_lazy_mib=1024)


# -- processes ---------------------------------------------------------------------------


class Target:
    """A target process driven by one-line commands on stdin, one-line answers on stdout."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                     start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._buf = b""
        self.pid = self.proc.pid
        first = self.readline(300).split()
        if first[:1] != ["ready"]:
            raise RuntimeError(f"{name} did not start: {first}")

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError(f"{self.name} (pid {self.pid}) did not answer within {timeout} s")
            chunk = os.read(self._out, 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} (pid {self.pid}) exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def cmd(self, line: str, timeout: float = 600) -> list[str]:
        """Send a command; return the words of the answer after ``ok``."""
        os.write(self._in, line.encode() + b"\n")
        words = self.readline(timeout).split()
        if words[:1] != ["ok"]:
            raise RuntimeError(f"{self.name}: {line!r} -> {' '.join(words)}")
        return words[1:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.stdout.close()  # type: ignore[union-attr]


class Restored:
    """A restored copy of a target, talking over two FIFOs (its fds 0 and 1)."""

    def __init__(self, pid: int, fifo_in: int, fifo_out: int) -> None:
        self.pid = pid
        self._in, self._out, self._buf = fifo_in, fifo_out, b""

    def cmd(self, line: str, timeout: float = 60) -> list[str]:
        os.write(self._in, line.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError(f"restored pid {self.pid} did not answer {line!r}")
            self._buf += os.read(self._out, 65536)
        got, _, self._buf = self._buf.partition(b"\n")
        words = got.decode().split()
        if words[:1] != ["ok"]:
            raise RuntimeError(f"restored pid {self.pid}: {line!r} -> {got!r}")
        return words[1:]


class Lab:
    """Owns every process and directory the benchmark creates, and removes them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.targets: list[Target] = []
        self.restored: list[int] = []
        self.fifo_targets: list[FifoTarget] = []
        self._binary: Path | None = None
        self._n = 0

    def path(self, name: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:03d}-{name}"

    def binary(self) -> Path:
        if self._binary is None:
            out = self.tmp / "bench_target"
            subprocess.run(["cc", "-O2", "-pthread", "-o", str(out), str(TOOLS / "bench_target.c"), "-lm"],
                           check=True)
            self._binary = out
        return self._binary

    def c_target(self, mib: int, content: str) -> tuple[Target, int]:
        """A C target holding ``mib`` MiB of ``content``; returns it and the region's address."""
        wait_for_memory(mib)
        t = self._start([str(self.binary())], "bench_target")
        addr = int(t.cmd(f"alloc {mib} {content}")[0], 16)
        return t, addr

    def py_target(self, mib: int) -> Target:
        wait_for_memory(mib)
        script = self.tmp / "pyheap.py"
        script.write_text(PYHEAP_SCRIPT)
        return self._start([sys.executable, str(script), str(mib)], "pyheap")

    def _start(self, argv: list[str], name: str) -> Target:
        t = Target(argv, name)
        self.targets.append(t)
        # Should memory run out, the OOM killer picks our target, not other work on the machine.
        with contextlib.suppress(OSError):
            Path(f"/proc/{t.pid}/oom_score_adj").write_text("1000")
        return t

    def drop(self, t: Target) -> None:
        untrack(t.pid)
        t.kill()
        if t in self.targets:
            self.targets.remove(t)

    def kill_restored(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        if pid in self.restored:
            self.restored.remove(pid)

    def close(self) -> None:
        for pid in list(self.restored):
            self.kill_restored(pid)
        for ft in self.fifo_targets:
            with contextlib.suppress(Exception):
                untrack(ft.pid)
                ft.close()
        for t in list(self.targets):
            with contextlib.suppress(Exception):
                self.drop(t)
        shutil.rmtree(self.tmp, ignore_errors=True)


def available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def wait_for_memory(mib: int, headroom_mib: int = 2048, timeout: float = 120) -> None:
    """Wait (up to ``timeout``) until ``mib`` MiB fit in available memory with headroom
    to spare for the rest of the machine; raise MemoryError if they never do."""
    deadline = time.monotonic() + timeout
    while available_mib() < mib + headroom_mib:
        if time.monotonic() > deadline:
            raise MemoryError(f"{mib} MiB needed, {available_mib()} MiB available (with {headroom_mib} MiB "
                              "left for other work)")
        time.sleep(2)


def untrack(pid: int) -> None:
    """Stop ckpt's tracking of ``pid`` and wait until its holder is gone (the
    kernel then disarms the target), so the next dump starts from scratch."""
    import ckpt

    record, _ = ckpt.tracking.lookup(pid)
    ckpt.tracking.stop(pid)
    if record is not None:
        wait_gone(record.holder_pid)


def wait_gone(pid: int, timeout: float = 10, poll: float = 0.005) -> float:
    """Wait until ``pid`` has exited (a zombie counts; reaped if it is our child); when, on
    the perf_counter clock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return time.perf_counter()
        except FileNotFoundError:
            return time.perf_counter()
        time.sleep(poll)
    raise TimeoutError(f"process {pid} did not exit")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def dump_once(pid: int, images: Path, *, level: int = 1, pre: bool = False, after: str = "run"
              ) -> tuple[Any, float]:
    """One dump by a fresh Dumper (a one-shot ``ckpt dump``); the report and the wall
    time of ``Dumper.dump``."""
    import ckpt

    with ckpt.Dumper(pid, images, compression_level=level) as d:
        t0 = time.perf_counter()
        report = d.dump(pre=pre, after=after)  # type: ignore[arg-type]
        return report, time.perf_counter() - t0


def child_dump(pid: int, images: Path, level: int) -> dict[str, Any]:
    """Run one dump in a child process; its report, wall time and peak RSS (VmHWM)."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-dump", str(pid),
                          str(images), str(level)], check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_dump_main(pid: int, images: str, level: int) -> None:
    import ckpt

    with ckpt.Dumper(pid, images, compression_level=level) as d:
        t0 = time.perf_counter()
        r = d.dump()
        wall = time.perf_counter() - t0
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    cp = r.checkpoint
    print(json.dumps({"wall": wall, "frozen": r.frozen_seconds, "present": cp.pages_present * PAGE,
                      "bytes": dir_bytes(cp.path), "kind": r.kind, "hwm": hwm}))


def ranges_of_pages(addresses: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a in sorted(addresses):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], a + PAGE)
        else:
            out.append((a, a + PAGE))
    return out


def batches(rs: Sequence[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    batch: list[tuple[int, int]] = []
    n = 0
    for s, e in rs:
        while s < e:
            take = min(e - s, size - n)
            batch.append((s, s + take))
            n += take
            s += take
            if n == size:
                yield batch
                batch, n = [], 0
    if batch:
        yield batch


def raw_copy_seconds(pid: int, rs: Sequence[tuple[int, int]], buf: bytearray) -> float:
    """process_vm_readv of ``rs`` into ``buf`` (reused, already touched), batch by batch."""
    from ckpt._sys.vm import read_ranges

    t0 = time.perf_counter()
    for batch in batches(rs, len(buf)):
        read_ranges(pid, batch, buf)
    return time.perf_counter() - t0


def zstd_seconds(pid: int, rs: Sequence[tuple[int, int]], buf: bytearray) -> float:
    """Time zstd level 1 alone, on one thread, over the target's pages ``rs`` in
    1 MiB frames (the copying into ``buf`` is not timed)."""
    import zstandard

    from ckpt._sys.vm import read_ranges

    c = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    spent = 0.0
    for batch in batches(rs, len(buf)):
        n = sum(e - s for s, e in batch)
        read_ranges(pid, batch, buf)
        view = memoryview(buf)
        t0 = time.perf_counter()
        for off in range(0, n, MiB):
            c.compress(view[off : min(n, off + MiB)])
        spent += time.perf_counter() - t0
    return spent


def zstd_size_of(pid: int, rs: Sequence[tuple[int, int]]) -> int:
    """Compressed size of the target's pages ``rs`` as ckpt would frame them
    (zstd level 1, 1 MiB frames, checksum and content size on)."""
    import zstandard

    from ckpt._sys.vm import read_ranges

    c = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    buf = bytearray(MiB)
    total = 0
    for batch in batches(rs, MiB):
        n = sum(e - s for s, e in batch)
        if read_ranges(pid, batch, buf):
            raise RuntimeError("written pages could not be read")
        total += len(c.compress(memoryview(buf)[:n]))
    return total


# -- scenario 1: finding dirty pages -----------------------------------------------------


def read_pagemap(fd: int, start: int, end: int, buf: bytearray) -> None:
    off, stop = start // PAGE * 8, end // PAGE * 8
    view = memoryview(buf)
    while off < stop:
        n = os.preadv(fd, [view[: min(len(buf), stop - off)]], off)
        if n <= 0:
            raise OSError("short read of /proc/PID/pagemap")
        off += n


def kernel_scan(fd: int, start: int, end: int, vec: array.array) -> int:  # type: ignore[type-arg]
    """The kernel's part of collect-and-re-arm: the same PAGEMAP_SCAN ioctls
    (WP_MATCHING, category and return mask WRITTEN), results left undecoded.
    Returns the number of regions."""
    vec_len = len(vec) // 3
    pos, total = start, 0
    while pos < end:
        arg = bytearray(struct.pack("=12Q", 96, PM_SCAN_WP_MATCHING, pos, end, 0, vec.buffer_info()[0],
                                    vec_len, 0, 0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN))
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        total += n
        walk_end = struct.unpack_from("=Q", arg, 32)[0]
        if n < vec_len or walk_end >= end:
            break
        pos = max(walk_end, vec[3 * n - 2])  # KERNEL-FACTS.md F: walk_end may be stale
    return total


@dataclass
class ScanProbe:
    """What scenario 1 uses to look at one armed target."""

    target: Target
    base: int
    scanner: Any            # ckpt's PagemapScanner
    pagemap_fd: int
    pagemap_buf: bytearray
    vec: array.array        # type: ignore[type-arg]
    seed: int = 0

    def write(self, size_mib: int, frac: float, pattern: str) -> tuple[int, int]:
        """Have the target write ``frac`` % of the first ``size_mib``; (pages, ns it took)."""
        self.seed += 1
        pages, ns = map(int, self.target.cmd(f"write 0 {size_mib} {frac:g} {pattern} {self.seed}"))
        return pages, ns


def scan_case(probe: ScanProbe, size_mib: int, frac: float, pattern: str, reps: int
              ) -> tuple[Sample, Sample, Sample, list[int], bool, list[float]]:
    """Rounds of write + scan: ckpt's collect_written, the ioctls alone (after a
    second write), the pagemap read.  Returns the three samples in ms/GiB, the
    region counts, whether ckpt found exactly the pages written, and the target's
    write time per page (ns)."""
    end = probe.base + size_mib * MiB
    gib = size_mib * MiB / GiB
    scan, kern, pmap, regions, write_ns = [], [], [], [], []
    exact = True
    for _ in range(reps):
        pages, ns = probe.write(size_mib, frac, pattern)
        write_ns.append(ns / pages if pages else math.nan)
        t0 = time.perf_counter()
        written = probe.scanner.collect_written(probe.base, end)
        scan.append((time.perf_counter() - t0) * 1e3 / gib)
        exact &= sum(e - s for s, e in written) // PAGE == pages
        regions.append(len(written))
        probe.write(size_mib, frac, pattern)
        t0 = time.perf_counter()
        kernel_scan(probe.pagemap_fd, probe.base, end, probe.vec)
        kern.append((time.perf_counter() - t0) * 1e3 / gib)
        t0 = time.perf_counter()
        read_pagemap(probe.pagemap_fd, probe.base, end, probe.pagemap_buf)
        pmap.append((time.perf_counter() - t0) * 1e3 / gib)
    return Sample(scan), Sample(kern), Sample(pmap), regions, exact, write_ns


def scenario_1(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    from ckpt._sys.pagemap import PagemapScanner

    rows: list[Result] = []
    sizes = list(cfg.scan_sizes_mib)
    try:
        wait_for_memory(max(sizes))
    except MemoryError as err:
        # Other work on the machine holds memory: measure the sizes that fit, say so.
        fitting = [m for m in sizes if m + 2048 <= available_mib()]
        if not fitting:
            raise
        rows.append(Result(1, f"{', '.join(gib_label(m) for m in sizes if m not in fitting)} armed",
                           math.nan, "", (math.nan, math.nan), "", None, None, None, "", "skipped",
                           notes=str(err)))
        sizes = fitting
    biggest = max(sizes)
    # The first write to a write-protected page is timed on this size, 10 % scattered.
    probe_mib = min(sizes, key=lambda m: abs(m - 4096))
    t, base = lab.c_target(biggest, "const")
    images = lab.path("s1")
    try:
        # The target's write loop on populated, unprotected memory (warm).
        unarmed = []
        for seed in (901, 902, 903):
            pages, ns = map(int, t.cmd(f"write 0 {probe_mib} 10 scattered {seed}"))
            unarmed.append(ns / pages)
        # Arm everything the way ckpt does: one dump; a holder keeps the uffd.
        report, arm_s = dump_once(t.pid, images)
        probe = ScanProbe(t, base, PagemapScanner(t.pid), os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY),
                          bytearray(4 * MiB), array.array("Q", bytes(8192 * 24)))
        armed: list[float] = []
        try:
            probe.scanner.collect_written(base, base + biggest * MiB)
            cases = [(0.0, "scattered")] + [(f, p) for f in cfg.scan_fractions if f > 0
                                            for p in ("scattered", "contiguous")]
            for size_mib in sizes:
                scan_case(probe, size_mib, 1, "scattered", 1)  # warm-up
                # at least 16 GiB scanned per case: a 1 GiB scan takes ~1 ms, close to the noise
                reps = 1 if cfg.quick else max(cfg.scan_reps, 16384 // size_mib)
                for frac, pattern in cases:
                    s, k, p, regions, exact, write_ns = scan_case(probe, size_mib, frac, pattern, reps)
                    if frac == 10 and pattern == "scattered" and size_mib == probe_mib:
                        armed += write_ns
                    gated = frac <= 1
                    ok = (s.median <= 1.0 and s.median * 10 <= p.median) if gated else None
                    notes = [] if exact else ["collect_written did not report exactly the pages written"]
                    if ok is False or not gated:
                        notes.append(f"the ioctls alone {fmt(k.median)} ms/GiB [{fmt(k.lo)}-{fmt(k.hi)}]; "
                                     f"{regions[-1]} regions for ckpt to decode")
                    label = "0 % written" if frac == 0 else f"{frac:g} % {pattern}"
                    rows.append(result(1, f"{gib_label(size_mib)} armed, {label}", s, "ms/GiB", "pagemap read",
                                       p, "<=1 ms/GiB, >=10x faster" if gated else "-", ok,
                                       notes="; ".join(notes), kernel_ms_per_gib=k.median,
                                       kernel_spread=(k.lo, k.hi), found_exact=exact, regions=regions[-1]))
        finally:
            probe.scanner.close()
            os.close(probe.pagemap_fd)
        data["fault_us"] = (statistics.median(armed) - statistics.median(unarmed)) / 1e3 if armed else None
        data["s1"] = {"arm_dump_s": arm_s, "arm_dump_frozen_s": report.frozen_seconds,
                      "write_ns_per_page_unarmed": unarmed, "write_ns_per_page_armed": armed}
    finally:
        lab.drop(t)
        shutil.rmtree(images, ignore_errors=True)
    return rows


# -- scenario 2: incremental dump --------------------------------------------------------


def scenario_2(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    rows: list[Result] = []
    t, base = lab.c_target(cfg.incr_mib, "mixed")
    try:
        # Baseline: full dumps (each from scratch), the last one starts the chain.
        full_wall, full_frozen, full_bytes = [], [], []
        n_full = cfg.reps if cfg.quick else cfg.reps + 1  # the first is a warm-up
        for rep in range(n_full):
            untrack(t.pid)
            images = lab.path("s2-full")
            r, wall = dump_once(t.pid, images)
            if rep or cfg.quick:
                full_wall.append(wall * 1e3)
                full_frozen.append(r.frozen_seconds * 1e3)
                full_bytes.append(dir_bytes(r.checkpoint.path) / MB)
            if rep < n_full - 1:
                shutil.rmtree(images)
        chain = images
        seed = 1000
        pages_file = lab.tmp / "written.pages"

        def incremental(frac: float) -> dict[str, float]:
            nonlocal seed
            seed += 1
            pages, _ = map(int, t.cmd(f"write 0 {cfg.incr_mib} {frac} scattered {seed} {pages_file}"))
            r, wall = dump_once(t.pid, chain)
            if r.kind != "incremental":
                raise RuntimeError(f"expected an incremental dump, got {r.kind}: {r.notes}")
            addrs = array.array("Q", pages_file.read_bytes())
            return {"wall": wall * 1e3, "frozen": r.frozen_seconds * 1e3,
                    "bytes": dir_bytes(r.checkpoint.path) / MB,
                    "zstd_written": zstd_size_of(t.pid, ranges_of_pages(addrs)) / MB,
                    "pages": pages, "reported": r.pages_written, "copied": r.pages_copied}

        incremental(1)  # warm-up
        sweep = []
        at_1 = None
        for frac in cfg.sweep_fractions:
            reps = [incremental(frac) for _ in range(cfg.reps + (2 if frac == 1 and not cfg.quick else 0))]
            point = {k: Sample([x[k] for x in reps]) for k in reps[0]}
            sweep.append({"percent": frac, **{k: [v.median, v.lo, v.hi] for k, v in point.items()}})
            if frac == 1:
                at_1 = point
        data["sweep"] = {"target_mib": cfg.incr_mib, "points": sweep,
                         "full": {"wall": Sample(full_wall).median, "frozen": Sample(full_frozen).median,
                                  "bytes": Sample(full_bytes).median}}
        assert at_1 is not None
        case = f"incremental, {gib_label(cfg.incr_mib)}, 1 % scattered"
        rows.append(result(2, f"{case}: wall", at_1["wall"], "ms", "full dump", Sample(full_wall),
                           "<=150 ms", at_1["wall"].median <= 150))
        rows.append(result(2, f"{case}: frozen", at_1["frozen"], "ms", "full dump", Sample(full_frozen),
                           "<=25 ms", at_1["frozen"].median <= 25))
        rows.append(result(2, f"{case}: bytes written", at_1["bytes"], "MB", "full dump", Sample(full_bytes),
                           "-", None))
        ratio_ok = at_1["bytes"].median <= 1.5 * at_1["zstd_written"].median
        rows.append(result(2, f"{case}: bytes written", at_1["bytes"], "MB", "zstd of written pages",
                           at_1["zstd_written"], "<=1.5x", ratio_ok,
                           pages_written=at_1["pages"].median, pages_reported=at_1["reported"].median,
                           pages_copied=at_1["copied"].median))
    finally:
        lab.drop(t)
    return rows


# -- scenarios 3 and 4: full dump, restore -----------------------------------------------


def restore_once(lab: Lab, images: Path, check_sum: str | None) -> tuple[float, int]:
    """Restore the newest checkpoint of ``images``; wall time and pid (killed after)."""
    import ckpt

    fin, fout = lab.path("stdin.fifo"), lab.path("stdout.fifo")
    os.mkfifo(fin)
    os.mkfifo(fout)
    # Opened read-write here first, so that the restore's opens never block.
    fd_in = os.open(fin, os.O_RDWR | os.O_CLOEXEC)
    fd_out = os.open(fout, os.O_RDWR | os.O_CLOEXEC)
    pid = 0
    try:
        t0 = time.perf_counter()
        res = ckpt.restore(images, detach=True, stdin=fin, stdout=fout, stderr=os.devnull)
        wall = time.perf_counter() - t0
        pid = res.pid
        lab.restored.append(pid)
        r = Restored(pid, fd_in, fd_out)
        if check_sum is not None:
            got = r.cmd("sum")[0]
            if got != check_sum:
                raise RuntimeError(f"restored memory differs: sum {got} != {check_sum}")
        else:
            r.cmd("ping")
        return wall, pid
    finally:
        if pid:
            lab.kill_restored(pid)
        os.close(fd_in)
        os.close(fd_out)
        fin.unlink()
        fout.unlink()


def read_images_seconds(images: Path) -> tuple[float, int]:
    """Read and decompress every present page of the newest checkpoint (no restore)."""
    import ckpt

    cp = ckpt.ImageDir(images).checkpoints[-1]
    t0 = time.perf_counter()
    n = 0
    for _, view in cp.iter_memory(cp.present):
        n += len(view)
    return time.perf_counter() - t0, n


def scenario_3_4(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    rows3: list[Result] = []
    rows4: list[Result] = []
    copy_buf = bytearray(64 * MiB)
    for kind in ("mixed", "heap"):
        if kind == "mixed":
            t, _ = lab.c_target(cfg.full_mib, "mixed")
            name = f"{gib_label(cfg.full_mib)} mixed (C)"
            speed_target = 1000.0
            checksum = t.cmd("sum")[0]
        else:
            t = lab.py_target(cfg.full_mib)
            name = f"{gib_label(cfg.full_mib)} CPython heap"
            speed_target = 750.0
            checksum = None
        try:
            per_level: dict[int, dict[str, list[float]]] = {}
            keep: Path | None = None
            present_ranges: list[tuple[int, int]] = []
            for level in (1, 0):
                m: dict[str, list[float]] = {"speed": [], "frozen": [], "bytes": [], "ratio": [], "hwm": []}
                for rep in range(cfg.reps + 1):
                    untrack(t.pid)
                    images = lab.path(f"s3-{kind}-{level}")
                    if rep == 0:
                        # In a child process: peak RSS; its timings are the warm-up.
                        c = child_dump(t.pid, images, level)
                        m["hwm"].append(c["hwm"] / MB)
                    else:
                        r, wall = dump_once(t.pid, images, level=level)
                        present = r.checkpoint.pages_present * PAGE
                        m["speed"].append(present / wall / MB)
                        m["frozen"].append(r.frozen_seconds * 1e3 / (present / GiB))
                        m["bytes"].append(dir_bytes(r.checkpoint.path) / MB)
                        m["ratio"].append(dir_bytes(r.checkpoint.path) / present)
                        present_ranges = list(r.checkpoint.present)
                    if level == 1 and rep == cfg.reps:
                        keep = images
                    else:
                        shutil.rmtree(images)
                per_level[level] = m
            # The ceiling: the same pages copied into a buffer, nothing else.
            raw_copy_seconds(t.pid, present_ranges, copy_buf)  # warm-up
            present_bytes = sum(e - s for s, e in present_ranges)
            raw = Sample([present_bytes / raw_copy_seconds(t.pid, present_ranges, copy_buf) / MB
                          for _ in range(cfg.reps)])
            zstd_mb_s = present_bytes / zstd_seconds(t.pid, present_ranges, copy_buf) / MB
            disk = data.get("speeds", {}).get("write_fsync_mb_s")
            on, off = per_level[1], per_level[0]
            rows3.append(result(3, f"{name}: dump speed, zstd-1", Sample(on["speed"]), "MB/s",
                                "process_vm_readv", raw, f">={speed_target:g} MB/s",
                                Sample(on["speed"]).median >= speed_target, memory_mb=present_bytes / MB,
                                zstd_alone_mb_s=zstd_mb_s,
                                notes=f"zstd-1 alone on this memory: {zstd_mb_s:.0f} MB/s on one thread"))
            rows3.append(result(3, f"{name}: dump speed, compression off", Sample(off["speed"]), "MB/s",
                                "process_vm_readv", raw, ">=2500 MB/s", Sample(off["speed"]).median >= 2500,
                                notes=f"file write + fsync on this VM: {disk:.0f} MB/s" if disk else ""))
            img = Sample(on["bytes"])
            rows3.append(result(3, f"{name}: image size, zstd-1", img, "MB", "raw memory",
                                Sample([present_bytes / MB]), "<=1/3" if kind == "heap" else "-",
                                (Sample(on["ratio"]).median <= 1 / 3) if kind == "heap" else None,
                                uncompressed_image_mb=Sample(off["bytes"]).median))
            rows3.append(result(3, f"{name}: frozen time", Sample(on["frozen"]), "ms/GiB",
                                "compression off", Sample(off["frozen"]), "<=200 ms/GiB",
                                Sample(on["frozen"]).median <= 200))
            rows3.append(result(3, f"{name}: peak RSS of ckpt", Sample(on["hwm"]), "MB",
                                "compression off", Sample(off["hwm"]), "<=300 MB",
                                Sample(on["hwm"]).median <= 300))

            # Scenario 4: restore the compressed images (the target keeps running).
            assert keep is not None
            walls: list[float] = []
            for rep in range(cfg.reps + 1):
                wall, _ = restore_once(lab, keep, checksum if rep == 0 else None)
                if rep:
                    walls.append(wall)
            read_images_seconds(keep)  # warm-up
            reads = [read_images_seconds(keep)[0] for _ in range(cfg.reps)]
            gib = present_bytes / GiB
            w = Sample(walls)
            touch = data.get("speeds", {}).get("first_touch_us_per_page")
            touch_note = (f"; first touch of {present_bytes // PAGE} fresh pages at {touch:.2f} us = "
                          f"{present_bytes // PAGE * touch / 1e6:.2f} s" if touch else "")
            rows4.append(result(4, f"restore {name}", w, "s", "read+decompress", Sample(reads),
                                f"<={0.6 * gib:.2g} s (0.6 s/GiB)", w.median <= 0.6 * gib,
                                notes=f"{present_bytes / w.median / MB:.0f} MB/s restored, "
                                      f"{present_bytes / statistics.median(reads) / MB:.0f} MB/s read+decompressed"
                                      + touch_note,
                                restore_mb_s=present_bytes / w.median / MB))
            shutil.rmtree(keep)
        finally:
            lab.drop(t)
    return rows3 + rows4


# -- scenario 5: migration ---------------------------------------------------------------


def scenario_5(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    full, final, pre_walls, final_walls = [], [], [], []
    for _ in range(cfg.reps):
        t, _ = lab.c_target(cfg.migr_mib, "mixed")
        try:
            t.cmd(f"rate {cfg.migr_rate_mbps:g}")
            time.sleep(0.2 if cfg.quick else 1.0)
            images = lab.path("s5-full")
            r, _ = dump_once(t.pid, images)
            full.append(r.frozen_seconds * 1e3)
            shutil.rmtree(images)
            untrack(t.pid)
            import ckpt

            images = lab.path("s5-migrate")
            with ckpt.Dumper(t.pid, images) as d:
                walls = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    d.dump(pre=True)
                    walls.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = d.dump(after="kill")
                final_walls.append(time.perf_counter() - t0)
            final.append(r.frozen_seconds * 1e3)
            pre_walls.append(walls)
            t.proc.wait(10)
            shutil.rmtree(images)
        finally:
            lab.drop(t)
    f = Sample(final)
    base = Sample(full)
    data["s5"] = {"pre_dump_walls_s": pre_walls, "final_walls_s": final_walls}
    return [result(5, f"{gib_label(cfg.migr_mib)} writing {cfg.migr_rate_mbps:g} MB/s: 3 pre-dumps, dump --kill",
                   f, "ms frozen", "single full dump", base, "ratio <=0.1",
                   f.median * 10 <= base.median,
                   notes="pre-dump walls (s): " + ", ".join(f"{w:.2f}" for w in Sample(
                       [sum(x) for x in pre_walls]).values) + " (three each, summed)")]


# -- scenario 6: cost to the target ------------------------------------------------------


def loop_count(t: Target) -> tuple[int, int]:
    """Bytes the target's write loop has written so far, and the target's clock (ns)."""
    b, ns = map(int, t.cmd("count"))
    return b, ns


def rate_between(a: tuple[int, int], b: tuple[int, int]) -> float:
    return (b[0] - a[0]) / ((b[1] - a[1]) / 1e9)


def untracked_window(t: Target, seconds: float) -> float:
    """Bytes per second the loop writes while ckpt leaves it alone."""
    a = loop_count(t)
    time.sleep(seconds)
    return rate_between(a, loop_count(t))


def tracked_window(t: Target, images: Path, period: float, seconds: float,
                   stats: dict[str, list[float]]) -> tuple[float, float, int]:
    """The loop's bytes per second while one Dumper session checkpoints it every
    ``period`` for about ``seconds``; also the window's length and its checkpoints.

    The full dump that arms the region comes before the window opens; the
    checkpoints are due at period, 2 x period, ... and the window closes when
    the last one returns, so each period holds exactly one checkpoint.  When
    checkpoints take longer than the period they run back to back, and the
    window closes at the first one that ends after ``seconds``."""
    import ckpt

    n = max(1, round(seconds / period))
    with ckpt.Dumper(t.pid, images) as d:
        d.dump()
        a = loop_count(t)
        start = time.monotonic()
        for k in range(1, n + 1):
            wait = start + k * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            r = d.dump()
            stats["wall"].append(time.perf_counter() - t0)
            stats["frozen"].append(r.frozen_seconds)
            if time.monotonic() - start >= seconds:
                break
        b = loop_count(t)
    return rate_between(a, b), (b[1] - a[1]) / 1e9, k


def scenario_6(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    rows: list[Result] = []
    fault_us = data.get("fault_us") or FAULT_US_KERNEL_FACTS
    npages = cfg.loop_mib * MiB // PAGE
    for mode in ("seq", "random"):
        t, _ = lab.c_target(cfg.loop_mib, "random")
        try:
            t.cmd(f"loop {mode}")
            time.sleep(0.3 if cfg.quick else 1.0)  # warm
            untracked: list[float] = []
            tracked: dict[float, list[float]] = {1.0: [], 0.1: []}
            # bytes the loop lost to checkpointing, per checkpoint, in untracked-time units
            losses: dict[float, list[float]] = {1.0: [], 0.1: []}
            stats: dict[float, dict[str, list[float]]] = {p: {"wall": [], "frozen": []} for p in tracked}
            for _ in range(cfg.reps):  # alternating windows: drift hits all alike
                base_rate = untracked_window(t, cfg.loop_window_s)
                untracked.append(base_rate)
                for period in tracked:
                    images = lab.path(f"s6-{mode}")
                    rate, window, n = tracked_window(t, images, period, cfg.loop_window_s, stats[period])
                    tracked[period].append(rate)
                    losses[period].append((1 - rate / base_rate) * window / n * 1e3)
                    untrack(t.pid)
                    shutil.rmtree(images)
            unit, scale = ("GB/s", 1e9) if mode == "seq" else ("Mwrites/s", 8e6)
            u = Sample([x / scale for x in untracked])
            for period, vals in tracked.items():
                s = Sample([x / scale for x in vals])
                ratio = s.median / u.median
                st = stats[period]
                frozen = statistics.median(st["frozen"]) * 1e3 if st["frozen"] else 0.0
                loss_ms = statistics.median(losses[period])
                if mode == "seq":
                    distinct = float(npages)  # every page, many times per period
                else:
                    writes = u.median * 1e6 * period
                    distinct = npages * (1 - math.exp(-writes / npages))
                fault_ms = distinct * fault_us / 1e3
                noise_ms = (u.hi - u.lo) / u.median * period * 1e3
                arithmetic = (f"loss {loss_ms:.1f} ms of loop time per checkpoint (per {period * 1e3:g} ms period); "
                              f"first-write faults {distinct:.0f} pages x {fault_us:.2f} us = {fault_ms:.1f} ms; "
                              f"frozen {frozen:.1f} ms per checkpoint; untracked spread {noise_ms:.1f} ms; "
                              f"{len(st['frozen'])} checkpoints")
                if period == 1.0 and mode == "seq":
                    target, ok = ">=0.95x", ratio >= 0.95
                elif period == 1.0:
                    target = f"loss <= faults {fault_ms:.1f} ms"
                    ok = loss_ms <= fault_ms + noise_ms
                else:
                    target, ok = "-", None
                name = "sequential" if mode == "seq" else "random 8-byte"
                rows.append(result(6, f"{name} writer, {cfg.loop_mib} MiB, checkpoint every {period * 1e3:g} ms",
                                   s, unit, "untracked", u, target, ok, notes=arithmetic, loss_ms=loss_ms,
                                   fault_ms=fault_ms, frozen_ms=frozen, noise_ms=noise_ms,
                                   checkpoints=len(st["frozen"]),
                                   dump_wall_ms=statistics.median(st["wall"]) * 1e3 if st["wall"] else None))
        finally:
            lab.drop(t)
    return rows


# -- scenario 7: full dump and restore side by side with CRIU 4.2 ------------------------


CRIU_DEFAULT = REPO.parent / "shared" / "criu" / "criu"


def criu_binary() -> Path | None:
    """CRIU 4.2 for the side-by-side rows: $CKPT_BENCH_CRIU, else ../shared/criu/criu."""
    path = Path(os.environ.get("CKPT_BENCH_CRIU", CRIU_DEFAULT))
    return path if path.is_file() and os.access(path, os.X_OK) else None


class FifoTarget(Target):
    """A C target whose stdin and stdout are named FIFOs, so that CRIU, which reopens
    FIFOs by path, restores a process the benchmark can still talk to."""

    def __init__(self, argv: list[str], name: str, fifo_in: Path, fifo_out: Path) -> None:
        self.name = name
        self.fifo_in, self.fifo_out = fifo_in, fifo_out
        for path in (fifo_in, fifo_out):
            os.mkfifo(path, 0o600)
        # Held read-write by the benchmark: no open ever blocks, and a restored process
        # finds the other ends still there.
        self._in = os.open(fifo_in, os.O_RDWR | os.O_CLOEXEC)
        self._out = os.open(fifo_out, os.O_RDWR | os.O_CLOEXEC)
        self._buf = b""
        with open(fifo_in, "rb", buffering=0) as stdin, open(fifo_out, "wb", buffering=0) as stdout:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self.adopted = False
        first = self.readline(300).split()
        if first[:1] != ["ready"]:
            raise RuntimeError(f"{name} did not start: {first}")

    def adopt(self, pid: int) -> None:
        """Talk to a restored copy (same FIFOs; CRIU gives it the same pid) from now on."""
        self.pid = pid
        self.adopted = True

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not self.adopted:
            self.proc.wait()
        else:
            try:
                os.waitpid(self.pid, 0)   # our child while we are a subreaper
            except ChildProcessError:
                wait_gone(self.pid)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


def children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ckpt_cli(*args: str | int | Path, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``python -m ckpt ARGS`` from this checkout, as a user would; its wall time."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ckpt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/", stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    done.cpu_s = children_cpu() - before  # type: ignore[attr-defined]
    if done.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(map(str, args))}: exit {done.returncode}: {done.stderr.strip()}")
    return wall, done


def ckpt_has(command: str, flag: str) -> bool:
    """Whether this checkout's ``ckpt COMMAND --help`` offers ``flag``."""
    _, helped = ckpt_cli(command, "--help")
    return flag in helped.stdout


CRIU_CPU: list[float] = []   # CPU seconds of each criu command run, in order


def criu_cli(criu: Path, *args: str | int | Path, timeout: float = 900) -> float:
    """Run CRIU; its wall time.  Its log is kept beside the images on failure."""
    before = children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run([str(criu), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd="/", stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    CRIU_CPU.append(children_cpu() - before)
    if done.returncode != 0:
        log = ""
        if "-o" in args and "-D" in args:
            path = Path(str(args[args.index("-D") + 1])) / str(args[args.index("-o") + 1])
            with contextlib.suppress(OSError):
                log = " ".join(line for line in path.read_text().splitlines() if "Error" in line)[-400:]
        raise RuntimeError(f"criu {' '.join(map(str, args))}: exit {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-400:]} {log}")
    return wall


def subreaper(on: bool) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our descendants become our children."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, int(on), 0, 0, 0) != 0:   # PR_SET_CHILD_SUBREAPER, <linux/prctl.h>
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def sync_files(path: Path) -> float:
    """fsync every file of an images directory, and the directory (``sync FILE...``):
    what CRIU's images would need to be as durable as ckpt's; its wall time."""
    files = [str(p) for p in path.rglob("*") if p.is_file()]
    t0 = time.perf_counter()
    subprocess.run(["sync", *files, str(path)], check=True)
    return time.perf_counter() - t0


def ckpt_dump_flags() -> dict[str, list[str]]:
    """The ckpt dump variants measured: default (zstd-1, durable), compression off, and,
    when this checkout has ``--no-fsync``, both without fsync (CRIU's durability)."""
    variants = {"default": [], "--compress 0": ["--compress", "0"]}
    if ckpt_has("dump", "--no-fsync"):
        variants["--no-fsync"] = ["--no-fsync"]
        variants["--compress 0 --no-fsync"] = ["--compress", "0", "--no-fsync"]
    return variants


def half_random_target(lab: Lab, mib: int, tag: str, room: int) -> tuple[FifoTarget, str]:
    """The C target on FIFOs holding ``mib`` MiB of the issue's content (half random, a
    quarter zeros, a quarter text), once ``room`` times that fits in memory; it and the
    checksum of its region."""
    wait_for_memory(room * mib)
    t = FifoTarget([str(lab.binary())], "bench_target", lab.path(f"{tag}-in.fifo"), lab.path(f"{tag}-out.fifo"))
    lab.fifo_targets.append(t)
    t.cmd(f"alloc {mib} half")
    return t, t.cmd("sum")[0]


def scenario_7(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    criu = criu_binary()
    if criu is None:
        raise RuntimeError(f"CRIU not found at {CRIU_DEFAULT} (or $CKPT_BENCH_CRIU): no baseline")
    name = f"{gib_label(cfg.full_mib)} half random"
    t, checksum = half_random_target(lab, cfg.full_mib, "s7", room=3)
    variants = ckpt_dump_flags()
    walls: dict[str, list[float]] = {v: [] for v in variants}
    frozen: dict[str, list[float]] = {v: [] for v in variants}
    sizes: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    criu_cpu: list[float] = []
    criu_walls: list[float] = []
    criu_sync: list[float] = []
    criu_size = 0.0
    keep: Path | None = None
    # Paired: each repetition runs every ckpt variant and CRIU, one after the other;
    # repetition 0 is the warm-up.
    for rep in range(cfg.reps + 1):
        for variant, flags in variants.items():
            untrack(t.pid)   # a full dump each time
            images = lab.path("s7-ckpt")
            wall, done = ckpt_cli("dump", "-t", t.pid, "-D", images, "--json", "-q", *flags)
            summary = json.loads(done.stdout)
            if rep:
                walls[variant].append(wall)
                cpu[variant].append(done.cpu_s)  # type: ignore[attr-defined]
                frozen[variant].append(summary["frozen_ms"])
                sizes[variant].append(dir_bytes(images) / MB)
            if variant == "default" and keep is None:
                keep = images
            else:
                shutil.rmtree(images)
        untrack(t.pid)
        images = lab.path("s7-criu")
        images.mkdir(mode=0o700)
        wall = criu_cli(criu, "dump", "-t", t.pid, "-D", images, "--leave-running", "-o", "dump.log")
        synced = sync_files(images)
        if rep:
            criu_walls.append(wall)
            criu_cpu.append(CRIU_CPU[-1])
            criu_sync.append(wall + synced)
            criu_size = dir_bytes(images) / MB
        shutil.rmtree(images)
    assert keep is not None
    rows: list[Result] = []
    base = Sample(criu_walls)
    durable = Sample(criu_sync)
    for variant in variants:
        w = Sample(walls[variant])
        no_fsync = "--no-fsync" in variant
        if variant == "default":
            target, ok = "<= CRIU", w.median <= base.median
        elif variant == "--compress 0":
            target, ok = "<= CRIU / 1.5", w.median <= base.median / 1.5
        else:
            target, ok = "-", None
        note = (f"image {statistics.median(sizes[variant]):.0f} MB (CRIU {criu_size:.0f} MB); "
                f"frozen {statistics.median(frozen[variant]):.1f} ms (CRIU: the whole dump); CPU "
                f"{statistics.median(cpu[variant]):.2f} s (CRIU {statistics.median(criu_cpu):.2f} s)")
        direct = data.get("speeds", {}).get("write_direct_mb_s")
        if not no_fsync and direct and not math.isnan(direct):
            note += (f"; {statistics.median(sizes[variant]):.0f} MB at this VM's O_DIRECT write+fsync speed "
                     f"{direct:.0f} MB/s = {statistics.median(sizes[variant]) / direct:.2f} s")
        rows.append(result(7, f"{name}: full dump, ckpt {variant}", w, "s", "criu dump", base, target, ok,
                           notes=note, ckpt_frozen_ms=frozen[variant], ckpt_image_mb=sizes[variant],
                           criu_image_mb=criu_size))
        if not no_fsync:
            rows.append(result(7, f"{name}: full dump, ckpt {variant} (durable)", w, "s",
                               "criu dump + sync", durable, "-", None))

    # Restore until the process runs: ckpt restore -d from the default images (the
    # target keeps running: ckpt gives the copy a new pid, its FIFOs are new) ...
    restores: list[float] = []
    restore_cpu: list[float] = []
    criu_restore_cpu: list[float] = []
    for rep in range(cfg.reps + 1):
        fin, fout = lab.path("s7-r-in.fifo"), lab.path("s7-r-out.fifo")
        for path in (fin, fout):
            os.mkfifo(path, 0o600)
        fd_in = os.open(fin, os.O_RDWR | os.O_CLOEXEC)
        fd_out = os.open(fout, os.O_RDWR | os.O_CLOEXEC)
        try:
            wall, done = ckpt_cli("restore", "-D", keep, "-d", "--json", "--stdin", fin, "--stdout", fout,
                                  "--stderr", os.devnull)
            if rep:
                restore_cpu.append(done.cpu_s)  # type: ignore[attr-defined]
            pid = int(json.loads(done.stdout)["pid"])
            lab.restored.append(pid)
            r = Restored(pid, fd_in, fd_out)
            if rep == 0 and r.cmd("sum")[0] != checksum:
                raise RuntimeError("ckpt restored different memory")
            r.cmd("ping")
            lab.kill_restored(pid)
            if rep:
                restores.append(wall)
        finally:
            os.close(fd_in)
            os.close(fd_out)
    # ... and criu restore -d from a dump that ended the target (CRIU keeps the pid).
    images = lab.path("s7-criu-final")
    images.mkdir(mode=0o700)
    criu_cli(criu, "dump", "-t", t.pid, "-D", images, "-o", "dump.log")
    t.proc.wait()
    criu_restores: list[float] = []
    # The restored process is orphaned when criu exits: as a subreaper this process
    # inherits it and reaps it, so that its pid is free for the next restore (init here
    # may reap late, and CRIU needs the very same pid).
    subreaper(True)
    try:
        for rep in range(cfg.reps + 1):
            pidfile = images / f"restored-{rep}.pid"
            wall = criu_cli(criu, "restore", "-D", images, "-d", "--pidfile", pidfile, "-o", f"restore-{rep}.log")
            t.adopt(int(pidfile.read_text()))
            if rep == 0 and t.cmd("sum")[0] != checksum:
                raise RuntimeError("CRIU restored different memory")
            t.cmd("ping")
            t.kill()
            if rep:
                criu_restores.append(wall)
                criu_restore_cpu.append(CRIU_CPU[-1])
    finally:
        subreaper(False)
    shutil.rmtree(images)
    shutil.rmtree(keep)
    rows.append(result(7, f"{name}: restore until it runs (ckpt restore -d)", Sample(restores), "s",
                       "criu restore -d", Sample(criu_restores), "<= CRIU",
                       Sample(restores).median <= Sample(criu_restores).median,
                       notes="both commands' wall time until they returned with the process running; "
                             "the restored process then answered over its FIFOs; CPU of the command "
                             f"{statistics.median(restore_cpu):.2f} s (CRIU {statistics.median(criu_restore_cpu):.2f} s)"))
    return rows


# -- scenario 8: redis under a steady write load, side by side with CRIU -----------------


def scenario_8(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    import bench_once

    criu = criu_binary()
    if criu is None:
        raise RuntimeError(f"CRIU not found at {CRIU_DEFAULT} (or $CKPT_BENCH_CRIU): no baseline")
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    args = argparse.Namespace(target="redis", dumps=cfg.redis_dumps, period=1.0, sets=20000.0,
                              keys=cfg.redis_keys, value=1024, mib=0, mbps=0.0, criu=criu,
                              criu_dumps=cfg.redis_dumps, keep_criu_logs=False)
    full, incs, stall = bench_once.series(REPO, args)
    crius, criu_stall = bench_once.criu_series(criu, args)
    frozen = Sample([d["frozen_ms"] for d in incs])
    criu_frozen = Sample([t * 1e3 for t, _ in crius])
    size = Sample([d["bytes_compressed"] / MB for d in incs])
    name = f"redis {args.keys} keys x 1 KiB, 20k SET/s, {args.dumps} dumps 1 s apart"
    return [
        result(8, f"{name}: incremental, frozen", frozen, "ms", "criu dump (frozen)", criu_frozen,
               "<=25 ms", frozen.median <= 25,
               notes=f"full dump {full['bytes_compressed'] / MB:.0f} MB compressed; incrementals "
                     f"{size.median:.1f} MB [{size.lo:.1f}-{size.hi:.1f}], wall "
                     f"{Sample([d['wall_ms'] for d in incs]).median:.0f} ms"),
        result(8, f"{name}: client's worst stall during the dumps", Sample([stall[0] if stall else math.nan]), "ms",
               "criu dump", Sample([criu_stall[0] if criu_stall else math.nan]), "-", None,
               notes=f"worst stall outside the dumps: ckpt run {stall[1] if stall else math.nan:.1f} ms, "
                     f"CRIU run {criu_stall[1] if criu_stall else math.nan:.1f} ms (the client timestamps every "
                     "pipelined batch of SETs; the worst wait for its replies)"),
        result(8, f"{name}: incremental, bytes written", size, "MB", "full dump",
               Sample([full["bytes_compressed"] / MB]), "-", None,
               pages_written=[d["pages_written"] for d in incs], pages_stored=[d["pages_stored"] for d in incs]),
    ]


# -- scenario 9: many mappings, side by side with CRIU -----------------------------------


def scenario_9(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    import bench_maps

    criu = criu_binary()
    if criu is None:
        raise RuntimeError(f"CRIU not found at {CRIU_DEFAULT} (or $CKPT_BENCH_CRIU): no baseline")
    binary = lab.tmp / "many_maps"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(bench_maps.SOURCE)], check=True)
    work = lab.path("s9")
    work.mkdir()
    n, reps = cfg.maps, cfg.reps + 2
    c = bench_maps.bench_ckpt(binary, n, None, reps, work)
    k = bench_maps.bench_criu(criu, binary, n, None, reps, work)
    name = f"{n} mappings"
    frozen, restore = Sample(c["incr_frozen"]), Sample(c["restore"])
    criu_dump, criu_restore = Sample(k["dump"]), Sample(k["restore"])
    return [
        result(9, f"{name}: incremental of 3 pages, frozen", frozen, "ms", "criu dump (frozen)", criu_dump,
               "<=25 ms", frozen.median <= 25,
               notes=f"incremental wall {Sample(c['incr_wall']).median:.0f} ms; full dump wall "
                     f"{Sample(c['full_wall']).median:.0f} ms, frozen {Sample(c['full_frozen']).median:.0f} ms"),
        result(9, f"{name}: restore until it runs (ckpt restore -d)", restore, "ms", "criu restore -d",
               criu_restore, "<= CRIU", restore.median <= criu_restore.median),
    ]


# -- scenario 10: lazy restore, side by side with eager restore and CRIU -----------------


@dataclass
class RestoreTimes:
    """Seconds from the start of a restore until it returned (the process runs), until
    the process answered, and until every page was resident (the page server exited)."""

    returned: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    resident: list[float] = field(default_factory=list)


def lazy_c_target(lab: Lab, cfg: Config, criu: Path, lazy: bool) -> list[Result]:
    """A C target with ``cfg.lazy_mib`` of half-random memory, restored eagerly, lazily
    and by CRIU; each talks over the target's FIFOs, the first of each checks the sum."""
    import ckpt

    name = f"{gib_label(cfg.lazy_mib)} half random"
    t, checksum = half_random_target(lab, cfg.lazy_mib, "s10", room=2)
    images = lab.path("s10-ckpt")
    ckpt_cli("dump", "-t", t.pid, "-D", images, "-q")
    untrack(t.pid)
    crimages = lab.path("s10-criu")
    crimages.mkdir(mode=0o700)
    criu_cli(criu, "dump", "-t", t.pid, "-D", crimages, "-o", "dump.log")   # ends the target
    t.proc.wait()
    modes = [False, True] if lazy else [False]
    times = {mode: RestoreTimes() for mode in modes}
    cli_lazy: list[float] = []
    criu_times: list[float] = []
    subreaper(True)   # CRIU's restored process becomes ours to reap (scenario 7)
    try:
        for rep in range(cfg.reps + 1):
            for mode in modes:
                t0 = time.perf_counter()
                res = ckpt.restore(images, detach=True, stdin=t.fifo_in, stdout=t.fifo_out, stderr=os.devnull,
                                   **({"lazy": True} if mode else {}))
                returned = time.perf_counter() - t0
                lab.restored.append(res.pid)
                t.adopt(res.pid)
                t.cmd("ping")
                answered = time.perf_counter() - t0
                server = getattr(res, "page_server", None)
                resident = wait_gone(server, 600, poll=0.002) - t0 if server else returned
                if rep == 0 and t.cmd("sum")[0] != checksum:
                    raise RuntimeError(f"ckpt restore ({'lazy' if mode else 'eager'}) gave different memory")
                if rep:
                    times[mode].returned.append(returned)
                    times[mode].answered.append(answered)
                    times[mode].resident.append(resident)
                lab.kill_restored(res.pid)
            if lazy and rep:   # the command, as a user runs it (interpreter start included)
                wall, done = ckpt_cli("restore", "-D", images, "-d", "--lazy", "--json", "--stdin", t.fifo_in,
                                      "--stdout", t.fifo_out)
                cli_lazy.append(wall)
                summary = json.loads(done.stdout)
                t.adopt(int(summary["pid"]))
                t.cmd("ping")
                t.kill()
                if summary.get("page_server"):
                    wait_gone(int(summary["page_server"]), 600, poll=0.002)
            pidfile = crimages / f"restored-{rep}.pid"
            wall = criu_cli(criu, "restore", "-D", crimages, "-d", "--pidfile", pidfile, "-o", f"restore-{rep}.log")
            t.adopt(int(pidfile.read_text()))
            t.cmd("ping")
            if rep == 0 and t.cmd("sum")[0] != checksum:
                raise RuntimeError("CRIU restored different memory")
            t.kill()
            if rep:
                criu_times.append(wall)
    finally:
        subreaper(False)
    shutil.rmtree(images)
    shutil.rmtree(crimages)
    base = Sample(criu_times)
    eager = times[False]
    rows = [result(10, f"{name}: eager restore until it runs", Sample(eager.returned), "s",
                   "criu restore -d", base, "-", None,
                   notes=f"answered after {Sample(eager.answered).median:.3f} s (ckpt.restore(detach=True), "
                         "in-process; criu: the command)")]
    if lazy:
        lz = times[True]
        rows.append(result(10, f"{name}: lazy restore until it runs", Sample(lz.returned), "s",
                           "criu restore -d", base, "<=0.05 s", Sample(lz.returned).median <= 0.05,
                           notes=f"answered after {Sample(lz.answered).median:.3f} s; the command "
                                 f"ckpt restore --lazy -d: {Sample(cli_lazy).median:.3f} s "
                                 f"[{Sample(cli_lazy).lo:.3f}-{Sample(cli_lazy).hi:.3f}]"))
        rows.append(result(10, f"{name}: lazy restore until every page is resident", Sample(lz.resident), "s",
                           "eager restore", Sample(eager.returned), "<=1.5x eager",
                           Sample(lz.resident).median <= 1.5 * Sample(eager.returned).median))
    return rows


def resp_complete(reply: bytes) -> bool:
    """Whether ``reply`` holds one whole RESP reply to a GET: a bulk string ``$N`` (N
    bytes and CRLF follow; ``$-1`` is nil) or a one-line reply (``-ERR ...``)."""
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if head[:1] != b"$" or int(head[1:]) < 0:
        return True
    return len(rest) >= int(head[1:]) + 2


def redis_get(port: int, key: bytes, timeout: float = 120) -> bytes:
    """GET ``key`` from the redis on ``port``, connecting again until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
                reply = b""
                while not resp_complete(reply):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("redis closed the connection")
                    reply += chunk
                return reply
        except (ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def lazy_redis(lab: Lab, cfg: Config, criu: Path, lazy: bool) -> list[Result]:
    """redis-server holding ``cfg.redis_lazy_mib`` of values: time from the restore's start
    to the first right answer to a GET, for ckpt (eager, lazy) and CRIU, each a command."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    work = lab.path("s10-redis")
    work.mkdir(mode=0o700)
    keys = cfg.redis_lazy_mib * MiB // 1200   # DEBUG POPULATE: about 1.2 KiB per 1 KiB value in redis
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--enable-debug-command", "yes", "--dir", str(work)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=work, start_new_session=True)
    lab.restored.append(server.pid)
    redis_get(port, b"key:0")
    subprocess.run(["redis-cli", "-p", str(port), "DEBUG", "POPULATE", str(keys), "key", "1024"], check=True,
                   capture_output=True, timeout=600)
    key = f"key:{keys // 2}".encode()
    expected = redis_get(port, key)
    rss = int(Path(f"/proc/{server.pid}/statm").read_text().split()[1]) * PAGE
    crimages = work / "criu"
    crimages.mkdir(mode=0o700)
    criu_cli(criu, "dump", "-t", server.pid, "-D", crimages, "--leave-running", "-o", "dump.log")
    images = work / "ckpt"
    ckpt_cli("dump", "-t", server.pid, "-D", images, "--kill", "-q")
    server.wait()
    lab.restored.remove(server.pid)
    modes = {"eager": [], "lazy": ["--lazy"]} if lazy else {"eager": []}
    answers: dict[str, list[float]] = {m: [] for m in modes}
    resident: list[float] = []
    criu_answers: list[float] = []
    subreaper(True)
    try:
        for rep in range(cfg.reps + 1):
            for mode, extra in modes.items():
                t0 = time.perf_counter()
                _, done = ckpt_cli("restore", "-D", images, "-d", "--json", *extra)
                summary = json.loads(done.stdout)
                pid = int(summary["pid"])
                lab.restored.append(pid)
                if redis_get(port, key) != expected:
                    raise RuntimeError(f"the {mode} restored redis answered differently")
                answered = time.perf_counter() - t0
                if summary.get("page_server"):
                    done_at = wait_gone(int(summary["page_server"]), 600, poll=0.002) - t0
                    if rep:
                        resident.append(done_at)
                lab.kill_restored(pid)
                wait_gone(pid)
                if rep:
                    answers[mode].append(answered)
            t0 = time.perf_counter()
            pidfile = crimages / f"restored-{rep}.pid"
            criu_cli(criu, "restore", "-D", crimages, "-d", "--pidfile", pidfile, "-o", f"restore-{rep}.log")
            pid = int(pidfile.read_text())
            lab.restored.append(pid)
            if redis_get(port, key) != expected:
                raise RuntimeError("CRIU's restored redis answered differently")
            if rep:
                criu_answers.append(time.perf_counter() - t0)
            lab.kill_restored(pid)
    finally:
        subreaper(False)
    base = Sample(criu_answers)
    name = f"redis {rss / GiB:.2g} GiB ({keys} keys of 1 KiB)"
    rows = [result(10, f"{name}: eager restore until the first GET answers", Sample(answers["eager"]), "s",
                   "criu restore -d", base, "-", None, notes="ckpt restore -d (the command), then GET over TCP")]
    if lazy:
        rows.append(result(10, f"{name}: lazy restore until the first GET answers", Sample(answers["lazy"]), "s",
                           "criu restore -d", base, "-", None,
                           notes=f"every page resident after {Sample(resident).median:.2f} s "
                                 f"[{Sample(resident).lo:.2f}-{Sample(resident).hi:.2f}]" if resident else ""))
    shutil.rmtree(work)
    return rows


def scenario_10(lab: Lab, cfg: Config, data: dict[str, Any]) -> list[Result]:
    criu = criu_binary()
    if criu is None:
        raise RuntimeError(f"CRIU not found at {CRIU_DEFAULT} (or $CKPT_BENCH_CRIU): no baseline")
    lazy = ckpt_has("restore", "--lazy")
    rows = lazy_c_target(lab, cfg, criu, lazy)
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return rows + lazy_redis(lab, cfg, criu, lazy)


# -- machine, plot, main -----------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "thp": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()}


def machine_speeds(tmp: Path) -> dict[str, float]:
    """What this VM does today, to read the figures by: memcpy between warm
    buffers, the first touch of fresh anonymous memory (this VM gives freed
    memory back to its host), and writing a file with fsync where the images go."""
    n = 128 * MiB
    src = bytearray(os.urandom(MiB)) * (n // MiB)
    dst = bytearray(n)  # zero-filled: touched
    copy, touch = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        dst[:] = src
        copy.append(n / (time.perf_counter() - t0) / MB)
        with mmap.mmap(-1, n) as m:
            t0 = time.perf_counter()
            for off in range(0, n, PAGE):
                m[off] = 1
            touch.append((time.perf_counter() - t0) / (n // PAGE) * 1e6)
    path = tmp / "write-test"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(4):
            os.write(fd, src)
        os.fsync(fd)
        disk = 4 * n / (time.perf_counter() - t0) / MB
    finally:
        os.close(fd)
        path.unlink()
    # The same with O_DIRECT (aligned buffer, no page cache): durable full dumps write so
    # (ckpt/image/frames.py DirectWriter); buffered writes here pay the VM's fresh-page cost.
    direct = math.nan
    aligned = mmap.mmap(-1, 4 * MiB)
    aligned.write(bytes(src[:4 * MiB]))
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
        try:
            t0 = time.perf_counter()
            for _ in range(n // (4 * MiB) * 2):
                os.write(fd, aligned)
            os.fsync(fd)
            direct = 2 * n / (time.perf_counter() - t0) / MB
        finally:
            os.close(fd)
            path.unlink()
    aligned.close()
    return {"memcpy_mb_s": statistics.median(copy), "first_touch_us_per_page": statistics.median(touch),
            "write_fsync_mb_s": disk, "write_direct_mb_s": direct}


def plot(data: dict[str, Any], path: Path) -> None:
    """Incremental dump time, frozen time and image size against % written (scenario 2)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        print("--plot: matplotlib is not installed; no plot written", file=sys.stderr)
        return
    sweep = data["sweep"]
    pts = sweep["points"]
    x = [p["percent"] for p in pts]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [("wall", "dump time, wall (ms)"), ("frozen", "frozen time (ms)"),
              ("bytes", "image size (MB)")]
    for ax, (key, title) in zip(axes, panels):
        med = [p[key][0] for p in pts]
        err = [[p[key][0] - p[key][1] for p in pts], [p[key][2] - p[key][0] for p in pts]]
        ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label="incremental dump")
        ax.axhline(sweep["full"][key], color="gray", linestyle="--", label="full dump")
        if key == "bytes":
            ax.plot(x, [p["zstd_written"][0] for p in pts], marker="x", linestyle=":",
                    label="zstd of the written pages")
        ax.set_xscale("log")
        if key == "frozen":
            ax.set_ylim(0, max(max(p[key][2] for p in pts), sweep["full"][key]) * 1.2)
        else:
            ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("% of pages written (scattered)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ckpt incremental dumps of a {sweep['target_mib'] / 1024:g} GiB target "
                 "(mixed content), median and min-max of the repetitions")
    fig.tight_layout()
    fig.savefig(path)


def plot_criu(rows: Sequence[Result], path: Path) -> None:
    """Each figure measured against CRIU in this run, as ckpt's time over CRIU's (log
    scale: left of 1 ckpt is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [r for r in rows if r.baseline_name.startswith("criu") and r.baseline and not math.isnan(r.value)]
    if not pairs:
        return
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(pairs) + 1.2))
    labels = [f"{r.scenario}: {r.case}" for r in pairs]
    ratios = [r.value / r.baseline for r in pairs]  # type: ignore[operator]
    colors = ["tab:green" if x <= 1 else "tab:red" for x in ratios]
    y = range(len(pairs))
    ax.barh(y, [x - 1 for x in ratios], left=1, color=colors)   # from 1 (as fast as CRIU) to the ratio
    for i, r in enumerate(pairs):
        ax.annotate(f" ckpt {fmt(r.value)} {r.unit} / {r.baseline_name} {fmt(r.baseline)} {r.unit}",  # type: ignore[arg-type]
                    (ratios[i], i), va="center", fontsize=7)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xlim(min(ratios + [0.5]) / 2, max(ratios + [2]) * 8)
    ax.set_xlabel("ckpt / CRIU 4.2 (median of the repetitions; below 1: ckpt takes less)")
    ax.set_title("ckpt against CRIU 4.2, same machine, same run")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


SCENARIOS: dict[int, Callable[[Lab, Config, dict[str, Any]], list[Result]]] = {
    1: scenario_1, 2: scenario_2, 3: scenario_3_4, 5: scenario_5, 6: scenario_6, 7: scenario_7, 8: scenario_8, 9: scenario_9, 10: scenario_10,
}


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through Lab.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition (< 1 min)")
    ap.add_argument("--json", metavar="FILE", help="write the rows (and raw data) as JSON")
    ap.add_argument("--plot", metavar="FILE", help="plot scenario 2's sweep (PNG or SVG; needs matplotlib)")
    ap.add_argument("--plot-criu", metavar="FILE", help="plot every figure measured against CRIU, as a ratio "
                    "(PNG or SVG; needs matplotlib)")
    ap.add_argument("--only", metavar="N,N", help="run only these scenarios (4 runs with 3)")
    ap.add_argument("--tmpdir", metavar="DIR", help="where targets' images go (default: system temp dir)")
    ap.add_argument("--child-dump", nargs=3, metavar=("PID", "DIR", "LEVEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_dump:
        child_dump_main(int(args.child_dump[0]), args.child_dump[1], int(args.child_dump[2]))
        return 0
    if os.geteuid() != 0:
        print("bench.py must run as root (ckpt ptraces its targets)", file=sys.stderr)
        return 2
    cfg = Config.make(args.quick)
    only = {int(x) for x in args.only.split(",")} if args.only else set(SCENARIOS)
    if 4 in only:
        only.add(3)
    # An installed ckpt runs from compiled bytecode (pip compiles it at install).  Where
    # PYTHONDONTWRITEBYTECODE is set (as on this project's machines), every ckpt command
    # would compile its ~70 modules again (0.3 s): let the warm-up runs cache them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    tmp = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.tmpdir))
    # ckpt's tracking registry for this run only (inherited by holders and child dumps).
    os.environ["CKPT_RUN_DIR"] = str(tmp / "run")
    sys.path.insert(0, str(REPO))
    lab = Lab(tmp)
    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    data: dict[str, Any] = {"machine": machine(), "config": asdict(cfg),
                            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                            "loadavg_start": os.getloadavg(), "command": " ".join(["python", "tools/bench.py"]
                                                                                  + (argv or sys.argv[1:]))}
    rows: list[Result] = []
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    failed: list[int] = []
    try:
        data["speeds"] = machine_speeds(tmp)
        for n, fn in SCENARIOS.items():
            if n not in only:
                continue
            t0 = time.monotonic()
            print(f"scenario {n}{' and 4' if n == 3 else ''} ...", file=sys.stderr, flush=True)
            try:
                rows += fn(lab, cfg, data)
            except Exception as err:  # noqa: BLE001 - reported as a row; the other scenarios still run
                traceback.print_exc()
                failed.append(n)
                rows.append(Result(n, "scenario failed", math.nan, "", (math.nan, math.nan), "", None, None,
                                   None, "", "error", notes=f"{type(err).__name__}: {err}"))
            timings[str(n)] = time.monotonic() - t0
            print(f"  {timings[str(n)]:.1f} s", file=sys.stderr, flush=True)
    finally:
        lab.close()
        for s, h in previous.items():
            signal.signal(s, h)
    rows.sort(key=lambda r: r.scenario)
    data["runtime_s"] = time.monotonic() - t_start
    data["scenario_s"] = timings
    data["loadavg_end"] = os.getloadavg()
    m = data["machine"]
    print(f"ckpt bench{' --quick (small sizes, 1 repetition: verdicts indicative only)' if cfg.quick else ''}"
          f" - {m['cpus']} x {m['cpu_model']}, {m['mem_gib']} GiB, Linux {m['kernel']}, {data['date']}")
    print(render_table(rows))
    sp = data["speeds"]
    print(f"\nthis VM during the run: memcpy {sp['memcpy_mb_s']:.0f} MB/s (warm buffers); first touch of fresh "
          f"memory {sp['first_touch_us_per_page']:.2f} us/page; file write + fsync {sp['write_fsync_mb_s']:.0f} MB/s "
          f"(O_DIRECT: {sp.get('write_direct_mb_s', math.nan):.0f} MB/s)")
    fault = data.get("fault_us")
    if fault is not None:
        print(f"first write to a write-protected page: {fault:.2f} us "
              "(write loop timed by the target, protected minus unprotected)")
    print(f"runtime {data['runtime_s']:.0f} s; load average {data['loadavg_start'][0]:.2f} at start, "
          f"{data['loadavg_end'][0]:.2f} at end")
    if args.json:
        data["rows"] = [asdict(r) for r in rows]
        Path(args.json).write_text(json.dumps(data, indent=1, default=str) + "\n")
    if args.plot and "sweep" in data:
        plot(data, Path(args.plot))
    if args.plot_criu:
        plot_criu(rows, Path(args.plot_criu))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

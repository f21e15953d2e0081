"""Incremental dumps of a shared buffer against the same buffer private (issue 9 item 3).

    python3 tools/bench_shared.py [--mib 256] [--percent 1] [--repeat 5] [--json]

Two Python targets each map one buffer of ``--mib`` MiB: ``MAP_SHARED | MAP_ANONYMOUS``
(what ``mmap.mmap(-1, n)`` gives, Python's default), or ``MAP_PRIVATE | MAP_ANONYMOUS``,
filled with incompressible bytes.  Each is dumped once (full, tracked); then each round it
writes ``--percent`` % of the buffer's pages (scattered, a different set each round) and is
dumped again (incremental, a new ``ckpt.dump`` as ``ckpt dump`` run again does).  Figures:
the incremental's stored bytes (zstd, as written) of the buffer as a share of the full
dump's, and the frozen time; the private buffer is the baseline the shared one should
approach.  The shared buffer is incremental when every mapper was tracked throughout and
nothing could have written it unseen (ckpt/sharedincr.py); its full dump reads it whole
inside the frozen window, from the object (ckpt/shmem.py).

Prints ``median [min-max]`` of ``--repeat`` rounds per buffer after one warm-up round.
Needs root (ptrace, /proc/PID/map_files).  Run from anywhere: it imports ckpt from this
checkout, never from the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ckpt  # noqa: E402
from benchlib import ready_target, spread  # noqa: E402

# The target: one buffer of argv[1] MiB, shared or private (argv[3]); each line on its
# stdin makes it write argv[2] percent of the buffer's pages, then answer "done".
TARGET = r"""
import mmap, os, random, sys
n = int(sys.argv[1]) << 20
share = float(sys.argv[2]) / 100
page = mmap.PAGESIZE
flags = mmap.MAP_SHARED if sys.argv[3] == "shared" else mmap.MAP_PRIVATE
buf = mmap.mmap(-1, n, flags=flags | mmap.MAP_ANONYMOUS)
for off in range(0, n, 1 << 20):
    buf[off:off + (1 << 20)] = os.urandom(1 << 20)
print("ready", flush=True)
for line in sys.stdin:
    for p in random.sample(range(n // page), max(1, int(n // page * share))):
        buf[p * page:p * page + 8] = os.urandom(8)
    print("done", flush=True)
"""


def region(pid: int, mib: int) -> tuple[int, int]:
    """The buffer's address range (the one mapping of exactly ``mib`` MiB)."""
    found = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if end - start == mib << 20:
            found.append((start, end))
    if len(found) != 1:
        raise RuntimeError(f"the target should map one {mib} MiB buffer: {found}")
    return found[0]


def stored_in(cp: ckpt.Checkpoint, start: int, end: int) -> int:
    """Compressed bytes of the frames holding pages of ``[start, end)`` in this checkpoint,
    each frame counted by the share of its pages that fall in the range."""
    meta = cp.meta
    total = 0.0
    ext = meta.extents
    for i in range(0, len(ext), 4):
        vaddr, npages, frame = ext[i], ext[i + 1], ext[i + 2]
        lo, hi = max(vaddr, start), min(vaddr + npages * 4096, end)
        if lo >= hi:
            continue
        stored, raw = meta.frames[4 * frame + 1], meta.frames[4 * frame + 2]
        total += stored * (hi - lo) / raw if raw else 0
    return int(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="size of each buffer (default 256)")
    parser.add_argument("--percent", type=float, default=1.0, help="pages written per round (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per buffer after a warm-up (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_shared: needs root (ptrace, /proc/PID/map_files)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {k: {"share": [], "frozen_ms": []} for k in ("shared", "private")}
    for kind in ("shared", "private"):
        with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp, \
                ready_target(TARGET, str(args.mib), str(args.percent), kind, stdin=True) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            where = region(proc.pid, args.mib)
            images = Path(tmp) / "images"
            whole = stored_in(ckpt.dump(proc.pid, images).checkpoint, *where)
            for round_ in range(args.repeat + 1):
                proc.stdin.write("write\n")
                proc.stdin.flush()
                if proc.stdout.readline().strip() != "done":
                    raise RuntimeError("the target did not answer")
                report = ckpt.dump(proc.pid, images)
                if round_ == 0:
                    continue   # warm-up
                results[kind]["share"].append(100 * stored_in(report.checkpoint, *where) / whole)
                results[kind]["frozen_ms"].append(report.frozen_seconds * 1e3)
    if args.json:
        print(json.dumps({"mib": args.mib, "percent": args.percent, "repeat": args.repeat, "results": results}))
        return 0
    print(f"{args.mib} MiB buffer, {args.percent:g} % of its pages written between dumps, {args.repeat} rounds")
    print(f"{'buffer':8} {'incremental / full bytes (%)':>34} {'frozen (ms)':>32}")
    for kind, figures in results.items():
        print(f"{kind:8} {spread(figures['share'], 12):>34} {spread(figures['frozen_ms'], 12):>32}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())

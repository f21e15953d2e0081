"""Dumps of a process tree, ckpt beside CRIU (issue 9).

    python3 tools/bench_tree.py [--children 8] [--mib 64] [--percent 1] [--repeat 3] [--json]

A Python root forks ``--children`` children; the root and each child fill ``--mib`` MiB of
private memory with incompressible bytes.  ckpt dumps the tree once (full), then each
round every task writes ``--percent`` % of its pages and ckpt dumps again (incremental for
the root, which ckpt tracks; the other tasks are stored whole at every dump until their
tracking is built).  CRIU 4.2 dumps the same tree (``criu dump -t ROOT --leave-running``,
full: CRIU cannot dump incrementally on this kernel) once per round; its target is frozen
for its whole dump, so its figure is the command's wall time.

Figures, ``median [min-max]`` over ``--repeat`` rounds after one warm-up round: frozen ms
(ckpt's own figure; CRIU's wall time) and bytes stored (ckpt: zstd as written; CRIU: its
image directory).  Needs root.  Imports ckpt from this checkout, never from the current
directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ckpt  # noqa: E402
from benchlib import ready_target, spread  # noqa: E402

CRIU = "/work/shared/criu/criu"

# argv: children, MiB per task, percent written per round.  SIGUSR1 to the root makes the
# root write, and forward the signal to every child, which writes too.
TARGET = r"""
import ctypes, mmap, os, random, signal, sys
children, mib, share = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 100
page = mmap.PAGESIZE
kids = []

def fill():
    buf = mmap.mmap(-1, mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, mib << 20, 1 << 20):
        buf[off:off + (1 << 20)] = os.urandom(1 << 20)
    return buf

def write(buf):
    n = (mib << 20) // page
    for p in random.sample(range(n), max(1, int(n * share))):
        buf[p * page:p * page + 8] = os.urandom(8)

for _ in range(children):
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        buf = fill()
        signal.signal(signal.SIGUSR1, lambda *_: write(buf))
        while True:
            signal.pause()
    kids.append(pid)
buf = fill()

def round_(*_):
    write(buf)
    for kid in kids:
        os.kill(kid, signal.SIGUSR1)

signal.signal(signal.SIGUSR1, round_)
print("ready", flush=True)
while True:
    signal.pause()
"""


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--children", type=int, default=8)
    ap.add_argument("--mib", type=int, default=64, help="private memory of each task")
    ap.add_argument("--percent", type=float, default=1.0, help="share of each task's pages written per round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-criu", action="store_true", help="ckpt only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    use_criu = not a.no_criu and os.path.exists(CRIU)
    out: dict[str, list[float]] = {k: [] for k in ("ckpt_full_frozen_ms", "ckpt_full_bytes", "ckpt_inc_frozen_ms",
                                                  "ckpt_inc_bytes", "criu_frozen_ms", "criu_bytes")}
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp, \
            ready_target(TARGET, str(a.children), str(a.mib), str(a.percent)) as target:
        images = Path(tmp) / "ckpt"
        full = ckpt.dump(target.pid, images)
        for rnd in range(a.repeat + 1):
            os.kill(target.pid, signal.SIGUSR1)
            time.sleep(0.5 + a.children * a.mib * a.percent / 2000)   # every task has written
            inc = ckpt.dump(target.pid, images)
            criu_ms, criu_bytes = 0.0, 0
            if use_criu:
                criu_dir = Path(tmp) / f"criu-{rnd}"
                criu_dir.mkdir()
                t0 = time.monotonic()
                subprocess.run([CRIU, "dump", "-t", str(target.pid), "-D", str(criu_dir), "--leave-running",
                                "--shell-job", "-o", "dump.log"], check=True, capture_output=True, timeout=300)
                criu_ms = (time.monotonic() - t0) * 1e3
                criu_bytes = tree_size(criu_dir)
                shutil.rmtree(criu_dir)
            if rnd == 0:
                continue   # warm-up
            summary = inc.checkpoint.summary()
            out["ckpt_inc_frozen_ms"].append(inc.frozen_seconds * 1e3)
            out["ckpt_inc_bytes"].append(summary["bytes_compressed"])
            out["criu_frozen_ms"].append(criu_ms)
            out["criu_bytes"].append(criu_bytes)
        out["ckpt_full_frozen_ms"].append(full.frozen_seconds * 1e3)
        out["ckpt_full_bytes"].append(full.checkpoint.summary()["bytes_compressed"])
        processes = full.checkpoint.summary()["processes"]
    if a.json:
        print(json.dumps({"processes": processes, "mib_per_task": a.mib, "percent": a.percent, **out}, indent=1))
        return 0
    mib = 1 << 20
    print(f"tree of {processes} processes, {a.mib} MiB private each, {a.percent:g} % written per round")
    print(f"ckpt full         frozen {spread(out['ckpt_full_frozen_ms'])} ms  "
          f"stored {spread([b / mib for b in out['ckpt_full_bytes']])} MiB")
    print(f"ckpt incremental  frozen {spread(out['ckpt_inc_frozen_ms'])} ms  "
          f"stored {spread([b / mib for b in out['ckpt_inc_bytes']])} MiB")
    if use_criu:
        print(f"criu dump (full)  frozen {spread(out['criu_frozen_ms'])} ms  "
              f"stored {spread([b / mib for b in out['criu_bytes']])} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

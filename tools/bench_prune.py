"""How long a prune of a large chain takes, and what it frees (issue 10 item 1).

    python3 tools/bench_prune.py [--mib 1024] [--percent 10] [--json]

A Python target maps ``--mib`` MiB of private anonymous memory: half incompressible bytes,
half text-like pages (zstd makes them small).  Two chains of it, each pruned to its last
checkpoint (``ckpt.image.prune.prune(keep=1)``):

* ``incremental``: one full dump, then three incrementals, each after the target wrote
  ``--percent`` % of the buffer (256 KiB runs at random places): the last checkpoint takes
  most pages from the first, whose frames are copied as stored when all their pages are
  still needed, else their live pages are compressed again;
* ``full``: three full dumps (``track=False``: each names its parent, as dumps do), as in
  the issue: the last takes nothing, its pages.ckpt is hard-linked.

Prints, per chain, the bytes of the images dir before and after, the prune's time and the
frames copied and compressed again.  Needs root (ptrace).  Run from anywhere: it imports
ckpt from this checkout, never from the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ckpt  # noqa: E402
from benchlib import ready_target  # noqa: E402
from ckpt.image.prune import prune  # noqa: E402

# argv[1] MiB; each line on stdin writes argv[2] % of the buffer (256 KiB runs), answers "done".
TARGET = r"""
import mmap, os, random, sys
n = int(sys.argv[1]) << 20
buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf[: n // 2] = os.urandom(n // 2)
text = (b"the quick brown fox jumps over the lazy dog %d\n" * 100)[:4096]
for off in range(n // 2, n, 4096):
    buf[off:off + 4096] = text
rng = random.Random(1)
print("ready", flush=True)
for line in sys.stdin:
    for _ in range(n * int(sys.argv[2]) // 100 // (256 << 10)):
        off = rng.randrange(0, n - (256 << 10)) & ~4095
        buf[off:off + (256 << 10)] = os.urandom(256 << 10)
    print("done", flush=True)
"""


def _size(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


def run(mib: int, percent: int, kind: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp, \
            ready_target(TARGET, str(mib), str(percent), stdin=True) as target:
        images = Path(tmp) / "images"
        for i in range(4 if kind == "incremental" else 3):
            if i:
                assert target.stdin is not None and target.stdout is not None
                target.stdin.write("go\n")
                target.stdin.flush()
                target.stdout.readline()
            ckpt.dump(target.pid, images, track=kind == "incremental")
        before = _size(images)
        t0 = time.monotonic()
        report = prune(images, keep=1)
        seconds = time.monotonic() - t0
        fold = report.folds[0]
        return {"chain": kind, "mib": mib, "bytes_before": before, "bytes_after": _size(images),
                "seconds": round(seconds, 3), "pages_taken": fold.pages, "frames_copied": fold.frames_copied,
                "frames_compressed": fold.frames_compressed, "bytes_written": fold.bytes_written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--percent", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [run(args.mib, args.percent, kind) for kind in ("incremental", "full")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['chain']:>11}: {r['bytes_before'] / 2**20:8.1f} MiB -> {r['bytes_after'] / 2**20:8.1f} MiB "
              f"in {r['seconds']:.2f} s; {r['pages_taken']} pages taken, {r['frames_copied']} frames copied, "
              f"{r['frames_compressed']} compressed again, {r['bytes_written'] / 2**20:.1f} MiB written")


if __name__ == "__main__":
    main()

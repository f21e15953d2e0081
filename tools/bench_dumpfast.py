#!/usr/bin/env python3
"""Full dump of a 1 GiB process: ckpt (two checkouts side by side) against CRIU, paired.

The target holds MiB of private anonymous memory, half random, a quarter text, a
quarter zeros (issue 11's recipe).  Every variant is a whole command (``python3 -m
ckpt dump ...``, ``criu dump ...``), timed from outside, run in turn with the others
(A B C ... A B C ...) after one warm-up each, its images removed after it; the
table gives the median [min-max] of the wall time, and for ckpt the time inside
the dump (``--json`` wall_ms: without the interpreter's start and imports), the
frozen time and the peak RSS.  ckpt runs with ``--no-track`` so that every dump
is full.  CRIU runs with ``--leave-running``; "CRIU+sync" fsyncs each file it wrote
afterwards (``sync FILE...``), the same work as ckpt's durable commit.

Python runs with bytecode caching on (PYTHONPYCACHEPREFIX, one directory per
checkout), as an installed ckpt would: this workplace sets PYTHONDONTWRITEBYTECODE,
which would add the compilation of every module (0.2-0.3 s) to each command.

    python3 tools/bench_dumpfast.py --before /work/main --reps 5 [--mib 1024] [--criu PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))   # benchlib, from this directory only
from benchlib import spread  # noqa: E402

TARGET = r"""
import mmap, os, signal, sys
size = int(sys.argv[1]) << 20
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
chunk = 64 << 20
for off in range(0, size // 2, chunk):
    buf[off:off + min(chunk, size // 2 - off)] = os.urandom(min(chunk, size // 2 - off))
text = b"".join(b"the quick brown fox jumps over the lazy dog %d\n" % i for i in range(200000))
off = size // 2
while off < size * 3 // 4:
    n = min(len(text), size * 3 // 4 - off)
    buf[off:off + n] = text[:n]
    off += n
zero = bytes(chunk)
for off in range(size * 3 // 4, size, chunk):
    buf[off:off + min(chunk, size - off)] = zero[:min(chunk, size - off)]
print("ready", flush=True)
signal.pause()
"""


def ckpt_cmd(checkout: Path, pid: int, images: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    # PYTHONSAFEPATH: ``python -m`` would put the current directory first on sys.path,
    # and with it whichever checkout this script was started from.
    env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONSAFEPATH="1",
               PYTHONPYCACHEPREFIX=f"/tmp/ckpt-pyc-{checkout.name}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return [sys.executable, "-m", "ckpt", "dump", "-t", str(pid), "-D", str(images), "--no-track", "--json",
            *extra], env


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a command to its end (in /): wall seconds, peak RSS (KiB) and its stdout."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE, cwd="/")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0 and "RLIMIT_NOFILE" not in err:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return wall, usage.ru_maxrss, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="a checkout to compare with (e.g. /work/main)")
    ap.add_argument("--after", type=Path, default=HERE.parent, help="this checkout by default")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--criu", default="/work/shared/criu/criu")
    ap.add_argument("--only", help="comma-separated variant names to run")
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the images go")
    args = ap.parse_args()

    target = subprocess.Popen([sys.executable, "-c", TARGET, str(args.mib)], stdout=subprocess.PIPE, text=True)
    work = Path(tempfile.mkdtemp(prefix="bench-dumpfast-", dir=args.dir))
    try:
        assert target.stdout is not None
        if target.stdout.readline().strip() != "ready":
            raise RuntimeError("the target did not start")
        pid = target.pid
        variants: dict[str, tuple[str, list[str]]] = {}   # name -> (checkout or "criu", extra args)
        for label, checkout in (("before", args.before), ("after", args.after)):
            if checkout is None:
                continue
            variants[f"{label} default"] = (str(checkout), [])
            if label == "after":
                variants[f"{label} --no-fsync"] = (str(checkout), ["--no-fsync"])
            variants[f"{label} --compress 0"] = (str(checkout), ["--compress", "0"])
            if label == "after":
                variants[f"{label} --compress 0 --no-fsync"] = (str(checkout), ["--compress", "0", "--no-fsync"])
        if args.criu and Path(args.criu).exists():
            variants["CRIU"] = ("criu", [])
            variants["CRIU+sync"] = ("criu", ["sync"])
        if args.only:
            keep = set(args.only.split(","))
            variants = {k: v for k, v in variants.items() if k in keep}
        results: dict[str, dict[str, list[float]]] = {k: {"wall": [], "inside": [], "frozen": [], "rss": []}
                                                      for k in variants}
        for rep in range(args.reps + 1):
            for name, (what, extra) in variants.items():
                images = work / "images"
                if what == "criu":
                    images.mkdir()
                    t0 = time.perf_counter()
                    wall, rss, _ = run([args.criu, "dump", "-t", str(pid), "-D", str(images), "--shell-job",
                                        "--leave-running"])
                    if extra == ["sync"]:
                        run(["sync", *map(str, sorted(images.iterdir())), str(images)])
                        wall = time.perf_counter() - t0
                    inside = frozen = None
                else:
                    argv, env = ckpt_cmd(Path(what), pid, images, *extra)
                    wall, rss, out = run(argv, env)
                    report = json.loads(out)
                    inside, frozen = report["wall_ms"] / 1e3, report["frozen_ms"]
                shutil.rmtree(images)
                if rep == 0:
                    continue   # warm-up
                r = results[name]
                r["wall"].append(wall)
                r["rss"].append(rss / 1024)
                if inside is not None:
                    r["inside"].append(inside)
                    r["frozen"].append(frozen)
            print(f"rep {rep} done", file=sys.stderr, flush=True)
        print(f"full dump of {args.mib} MiB (half random, 1/4 text, 1/4 zeros), {args.reps} runs each, "
              "paired in turn; median [min-max]")
        print(f"{'variant':34s} {'wall s':>24s} {'in dump s':>24s} {'frozen ms':>24s} {'peak RSS MB':>24s}")
        for name, r in results.items():
            cells = [spread(r[k]) if r[k] else "-" for k in ("wall", "inside", "frozen", "rss")]
            print(f"{name:34s} " + " ".join(f"{c:>24s}" for c in cells))
    finally:
        target.kill()
        target.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Cost per mapping (issue 11 item 6): ckpt and CRIU 4.2 on a process with many mappings.

The target is tests/programs/many_maps.c: N one-page regions that never merge
(anonymous read-write and read-only in turn; ``--file`` makes every other one a
private mapping of a file's page, like CRIU's zdtm maps06).  Per run:

* ckpt: a full dump, then ``--reps`` incrementals, each after the target wrote 3
  pages (frozen ms and wall ms from ``ckpt dump --json``), then ``--reps``
  restores of the last checkpoint (``ckpt restore -d``: wall until it returned,
  the process running), each killed again;
* CRIU (``--criu``, default ../shared/criu/criu when present): ``--reps`` times a
  fresh target dumped (``criu dump``: the target is frozen for the whole dump, so
  its wall time is its frozen time) and restored (``criu restore -d``).

With ``--ckpt DIR`` given twice or more (e.g. the main checkout, then a branch), the
incrementals of one target alternate between the checkouts (``--reps`` each, the order
reversed every other round, one images directory): the frozen times of a change measured
side by side, on the same layout and load.  Restores and CRIU are then left out.

Prints medians with [min-max].  Run as root:  python3 tools/bench_maps.py --maps 20000
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

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tools/ itself, never the cwd
from benchlib import spread  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "programs" / "many_maps.c"
CRIU = REPO.parent / "shared" / "criu" / "criu"


class Target:
    """One many_maps process: commands on its stdin, answers on its stdout."""

    def __init__(self, binary: Path, n: int, file: Path | None) -> None:
        argv = [str(binary), str(n)] + ([str(file)] if file else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=False)
        line = self.readline()
        if line.split()[:1] != ["ready"]:
            raise RuntimeError(f"many_maps said {line!r}")
        self.pid = self.proc.pid

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def cmd(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.readline()
        if not answer.startswith("ok"):
            raise RuntimeError(f"many_maps: {line!r} -> {answer!r}")
        return answer[3:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def ckpt(*args: str | int, timeout: float = 600, checkout: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    result = subprocess.run([sys.executable, "-m", "ckpt", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=checkout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(map(str, args))}: {result.stderr.strip()}")
    return result


def kill_pid(pid: int) -> None:
    """SIGKILL a process that is not our child and wait until it is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.01)


def bench_ckpt(binary: Path, n: int, file: Path | None, reps: int, tmp: Path) -> dict[str, list[float]]:
    images = tmp / "ckpt-images"
    t = Target(binary, n, file)
    out: dict[str, list[float]] = {"full_wall": [], "full_frozen": [], "incr_frozen": [], "incr_wall": [],
                                   "restore": []}
    try:
        d = json.loads(ckpt("dump", "-t", t.pid, "-D", images, "--json").stdout)
        out["full_wall"].append(d["wall_ms"])
        out["full_frozen"].append(d["frozen_ms"])
        for i in range(reps):
            t.cmd(f"write 3 {i + 1}")
            d = json.loads(ckpt("dump", "-t", t.pid, "-D", images, "--json").stdout)
            assert d["kind"] == "incremental", d
            out["incr_frozen"].append(d["frozen_ms"])
            out["incr_wall"].append(d["wall_ms"])
        t.cmd("detach")
        ckpt("dump", "-t", t.pid, "-D", images, "--kill", "-q")
    finally:
        t.kill()
    for _ in range(reps):
        t0 = time.monotonic()
        r = ckpt("restore", "-D", images, "-d", "--stdin", "/dev/null", "--stdout", "/dev/null",
                 "--stderr", "/dev/null")
        out["restore"].append((time.monotonic() - t0) * 1e3)
        kill_pid(int(r.stdout.split()[0]))
    return out


def bench_paired(checkouts: list[Path], binary: Path, n: int, file: Path | None, reps: int,
                 tmp: Path) -> dict[Path, list[float]]:
    """One target, one full dump, then ``reps`` rounds of one incremental per checkout (3
    pages written before each), alternating; the frozen ms of each checkout's incrementals."""
    images = tmp / "paired-images"
    t = Target(binary, n, file)
    out: dict[Path, list[float]] = {c: [] for c in checkouts}
    try:
        ckpt("dump", "-t", t.pid, "-D", images, "--json", checkout=checkouts[0])
        k = 0
        for i in range(reps):
            for c in checkouts if i % 2 == 0 else checkouts[::-1]:
                k += 1
                t.cmd(f"write 3 {k}")
                d = json.loads(ckpt("dump", "-t", t.pid, "-D", images, "--json", checkout=c).stdout)
                assert d["kind"] == "incremental", d
                out[c].append(d["frozen_ms"])
    finally:
        t.kill()
    return out


def bench_criu(criu: Path, binary: Path, n: int, file: Path | None, reps: int, tmp: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"dump": [], "restore": []}
    for i in range(reps):
        images = tmp / f"criu-{i}"
        images.mkdir()
        t = Target(binary, n, file)
        try:
            t.cmd("detach")   # fds 0-2 to /dev/null: no pipe of ours in the images
            t0 = time.monotonic()
            subprocess.run([str(criu), "dump", "-t", str(t.pid), "-D", str(images), "--shell-job"],
                           check=True, capture_output=True, timeout=600)
            out["dump"].append((time.monotonic() - t0) * 1e3)
        finally:
            t.kill()
        t0 = time.monotonic()
        pidfile = images / "restored.pid"
        subprocess.run([str(criu), "restore", "-D", str(images), "--shell-job", "-d", "--pidfile", str(pidfile)],
                       check=True, capture_output=True, timeout=600)
        out["restore"].append((time.monotonic() - t0) * 1e3)
        kill_pid(int(pidfile.read_text()))
        shutil.rmtree(images)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maps", type=int, default=20000, help="regions (one VMA each; default 20000)")
    ap.add_argument("--reps", type=int, default=5, help="incrementals, restores and CRIU runs (default 5)")
    ap.add_argument("--file", action="store_true", help="every other region a private file page (zdtm maps06)")
    ap.add_argument("--criu", default=str(CRIU), help="CRIU binary ('' to skip)")
    ap.add_argument("--ckpt", action="append", type=Path,
                    help="a ckpt checkout, given twice or more: incrementals alternated between them")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-maps-") as d:
        tmp = Path(d)
        binary = tmp / "many_maps"
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
        file = tmp / "mapped" if args.file else None
        if args.ckpt and len(args.ckpt) > 1:
            paired = bench_paired([c.resolve() for c in args.ckpt], binary, args.maps, file, args.reps, tmp)
            print(f"many mappings: {args.maps} regions{' (file pages in turn)' if args.file else ''}, "
                  f"incrementals of 3 written pages alternated, {args.reps} each, frozen ms median [min-max]")
            for checkout, values in paired.items():
                print(f"  {str(checkout):40s} {spread(values)}")
            return 0
        c = bench_ckpt(binary, args.maps, file, args.reps, tmp)
        k = bench_criu(Path(args.criu), binary, args.maps, file, args.reps, tmp) \
            if args.criu and os.path.exists(args.criu) else None
    print(f"many mappings: {args.maps} regions{' (file pages in turn)' if args.file else ''}, "
          f"{args.reps} reps, ms median [min-max]")
    print(f"  ckpt full dump wall        {spread(c['full_wall'])}")
    print(f"  ckpt full dump frozen      {spread(c['full_frozen'])}")
    print(f"  ckpt incremental frozen    {spread(c['incr_frozen'])}   (3 pages written; target <= 25 ms)")
    print(f"  ckpt incremental wall      {spread(c['incr_wall'])}")
    print(f"  ckpt restore -d            {spread(c['restore'])}")
    if k is not None:
        print(f"  CRIU dump (= frozen)       {spread(k['dump'])}")
        print(f"  CRIU restore -d            {spread(k['restore'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

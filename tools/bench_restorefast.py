#!/usr/bin/env python3
"""Restore time, paired: two ckpt checkouts and CRIU 4.2 on the same images (issue 11 items 2, 6).

Makes one target's images once, then restores them ``--reps`` times with each ckpt
checkout (``--a``, default the main checkout; ``--b``, this one) and with CRIU, in
turn (a, b, CRIU, then b, CRIU, a, ...), so that the load of the machine falls on all
alike.  Each figure is the wall time of ``restore -d`` until it returned with the
process running; the restored process is killed after each.

Targets (``--target``):

* ``maps``: tests/programs/many_maps.c with ``--maps`` one-page regions: a full
  checkpoint, 3 incrementals of 3 written pages, and an incremental with ``--kill``
  (the restore reads a chain of 5, as tools/bench_maps.py's does);
* ``gib``: a Python process holding ``--mib`` MiB, half random, a quarter text, a
  quarter zeros (the issue's 1 GiB process), dumped with default settings.

The images are made with checkout ``--a`` (the format is the same).  Prints medians
with [min-max].  Run as root:  python3 tools/bench_restorefast.py --target maps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tools/ itself, never the cwd
from bench_maps import Target, kill_pid  # noqa: E402
from benchlib import spread  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
CRIU = HERE.parent / "shared" / "criu" / "criu"


def ckpt(checkout: Path, *args: str | int | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    result = subprocess.run([sys.executable, "-m", "ckpt", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=checkout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(map(str, args))}: {result.stderr.strip()}")
    return result


# The gib target: the 1 GiB process (half random, a quarter text, a quarter zeros,
# all present), in Python so that its fds are files both ckpt and CRIU dump as they are.
GIB_SCRIPT = """
import mmap, os, signal, sys
size = int(sys.argv[1]) << 20
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
chunk = 16 << 20
for off in range(0, size // 2, chunk):
    buf[off:off + chunk] = os.urandom(min(chunk, size // 2 - off))
text = b"".join(b"the quick brown fox jumps over the lazy dog %d\\n" % i for i in range(400000))
off = size // 2
while off < size * 3 // 4:
    n = min(len(text), size * 3 // 4 - off)
    buf[off:off + n] = text[:n]
    off += n
zero = bytes(chunk)
for off in range(size * 3 // 4, size, chunk):
    buf[off:off + chunk] = zero[:size - off]
print("ready", os.getpid(), flush=True)
while True:
    signal.pause()
"""


class FileTarget:
    """The gib target: stdin /dev/null, stdout and stderr a file it says ``ready`` in."""

    def __init__(self, tmp: Path, mib: int) -> None:
        script = tmp / "gib_target.py"
        script.write_text(GIB_SCRIPT)
        self.log = tmp / f"gib_target.{time.monotonic_ns()}.out"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, str(script), str(mib)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 300
        while not self.log.read_text().startswith("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gib target: {self.log.read_text()!r}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def make_images(kind: str, checkout: Path, tmp: Path, maps: int, mib: int, criu: str) -> tuple[Path, Path | None]:
    """ckpt's images of one target and CRIU's of another (same program, same content)."""
    images = tmp / "ckpt-images"
    binary = tmp / "many_maps"
    if kind == "maps":
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(HERE / "tests" / "programs" / "many_maps.c")],
                       check=True)

    def start() -> Target | FileTarget:
        return Target(binary, maps, None) if kind == "maps" else FileTarget(tmp, mib)

    t = start()
    try:
        ckpt(checkout, "dump", "-t", t.pid, "-D", images, "--json")
        if isinstance(t, Target):
            for i in range(3):
                t.cmd(f"write 3 {i + 1}")
                assert json.loads(ckpt(checkout, "dump", "-t", t.pid, "-D", images, "--json").stdout)["kind"] \
                    == "incremental"
            t.cmd("detach")
            ckpt(checkout, "dump", "-t", t.pid, "-D", images, "--kill", "-q")
    finally:
        t.kill()
    if not criu:
        return images, None
    criu_images = tmp / "criu-images"
    criu_images.mkdir()
    t = start()
    try:
        if isinstance(t, Target):
            t.cmd("detach")   # fds 0-2 to /dev/null: no pipe of ours in the images
        subprocess.run([criu, "dump", "-t", str(t.pid), "-D", str(criu_images), "--shell-job"],
                       check=True, capture_output=True, timeout=600)
    finally:
        t.kill()
    return images, criu_images


def restore_ckpt(checkout: Path, images: Path) -> float:
    t0 = time.monotonic()
    r = ckpt(checkout, "restore", "-D", images, "-d", "--stdin", "/dev/null", "--stdout", "/dev/null",
             "--stderr", "/dev/null")
    wall = time.monotonic() - t0
    kill_pid(int(r.stdout.split()[0]))
    return wall * 1e3


def restore_criu(criu: str, images: Path) -> float:
    pidfile = images / "restored.pid"
    pidfile.unlink(missing_ok=True)
    t0 = time.monotonic()
    subprocess.run([criu, "restore", "-D", str(images), "--shell-job", "-d", "--pidfile", str(pidfile)],
                   check=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    pid = int(pidfile.read_text())
    kill_pid(pid)
    # CRIU restores the recorded pid: the next restore needs it free, not a zombie init has yet to reap.
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    return wall * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=("maps", "gib"), default="maps")
    ap.add_argument("--maps", type=int, default=20000, help="regions of the maps target (default 20000)")
    ap.add_argument("--mib", type=int, default=1024, help="MiB of the gib target (default 1024)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--a", type=Path, default=HERE.parent / "main", help="first ckpt checkout (default ../main)")
    ap.add_argument("--b", type=Path, default=HERE, help="second ckpt checkout (default this one)")
    ap.add_argument("--criu", default=str(CRIU) if CRIU.exists() else "", help="CRIU binary ('' to skip)")
    args = ap.parse_args(argv)
    out: dict[str, list[float]] = {"a": [], "b": [], "criu": []}
    with tempfile.TemporaryDirectory(prefix="bench-restorefast-") as d:
        tmp = Path(d)
        images, criu_images = make_images(args.target, args.a, tmp, args.maps, args.mib, args.criu)
        runs = {"a": lambda: restore_ckpt(args.a, images), "b": lambda: restore_ckpt(args.b, images)}
        if criu_images is not None:
            runs["criu"] = lambda: restore_criu(args.criu, criu_images)
        order = list(runs)
        for rep in range(args.reps):
            for name in order[rep % len(order):] + order[:rep % len(order)]:   # each goes first in turn
                out[name].append(runs[name]())
    what = f"{args.maps} mappings" if args.target == "maps" else f"{args.mib} MiB mixed"
    print(f"restore -d until it returned, {what}, {args.reps} paired reps, ms median [min-max]")
    print(f"  ckpt {args.a}: {spread(out['a'])}")
    print(f"  ckpt {args.b}: {spread(out['b'])}")
    if out["criu"]:
        print(f"  CRIU 4.2:        {spread(out['criu'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

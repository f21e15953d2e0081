"""What unix sockets add to the frozen window: ``ckpt.files.capture`` on N sockets.

    python tools/bench_unix.py [--sockets 100] [--repeat 9]

Starts a Python target per layout holding ``--sockets`` unix sockets, freezes it
as a dump does (``FrozenProcess``) and times, side by side in the same run:

* ``capture``  -- ``ckpt.files.capture(pid)``: what a dump does now (one
  unix_diag dump of the namespace, a scan of the other processes' fds, and per
  socket its options, ``SO_PEERCRED``, fdinfo, and its queue peeked at);
* ``as-unsupported`` -- the same, with the unix kind left out of the registry:
  what the dump did before (the /proc reads, a record that names it, no more).

Layouts: ``pairs`` (stream socketpairs, 100 bytes queued each way), ``dgram``
(datagram socketpairs, 3 datagrams queued each way), ``listen`` (stream sockets
listening on abstract names), ``bound`` (datagram sockets bound to paths in a
temporary directory, empty).  Prints the median and [min-max] in milliseconds of
this thread's CPU time (the machine may be loaded: wall time would count the
others' work), and the difference per socket.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ckpt import files  # noqa: E402
from ckpt.files import unix  # noqa: E402
from ckpt.live import FrozenProcess  # noqa: E402
from benchlib import ready_target, spread  # noqa: E402  (tools/, the script's own directory)

TARGET = r"""
import os, socket, sys, time
layout, n, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keep = []
for i in range(n // 2 if layout in ("pairs", "dgram") else n):
    if layout == "pairs":
        a, b = socket.socketpair()
        a.send(b"a" * 100); b.send(b"b" * 100)
        keep += [a, b]
    elif layout == "dgram":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for _ in range(3):
            a.send(b"a" * 100); b.send(b"b" * 100)
        keep += [a, b]
    elif layout == "listen":
        s = socket.socket(socket.AF_UNIX); s.bind(f"\0bench-unix-{os.getpid()}-{i}".encode()); s.listen(8)
        keep.append(s)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(f"{where}/s{i}")
        keep.append(s)
print("ready", flush=True)
time.sleep(3600)
"""


def measure(pid: int, repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"capture": [], "as-unsupported": []}
    kinds = files.KINDS
    without = tuple(k for k in kinds if k is not unix.UNIX)
    for _ in range(repeat):
        with FrozenProcess(pid):
            t0 = time.thread_time()
            state = files.capture(pid)
            t1 = time.thread_time()
            files.KINDS = without
            try:
                files.capture(pid)
            finally:
                files.KINDS = kinds
            t2 = time.thread_time()
        assert all(f["kind"] == "unix" for f in state["files"] if f["target"].startswith("socket:"))
        out["capture"].append((t1 - t0) * 1e3)
        out["as-unsupported"].append((t2 - t1) * 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print(f"{'layout':8} {'socks':>5}  " + "  ".join(f"{k + ' ms':>24}" for k in ("capture", "as-unsupported"))
          + "  added/socket")
    for layout in ("pairs", "dgram", "listen", "bound"):
        with tempfile.TemporaryDirectory() as where, ready_target(TARGET, layout, str(args.sockets), where) as proc:
            figures = measure(proc.pid, args.repeat)
            cells = [spread(v) for v in figures.values()]
            added = statistics.median(figures["capture"]) - statistics.median(figures["as-unsupported"])
            print(f"{layout:8} {args.sockets:5}  " + "  ".join(cells) + f"  {added / args.sockets * 1e3:7.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

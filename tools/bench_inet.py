"""What TCP and UDP sockets add to the frozen window: ``ckpt.files.capture`` on N sockets.

    python tools/bench_inet.py [--sockets 100] [--repeat 9]

Starts a Python target per layout holding ``--sockets`` sockets, freezes it as a
dump does (``FrozenProcess``) and times, side by side in the same run:

* ``capture``  -- ``ckpt.files.capture(pid)``: what a dump does now (every socket
  read from the fd itself: about 110 getsockopt calls for a TCP/IPv6 socket);
* ``as-unsupported`` -- the same, with the inet kind left out of the registry:
  what the dump did before (the /proc reads, a record that names it, no more);
* ``inet``     -- ``ckpt.files.inet.capture`` alone on each socket (fds taken
  with pidfd_getfd beforehand).

Layouts: ``listen4`` (TCP/IPv4 listening on 127.0.0.1), ``listen6`` (TCP/IPv6
listening on ::1), ``udp`` (UDP/IPv4 bound), ``bound`` (TCP/IPv4 bound, not
listening: each asks inet_diag for the bound sockets), ``conn`` (established
TCP connections, both ends in the target, 1000 bytes unread in each: read in
TCP_REPAIR mode).  Prints the median and [min-max] in milliseconds, and the time
per socket.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ckpt import files, procfs  # noqa: E402
from ckpt._sys import pidfd as pidfd_sys  # noqa: E402
from ckpt.files import inet  # noqa: E402
from ckpt.live import FrozenProcess  # noqa: E402
from benchlib import ready_target, spread  # noqa: E402  (tools/, the script's own directory)

TARGET = r"""
import os, socket, sys, time
layout, n = sys.argv[1], int(sys.argv[2])
keep = []
if layout == "conn":
    listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(n)
    for i in range(n // 2):
        c = socket.create_connection(listener.getsockname()); a, _ = listener.accept()
        c.sendall(b"q" * 1000)   # a few bytes in each receive queue
        keep += [c, a]
    n = 0
for i in range(n):
    if layout == "listen6":
        s = socket.socket(socket.AF_INET6); s.bind(("::1", 0)); s.listen(16)
    elif layout == "udp":
        s = socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    else:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 0))
        if layout == "listen4":
            s.listen(16)
    keep.append(s)
print("ready", flush=True)
time.sleep(3600)
"""


def measure(pid: int, repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"capture": [], "as-unsupported": [], "inet": []}
    kinds = files.KINDS
    without = tuple(k for k in kinds if k is not inet.INET)
    sockets = [f.fd for f in procfs.read_open_files(pid) if f.kind == "socket"]
    for _ in range(repeat):
        with FrozenProcess(pid):
            t0 = time.perf_counter()
            files.capture(pid)
            t1 = time.perf_counter()
            files.KINDS = without
            try:
                files.capture(pid)
            finally:
                files.KINDS = kinds
            t2 = time.perf_counter()
            pidfd = pidfd_sys.pidfd_open(pid)
            copies = [pidfd_sys.pidfd_getfd(pidfd, fd) for fd in sockets]
            t3 = time.perf_counter()
            for fd in copies:
                inet.capture(fd, pid)
            t4 = time.perf_counter()
            for fd in [*copies, pidfd]:
                os.close(fd)
        out["capture"].append((t1 - t0) * 1e3)
        out["as-unsupported"].append((t2 - t1) * 1e3)
        out["inet"].append((t4 - t3) * 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print(f"{'layout':8} {'socks':>5}  " + "  ".join(f"{k + ' ms':>24}" for k in
                                                    ("capture", "as-unsupported", "inet")) + "  inet/socket")
    for layout in ("listen4", "listen6", "udp", "bound", "conn"):
        with ready_target(TARGET, layout, str(args.sockets)) as proc:
            figures = measure(proc.pid, args.repeat)
            cells = [spread(v) for v in figures.values()]
            per = statistics.median(figures["inet"]) / args.sockets * 1e3
            print(f"{layout:8} {args.sockets:5}  " + "  ".join(cells) + f"  {per:7.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

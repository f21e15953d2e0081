"""How long the fd table takes in the frozen window: ``ckpt.files.capture`` on 1,000 fds.

    python tools/bench_fds.py [--fds 1000] [--repeat 7] [--layouts distinct dups one-inode eventfd ...]

Starts a Python target per layout, freezes it as a dump does (``FrozenProcess``)
and times, side by side in the same run:

* ``capture``  -- ``ckpt.files.capture(pid)``: /proc per fd, kcmp among fds of one
  inode, one record per open file description (what a dump does now);
* ``baseline`` -- what the dump did before ckpt/files: ``procfs.read_open_files``
  and a statx (``trust.identity_record``) per fd, no grouping;
* ``kcmp``     -- the kcmp calls alone (``files.dump.descriptions`` on probes read
  beforehand).

Layouts: ``distinct`` (every fd its own file: no kcmp at all), ``dups`` (100
files, each open file dup'd to 10 fds), ``one-inode`` (one file opened
``fds/2`` times, each dup'd once: the worst case for kcmp, one group of all).
With ``--layouts``, objects on anonymous inodes, ``fds`` of one kind:
``eventfd``, ``signalfd``, ``timerfd`` (periodic, 10 ms), ``inotify`` (one
watch each), and ``anon-mixed`` (``fds/4`` of each) -- every one of them is
the same inode (fs/anon_inodes.c), so kcmp sorts them all as one group, and
the capture adds each kind's own work (fdinfo, and for timerfd and inotify the
fd itself: timerfd_gettime, FIONREAD, open_by_handle_at).  ``memfd`` and
``ghost``: ``fds`` memfds, or files deleted while open, of 16 KiB each (4 data
pages, a hole, 1 more): each a file object whose content the capture reads
(ckpt/files/objects.py: a reopen, SEEK_DATA/SEEK_HOLE, pread).  ``pty``:
``fds/2`` pty pairs, master and slave each held (ckpt/files/tty.py: a dozen
ioctls per fd, and one pass over /proc for other holders of the pairs).
Prints the median and [min-max] in milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ckpt import files, procfs, trust  # noqa: E402
from ckpt.files.base import Probe  # noqa: E402
from ckpt.files.dump import descriptions  # noqa: E402
from ckpt.live import FrozenProcess  # noqa: E402
from benchlib import ready_target, spread  # noqa: E402  (tools/, the script's own directory)

TARGET = r"""
import os, resource, sys, time
layout, n, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
fds = []
if layout == "distinct":
    for i in range(n):
        fds.append(os.open(f"{where}/f{i}", os.O_RDWR | os.O_CREAT, 0o600))
elif layout == "dups":
    for i in range(n // 10):
        fd = os.open(f"{where}/f{i}", os.O_RDWR | os.O_CREAT, 0o600)
        fds += [fd] + [os.dup(fd) for _ in range(9)]
elif layout == "one-inode":
    for i in range(n // 2):
        fd = os.open(f"{where}/one", os.O_RDWR | os.O_CREAT, 0o600)
        fds += [fd, os.dup(fd)]
elif layout in ("memfd", "ghost"):
    for i in range(n):
        if layout == "memfd":
            fd = os.memfd_create(f"m{i}", os.MFD_ALLOW_SEALING)
        else:
            fd = os.open(f"{where}/g{i}", os.O_RDWR | os.O_CREAT, 0o600)
            os.unlink(f"{where}/g{i}")
        os.pwrite(fd, bytes([i % 251 + 1]) * 16384, 0)
        os.pwrite(fd, b"tail", 65536)
        fds.append(fd)
elif layout == "pty":
    for i in range(n // 2):
        master, slave = os.openpty()
        fds += [master, slave]
else:
    sys.path.insert(0, sys.argv[4])
    from ckpt._sys import inotify, signalfd, timerfd
    kinds = ("eventfd", "signalfd", "timerfd", "inotify") if layout == "anon-mixed" else (layout,)
    for kind in kinds:
        for i in range(n // len(kinds)):
            if kind == "eventfd":
                fds.append(os.eventfd(i))
            elif kind == "signalfd":
                fds.append(signalfd.signalfd(1 << (i % 30), 0))
            elif kind == "timerfd":
                fds.append(timerfd.timerfd_create(timerfd.CLOCK_MONOTONIC, 0))
                timerfd.timerfd_settime(fds[-1], 0, 10_000_000, 10_000_000)
            else:
                fds.append(inotify.inotify_init1(0))
                inotify.add_watch(fds[-1], where, 0x100)
print("ready", flush=True)
time.sleep(3600)
"""


def measure(pid: int, repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"capture": [], "baseline": [], "kcmp": []}
    for _ in range(repeat):
        with FrozenProcess(pid):
            t0 = time.perf_counter()
            files.capture(pid)
            t1 = time.perf_counter()
            opened = procfs.read_open_files(pid)
            for f in opened:
                trust.identity_record(f"/proc/{pid}/fd/{f.fd}")
            t2 = time.perf_counter()
            probes = [Probe(pid, f, lambda fd: -1) for f in opened]
            t3 = time.perf_counter()
            descriptions(pid, probes)
            t4 = time.perf_counter()
        out["capture"].append((t1 - t0) * 1e3)
        out["baseline"].append((t2 - t1) * 1e3)
        out["kcmp"].append((t4 - t3) * 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fds", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--layouts", nargs="+", default=["distinct", "dups", "one-inode"],
                        choices=["distinct", "dups", "one-inode", "eventfd", "signalfd", "timerfd", "inotify",
                                 "anon-mixed", "memfd", "ghost", "pty"])
    args = parser.parse_args()
    repo = str(Path(__file__).resolve().parent.parent)
    print(f"{'layout':10} {'fds':>5} {'files':>5}  " + "  ".join(f"{k + ' ms':>22}" for k in
                                                              ("capture", "baseline", "kcmp")))
    for layout in args.layouts:
        with tempfile.TemporaryDirectory() as where, ready_target(TARGET, layout, str(args.fds), where, repo) as proc:
            with FrozenProcess(proc.pid):
                state = files.capture(proc.pid)
            figures = measure(proc.pid, args.repeat)
            cells = [spread(v, 7) for v in figures.values()]
            print(f"{layout:10} {len(state['fds']):5} {len(state['files']):5}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())

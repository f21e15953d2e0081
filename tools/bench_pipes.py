"""What pipes add to the frozen window: ``ckpt.files.capture`` of a target with 100 pipes.

    python tools/bench_pipes.py [--pipes 100] [--bytes 4096] [--repeat 9]

Starts a Python target holding ``--pipes`` pipes (both ends; ``--bytes`` in each),
freezes it as a dump does (``FrozenProcess``) and times, side by side in the same run:

* ``pipes``    -- ``ckpt.files.capture(pid)``, pipes recorded by ckpt/files/pipe.py
  (tee of their bytes, poll, the scan of the other processes' fds);
* ``refused``  -- the same capture with the pipe kind claiming nothing, so that the
  pipes are recorded by name only, as before ckpt/files/pipe.py;
* ``scan``     -- the scan of every other process's fds alone (``pipe._holders``).

Each as wall time and as this thread's CPU time (``time.thread_time``: syscalls
included), which a loaded machine disturbs less.

Then the frozen time of whole dumps (``ckpt.dump(..., track=False)``: ``frozen_ms``),
with and without the pipe kind.  Prints the median and [min-max] in milliseconds, and
how many fds the other processes of the machine hold (what the scan reads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ckpt  # noqa: E402
from ckpt import files  # noqa: E402
from ckpt.files import pipe  # noqa: E402
from ckpt.files.base import Capture, Probe  # noqa: E402
from ckpt import procfs  # noqa: E402
from ckpt.live import FrozenProcess  # noqa: E402
from benchlib import ready_target, spread  # noqa: E402  (tools/, the script's own directory)

TARGET = r"""
import os, sys, time
n, size = int(sys.argv[1]), int(sys.argv[2])
ends = [os.pipe() for _ in range(n)]
for r, w in ends:
    os.write(w, b"p" * size)
print("ready", flush=True)
time.sleep(3600)
"""


@contextmanager
def pipes_refused() -> Iterator[None]:
    """The pipe kind claims nothing for the block: pipes are recorded as "unsupported"."""
    claims = pipe.PIPE.claims
    pipe.PIPE.claims = lambda probe: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        pipe.PIPE.claims = claims  # type: ignore[method-assign]


def refused_capture(pid: int) -> object:
    with pipes_refused():
        return files.capture(pid)


def other_fds(pid: int) -> int:
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                total += len(os.listdir(f"/proc/{entry}/fd"))
            except OSError:
                pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipes", type=int, default=100)
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with ready_target(TARGET, str(args.pipes), str(args.bytes)) as proc:
        figures: dict[str, list[float]] = {name: [] for name in ("pipes", "refused", "scan")}
        cpu: dict[str, list[float]] = {name: [] for name in figures}
        for _ in range(args.repeat):
            with FrozenProcess(proc.pid):
                capture = Capture(proc.pid)
                capture.probes += [Probe(proc.pid, f, lambda fd: -1, capture)
                                   for f in procfs.read_open_files(proc.pid)]
                for name, work in (("pipes", lambda: files.capture(proc.pid)),
                                   ("refused", lambda: refused_capture(proc.pid)),
                                   ("scan", lambda: pipe._holders(capture))):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    result = work()
                    figures[name].append((time.perf_counter() - t0) * 1e3)
                    cpu[name].append((time.thread_time() - c0) * 1e3)
                    if name == "pipes":
                        state = result
        kinds = [f["kind"] for f in state["files"]]
        print(f"{args.pipes} pipes of {args.bytes} bytes ({kinds.count('pipe')} pipe records); "
              f"the other processes hold {other_fds(proc.pid)} fds")
        for name, values in figures.items():
            print(f"  capture {name:8} {spread(values, 7)} ms wall, {spread(cpu[name], 7)} ms cpu")
        frozen: dict[str, list[float]] = {"pipes": [], "refused": []}
        with tempfile.TemporaryDirectory() as where:
            for i in range(args.repeat):
                report = ckpt.dump(proc.pid, Path(where) / f"a{i}", track=False)
                frozen["pipes"].append(report.frozen_seconds * 1e3)
                with pipes_refused():
                    report = ckpt.dump(proc.pid, Path(where) / f"b{i}", track=False)
                frozen["refused"].append(report.frozen_seconds * 1e3)
        for name, values in frozen.items():
            print(f"  dump frozen {name:8} {spread(values, 7)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

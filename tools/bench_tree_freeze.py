"""Freezing a process tree: FrozenTree against one FrozenProcess per process.

    PYTHONPATH=. python3 tools/bench_tree_freeze.py [PROCESSES] [REPS]

Starts tests/programs/tree_forker.c as a fan of PROCESSES processes (the root and
PROCESSES-1 sleeping children) and, REPS times each:
- FrozenTree(root): its freeze_time (first interrupt to all stopped) and the wall
  time of entering it (gadget prefetch, freeze, checks, registers) and of the thaw;
- FrozenProcess entered for each process in turn, parents first (what freezing a
  tree with today's one-process freeze costs): the wall time from the first enter
  to the last process frozen, and of the thaws.
Prints median [min-max] in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import spread  # noqa: E402

from ckpt import procfs  # noqa: E402
from ckpt.live.freeze import FrozenProcess  # noqa: E402
from ckpt.live.tree import FrozenTree  # noqa: E402

SOURCE = Path(__file__).resolve().parent.parent / "tests" / "programs" / "tree_forker.c"


def main() -> None:
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "tree_forker")
        subprocess.run(["cc", "-O1", "-o", binary, str(SOURCE)], check=True)
        root = subprocess.Popen([binary, "fan", str(processes - 1)], stdout=subprocess.PIPE, text=True)
        try:
            assert root.stdout is not None and root.stdout.readline().startswith("ready")
            time.sleep(0.2)
            pids = [root.pid, *procfs.read_children(root.pid)]
            assert len(pids) == processes, pids
            tree_freeze, tree_enter, tree_thaw, seq_enter, seq_thaw = [], [], [], [], []
            for _ in range(reps):
                t0 = time.monotonic()
                with FrozenTree(root.pid) as frozen:
                    t1 = time.monotonic()
                    assert len(frozen.processes) == processes
                    tree_freeze.append(frozen.freeze_time * 1e3)
                t2 = time.monotonic()
                tree_enter.append((t1 - t0) * 1e3)
                tree_thaw.append((t2 - t1) * 1e3)
                time.sleep(0.05)
                t0 = time.monotonic()
                with contextlib.ExitStack() as stack:
                    for pid in pids:
                        stack.enter_context(FrozenProcess(pid))
                    t1 = time.monotonic()
                t2 = time.monotonic()
                seq_enter.append((t1 - t0) * 1e3)
                seq_thaw.append((t2 - t1) * 1e3)
                time.sleep(0.05)
        finally:
            root.kill()
            root.wait()
    print(f"{processes} processes, {reps} runs, ms: median [min-max]")
    print(f"FrozenTree freeze_time         {spread(tree_freeze)}")
    print(f"FrozenTree enter (all of it)   {spread(tree_enter)}")
    print(f"FrozenTree thaw                {spread(tree_thaw)}")
    print(f"FrozenProcess x{processes} enter        {spread(seq_enter)}")
    print(f"FrozenProcess x{processes} thaw         {spread(seq_thaw)}")


if __name__ == "__main__":
    main()

"""Survive a crash: checkpoint a long computation every second, kill it, resume it.

The computation is an ordinary Python program started with ``python -c``; it
knows nothing about ckpt.  It sums the Collatz stopping times of 1..N, one block
of numbers per step, and prints ``step K total T`` after every step (about every
0.2 s).  This script:

1. starts it and keeps one :class:`ckpt.Dumper` open on it, taking a checkpoint
   every second: the first one full, the next ones incremental (only the pages
   written since the previous checkpoint are stored);
2. after a few checkpoints, stops the process at its last checkpoint and
   SIGKILLs it: a crash, with everything after the last checkpoint lost;
3. restores the last checkpoint with ``ckpt.restore(dir, detach=False, stdout=FILE)``
   and waits for the restored process to finish;
4. checks that it resumed at the step after the one it had reached at the last
   checkpoint (not at step 1), and that its final total equals the one an
   uninterrupted run gives (computed here, with the same function).

Run it as root, or as the user that owns the target (it is our own child here),
on Linux 6.7+::

    python examples/resume_long_computation.py [--images-dir DIR]

Exit status 0 when the computation resumed correctly, 1 otherwise.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import ckpt

TOTAL_STEPS = 40            # 40 steps x 0.2 s: about 8 s uninterrupted
NUMBERS_PER_STEP = 3000     # each step sums the stopping times of this many numbers
STEP_SECONDS = 0.2          # the target paces itself so checkpoints land mid-run
CHECKPOINT_EVERY = 1.0      # seconds between two checkpoints
CHECKPOINTS_BEFORE_CRASH = 3
RESTORE_TIMEOUT = 20.0      # a restored process that hangs is terminated after this

LINE_RE = re.compile(r"^step (\d+) total (\d+)$")
DONE_RE = re.compile(r"^done (\d+)$")


def collatz_block(block: int, size: int) -> int:
    """Sum of the Collatz stopping times of the numbers block*size+1 .. (block+1)*size."""
    total = 0
    for n in range(block * size + 1, (block + 1) * size + 1):
        steps = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        total += steps
    return total


# The target runs the very same function (its source is pasted in), so the
# expected result below is computed by identical code, just without pacing.
TARGET_PROGRAM = f"""
import time
{inspect.getsource(collatz_block)}
total = 0
for step in range(1, {TOTAL_STEPS} + 1):
    started = time.monotonic()
    total += collatz_block(step - 1, {NUMBERS_PER_STEP})
    print(f"step {{step}} total {{total}}", flush=True)
    time.sleep(max(0.0, {STEP_SECONDS} - (time.monotonic() - started)))
print(f"done {{total}}", flush=True)
"""


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def parse_steps(lines: list[str]) -> list[tuple[int, int]]:
    """The (step, running total) pairs among the target's output lines."""
    out = []
    for line in lines:
        m = LINE_RE.match(line.strip())
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


class LineCollector:
    """Reads a pipe on a thread so the target never blocks on a full pipe, and
    so the script can tell which step the target had printed at any moment."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def wait_eof(self, timeout: float) -> None:
        self._thread.join(timeout)


def run_until_crash(target: subprocess.Popen[str], output: LineCollector, images_dir: str) -> None:
    """Checkpoint the target every second; at the last checkpoint, kill it."""
    with ckpt.Dumper(target.pid, images_dir) as dumper:
        for number in range(1, CHECKPOINTS_BEFORE_CRASH + 1):
            started = time.monotonic()
            last = number == CHECKPOINTS_BEFORE_CRASH
            # The last checkpoint kills the target (the crash): it cannot get
            # past the state the checkpoint holds.
            report = dumper.dump(after="kill" if last else "run")
            steps = parse_steps(output.snapshot())
            reached = steps[-1][0] if steps else 0
            cp = report.checkpoint
            print(f"checkpoint {cp.id}: {report.kind:<11} target at step ~{reached:>2}; "
                  f"{cp.pages_stored} pages stored, frozen {report.frozen_seconds * 1e3:.1f} ms")
            if last:
                target.wait()
                break
            time.sleep(max(0.0, CHECKPOINT_EVERY - (time.monotonic() - started)))


def restore_with_watchdog(images_dir: str, stdout_path: Path, stderr_path: Path) -> int | None:
    """Restore the newest checkpoint and wait for the process; return its exit code.

    restore(detach=False) waits without a timeout and forwards SIGTERM to the
    restored process, so a watchdog SIGTERM to ourselves ends a hung restore."""
    watchdog = threading.Timer(RESTORE_TIMEOUT, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        result = ckpt.restore(images_dir, detach=False, stdin=os.devnull, stdout=stdout_path, stderr=stderr_path)
    finally:
        watchdog.cancel()
    for note in result.notes:
        print(f"  restore note: {note}")
    print(f"restored checkpoint {result.checkpoint} as pid {result.pid}; it exited with code {result.exit_code}")
    return result.exit_code


def check_resumed(before_crash: list[tuple[int, int]], restored_lines: list[str],
                  expected_totals: list[int]) -> bool:
    """Did the restored process continue where the last checkpoint left off, correctly?"""
    ok = True
    last_step = before_crash[-1][0] if before_crash else 0
    after = parse_steps(restored_lines)
    done = [int(m.group(1)) for line in restored_lines if (m := DONE_RE.match(line.strip()))]
    if not before_crash:
        print("FAIL: the target printed nothing before the crash")
        return False
    if not after:
        print("FAIL: the restored process printed no step")
        return False
    first_step = after[0][0]
    if first_step != last_step + 1:
        print(f"FAIL: the restored process started at step {first_step}, expected {last_step + 1}")
        ok = False
    else:
        print(f"ok: resumed at step {first_step}, right after step {last_step} reached before the crash "
              f"(not at step 1)")
    wrong = [(step, total) for step, total in before_crash + after if total != expected_totals[step]]
    if wrong:
        step, total = wrong[0]
        print(f"FAIL: at step {step} the total is {total}, expected {expected_totals[step]}")
        ok = False
    else:
        print("ok: every running total, before and after the crash, matches an uninterrupted run")
    if [s for s, _ in after] != list(range(first_step, TOTAL_STEPS + 1)):
        print("FAIL: the restored process skipped or repeated steps")
        ok = False
    if done != [expected_totals[TOTAL_STEPS]]:
        print(f"FAIL: final result {done or 'missing'}, expected {expected_totals[TOTAL_STEPS]}")
        ok = False
    else:
        print(f"ok: final result {done[0]} equals the uninterrupted run's")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images-dir", metavar="DIR",
                        help="where to keep the checkpoints (default: a temporary directory, removed after)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="ckpt-resume-") as tmp:
        images_dir = args.images_dir or os.path.join(tmp, "images")
        restored_stdout = Path(tmp, "restored.out")
        restored_stderr = Path(tmp, "restored.err")

        say(f"starting the computation: Collatz stopping times of 1..{TOTAL_STEPS * NUMBERS_PER_STEP}, "
            f"{TOTAL_STEPS} steps of ~{STEP_SECONDS} s")
        target = subprocess.Popen([sys.executable, "-c", TARGET_PROGRAM], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert target.stdout is not None
            output = LineCollector(target.stdout)
            time.sleep(CHECKPOINT_EVERY)  # let it make some progress first
            say(f"pid {target.pid}: a checkpoint every {CHECKPOINT_EVERY:.0f} s into {images_dir}")
            run_until_crash(target, output, images_dir)
        except ckpt.CkptError as err:
            print(f"FAIL: checkpoint failed: {err}")
            return 1
        finally:
            # Whatever happened, the original process must not outlive us.
            if target.poll() is None:
                target.kill()
                target.wait()
        output.wait_eof(timeout=5.0)
        before_crash = parse_steps(output.snapshot())
        if before_crash:
            step, total = before_crash[-1]
            say(f"crash: pid {target.pid} killed after printing step {step} (total {total}); "
                f"{TOTAL_STEPS - step} steps were left")

        say("restoring the last checkpoint into a new process (output to a file)")
        try:
            exit_code = restore_with_watchdog(images_dir, restored_stdout, restored_stderr)
        except ckpt.CkptError as err:
            print(f"FAIL: restore failed: {err}")
            return 1
        restored_lines = restored_stdout.read_text().splitlines()
        # The first lines show where it resumed, the last ones how it ended.
        shown = restored_lines if len(restored_lines) <= 4 else restored_lines[:2] + ["..."] + restored_lines[-2:]
        for line in shown:
            print(f"  restored> {line}")
        errors = restored_stderr.read_text().strip()
        if errors:
            print(f"  restored stderr:\n{errors}")

        say("checking against an uninterrupted run (computed here)")
        expected_totals = [0]
        for block in range(TOTAL_STEPS):
            expected_totals.append(expected_totals[-1] + collatz_block(block, NUMBERS_PER_STEP))
        ok = check_resumed(before_crash, restored_lines, expected_totals) and exit_code == 0
        if exit_code != 0:
            print(f"FAIL: the restored process exited with code {exit_code}")

    say(f"{'success' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

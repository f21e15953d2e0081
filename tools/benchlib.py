"""What the fd-kind benchmarks (tools/bench_*.py) share: a Python target that says
"ready", and a median with its spread.  Standard library only; imported from the
script's own directory (tools/), never from the current one."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def spread(values: Sequence[float], width: int = 8) -> str:
    """``median [min-max]``, the way every benchmark here reports a series."""
    return f"{statistics.median(values):{width}.2f} [{min(values):6.2f}-{max(values):6.2f}]"


@contextmanager
def ready_target(script: str, *args: str, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
    """``python3 -c SCRIPT ARGS...`` once it printed "ready" (its stdout a pipe; its stdin
    too with ``stdin``, to tell it what to do next); killed and reaped on exit."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if stdin else None)
    try:
        line = proc.stdout.readline().strip() if proc.stdout is not None else ""
        if line != "ready":
            raise RuntimeError(f"the benchmark target said {line!r}, not 'ready'")
        yield proc
    finally:
        proc.kill()
        proc.wait()

"""zdtm_pyheap: a CPython restore target in the manner of CRIU's zdtm.

    python zdtm_pyheap.py [MEGABYTES=200]

Builds a dict of strings and ints until the process's resident set reaches
about MEGABYTES, starts a second thread (``threading.Thread``) that blocks
SIGUSR1, counts in a local variable and waits on an Event between rounds, then
prints::

    ready PID
    checksum HEX          (a hash over the whole dict content)

and waits (``signal.pause()`` until the SIGUSR1 handler has set a flag).

After SIGUSR1 it recomputes the checksum and checks that the second thread is
alive and still counting (its published counter moves within 5 s), sets its
Event and joins it (5 s), and that the thread verified its own local state.
Then it prints ``PASS checksum HEX`` and exits 0, or one ``FAIL: what`` line
per problem and exits 1.

Debugging the checks: ZDTM_CORRUPT=heap|thread|local (read after SIGUSR1)
damages one entry of the dict, stops the second thread, or damages its local
state.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import threading
import time

ENTRIES_PER_CHUNK = 20_000
VALUE_BYTES = 48


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def build(megabytes: int) -> dict[str, str | int]:
    rng = random.Random(20240607)
    heap: dict[str, str | int] = {}
    target = megabytes * 1_000_000
    index = 0
    while resident_bytes() < target:
        for _ in range(ENTRIES_PER_CHUNK):
            # Even indices hold strings, odd ones ints beyond the small-int cache.
            heap[f"k{index:09d}"] = (rng.randbytes(VALUE_BYTES).hex() if index % 2 == 0
                                     else rng.getrandbits(62) | (1 << 40))
            index += 1
    return heap


def checksum(heap: dict[str, str | int]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for key, value in heap.items():
        h.update(key.encode())
        h.update(b"=")
        h.update(value.encode() if isinstance(value, str) else b"#%d" % value)
        h.update(b";")
    return h.hexdigest()


class Worker(threading.Thread):
    """Counts in a local variable, publishes the count, waits on ``wake`` between rounds."""

    def __init__(self) -> None:
        super().__init__(name="zdtm-worker", daemon=True)
        self.wake = threading.Event()
        self.published = 0
        self.verdict: str | None = None

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        counter = 0
        squares = [i * i for i in range(1000)]   # local state, checked at the end
        tag = f"worker-{os.getpid()}-tag"
        while not self.wake.wait(0.02):
            counter += 1
            self.published = counter
        if os.environ.get("ZDTM_CORRUPT") == "local":
            squares[500] += 1
        problems = []
        if counter < 1 or counter != self.published:
            problems.append(f"local counter {counter} != published {self.published}")
        if sum(squares) != sum(i * i for i in range(1000)):
            problems.append("local list of squares damaged")
        if not tag.startswith("worker-") or not tag.endswith("-tag"):
            problems.append(f"local string damaged: {tag!r}")
        self.verdict = "; ".join(problems) or "ok"


def main(argv: list[str]) -> int:
    megabytes = int(argv[1]) if len(argv) > 1 else 200
    go = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: go.set())

    heap = build(megabytes)
    expected = checksum(heap)
    worker = Worker()
    worker.start()
    while worker.published < 1:
        time.sleep(0.01)
    print(f"ready {os.getpid()}", flush=True)
    print(f"checksum {expected}", flush=True)

    while not go.is_set():
        signal.pause()
    # The test repeats SIGUSR1 until we exit; the interpreter resets handlers it
    # installed to SIG_DFL while it shuts down, when one more would kill us.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    corrupt = os.environ.get("ZDTM_CORRUPT")
    failures = []
    if corrupt == "heap":
        heap["k000000002"] += "x"
    if corrupt == "thread":
        worker.wake.set()
        worker.join(5)
        worker.wake.clear()

    got = checksum(heap)
    if got != expected:
        failures.append(f"heap checksum is {got}, wanted {expected}")
    if not worker.is_alive():
        failures.append("the second thread is not alive")
    else:
        before = worker.published
        deadline = time.monotonic() + 5
        while worker.published == before and time.monotonic() < deadline:
            time.sleep(0.01)
        if worker.published == before:
            failures.append(f"the second thread stopped counting (at {before})")
        worker.wake.set()
        worker.join(5)
        if worker.is_alive():
            failures.append("the second thread did not finish within 5 s of its Event")
        elif worker.verdict != "ok":
            failures.append(f"the second thread: {worker.verdict}")

    for failure in failures:
        print(f"FAIL: {failure}", flush=True)
    if failures:
        return 1
    print(f"PASS checksum {got}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""pyheap: a CPython checkpoint target with a large heap of real objects.

    python pyheap.py [MEGABYTES=300] [thread]

Builds a dict of strings and ints until the process's resident set reaches
about MEGABYTES, prints ``ready PID``, then serves one command per line on
stdin, answering exactly one line:

    mutate PERCENT   rewrite about PERCENT % of the values -> ``ok N``
    checksum         a hash over the whole dict content    -> ``ok HEX``
    exit             -> ``ok``, then exits 0

The keys rewritten by ``mutate`` are a contiguous run in insertion order, so
the objects it frees and allocates sit in few pages, as with a batch update of
one part of an application's state; the run starts at a random key.

With ``thread``, a second Python thread idles on a ``threading.Event`` (it is
never set), so the process has two threads while it is checkpointed.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading

ENTRIES_PER_CHUNK = 20_000
VALUE_BYTES = 48  # 96 hex characters per string value


def resident_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def key_of(index: int) -> str:
    return f"k{index:09d}"


def make_value(rng: random.Random, index: int) -> str | int:
    # Even indices hold strings, odd ones ints too large for the small-int cache.
    if index % 2 == 0:
        return rng.randbytes(VALUE_BYTES).hex()
    return rng.getrandbits(62) | (1 << 40)


def build(megabytes: int, rng: random.Random) -> dict[str, str | int]:
    heap: dict[str, str | int] = {}
    target = megabytes * 1_000_000
    index = 0
    while resident_bytes() < target:
        for _ in range(ENTRIES_PER_CHUNK):
            heap[key_of(index)] = make_value(rng, index)
            index += 1
    return heap


def mutate(heap: dict[str, str | int], percent: float, rng: random.Random) -> int:
    count = min(len(heap), max(1, round(len(heap) * percent / 100)))
    first = rng.randrange(len(heap))
    for i in range(count):
        index = (first + i) % len(heap)
        heap[key_of(index)] = make_value(rng, index)
    return count


def checksum(heap: dict[str, str | int]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for key, value in heap.items():
        h.update(key.encode())
        h.update(b"=")
        h.update(value.encode() if isinstance(value, str) else b"#%d" % value)
        h.update(b";")
    return h.hexdigest()


def main(argv: list[str]) -> int:
    megabytes = int(argv[1]) if len(argv) > 1 else 300
    if len(argv) > 2 and argv[2] == "thread":
        idle = threading.Event()
        threading.Thread(target=idle.wait, name="idler", daemon=True).start()

    rng = random.Random(20240601)
    heap = build(megabytes, rng)
    print(f"ready {os.getpid()}", flush=True)

    for line in sys.stdin:
        words = line.split()
        if not words:
            answer = "err empty command"
        elif words[0] == "mutate" and len(words) == 2:
            try:
                answer = f"ok {mutate(heap, float(words[1]), rng)}"
            except ValueError as err:
                answer = f"err {err}"
        elif words[0] == "checksum" and len(words) == 1:
            answer = f"ok {checksum(heap)}"
        elif words[0] == "exit":
            print("ok", flush=True)
            return 0
        else:
            answer = f"err unknown command {line.strip()!r}"
        print(answer, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Find runs of all-zero pages in a buffer without looping per page in Python.

Zero pages are common in process memory (fresh heap, bss, calloc'd arrays), and
the image stores them as ranges instead of data.  The scan runs on every byte
the dumper copies, so it must be far faster than zstd (about 1 GB/s a core).

1. Sample three bytes of every page (first, middle, last) with strided
   memoryview copies, OR them together as big integers: a page can only be
   zero where the result has a zero byte.  This touches three cache lines per
   page and runs in C; on non-zero data it rejects almost every page at once.
2. ``re.finditer(rb"\\x00+")`` over the per-page result yields runs of
   *candidate* pages, so Python works per run, not per page.
3. Each candidate run is checked with ``memcmp`` (``ZERO.startswith(view)``),
   galloping over blocks of 1, 2, 4... pages, halving on failure, so a run of n
   zero pages costs O(log n) comparisons plus one memcmp of its bytes.  Only a
   candidate page that turns out non-zero (its sampled bytes were zero, the
   rest not) costs a Python step of its own.

Measured on this project's 2-vCPU VM, 256 MiB, best of 3, side by side with a
per-page ``startswith`` loop in the same run: random data 30-41 GB/s (loop
8-15), all zeros 8-11 GB/s (loop 3.5-5), every 8th page zero 15-16 GB/s (loop
11), and the adversarial "one byte set at a random place in 3 of 4 pages"
3-5 GB/s (loop ~4.5: every page is a candidate there).  An earlier version that
jumped between ``bytes.find(256 zero bytes)`` hits ran at 2.4-6 GB/s: ``find``
over memory that is not in cache is latency-bound.

``memoryview == bytes`` compares item by item (about 200 MB/s), which is why
every comparison here is ``ZERO.startswith(view)`` instead.
"""

from __future__ import annotations

import re

__all__ = ["zero_page_runs", "BytesLike"]

BytesLike = bytes | bytearray | memoryview

_BLOCK = 1 << 20  # largest block compared at once (the length of _ZERO)
_ZERO = bytes(_BLOCK)
_ZERO_RUN = re.compile(rb"\x00+")


def zero_page_runs(buf: BytesLike, page_size: int = 4096) -> list[tuple[int, int]]:
    """Return ``(first_page_index, npages)`` for every maximal run of all-zero pages in ``buf``.

    ``len(buf)`` must be a multiple of ``page_size`` (a power of two up to 1 MiB).
    Runs are in ascending order and never adjacent.
    """
    if page_size <= 0 or page_size & (page_size - 1) or page_size > _BLOCK:
        raise ValueError(f"page_size {page_size} is not a power of two up to {_BLOCK}")
    view = memoryview(buf).cast("B")
    size = len(view)
    if size % page_size:
        raise ValueError(f"buffer of {size} bytes is not a whole number of {page_size}-byte pages")
    npages = size // page_size
    if not npages:
        return []

    # Step 1: one byte per page is zero iff the page's three sampled bytes are.
    sampled = 0
    for offset in {0, page_size // 2, page_size - 1}:
        sampled |= int.from_bytes(view[offset::page_size].tobytes(), "little")
    candidates = sampled.to_bytes(npages, "little")

    is_zero = _ZERO.startswith  # is_zero(view[a:b]) is one memcmp (b - a <= _BLOCK)
    max_block = _BLOCK // page_size
    runs: list[tuple[int, int]] = []
    for match in _ZERO_RUN.finditer(candidates):  # step 2
        page, end = match.span()
        while page < end:  # step 3
            if not is_zero(view[page * page_size : (page + 1) * page_size]):
                page += 1
                continue
            run_end = page + 1
            step = 1
            while run_end < end:
                block = min(step, end - run_end, max_block)
                if is_zero(view[run_end * page_size : (run_end + block) * page_size]):
                    run_end += block
                    step <<= 1
                elif block == 1:
                    break
                else:
                    step = block >> 1
            runs.append((page, run_end - page))
            page = run_end + 1  # run_end is a non-zero page or the end of the candidates
    return runs

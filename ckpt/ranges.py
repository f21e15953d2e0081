"""Page-range algebra: sets of addresses as sorted lists of ``[start, end)`` ranges.

A *range* is a ``(start, end)`` tuple of byte addresses, half open.  A *range
list* is normalized: sorted, every range non-empty, and no two ranges overlap
or touch (``a[k][1] < a[k + 1][0]``).  Every function here takes normalized
range lists and returns one, except :func:`normalize`, which accepts anything.

All set operations are linear merges over ranges (or ``bisect`` plus the
ranges touched, for :func:`clip` and :func:`covers`); nothing iterates per
page, because the tracker and the image layer hand around lists describing
gigabytes of memory.

:func:`to_bytes` / :func:`from_bytes` give the compact on-disk encoding used
in checkpoint metadata: a flat little-endian ``u64`` array
``[s0, e0, s1, e1, ...]`` (see docs/FORMAT.md).
"""

from __future__ import annotations

import operator
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

__all__ = [
    "Range",
    "normalize",
    "union",
    "intersect",
    "subtract",
    "clip",
    "total",
    "covers",
    "to_bytes",
    "from_bytes",
]

Range = tuple[int, int]

# Below this size ratio the smaller operand is handled range by range with
# bisect and list slicing (C speed), not by a Python walk over both lists.
_FEW = 8

# The on-disk encoding is little-endian whatever the host; array('Q') is
# native, so big-endian hosts swap (no-op on x86-64 and arm64).
_BIG_ENDIAN = sys.byteorder == "big"


def normalize(ranges: Iterable[Range]) -> list[Range]:
    """Return ``ranges`` sorted, with overlapping and adjacent ranges merged and empty ones dropped."""
    out: list[Range] = []
    # sorted() is Timsort: already-sorted or concatenated sorted runs (the
    # common case: union of two range lists) merge in linear time.
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """Return the addresses in ``a`` or ``b``."""
    if not a:
        return list(b)
    if not b:
        return list(a)
    if len(b) > len(a):
        a, b = b, a
    if len(b) * _FEW <= len(a):
        # Few ranges into many: splice each in with bisect and list slicing
        # (C speed) instead of walking every range in Python.
        out = list(a)
        for start, end in b:
            i = _first_ending_after(out, start - 1)  # first range reaching start (or touching it)
            j = bisect_left(out, (end + 1,))          # first range starting after end
            if i < j:
                start = min(start, out[i][0])
                end = max(end, out[j - 1][1])
            out[i:j] = [(start, end)]
        return out
    return normalize([*a, *b])


def intersect(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """Return the addresses in both ``a`` and ``b``."""
    if len(a) < len(b):
        a, b = b, a
    if len(b) * _FEW <= len(a):
        out: list[Range] = []
        for start, end in b:
            piece = clip(a, start, end)
            out.extend(piece)
        return out
    out = []
    i = j = 0
    na, nb = len(a), len(b)
    while i < na and j < nb:
        a_start, a_end = a[i]
        b_start, b_end = b[j]
        start = a_start if a_start > b_start else b_start
        end = a_end if a_end < b_end else b_end
        if start < end:
            out.append((start, end))
        # Advance whichever range ends first; the other may meet the next one.
        if a_end < b_end:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """Return the addresses in ``a`` that are not in ``b``."""
    if not b or not a:
        return list(a)
    if len(b) * _FEW <= len(a):
        return _subtract_few(a, b)
    out: list[Range] = []
    j = 0
    nb = len(b)
    for start, end in a:
        # Skip the ranges of b that end before this range starts.
        while j < nb and b[j][1] <= start:
            j += 1
        k = j
        while k < nb and b[k][0] < end:
            b_start, b_end = b[k]
            if b_start > start:
                out.append((start, b_start))
            if b_end >= end:
                start = end
                break
            start = b_end
            k += 1
        if start < end:
            out.append((start, end))
    return out


def _subtract_few(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """``subtract`` for few holes ``b`` in many ranges ``a``: untouched stretches
    of ``a`` are copied by slicing; Python only handles the ranges a hole cuts."""
    out: list[Range] = []
    i = 0
    head: Range | None = None  # the right part of a range cut by the previous hole
    for hole_start, hole_end in b:
        if head is not None:
            if head[1] <= hole_start:
                out.append(head)
                head = None
            else:
                if head[0] < hole_start:
                    out.append((head[0], hole_start))
                if head[1] > hole_end:
                    head = (hole_end, head[1])
                    continue
                head = None
        k = max(i, _first_ending_after(a, hole_start))  # first range reaching into the hole
        out.extend(a[i:k])
        j = max(k, bisect_left(a, (hole_end,)))          # first range starting after it
        if k < j:
            if a[k][0] < hole_start:
                out.append((a[k][0], hole_start))
            if a[j - 1][1] > hole_end:
                head = (hole_end, a[j - 1][1])
        i = j
    if head is not None:
        out.append(head)
    out.extend(a[i:])
    return out


def _first_ending_after(a: Sequence[Range], address: int) -> int:
    """Index of the first range in ``a`` whose end is beyond ``address``."""
    return bisect_right(a, address, key=operator.itemgetter(1))


def clip(a: Sequence[Range], start: int, end: int) -> list[Range]:
    """Return the part of ``a`` inside ``[start, end)``, in O(log n) plus a slice copy."""
    if start >= end:
        return []
    i = _first_ending_after(a, start)
    j = bisect_left(a, (end,), lo=i)
    out = list(a[i:j])
    if out:
        if out[0][0] < start:
            out[0] = (start, out[0][1])
        if out[-1][1] > end:
            out[-1] = (out[-1][0], end)
    return out


def total(a: Iterable[Range]) -> int:
    """Return the number of bytes in ``a``."""
    return sum(end - start for start, end in a)


def covers(a: Sequence[Range], start: int, end: int) -> bool:
    """Return True if ``[start, end)`` lies entirely inside ``a`` (an empty range always does)."""
    if start >= end:
        return True
    i = _first_ending_after(a, start)
    # Normalized ranges never touch, so a covered span lies within one range.
    return i < len(a) and a[i][0] <= start and a[i][1] >= end


def to_bytes(a: Iterable[Range]) -> bytes:
    """Encode a range list as a flat little-endian u64 array ``[s0, e0, s1, e1, ...]``."""
    flat = array("Q")
    for start, end in a:
        flat.append(start)
        flat.append(end)
    if _BIG_ENDIAN:
        flat.byteswap()
    return flat.tobytes()


def from_bytes(b: bytes | bytearray | memoryview) -> list[Range]:
    """Decode :func:`to_bytes` output; raise ValueError unless it is a normalized range list."""
    if len(b) % 16:
        raise ValueError(f"range array of {len(b)} bytes is not a whole number of (start, end) u64 pairs")
    flat = array("Q")
    flat.frombytes(b)
    if _BIG_ENDIAN:
        flat.byteswap()
    # A normalized list flattens to a strictly increasing sequence
    # (start < end < next start); map() keeps the check in C.
    if not all(map(operator.lt, flat, flat[1:])):
        raise ValueError("range array is not sorted, disjoint and non-adjacent")
    it = iter(flat)
    return list(zip(it, it))

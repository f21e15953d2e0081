"""ckpt.ranges against a naive set-of-pages model (hypothesis) and a few tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckpt import ranges

P = 4096

# Ranges built from small page numbers, so that overlaps and adjacency are common.
raw_range = st.tuples(st.integers(0, 64), st.integers(0, 64)).map(lambda t: (t[0] * P, t[1] * P))
raw_list = st.lists(raw_range, max_size=12)
range_list = raw_list.map(ranges.normalize)


def pages(rs: list[tuple[int, int]]) -> set[int]:
    """The model: the set of page numbers a list of ranges covers."""
    return {p for s, e in rs for p in range(s // P, e // P)}


def is_normalized(rs: list[tuple[int, int]]) -> bool:
    return all(s < e for s, e in rs) and all(a[1] < b[0] for a, b in zip(rs, rs[1:]))


@given(raw_list)
def test_normalize_matches_model(raw: list[tuple[int, int]]) -> None:
    out = ranges.normalize(raw)
    assert is_normalized(out)
    assert pages(out) == pages([r for r in raw if r[0] < r[1]])


@given(range_list, range_list)
def test_union_intersect_subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    for op, model in (
        (ranges.union, pages(a) | pages(b)),
        (ranges.intersect, pages(a) & pages(b)),
        (ranges.subtract, pages(a) - pages(b)),
    ):
        out = op(a, b)
        assert is_normalized(out), op.__name__
        assert pages(out) == model, op.__name__


@given(range_list, st.integers(0, 70), st.integers(0, 70))
def test_clip_and_covers(a: list[tuple[int, int]], s: int, e: int) -> None:
    out = ranges.clip(a, s * P, e * P)
    assert is_normalized(out)
    window = set(range(s, e))
    assert pages(out) == pages(a) & window
    assert ranges.covers(a, s * P, e * P) == (window <= pages(a))


@given(range_list)
def test_total_and_bytes_round_trip(a: list[tuple[int, int]]) -> None:
    assert ranges.total(a) == len(pages(a)) * P
    blob = ranges.to_bytes(a)
    assert len(blob) == 16 * len(a)
    assert ranges.from_bytes(blob) == a


def test_normalize_merges_adjacent_and_drops_empty() -> None:
    assert ranges.normalize([(10, 20), (0, 10), (5, 5), (30, 40), (35, 38), (50, 49)]) == [(0, 20), (30, 40)]


def test_unaligned_byte_ranges() -> None:
    assert ranges.intersect([(0, 10), (20, 30)], [(5, 25)]) == [(5, 10), (20, 25)]
    assert ranges.subtract([(0, 30)], [(5, 10), (20, 25)]) == [(0, 5), (10, 20), (25, 30)]
    assert ranges.clip([(0, 10), (20, 30)], 7, 21) == [(7, 10), (20, 21)]
    assert ranges.covers([(0, 10)], 3, 3)
    assert not ranges.covers([], 3, 4)


@pytest.mark.parametrize(
    "blob",
    [
        b"\x00" * 8,  # odd number of u64
        ranges.to_bytes([(0, 10)])[:-1],  # not a multiple of 8
        ranges.to_bytes([(20, 30)]) + ranges.to_bytes([(0, 10)]),  # unsorted
        ranges.to_bytes([(0, 10)]) + ranges.to_bytes([(10, 20)]),  # adjacent
        ranges.to_bytes([(0, 10)]) + ranges.to_bytes([(5, 20)]),  # overlapping
        ranges.to_bytes([(10, 10)]),  # empty
    ],
)
def test_from_bytes_rejects(blob: bytes) -> None:
    with pytest.raises(ValueError):
        ranges.from_bytes(blob)


def test_encoding_is_little_endian() -> None:
    assert ranges.to_bytes([(1, 2)]) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")


# Long lists against short ones take the bisect-and-slice paths (ratio >= 8).
long_list = st.lists(st.tuples(st.integers(0, 400), st.integers(1, 3)), min_size=16, max_size=80).map(
    lambda t: ranges.normalize((s * P, (s + n) * P) for s, n in t))
short_list = st.lists(st.tuples(st.integers(0, 420), st.integers(0, 60)), max_size=2).map(
    lambda t: ranges.normalize((s * P, (s + n) * P) for s, n in t))


@given(long_list, short_list)
def test_asymmetric_operations_match_model(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    for x, y in ((a, b), (b, a)):
        for op, model in ((ranges.union, set.__or__), (ranges.intersect, set.__and__),
                          (ranges.subtract, set.__sub__)):
            got = op(x, y)
            assert is_normalized(got), (op.__name__, x, y, got)
            assert pages(got) == model(pages(x), pages(y)), (op.__name__, x, y, got)

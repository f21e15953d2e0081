"""``ckpt prune`` and ``ckpt dump --keep``: fold what kept checkpoints need, remove the rest,
atomically (ckpt/image/prune.py, docs/FORMAT.md §8)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ckpt import ranges
from ckpt.errors import UsageError
from ckpt.image import PAGE_SIZE, Checkpoint, ImageDir, VmaRecord
from ckpt.image.prune import plan, prune
from ckpt.image.schema import State, Target, Tracking

P = PAGE_SIZE
BASE = 0x7F0000000000
REPO = Path(__file__).resolve().parents[1]
STATE = State(target=Target(pid=1234, start_time=5), tracking=Tracking(version=1, armed=b"", untrackable=()))


def _not_pre(cp: Checkpoint) -> bool:
    return cp.kind != "pre"


# -- synthetic chains: the image layer alone -------------------------------------------

def _vma(start: int, npages: int) -> VmaRecord:
    return VmaRecord(kind="anon", start=start, end=start + npages * P, perms="rw-p", offset=0, dev="00:00",
                     inode=0, path="", flags=("rd", "wr"))


# Three mappings; the third appears only in some checkpoints (present pages inside VMAs only).
LAYOUTS = [
    [(BASE, 700), (BASE + 0x1000000, 40)],
    [(BASE, 700), (BASE + 0x1000000, 40), (BASE + 0x2000000, 300)],
]


def _random_checkpoint(im: ImageDir, rng: random.Random, parent: int | None, kind: str, level: int) -> None:
    layout = rng.choice(LAYOUTS)
    vmas = [_vma(s, n) for s, n in layout]
    present: list[tuple[int, int]] = []
    for s, n in layout:
        a = rng.randrange(0, n // 4)
        b = rng.randrange(n // 2, n + 1)
        present.append((s + a * P, s + b * P))
        if rng.random() < 0.5:   # a hole
            h = rng.randrange(a, b)
            present = ranges.subtract(present, [(s + h * P, s + min(b, h + 5) * P)])
    whole = [(s, s + n * P) for s, n in layout if parent is None or rng.random() < 0.15]
    with im.new_checkpoint(kind=kind, parent=parent, pid=1234, compression_level=level) as w:
        for _ in range(rng.randrange(1, 6)):
            s, n = rng.choice(layout)
            first = rng.randrange(0, n)
            count = min(n - first, rng.choice([1, 3, 40, 256, 300, 520]))
            data = bytearray(rng.randbytes(count * P))
            for z in range(0, count, 7):   # some zero pages among the data
                data[z * P:(z + 1) * P] = bytes(P)
            w.add_pages(s + first * P, data)
        if rng.random() < 0.5:
            s, n = rng.choice(layout)
            first = rng.randrange(0, n)
            w.add_zero_pages([(s + first * P, s + min(n, first + 20) * P)])
        w.commit(vmas=vmas, present=present, whole=whole, state=STATE)


def _memory(cp: Checkpoint) -> str:
    """A digest of the checkpoint's whole address space as its chain resolves it."""
    h = hashlib.sha256()
    want = ranges.normalize((v.start, v.end) for v in cp.vmas)
    h.update(repr(want).encode())
    expect = want[0][0] if want else 0
    for addr, view in cp.iter_memory(want):   # in address order, covering ``want``: content only
        assert addr >= expect
        expect = addr + len(view)
        h.update(view)
    return h.hexdigest()


def _build_chain(path: Path, seed: int, n: int, *, branches: bool) -> ImageDir:
    rng = random.Random(seed)
    im = ImageDir(path, create=True)
    with im.lock():
        for i in range(1, n + 1):
            if i == 1:
                parent = None
            elif branches and rng.random() < 0.35:
                parent = rng.randrange(1, i)   # a branch: restored from an older checkpoint
            else:
                parent = i - 1
            kind = "pre" if i > 1 and rng.random() < 0.2 else ("full" if parent is None or rng.random() < 0.1
                                                              else "incremental")
            _random_checkpoint(im, rng, parent, kind, rng.choice([0, 1, 1, 3]))
    return im


@pytest.mark.parametrize("seed", range(12))
def test_prune_keeps_every_kept_checkpoints_memory(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    im = _build_chain(tmp_path / "images", seed, rng.randrange(4, 9), branches=seed % 2 == 1)
    before = {cp.id: _memory(cp) for cp in im.checkpoints}
    restorable = [cp.id for cp in im.checkpoints if cp.kind != "pre"]
    keep = rng.randrange(1, 4)
    expected = plan(im, keep=keep, restorable=_not_pre)
    report = prune(im, keep=keep, restorable=_not_pre)
    assert report.kept == expected.kept and report.removed == expected.removed
    fresh = ImageDir(tmp_path / "images")
    assert [cp.id for cp in fresh.checkpoints] == report.kept
    assert not [n for n in os.listdir(fresh.path) if n.startswith(".staging-")]
    fresh.verify()
    for cp in fresh.checkpoints:
        assert _memory(cp) == before[cp.id], f"checkpoint {cp.id} changed"
        assert cp.parent is None or cp.parent in report.kept
        # Every link of a kept chain is kept: nothing resolves from a removed checkpoint.
        assert {link.id for link in cp.chain()} <= set(report.kept)
    assert set(restorable[-keep:]) <= set(report.kept)
    assert max(before) in report.kept   # the head
    assert report.bytes_after is not None and report.bytes_after <= report.bytes_before or not report.removed


def test_fold_copies_whole_frames_without_recompressing(tmp_path: Path) -> None:
    """A frame whose every page a kept checkpoint still needs is copied byte for byte."""
    im = ImageDir(tmp_path / "images", create=True)
    vmas = [_vma(BASE, 1024)]
    rng = random.Random(7)
    big = rng.randbytes(1024 * P)
    with im.lock():
        with im.new_checkpoint(kind="full", parent=None, pid=1234, compression_level=3) as w:
            w.add_pages(BASE, big)
            w.commit(vmas=vmas, present=[(BASE, BASE + 1024 * P)], whole=[(BASE, BASE + 1024 * P)], state=STATE)
        for i in range(2):   # two small incrementals over the first frame only
            with im.new_checkpoint(kind="incremental", parent=i + 1, pid=1234, compression_level=3) as w:
                w.add_pages(BASE + (10 + i) * P, rng.randbytes(P))
                w.commit(vmas=vmas, present=[(BASE, BASE + 1024 * P)], whole=[], state=STATE)
    first = im.checkpoint(1)
    old_frames = set(_stored_frames(first)[1:])
    before = _memory(im.checkpoint(3))
    report = prune(im, keep=1, restorable=_not_pre)
    assert report.removed == [1, 2] and report.kept == [3]
    cp = ImageDir(tmp_path / "images").checkpoint(3)
    assert cp.parent is None and cp.kind == "full"
    assert _memory(cp) == before
    assert old_frames <= set(_stored_frames(cp))   # frames 1..3 of checkpoint 1: every page still live
    assert report.folds[0].pages == 1024 - 1   # all but the page checkpoint 3 stores: 1022 from 1, 1 from 2


def _stored_frames(cp: Checkpoint) -> list[bytes]:
    fd = os.open(cp.path / "pages.ckpt", os.O_RDONLY)
    try:
        return [os.pread(fd, int(cp.meta.frames[4 * k + 1]), int(cp.meta.frames[4 * k])) for k in range(cp.meta.nframes)]
    finally:
        os.close(fd)


def test_fold_to_a_kept_ancestor_stops_there(tmp_path: Path) -> None:
    """--keep-within keeps 2, 3 and 6 of 1 <- 2 <- 3 <- 4 (pre) <- 5 (pre) <- 6: checkpoint 6
    is folded down to 3 (what it took from the pre-dumps 4 and 5; its parent becomes 3), 2 is
    made full, 1, 4 and 5 go."""
    im = _build_chain(tmp_path / "images", 4, 6, branches=False)
    assert [(c.kind, c.parent) for c in im.checkpoints] == [
        ("full", None), ("incremental", 1), ("incremental", 2), ("pre", 3), ("pre", 4), ("incremental", 5)]
    times = {cp.id: cp.time for cp in im.checkpoints}
    before = {cp.id: _memory(cp) for cp in im.checkpoints}
    now = times[6]
    report = prune(im, keep_within=now - times[2] + 1e-6, now=now, restorable=_not_pre)
    assert report.kept == [2, 3, 6] and report.removed == [1, 4, 5]
    assert {f.id: (f.parent_after, f.kind_after) for f in report.folds} == {2: (None, "full"),
                                                                            6: (3, "incremental")}
    fresh = ImageDir(tmp_path / "images")
    assert [(c.id, c.kind, c.parent) for c in fresh.checkpoints] == [
        (2, "full", None), (3, "incremental", 2), (6, "incremental", 3)]
    fresh.verify()
    for cp in fresh.checkpoints:
        assert _memory(cp) == before[cp.id]


def test_retention_errors(tmp_path: Path) -> None:
    im = _build_chain(tmp_path / "images", 1, 3, branches=False)
    with pytest.raises(UsageError):
        prune(im)
    with pytest.raises(UsageError):
        prune(im, keep=0)
    with pytest.raises(UsageError):
        prune(im, keep_within=-1)


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    im = _build_chain(tmp_path / "images", 2, 5, branches=False)
    listing = sorted(os.listdir(im.path))
    stamps = {n: os.lstat(im.path / n / "meta.ckpt").st_ino for n in listing if n.isdigit()}
    report = prune(im, keep=1, dry_run=True, restorable=_not_pre)
    assert report.dry_run and report.removed and report.bytes_after is None
    assert sorted(os.listdir(im.path)) == listing
    assert {n: os.lstat(im.path / n / "meta.ckpt").st_ino for n in listing if n.isdigit()} == stamps

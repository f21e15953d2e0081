"""``ckpt prune`` and ``ckpt dump --keep``: fold what kept checkpoints need, remove the rest,
atomically (ckpt/image/prune.py, docs/FORMAT.md §8)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from ckpt import ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.errors import UsageError
from ckpt.image import PAGE_SIZE, Checkpoint, ImageDir, VmaRecord
from ckpt.image.prune import plan, prune
from ckpt.image.schema import State, Target, Tracking
from helpers import ckpt_argv, ckpt_env, run_ckpt
from test_restore import Profile, counter_state, restore_and_check

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


def _memory(cp: Checkpoint, files: bool = True) -> str:
    """A digest of the checkpoint's whole address space as its chain resolves it (without
    ``files``: of its VMAs that map no file)."""
    h = hashlib.sha256()
    want = ranges.normalize((v.start, v.end) for v in cp.vmas
                            if files or (v.kind not in ("file-private", "file-shared") and v.object is None))
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


def test_a_full_checkpoint_keeps_its_pages_file_and_progress_is_reported(tmp_path: Path) -> None:
    """Three full dumps (each names its parent, as dumps do): keeping the last takes nothing
    from the others, so its pages.ckpt is the same file (hard-linked, not copied); the
    dump's progress callback sees the prune go to its total."""
    im = ImageDir(tmp_path / "images", create=True)
    vmas = [_vma(BASE, 512)]
    every = [(BASE, BASE + 512 * P)]
    with im.lock():
        for i in range(3):
            with im.new_checkpoint(kind="full", parent=i or None, pid=1234) as w:
                w.add_pages(BASE, random.Random(i).randbytes(512 * P))
                w.commit(vmas=vmas, present=every, whole=every, state=STATE)
    inode = os.lstat(im.checkpoint(3).path / "pages.ckpt").st_ino
    before = _memory(im.checkpoint(3))
    calls: list[tuple[str, int, int]] = []
    report = prune(im, keep=1, restorable=_not_pre, progress=lambda *a: calls.append(a))
    assert report.removed == [1, 2] and report.bytes_after is not None
    assert report.bytes_after * 2 < report.bytes_before
    cp = ImageDir(tmp_path / "images").checkpoint(3)
    assert (cp.kind, cp.parent) == ("full", None) and _memory(cp) == before
    assert os.lstat(cp.path / "pages.ckpt").st_ino == inode
    assert report.folds[0].bytes_written < 64 * 1024   # its meta.ckpt only
    assert calls and {c[0] for c in calls} == {"prune"} and calls[-1][1] == calls[-1][2] > 0


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
    real = prune(im, keep=1, restorable=_not_pre)   # does what the dry run said
    assert (real.kept, real.removed) == (report.kept, report.removed)
    assert [(f.id, f.parent_after, f.kind_after, f.pages, f.zero_pages) for f in real.folds] == \
        [(f.id, f.parent_after, f.kind_after, f.pages, f.zero_pages) for f in report.folds]


# -- real processes: dump, prune, verify, dump again, restore ----------------------------

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")


def _dump(pid: int, images: Path, *args: str) -> dict:
    result = run_ckpt("dump", "-t", pid, "-D", images, "--json", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _counter_checkpoints(programs: dict[str, Path], spawn, tmp_path: Path, n: int):  # type: ignore[no-untyped-def]
    """zdtm_counter (its memory changes all the time), dumped ``n`` times, the last with --kill;
    its restored copies stop counting.  (images dir, expected Profile, counter address,
    buffer address, buffer length)."""
    stop = tmp_path / "stop"
    target = spawn([programs["zdtm_counter"], "-s", stop])
    counter, buf, length = counter_state(target)
    expected = Profile.of(target.pid)
    images = tmp_path / "images"
    for i in range(n):
        time.sleep(0.15)   # some steps: pages written between checkpoints
        report = _dump(target.pid, images, *(["--kill"] if i == n - 1 else []))
        assert report["kind"] == ("full" if i == 0 else "incremental"), report
    target.kill()
    stop.touch()
    return images, expected, counter, buf, length


def _restore_counter(images: Path, tmp_path: Path, expected, cp: Checkpoint, counter: int, buf: int,  # type: ignore[no-untyped-def]
                     length: int, name: str) -> None:
    """Restore checkpoint ``cp``: the restored zdtm_counter checks its buffer against its counter
    (PASS), and its counter and buffer are the checkpoint's (one step more if the checkpoint
    caught it in the middle of one)."""
    import zlib

    workdir = tmp_path / name
    workdir.mkdir()
    lines = restore_and_check(images, workdir, expected, "--checkpoint", str(cp.id), name=name)
    words = dict(w.split("=") for w in lines[-1].split()[1:])
    at = int.from_bytes(cp.read_memory(counter, 8), "little")
    assert int(words["counter"]) in (at, at + 1), (lines, at)
    if int(words["counter"]) == at:
        assert int(words["crc"], 16) == zlib.crc32(cp.read_memory(buf, length))


@needs_kernel
@pytest.mark.timeout(400)
def test_prune_a_real_chain_restores_the_same_and_tracking_continues(
        programs: dict[str, Path], spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stop = tmp_path / "stop"
    target = spawn([programs["zdtm_counter"], "-s", stop])
    counter, buf, length = counter_state(target)
    expected = Profile.of(target.pid)
    images = tmp_path / "images"
    sizes = []
    for i in range(4):
        time.sleep(0.15)
        report = _dump(target.pid, images)
        sizes.append(report["pages_stored"])
    im = ImageDir(images)
    before = {cp.id: _memory(cp) for cp in im.checkpoints}
    result = run_ckpt("prune", "-D", images, "--keep", "2", "--json")
    assert result.returncode == 0, result.stderr
    pruned = json.loads(result.stdout)
    assert pruned["kept"] == [3, 4] and pruned["removed"] == [1, 2]
    assert [(f["id"], f["parent_after"], f["kind_after"]) for f in pruned["folds"]] == [(3, None, "full")]
    assert pruned["bytes_after"] < pruned["bytes_before"]
    assert sorted(os.listdir(images)) == [".lock", "000003", "000004", "CKPT-IMAGES"]
    verify = run_ckpt("verify", images)
    assert verify.returncode == 0, verify.stderr
    im = ImageDir(images)
    for cp in im.checkpoints:
        assert _memory(cp) == before[cp.id]
    # The tracking goes on: the next dump is an incremental child of the head, as small as before.
    time.sleep(0.15)
    report = _dump(target.pid, images, "--kill")
    target.kill()
    stop.touch()
    assert (report["kind"], report["parent"], report["tracking"]) == ("incremental", 4, "continued"), report
    assert report["pages_stored"] <= 4 * max(sizes[1:]), (report["pages_stored"], sizes)
    im = ImageDir(images)
    _restore_counter(images, tmp_path, expected, im.checkpoint(3), counter, buf, length, "folded")
    _restore_counter(images, tmp_path, expected, im.checkpoint(5), counter, buf, length, "head")


# Each instant a prune can be killed at (ckpt/image/prune.py's crash points), N-th time.
CRASH_POINTS = ["staged", "exchanged", "folded", "hidden:1", "removed:1", "hidden:3"]


@needs_kernel
@pytest.mark.timeout(600)
def test_a_prune_killed_at_any_point_leaves_a_chain_that_verifies_and_restores_the_same(
        programs: dict[str, Path], spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Chain 1..5 of zdtm_counter, pruned to --keep 1 (fold 5, remove 4, 3, 2, 1), SIGKILLed at
    each crash point: every checkpoint left verifies and resolves as before, the head restores
    the same; a prune run again finishes the job."""
    import shutil

    images, expected, counter, buf, length = _counter_checkpoints(programs, spawn, tmp_path, 5)
    before = {cp.id: _memory(cp) for cp in ImageDir(images).checkpoints}
    for n, point in enumerate(CRASH_POINTS):
        copy = tmp_path / f"crash-{n}"
        shutil.copytree(images, copy)
        env = dict(ckpt_env(), CKPT_PRUNE_CRASH=point)
        killed = subprocess.run(ckpt_argv("prune", "-D", copy, "--keep", "1"), env=env, capture_output=True,
                                text=True, timeout=120, cwd=REPO)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr)
        verify = run_ckpt("verify", copy)
        assert verify.returncode == 0, (point, verify.stderr)
        left = ImageDir(copy).checkpoints
        assert left and left[-1].id == 5
        for cp in left:
            assert _memory(cp) == before[cp.id], (point, cp.id)
        if point in ("exchanged", "hidden:1"):
            _restore_counter(copy, tmp_path, expected, ImageDir(copy).checkpoint(5), counter, buf, length,
                             f"restore-{n}")
        again = run_ckpt("prune", "-D", copy, "--keep", "1")
        assert again.returncode == 0, again.stderr
        assert sorted(os.listdir(copy)) == [".lock", "000005", "CKPT-IMAGES"], point
        assert _memory(ImageDir(copy).checkpoint(5)) == before[5]


@needs_kernel
@pytest.mark.timeout(300)
def test_dump_every_with_keep_stays_bounded(programs: dict[str, Path], spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """dump --every --count 6 --keep 2: after each checkpoint the oldest go; the head's chain is
    2 checkpoints, the first full, and every dump after the first is incremental."""
    stop = tmp_path / "stop"
    target = spawn([programs["zdtm_counter"], "-s", stop])
    counter, buf, length = counter_state(target)
    expected = Profile.of(target.pid)
    images = tmp_path / "images"
    result = run_ckpt("dump", "-t", target.pid, "-D", images, "--every", "200ms", "--count", "6", "--keep", "2",
                      "--json", timeout=200)
    assert result.returncode == 0, result.stderr
    reports = [json.loads(chunk) for chunk in _json_objects(result.stdout)]
    assert [r["id"] for r in reports] == [1, 2, 3, 4, 5, 6]
    assert [r["kind"] for r in reports] == ["full"] + ["incremental"] * 5
    assert [r["pruned"]["kept"] for r in reports] == [[1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6]]
    im = ImageDir(images)
    assert [(cp.id, cp.kind, cp.parent) for cp in im.checkpoints] == [(5, "full", None), (6, "incremental", 5)]
    assert run_ckpt("verify", images).returncode == 0
    text = run_ckpt("dump", "-t", target.pid, "-D", images, "--keep-within", "1h", "--keep", "1", "--kill")
    assert text.returncode == 0, text.stderr
    target.kill()
    stop.touch()
    assert "pruned:" not in text.stdout   # within the hour: nothing goes
    assert [cp.id for cp in ImageDir(images).checkpoints] == [5, 6, 7]
    _restore_counter(images, tmp_path, expected, ImageDir(images).checkpoint(7), counter, buf, length, "head")


def _json_objects(text: str) -> list[str]:
    """The JSON objects printed one after the other (indented or one per line)."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        obj, end = decoder.raw_decode(text, pos)
        out.append(text[pos:end])
        pos = end
    return out


@needs_kernel
@pytest.mark.timeout(400)
def test_prune_a_tree_with_copy_on_write_pages(programs: dict[str, Path], spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """cow_tree (a parent and a child sharing 64 MiB copy-on-write), dumped three times, pruned
    to the last: every task's checkpoint (tasks/PID/) is folded, the tree restores and its
    pages are shared again."""
    from test_tree_cow import CowTree, _restored_output, _shared

    started = spawn([programs["cow_tree"], "64"], cls=CowTree)
    expected = Profile.of(started.pid)
    images = tmp_path / "images"
    for args in ([], [], ["--kill"]):
        _dump(started.pid, images, *args)
    # (Without file-backed VMAs: reading those of a task's checkpoint, trust.checkpoint_principal
    # looks for tasks/PID at the top of the images dir.)
    before = {cp.id: [_memory(t, files=False) for t in cp.tasks()] for cp in ImageDir(images).checkpoints}
    assert all(len(v) == 2 for v in before.values())
    result = run_ckpt("prune", "-D", images, "--keep", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == [1, 2]
    cp = ImageDir(images).checkpoint(3)
    assert cp.parent is None and all(t.parent is None and t.kind == "full" for t in cp.tasks())
    assert [_memory(t, files=False) for t in cp.tasks()] == before[3]
    assert run_ckpt("verify", images).returncode == 0
    assert _shared(_restored_output(images, tmp_path, started, expected)) >= 64 * 256 - 2 * 256


def test_cli_usage(tmp_path: Path) -> None:
    im = _build_chain(tmp_path / "images", 5, 3, branches=False)
    for args, code in ((["prune", "-D", im.path], 2), (["prune", "-D", im.path, "--keep", "0"], 2),
                       (["prune", "-D", im.path, "--keep-within", "soon"], 2),
                       (["prune", im.path, "-D", tmp_path, "--keep", "1"], 2),
                       (["prune", "-D", tmp_path / "none", "--keep", "1"], 7),
                       (["prune", "-D", im.path, "--kee", "1"], 2)):
        result = run_ckpt(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert sorted(os.listdir(im.path)) == [".lock", "000001", "000002", "000003", "CKPT-IMAGES"]
    dry = run_ckpt("prune", im.path, "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout, dry.stdout
    with ImageDir(im.path).lock():   # a dump writing there: exit 8, nothing changed
        busy = run_ckpt("prune", "-D", im.path, "--keep", "1")
    assert busy.returncode == 8 and "being written" in busy.stderr, busy.stderr
    assert sorted(os.listdir(im.path)) == [".lock", "000001", "000002", "000003", "CKPT-IMAGES"]


@needs_kernel
@pytest.mark.timeout(120)
def test_a_checkpoint_a_holder_continues_is_kept(programs: dict[str, Path], spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A tracking holder whose record continues checkpoint 1 (not the head, as a restored
    process's can be): a prune that would remove 1 keeps it."""
    from ckpt.image.prune import tracked_checkpoints

    target = spawn([programs["zdtm_counter"]])
    counter_state(target)
    images = tmp_path / "images"
    _dump(target.pid, images)
    im = ImageDir(images)
    with im.lock():   # a later checkpoint the holder's record does not name
        with im.new_checkpoint(kind="pre", parent=1, pid=1234) as w:
            w.commit(vmas=[], present=[], whole=[], state=STATE)
    assert tracked_checkpoints(im) == {1}
    report = prune(im, keep_within=1, now=time.time() + 1e6)
    assert report.kept == [1, 2] and report.removed == [] and report.folds == []


@needs_kernel
@pytest.mark.timeout(300)
def test_prune_keeps_file_objects(programs: dict[str, Path], spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """zdtm_memfd (memfds mapped shared and private: their content in ``object_extents``, which
    name frames of the checkpoint's own pages.ckpt), page 7 of one poked between the dumps,
    pruned to the last checkpoint: it keeps its objects and restores to a PASS."""
    target = spawn([programs["zdtm_memfd"]])
    expected = Profile.of(target.pid)
    images = tmp_path / "images"
    _dump(target.pid, images)
    target.proc.send_signal(__import__("signal").SIGUSR2)
    assert target.readline() == "poked"
    _dump(target.pid, images)
    _dump(target.pid, images, "--kill")
    target.kill()
    before = _memory(ImageDir(images).checkpoint(3))
    result = run_ckpt("prune", "-D", images, "--keep", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == [1, 2]
    cp = ImageDir(images).checkpoint(3)
    assert cp.meta.objects and cp.parent is None and _memory(cp) == before
    assert run_ckpt("verify", images).returncode == 0
    workdir = tmp_path / "restore"
    workdir.mkdir()
    restore_and_check(images, workdir, expected)

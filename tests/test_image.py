"""The image layer: zero scan, round trips, chain resolution, corruption, atomicity, permissions, locking."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt.image
from ckpt import ranges
from ckpt.errors import CorruptImage, ImageDirLocked, ImageError, NotAnImageDir
from ckpt.image import FORMAT_VERSION, PAGE_SIZE, Checkpoint, ImageDir, VmaRecord, zero_page_runs
from ckpt.image.format import META_HEADER, decode_meta, encode_meta
from ckpt.image.schema import State, Target, Tracking

P = PAGE_SIZE
BASE = 0x7F0000000000
REPO = Path(ckpt.image.__file__).resolve().parents[2]
_dir_numbers = itertools.count()  # hypothesis reseeds `random`, so names come from a counter

# A pre-dump's state: what a writer of any kind may be given.
STATE = State(target=Target(pid=1234, start_time=5), tracking=Tracking(version=1, armed=b"", untrackable=()))


# -- helpers ---------------------------------------------------------------


def vma(start: int, npages: int, kind: str = "anon", **kw: object) -> VmaRecord:
    fields: dict[str, object] = dict(
        start=start, end=start + npages * P, perms="rw-p", offset=0, dev="00:00", inode=0, path="", flags=("rd", "wr")
    )
    fields.update(kw)
    return VmaRecord(kind=kind, **fields)  # type: ignore[arg-type]


def page(seed: int) -> bytes:
    """A recognizable non-zero page."""
    return random.Random(seed).randbytes(P - 8) + seed.to_bytes(8, "little")


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageDir]:
    im = ImageDir(tmp_path / "images", create=True)
    with im.lock():
        yield im


def commit(
    im: ImageDir,
    pages: dict[int, bytes | None],
    *,
    vmas: list[VmaRecord],
    present: list[tuple[int, int]],
    whole: list[tuple[int, int]] | None = None,
    parent: int | None = None,
    kind: str | None = None,
    **kw: object,
) -> Checkpoint:
    """Write one checkpoint: pages maps address -> content (None = add_zero_pages)."""
    kind = kind or ("full" if parent is None else "incremental")
    with im.new_checkpoint(kind=kind, parent=parent, pid=1234, **kw) as w:  # type: ignore[arg-type]
        for addr, data in sorted(pages.items()):
            if data is None:
                w.add_zero_pages([(addr, addr + P)])
            else:
                w.add_pages(addr, data)
        return w.commit(vmas=vmas, present=present, whole=whole or [], state=STATE)


# -- zero scan -------------------------------------------------------------


def naive_zero_runs(buf: bytes, page_size: int = P) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in range(len(buf) // page_size):
        if buf[i * page_size : (i + 1) * page_size] == bytes(page_size):
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    return runs


# Each page: all zero, random, or zero but for one byte (at its start, end or middle).
# The positions include the bytes zero_page_runs samples (0, P/2, P-1) and their neighbours.
one_byte_at = st.sampled_from([0, 1, 255, P // 2 - 1, P // 2, P // 2 + 1, P - 1])
page_kind = st.one_of(st.just(("zero", 0)), st.just(("random", 0)), st.tuples(st.just("one"), one_byte_at))


def build(kinds: list[tuple[str, int]], seed: int) -> bytearray:
    rng = random.Random(seed)
    buf = bytearray(len(kinds) * P)
    for i, (kind, pos) in enumerate(kinds):
        if kind == "random":
            buf[i * P : (i + 1) * P] = rng.randbytes(P)
        elif kind == "one":
            buf[i * P + pos] = 1
    return buf


@settings(max_examples=150, deadline=None)
@given(st.lists(page_kind, max_size=40), st.integers(0, 1000), st.sampled_from(["bytes", "bytearray", "view"]))
def test_zero_page_runs_matches_naive(kinds: list[tuple[str, int]], seed: int, as_type: str) -> None:
    buf = build(kinds, seed)
    arg: bytes | bytearray | memoryview = {
        "bytes": bytes(buf),
        "bytearray": buf,
        "view": memoryview(bytearray(P) + buf)[P:],
    }[as_type]
    assert zero_page_runs(arg) == naive_zero_runs(bytes(buf))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["zero", "random", "one"]), st.integers(1, 300)), max_size=5))
def test_zero_page_runs_across_chunks(blocks: list[tuple[str, int]]) -> None:
    """Long runs crossing the 1 MiB comparison chunks."""
    kinds = [(kind, 7) for kind, count in blocks for _ in range(count)]
    buf = build(kinds, 1)
    assert zero_page_runs(buf) == naive_zero_runs(bytes(buf))
    assert zero_page_runs(memoryview(buf)) == naive_zero_runs(bytes(buf))


def test_zero_page_runs_rejects_partial_pages() -> None:
    with pytest.raises(ValueError):
        zero_page_runs(bytes(P + 1))
    assert zero_page_runs(b"") == []
    assert zero_page_runs(bytes(64 * 3), page_size=64) == [(0, 3)]


# -- round trips -----------------------------------------------------------


def test_round_trip_scattered(images: ImageDir) -> None:
    vmas = [vma(BASE, 64), vma(BASE + 1000 * P, 600), vma(BASE + 5000 * P, 8)]
    rng = random.Random(5)
    contents: dict[int, bytes] = {}
    for base, count in ((BASE, 64), (BASE + 1000 * P, 600), (BASE + 5000 * P, 8)):
        for i in rng.sample(range(count), count // 2):
            contents[base + i * P] = page(base + i)
    big = b"".join(page(i) for i in range(300))  # one add spanning two frames
    contents = {a: d for a, d in contents.items() if not BASE + 1200 * P <= a < BASE + 1500 * P}
    ck = commit(
        images,
        {**contents, BASE + 1200 * P: big},
        vmas=vmas,
        present=[(v.start, v.end) for v in vmas],
    )
    for addr, data in contents.items():
        assert ck.read_memory(addr, P) == data
    assert ck.read_memory(BASE + 1200 * P, len(big)) == big
    # Unaligned reads across page and frame boundaries.
    assert ck.read_memory(BASE + 1200 * P + 123, 256 * P) == big[123 : 123 + 256 * P]
    assert ck.read_memory(BASE + 1455 * P - 5, 10) == big[255 * P - 5 : 255 * P + 5]
    assert ck.read_memory(BASE + 5, 0) == b""
    assert ck.state == STATE
    assert ck.vmas == vmas
    assert ck.meta.nframes >= 2
    summary = ck.summary()
    assert summary["pages_present"] == 672 and summary["vmas"] == 3 and summary["frames"] == ck.meta.nframes
    assert images.verify() == [
        f"checkpoint 1 (full, parent None): ok, {ck.meta.nframes} frames, 672 pages present, "
        f"{ck.pages_stored} stored, 0 zero"
    ]


def test_iter_memory_chunks_cover_request_in_order(images: ImageDir) -> None:
    vmas = [vma(BASE, 1024)]
    data = b"".join(page(i) for i in range(600))
    ck = commit(images, {BASE: data}, vmas=vmas, present=[(BASE, BASE + 800 * P)])
    pos = BASE + 7
    out = bytearray()
    for addr, view in ck.iter_memory([(BASE + 7, BASE + 1024 * P)]):
        assert addr == pos and 0 < len(view) <= 1 << 20
        pos += len(view)
        out += view
    assert pos == BASE + 1024 * P
    assert bytes(out) == (data + bytes(424 * P))[7:]


def test_overrides_within_one_checkpoint(images: ImageDir) -> None:
    vmas = [vma(BASE, 512)]
    with images.new_checkpoint(kind="full", parent=None, pid=1) as w:
        first = b"".join(page(i) for i in range(400))  # pre-copy pass
        w.add_pages(BASE, first)
        w.add_pages(BASE + 10 * P, page(1000) + page(1001))  # final pass: data over data
        w.add_pages(BASE + 20 * P, bytes(3 * P))  # zero over data
        w.add_zero_pages([(BASE + 30 * P, BASE + 32 * P)])
        w.add_pages(BASE + 31 * P, page(2000))  # data over zero
        w.add_pages(BASE + 450 * P, bytes(P))
        w.add_pages(BASE + 450 * P, page(3000))  # data over detected zero
        assert w.stats.pages_stored == 400 + 2 + 1 + 1 and w.stats.pages_zero == 3 + 2 + 1
        ck = w.commit(vmas=vmas, present=[(BASE, BASE + 512 * P)], whole=[(BASE, BASE + 512 * P)], state=State())
    expected = bytearray(first + bytes(112 * P))
    expected[10 * P : 12 * P] = page(1000) + page(1001)
    expected[20 * P : 23 * P] = bytes(3 * P)
    expected[30 * P : 31 * P] = bytes(P)
    expected[31 * P : 32 * P] = page(2000)
    expected[450 * P : 451 * P] = page(3000)
    assert ck.read_memory(BASE, 512 * P) == expected
    assert ck.zero == [(BASE + 20 * P, BASE + 23 * P), (BASE + 30 * P, BASE + 31 * P)]
    assert ck.pages_stored == 400 - 3 - 2 + 1 + 1 and ck.pages_zero == 4
    assert ranges.intersect(ck.stored, ck.zero) == []
    ck.verify()


add_op = st.tuples(st.sampled_from(["data", "zeros", "zero-ranges"]), st.integers(0, 19), st.integers(1, 8))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(add_op, min_size=1, max_size=12), st.sampled_from([0, 2]))
def test_last_add_wins_matches_model(tmp_path: Path, ops: list[tuple[str, int, int]], workers: int) -> None:
    """Any sequence of overlapping adds reads back as the per-page last write."""
    im = ImageDir(tmp_path / f"im{next(_dir_numbers)}", create=True)
    model: dict[int, bytes] = {}
    with im.lock(), im.new_checkpoint(kind="full", parent=None, pid=1, workers=workers) as w:
        for n, (op, first, count) in enumerate(ops):
            count = min(count, 20 - first)
            if op == "data":
                pages = [page(100 * n + i) for i in range(count)]
                w.add_pages(BASE + first * P, b"".join(pages))
            elif op == "zeros":
                pages = [bytes(P)] * count
                w.add_pages(BASE + first * P, bytes(count * P))
            else:
                pages = [bytes(P)] * count
                w.add_zero_pages([(BASE + first * P, BASE + (first + count) * P)])
            model.update({first + i: pages[i] for i in range(count)})
        ck = w.commit(vmas=[vma(BASE, 20)], present=[(BASE, BASE + 20 * P)], whole=[(BASE, BASE + 20 * P)],
                      state=State())
    assert ck.read_memory(BASE, 20 * P) == b"".join(model.get(i, bytes(P)) for i in range(20))
    zero_pages = {i for i, c in model.items() if c == bytes(P)}
    assert ranges.total(ck.zero) // P == len(zero_pages)
    assert ck.pages_stored == len(model) - len(zero_pages)
    ck.verify()


def test_zero_pages_store_no_data(images: ImageDir) -> None:
    vmas = [vma(BASE, 300)]
    ck = commit(images, {BASE: bytes(300 * P)}, vmas=vmas, present=[(BASE, BASE + 300 * P)])
    assert ck.meta.nframes == 0 and ck.bytes_compressed == 0
    assert ck.zero == [(BASE, BASE + 300 * P)] and ck.stored == []
    assert ck.read_memory(BASE + 3, 5 * P) == bytes(5 * P)
    ck.verify()


@pytest.mark.parametrize("level,workers", [(0, 2), (-1, 1), (3, 0), (1, 2)])
def test_compression_levels(images: ImageDir, level: int, workers: int) -> None:
    data = b"".join(page(i % 7) for i in range(700))  # compressible
    ck = commit(
        images,
        {BASE: data},
        vmas=[vma(BASE, 700)],
        present=[(BASE, BASE + 700 * P)],
        compression_level=level,
        workers=workers,
    )
    assert ck.read_memory(BASE, len(data)) == data
    assert ck.meta.codec == ("none" if level == 0 else "zstd")
    assert (ck.bytes_compressed == ck.bytes_raw) if level == 0 else (ck.bytes_compressed < ck.bytes_raw)
    ck.verify()


def test_three_link_chain(images: ImageDir) -> None:
    v1, v2 = vma(BASE, 16), vma(BASE + 100 * P, 16)
    vmas = [v1, v2]
    at = lambda i, base=BASE: base + i * P  # noqa: E731
    # 1: full, pages 0-7 of v1 and 0-7 of v2 stored.
    c1 = commit(
        images,
        {**{at(i): page(100 + i) for i in range(8)}, **{at(i, v2.start): page(200 + i) for i in range(8)}},
        vmas=vmas,
        present=[(at(0), at(8)), (v2.start, at(8, v2.start))],
        whole=[(v1.start, v1.end), (v2.start, v2.end)],
    )
    # 2: page 1 rewritten, page 2 gone (absent), page 3 zeroed; v2 dumped whole
    #    with only its page 0 stored: its pages 1-7 must not come from c1.
    c2 = commit(
        images,
        {at(1): page(301), at(3): None, at(0, v2.start): page(400)},
        parent=c1.id,
        vmas=vmas,
        present=[(at(0), at(2)), (at(3), at(8)), (v2.start, at(8, v2.start))],
        whole=[(v2.start, v2.end)],
    )
    # 3: page 4 rewritten; page 2 present again but not stored (absent at c2 -> zeros).
    c3 = commit(
        images,
        {at(4): page(504)},
        parent=c2.id,
        vmas=vmas,
        present=[(at(0), at(8)), (v2.start, at(8, v2.start))],
    )
    assert [c.id for c in c3.chain()] == [1, 2, 3] and images.head is not None and images.head.id == 3
    expect3 = [page(100), page(301), bytes(P), bytes(P), page(504), page(105), page(106), page(107)]
    assert c3.read_memory(BASE, 8 * P) == b"".join(expect3)
    assert c3.read_memory(at(8), 8 * P) == bytes(8 * P)  # mapped, never present
    assert c3.read_memory(v2.start, 8 * P) == page(400) + bytes(7 * P)
    assert c2.read_memory(at(2), P) == bytes(P)  # absent at c2
    assert c1.read_memory(at(2), P) == page(102) and c1.read_memory(v2.start + P, P) == page(201)
    sources = {(r.start, r.source, r.checkpoint) for r in c3.resolve([(at(0), at(5))])}
    assert sources == {(at(0), "data", 1), (at(1), "data", 2), (at(2), "backing", None), (at(3), "zero", 2),
                       (at(4), "data", 3)}  # fmt: skip
    with pytest.raises(ImageError, match="not mapped at checkpoint 3"):
        c3.read_memory(at(16), 1)
    assert len(images.verify()) == 3


def reference_read(chain: list[dict], addr_pages: int) -> list[bytes]:
    """Per-page reference resolver (the rule in docs/FORMAT.md)."""
    out = []
    for p in range(addr_pages):
        content = bytes(P)
        if p in chain[-1]["present"]:
            for link in reversed(chain):
                if p in link["content"]:
                    content = link["content"][p] or bytes(P)
                    break
                if p not in link["present"] or p in link["whole"]:
                    break
        out.append(content)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_chain_matches_reference(tmp_path: Path, data: st.DataObject) -> None:
    npages = 12
    pageset = st.sets(st.integers(0, npages - 1))
    im = ImageDir(tmp_path / f"im{next(_dir_numbers)}", create=True)
    vmas = [vma(BASE, npages)]
    links: list[dict] = []
    with im.lock():
        parent = None
        for n in range(data.draw(st.integers(1, 4))):
            stored = data.draw(pageset)
            content = {p: (None if data.draw(st.booleans()) else page(1000 * n + p)) for p in stored}
            link = {"present": data.draw(pageset), "whole": data.draw(pageset), "content": content}
            links.append(link)
            ck = commit(
                im,
                {BASE + p * P: c for p, c in content.items()},
                vmas=vmas,
                parent=parent,
                present=[(BASE + p * P, BASE + (p + 1) * P) for p in link["present"]],
                whole=[(BASE + p * P, BASE + (p + 1) * P) for p in link["whole"]],
            )
            parent = ck.id
            assert ck.read_memory(BASE, npages * P) == b"".join(reference_read(links, npages))


def test_file_backed_vma(images: ImageDir, tmp_path: Path) -> None:
    f = tmp_path / "lib.so"
    file_data = b"".join(page(9000 + i) for i in range(5)) + b"tail"  # 5 pages and a partial one
    f.write_bytes(file_data)
    st_ = f.stat()
    # dev and inode as /proc/PID/maps gives them: readers require them of the file they open.
    fv = vma(BASE, 8, "file-private", path=str(f), offset=P, inode=st_.st_ino,
             dev=f"{os.major(st_.st_dev):02x}:{os.minor(st_.st_dev):02x}",
             file_size=st_.st_size, file_mtime_ns=st_.st_mtime_ns)  # fmt: skip
    ck = commit(images, {BASE + 2 * P: page(1)}, vmas=[fv], present=[(BASE, BASE + 8 * P)])
    mapped = file_data[P:] + bytes(8 * P)
    expected = mapped[: 2 * P] + page(1) + mapped[3 * P : 8 * P]
    assert ck.read_memory(BASE, 8 * P) == expected  # beyond EOF reads as zeros
    ck.verify()
    f.write_bytes(file_data + b"more")
    with pytest.raises(ImageError, match=f"mapped file {f}.*changed"):
        ck.read_memory(BASE, P)
    assert ck.read_memory(BASE + 2 * P, P) == page(1)  # stored pages do not need the file
    f.unlink()
    with pytest.raises(ImageError, match=f"mapped file {f} is missing"):
        ck.read_memory(BASE, P)


# -- corruption ------------------------------------------------------------


def two_checkpoints(im: ImageDir) -> tuple[Checkpoint, Checkpoint]:
    vmas = [vma(BASE, 600)]
    c1 = commit(im, {BASE: b"".join(page(i) for i in range(600))}, vmas=vmas, present=[(BASE, BASE + 600 * P)])
    c2 = commit(im, {BASE: page(7)}, vmas=vmas, present=[(BASE, BASE + 600 * P)], parent=c1.id)
    return c1, c2


def test_flipped_frame_byte(images: ImageDir) -> None:
    c1, c2 = two_checkpoints(images)
    offset, stored_len = c1.meta.frames[4], c1.meta.frames[5]  # frame 1
    pages_file = c1.path / "pages.ckpt"
    blob = bytearray(pages_file.read_bytes())
    blob[offset + stored_len // 2] ^= 0x40
    pages_file.write_bytes(blob)
    fresh = ImageDir(images.path)
    msg = f"checkpoint 1: pages.ckpt frame 1 at offset {offset}: crc32 mismatch"
    with pytest.raises(CorruptImage, match=msg):
        fresh.checkpoint(2).read_memory(BASE + 300 * P, P)
    assert fresh.checkpoint(2).read_memory(BASE, P) == page(7)  # other frames still readable
    with pytest.raises(CorruptImage, match=msg):
        fresh.verify()


def test_truncated_pages_file(images: ImageDir) -> None:
    c1, _ = two_checkpoints(images)
    pages_file = c1.path / "pages.ckpt"
    size = pages_file.stat().st_size
    os.truncate(pages_file, size - 100)
    with pytest.raises(CorruptImage, match=f"checkpoint 1: pages.ckpt truncated at offset {size - 100}"):
        ImageDir(images.path).checkpoint(1)
    with pytest.raises(CorruptImage, match="checkpoint 1"):
        ImageDir(images.path).checkpoint(2).read_memory(BASE + P, P)


def test_bad_meta_crc_and_magic(images: ImageDir) -> None:
    c1, _ = two_checkpoints(images)
    meta_file = c1.path / "meta.ckpt"
    good = meta_file.read_bytes()
    bad = bytearray(good)
    bad[-3] ^= 1
    meta_file.write_bytes(bad)
    crc_msg = f"checkpoint 1: meta.ckpt: crc32 mismatch in the body at offset {META_HEADER.size}"
    with pytest.raises(CorruptImage, match=crc_msg):
        ImageDir(images.path).checkpoint(1)
    with pytest.raises(CorruptImage, match="checkpoint 1"):
        ImageDir(images.path).verify()
    meta_file.write_bytes(b"XKPTMETA" + good[8:])
    with pytest.raises(CorruptImage, match="bad magic"):
        ImageDir(images.path).checkpoint(1)
    meta_file.write_bytes(good[:-10])
    with pytest.raises(CorruptImage, match="truncated"):
        ImageDir(images.path).checkpoint(1)


def test_newer_version_is_refused(images: ImageDir) -> None:
    c1, _ = two_checkpoints(images)
    meta_file = c1.path / "meta.ckpt"
    good = meta_file.read_bytes()
    magic, _, crc, length = META_HEADER.unpack_from(good)
    meta_file.write_bytes(META_HEADER.pack(magic, FORMAT_VERSION + 1, crc, length) + good[META_HEADER.size :])
    with pytest.raises(ImageError, match="newer") as info:
        ImageDir(images.path).checkpoint(1)
    assert not isinstance(info.value, CorruptImage)
    (images.path / "CKPT-IMAGES").write_text(f"ckpt images directory\nformat-version {FORMAT_VERSION + 1}\n")
    with pytest.raises(ImageError, match="newer"):
        ImageDir(images.path)


def test_extent_outside_frame_is_refused(images: ImageDir) -> None:
    c1, _ = two_checkpoints(images)
    ext = c1.meta.extents.__copy__()
    ext[1] += 1000  # the first extent now runs past its frame
    blob = encode_meta(dataclasses.replace(c1.meta, extents=ext))
    with pytest.raises(CorruptImage, match="checkpoint 1: meta.ckpt: extent 0 .* lies outside frame 0 at offset 0"):
        decode_meta(blob, 1)


def test_missing_parent(images: ImageDir) -> None:
    c1, _ = two_checkpoints(images)
    os.rename(c1.path, images.path / "old-1")
    fresh = ImageDir(images.path)
    with pytest.raises(CorruptImage, match="checkpoint 2: parent checkpoint 1 does not exist"):
        fresh.checkpoint(2).read_memory(BASE + 300 * P, P)
    with pytest.raises(CorruptImage, match="parent checkpoint 1 does not exist"):
        fresh.verify()


# -- atomicity -------------------------------------------------------------


def test_exception_inside_with_leaves_nothing(images: ImageDir) -> None:
    c1, _ = two_checkpoints(images)
    before = sorted(os.listdir(images.path))
    with pytest.raises(RuntimeError):
        with images.new_checkpoint(kind="incremental", parent=c1.id, pid=1) as w:
            w.add_pages(BASE, b"".join(page(i) for i in range(400)))
            raise RuntimeError("target exited")
    assert sorted(os.listdir(images.path)) == before
    assert [c.id for c in images.checkpoints] == [1, 2]
    with images.new_checkpoint(kind="full", parent=None, pid=1) as w:
        pass  # leaving without commit discards too
    assert sorted(os.listdir(images.path)) == before


def test_crashed_writer_leaves_staging_that_readers_ignore(tmp_path: Path) -> None:
    im = ImageDir(tmp_path / "images", create=True)
    with im.lock():
        commit(im, {BASE: page(1)}, vmas=[vma(BASE, 1)], present=[(BASE, BASE + P)])
    script = textwrap.dedent(
        f"""
        import os
        from ckpt.image import ImageDir
        im = ImageDir({str(im.path)!r})
        with im.lock():
            w = im.new_checkpoint(kind="incremental", parent=1, pid=1)
            w.add_pages({BASE}, os.urandom({300 * P}))
            os._exit(9)  # a crash: no abort, no cleanup
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert proc.returncode == 9
    staging = [n for n in os.listdir(im.path) if n.startswith(".staging-000002-")]
    assert len(staging) == 1
    assert [c.id for c in im.checkpoints] == [1] and im.head is not None and im.head.id == 1
    assert im.head.read_memory(BASE, P) == page(1)
    assert len(im.verify()) == 1
    assert im.remove_stale_staging() == 1
    assert not [n for n in os.listdir(im.path) if n.startswith(".staging-")]
    with im.lock():  # the next id is still 2
        assert commit(im, {BASE: page(2)}, vmas=[vma(BASE, 1)], present=[(BASE, BASE + P)], parent=1).id == 2


# -- permissions, lock, directory checks -----------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        im = ImageDir(tmp_path / "images", create=True)
        with im.lock():
            ck = commit(im, {BASE: page(1)}, vmas=[vma(BASE, 1)], present=[(BASE, BASE + P)])
    finally:
        os.umask(old)
    assert os.stat(im.path).st_mode & 0o777 == 0o700
    assert os.stat(ck.path).st_mode & 0o777 == 0o700
    for f in [im.path / "CKPT-IMAGES", im.path / ".lock", ck.path / "meta.ckpt", ck.path / "pages.ckpt"]:
        assert os.stat(f).st_mode & 0o777 == 0o600, f


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    im = ImageDir(tmp_path / "images", create=True)
    script = textwrap.dedent(
        f"""
        import sys
        from ckpt.image import ImageDir
        with ImageDir({str(im.path)!r}).lock():
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ImageDirLocked, match=f"is being written by another ckpt \\(pid {holder.pid}\\)"):
            with im.lock():
                pass
        with pytest.raises(ImageDirLocked):
            im.remove_stale_staging()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    with im.lock():  # released when the holder exits
        pass


def test_lock_is_exclusive_within_a_process(tmp_path: Path) -> None:
    a = ImageDir(tmp_path / "images", create=True)
    b = ImageDir(tmp_path / "images")
    with a.lock():
        with pytest.raises(ImageDirLocked, match=f"pid {os.getpid()}"):
            with b.lock():
                pass
    with pytest.raises(ImageError, match="needs lock"):
        b.new_checkpoint(kind="full", parent=None, pid=1)


def test_not_an_image_dir(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    for create in (False, True):
        with pytest.raises(NotAnImageDir, match=f"{other} is not a ckpt images directory \\(no CKPT-IMAGES\\)"):
            ImageDir(other, create=create)
    with pytest.raises(NotAnImageDir):
        ImageDir(other / "notes.txt", create=True)
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    with pytest.raises(NotAnImageDir):
        ImageDir(empty)
    assert ImageDir(empty, create=True).checkpoints == []
    assert os.stat(empty).st_mode & 0o777 == 0o700
    with pytest.raises(ImageError, match="does not exist"):
        ImageDir(tmp_path / "missing")


def test_writer_argument_checks(images: ImageDir) -> None:
    with pytest.raises(ImageError, match="parent checkpoint 5 does not exist"):
        images.new_checkpoint(kind="incremental", parent=5, pid=1)
    with pytest.raises(ValueError):
        images.new_checkpoint(kind="incremental", parent=None, pid=1)
    with pytest.raises(ValueError):
        images.new_checkpoint(kind="full", parent=None, pid=1, compression_level=30)
    with images.new_checkpoint(kind="full", parent=None, pid=1) as w:
        with pytest.raises(ValueError):
            w.add_pages(BASE + 1, bytes(P))
        with pytest.raises(ValueError, match="lie in no VMA"):
            w.commit(vmas=[vma(BASE, 1)], present=[(BASE, BASE + 2 * P)], whole=[], state=State())
    assert images.checkpoints == []


def test_releasing_the_lock_aborts_an_open_writer(tmp_path: Path) -> None:
    im = ImageDir(tmp_path / "images", create=True)
    with im.lock():
        w = im.new_checkpoint(kind="full", parent=None, pid=1)
        w.add_pages(BASE, page(1))
        with pytest.raises(ImageError, match="still being written"):
            im.new_checkpoint(kind="full", parent=None, pid=1)
    assert not w.staging.exists() and im.checkpoints == []
    with pytest.raises(ImageError, match="already committed or aborted"):
        w.add_pages(BASE, page(1))


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4), st.sampled_from(["zero", "data", "mixed"])),
                min_size=1, max_size=12))
def test_add_ranges_equals_add_pages_per_range(spec: list[tuple[int, int, str]]) -> None:
    """add_ranges (one buffer for many ranges) stores exactly what add_pages per range does."""
    import tempfile

    rs = ranges.normalize((s * PAGE_SIZE, (s + n) * PAGE_SIZE) for s, n, _ in spec)
    rng = random.Random(len(spec))
    chunks = []
    for start, end in rs:
        pages = []
        for i in range((end - start) // PAGE_SIZE):
            pages.append(bytes(PAGE_SIZE) if rng.random() < 0.4 else rng.randbytes(PAGE_SIZE))
        chunks.append(b"".join(pages))
    results = []
    for batched in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            images = ImageDir(Path(tmp) / "images", create=True)
            vmas = [VmaRecord(start=0, end=64 * PAGE_SIZE, perms="rw-p", offset=0, dev="00:00", inode=0,
                              path="", flags=(), kind="anon")]
            with images.lock(), images.new_checkpoint(kind="full", parent=None, pid=1) as writer:
                if batched:
                    writer.add_ranges(rs, b"".join(chunks))
                else:
                    for (start, _), data in zip(rs, chunks):
                        writer.add_pages(start, data)
                cp = writer.commit(vmas=vmas, present=rs, whole=rs, state=State())
            results.append((cp.stored, cp.zero, cp.read_memory(0, 64 * PAGE_SIZE)))
    assert results[0] == results[1]

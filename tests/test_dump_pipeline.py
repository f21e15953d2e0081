"""Issue 11 item 1: the full dump's write path -- O_DIRECT past the first MiBs, writeback
started early, and ``--no-fsync``.

A durable pages.ckpt is written buffered for its first ``DIRECT_AFTER`` bytes, then with
O_DIRECT from two aligned buffers (ckpt/image/frames.py ``DirectWriter``); the switch
happens at whatever offset the frames reached (compressed frames end anywhere), so the
block it falls in is written twice.  A dump with ``fsync=False`` (``ckpt dump
--no-fsync``) makes no fsync at all, and writes through the page cache.  Each checkpoint
written here must read back, and restore, exactly.
"""
from __future__ import annotations

import errno
import os
import random
import signal
from pathlib import Path
from typing import Any, Callable

import pytest

import ckpt
from ckpt.image import frames
from ckpt.image.format import PAGE_SIZE, VmaRecord
from ckpt.image.imagedir import ImageDir
from ckpt.image.schema import State
from helpers import Target, run_ckpt
from test_restore import Profile, restore_and_check

P = PAGE_SIZE
BASE = 0x7F0000000000
needs_kernel = pytest.mark.usefixtures("ckpt_kernel")


def mixed_pages(npages: int, seed: int) -> bytes:
    """Pages of random bytes, text and zeros in turn (8 pages each): frames compress to
    lengths that are no multiple of a block, and some pages are zero."""
    rng = random.Random(seed)
    text = b"".join(b"line %d of some text that compresses well\n" % i for i in range(8 * P // 40))[: 8 * P]
    out = bytearray()
    for i in range(0, npages, 8):
        n = min(8, npages - i)
        kind = (i // 8) % 3
        out += rng.randbytes(n * P) if kind == 0 else text[: n * P] if kind == 1 else bytes(n * P)
    return bytes(out)


def _vma(npages: int) -> VmaRecord:
    return VmaRecord(start=BASE, end=BASE + npages * P, perms="rw-p", offset=0, dev="00:00", inode=0,
                     path="", flags=("rd", "wr"), kind="anon")


def write_checkpoint(path: Path, data: bytes, level: int, **kw: Any) -> Any:
    im = ImageDir(path, create=True)
    npages = len(data) // P
    with im.lock(), im.new_checkpoint(kind="full", parent=None, pid=1, compression_level=level, **kw) as w:
        # In pieces of odd sizes, as a dump adds its copy batches.
        pos = 0
        for size in (3, 700, 1, 2049, 5000):
            end = min(npages, pos + size) if size != 5000 else npages
            w.add_pages(BASE + pos * P, data[pos * P : end * P])
            pos = end
        return w.commit(vmas=[_vma(npages)], present=[(BASE, BASE + npages * P)], whole=[], state=State())


@pytest.mark.parametrize("level", [1, 0])
def test_direct_writes_read_back(tmp_path: Path, level: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of 35 MiB (12 MiB compressed) goes O_DIRECT after its first 8 MiB, from an offset that is no
    block boundary when compressed, and reads back page for page; the file is exactly the
    frames (the padding of the last block is cut off)."""
    started: list[int] = []
    real_init = frames.DirectWriter.__init__

    def spy(self: frames.DirectWriter, fd: int, offset: int, head: bytes) -> None:
        started.append(offset)
        real_init(self, fd, offset, head)

    monkeypatch.setattr(frames.DirectWriter, "__init__", spy)
    data = mixed_pages(9000, seed=level)
    ck = write_checkpoint(tmp_path / "im", data, level)
    assert len(started) == 1 and started[0] >= frames.DIRECT_AFTER, started
    if level:
        assert started[0] % frames.DirectWriter.ALIGN, "the compressed frames happened to end on a block"
    assert ck.read_memory(BASE, len(data)) == data
    last = ck.meta.frames[-4:]
    assert (ck.path / "pages.ckpt").stat().st_size == last[0] + last[1] == ck.meta.stats["bytes_compressed"]
    ck.verify()


def test_small_checkpoints_stay_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental's few MiB never pay for the O_DIRECT buffers."""
    def refuse(*args: object) -> None:
        raise AssertionError("a DirectWriter for a small checkpoint")

    monkeypatch.setattr(frames.DirectWriter, "__init__", refuse)
    data = mixed_pages(1000, seed=3)
    ck = write_checkpoint(tmp_path / "im", data, 1)
    assert ck.read_memory(BASE, len(data)) == data


def test_file_system_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where O_DIRECT is refused at open time (fcntl) or at write time (EINVAL: another
    alignment), the same bytes are written buffered."""
    data = mixed_pages(9000, seed=5)
    monkeypatch.setattr(frames.DirectWriter, "supported", staticmethod(lambda fd: False))
    assert write_checkpoint(tmp_path / "a", data, 1).read_memory(BASE, len(data)) == data
    monkeypatch.undo()

    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, buf: Any, offset: int) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_pwrite(fd, buf, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    ck = write_checkpoint(tmp_path / "b", data, 1)
    assert refused, "no O_DIRECT write was tried"
    assert ck.read_memory(BASE, len(data)) == data


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("level", [1, 0])
def test_no_fsync_dump_restores_the_same(level: int, programs: dict[str, Path], spawn: Callable[..., Target],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable dump fsyncs and writes its 16 MiB of pseudo-random pages O_DIRECT past 8 MiB;
    a dump with fsync=False makes no fsync and writes them buffered.  Each checkpoint restores
    a process that finds every page of its buffer as its counter says."""
    stop = tmp_path / "stop"
    target = spawn([programs["zdtm_counter"], "-s", stop])
    expected = Profile.of(target.pid)
    durable_dir, fast_dir = tmp_path / "durable", tmp_path / "fast"
    fsyncs = count_fsyncs(monkeypatch)
    direct: list[int] = []
    real_init = frames.DirectWriter.__init__

    def spy(self: frames.DirectWriter, fd: int, offset: int, head: bytes) -> None:
        direct.append(offset)
        real_init(self, fd, offset, head)

    monkeypatch.setattr(frames.DirectWriter, "__init__", spy)
    ckpt.dump(target.pid, durable_dir, compression_level=level, track=False)
    assert len(fsyncs) >= 3, "pages.ckpt, meta.ckpt and the directories of a durable dump"
    assert len(direct) == 1, "the durable dump's pages.ckpt was not written O_DIRECT"
    fsyncs.clear()
    report = ckpt.dump(target.pid, fast_dir, compression_level=level, after="kill", fsync=False)
    assert fsyncs == [], "a dump with fsync=False made an fsync"
    assert len(direct) == 1, "a dump with fsync=False wrote O_DIRECT"
    monkeypatch.undo()
    target.kill()
    stop.touch()
    assert report.bytes_compressed > frames.DIRECT_AFTER
    for name, images in (("durable", durable_dir), ("fast", fast_dir)):
        lines = restore_and_check(images, tmp_path, expected, name=name, go=signal.SIGUSR1)
        assert lines[-1].startswith("PASS"), name


def test_cli_no_fsync_is_offered() -> None:
    """`ckpt dump --help` offers --no-fsync and says what it does not guarantee."""
    out = run_ckpt("dump", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--no-fsync" in text and "power loss" in text

"""Copy-on-write pages a child shares with its parent stay shared (issue 9 item 2; ckpt/cow.py).

``cow_tree`` maps 64 MiB of private anonymous memory, fills it and forks; each side then
changes 256 pages of its own.  The other 15,872 pages are one physical page for both.  A
dump stores them once (the child's checkpoint leaves out what is still its parent's page),
and a restore premaps them in the parent before it creates the child, so they are shared
again: the restored parent counts the pages both map to one frame (pagemap), both check
their content, and the restored tree uses about 64 MiB, not 128.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt import cow, ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.image import ImageDir
from helpers import Target, run_ckpt
from test_restore import Profile, restoring
from test_tracking import wait_for
from test_tree_memory import Forked

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

MIB = 64
PAGES = MIB << 8
MARKED = 256   # pages each side changed after the fork


class CowTree(Forked):
    """``cow_tree``: ``ready PID CHILD ADDRESS`` once both wrote their pages."""


def _restored_output(images_dir: Path, tmp_path: Path, started: Target, expected: Profile) -> str:
    """Once the dumped tree is gone: restore it, let it check itself (SIGUSR1); its PASS line."""
    started.proc.wait(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{started.kid}"), "init reaped the killed children")
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        lines = run.output()
        assert rc == 0 and lines and lines[-1].startswith("PASS"), run.explain()
    return lines[-1]


def _start(spawn: Callable[..., Target], programs: dict[str, Path], file: Path | None = None) -> CowTree:
    started = spawn([programs["cow_tree"], str(MIB), *([file] if file is not None else [])], cls=CowTree)
    assert isinstance(started, CowTree)
    shared = ranges.total(cow.shared_with_parent(started.kid, started.pid)) // 4096
    assert shared >= PAGES - 2 * MARKED, f"only {shared} pages shared before the dump"
    return started


def _shared(line: str) -> int:
    assert line.startswith("PASS shared="), line
    return int(line.split("=")[1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mapping", ["anonymous", "file"])
def test_cow_pages_are_stored_once_and_shared_again_after_restore(
        spawn: Callable[..., Target], programs: dict[str, Path], images_dir: Path, tmp_path: Path,
        mapping: str) -> None:
    """Private anonymous memory, and a private mapping of a file whose pages the parent
    wrote before the fork (anonymous copies of the file's: zdtm cow01 ``file_tcs``)."""
    started = _start(spawn, programs, tmp_path / "mapped" if mapping == "file" else None)
    expected = Profile.of(started.pid)
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"], report["unrestorable"]
    cp = ImageDir(images_dir).head
    assert cp is not None
    region = [(started.address, started.address + (MIB << 20))]
    child = cp.task(started.kid)
    recorded = ranges.from_bytes(child.state.cow)
    # The child's checkpoint records the shared pages and leaves them out; the parent stores all.
    assert ranges.total(ranges.intersect(recorded, region)) // 4096 >= PAGES - 2 * MARKED
    assert ranges.total(ranges.intersect(child.stored, region)) // 4096 <= 2 * MARKED
    assert ranges.total(ranges.intersect(cp.stored, region)) == MIB << 20
    line = _restored_output(images_dir, tmp_path, started, expected)
    assert _shared(line) >= PAGES - 2 * MARKED


@pytest.mark.timeout(300)
def test_cow_incremental_dump_stores_what_stopped_being_shared(
        spawn: Callable[..., Target], programs: dict[str, Path], images_dir: Path, tmp_path: Path) -> None:
    """A page left out of the child's first checkpoint as its parent's that the parent writes
    afterwards is the child's own at the next dump: the incremental stores it (read from
    the child), and the restore of the chain gives each side its own content."""
    started = _start(spawn, programs)
    expected = Profile.of(started.pid)
    first = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--json", timeout=150)
    assert first.returncode == 0, first.stderr
    # The parent rewrites pages 1024..1151 with what they hold (the child's stay the old page).
    mem = os.open(f"/proc/{started.pid}/mem", os.O_RDWR)
    try:
        at = started.address + 1024 * 4096
        os.pwrite(mem, os.pread(mem, 128 * 4096, at), at)
    finally:
        os.close(mem)
    second = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["kind"] == "incremental" and report["restorable"], report
    cp = ImageDir(images_dir).head
    assert cp is not None
    child = cp.task(started.kid)
    rewritten = [(started.address + 1024 * 4096, started.address + 1152 * 4096)]
    assert ranges.intersect(ranges.from_bytes(child.state.cow), rewritten) == []
    assert ranges.intersect(child.stored, rewritten) == rewritten
    line = _restored_output(images_dir, tmp_path, started, expected)
    assert _shared(line) >= PAGES - 2 * MARKED - 128


SIBLINGS = r"""
import mmap, os, signal, sys, time
PAGE, N = 4096, 1024
buf = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)   # 4 KiB pages, and a VMA of its own (no merge with a neighbour)
def page(i, who=b""):
    return ((who or i.to_bytes(4, "little")) * PAGE)[:PAGE]
for i in range(N):
    buf[i * PAGE:(i + 1) * PAGE] = page(i)
[addr] = [int(line.split("-")[0], 16) for line in open("/proc/self/maps")
          if line.split()[1] == "rw-p" and len(line.split()) == 5
          and (lambda s, e: int(e, 16) - int(s, 16))(*line.split()[0].split("-")) == N * PAGE]
CHANGES = {"a": range(0, 16), "b": range(16, 32), "parent": range(32, 48)}
def expected(who, i):
    if i in CHANGES[who]:
        return bytes(PAGE) if who == "a" else page(i, who.encode())
    return page(i)
def right(who):
    return all(buf[i * PAGE:(i + 1) * PAGE] == expected(who, i) for i in range(N))
def child(who):
    signal.signal(signal.SIGUSR2, lambda *_: os._exit(0 if right(who) else 1))
    if who == "a":   # its pages 0..15 dropped: zero for it, still the parent's for b
        buf.madvise(mmap.MADV_DONTNEED, 0, 16 * PAGE)
    else:
        for i in CHANGES[who]:
            buf[i * PAGE:(i + 1) * PAGE] = page(i, b"b")
    os.write(w, b"k")
    while True:
        time.sleep(0.2)
r, w = os.pipe()
kids = {}
for who in ("a", "b"):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(who)
    kids[who] = pid
os.close(w)
assert os.read(r, 1) + os.read(r, 1) == b"kk"
os.close(r)
for i in CHANGES["parent"]:
    buf[i * PAGE:(i + 1) * PAGE] = page(i, b"parent")
def frames(pid):
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        data = f.read(N * 8)
    return [int.from_bytes(data[k:k + 8], "little") for k in range(0, len(data), 8)]
def shared(pid):
    mine, theirs = frames(os.getpid()), frames(pid)
    return sum(1 for x, y in zip(mine, theirs) if x >> 63 and y >> 63 and x & ((1 << 55) - 1) == y & ((1 << 55) - 1))
def check(*_):
    counts = {who: shared(pid) for who, pid in kids.items()}
    problems = [] if right("parent") else ["the parent's pages are wrong"]
    for who, pid in kids.items():
        os.kill(pid, signal.SIGUSR2)
        if os.waitpid(pid, 0)[1] != 0:
            problems.append(f"child {who}'s pages are wrong")
    print("; ".join(problems) or f"PASS a={counts['a']} b={counts['b']}", flush=True)
    sys.exit(1 if problems else 0)
signal.signal(signal.SIGUSR1, check)
print("ready", os.getpid(), kids["a"], hex(addr), flush=True)
while True:
    signal.pause()
"""


@pytest.mark.timeout(300)
def test_siblings_sharing_different_pages_with_their_parent(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """Two children of one parent share different pages of one VMA with it: the parent
    premaps the union once; a child drops the pages only its sibling shares (here the
    pages it had discarded with MADV_DONTNEED, which must read zero for it) and keeps its own."""
    started = spawn([sys.executable, "-c", SIBLINGS], cls=CowTree)
    expected = Profile.of(started.pid)
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["restorable"], result.stdout
    line = _restored_output(images_dir, tmp_path, started, expected)
    counts = dict(word.split("=") for word in line.split()[1:])
    # a: all but the 16 it dropped and the parent's 16; b: all but its 16 and the parent's.
    assert int(counts["a"]) >= 1024 - 48 and int(counts["b"]) >= 1024 - 48, line

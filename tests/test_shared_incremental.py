"""Shared anonymous memory checkpointed incrementally (issue 9 item 3; ckpt/sharedincr.py).

A Python target maps ``mmap.mmap(-1, n)`` (MAP_SHARED|MAP_ANONYMOUS) and keeps a private
copy of what the buffer must hold; commands on its stdin write pages of the buffer (itself,
through its child, through a child forked for it that exits, through a file descriptor of
/proc/self/map_files, or punch a hole) and update the copy.  After a restore, SIGUSR1 makes
it compare (and, in a tree, has the child write once more and checks the parent sees it).
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt import forkcount, ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import Target
from test_restore import Profile, restore_and_check

PAGE = 4096
PAGES = 16384            # 64 MiB
WRITE = PAGES // 100     # 1 % of the pages per round

TARGET = r"""
import mmap, os, random, signal, sys
PAGE, PAGES = 4096, int(sys.argv[2])
SIZE = PAGE * PAGES
buf = mmap.mmap(-1, SIZE)               # MAP_SHARED|MAP_ANONYMOUS
for off in range(0, SIZE, 1 << 20):
    buf[off:off + (1 << 20)] = random.Random(off).randbytes(1 << 20)
expected = bytearray(buf)                # private: what the buffer must hold
[addr] = [int(l.split("-")[0], 16) for l in open("/proc/self/maps")
          if l.split()[1] == "rw-s" and "/dev/zero" in l
          and (lambda s, e: int(e, 16) - int(s, 16))(*l.split()[0].split("-")) == SIZE]

def write(where, seed, count):
    rng = random.Random(seed)
    for p in rng.sample(range(PAGES), count):
        where[p * PAGE:p * PAGE + 16] = rng.randbytes(16)

kid, to_kid, from_kid = None, None, None
if sys.argv[1] == "tree":
    down, up = os.pipe(), os.pipe()
    kid = os.fork()
    if kid == 0:
        os.close(down[1]); os.close(up[0])
        commands = os.fdopen(down[0])
        for line in commands:                  # EOF: the parent is gone
            seed, count = map(int, line.split())
            write(buf, seed, count)
            os.write(up[1], b"k")
        os._exit(0)
    os.close(down[0]); os.close(up[1])
    to_kid, from_kid = os.fdopen(down[1], "w"), up[0]

def child_writes(seed, count):
    to_kid.write(f"{seed} {count}\n"); to_kid.flush()
    assert os.read(from_kid, 1) == b"k"
    write(expected, seed, count)

def same():
    bad = [p for p in range(PAGES) if buf[p * PAGE:(p + 1) * PAGE] != expected[p * PAGE:(p + 1) * PAGE]]
    return "PASS" if not bad else f"FAIL: {len(bad)} pages differ, first {bad[0]}"

def check(_sig, _frame):
    if kid is not None:
        child_writes(4242, 7)            # the restored child still shares the buffer
    result = same()
    print(result, flush=True)
    sys.exit(0 if result == "PASS" else 1)

signal.signal(signal.SIGUSR1, check)
print("ready", os.getpid(), hex(addr), kid or 0, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "w":                         # the target writes
        write(buf, int(args[0]), int(args[1])); write(expected, int(args[0]), int(args[1]))
    elif cmd == "cw":                      # its long-lived child writes
        child_writes(int(args[0]), int(args[1]))
    elif cmd == "fork":                    # a child forked now writes and exits
        pid = os.fork()
        if pid == 0:
            write(buf, int(args[0]), int(args[1]))
            os._exit(0)
        os.waitpid(pid, 0)
        write(expected, int(args[0]), int(args[1]))
    elif cmd == "pwrite":                  # write(2) through a file descriptor of the object
        fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + SIZE:x}", os.O_RDWR)
        os.pwrite(fd, b"through an fd", 5 * PAGE)
        os.close(fd)
        expected[5 * PAGE:5 * PAGE + 13] = b"through an fd"
    elif cmd == "remove":                  # punch a hole, then read the page back in (zeros)
        buf.madvise(mmap.MADV_REMOVE, 9 * PAGE, PAGE)
        assert buf[9 * PAGE] == 0
        expected[9 * PAGE:10 * PAGE] = bytes(PAGE)
    elif cmd == "check":
        print("ok", same(), flush=True)
        continue
    print("ok", flush=True)
signal.pause()
"""


class Shared(Target):
    """The target above: ``ready PID ADDRESS CHILD``."""

    def wait_ready(self, timeout: float = 60) -> Target:
        words = self.readline(timeout).split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.address, self.kid = int(words[2], 16), int(words[3])
        return self


def start(spawn: Callable[..., Target], mode: str = "single") -> Shared:
    target = spawn([sys.executable, "-c", TARGET, mode, str(PAGES)], cls=Shared)
    assert isinstance(target, Shared)
    return target


def buffer_of(target: Shared) -> list[tuple[int, int]]:
    return [(target.address, target.address + PAGES * PAGE)]


def stored(cp: ckpt.Checkpoint, target: Shared) -> int:
    """Bytes of the buffer this checkpoint stores."""
    return ranges.total(ranges.intersect(cp.stored, buffer_of(target)))


def is_whole(cp: ckpt.Checkpoint, target: Shared) -> bool:
    return ranges.covers(cp.whole, *buffer_of(target)[0])


@pytest.mark.timeout(300)
def test_a_shared_buffer_is_incremental_and_a_chain_of_three_restores(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """One process: each incremental stores the 1 % of the buffer written since, not all of it
    (before: all of it, every time); a restore of full + 3 incrementals gives the live content."""
    target = start(spawn)
    expected = Profile.of(target.pid)
    full = ckpt.dump(target.pid, images_dir)
    assert full.kind == "full" and is_whole(full.checkpoint, target)
    assert stored(full.checkpoint, target) == PAGES * PAGE
    for i in range(3):
        target.cmd(f"w {i} {WRITE}")
        report = ckpt.dump(target.pid, images_dir, after="kill" if i == 2 else "run")
        assert report.kind == "incremental", report.notes
        assert not is_whole(report.checkpoint, target), report.notes
        assert stored(report.checkpoint, target) == WRITE * PAGE, report.notes
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


@pytest.mark.timeout(300)
def test_a_buffer_a_parent_and_child_share_is_incremental_over_both(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """Parent and child map one buffer and both write it: the incremental stores the union
    of what each wrote, once (in the root's checkpoint), and the restore has all of it."""
    target = start(spawn, "tree")
    expected = Profile.of(target.pid)
    ckpt.dump(target.pid, images_dir)
    for i in range(2):
        target.cmd(f"w {10 + i} {WRITE}")
        target.cmd(f"cw {20 + i} {WRITE}")
        report = ckpt.dump(target.pid, images_dir, after="kill" if i == 1 else "run")
        cp = report.checkpoint
        assert report.kind == "incremental" and not is_whole(cp, target), report.notes
        assert cp.task(target.kid).kind == "incremental"
        # Written by both, stored by the root only (two random 1 % samples may overlap a little).
        assert 2 * WRITE * PAGE * 0.95 <= stored(cp, target) <= 2 * WRITE * PAGE, report.notes
        assert ranges.intersect(cp.task(target.kid).stored, buffer_of(target)) == []
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


@pytest.mark.timeout(300)
def test_a_child_that_wrote_and_exited_between_dumps_makes_that_dump_whole(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """A child forked since the last checkpoint was never tracked: its writes show in no
    page table ckpt scans.  The fork counter sees the fork: that dump stores the buffer
    whole (and says why), the next one is incremental again, the restore has the writes."""
    target = start(spawn)
    expected = Profile.of(target.pid)
    ckpt.dump(target.pid, images_dir)
    target.cmd(f"fork 30 {WRITE}")
    forked = ckpt.dump(target.pid, images_dir)
    assert forked.kind == "incremental" and is_whole(forked.checkpoint, target)
    assert any("forked since the last checkpoint" in n for n in forked.notes), forked.notes
    target.cmd(f"w 31 {WRITE}")
    last = ckpt.dump(target.pid, images_dir, after="kill")
    assert not is_whole(last.checkpoint, target) and stored(last.checkpoint, target) == WRITE * PAGE, last.notes
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how, why", [("pwrite", "written through a file descriptor"),
                                      ("remove", "forked since the last checkpoint")])
def test_writes_no_page_table_shows_make_the_dump_whole(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path, how: str, why: str) -> None:
    """write(2) through /proc/PID/map_files (seen by the inotify the holder keeps) and a hole
    punched with MADV_REMOVE then read back as zeros (counted with the forks): whole."""
    target = start(spawn)
    expected = Profile.of(target.pid)
    ckpt.dump(target.pid, images_dir)
    target.cmd(how)
    report = ckpt.dump(target.pid, images_dir, after="kill")
    assert report.kind == "incremental" and is_whole(report.checkpoint, target), report.notes
    assert any(why in n or "MADV_REMOVE" in n for n in report.notes), report.notes
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


@pytest.mark.timeout(300)
def test_a_process_outside_the_tree_that_maps_the_buffer_makes_it_whole(
        spawn: Callable[..., Target], images_dir: Path) -> None:
    """This test process maps the target's buffer through map_files: it could write it
    through page tables nobody tracks, so the buffer is stored whole, naming it."""
    target = start(spawn)
    ckpt.dump(target.pid, images_dir)
    start_, end = buffer_of(target)[0]
    fd = os.open(f"/proc/{target.pid}/map_files/{start_:x}-{end:x}", os.O_RDWR)
    try:
        outside = mmap.mmap(fd, end - start_)
        try:
            report = ckpt.dump(target.pid, images_dir)
        finally:
            outside.close()
    finally:
        os.close(fd)
    assert is_whole(report.checkpoint, target), report.notes
    assert any(f"pid {os.getpid()} outside the dumped tree maps it" in n for n in report.notes), report.notes
    target.cmd(f"w 40 {WRITE}")
    again = ckpt.dump(target.pid, images_dir)
    assert not is_whole(again.checkpoint, target) and stored(again.checkpoint, target) == WRITE * PAGE, again.notes


def test_the_tracepoints_are_found_without_a_mounted_tracefs() -> None:
    """The ids come from a tracefs mounted privately when none is mounted (CI): the same
    ids as the mounted one's, where there is one."""
    private = forkcount.private_tracepoint_ids()
    assert private is not None and len(private) == len(forkcount.EVENTS)
    assert forkcount.tracepoint_ids() == private

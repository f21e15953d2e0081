"""What the frozen window of a dump takes from work done before it (issue 11 items 5 and 6).

The frozen round reads /proc/PID/maps once (the injector's read, ckpt/live/freeze.py
``FrozenProcess.layout``) and compares it with the plan made while the target ran; it
finds the guard regions without a scan of the whole address space, from a scan made
just before the freeze and what the target wrote since (ckpt/tracker.py
``Tracker.scan_guards``).  These tests change the target between that work and the
freeze -- in the gap itself, by wrapping ``Tracker.scan_guards``, the last step
before the freeze -- and check that the checkpoint holds what the target had when
frozen.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import ranges
from ckpt._sys.pagemap import PagemapScanner, guard_category
from ckpt.arch import x86_64 as arch
from ckpt.tracker import Tracker
from helpers import PAGE, read_target_memory

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

REGIONS = 400   # many_maps: one VMA each, anonymous read-write and read-only in turn

# A target that installs and removes guard regions (MADV_GUARD_INSTALL 102 /
# MADV_GUARD_REMOVE 103, Linux 6.13) in regions it maps, on command.
GUARDS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = os.sysconf("SC_PAGE_SIZE")
regions = []
def new(pages):
    a = libc.mmap(None, pages * PAGE, 3, 0x22, -1, 0)   # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    ctypes.memset(a, 0x5a, pages * PAGE)
    regions.append(a)
new(32)
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "new":
        new(int(args[0]))
        print("ok", flush=True)
    elif cmd in ("install", "remove"):
        r, off, n = map(int, args)
        rc = libc.madvise(regions[r] + off * PAGE, n * PAGE, 102 if cmd == "install" else 103)
        print("ok" if rc == 0 else "err %d" % ctypes.get_errno(), flush=True)
    elif cmd == "write":
        r, off = map(int, args)
        ctypes.memset(regions[r] + off * PAGE, 1, 8)
        print("ok", flush=True)
"""


@pytest.fixture
def before_freeze(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Callable[[], Any]]]:
    """Steps run by the dump's tracker right after its last work before the freeze."""
    steps: list[Callable[[], Any]] = []
    original = Tracker.scan_guards

    def scan_then_change(self: Tracker) -> None:
        original(self)
        while steps:
            steps.pop(0)()

    monkeypatch.setattr(Tracker, "scan_guards", scan_then_change)
    yield steps
    assert not steps, "the dump never reached the step before the freeze"


def guards_now(pid: int) -> list[tuple[int, int]]:
    """The guard regions of ``pid`` as a scan of its whole address space finds them."""
    g = guard_category()
    with PagemapScanner(pid) as scanner:
        return scanner.ranges(0, arch.TASK_SIZE, mask=g, return_mask=g)


@pytest.mark.parametrize("presence", ["fast", "always"])
def test_guard_regions_changed_just_before_the_freeze_are_recorded(
        presence: str, spawn: Callable[..., Any], images_dir: Path, monkeypatch: pytest.MonkeyPatch,
        before_freeze: list[Callable[[], Any]]) -> None:
    """Guards installed and removed in a tracked region, and installed in a new one,
    between the scan before the freeze and the freeze: each checkpoint's ``mm.guard``
    is what a scan of the frozen target finds (the target is idle after the dump)."""
    if not guard_category():
        pytest.skip("this kernel's PAGEMAP_SCAN does not report guard regions")
    if presence == "always":   # the unfixed kernels' path: a full guard scan while frozen
        monkeypatch.setenv("CKPT_PRESENCE_PASS", "always")
    target = spawn([sys.executable, "-c", GUARDS])
    steps = [
        ["install 0 2 2"],                      # the full dump
        ["remove 0 2 1", "install 0 10 3"],     # in a tracked region
        ["new 8", "install 1 1 1"],             # a new region: not tracked yet
        [],                                     # nothing: the scan before the freeze stands
        ["remove 0 10 3", "write 0 20", "install 1 5 2"],
    ]
    for i, commands in enumerate(steps):
        if i == 4:
            target.cmd("install 0 16 1")         # before that scan: found by it
        before_freeze.extend(lambda c=c: target.cmd(c) for c in commands)
        report = ckpt.dump(target.pid, images_dir)
        assert report.kind == ("full" if i == 0 else "incremental"), report
        recorded = ranges.from_bytes(report.checkpoint.state.mm.guard)
        assert recorded == guards_now(target.pid), f"dump {i}: {commands}"
        assert recorded, "the target has guard regions"


@pytest.mark.parametrize("region", ["same-text", "new-perms"])
def test_layout_changed_between_the_plan_and_the_freeze_is_caught(
        region: str, spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path,
        before_freeze: list[Callable[[], Any]]) -> None:
    """A region unmapped and mapped again after the frozen round's plan was made (from a
    maps read while the target ran), just before the freeze: identical in
    /proc/PID/maps (an even region) -- the written-scan finds it unregistered -- or
    with other permissions (an odd, read-only one becomes read-write) -- the maps read
    while frozen differs from the plan's.  Either way its new content is stored."""
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    assert ckpt.dump(target.pid, images_dir).kind == "full"
    target.cmd("write 3 4")
    index = REGIONS // 2 + (1 if region == "new-perms" else 0)
    before_freeze.append(lambda: target.cmd(f"remap {index} 66"))
    report = ckpt.dump(target.pid, images_dir, after="stop")
    try:
        assert report.kind == "incremental", report
        address = base + index * PAGE
        assert read_target_memory(target.pid, address + 8, 8) == (66 * 1000003 + index).to_bytes(8, "little")
        cp = ckpt.ImageDir(images_dir).checkpoint(report.checkpoint.id)
        assert cp.read_memory(address, PAGE) == read_target_memory(target.pid, address, PAGE)
        # The layout recorded is the frozen one, the changed region's permissions included.
        with open(f"/proc/{target.pid}/maps") as f:
            live = [line.split()[:2] for line in f]
        recorded = [[f"{v.start:x}-{v.end:x}", v.perms] for v in cp.vmas]
        assert [m for m in live if int(m[0].split("-")[0], 16) in {v.start for v in cp.vmas}] == recorded
        for written in (0, REGIONS // 3 & ~1):   # pages "write 3 4" wrote, elsewhere in the run
            at = base + written * PAGE
            assert cp.read_memory(at, PAGE) == read_target_memory(target.pid, at, PAGE), written
    finally:
        os.kill(target.pid, signal.SIGCONT)

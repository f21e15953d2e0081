"""A process with thousands of mappings (issue 11 item 6, CRIU's zdtm maps06).

The frozen window of an incremental dump does no Python work per VMA when the layout
is unchanged (ckpt/tracker.py ``_Plan``, one written-scan per run of adjacent tracked
VMAs; ckpt/dump.py ``_plain_records``).  These tests check correctness, not timing:
an incremental dump of such a process stores exactly what was written, and restores
with the same content in every mapping; a VMA replaced between two dumps in the middle
of a run of tracked ones is found (the run's check call fails) and stored whole.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import PAGE, read_target_memory, run_ckpt

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

REGIONS = 4000   # one VMA each: anonymous read-write and read-only, alternating


def dump_json(*args: Any) -> dict[str, Any]:
    result = run_ckpt("dump", *args, "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def region_vmas(pid: int, base: int) -> list[tuple[int, int, str]]:
    """The VMAs of ``pid`` inside the target's regions: (start, end, perms)."""
    end = base + REGIONS * PAGE
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            s, e = (int(x, 16) for x in span.split("-"))
            if base <= s < end:
                out.append((s, e, perms))
    return out


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        assert time.monotonic() < deadline, f"pid {pid} still there"
        time.sleep(0.05)


def test_many_mappings_incremental_dump_restores_same_content(
        spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path) -> None:
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    layout = region_vmas(target.pid, base)
    assert len(layout) == REGIONS, "the regions merged: the target does not test many mappings"

    full = dump_json("-t", target.pid, "-D", images_dir)
    assert full["kind"] == "full" and full["vmas"] >= REGIONS

    target.cmd("write 3 7")       # three pages, in regions spread over the whole range
    target.cmd("detach")          # fds 0-2 to /dev/null: a checkpoint a restore can take
    before = read_target_memory(target.pid, base, REGIONS * PAGE)
    incr = dump_json("-t", target.pid, "-D", images_dir, "--kill")
    assert incr["kind"] == "incremental" and incr["parent"] == full["id"], incr
    assert incr["killed"], incr
    # The three pages written, and no more than the target's own slack (stack, stdio).
    assert 3 <= incr["pages_stored"] <= 3 + 16, incr

    result = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", "/dev/null",
                      "--stdout", "/dev/null", "--stderr", "/dev/null", timeout=300)
    assert result.returncode == 0 and result.stdout.strip().isdigit(), result.stderr
    restored = int(result.stdout)
    try:
        assert region_vmas(restored, base) == layout
        after = read_target_memory(restored, base, REGIONS * PAGE)
        assert after == before, "the restored regions differ from the dumped ones"
    finally:
        os.kill(restored, signal.SIGKILL)
        wait_gone(restored)


def test_vma_replaced_inside_a_run_is_stored_whole(
        spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path) -> None:
    """A region unmapped and mapped again between two dumps, identical in /proc/PID/maps
    but no longer registered: the run's check call fails and the VMA is stored whole
    (with a single written-scan over the run, its new content would be missed)."""
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    full = dump_json("-t", target.pid, "-D", images_dir)
    assert full["kind"] == "full"
    middle = REGIONS // 2 & ~1          # an even region: anonymous read-write
    target.cmd(f"remap {middle} 99")    # munmap + mmap at the same place, then a write
    incr = dump_json("-t", target.pid, "-D", images_dir, "--leave-stopped")
    try:
        assert incr["kind"] == "incremental", incr
        from ckpt.image import ImageDir
        cp = ImageDir(images_dir).checkpoint(incr["id"])
        address = base + middle * PAGE
        assert cp.read_memory(address, PAGE) == read_target_memory(target.pid, address, PAGE)
        assert read_target_memory(target.pid, address + 8, 8) == (99 * 1000003 + middle).to_bytes(8, "little")
    finally:
        os.kill(target.pid, signal.SIGCONT)


def test_pages_written_before_a_replaced_vma_of_the_run_are_stored(
        spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path) -> None:
    """The run's single checked written-scan stops with EPERM at the replaced VMA, after
    re-arming the VMAs before it: the pages written there are those the kernel reported
    before the error (ckpt/_sys/pagemap.py written_until_unregistered), and must be in
    the checkpoint, as must those written after the replaced VMA (the scan goes on)."""
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    full = dump_json("-t", target.pid, "-D", images_dir)
    assert full["kind"] == "full"
    target.cmd("write 3 5")             # regions 0, 1332 and 2666 (read-write ones)
    middle = REGIONS // 2 & ~1          # 2000: between the second and third written region
    target.cmd(f"remap {middle} 77")
    incr = dump_json("-t", target.pid, "-D", images_dir, "--leave-stopped")
    try:
        assert incr["kind"] == "incremental", incr
        from ckpt.image import ImageDir
        cp = ImageDir(images_dir).checkpoint(incr["id"])
        for region, seed in ((0, 5), (1332, 5), (middle, 77), (2666, 5)):
            address = base + region * PAGE
            word = read_target_memory(target.pid, address + 8, 8)
            assert word == (seed * 1000003 + region).to_bytes(8, "little"), region
            assert cp.read_memory(address, PAGE) == read_target_memory(target.pid, address, PAGE), \
                f"region {region}: the checkpoint holds an older version of the page"
    finally:
        os.kill(target.pid, signal.SIGCONT)

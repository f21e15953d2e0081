"""Dumps leave the target's own view of its memory alone (issue 7, item 7).

7b: COW sharing (CRIU's zdtm cow00/cow01).  ``process_vm_readv`` pins the
pages it reads, and a read-only pin of an anonymous page that may be shared
unshares it (mm/gup.c ``gup_must_unshare``, Linux 5.19+): a dump of a process
whose memory is COW-shared with its children gave the dumped process a private
copy of every page.  ``cow_target`` fills
64 MiB and forks a child that only sleeps; after a full and an incremental dump
of the parent, the pages it did not write must still be the child's pages
(same page frame in both page tables, which root can read from
/proc/PID/pagemap), and the checkpoints must hold the right content.

7a: mapping merges.  A VMA registered with userfaultfd (VM_UFFD_WP and its
uffd context) does not merge with a neighbour the target maps later
(mm/vma.c ``is_mergeable_vma``), so the target's own mremap() of what it
believes is one mapping fails with EFAULT.  ``ckpt dump --no-track`` ends
tracking with the dump: the kernel unregisters everything when the uffd's last
reference closes (fs/userfaultfd.c ``userfaultfd_release``), and later
mappings merge as they would without ckpt.  While a target is tracked the
split stays (docs/DESIGN.md, "Tracking and the target's mappings").
"""

from __future__ import annotations

import json
import os
import signal
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ckpt
from ckpt import procfs, tracking
from ckpt.tracker import Tracker
from helpers import MIB, PAGE, MemTarget, Target, assert_image_matches, run_ckpt

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

REGION_MIB = 64
PFN_MASK = (1 << 55) - 1
PM_PRESENT = 1 << 63


@pytest.fixture(params=["written-scan", "presence-pass"])
def presence_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways a tracker may find present pages (see ckpt/tracker.py)."""
    if request.param == "presence-pass":
        monkeypatch.setenv("CKPT_PRESENCE_PASS", "always")
    else:
        monkeypatch.delenv("CKPT_PRESENCE_PASS", raising=False)
    yield request.param


def frames(pid: int, start: int, length: int) -> tuple[int, ...]:
    """The page frame of each page of [start, start + length) in ``pid``, -1 where not present."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        data = f.read(length // PAGE * 8)
    return tuple(e & PFN_MASK if e & PM_PRESENT else -1 for e in struct.unpack(f"{len(data) // 8}Q", data))


def shared_pages(parent: int, child: int, start: int, length: int) -> int:
    """Pages of the region that parent and child map to the same page frame."""
    return sum(1 for a, b in zip(frames(parent, start, length), frames(child, start, length)) if a == b != -1)


def shared_dirty_kb(pid: int, address: int) -> int:
    """Shared_Dirty of the VMA of ``pid`` containing ``address``."""
    vma = next(m for m in procfs.read_smaps(pid) if m.start <= address < m.end)
    return vma.shared_dirty // 1024


def cow_target(spawn: Callable[..., Target], programs: dict[str, Path]) -> tuple[Target, int, int, int]:
    target = spawn([programs["cow_target"], str(REGION_MIB)])
    words = target.readline().split()
    assert words[0] == "region", words
    return target, int(words[1], 16), int(words[2]), int(words[3])


@pytest.mark.timeout(120)
def test_dumps_keep_pages_shared_with_a_child(presence_mode: str, spawn: Callable[..., Target],
                                              programs: dict[str, Path], images_dir: Path) -> None:
    target, start, length, child = cow_target(spawn, programs)
    pages = length // PAGE
    assert shared_pages(target.pid, child, start, length) == pages, "fork did not share the region"

    full = ckpt.dump(target.pid, images_dir, after="stop")
    try:
        assert full.kind == "full"
        assert_image_matches(full.checkpoint, target.pid)
    finally:
        target.cont()
    assert shared_pages(target.pid, child, start, length) == pages, "the full dump unshared pages"
    assert shared_dirty_kb(target.pid, start) >= length // 1024

    written = 16
    target.cmd(f"write {written}")     # COW-breaks the first 16 pages in the parent
    incremental = ckpt.dump(target.pid, images_dir, after="stop")
    try:
        assert incremental.kind == "incremental"
        assert incremental.pages_written >= written
        assert_image_matches(incremental.checkpoint, target.pid)
    finally:
        target.cont()
    assert shared_pages(target.pid, child, start, length) == pages - written, (
        "the incremental dump unshared pages")
    assert shared_dirty_kb(target.pid, start) >= (length - written * PAGE) // 1024
    assert target.cmd("check") == ""
    assert length == REGION_MIB * MIB




@pytest.mark.timeout(120)
def test_dumping_the_child_keeps_what_it_inherited_shared(spawn: Callable[..., Target],
                                                         programs: dict[str, Path], images_dir: Path) -> None:
    """A pre-fork server's worker: its memory came from its parent and is still shared."""
    target, start, length, child = cow_target(spawn, programs)
    pages = length // PAGE
    try:
        report = ckpt.dump(child, images_dir, after="stop")
        try:
            assert_image_matches(report.checkpoint, child)
        finally:
            os.kill(child, signal.SIGCONT)
        assert shared_pages(target.pid, child, start, length) == pages, "the dump unshared the child's pages"
        assert ckpt.dump(child, images_dir).kind == "incremental"
        assert shared_pages(target.pid, child, start, length) == pages
    finally:
        tracking.stop(child)

# ---------------------------------------------------------------------------
# 7a: mapping merges


def vmas_over(pid: int, start: int, end: int) -> list[procfs.Mapping]:
    """The target's VMAs that overlap [start, end), with their VmFlags."""
    return [m for m in procfs.read_smaps(pid) if m.start < end and m.end > start]


def grow_below(target: Target, addr: int, pages: int, extra: int, *, write: bool = True) -> int:
    """Map ``extra`` pages right below ``addr`` in the target; the new start."""
    below = int(target.cmd(f"below {addr:x} {extra}" + ("" if write else " nowrite")), 16)
    assert below == addr - extra * PAGE
    return below


def test_no_track_dump_leaves_later_mappings_mergeable(spawn: Callable[..., Target],
                                                       programs: dict[str, Path], images_dir: Path) -> None:
    target = spawn([programs["mremap_target"]])
    addr = int(target.cmd("map 16"), 16)
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--no-track", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert any("--no-track" in note for note in report["notes"]), report["notes"]
    assert tracking.lookup(target.pid)[0] is None, "a holder keeps tracking"
    assert not [m for m in procfs.read_smaps(target.pid) if "uw" in m.flags], "VMAs still registered"

    below = grow_below(target, addr, 16, 16)
    assert len(vmas_over(target.pid, below, addr + 16 * PAGE)) == 1, "the new mapping did not merge"
    moved = int(target.cmd(f"remap {below:x} 32"), 16)
    assert target.cmd(f"check {moved:x} 32") == ""

    again = ckpt.dump(target.pid, images_dir, track=False)
    assert again.kind == "full" and again.tracking.startswith("lost")


def test_no_track_ends_tracking_a_holder_kept(spawn: Callable[..., Target], programs: dict[str, Path],
                                              images_dir: Path) -> None:
    """A tracked target (a holder keeps its uffd): --no-track continues incrementally, then
    stops the holder and waits for it, so the VMAs are unregistered when the dump returns."""
    target = spawn([programs["mremap_target"]])
    addr = int(target.cmd("map 16"), 16)
    assert ckpt.dump(target.pid, images_dir).kind == "full"
    assert tracking.lookup(target.pid)[0] is not None
    assert [m for m in vmas_over(target.pid, addr, addr + 16 * PAGE) if "uw" in m.flags]

    last = ckpt.dump(target.pid, images_dir, track=False)
    assert last.kind == "incremental"
    assert tracking.lookup(target.pid)[0] is None
    assert not [m for m in procfs.read_smaps(target.pid) if "uw" in m.flags], "VMAs still registered"
    below = grow_below(target, addr, 16, 16)
    moved = int(target.cmd(f"remap {below:x} 32"), 16)
    assert target.cmd(f"check {moved:x} 32") == ""


def test_tracked_target_keeps_later_written_mappings_apart(spawn: Callable[..., Target],
                                                           programs: dict[str, Path],
                                                           images_dir: Path) -> None:
    """The documented limit while tracking lasts, measured: a neighbour mapped and written
    after a tracked dump stays a VMA of its own, even after the next dump registers it
    (two VMAs with different anon_vmas never merge: mm/vma.c ``is_mergeable_anon_vma``),
    so mremap() over both fails with EFAULT.  A neighbour not written before the next
    dump merges when that dump registers it."""
    target = spawn([programs["mremap_target"]])
    addr = int(target.cmd("map 16"), 16)
    ckpt.dump(target.pid, images_dir)

    written = grow_below(target, addr, 16, 16)
    assert len(vmas_over(target.pid, written, addr + 16 * PAGE)) == 2
    ckpt.dump(target.pid, images_dir)
    assert len(vmas_over(target.pid, written, addr + 16 * PAGE)) == 2
    target.send(f"remap {written:x} 32")
    assert target.readline() == "err mremap EFAULT"

    fresh = grow_below(target, written, 32, 16, write=False)
    assert len(vmas_over(target.pid, fresh, written + PAGE)) == 2
    assert ckpt.dump(target.pid, images_dir).kind == "incremental"
    assert len(vmas_over(target.pid, fresh, written + PAGE)) == 1, "registration did not merge the neighbour"


# ---------------------------------------------------------------------------
# A target that changes its mappings while it is being dumped


def test_a_mapping_replaced_between_registration_and_arming_is_dumped_whole(
        memtarget: MemTarget, images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target runs during a dump's first round: it may replace a VMA just after ckpt
    registered it, and arming (PAGEMAP_SCAN with CHECK_WPASYNC) then fails with EPERM.
    That VMA is dumped whole, not the dump failed as "permission denied" (seen with
    mremap_target's loop).  The interleaving is made certain by having the target replace
    its mapping from inside ckpt's registration step; the kernel is the real one."""
    addr = memtarget.map(16 * PAGE)
    memtarget.fill(addr, 16 * PAGE, 3)
    register = Tracker._register
    replaced: list[int] = []

    def register_then_replace(self: Tracker, m: procfs.Mapping) -> str:
        why = register(self, m)
        if m.start <= addr < m.end and not replaced:
            memtarget.mapfixed(addr, 16 * PAGE)   # a fresh, unregistered VMA
            memtarget.fill(addr, 16 * PAGE, 4)
            replaced.append(m.start)
        return why

    monkeypatch.setattr(Tracker, "_register", register_then_replace)
    report = ckpt.dump(memtarget.pid, images_dir, after="stop")
    try:
        assert replaced, "the registration hook did not run"
        assert_image_matches(report.checkpoint, memtarget.pid)
    finally:
        memtarget.cont()

"""Dumps leave COW sharing alone (issue 7, item 7b; CRIU's zdtm cow00/cow01).

``process_vm_readv`` pins the pages it reads, and a read-only pin of an
anonymous page that may be shared unshares it (mm/gup.c ``gup_must_unshare``,
Linux 5.19+): a dump of a process whose memory is COW-shared with its children
gave the dumped process a private copy of every page.  ``cow_target`` fills
64 MiB and forks a child that only sleeps; after a full and an incremental dump
of the parent, the pages it did not write must still be the child's pages
(same page frame in both page tables, which root can read from
/proc/PID/pagemap), and the checkpoints must hold the right content.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ckpt
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt import procfs
from ckpt.tracker import Tracker
from helpers import MIB, PAGE, MemTarget, Target, assert_image_matches

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
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Shared_Dirty:":
                return int(line.split()[1])
    raise LookupError(f"no VMA of pid {pid} contains {address:#x}")


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

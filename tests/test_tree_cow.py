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
import signal
import subprocess
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

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

MIB = 64
PAGES = MIB << 8
MARKED = 256   # pages each side changed after the fork


class CowTree(Target):
    """``cow_tree``: ``ready PID CHILD ADDRESS`` once both wrote their pages."""

    def wait_ready(self, timeout: float = 60) -> Target:
        words = self.readline(timeout).split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.kid, self.address = int(words[2]), int(words[3], 16)
        return self


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
    started.proc.wait(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{started.kid}"), "init reaped the killed child")
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        lines = run.output()
        assert rc == 0 and lines and lines[-1].startswith("PASS"), run.explain()
    assert _shared(lines[-1]) >= PAGES - 2 * MARKED


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
    started.proc.wait(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{started.kid}"), "init reaped the killed child")
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        lines = run.output()
        assert rc == 0 and lines and lines[-1].startswith("PASS"), run.explain()
    assert _shared(lines[-1]) >= PAGES - 2 * MARKED - 128

"""Shared memory is stored from the shared object, not from one mapper's page tables.

A MAP_SHARED region's content belongs to its object (a shmem file: shared
anonymous memory, memfd, SysV shm).  Pages another process wrote are in the
object but not in the dumped process's page tables, so PAGEMAP_SCAN of the
dumped process does not see them (issue 7, item 9).  (A memfd is stored as the
file object it is, ckpt/files/objects.py, and comes back as a memfd.)  ``zdtm_shmem`` writes one
page of each region itself and lets a child write 4,000 more, then checks all
of them after the restore.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt import errors, ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import PAGE, REPO_ROOT, Target, ckpt_argv, ckpt_env, live_mappings, run_ckpt
from test_restore import Profile, restore_and_check, run_to_end

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

REGION = 16 << 20
PAGES_WRITTEN = 4001        # page 0 by the process, 4,000 by its child


def shared_regions(pid: int, count: int = 3) -> list[tuple[int, int, str]]:
    """(start, end, path) of the target's 16 MiB shared regions (three; two with -n)."""
    found = [(m.start, m.end, m.path) for m in live_mappings(pid)
             if m.perms[3] == "s" and m.end - m.start == REGION]
    assert len(found) == count, f"zdtm_shmem should map {count} 16 MiB shared regions: {found}"
    return found


def test_target_passes_without_a_checkpoint_and_fails_when_damaged(
        programs: dict[str, Path], spawn: Callable[..., Target]) -> None:
    """The self-check itself: untouched it passes; a zeroed child page makes it fail."""
    rc, lines = run_to_end(spawn([programs["zdtm_shmem"]]))
    assert (rc, lines) == (0, ["PASS"])
    rc, lines = run_to_end(spawn([programs["zdtm_shmem"], "-c"]))
    assert rc == 1 and len(lines) == 3 and all(line.startswith("FAIL: ") for line in lines), lines


@needs_kernel
@pytest.mark.timeout(120)
def test_pages_written_by_a_child_survive_the_restore(programs: dict[str, Path],
                                                     spawn: Callable[..., Target],
                                                     images_dir: Path, tmp_path: Path) -> None:
    target = spawn([programs["zdtm_shmem"], "-n"])   # -n: no SysV region, which ckpt refuses
    regions = shared_regions(target.pid, 2)
    expected = Profile.of(target.pid)
    report = ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    cp = report.checkpoint
    for start, end, path in regions:
        stored = held(cp, start, end)
        assert stored == PAGES_WRITTEN * PAGE, (
            f"{path} at {start:#x}: the checkpoint holds {stored // PAGE} pages, "
            f"the object has {PAGES_WRITTEN}")
    assert not [n for n in report.notes if "missing" in n], report.notes
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


@needs_kernel
@pytest.mark.timeout(120)
def test_an_incremental_dump_stores_shared_memory_whole(programs: dict[str, Path],
                                                        spawn: Callable[..., Target],
                                                        images_dir: Path, tmp_path: Path) -> None:
    """Shared memory that is a file object (the memfd) is stored whole at every checkpoint; shared
    anonymous memory, tracked in its only mapper that did not fork since, is incremental
    (ckpt/sharedincr.py; tests/test_shared_incremental.py); the last checkpoint restores."""
    target = spawn([programs["zdtm_shmem"], "-n"])   # -n: no SysV region, which ckpt refuses
    expected = Profile.of(target.pid)
    first = ckpt.dump(target.pid, images_dir)
    assert first.kind == "full"
    second = ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    assert second.kind == "incremental"
    whole = second.checkpoint.whole
    for start, end, path in shared_regions_of(second.checkpoint):
        stored_whole = any(s <= start and end <= e for s, e in whole)
        if path == "/dev/zero (deleted)":
            assert not stored_whole, f"{path} is stored whole: {second.notes}"
        else:
            assert stored_whole, f"{path} is not stored whole"
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


def held(cp: ckpt.Checkpoint, start: int, end: int) -> int:
    """The bytes of ``[start, end)`` the checkpoint holds: its present pages, or for the
    mapping of a file object (the memfd: ckpt/files/objects.py) the object's data there."""
    vma = next(v for v in cp.vmas if v.start == start)
    if vma.object is None:
        return sum(min(e, end) - max(s, start) for s, e in cp.present if s < end and e > start)
    lo, hi = vma.offset, vma.offset + (end - start)
    data = ranges.union(ranges.normalize((o, o + length) for o, _, _, length in cp.object_stored(vma.object)),
                        cp.object_zero(vma.object))
    return ranges.total(ranges.clip(data, lo, hi))


def shared_regions_of(cp: object) -> list[tuple[int, int, str]]:
    return [(v.start, v.end, v.path) for v in cp.vmas  # type: ignore[attr-defined]
            if v.kind == "shmem" and v.end - v.start == REGION]


@needs_kernel
@pytest.mark.timeout(120)
def test_without_map_files_access_the_dump_says_what_may_be_missing(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path) -> None:
    """Without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE, /proc/PID/map_files cannot be
    opened (fs/proc/base.c ``proc_map_files_get_link``): the dump falls back to the
    pages the process maps itself, and a note names each shared mapping."""
    target = spawn([programs["zdtm_shmem"]])
    regions = shared_regions(target.pid)
    argv = ["setpriv", "--inh-caps=-sys_admin,-checkpoint_restore",
            "--bounding-set=-sys_admin,-checkpoint_restore",
            *ckpt_argv("dump", "-D", images_dir, "--json", "--pid", target.pid)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ckpt_env(),
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    for start, end, _path in regions:
        named = [n for n in notes if f"{start:#x}-{end:#x}" in n]
        assert named and "may be missing" in named[0], notes
    # What the process maps itself is still there: page 0 of each region.
    cp = ckpt.ImageDir(images_dir).checkpoints[-1]
    for start, _end, path in regions:
        assert any(cp.read_memory(start, PAGE)), f"{path}: page 0 lost"


# A process attached to a System V shared memory segment (IPC_PRIVATE, marked for removal
# once detached, so nothing outlives the test).
SYSV_TARGET = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 65536, 0o1000 | 0o600)          # IPC_PRIVATE, IPC_CREAT
addr = libc.shmat(shmid, None, 0)
if shmid < 0 or addr in (None, ctypes.c_void_p(-1).value):
    sys.exit(f"shmget/shmat: errno {ctypes.get_errno()}")
ctypes.memmove(addr, b"sysv", 4)
libc.shmctl(shmid, 0, None)                              # IPC_RMID: gone once detached
print(f"ready {os.getpid()}", flush=True)
while True:
    time.sleep(1)
"""


@needs_kernel
@pytest.mark.timeout(120)
def test_a_sysv_segment_of_another_ipc_namespace_is_refused_by_name_not_restored_as_anonymous_memory(
        spawn: Callable[..., Target], images_dir: Path) -> None:
    """A SysV segment's attachment came back as MAP_SHARED anonymous memory of the process
    alone (the rebuild maps kind "shmem" anonymously): shmctl(IPC_STAT) saw nattch 0 and the
    segment's other users no longer shared its pages.  ckpt restores segments of its own IPC
    namespace now (ckpt/namedshm.py, tests/test_sysv_shm.py); one of another namespace, which
    /proc/sysvipc/shm does not show ckpt, is still refused by name and ``--kill`` leaves the
    target running."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    target = spawn([unshare, "--ipc", sys.executable, "-c", SYSV_TARGET])
    maps = Path(f"/proc/{target.pid}/maps").read_text()
    line = next(x for x in maps.splitlines() if "/SYSV" in x)
    shmid = int(line.split()[4])
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == errors.KillRefused.exit_code, (result.returncode, result.stderr)
    report = json.loads(result.stdout)
    wanted = (f"the mapping at {start:#x}-{end:#x} is the System V shared memory segment key 0x0 "
              f"(shmid {shmid}), which ckpt cannot restore yet")
    assert report["restorable"] is False and any(wanted in why for why in report["unrestorable"]), report
    assert target.alive(), "dump --kill refused: the target must be left running"


@needs_kernel
@pytest.mark.timeout(120)
def test_a_sysv_segment_of_one_process_comes_back_attached(spawn: Callable[..., Target], images_dir: Path) -> None:
    """The same target in ckpt's IPC namespace: the segment (IPC_PRIVATE, removed while
    attached) is made again with its id and SHM_DEST, holds what the process wrote, and the
    restored process is attached to it (nattch 1), not to anonymous memory."""
    target = spawn([sys.executable, "-c", SYSV_TARGET])
    line = next(x for x in Path(f"/proc/{target.pid}/maps").read_text().splitlines() if "/SYSV" in x)
    shmid = int(line.split()[4])
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == 0, result.stderr
    target.proc.wait(timeout=30)
    restored = run_ckpt("restore", "-D", images_dir, "--detach", "--json")
    assert restored.returncode == 0, restored.stderr
    pid = json.loads(restored.stdout)["pid"]
    try:
        again = next(x for x in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/SYSV" in x)
        assert again.split()[0] == line.split()[0] and int(again.split()[4]) == shmid
        with open("/proc/sysvipc/shm") as f:
            head = f.readline().split()
            [row] = [dict(zip(head, x.split())) for x in f if x.split()[1] == str(shmid)]
        assert row["nattch"] == "1" and int(row["perms"], 8) & 0o1000, row   # attached, SHM_DEST
        with open(f"/proc/{pid}/map_files/{again.split()[0]}", "rb") as seg:
            assert seg.read(4) == b"sysv"
    finally:
        os.kill(pid, signal.SIGKILL)

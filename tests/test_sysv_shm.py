"""System V shared memory and /dev/shm files shared by a tree (issue 9; ckpt/namedshm.py).

The target (tests/programs/sysv_shm.c) is a parent and its child sharing a SysV segment
(attached read-write and read-only, one page made read-only: three VMAs each) and a file in
/dev/shm.  After ``dump --kill`` and a restore the parent checks itself: one segment with
its key, mode, SHM_DEST and attach count, one file, each side seeing the other's writes
from before the dump and after the restore.  The tests check what ``ipcs`` shows, that the
content is stored once, that a segment gone since the dump is made again with its key and
its id, that a segment or file still in use is refused by name, that a restore of an older
checkpoint gives the objects that checkpoint's content, and that a segment no task attached
is left alone.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ckpt import ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.image import ImageDir
from helpers import Target, run_ckpt
from test_restore import Profile, restoring
from test_tracking import wait_for

PAGE = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
IPC_CREAT, IPC_RMID, SHM_RDONLY = 0o1000, 0, 0o10000


class Pair(Target):
    """The target: ``ready PID CHILD SHMID SEGMENT FILE``."""

    def wait_ready(self, timeout: float = 60) -> Target:
        words = self.readline(timeout).split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.kid, self.shmid = int(words[2]), int(words[3])
        self.segment, self.file = int(words[4], 16), int(words[5], 16)
        return self


@pytest.fixture
def names(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A key and a /dev/shm path of this test's own; every segment of the key (and those the
    test noted) and the file are removed at the end."""
    key = 0x5E000000 | (os.getpid() & 0xFFFF) << 8 | next(_SERIAL) << 1
    path = f"/dev/shm/ckpt-test-{os.getpid()}-{tmp_path.name}"
    yield key, path
    for shmid, row in segments().items():
        if row["key"] == key or row["cpid"] in CREATED_BY:
            libc.shmctl(shmid, IPC_RMID, None)
    Path(path).unlink(missing_ok=True)


_SERIAL = itertools.count()
CREATED_BY: set[int] = set()   # pids of targets whose IPC_PRIVATE segments are cleaned up


def segments() -> dict[int, dict[str, int]]:
    """/proc/sysvipc/shm by shmid (key decimal, perms octal)."""
    with open("/proc/sysvipc/shm") as f:
        head = f.readline().split()
        rows = [dict(zip(head, line.split())) for line in f]
    return {int(r["shmid"]): {k: int(v, 8) if k == "perms" else int(v) for k, v in r.items()} for r in rows}


def ipcs_row(shmid: int) -> list[str]:
    """``ipcs -m``'s line of a segment: key, shmid, owner, perms, bytes, nattch, status."""
    out = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True, timeout=20).stdout
    [row] = [line.split() for line in out.splitlines() if line.split()[1:2] == [str(shmid)]]
    return row


def read_segment(shmid: int, length: int) -> bytes:
    """The segment's first bytes, read through a read-only attach of the test's own."""
    addr = libc.shmat(shmid, None, SHM_RDONLY)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        return ctypes.string_at(addr, length)
    finally:
        libc.shmdt(addr)


def start(spawn: Callable[..., Target], programs: dict[str, Path], key: int, path: str, mode: str) -> Pair:
    pair = spawn([programs["sysv_shm"], hex(key), path, mode], cls=Pair)
    CREATED_BY.add(pair.pid)
    return pair


def dump(pid: int, images: Path, *extra: str) -> dict:
    result = run_ckpt("dump", "--pid", pid, "-D", images, "--json", *extra, timeout=150)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def gone(pair: Pair) -> None:
    pair.proc.wait(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{pair.kid}"), "init reaped the killed child", timeout=30)


@pytest.mark.timeout(300)
def test_a_segment_and_a_dev_shm_file_come_back_shared_with_their_key_id_and_ipcs_view(
        spawn: Callable[..., Target], programs: dict[str, Path], names: tuple[int, str],
        images_dir: Path, tmp_path: Path) -> None:
    """dump --kill stores each object once (the child's checkpoint leaves its pages out) and
    records the segment; the segment outlives the kill, detached, and the restore takes it
    again: ``ipcs -m`` shows the same line before the dump and after the restore, and the
    restored pair passes its own checks.  A segment no task attached is not recorded and the
    restore leaves it as it was."""
    key, path = names
    lonely = libc.shmget(key + 1, PAGE, IPC_CREAT | 0o600)   # attached by nobody
    assert lonely >= 0
    addr = libc.shmat(lonely, None, 0)
    ctypes.memmove(addr, b"nobody's", 8)
    libc.shmdt(ctypes.c_void_p(addr))
    try:
        lonely_before = segments()[lonely]
        pair = start(spawn, programs, key, path, "keep")
        expected = Profile.of(pair.pid)
        before = ipcs_row(pair.shmid)
        assert before[0] == f"{key:#010x}" and before[3:6] == ["640", "12288", "6"], before
        report = dump(pair.pid, images_dir, "--kill")
        assert report["restorable"] and report["killed"], report["unrestorable"]
        cp = ImageDir(images_dir).head
        assert cp is not None
        [rec] = cp.state.sysv_shm
        assert (rec.key, rec.id, rec.mode & 0o777, rec.size, rec.uid, rec.cuid) == (key, pair.shmid, 0o640, 3 * PAGE,
                                                                                    0, 0)
        assert cp.task(pair.kid).state.sysv_shm == (rec,)
        objects = [(pair.segment - 3 * PAGE, pair.segment + 3 * PAGE), (pair.file, pair.file + 2 * PAGE)]
        assert ranges.total(ranges.intersect(cp.stored, objects)) >= 4 * PAGE   # pages 0-1 of each
        assert ranges.intersect(cp.task(pair.kid).stored, objects) == []
        gone(pair)
        after_kill = segments()[pair.shmid]
        assert after_kill["nattch"] == 0 and after_kill["key"] == key
        with restoring(images_dir, tmp_path, expected) as run:
            assert ipcs_row(pair.shmid) == before
            rc = run.go()
            assert rc == 0 and run.output() == ["PASS"], run.explain()
        assert segments()[lonely] == lonely_before
        assert read_segment(lonely, 8) == b"nobody's"
    finally:
        libc.shmctl(lonely, IPC_RMID, None)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["keep", "rmid"])
def test_a_segment_gone_since_the_dump_is_made_again_with_its_key_and_id(
        spawn: Callable[..., Target], programs: dict[str, Path], names: tuple[int, str], images_dir: Path,
        tmp_path: Path, mode: str) -> None:
    """keep: the segment is removed after the dump (ipcrm); rmid: it was removed while attached
    (SHM_DEST), so it went with the killed pair.  The restore makes it again, with its key
    and its id (shm_next_id, left unset after), filled, SHM_DEST again for rmid."""
    key, path = names
    pair = start(spawn, programs, key, path, mode)
    expected = Profile.of(pair.pid)
    before = ipcs_row(pair.shmid)
    report = dump(pair.pid, images_dir, "--kill")
    assert report["restorable"], report["unrestorable"]
    gone(pair)
    if mode == "keep":
        subprocess.run(["ipcrm", "-m", str(pair.shmid)], check=True, timeout=20)
    assert pair.shmid not in segments()
    with restoring(images_dir, tmp_path, expected) as run:
        assert ipcs_row(pair.shmid) == before
        assert Path("/proc/sys/kernel/shm_next_id").read_text().strip() == "-1"
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()
    if mode == "rmid":
        wait_for(lambda: pair.shmid not in segments(), "the removed segment went with its last attach")


@pytest.mark.timeout(300)
def test_objects_another_process_uses_are_refused_by_name(
        spawn: Callable[..., Target], programs: dict[str, Path], names: tuple[int, str], images_dir: Path) -> None:
    """After dump --kill, a process outside the restore (this test) attaches the segment and
    maps the file: a restore would change them under it, so it is refused, naming both, and
    neither is touched."""
    import mmap

    key, path = names
    pair = start(spawn, programs, key, path, "keep")
    assert dump(pair.pid, images_dir, "--kill")["killed"]
    gone(pair)
    addr = libc.shmat(pair.shmid, None, SHM_RDONLY)
    fd = os.open(path, os.O_RDWR)
    view = mmap.mmap(fd, 2 * PAGE)
    try:
        view[:5] = b"mine\0"[:5]
        result = run_ckpt("restore", "-D", images_dir, "--detach", timeout=100)
        assert result.returncode != 0
        assert f"segment key {key:#x} (shmid {pair.shmid}) is still attached by 1 mapping(s)" in result.stderr
        assert f"{path} is mapped by pid {os.getpid()}, which this restore does not make" in result.stderr
        assert "Traceback" not in result.stderr
        assert view[:5] == b"mine\0"[:5] and read_segment(pair.shmid, 10) == b"parent-seg"
    finally:
        view.close()
        os.close(fd)
        libc.shmdt(ctypes.c_void_p(addr))


@pytest.mark.timeout(300)
def test_a_restore_of_an_older_checkpoint_gives_the_objects_its_content(
        spawn: Callable[..., Target], programs: dict[str, Path], names: tuple[int, str], images_dir: Path,
        tmp_path: Path) -> None:
    """The segment and the file outlive the processes and hold their last content: checkpoint 1,
    then the pair writes "later" into both, then checkpoint 2 with --kill.  A restore of
    checkpoint 1 gives both checkpoint 1's content back (a restore that reused what they hold
    would give "later")."""
    key, path = names
    pair = start(spawn, programs, key, path, "keep")
    expected = Profile.of(pair.pid)
    assert dump(pair.pid, images_dir)["restorable"]
    os.kill(pair.pid, signal.SIGHUP)
    wait_for(lambda: read_segment(pair.shmid, 6) == b"later\0", "the pair wrote after checkpoint 1")
    assert dump(pair.pid, images_dir, "--kill")["killed"]
    gone(pair)
    assert Path(path).read_bytes()[:6] == b"later\0"
    with restoring(images_dir, tmp_path, expected, "--checkpoint", "1") as run:
        assert read_segment(pair.shmid, 11) == b"parent-seg\0"
        assert Path(path).read_bytes()[:12] == b"parent-file\0"
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()

"""Memory shared between the processes of a tree (issue 9, stage 3; ckpt/treememory.py).

A Python parent maps ``mmap.mmap(-1, n)`` (MAP_SHARED|MAP_ANONYMOUS), fills part of it and
forks; the child fills another part.  ``dump --kill`` stores the buffer once (the child's
checkpoint leaves its pages out) and ``restore`` brings it back as one object: each side
then writes and checks that it sees the other's writes, and both map one ``/dev/zero``
shmem file (same inode) at the recorded addresses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt import errors, ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.image import ImageDir
from helpers import Target, run_ckpt
from test_restore import Profile, restoring
from test_tracking import wait_for

SHARED_ANON = r"""
import hashlib, mmap, os, signal, sys, time
# (No ctypes: libffi's closures are a deleted file parent and child would both map, which
# a restore cannot share yet.)
PAGE = 4096
SIZE = 256 * PAGE
buf = mmap.mmap(-1, SIZE)              # MAP_SHARED|MAP_ANONYMOUS
buf[0:1] = b"x"
[addr] = [int(line.split("-")[0], 16) for line in open("/proc/self/maps")
          if line.split()[1] == "rw-s" and "/dev/zero" in line
          and (lambda s, e: int(e, 16) - int(s, 16))(*line.split()[0].split("-")) == SIZE]
buf[0:1] = b"\0"
FLAG = 0                               # page 0: the child's readiness byte and the after-restore flags
PARENT, CHILD = 8 * PAGE, 100 * PAGE   # 64 pages each, written before the dump
buf[PARENT:PARENT + 64 * PAGE] = hashlib.shake_256(b"parent").digest(64 * PAGE)
def maps_of(pid):
    for line in open(f"/proc/{pid}/maps"):
        fields = line.split()
        if int(fields[0].split("-")[0], 16) == addr:
            return fields[1], fields[4], " ".join(fields[5:])
    return None

def check_child(_sig, _frame):
    ok = (buf[PARENT:PARENT + 64 * PAGE] == hashlib.shake_256(b"parent").digest(64 * PAGE)
          and buf[CHILD:CHILD + 64 * PAGE] == hashlib.shake_256(b"child").digest(64 * PAGE)
          and buf[200 * PAGE:200 * PAGE + 7] == b"parent2")
    buf[210 * PAGE:210 * PAGE + 6] = b"child2"
    os._exit(0 if ok else 1)

kid = os.fork()
if kid == 0:
    signal.signal(signal.SIGUSR2, check_child)
    buf[CHILD:CHILD + 64 * PAGE] = hashlib.shake_256(b"child").digest(64 * PAGE)
    buf[FLAG] = 1
    while os.getppid() != 1:   # gone with its parent (the tests kill the root; a restore gives it a new pid)
        time.sleep(0.2)
    os._exit(2)
while buf[FLAG] != 1:
    time.sleep(0.001)

def check(_sig, _frame):
    problems = []
    if buf[CHILD:CHILD + 64 * PAGE] != hashlib.shake_256(b"child").digest(64 * PAGE):
        problems.append("the child's pages are not what it wrote")
    mine, theirs = maps_of(os.getpid()), maps_of(kid)
    if mine is None or mine != theirs or mine[0] != "rw-s" or mine[2] != "/dev/zero (deleted)":
        problems.append(f"not one /dev/zero object: {mine} {theirs}")
    buf[200 * PAGE:200 * PAGE + 7] = b"parent2"
    os.kill(kid, signal.SIGUSR2)
    _, status = os.waitpid(kid, 0)
    if status != 0:
        problems.append(f"the child did not see the parent's pages or its write (status {status})")
    if buf[210 * PAGE:210 * PAGE + 6] != b"child2":
        problems.append("the parent does not see the child's write after the restore")
    print("; ".join(problems) or "PASS", flush=True)
    sys.exit(0 if not problems else 1)

signal.signal(signal.SIGUSR1, check)
print("ready", os.getpid(), kid, hex(addr), flush=True)
while True:
    signal.pause()
"""


class Forked(Target):
    """A target that prints ``ready PID CHILD ADDRESS`` once its child is set up."""

    def wait_ready(self, timeout: float = 60) -> Target:
        words = self.readline(timeout).split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.kid, self.address = int(words[2]), int(words[3], 16)
        return self


@pytest.mark.timeout(300)
def test_shared_anonymous_memory_of_a_tree_comes_back_shared_and_is_stored_once(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """mmap.mmap(-1, n) inherited over fork: after dump --kill and restore, each side sees
    what the other wrote before the dump and writes afterwards, both map one /dev/zero
    object, and the checkpoint stores its pages once (the child's leaves them out)."""
    started = spawn([sys.executable, "-c", SHARED_ANON], cls=Forked)
    expected = Profile.of(started.pid)
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"], report["unrestorable"]
    cp = ImageDir(images_dir).head
    assert cp is not None
    [shared] = [r for r in cp.state.shared_memory if started.pid in r.mappers]
    assert shared.mappers == (started.pid, started.kid)
    size = 256 * 4096
    for pid in (started.pid, started.kid):
        [vma] = [v for v in cp.task(pid).vmas if v.start == started.address]
        assert (vma.end - vma.start, vma.inode, vma.path) == (size, shared.inode, "/dev/zero (deleted)")
    # The root stores the pages both wrote; the child's checkpoint none of them.
    buffer = [(started.address, started.address + size)]
    assert ranges.total(ranges.intersect(cp.stored, buffer)) >= 128 * 4096
    assert ranges.intersect(cp.task(started.kid).stored, buffer) == []
    started.proc.wait(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{started.kid}"), "init reaped the killed child")
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()


MEMFD_SHARED = r"""
import mmap, os, signal
memfd = os.memfd_create("both")
os.ftruncate(memfd, 4096)
os.pwrite(memfd, b"before", 0)
kid = os.fork()
if kid == 0:
    while os.getppid() != 1:   # gone with its parent
        signal.sigtimedwait([], 0.2)
    os._exit(0)
print("ready", os.getpid(), kid, 0, flush=True)
signal.pause()
"""


@pytest.mark.timeout(120)
def test_a_memfd_a_child_inherited_is_its_parents_again(
        spawn: Callable[..., Target], images_dir: Path) -> None:
    """A memfd the child holds through the fd it inherited over fork: the child's fd is its
    parent's open file (Task.inherited), so the restore gives it the parent's again -- one
    memfd, one open file description for both (kcmp), with the content written before."""
    from ckpt._sys.kcmp import kcmp_file

    started = spawn([sys.executable, "-c", MEMFD_SHARED], cls=Forked)
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=100)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"] and report["killed"], report["unrestorable"]
    started.proc.wait(timeout=30)
    restored = run_ckpt("restore", "-D", images_dir, "--detach", "--json", timeout=100)
    assert restored.returncode == 0, restored.stderr
    root = json.loads(restored.stdout)["pid"]
    try:
        assert os.readlink(f"/proc/{started.kid}/fd/3") == "/memfd:both (deleted)"
        assert kcmp_file(root, 3, started.kid, 3) == 0
        with open(f"/proc/{started.kid}/fd/3", "rb") as f:
            assert f.read(6) == b"before"
    finally:
        os.kill(root, 9)
        wait_for(lambda: not os.path.exists(f"/proc/{started.kid}"), "the restored child died with its parent")

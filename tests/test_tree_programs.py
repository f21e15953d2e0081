"""Programs whose processes share files and memory that are not anonymous (issue 9, stage 3):
memfds and deleted files several tasks of a tree map or hold (ckpt/files/handdown.py, the
file objects part), and the Python multiprocessing pool built on them.

A memfd (``memfd_create``) or a deleted file (Python multiprocessing's heap: an unlinked file
in /dev/shm, ``multiprocessing/heap.py`` ``Arena``; glibc's named semaphores, ``sem_open``
then ``sem_unlink``, under every ``multiprocessing.Lock``) mapped ``MAP_SHARED`` before a
fork is one file for parent and child: a write by one is seen by the other.  The dump keeps
its content once (the first task's record; the others name it, ``stored_by``), and a
restore makes it once, in the tasks' lowest common ancestor, which hands it down to each.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.image import Checkpoint, ImageDir
from helpers import Target, run_ckpt
from test_restore import Profile, restoring
from test_tracking import wait_for
from test_tree_memory import Forked

def dump_kill(started: Target, images_dir: Path) -> Checkpoint:
    """``dump --kill`` of ``started``'s tree, which must be restorable; its checkpoint."""
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["restorable"] and report["killed"], report["unrestorable"]
    cp = ImageDir(images_dir).head
    assert cp is not None
    return cp


MAPPED_OBJECTS = r"""
import ctypes, fcntl, mmap, os, signal, sys, tempfile, time
PAGE = 4096
F_ADD_SEALS, F_GET_SEALS, F_SEAL_SHRINK, F_SEAL_FUTURE_WRITE = 1033, 1034, 0x2, 0x10
memfd = os.memfd_create("both", os.MFD_ALLOW_SEALING)
os.ftruncate(memfd, 16 * PAGE)
m = mmap.mmap(memfd, 16 * PAGE)        # MAP_SHARED of the memfd, in both after the fork
m[0:6] = b"before"
fd, name = tempfile.mkstemp(dir=sys.argv[1], prefix="ckpt-mp-")
os.unlink(name)
os.ftruncate(fd, 8 * PAGE)
g = mmap.mmap(fd, 8 * PAGE)            # MAP_SHARED of a deleted file
g[0:5] = b"ghost"
os.close(fd)                           # mapped only (and at the fd Python's mmap keeps)
kid = os.fork()
if kid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG: nothing outlives the test
    m[PAGE:PAGE + 5] = b"child"
    g[PAGE:PAGE + 5] = b"child"
    def check_child(_sig, _frame):
        ok = m[2 * PAGE:2 * PAGE + 7] == b"parent2" and g[2 * PAGE:2 * PAGE + 7] == b"parent2"
        m[3 * PAGE:3 * PAGE + 6] = b"child2"
        g[3 * PAGE:3 * PAGE + 6] = b"child2"
        os._exit(0 if ok else 1)
    signal.signal(signal.SIGUSR2, check_child)
    while True:
        signal.pause()
while m[PAGE:PAGE + 5] != b"child" or g[PAGE:PAGE + 5] != b"child":
    time.sleep(0.001)
# No new writable mapping from now on: the restore seals it once both map it again.
fcntl.fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE)

def inode(pid, what):
    return {line.split()[4] for line in open(f"/proc/{pid}/maps") if what in line}

def check(_sig, _frame):
    problems = []
    if m[0:6] != b"before" or g[0:5] != b"ghost" or m[PAGE:PAGE + 5] != b"child":
        problems.append("what was written before the dump is lost")
    if fcntl.fcntl(memfd, F_GET_SEALS) != F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE:
        problems.append(f"seals {fcntl.fcntl(memfd, F_GET_SEALS):#x}")
    for what in ("/memfd:both", "ckpt-mp-"):
        mine, theirs = inode(os.getpid(), what), inode(kid, what)
        if len(mine) != 1 or mine != theirs:
            problems.append(f"{what}: not one file for both ({mine} {theirs})")
    m[2 * PAGE:2 * PAGE + 7] = b"parent2"
    g[2 * PAGE:2 * PAGE + 7] = b"parent2"
    os.kill(kid, signal.SIGUSR2)
    _, status = os.waitpid(kid, 0)
    if status != 0:
        problems.append(f"the child did not see the parent's writes (status {status})")
    if m[3 * PAGE:3 * PAGE + 6] != b"child2" or g[3 * PAGE:3 * PAGE + 6] != b"child2":
        problems.append("the parent does not see the child's writes")
    print("; ".join(problems) or "PASS", flush=True)
    sys.exit(1 if problems else 0)

signal.signal(signal.SIGUSR1, check)
print("ready", os.getpid(), kid, 0, flush=True)   # (no address: test_tree_memory.Forked reads one)
while True:
    signal.pause()
"""


@pytest.mark.timeout(300)
def test_a_memfd_and_a_deleted_file_parent_and_child_map_come_back_one_file_each(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """A memfd and a deleted file mapped MAP_SHARED before a fork: dump --kill keeps each
    once (the child's records name the parent's), and the restore makes each once: both map
    one file again, see what the other wrote before the dump, and each other's writes
    after; the memfd's F_SEAL_FUTURE_WRITE, which forbids a new writable mapping, is added
    once both are mapped again."""
    shm = tmp_path / "shm"
    shm.mkdir()
    started = spawn([sys.executable, "-c", MAPPED_OBJECTS, shm], cls=Forked)
    expected = Profile.of(started.pid)
    cp = dump_kill(started, images_dir)
    parent = {o.name: o for o in cp.state.objects}
    kid = cp.task(started.kid)
    child = {o.name: o for o in kid.state.objects}
    for name in ("both", *(n for n in parent if "ckpt-mp-" in n)):
        assert parent[name].stored_by == 0 and child[name].stored_by == started.pid, (parent, child)
        assert child[name].id not in kid.meta.objects   # stored once: in the parent's checkpoint
        assert list(cp.object_stored(parent[name].id)), name
    assert [n for n in parent if "ckpt-mp-" in n], parent   # (ctypes may add libffi's closures)
    started.proc.wait(timeout=30)
    wait_for(lambda: not os.path.exists(f"/proc/{started.kid}"), "init reaped the killed child")
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()


POOL = r"""
import multiprocessing as mp, os, signal, sys, time
ctx = mp.get_context("fork")
N = 64
arr = ctx.Array("i", N)     # multiprocessing's heap: an unlinked /dev/shm file, mapped before the fork
total = ctx.Value("q", 0)   # its locks: glibc named semaphores, sem_open'd then unlinked

def work(i):
    with arr.get_lock():
        arr[i % N] += i
    with total.get_lock():
        total.value += 1
    time.sleep(0.001)
    return (os.getpid(), i * i)

def run(lo, hi):
    got = pool.map(work, range(lo, hi), chunksize=4)
    return {pid for pid, _ in got}, [sq for _, sq in got] == [i * i for i in range(lo, hi)]

pool = ctx.Pool(2)
workers = sorted(p.pid for p in pool._pool)
seen = set()
for lo in range(0, 200, 40):
    pids, ok = run(lo, lo + 40)
    assert ok
    seen |= pids
assert seen == set(workers), (seen, workers)   # both took part: each wrote the heap

def check(_sig, _frame):
    # The test signals until the process exits; Python's shutdown sets SIG_DFL again.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    problems = []
    pids, ok = run(200, 400)
    if not ok:
        problems.append("wrong results")
    if not pids <= set(workers):
        problems.append(f"results from {pids}, not the workers {workers}")
    want = [sum(i for i in range(400) if i % N == k) for k in range(N)]
    if list(arr) != want:
        problems.append("the shared array misses the workers' writes")
    if total.value != 400:
        problems.append(f"total is {total.value}, not 400")
    pool.close()
    pool.join()   # the workers exit and are reaped
    left = [w for w in workers if os.path.exists(f"/proc/{w}")]
    if left:
        problems.append(f"workers {left} outlived the pool")
    print("; ".join(problems) or "PASS", flush=True)
    sys.exit(1 if problems else 0)

signal.signal(signal.SIGUSR1, check)
print("ready", os.getpid(), *workers, flush=True)
while True:
    signal.pause()
"""


class Pool(Target):
    """A target that prints ``ready PID WORKER...`` once its pool ran a first map."""

    def wait_ready(self, timeout: float = 60) -> Target:
        words = self.readline(timeout).split()
        assert words[:2] == ["ready", str(self.pid)], words
        self.workers = [int(w) for w in words[2:]]
        return self


@pytest.mark.timeout(300)
def test_a_multiprocessing_pool_with_shared_values_keeps_working_after_restore(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """A fork-context multiprocessing Pool of 2 workers that update a shared Array and Value
    (the heap, a deleted /dev/shm file; their locks, deleted semaphore files) and answer
    through the pool's pipes: after dump --kill and restore, a new map is answered by the
    restored workers with the right results, the array has the writes from before and after,
    and the pool closes and joins its workers.  (A fork-context pool starts no resource
    tracker: its semaphores are unlinked at once, multiprocessing/synchronize.py.)"""
    started = spawn([sys.executable, "-c", POOL], cls=Pool)
    expected = Profile.of(started.pid)
    cp = dump_kill(started, images_dir)
    assert sorted(t.pid for t in cp.tree[1:]) == started.workers
    heap = [o for o in cp.state.objects if o.type == "ghost" and "/pym-" in o.name]
    assert heap, cp.state.objects
    for worker in started.workers:   # the workers' records name the parent's, which keeps it
        theirs = {(o.dev, o.ino): o for o in cp.task(worker).state.objects}
        assert all(theirs[(o.dev, o.ino)].stored_by == started.pid for o in heap)
    started.proc.wait(timeout=30)
    for worker in started.workers:
        wait_for(lambda: not os.path.exists(f"/proc/{worker}"), "init reaped the killed worker")
    # --same-pid, as the dump recommends for a tree: each worker's Process records its
    # parent's pid (multiprocessing/process.py: "can only join a child process").
    with restoring(images_dir, tmp_path, expected, "--same-pid") as run:
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()


SPAWNED = r"""
import ctypes, multiprocessing as mp, os, signal, sys, time
from multiprocessing import shared_memory

def worker(name, jobs, done):
    # Dies with its parent (PR_SET_PDEATHSIG): a test that fails leaves no worker behind.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    shm = shared_memory.SharedMemory(name=name)
    for i in iter(jobs.get, None):
        shm.buf[i] = (shm.buf[i] + 1) % 256
        done.release()
    shm.close()

if __name__ == "__main__":
    ctx = mp.get_context("spawn")   # a fresh interpreter; its locks are named semaphores
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)   # a linked /dev/shm file
    jobs, done = ctx.Queue(), ctx.Semaphore(0)
    child = ctx.Process(target=worker, args=(shm.name, jobs, done))
    child.start()

    def bump():
        for i in range(16):
            jobs.put(i)
        for _ in range(16):
            done.acquire(timeout=20)

    bump()
    assert list(shm.buf[:16]) == [1] * 16

    def check(_sig, _frame):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        bump()
        problems = [] if list(shm.buf[:16]) == [2] * 16 else [f"the shared memory holds {list(shm.buf[:16])}"]
        jobs.put(None)
        child.join(20)
        if child.exitcode != 0:
            problems.append(f"the worker ended with {child.exitcode}")
        shm.close()
        shm.unlink()
        print("; ".join(problems) or "PASS", flush=True)
        sys.exit(1 if problems else 0)

    signal.signal(signal.SIGUSR1, check)
    print("ready", os.getpid(), child.pid, flush=True)
    while True:
        signal.pause()
"""


@pytest.mark.timeout(300)
def test_a_spawned_worker_with_shared_memory_and_named_semaphores_keeps_working_after_restore(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """multiprocessing's spawn start method (forkserver's is alike; Python 3.14's default):
    a worker started as a fresh interpreter, a ``SharedMemory`` (a linked /dev/shm file), a
    Queue and a Semaphore (glibc named semaphores: ``sem_open`` maps a temporary /dev/shm
    file, links it to the name and unlinks the first, so the creator's maps say "deleted")
    and the resource tracker that cleans up after a dead parent.  dump --kill takes the
    whole tree (the tracker too: it sees no parent die); after restore the worker answers,
    both see each other's writes, and the program cleans up as usual."""
    script = tmp_path / "spawned.py"   # spawn imports the main module again: a file, not -c
    script.write_text(SPAWNED)
    started = spawn([sys.executable, str(script)], cls=Pool)
    expected = Profile.of(started.pid)
    cp = dump_kill(started, images_dir)
    sems = [v for v in cp.vmas if v.path.startswith("/dev/shm/sem.mp-")]
    assert sems and not [v for v in cp.vmas if v.path.startswith("/dev/shm/sem.") and v.path.endswith(" (deleted)")], cp.vmas
    started.proc.wait(timeout=30)
    for pid in [t.pid for t in cp.tree[1:]]:
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "init reaped the killed task")
    with restoring(images_dir, tmp_path, expected, "--same-pid") as run:
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()


NOFOLLOW = r"""
import os, signal, sys, tempfile
fd, name = tempfile.mkstemp(dir=sys.argv[1])   # O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW
os.unlink(name)
os.write(fd, b"kept")
def check(_sig, _frame):
    print("PASS" if os.pread(fd, 4, 0) == b"kept" else "FAIL", flush=True)
    sys.exit(0)
signal.signal(signal.SIGUSR1, check)
print("ready", os.getpid(), flush=True)
while True:
    signal.pause()
"""


@pytest.mark.timeout(120)
def test_a_deleted_file_opened_o_nofollow_is_opened_again(
        spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """tempfile.mkstemp opens with O_NOFOLLOW, which f_flags keep: the restore reopens the
    deleted file through /proc/self/fd without it (with it, the open of the /proc link
    itself fails, ELOOP), and the content is there."""
    directory = tmp_path / "dir"
    directory.mkdir()
    started = spawn([sys.executable, "-c", NOFOLLOW, directory])
    expected = Profile.of(started.pid)
    result = run_ckpt("dump", "--pid", started.pid, "-D", images_dir, "--kill", timeout=100)
    assert result.returncode == 0, result.stderr
    started.proc.wait(timeout=30)
    with restoring(images_dir, tmp_path, expected) as run:
        rc = run.go()
        assert rc == 0 and run.output() == ["PASS"], run.explain()

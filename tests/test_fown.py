"""Signal owners and signal-driven I/O (``O_ASYNC``, ``F_SETOWN_EX``, ``F_SETSIG``): ckpt/files/fown.py.

tests/programs/fown_target.c checks itself after a restore: each file's owner is the
restored task as it is now (the root gets a new pid), the signal arrives (an ``F_SETSIG``
one with the fd number as ``si_fd``), and a signal the kernel refused before (its owner's
uids may not signal the owner) is refused still.  An owner outside what is dumped is
refused by name; images of a user that say root set an owner are refused.
"""

from __future__ import annotations

import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.image import ImageDir
from helpers import Target, run_ckpt
from test_restore import Profile, dump_and_kill, restore_and_check
from test_tree_files import Forked, dump_kill, forked, restore_and_pass  # noqa: F401  (forked: a fixture)
from test_trust_restore import EXIT_UNTRUSTED, UserEnv, assert_refused, restore_detached, user_dump
from test_trust_restore import edit_meta as edit_user_meta
from test_trust_restore import uenv, user_site  # noqa: F401  (fixtures: the second user, ckpt's modules for it)
from users import User

SIGRTMIN = 34


def fowns(images_dir: Path, pid: int | None = None) -> dict[int, Any]:
    """fd -> the recorded ``fown`` of its open file, in the newest checkpoint (of task ``pid``)."""
    cp = ImageDir(images_dir).checkpoints[-1]
    state = cp.state if pid is None else cp.task(pid).state
    files = {f.id: f for f in state.files}
    return {e.fd: files[e.file].fown for e in state.fds}


def in_sigwait(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` sleeps in its sigwait for SIGUSR1: it says "ready" just before, and
    while it waits the kernel takes the waited signal out of its mask (kernel/signal.c
    ``do_sigtimedwait``), which the profile the restore is compared with records."""
    deadline = time.monotonic() + timeout
    while not Path(f"/proc/{pid}/wchan").read_text().startswith("do_sigtimedwait"):
        assert time.monotonic() < deadline, f"pid {pid} is not in sigwait after {timeout} s"
        time.sleep(0.005)


@pytest.mark.timeout(180)
def test_a_process_gets_its_signals_from_its_files_after_a_restore(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """A pipe with O_ASYNC owned by the process (SIGIO), a socket owned by its thread with
    F_SETSIG: recorded, and restored with the new pid as owner; three writes, three
    signals, each saying which fd."""
    target = spawn([programs["fown_target"], "single"])
    pid = target.pid
    in_sigwait(pid)
    expected = Profile.of(pid)
    dump_and_kill(target, images_dir)
    recorded = fowns(images_dir)
    assert (recorded[10].type, recorded[10].id, recorded[10].signal) == ("pid", pid, 0), recorded[10]
    assert (recorded[11].type, recorded[11].id, recorded[11].signal) == ("tid", pid, SIGRTMIN + 1), recorded[11]
    assert (recorded[11].uid, recorded[11].euid) == (0, 0)
    assert recorded[20] is None and recorded[21] is None   # nothing set on the other ends
    restore_and_check(images_dir, tmp_path, expected)


@pytest.mark.timeout(180)
def test_an_owner_outside_the_process_is_refused_by_name(
        programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path) -> None:
    """F_SETOWN(its parent): the parent is not restored, so neither can the owner be."""
    target = spawn([programs["fown_target"], "outside"])
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "not killed" in result.stderr and "fd 10" in result.stderr, result.stderr
    assert "which is not in the dumped process" in result.stderr, result.stderr
    restore = run_ckpt("restore", "-D", images_dir, "--detach")
    assert restore.returncode != 0 and "which is not in the dumped process" in restore.stderr, restore.stderr


@pytest.mark.timeout(300)
def test_a_tree_gets_its_signals_from_the_files_its_tasks_share(
        programs: dict[str, Path], forked: Callable[..., Forked], images_dir: Path, tmp_path: Path,
        other_user: User) -> None:
    """nginx's channel: the parent's end of a socket pair, O_ASYNC, owner the parent (a new pid
    after the restore), the child's end its own with F_SETSIG; both get their signals.  A
    child that dropped to another uid set the parent as the owner of its pipe: the kernel
    refuses those signals to the parent (root), and still does after the restore -- the
    owner is set with the uids recorded, not root's."""
    target = forked([str(programs["fown_target"]), "tree", str(other_user.uid)])
    child, dropped = target.kids
    in_sigwait(target.pid)
    expected = Profile.of(target.pid)
    dump_kill(target, images_dir)
    assert fowns(images_dir)[13].id == target.pid
    mine = fowns(images_dir, dropped)[15]
    assert (mine.type, mine.id, mine.uid, mine.euid, mine.signal) == (
        "pid", target.pid, other_user.uid, other_user.uid, SIGRTMIN + 4), mine
    restore_and_pass(images_dir, tmp_path, expected)


# ---------------------------------------------------------------------------
# Trust: images of another user


@pytest.fixture
def user_fown(uenv: UserEnv, programs: dict[str, Path]) -> None:
    shutil.copyfile(programs["fown_target"], uenv.bin / "fown_target")
    (uenv.bin / "fown_target").chmod(0o755)


def _owner_set_by_root(body: dict[str, Any]) -> None:
    for f in body["state"]["files"]:
        if f.get("fown") and f["fown"]["id"]:
            f["fown"]["uid"] = f["fown"]["euid"] = 0


@pytest.mark.timeout(180)
def test_a_users_images_that_say_root_set_an_owner_are_refused(
        uenv: UserEnv, user_fown: None, spawn: Callable[..., Target], tmp_path: Path) -> None:
    """The owner's uids decide whom its signals may reach (fs/fcntl.c sigio_perm: an euid of
    root reaches anyone): the user's images may not say root set it."""
    target = spawn(uenv.argv("fown_target", "single"))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    edit_user_meta(images / "000001" / "meta.ckpt", _owner_set_by_root)
    assert_refused(restore_detached(images, tmp_path), EXIT_UNTRUSTED,
                   r"signal owner set by uid 0 \(effective 0\), but its images belong to")


def test_the_record_is_read_from_the_open_file() -> None:
    """What F_GETOWN_EX, F_GETSIG and F_GETOWNER_UIDS say, for a description of this process."""
    import fcntl
    import os
    import socket

    from ckpt.files import fown

    a, b = socket.socketpair()
    with a, b:
        assert fown.read(a.fileno(), fcntl.fcntl(a.fileno(), fcntl.F_GETFL)) is None
        fcntl.fcntl(a.fileno(), fown.F_SETOWN_EX, struct.pack("ii", 2, os.getpgrp()))
        fcntl.fcntl(a.fileno(), fown.F_SETSIG, SIGRTMIN + 5)
        got = fown.read(a.fileno(), fcntl.fcntl(a.fileno(), fcntl.F_GETFL))
        assert got == {"type": "pgrp", "id": os.getpgrp(), "uid": os.getuid(), "euid": os.geteuid(),
                       "signal": SIGRTMIN + 5}

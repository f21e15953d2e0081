"""Cgroup membership (ckpt/cgroups.py): a process moved into a cgroup comes back in it;
a cgroup gone by restore time refuses the restore by name; a thread in a cgroup of its
own refuses a kill.

The cgroups are made under the test's own cgroup of a v1 memory hierarchy, or of the
v2 hierarchy (whichever /proc/self/cgroup and mountinfo show), and removed after."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ckpt
from ckpt import cgroups, errors
from helpers import Target
from test_restore import Profile, dump_and_kill, restoring
from test_trust_restore import restore_detached

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

PAUSE = "import os, signal; print('ready', os.getpid(), flush=True); signal.signal(signal.SIGUSR1, lambda *a: None); " \
        "signal.pause(); print('PASS', flush=True)"


def _hierarchy() -> tuple[tuple[int, str, str], Path] | None:
    """A writable hierarchy (v1 memory, else v2) and the directory of our own cgroup in it."""
    for ident, controllers, path in cgroups.read(os.getpid()):
        if controllers in ("memory", "") and (ident == 0) == (controllers == ""):
            with contextlib.suppress(Exception):
                point, under = cgroups._directory((ident, controllers, path))
                top = Path(point + under)
                if os.access(top, os.W_OK):
                    return (ident, controllers, path), top
    return None


@pytest.fixture
def cgroup() -> Iterator[tuple[str, Path]]:
    """A new cgroup under ours: (its recorded form "controllers:path", its directory)."""
    found = _hierarchy()
    if found is None:
        pytest.skip("no writable memory (v1) or v2 cgroup hierarchy")
    (ident, controllers, path), top = found
    name = f"ckpt-test-{uuid.uuid4().hex[:8]}"
    made = top / name
    made.mkdir()
    try:
        yield f"{controllers or 'cgroup2'}:{path.rstrip('/')}/{name}", made
    finally:
        for _ in range(50):
            try:
                made.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                import time
                time.sleep(0.1)


def _of(pid: int, controllers: str) -> str:
    return next(f"{c or 'cgroup2'}:{p}" for _, c, p in cgroups.read(pid) if (c or "cgroup2") == controllers)


@needs_kernel
@pytest.mark.timeout(120)
def test_membership_is_restored(cgroup: tuple[str, Path], spawn: Callable[..., Target], images_dir: Path,
                                tmp_path: Path) -> None:
    want, directory = cgroup
    target = spawn([sys.executable, "-c", PAUSE])
    (directory / "cgroup.procs").write_text(str(target.pid))
    controllers = want.split(":")[0]
    assert _of(target.pid, controllers) == want
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    with restoring(images_dir, tmp_path, expected) as run:
        assert run.pid is not None
        assert _of(run.pid, controllers) == want, cgroups.read(run.pid)
        assert run.go() == 0


@needs_kernel
@pytest.mark.timeout(120)
def test_a_cgroup_gone_refuses_the_restore(cgroup: tuple[str, Path], spawn: Callable[..., Target],
                                           images_dir: Path, tmp_path: Path) -> None:
    want, directory = cgroup
    target = spawn([sys.executable, "-c", PAUSE])
    (directory / "cgroup.procs").write_text(str(target.pid))
    dump_and_kill(target, images_dir)
    directory.rmdir()
    result = restore_detached(images_dir, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(rf"cannot restore its cgroup {re.escape(want)}: No such file or directory", lines[0]), lines

"""Namespaces a restore does not recreate, refused by name (ckpt/restorability.py
``namespace_reasons``): a time namespace unshared for the children (zdtm's
timens_for_kids), and a process running in a time namespace of its own."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt import errors
from helpers import Target

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

# argv: children|own.  unshare(CLONE_NEWTIME) moves only the children (time_for_children);
# "own" then enters it too (setns: a single-threaded process may, kernel/time/namespace.c
# timens_install), with a clock offset, as a container's init would run.
TIMENS = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x80) != 0:   # CLONE_NEWTIME
    sys.exit(f"unshare(CLONE_NEWTIME): {os.strerror(ctypes.get_errno())}")
if sys.argv[1] == "own":
    with open("/proc/self/timens_offsets", "w") as f:   # before any process enters it
        f.write("monotonic 3600 0")
    fd = os.open("/proc/self/ns/time_for_children", os.O_RDONLY)
    if libc.setns(fd, 0x80) != 0:
        sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")
print("ready", os.getpid(), flush=True)
signal.pause()
"""

REASONS = {
    "children": "it unshared a time namespace for its children (/proc/PID/ns/time_for_children is not its own), "
                "which ckpt does not recreate",
    "own": "it runs in a time namespace of its own (other clock offsets, /proc/PID/timens_offsets), which ckpt "
           "does not recreate",
}


@pytest.fixture
def time_namespaces() -> None:
    if not Path("/proc/self/ns/time").exists():
        pytest.skip("this kernel has no time namespaces (CONFIG_TIME_NS)")


@needs_kernel
@pytest.mark.usefixtures("time_namespaces")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["children", "own"])
def test_time_namespace_refuses_a_kill(mode: str, spawn: Callable[..., Target], images_dir: Path) -> None:
    target = spawn([sys.executable, "-c", TIMENS, mode])
    report = ckpt.dump(target.pid, images_dir)
    process = report.checkpoint.state.process
    assert (process.timens_own, process.timens_children) == ((True, False) if mode == "own" else (False, True))
    assert REASONS[mode] in report.unrestorable, report.unrestorable
    with pytest.raises(errors.KillRefused) as refused:
        ckpt.dump(target.pid, images_dir, after="kill")
    assert REASONS[mode] in refused.value.report.unrestorable
    assert target.alive()


@needs_kernel
@pytest.mark.timeout(60)
def test_no_time_namespace_no_reason(spawn: Callable[..., Target], images_dir: Path) -> None:
    target = spawn([sys.executable, "-c", "import os, signal; print('ready', os.getpid(), flush=True); "
                    "signal.pause()"])
    process = ckpt.dump(target.pid, images_dir).checkpoint.state.process
    assert (process.timens_own, process.timens_children) == ((False, False) if Path("/proc/self/ns/time").exists()
                                                             else (None, None))

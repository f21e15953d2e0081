"""Signal handlers and pending signals across a restore, SIGTRAP among them.

The rebuild injects its syscalls into the restored process; every injection
that raised a SIGTRAP in it (a single-step trap is a *forced* SIGTRAP,
kernel/signal.c force_sig_info_to_task) reset a blocked or ignored SIGTRAP's
handler to SIG_DFL and swallowed a pending SIGTRAP (zdtm static/sigtrap).  The
self-checking target (tests/programs/zdtm_sigtrap.c) checks its handlers, its
pending signals with their siginfo, per thread and per process, and that a
SIGTRAP raised afterwards reaches its handler.
"""

from __future__ import annotations

import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from helpers import Target, proc_status_field
from test_restore import Profile, dump_and_kill, restore_and_check, run_to_end

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

MODES = ("pending", "timer", "ignored")
GO = signal.SIGUSR2
TRAP_BIT = 1 << (signal.SIGTRAP - 1)


def _signos(infos: list[bytes]) -> list[int]:
    return [struct.unpack_from("<i", info)[0] for info in infos]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_the_target_checks_itself(mode: str, programs: dict[str, Path], spawn: Callable[..., Target]) -> None:
    target = spawn([programs["zdtm_sigtrap"], mode])
    time.sleep(0.1)
    rc, lines = run_to_end(target, sig=GO)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_handlers_and_pending_signals_survive(mode: str, programs: dict[str, Path], spawn: Callable[..., Target],
                                              images_dir: Path, tmp_path: Path) -> None:
    """pending: SIGTRAP, SIGUSR1 and two RT signals with values pending in a thread and in the
    process, all with handlers; timer: a SIGTRAP handler and an armed ITIMER_REAL (the rebuild
    blocks every signal to arm it); ignored: SIGTRAP ignored.  The restored process has the same
    SigCgt (Profile) and its own checks pass."""
    target = spawn([programs["zdtm_sigtrap"], mode])
    time.sleep(0.1)   # the worker thread is in its read()
    expected = Profile.of(target.pid)
    ignored = int(proc_status_field(target.pid, "SigIgn"), 16)
    assert bool(expected.sigcgt & TRAP_BIT) == (mode != "ignored")
    assert bool(ignored & TRAP_BIT) == (mode == "ignored")
    dump_and_kill(target, images_dir)
    state = ckpt.ImageDir(images_dir).checkpoints[-1].state
    assert state.process is not None
    if mode == "pending":
        rtmin = signal.SIGRTMIN
        assert sorted(_signos(list(state.process.pending))) == [signal.SIGTRAP, rtmin + 2, rtmin + 2]
        per_thread = sorted(sorted(_signos(list(t.pending))) for t in state.threads)
        assert per_thread == [[], [signal.SIGTRAP, signal.SIGUSR1, rtmin + 3]], per_thread

    def inspect(run: object) -> None:
        pid = run.pid  # type: ignore[attr-defined]
        assert int(proc_status_field(pid, "SigIgn"), 16) == ignored

    lines = restore_and_check(images_dir, tmp_path, expected, inspect=inspect, go=GO)
    assert lines[-1:] == ["PASS"], lines

"""Sessions and process groups (ckpt/files/tty.py ``settle`` and ``session_notes``).

zdtm_session (tests/programs/zdtm_session.c) makes itself a session leader (setsid),
a group leader in its starter's session (setpgid(0, 0)), or stays a member of its
starter's group; dumped twice while running, then with --kill and restored, it checks
that it leads what it led.  A member of another process's group cannot be put back into
it: it stays in ckpt restore's, and the dump and the restore say so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from helpers import Target
from test_restore import Profile, dump_and_kill, restore_and_check

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["setsid", "setpgid", "member"])
def test_leadership_is_restored(mode: str, programs: dict[str, Path], spawn: Callable[..., Target],
                                images_dir: Path, tmp_path: Path) -> None:
    target = spawn([programs["zdtm_session"], mode])
    for _ in range(2):
        report = ckpt.dump(target.pid, images_dir)
        assert report.restorable, report.unrestorable
        time.sleep(0.1)
    process = report.checkpoint.state.process
    assert (process.session == target.pid, process.pgid == target.pid) == \
        {"setsid": (True, True), "setpgid": (False, True), "member": (False, False)}[mode], process
    notes = [n for n in report.restore_notes if "process group" in n]
    if mode == "setsid":
        assert not notes, notes
    elif mode == "setpgid":
        assert notes == [f"it led its process group {target.pid} in session {os.getsid(0)}, which another "
                         "process leads: restored, it leads a group of its own in ckpt restore's session"], notes
    else:
        assert notes == [f"it was a member of process group {os.getpgrp()} (session {os.getsid(0)}), which "
                         "another process leads: restored, it is in ckpt restore's process group and session"]
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    restore_and_check(images_dir, tmp_path, expected)

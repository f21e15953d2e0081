"""The tracking holder: keeps a target's userfaultfd open until the target exits.

Started by :func:`ckpt.tracking.spawn_holder` as
``python -m ckpt.holder TARGET_PID TARGET_START_TIME UFFD_FD``.  It checks that
the pid still names the same process, answers ``ok`` on stdout, then blocks on a
pidfd of the target.  When the target exits (or the holder gets SIGTERM from
``ckpt track stop``), it removes its registry record and exits; closing the
uffd lets the kernel disarm the target if it still runs.  It holds no other
resource and never touches the target's memory.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def main(argv: list[str]) -> int:
    from . import procfs, tracking
    from ._sys import pidfd as pidfd_sys

    target_pid, target_start, uffd = int(argv[0]), int(argv[1]), int(argv[2])
    try:
        pfd = pidfd_sys.pidfd_open(target_pid)
        if procfs.start_time(target_pid) != target_start:
            raise ProcessLookupError("pid reused")
        os.fstat(uffd)
    except OSError as err:
        print(f"error {err}", flush=True)
        return 1
    os.set_inheritable(uffd, False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir("/")
    print("ok", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    try:
        pidfd_sys.wait_exit(pfd)
    finally:
        path = tracking.run_dir() / f"{target_pid}.json"
        try:
            if json.loads(path.read_text()).get("holder_pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

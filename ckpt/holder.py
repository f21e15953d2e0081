"""The tracking holder: keeps a target's userfaultfd open until the target exits.

Started by ckpt/tracking.py as::

    python -I -S /absolute/path/to/ckpt/holder.py TARGET_PID TARGET_START UFFD_FD RECORD_PATH

with cwd "/" and an empty environment.  ``-I`` (isolated mode: no script
directory, no current directory, no PYTHONPATH, no user site) and ``-S`` (no
site) mean that root running ``ckpt dump`` from a directory another user
controls never imports that user's code into a process holding the target's
userfaultfd.  So this file is a script that uses the standard library only.

Protocol with the dump that starts it:

* It checks its arguments and answers ``ok`` (or ``error WHY``) on stdout.
* *Attached*: its stdin is a pipe from that dump.  ``keep`` means the dump
  committed a checkpoint and published this holder's record: it detaches.
  End of file before ``keep`` means the dump died or gave up: it exits at
  once, which closes the uffd (the kernel then disarms the target,
  fs/userfaultfd.c ``userfaultfd_release``), so a killed dump leaves nothing
  behind that would make later dumps fail to register the target's VMAs.
* *Detached*: it blocks on a pidfd of the target.  When the target exits, or
  on SIGTERM (``ckpt track stop``), it removes its registry record (if the
  record still names it) and exits.

Besides the uffd it keeps, without looking at them, the fds the dump passed with it (the
target's fork counter and the inotify watching its shared memory, ckpt/forkcount.py and
ckpt/sharedincr.py; their numbers are in the record); it never touches the target's memory.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys

# These two mirror ckpt.tracking.UFFD_LINK and ckpt.procfs.start_time on purpose:
# this script must not import ckpt (see the module docstring).
UFFD_LINK = "anon_inode:[userfaultfd]"


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (the comm in parentheses may itself hold ") ")."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def _wait_for_keep(pidfd: int) -> bool:
    """Wait until the starting dump says ``keep``; False if it went away (EOF) or the target exited."""
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    received = b""
    while True:
        for fd, _events in poller.poll():
            if fd == pidfd:
                return False
            chunk = os.read(0, 64)
            if not chunk:
                return False
            received += chunk
            if b"keep\n" in received:
                return True


def _remove_record(path: str) -> None:
    """Remove the registry record at ``path`` if it still names this holder (never following a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            record = json.loads(f.read())
        if isinstance(record, dict) and record.get("holder_pid") == os.getpid():
            os.unlink(path)
    except (OSError, ValueError):
        pass


def main(argv: list[str]) -> int:
    """Hold ``UFFD_FD`` for ``TARGET_PID``; see the module docstring."""
    try:
        target_pid, target_start, uffd = int(argv[0]), int(argv[1]), int(argv[2])
        record = argv[3]
    except (IndexError, ValueError):
        print("error usage: holder.py TARGET_PID TARGET_START UFFD_FD RECORD_PATH", flush=True)
        return 2
    try:
        pidfd = os.pidfd_open(target_pid)
        if _start_time(target_pid) != target_start:
            raise ProcessLookupError(f"pid {target_pid} was reused")
        if os.readlink(f"/proc/self/fd/{uffd}") != UFFD_LINK:
            raise ValueError(f"fd {uffd} is not a userfaultfd")
    except (OSError, ValueError) as err:
        print(f"error {err}", flush=True)
        return 1
    os.set_inheritable(uffd, False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    print("ok", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    try:
        if _wait_for_keep(pidfd):
            os.dup2(devnull, 0)  # detached: ckpt tells attached holders by their stdin (a pipe)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll()  # a pidfd polls readable when its process exits
    finally:
        _remove_record(record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

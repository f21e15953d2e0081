"""Keeping dirty tracking alive between two one-shot ``ckpt dump`` runs.

Write-protect tracking lives exactly as long as some process holds the
target's userfaultfd: closing the last reference clears every uffd-wp bit and
unregisters every VMA (fs/userfaultfd.c ``userfaultfd_release``).  The target's
own copy is closed right after ckpt takes it, so the fd table is unchanged —
which leaves ckpt's copy as the only one.

Choice: after a dump, a tiny *holder* process (``python -m ckpt.holder``)
inherits the uffd and does nothing but wait, on a pidfd, for the target to
exit; then it exits too.  The next ``ckpt dump`` finds it through a registry
file, takes the uffd from it with ``pidfd_getfd`` (which needs the same ptrace
access as dumping does) and continues incrementally.  ``ckpt track list`` shows
holders and ``ckpt track stop`` ends one (tracking is then undone by the
kernel).  A holder that dies, a registry file that does not match, or a target
pid that was reused all mean tracking was lost: the next dump is full and says
why.  The holder is not needed for correctness — only for incrementality.

Registry: one JSON file per target in ``$CKPT_RUN_DIR`` (default
``/run/ckpt`` for root, ``$XDG_RUNTIME_DIR/ckpt`` or ``/tmp/ckpt-UID``
otherwise), directory 0700, files 0600, replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import procfs
from ._sys import pidfd as pidfd_sys



def run_dir() -> Path:
    """Where tracking records live (created 0700 on first use)."""
    env = os.environ.get("CKPT_RUN_DIR")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/run/ckpt")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "ckpt"
    else:
        path = Path(f"/tmp/ckpt-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class TrackingRecord:
    """What a later dump needs to continue tracking a target."""

    target_pid: int
    target_start_time: int     # /proc/PID/stat field 22: detects pid reuse
    holder_pid: int
    holder_start_time: int
    holder_fd: int             # the uffd's number inside the holder
    images_dir: str            # resolved path of the chain it tracks for
    checkpoint_id: int | None  # the checkpoint tracking is consistent with; None while a dump runs
    since: float

    @property
    def path(self) -> Path:
        return run_dir() / f"{self.target_pid}.json"


def _write(record: TrackingRecord) -> None:
    path = record.path
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, path)


def _alive(pid: int, start_time: int) -> bool:
    try:
        return procfs.start_time(pid) == start_time
    except OSError:
        return False


def lookup(pid: int) -> tuple[TrackingRecord | None, str]:
    """The live tracking record of ``pid`` (or None and why there is none)."""
    path = run_dir() / f"{pid}.json"
    try:
        record = TrackingRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None, "not tracked"
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None, "tracking record unreadable"
    if not _alive(record.target_pid, record.target_start_time):
        path.unlink(missing_ok=True)
        return None, "pid was reused by another process"
    if not _alive(record.holder_pid, record.holder_start_time):
        path.unlink(missing_ok=True)
        return None, f"tracking holder {record.holder_pid} is gone"
    return record, ""


def take_uffd(record: TrackingRecord) -> int | None:
    """Duplicate the holder's uffd into this process (None if the holder vanished)."""
    try:
        pfd = pidfd_sys.pidfd_open(record.holder_pid)
    except OSError:
        return None
    try:
        if not _alive(record.holder_pid, record.holder_start_time):
            return None
        return pidfd_sys.pidfd_getfd(pfd, record.holder_fd)
    except OSError:
        return None
    finally:
        os.close(pfd)


def mark(record: TrackingRecord, **changes: object) -> TrackingRecord:
    """Persist a changed record (e.g. ``checkpoint_id=None`` before a dump scans)."""
    data = asdict(record)
    data.update(changes)
    new = TrackingRecord(**data)
    _write(new)
    return new


@dataclass
class Holder:
    """A holder process being started: spawned early in a dump (its interpreter
    starts while the dump works), registered only once a checkpoint is committed."""

    pid: int
    target_pid: int
    target_start_time: int
    uffd: int
    process: subprocess.Popen[bytes]

    def register(self, images_dir: str, checkpoint_id: int | None) -> TrackingRecord:
        """Wait until the holder holds the fd, then publish its record."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        self.process.stdout.close()
        if line != b"ok":
            self.abandon()
            raise RuntimeError(f"tracking holder failed to start ({line.decode(errors='replace')!r})")
        # The holder outlives us (it reparents to init when we exit).
        record = TrackingRecord(self.target_pid, self.target_start_time, self.pid,
                                procfs.start_time(self.pid), self.uffd, images_dir, checkpoint_id, time.time())
        _write(record)
        return record

    def abandon(self) -> None:
        """End a holder that was never registered (the dump failed): an unknown
        holder would keep the target armed with nobody to use it."""
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()


def spawn_holder(pid: int, uffd: int) -> Holder:
    """Start a holder for ``uffd`` (tracking of ``pid``); see :meth:`Holder.register`."""
    target_start = procfs.start_time(pid)
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt.holder", str(pid), str(target_start), str(uffd)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        pass_fds=(uffd,), start_new_session=True,
    )
    return Holder(process.pid, pid, target_start, uffd, process)


def stop(pid: int) -> bool:
    """Stop tracking ``pid``: end its holder (the kernel then disarms everything)."""
    record, _ = lookup(pid)
    path = run_dir() / f"{pid}.json"
    if record is None:
        path.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.holder_pid, signal.SIGTERM)
    path.unlink(missing_ok=True)
    return True


def list_tracked() -> list[TrackingRecord]:
    """Every live tracking record (stale ones are removed on the way)."""
    out = []
    for path in sorted(run_dir().glob("*.json")):
        try:
            pid = int(path.stem)
        except ValueError:
            continue
        record, _ = lookup(pid)
        if record is not None:
            out.append(record)
    return out

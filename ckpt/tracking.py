"""Keeping dirty tracking alive between two one-shot ``ckpt dump`` runs.

Write-protect tracking lives exactly as long as some process holds the
target's userfaultfd: closing the last reference clears every uffd-wp bit and
unregisters every VMA (fs/userfaultfd.c ``userfaultfd_release``).  The target's
own copy is closed right after ckpt takes it, so the fd table is unchanged —
which leaves ckpt's copy as the only one.

Choice: a tiny *holder* process (ckpt/holder.py, started isolated: ``python -I
-S /abs/path/holder.py``, cwd "/", empty environment, standard library only)
inherits the uffd and does nothing but wait, on a pidfd, for the target to
exit; then it exits too.  The next ``ckpt dump`` finds it through a registry
file, takes the uffd from it with ``pidfd_getfd`` (which needs the same ptrace
access as dumping does) and continues incrementally.  ``ckpt track list``
shows holders and ``ckpt track stop`` ends one (tracking is then undone by the
kernel).  A holder that dies, a registry file that does not match, a target
pid that was reused, or a target that exec'd (its tracked address space is
gone) all mean tracking was lost: the next dump is full and says why.  The
holder is not needed for correctness — only for incrementality.

Nothing a killed dump leaves behind changes later behaviour:

* A holder is published in the registry as soon as it is started, with the
  dumping ckpt's pid and ``checkpoint_id`` None ("dumping", then "incomplete"
  if that ckpt dies), so ``ckpt track list`` shows it and ``stop`` ends it.
* Until the dump that started it commits, a holder is *attached*: its stdin
  is a pipe from that dump, and it exits when the pipe closes without a
  ``keep``.  A first dump killed mid-way takes its holder (and with it the
  registration of the target's VMAs) along.
* A detached holder whose record was lost (a cleaned /tmp, another
  ``$CKPT_RUN_DIR``) is an *orphan*: found by its command line, it is adopted
  by the next dump (tracking state unknown: that dump is full) instead of
  keeping the target's VMAs registered with a uffd nobody can reach.

Registry: one JSON file per target in ``$CKPT_RUN_DIR`` (default
``/run/ckpt`` for root, ``$XDG_RUNTIME_DIR/ckpt`` or ``/tmp/ckpt-UID``
otherwise).  The directory must be the caller's and private (0700, not a
symlink, ancestors safe: ckpt/safepath.py), or it is refused.  ``/tmp/ckpt-UID``
created by someone else is never used: a private sibling ``/tmp/ckpt-UID.XXXX``
(ours by owner and mode, and nobody can rename it in the sticky /tmp) is
used instead, so another user can neither hijack the registry nor switch
tracking off.  Records are read with ``O_NOFOLLOW`` and written to ``O_EXCL``
temporary files that replace them atomically.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import procfs
from ._sys import pidfd as pidfd_sys
from ._sys import uffd as uffd_sys
from .errors import CkptError
from .safepath import make_dir, make_dirs, open_nofollow, unsafe_dir

HOLDER_SCRIPT = Path(__file__).resolve().with_name("holder.py")
UFFD_LINK = "anon_inode:[userfaultfd]"  # what /proc/PID/fd/N reads for a userfaultfd
PERF_LINK = "anon_inode:[perf_event]"   # ... and for a perf event (kernel/events/core.c perf_event_open)
INOTIFY_LINK = "anon_inode:inotify"     # ... and for an inotify instance (fs/notify/inotify/inotify_user.c)
PAGE = 4096


# -- the registry directory --------------------------------------------------------------


def run_dir() -> Path:
    """Where tracking records live (created 0700 on first use).

    Raises CkptError if ``$CKPT_RUN_DIR`` (or ``$XDG_RUNTIME_DIR/ckpt``) is a
    directory someone else could change.
    """
    uid = os.geteuid()
    env = os.environ.get("CKPT_RUN_DIR")
    if env:
        path = Path(env)
    elif uid == 0:
        path = Path("/run/ckpt")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "ckpt"
    else:
        return _tmp_run_dir(uid)
    try:
        make_dirs(path)
    except OSError as err:
        raise CkptError(f"tracking registry {path}: cannot create it: {err.strerror}") from err
    why = unsafe_dir(path, private=True)
    if why:
        raise CkptError(f"tracking registry {path} {why}; set CKPT_RUN_DIR to a private directory")
    return path


def _tmp_run_dir(uid: int) -> Path:
    """``/tmp/ckpt-UID``, or a private sibling when someone else created that one first."""
    tmp = Path("/tmp")
    preferred = tmp / f"ckpt-{uid}"
    try:
        with contextlib.suppress(FileExistsError):
            make_dir(preferred)
        if unsafe_dir(preferred, private=True) is None:
            return preferred
        # Another user's directory (or a symlink) in our place: never use it.
        for candidate in sorted(tmp.glob(f"ckpt-{uid}.*")):
            if unsafe_dir(candidate, private=True) is None:
                return candidate
        return Path(tempfile.mkdtemp(prefix=f"ckpt-{uid}.", dir=tmp))
    except OSError as err:
        raise CkptError(f"tracking registry in {tmp}: {err.strerror}") from err


def record_path(pid: int) -> Path:
    """The registry file of target ``pid``."""
    return run_dir() / f"{pid}.json"


# -- records -----------------------------------------------------------------------------


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
    dumper_pid: int | None = None         # the ckpt that last worked with it (None: adopted orphan)
    dumper_start_time: int | None = None
    counter_fds: tuple[int, ...] = ()     # the target's fork counter inside the holder (ckpt/forkcount.py)
    watch_fd: int | None = None           # its inotify watching shared objects (ckpt/sharedincr.py)
    # The images directory by identity (st_dev, st_ino): a path can be renamed or reused.
    images_dev: int | None = None
    images_ino: int | None = None

    def tracks_for(self, images_dir: str | os.PathLike[str]) -> bool:
        """Whether this record tracks for the images directory ``images_dir`` (by device and
        inode when the record has them, else by path)."""
        ident = dir_identity(images_dir)
        if self.images_dev is not None and self.images_ino is not None and ident is not None:
            return (self.images_dev, self.images_ino) == ident
        return self.images_dir == str(images_dir)

    @property
    def path(self) -> Path:
        return record_path(self.target_pid)

    @property
    def state(self) -> str:
        """"consistent" (with ``checkpoint_id``), "dumping" (a ckpt works with it now) or
        "incomplete" (the last dump did not finish: the next one is full)."""
        if self.checkpoint_id is not None:
            return "consistent"
        if self.dumper_pid is not None and self.dumper_start_time is not None \
                and _alive(self.dumper_pid, self.dumper_start_time):
            return "dumping"
        return "incomplete"

    @property
    def busy(self) -> bool:
        """Another live ckpt (not this process) is dumping with this holder now."""
        return self.state == "dumping" and self.dumper_pid != os.getpid()


def dir_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(st_dev, st_ino) of directory ``path`` (None if it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def publish(record: TrackingRecord) -> TrackingRecord:
    """Write ``record`` to the registry (atomically: an O_EXCL temporary file, then rename).
    The images directory's identity is filled in from its path when the record lacks it."""
    if record.images_dir and record.images_dev is None:
        ident = dir_identity(record.images_dir)
        if ident is not None:
            record = replace(record, images_dev=ident[0], images_ino=ident[1])
    _write_json(record.path, asdict(record))
    return record


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Write a registry file atomically: an O_EXCL temporary file, then rename."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def mark(record: TrackingRecord, **changes: object) -> TrackingRecord:
    """Persist a changed record (e.g. ``checkpoint_id=None`` before a dump scans); a new
    ``images_dir`` gets its own identity."""
    if "images_dir" in changes and "images_dev" not in changes:
        changes.update(images_dev=None, images_ino=None)
    return publish(replace(record, **changes))  # type: ignore[arg-type]


def _read(path: Path) -> dict[str, object] | None:
    """A registry file's JSON; None if missing.  Never follows a symlink; a file
    that is not ours and regular raises ValueError (it is then removed)."""
    try:
        fd = open_nofollow(path, os.O_RDONLY, owner=os.geteuid())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(err.strerror) from err
    with os.fdopen(fd, "rb") as f:
        data = json.loads(f.read())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _alive(pid: int, start_time: int) -> bool:
    try:
        return procfs.start_time(pid) == start_time
    except OSError:
        return False


def lookup(pid: int) -> tuple[TrackingRecord | None, str]:
    """The live tracking record of ``pid`` (or None and why there is none)."""
    path = record_path(pid)
    try:
        data = _read(path)
        if data is None:
            return None, "not tracked"
        record = TrackingRecord(**data)  # type: ignore[arg-type]
        if not isinstance(record.counter_fds, (list, tuple)) or not all(
                isinstance(fd, int) and not isinstance(fd, bool) for fd in record.counter_fds):
            raise ValueError("counter_fds is not a list of fds")
        for name in ("watch_fd", "images_dev", "images_ino"):
            value = getattr(record, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} is not a number")
        record = replace(record, counter_fds=tuple(record.counter_fds))
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


# -- origins: which checkpoint a restored process continues --------------------------------


@dataclass(frozen=True)
class Origin:
    """Written by the restore that made process ``target_pid``: it continues checkpoint
    ``checkpoint_id`` of the images directory ``images_dir`` (identified by ``images_dev``
    and ``images_ino``).

    This is the proof of lineage a dump of that process into the same directory needs
    to be the checkpoint's child rather than "another process" (ckpt/dump.py): a pid or a
    program name proves nothing.  It outlives the tracking holder (the dump is then full,
    but still the restored checkpoint's child) and is stale once the process is gone
    (``target_start_time`` no longer matches): :func:`lookup_origin` removes it then.
    """

    target_pid: int
    target_start_time: int
    images_dir: str
    images_dev: int
    images_ino: int
    checkpoint_id: int
    since: float

    @property
    def path(self) -> Path:
        return origin_path(self.target_pid)

    def of_dir(self, images_dir: str | os.PathLike[str]) -> bool:
        """Whether ``images_dir`` is the directory this origin names (by identity)."""
        return dir_identity(images_dir) == (self.images_dev, self.images_ino)


def origin_path(pid: int) -> Path:
    """The registry file naming the checkpoint restored process ``pid`` continues."""
    return run_dir() / f"{pid}.origin.json"


def publish_origin(origin: Origin) -> Origin:
    """Record ``origin`` in the registry (atomically)."""
    _write_json(origin.path, asdict(origin))
    return origin


def drop_origin(pid: int, start_time: int | None = None) -> None:
    """Remove the origin record of ``pid`` (only if it names ``start_time``, when given)."""
    path = origin_path(pid)
    if start_time is not None:
        found = lookup_origin(pid)
        if found is None or found.target_start_time != start_time:
            return
    path.unlink(missing_ok=True)


def sweep_origins() -> None:
    """Remove the origin records of processes that are gone (one small file per restore)."""
    for name in os.listdir(run_dir()):
        stem, _, ext = name.partition(".")
        if ext == "origin.json" and stem.isdigit():
            lookup_origin(int(stem))


def lookup_origin(pid: int) -> Origin | None:
    """The origin record of live process ``pid`` (None without one; a stale or unreadable
    record is removed)."""
    path = origin_path(pid)
    try:
        data = _read(path)
        if data is None:
            return None
        origin = Origin(**data)  # type: ignore[arg-type]
        for name in ("target_pid", "target_start_time", "images_dev", "images_ino", "checkpoint_id"):
            value = getattr(origin, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} is not a number")
        if origin.target_pid != pid or not isinstance(origin.images_dir, str):
            raise ValueError("not this process's record")
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not _alive(origin.target_pid, origin.target_start_time):
        path.unlink(missing_ok=True)
        return None
    return origin


# -- the uffd ----------------------------------------------------------------------------


def take_uffd(holder_pid: int, holder_start_time: int, fd: int) -> int | None:
    """Duplicate fd ``fd`` of the holder into this process (None if the holder
    vanished, or if that fd is not a userfaultfd)."""
    try:
        pfd = pidfd_sys.pidfd_open(holder_pid)
    except OSError:
        return None
    try:
        if not _alive(holder_pid, holder_start_time):
            return None
        mine = pidfd_sys.pidfd_getfd(pfd, fd)
    except OSError:
        return None
    finally:
        os.close(pfd)
    if not _is_uffd(f"/proc/self/fd/{mine}"):
        os.close(mine)
        return None
    return mine


def take_fds(holder_pid: int, holder_start_time: int, fds: tuple[int, ...], link: str) -> list[int] | None:
    """Duplicate fds ``fds`` of the holder into this process (None if the holder vanished
    or one of them is not what /proc/PID/fd reads as ``link``: ``PERF_LINK``, ``INOTIFY_LINK``)."""
    if not fds:
        return None
    try:
        pfd = pidfd_sys.pidfd_open(holder_pid)
    except OSError:
        return None
    mine: list[int] = []
    try:
        if not _alive(holder_pid, holder_start_time):
            return None
        for fd in fds:
            mine.append(pidfd_sys.pidfd_getfd(pfd, fd))
            if os.readlink(f"/proc/self/fd/{mine[-1]}") != link:
                raise OSError(errno.EBADF, f"not {link}")
    except OSError:
        for fd in mine:
            os.close(fd)
        return None
    finally:
        os.close(pfd)
    return mine


def _is_uffd(fd_link: str) -> bool:
    try:
        return os.readlink(fd_link) == UFFD_LINK
    except OSError:
        return False


def address_space_alive(uffd: int, pid: int) -> bool:
    """False when the address space ``uffd`` was created in is gone (the target exec'd).

    A uffd pins its mm with ``mmgrab`` only; exec drops the last user of the
    old mm, and from then on every uffd ioctl that needs it fails:
    ``UFFDIO_WRITEPROTECT`` with ESRCH (fs/userfaultfd.c
    ``userfaultfd_writeprotect``: ``mmget_not_zero`` fails), ``UFFDIO_REGISTER``
    with ENOMEM (measured on 6.18).  The probe write-protects one page of an
    unmapped gap: on a live mm that touches nothing (no VMA there).
    """
    gap = _unmapped_page(pid)
    if gap is None:
        return True
    try:
        uffd_sys.writeprotect(uffd, gap, PAGE)
    except OSError as err:
        return err.errno != errno.ESRCH
    return True


def _unmapped_page(pid: int) -> int | None:
    """The lowest page of ``pid`` at or above vm.mmap_min_addr that no VMA covers."""
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            addr = max(PAGE, (int(f.read()) + PAGE - 1) // PAGE * PAGE)
        maps = procfs.read_maps(pid)
    except (OSError, ValueError):
        return None
    for m in maps:
        if m.end <= addr:
            continue
        if m.start > addr:
            return addr
        addr = m.end
    return addr if addr < 1 << 47 else None


# -- holders -----------------------------------------------------------------------------


@dataclass
class Holder:
    """A holder this dump started; attached to this process until :meth:`detach`."""

    pid: int
    start_time: int
    target_pid: int
    target_start_time: int
    uffd: int
    process: subprocess.Popen[bytes]
    counter_fds: tuple[int, ...] = ()
    watch_fd: int | None = None

    def record(self, images_dir: str, checkpoint_id: int | None) -> TrackingRecord:
        """Its registry record, naming this process as the dumper."""
        return TrackingRecord(self.target_pid, self.target_start_time, self.pid, self.start_time, self.uffd,
                              images_dir, checkpoint_id, time.time(), os.getpid(), procfs.start_time(os.getpid()),
                              self.counter_fds, self.watch_fd)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the holder holds the fd; CkptError naming what went wrong otherwise."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise CkptError(f"tracking holder {self.pid} did not start within {timeout:.0f} s")
        line = self.process.stdout.readline().strip()
        if line != b"ok":
            why = line.decode(errors="replace").removeprefix("error ") or f"it exited ({self.process.poll()})"
            raise CkptError(f"tracking holder {self.pid} failed: {why}")

    def detach(self) -> None:
        """Tell the holder its record is published: it then outlives this process."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(b"keep\n")
            self.process.stdin.close()
        except OSError as err:
            raise CkptError(f"tracking holder {self.pid} went away: {err.strerror}") from err
        self.process.stdout.close()

    def abandon(self) -> None:
        """End a holder that was never detached (the dump failed): an unknown holder
        would keep the target armed with nobody to use it.  Closing its stdin makes
        it exit (and remove its record); it is killed if it does not."""
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                self.process.kill()
            self.process.wait()


def spawn_holder(pid: int, uffd: int, counter_fds: tuple[int, ...] = (), watch_fd: int | None = None) -> Holder:
    """Start an attached holder for ``uffd`` (tracking of ``pid``), isolated from
    the current directory and environment (see ckpt/holder.py).  It also keeps
    ``counter_fds`` (the target's fork counter) and ``watch_fd`` (its inotify): inherited
    at the same numbers, held until it exits."""
    target_start = procfs.start_time(pid)
    path = record_path(pid)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(HOLDER_SCRIPT), str(pid), str(target_start), str(uffd), str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        pass_fds=(uffd, *counter_fds, *(() if watch_fd is None else (watch_fd,))), start_new_session=True,
        cwd="/", env={},
    )
    try:
        start = procfs.start_time(process.pid)
    except OSError:
        start = 0  # it exited already: wait_ready() will say why
    return Holder(process.pid, start, pid, target_start, uffd, process, tuple(counter_fds), watch_fd)


@dataclass(frozen=True)
class HolderProcess:
    """A running holder found by its command line (``/proc/PID/cmdline``)."""

    pid: int
    start_time: int
    target_pid: int
    target_start_time: int
    fd: int
    attached: bool  # still tied to the dump that started it (its stdin is that dump's pipe)


def find_holders(target_pid: int | None = None) -> list[HolderProcess]:
    """This user's holder processes (of ``target_pid`` only, if given), recorded or not.

    Only processes with the caller's effective uid running this very
    holder.py, and holding a userfaultfd at the fd their command line names,
    count: root never adopts a process another user started.
    """
    uid = os.geteuid()
    script = os.fsencode(HOLDER_SCRIPT)
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            # python -I -S HOLDER TARGET_PID TARGET_START FD RECORD
            if len(argv) < 8 or argv[1:4] != [b"-I", b"-S", script]:
                continue
            target, target_start, fd = int(argv[4]), int(argv[5]), int(argv[6])
            if target_pid is not None and target != target_pid or not _is_uffd(f"/proc/{name}/fd/{fd}"):
                continue
            stdin = os.readlink(f"/proc/{name}/fd/0")
            out.append(HolderProcess(int(name), procfs.start_time(int(name)), target, target_start, fd,
                                     attached=stdin.startswith("pipe:")))
        except (OSError, ValueError):
            continue
    return out


def adopt_orphan(pid: int, images_dir: str) -> tuple[TrackingRecord, int] | None:
    """Take over a detached holder of ``pid`` that has no record; return its new
    record (``checkpoint_id`` None: its tracking state is unknown) and its uffd.

    Other orphans of the same target are stopped: only one uffd can have the
    target's VMAs registered, the others hold nothing useful.
    """
    target_start = procfs.start_time(pid)
    adopted = None
    for h in find_holders(pid):
        if h.attached or h.target_start_time != target_start:
            continue
        if adopted is None:
            uffd = take_uffd(h.pid, h.start_time, h.fd)
            if uffd is not None:
                record = TrackingRecord(pid, target_start, h.pid, h.start_time, h.fd, images_dir, None,
                                        time.time(), os.getpid(), procfs.start_time(os.getpid()))
                try:
                    adopted = publish(record), uffd
                except BaseException:
                    os.close(uffd)
                    raise
                continue
        _terminate(h.pid, h.start_time)
    return adopted


def _terminate(pid: int, start_time: int, timeout: float = 5.0) -> None:
    """SIGTERM a holder (checked by start time, through a pidfd) and wait until it exits."""
    try:
        pfd = pidfd_sys.pidfd_open(pid)
    except OSError:
        return
    try:
        if not _alive(pid, start_time):
            return
        pidfd_sys.pidfd_send_signal(pfd, signal.SIGTERM)
        pidfd_sys.wait_exit(pfd, timeout)
    except OSError:
        pass
    finally:
        os.close(pfd)


def stop(pid: int) -> bool:
    """Stop tracking ``pid``: end its holder, recorded or orphaned (the kernel then
    disarms everything); False if there was none."""
    record, _ = lookup(pid)
    holders = {(h.pid, h.start_time) for h in find_holders(pid) if not h.attached}
    if record is not None:
        holders.add((record.holder_pid, record.holder_start_time))
    with contextlib.suppress(OSError):
        os.unlink(record_path(pid))
    for holder_pid, start_time in holders:
        _terminate(holder_pid, start_time)
    return bool(holders)


@dataclass(frozen=True)
class Tracked:
    """One tracked process as ``ckpt track list`` shows it."""

    record: TrackingRecord
    state: str  # "consistent", "dumping", "incomplete" or "orphan" (a holder without a record)


def list_tracked() -> list[Tracked]:
    """Every live tracking record (stale ones are removed on the way), and orphaned holders."""
    out = []
    seen = set()
    directory = run_dir()
    sweep_origins()
    for name in sorted(os.listdir(directory)):
        stem, dot, ext = name.partition(".")
        if ext != "json" or not stem.isdigit():
            continue
        record, _ = lookup(int(stem))
        if record is not None:
            out.append(Tracked(record, record.state))
            seen.add(record.holder_pid)
    for h in find_holders():
        if h.pid in seen or h.attached:
            continue
        since = _boot_time() + h.start_time / os.sysconf("SC_CLK_TCK")
        record = TrackingRecord(h.target_pid, h.target_start_time, h.pid, h.start_time, h.fd, "", None, since)
        out.append(Tracked(record, "orphan"))
    return sorted(out, key=lambda t: t.record.target_pid)


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


__all__ = ["HOLDER_SCRIPT", "Holder", "HolderProcess", "Origin", "Tracked", "TrackingRecord", "adopt_orphan",
           "address_space_alive", "dir_identity", "drop_origin", "find_holders", "list_tracked", "lookup",
           "lookup_origin", "mark", "origin_path", "publish", "publish_origin", "record_path", "run_dir",
           "spawn_holder", "stop", "sweep_origins", "take_uffd"]

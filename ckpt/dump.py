"""``ckpt dump`` and ``ckpt pre-dump``: orchestrate attach, track, copy, capture, store.

A dump of a target not tracked yet (full)::

    freeze briefly -> inject userfaultfd, take it (pidfd_getfd), close the target's copy -> thaw
    running round: register + arm every VMA, copy all present pages  (target runs)
    freeze -> final round: pages written since the running round -> copy into memory
           -> capture task state -> thaw (or kill / leave stopped)
    compress + write -> commit atomically -> hand the uffd to a holder for the next dump

A dump of a tracked target (incremental) skips the first two steps: it takes
the uffd back from the holder and its frozen window holds only one
PAGEMAP_SCAN pass per tracked range plus the copy of the written pages.  A
``pre`` dump is one running round: memory only, the target is never frozen
(except for the injection when tracking starts).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import procfs, ranges, taskstate, tracking
from ._sys import pidfd as pidfd_sys
from ._sys import uffd as uffd_sys
from ._sys.libc import SYS_close, SYS_userfaultfd, tune_malloc
from .errors import AccessDenied, CkptError, ImageError, KernelUnsupported, TargetError, TargetExited
from .image import Checkpoint, ImageDir, VmaRecord
from .live import FrozenProcess, check_target, wrap_process_errors
from .memcopy import Chunk, MemoryReader, split
from .ranges import Range
from .tracker import DATA_KINDS, FILE_PRIVATE, FILE_SHARED, Round, Tracker

After = Literal["run", "stop", "kill"]
Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)

COPY_CHUNK = 64 << 20   # bytes copied per batch while the target runs (memory budget)
PRECOPY_MIN_BYTES = 4 << 20  # an incremental dump copies this much while running first
TRACKING_STATE_VERSION = 1


@dataclass
class DumpReport:
    """What one dump did; ``to_dict`` is the ``--json`` output."""

    checkpoint: Checkpoint
    kind: str
    tracking: str                 # "new" | "continued" | "lost: <why>"
    frozen_seconds: float
    wall_seconds: float
    pages_written: int            # pages the final written-scan reported
    pages_copied: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.checkpoint.summary()
        d.update(kind=self.kind, tracking=self.tracking, frozen_ms=round(self.frozen_seconds * 1e3, 3),
                 wall_ms=round(self.wall_seconds * 1e3, 3), pages_written=self.pages_written,
                 pages_copied=self.pages_copied, notes=self.notes,
                 images_dir=str(self.checkpoint.image_dir.path))
        return d


def dump(pid: int, images_dir: str | os.PathLike[str], *, pre: bool = False, after: After = "run",
         compression_level: int = 1, progress: Progress | None = None) -> DumpReport:
    """Checkpoint ``pid`` into ``images_dir`` once (full the first time, then incremental)."""
    with Dumper(pid, images_dir, compression_level=compression_level, progress=progress) as dumper:
        return dumper.dump(pre=pre, after=after)


class Dumper:
    """A dump session: one target, one images directory, one or more checkpoints.

    Between checkpoints of the same session (``--every``) the uffd and the
    tracking state stay in memory; at :meth:`close` the uffd is left with the
    holder process so a later ``ckpt dump`` continues incrementally.
    """

    def __init__(self, pid: int, images_dir: str | os.PathLike[str], *, compression_level: int = 1,
                 progress: Progress | None = None) -> None:
        check_target(pid)
        tune_malloc()
        self.pid = pid
        self.images = ImageDir(images_dir, create=True)
        self.compression_level = compression_level
        self.progress = progress
        self.uffd = -1
        self.tracker: Tracker | None = None
        self.last_id: int | None = None   # checkpoint the in-memory tracker matches
        self.record: tracking.TrackingRecord | None = None
        self.holder: tracking.Holder | None = None  # spawned, not registered yet
        self._mem_reader: MemoryReader | None = None
        self.start_time = procfs.start_time(pid)
        self.target_gone = False

    def __enter__(self) -> "Dumper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._mem_reader is not None:
            self._mem_reader.close()
            self._mem_reader = None
        if self.holder is not None:
            self.holder.abandon()
            self.holder = None
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        if self.uffd >= 0:
            os.close(self.uffd)
            self.uffd = -1

    # -- one checkpoint -----------------------------------------------------------------

    def dump(self, *, pre: bool = False, after: After = "run") -> DumpReport:
        """Take one checkpoint; the target is left running, stopped or killed per ``after``."""
        t0 = time.monotonic()
        try:
            with self.images.lock():
                self.images.remove_stale_staging()
                return self._dump_locked(pre, after, t0)
        except BaseException as err:
            # Pages this attempt re-armed were never stored: the tracking state
            # cannot be trusted by a next dump of this session (it will be full).
            self.last_id = None
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None
            if isinstance(err, OSError) and not isinstance(err, CkptError):
                raise self._translate(err) from err
            raise

    def _translate(self, err: OSError) -> Exception:
        """An OSError that escaped the layers below, as the error a user should see."""
        if not self._target_alive():
            return TargetExited(self.pid, "dump")
        if err.errno in (errno.EPERM, errno.EACCES):
            return AccessDenied(self.pid, "dump", err.strerror or "")
        return TargetError(f"dump of pid {self.pid} failed: {err}")

    def _target_alive(self) -> bool:
        try:
            return procfs.start_time(self.pid) == self.start_time and procfs.read_status(self.pid).state != "Z"
        except OSError:
            return False

    def _dump_locked(self, pre: bool, after: After, t0: float) -> DumpReport:
        head = self.images.head
        if head is not None:
            owner = head.state.get("target", {})
            if head.pid != self.pid or owner.get("start_time", self.start_time) != self.start_time:
                raise ImageError(f"{self.images.path} holds checkpoints of another process (pid {head.pid}); "
                                 "use a new directory")
        note = self._prepare_tracking(head)
        continued = note == "continued"
        kind = "pre" if pre else ("incremental" if continued else "full")
        parent = head.id if head is not None else None
        assert self.tracker is not None
        notes: list[str] = []
        if not continued and head is not None:
            notes.append(f"tracking {note.removeprefix('lost: ')}: this dump is full")

        with wrap_process_errors(self.pid, "dump", attached=True), \
                self.images.new_checkpoint(kind=kind, parent=parent, pid=self.pid,
                                           compression_level=self.compression_level) as writer:
            copied = 0
            wholes: list[Range] = []
            frozen = 0.0
            state: dict[str, Any]
            precopy = pre or not continued
            if not precopy:
                # Much written since the last checkpoint: copy it while the target
                # runs, so that the frozen window only sees what is written meanwhile.
                expected = self.tracker.prime()
                precopy = expected >= PRECOPY_MIN_BYTES
            if precopy:
                # Running round: new VMAs are armed, and what it finds copied, while the target runs.
                rnd = self.tracker.round(final=False)
                wholes = rnd.whole
                copied += self._copy_running(rnd, writer)
            if pre:
                final = rnd
                state = {}
            else:
                # Work that need not be frozen: settle the running round, read
                # the VMA flags, fault in a copy buffer big enough for what is
                # being written now (with room for what comes until the freeze).
                expected = self.tracker.prime()
                self._reader().reserve(expected + expected // 4 + (1 << 20))
                with FrozenProcess(self.pid) as proc:
                    # Frozen time counts from the first PTRACE_INTERRUPT.
                    t_freeze = time.monotonic() - proc.freeze_time
                    # Task state first: its injected syscalls return to user mode
                    # once each, which lets the kernel refresh the rseq areas; the
                    # memory copied afterwards is what the threads will resume with.
                    state = taskstate.capture(proc)
                    proc.release_scratch()
                    final = self.tracker.round(final=True)
                    chunk, lost = self._reader().read(final.copy, final.unreadable)
                    if lost:
                        raise TargetError(f"pages of pid {self.pid} could not be read: "
                                          + ", ".join(f"{s:#x}-{e:#x}" for s, e in lost[:4]))
                    frozen = time.monotonic() - t_freeze
                    t_release = time.monotonic()
                    if after == "kill":
                        proc.kill()  # not frozen time: the target never runs again
                        self.target_gone = True
                    else:
                        proc.thaw(stop=after == "stop")
                        frozen += time.monotonic() - t_release
                copied += self._store(chunk, final.zero, writer)
            records = self._vma_records(final)
            data_ranges = ranges.normalize((v.start, v.end) for v in records if v.kind in DATA_KINDS)
            whole = ranges.intersect(ranges.union(wholes, final.whole), data_ranges)
            state["target"] = {"pid": self.pid, "start_time": self.start_time}
            state["tracking"] = {"version": TRACKING_STATE_VERSION,
                                 "armed": ranges.to_bytes(self.tracker.armed),
                                 "untrackable": [[s, e, why] for (s, e), why in final.untrackable]}
            cp = writer.commit(vmas=records, present=final.present, whole=whole, state=state)
        self.last_id = cp.id
        tracking_note = note
        self._hand_over_tracking(cp.id)
        for (s, e), why in final.untrackable:
            notes.append(f"{s:#x}-{e:#x} is not tracked ({why}): stored whole in every checkpoint")
        return DumpReport(checkpoint=cp, kind=kind, tracking=tracking_note, frozen_seconds=frozen,
                          wall_seconds=time.monotonic() - t0, pages_written=final.written_pages,
                          pages_copied=copied // 4096, notes=notes)

    # -- tracking continuity ---------------------------------------------------------------

    def _prepare_tracking(self, head: Checkpoint | None) -> str:
        """Get a uffd and a tracker; return "continued", "new" or "lost: why"."""
        if self.tracker is not None and head is not None and self.last_id == head.id:
            return "continued"
        if self.tracker is not None:
            self.close()
        record, why = tracking.lookup(self.pid)
        here = str(self.images.path.resolve())
        uffd = tracking.take_uffd(record) if record is not None else None
        if record is not None and uffd is None:
            why = f"tracking holder {record.holder_pid} is gone"
            record = None
        if record is not None and head is not None:
            if record.images_dir != here:
                why = f"it was tracking for {record.images_dir}"
            elif record.checkpoint_id != head.id:
                why = ("a previous dump did not complete" if record.checkpoint_id is None
                       else f"it matches checkpoint {record.checkpoint_id}, not {head.id}")
            else:
                why = ""
        if uffd is None:
            uffd = self._inject_uffd()
            self.uffd = uffd  # owned from here on: close() releases it on any error
            # Its interpreter starts while this dump works (~150 ms here).
            self.holder = tracking.spawn_holder(self.pid, uffd)
        self.uffd = uffd
        self.record = record
        if record is not None:
            # From now on the tracking state is in flux: should this dump fail,
            # the next one must not trust it (re-armed pages would be lost).
            self.record = tracking.mark(record, checkpoint_id=None)
        if head is not None and not why:
            armed = ranges.from_bytes(head.state.get("tracking", {}).get("armed", b""))
            self.tracker = Tracker(self.pid, uffd, armed=armed, present=head.present)
            self.tracker.seed_flags(head.vmas)
            return "continued"
        self.tracker = Tracker(self.pid, uffd)
        if head is None:
            return "new"
        return f"lost: {why or 'not tracked'}"

    def _inject_uffd(self) -> int:
        """Create a userfaultfd inside the target and take it; the target's fd table
        is left exactly as it was (the injected fd is closed in the target)."""
        with FrozenProcess(self.pid) as proc:
            flags = os.O_CLOEXEC | os.O_NONBLOCK | uffd_sys.UFFD_USER_MODE_ONLY
            fd = proc.inject(SYS_userfaultfd, flags)
            if fd < 0:
                raise KernelUnsupported("userfaultfd", f"userfaultfd() in the target failed: "
                                        f"{os.strerror(-fd)}; seccomp or an old kernel?")
            try:
                with wrap_process_errors(self.pid, "pidfd_getfd", attached=True):
                    pfd = pidfd_sys.pidfd_open(self.pid)
                    try:
                        mine = pidfd_sys.pidfd_getfd(pfd, fd)
                    finally:
                        os.close(pfd)
            finally:
                proc.inject(SYS_close, fd)
        try:
            granted = uffd_sys.api(mine, uffd_sys.CKPT_FEATURES)
        except OSError as err:
            os.close(mine)
            raise KernelUnsupported("UFFD_FEATURE_WP_ASYNC", str(err)) from err
        if not granted & uffd_sys.UFFD_FEATURE_WP_ASYNC:
            os.close(mine)
            raise KernelUnsupported("UFFD_FEATURE_WP_ASYNC")
        return mine

    def _hand_over_tracking(self, checkpoint_id: int) -> None:
        """Make sure a holder keeps the uffd, consistent with ``checkpoint_id``."""
        if self.target_gone:
            if self.record is not None:
                tracking.stop(self.pid)
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None
            self.record = None
            return
        here = str(self.images.path.resolve())
        if self.record is not None:
            self.record = tracking.mark(self.record, checkpoint_id=checkpoint_id, images_dir=here)
        else:
            if self.holder is None:
                self.holder = tracking.spawn_holder(self.pid, self.uffd)
            holder, self.holder = self.holder, None
            self.record = holder.register(here, checkpoint_id)

    # -- copying -------------------------------------------------------------------------

    def _reader(self) -> MemoryReader:
        if self._mem_reader is None:
            self._mem_reader = MemoryReader(self.pid)
        return self._mem_reader

    def _copy_running(self, rnd: Round, writer: Any) -> int:
        """Copy a running round's pages batch by batch into the writer."""
        total = ranges.total(rnd.copy)
        done = 0
        for batch in split(rnd.copy, COPY_CHUNK):
            chunk, lost = self._reader().read(batch, rnd.unreadable)
            if lost:
                # Unmapped meanwhile, most likely; the frozen round sees the truth.
                # Pages still mapped are re-armed already, so keep them for it.
                self.tracker.carry = ranges.union(self.tracker.carry, lost)  # type: ignore[union-attr]
                chunk = _drop(chunk, lost)
            done += self._store(chunk, [], writer)
            if self.progress:
                self.progress("copy", done, total)
        writer.add_zero_pages(rnd.zero)
        return done

    @staticmethod
    def _store(chunk: Chunk, zero: list[Range], writer: Any) -> int:
        writer.add_ranges(chunk.ranges, chunk.data)
        if zero:
            writer.add_zero_pages(zero)
        return len(chunk.data)

    def _vma_records(self, rnd: Round) -> list[VmaRecord]:
        """The VMA records of the final round.

        A file mapping also records the identity of the file its path leads to
        (device, inode, mount id, size, mtime), but only when that file is the
        mapped one: a restore opens the path without following symlinks and
        requires that identity (ckpt/trust.py).  The mapped file is known from
        /proc/PID/map_files/START-END when ckpt may read it (root, the target
        still alive), else from the maps device and inode.
        """
        from . import trust  # here, not at the top: only this method needs it
        from ._sys import fs

        def path_identity(m: procfs.Mapping) -> tuple[trust.FileIdentity, int, int] | None:
            try:
                mapped: trust.FileIdentity | None = trust.FileIdentity.of(
                    f"/proc/{self.pid}/map_files/{m.start:x}-{m.end:x}")
            except OSError:  # EPERM without CAP_CHECKPOINT_RESTORE; ENOENT once the target died
                mapped = trust.maps_identity(m.dev, m.inode)
            try:
                fd = fs.openat2(m.path, os.O_PATH, fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS)
            except OSError:
                return None
            try:
                st = os.fstat(fd)
                found = trust.FileIdentity.of(fd=fd)
            finally:
                os.close(fd)
            if mapped is None or (found.dev, found.ino) != (mapped.dev, mapped.ino):
                return None  # the path leads elsewhere now: a restore must refuse it
            return found, st.st_size, st.st_mtime_ns

        out = []
        for m, kind in zip(rnd.maps, rnd.kinds):
            ident = None
            if kind in (FILE_PRIVATE, FILE_SHARED) and m.path.startswith("/") and not m.deleted:
                ident = path_identity(m)
            file_id, size, mtime = ident if ident is not None else (None, None, None)
            out.append(VmaRecord(start=m.start, end=m.end, perms=m.perms, offset=m.offset, dev=m.dev,
                                 inode=m.inode, path=m.path, flags=tuple(sorted(m.flags)), kind=kind,
                                 file_size=size, file_mtime_ns=mtime,
                                 file_dev=file_id.dev if file_id else None,
                                 file_ino=file_id.ino if file_id else None,
                                 file_mnt_id=file_id.mnt_id if file_id else None))
        return out


def _drop(chunk: Chunk, lost: list[Range]) -> Chunk:
    """A chunk without the ranges that could not be read."""
    keep = ranges.subtract(chunk.ranges, lost)
    data = bytearray()
    for address, piece in chunk.pieces():
        for s, e in ranges.clip(keep, address, address + len(piece)):
            data += piece[s - address : e - address]
    return Chunk(keep, data)


"""``ckpt dump`` and ``ckpt pre-dump``: orchestrate attach, track, copy, capture, store.

A dump of a target not tracked yet (full)::

    freeze briefly -> inject userfaultfd, take it (pidfd_getfd), close the target's copy -> thaw
    running round: register + arm every VMA, copy all present pages  (target runs)
    freeze -> final round: pages written since the running round -> copy into memory
           -> capture task state -> thaw (or leave stopped, or kill if restorable)
    compress + write -> commit atomically -> hand the uffd to a holder for the next dump

A dump of a tracked target (incremental) skips the first two steps: it takes
the uffd back from the holder and its frozen window holds only one
PAGEMAP_SCAN pass per tracked range plus the copy of the written pages.  A
``pre`` dump is one running round: memory only, the target is never frozen
(except for the injection when tracking starts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import files, procfs, ranges, restorability, taskstate, tracking, treememory
from ._sys import pidfd as pidfd_sys
from ._sys import uffd as uffd_sys
from ._sys.libc import SYS_close, SYS_userfaultfd, tune_malloc
from .errors import (AccessDenied, CkptError, ImageError, Interrupted, InterruptedAfterCommit, KernelUnsupported,
                     KillRefused, StorageError, TargetError, TargetExited, UsageError)
from .image import Checkpoint, ImageDir, VmaRecord
from .image.imagedir import MAX_LEVEL, MIN_LEVEL
from .image.schema import SchemaError, SharedMemory, State, Target, Task, Tracking
from .live import DEFAULT_FREEZE_TIMEOUT, FrozenProcess, check_target, wrap_process_errors
from .live.tree import FrozenTree
from .memcopy import Chunk, MemoryReader, split
from .ranges import Range
from .files.ghost import DEFAULT_GHOST_LIMIT
from .files.objects import ObjectSet
from .files.tree import Sharing, sharing
from .tracker import DATA_KINDS, FILE_PRIVATE, FILE_SHARED, SHMEM, Round, Tracker

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
    restorable: bool = False      # ckpt.restorability's verdict on this checkpoint
    unrestorable: list[str] = field(default_factory=list)  # why not (empty when restorable)
    restore_notes: list[str] = field(default_factory=list)  # what a restore gives back differently
    killed: bool = False          # after="kill" and the target was restorable, so it was killed
    restorable_with: list[str] = field(default_factory=list)  # restore options it needs ("--shell-job")

    def to_dict(self) -> dict[str, Any]:
        d = self.checkpoint.summary()
        d.update(kind=self.kind, tracking=self.tracking, frozen_ms=round(self.frozen_seconds * 1e3, 3),
                 wall_ms=round(self.wall_seconds * 1e3, 3), pages_written=self.pages_written,
                 pages_copied=self.pages_copied, notes=self.notes, restorable=self.restorable,
                 unrestorable=self.unrestorable, restore_notes=self.restore_notes, killed=self.killed,
                 restorable_with=self.restorable_with, images_dir=str(self.checkpoint.image_dir.path))
        return d


def dump(pid: int, images_dir: str | os.PathLike[str], *, pre: bool = False, after: After = "run",
         compression_level: int = 1, progress: Progress | None = None,
         freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT, track: bool = True,
         ghost_limit: int = DEFAULT_GHOST_LIMIT) -> DumpReport:
    """Checkpoint ``pid`` into ``images_dir`` once (full the first time, then incremental).

    Options are checked (UsageError) before anything touches the target or the
    directory.  ``freeze_timeout`` bounds how long ckpt waits for every thread
    to stop; a thread that does not (a vfork parent, an uninterruptible wait)
    makes the dump fail with :class:`ckpt.errors.FreezeTimeout`, the target
    released.  ``after="kill"`` raises :class:`ckpt.errors.KillRefused` (the
    target left running) when the checkpoint could not be restored.
    ``track=False`` ends write tracking with this dump (see :class:`Dumper`).
    ``ghost_limit`` is the most data a file deleted while open may have to be kept in
    the checkpoint (ckpt/files/ghost.py); a larger one makes the checkpoint unrestorable.
    A SIGINT/SIGTERM that arrives once the checkpoint is committed raises
    :class:`ckpt.errors.InterruptedAfterCommit`, whose ``report`` is this
    function's result: the checkpoint was taken.
    """
    check_options(compression_level=compression_level, pre=pre, after=after, freeze_timeout=freeze_timeout,
                  ghost_limit=ghost_limit)
    with Dumper(pid, images_dir, compression_level=compression_level, progress=progress,
                freeze_timeout=freeze_timeout, track=track, ghost_limit=ghost_limit) as dumper:
        return dumper.dump(pre=pre, after=after)


def check_options(*, compression_level: int = 1, pre: bool = False, after: str = "run",
                  freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT, ghost_limit: int = DEFAULT_GHOST_LIMIT) -> None:
    """Refuse dump options that cannot work (UsageError), before attaching to anything."""
    if isinstance(ghost_limit, bool) or not isinstance(ghost_limit, int) or ghost_limit < 0:
        raise UsageError(f"the ghost limit must be a number of bytes >= 0, not {ghost_limit!r}")
    if isinstance(freeze_timeout, bool) or not isinstance(freeze_timeout, (int, float)) \
            or not 0 < freeze_timeout < float("inf"):
        raise UsageError(f"the freeze timeout must be a positive number of seconds, not {freeze_timeout!r}")
    level = compression_level
    if isinstance(level, bool) or not isinstance(level, int) or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise UsageError(f"compression level {level!r} is outside {MIN_LEVEL}..{MAX_LEVEL} "
                         "(0 stores pages uncompressed)")
    if after not in ("run", "stop", "kill"):
        raise UsageError(f"after={after!r}: expected 'run', 'stop' or 'kill'")
    if pre and after != "run":
        raise UsageError("a pre-dump never freezes the target: it cannot leave it stopped or kill it")


class Dumper:
    """A dump session: one target, one images directory, one or more checkpoints.

    Between checkpoints of the same session (``--every``) the uffd and the
    tracking state stay in memory; at :meth:`close` the uffd is left with the
    holder process so a later ``ckpt dump`` continues incrementally.

    With ``track=False`` no holder keeps it: tracking ends with the session,
    the kernel unregisters every VMA when the last uffd reference closes
    (fs/userfaultfd.c ``userfaultfd_release``), and mappings the target creates
    afterwards merge with its others as they would without ckpt (a registered
    VMA never merges with an unregistered neighbour; docs/DESIGN.md).  The
    next dump is then full.
    """

    def __init__(self, pid: int, images_dir: str | os.PathLike[str], *, compression_level: int = 1,
                 progress: Progress | None = None, freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT,
                 track: bool = True, ghost_limit: int = DEFAULT_GHOST_LIMIT) -> None:
        check_options(compression_level=compression_level, freeze_timeout=freeze_timeout, ghost_limit=ghost_limit)
        check_target(pid)
        self.freeze_timeout = freeze_timeout
        self.ghost_limit = ghost_limit
        tune_malloc()
        self.pid = pid
        with wrap_process_errors(pid, "reading /proc"):
            self.start_time = procfs.start_time(pid)
        self.images = ImageDir(images_dir, create=True)
        self.compression_level = compression_level
        self.progress = progress
        self.track = track
        self.uffd = -1
        self.tracker: Tracker | None = None
        self.last_id: int | None = None   # checkpoint the in-memory tracker matches
        self.record: tracking.TrackingRecord | None = None
        self.holder: tracking.Holder | None = None  # started by this session, not detached yet
        self.tracking_problem = ""  # why tracking cannot be kept past this session, if it cannot
        self._mem_reader: MemoryReader | None = None
        self.target_gone = False
        # While a checkpoint is being committed: its id, and how to report it.
        self._committing: tuple[int, Callable[[Checkpoint], DumpReport]] | None = None

    def __enter__(self) -> "Dumper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the uffd and the tracker; end a holder this session started but never
        handed a checkpoint to (a detached holder keeps tracking for the next dump)."""
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
        """Take one checkpoint; the target is left running, stopped or killed per ``after``.

        ``after="kill"`` kills only a target whose checkpoint is restorable
        (:mod:`ckpt.restorability`); otherwise the target is thawed, the
        checkpoint committed as not restorable, and :class:`KillRefused`
        (carrying the report) raised.  Raises InterruptedAfterCommit (carrying
        the report) when SIGINT/SIGTERM arrives after the checkpoint was
        committed: the checkpoint is complete.
        """
        check_options(compression_level=self.compression_level, pre=pre, after=after)
        t0 = time.monotonic()
        self._committing = None
        try:
            with self.images.lock():
                self.images.remove_stale_staging()
                report = self._dump_locked(pre, after, t0)
            self._committing = None
        except BaseException as err:
            committing, self._committing = self._committing, None
            # Pages this attempt re-armed were never stored: the tracking state
            # cannot be trusted by a next dump of this session (it will be full).
            self.last_id = None
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None
            if isinstance(err, (KeyboardInterrupt, Interrupted)) and committing is not None:
                self._raise_if_committed(err, *committing)
            if isinstance(err, SchemaError):
                # encode_meta refused to write a state the image schema (and so
                # every reader) would refuse: a value ckpt did not expect.
                raise TargetError(f"the state of pid {self.pid} cannot be stored in an image: {err}") from err
            if isinstance(err, OSError) and not isinstance(err, CkptError):
                raise self._translate(err) from err
            raise
        if after == "kill" and not pre and not report.killed:
            raise KillRefused(report)
        return report

    def _raise_if_committed(self, err: BaseException, checkpoint_id: int,
                            report: Callable[[Checkpoint], DumpReport]) -> None:
        """An interrupt came while committing ``checkpoint_id`` or after: if the commit
        (the rename of its staging directory) happened, the checkpoint was taken,
        and a dump that succeeded must not be reported as failed."""
        try:
            cp = self.images.checkpoint(checkpoint_id)
        except CkptError:
            return  # not committed: the interrupt stopped the dump before it
        name = err.signal_name if isinstance(err, Interrupted) else "SIGINT"
        done = report(cp)
        done.tracking = f"lost: {name} arrived before tracking was handed over"
        done.notes.append(f"{name} arrived after the commit: tracking was not handed over, "
                          "the next dump will be full")
        raise InterruptedAfterCommit(done, cp.id, name) from err

    def _translate(self, err: OSError) -> Exception:
        """An OSError that escaped the layers below, as the error a user should see."""
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # writing images, not the target
            return StorageError(f"dump of pid {self.pid} into {self.images.path} failed: {err.strerror}")
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
            owner = head.state.target
            started = owner.start_time if owner is not None and owner.start_time is not None else self.start_time
            if head.pid != self.pid or started != self.start_time:
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
            state: State
            precopy = pre or not continued
            if not precopy:
                # Much written since the last checkpoint: copy it while the target
                # runs, so that the frozen window only sees what is written meanwhile.
                expected = self.tracker.prime()
                # Shared objects are copied whole in the frozen round anyway.
                precopy = expected.written >= PRECOPY_MIN_BYTES
            if precopy:
                # Running round: new VMAs are armed, and what it finds copied, while the target runs.
                rnd = self.tracker.round(final=False)
                wholes = rnd.whole
                copied += self._copy_running(rnd, writer)
            others: list[TaskImage] = []   # a tree's other live tasks
            if pre:
                final = rnd
                state = State()
                records = self._vma_records(final)
            else:
                # Work that need not be frozen: settle the running round, read
                # the VMA flags, fault in a copy buffer big enough for what is
                # being written now (with room for what comes until the freeze).
                expected = self.tracker.prime()
                self._reader().reserve(expected.total + expected.written // 4 + (1 << 20))
                objects = ObjectSet(self.pid, self.ghost_limit)
                with FrozenTree(self.pid, self.freeze_timeout) as tree:
                    proc = tree.processes[self.pid]
                    # Frozen time counts from the first PTRACE_INTERRUPT.
                    t_freeze = time.monotonic() - tree.freeze_time
                    # Task state first: its injected syscalls return to user mode
                    # once each, which lets the kernel refresh the rseq areas; the
                    # memory copied afterwards is what the threads will resume with.
                    state = taskstate.capture(proc, objects)
                    proc.release_injector()
                    # Without tracking afterwards, registering VMAs now would only
                    # keep them from merging with the target's later mappings.
                    final = self.tracker.round(final=True, arm=self.track)
                    chunk, lost = self._reader().read(final.copy, final.via_mem, final.objects)
                    if lost:
                        raise TargetError(f"pages of pid {self.pid} could not be read: "
                                          + ", ".join(f"{s:#x}-{e:#x}" for s, e in lost[:4]))
                    # The memfds and deleted files only mapped (the fds gave the others).
                    objects.from_mappings(m for m, k in zip(final.maps, final.kinds) if k in (SHMEM, FILE_PRIVATE))
                    state = dataclasses.replace(state, objects=tuple(objects.records()))
                    records = self._vma_records(final, objects)
                    others = self._capture_tree(tree)
                    state = dataclasses.replace(state, tree=self._tree_records(tree, state, others),
                                                shared_memory=_share_memory(self.pid, records, others))
                    # Kill only what a restore can bring back: decided here, with
                    # the state captured and the target still frozen.  Otherwise
                    # thaw it (KillRefused is raised once the checkpoint is stored).
                    kill = after == "kill" and restorability.assess_tree(
                        [(state, records), *((o.state, o.records) for o in others)]).restorable
                    frozen = time.monotonic() - t_freeze
                    t_release = time.monotonic()
                    if kill:
                        for pid, task_state in [(self.pid, state), *((o.pid, o.state) for o in others)]:
                            files.before_kill(pid, task_state)   # a TCP connection closes silently
                        tree.kill()  # not frozen time: the tree never runs again
                        self.target_gone = True
                    else:
                        tree.thaw(stop=after == "stop")
                        frozen += time.monotonic() - t_release
                copied += self._store(chunk, final.zero, writer)
                objects.store(writer)
                try:
                    for other in others:
                        copied += other.store(writer, tree.tasks[other.pid].start_time)
                finally:
                    for other in others:
                        other.reader.close()
            data_ranges = ranges.normalize((v.start, v.end) for v in records if v.kind in DATA_KINDS)
            whole = ranges.intersect(ranges.union(wholes, final.whole), data_ranges)
            state = dataclasses.replace(
                state, target=Target(pid=self.pid, start_time=self.start_time),
                tracking=Tracking(version=TRACKING_STATE_VERSION, armed=ranges.to_bytes(self.tracker.armed),
                                  untrackable=tuple((s, e, why) for (s, e), why in final.untrackable)))
            for (s, e), why in final.untrackable:
                notes.append(f"{s:#x}-{e:#x} is not tracked ({why}): stored whole in every checkpoint")
            # A shared mapping read from the page tables (no map_files) whose file object an fd
            # gave whole: nothing of it "may be missing", the note the tracker made is moot.
            whole_objects = tuple(f"{v.start:#x}-{v.end:#x} " for v in records if v.object is not None)
            notes.extend(n for n in final.notes if not n.startswith(whole_objects))
            if not self.track and not self.target_gone:
                notes.append("write tracking ends with this dump (--no-track): the next dump is full")
            verdict = restorability.assess_tree([(state, records), *((o.state, o.records) for o in others)],
                                                kind=kind)

            def report(cp: Checkpoint) -> DumpReport:
                return DumpReport(checkpoint=cp, kind=kind, tracking=note, frozen_seconds=frozen,
                                  wall_seconds=time.monotonic() - t0, pages_written=final.written_pages,
                                  pages_copied=copied // 4096, notes=list(notes),
                                  restorable=verdict.restorable, unrestorable=list(verdict.reasons),
                                  restore_notes=list(verdict.notes), killed=self.target_gone,
                                  restorable_with=list(verdict.needs))

            self._committing = (writer.id, report)  # from here an interrupt may find it committed
            cp = writer.commit(vmas=records, present=final.present, whole=whole, state=state)
        self.last_id = cp.id
        notes.extend(self._hand_over_tracking(cp.id))
        return report(cp)

    # -- tracking continuity ---------------------------------------------------------------

    def _prepare_tracking(self, head: Checkpoint | None) -> str:
        """Get a uffd and a tracker; return "continued", "new" or "lost: why"."""
        if self.tracker is not None and head is not None and self.last_id == head.id:
            if not self._exec_since(head, self.uffd):
                return "continued"
            self.close()
            with contextlib.suppress(CkptError):
                tracking.stop(self.pid)  # its holder holds the dead address space's uffd too
            self._start_tracking()
            self.tracker = Tracker(self.pid, self.uffd)
            return f"lost: {self._exec_why}"
        if self.tracker is not None:
            self.close()
        record, uffd, why = self._find_tracking(head)
        if uffd is None:
            self._start_tracking()
        else:
            self.uffd, self.record = uffd, record
            try:
                # From now on the tracking state is in flux: should this dump fail,
                # the next one must not trust it (re-armed pages would be lost).
                self.record = tracking.mark(record, checkpoint_id=None, dumper_pid=os.getpid(),
                                            dumper_start_time=procfs.start_time(os.getpid()))
            except (CkptError, OSError) as err:
                # Unmarked, the record would vouch for pages this dump re-arms:
                # end that holder and start afresh, without a holder.
                self.tracking_problem = f"the tracking registry cannot be written: {err}"
                self.close()
                with contextlib.suppress(CkptError, OSError):
                    tracking.stop(self.pid)
                self._start_tracking()
                why = "the tracking registry cannot be written"
        if head is not None and not why:
            armed = ranges.from_bytes(head.state.tracking.armed if head.state.tracking is not None else b"")
            self.tracker = Tracker(self.pid, self.uffd, armed=armed, present=head.present)
            self.tracker.seed_flags(head.vmas)
            return "continued"
        self.tracker = Tracker(self.pid, self.uffd)
        if head is None:
            return "new"
        return f"lost: {why or 'not tracked'}"

    def _find_tracking(self, head: Checkpoint | None) -> tuple[tracking.TrackingRecord | None, int | None, str]:
        """The holder tracking this target, its uffd taken, and why it cannot be
        continued from ``head`` ("" if it can); (None, None, why) if there is none."""
        here = str(self.images.path)
        try:
            record, why = tracking.lookup(self.pid)
            if record is not None and record.busy:
                raise TargetError(f"pid {self.pid} is being dumped by another ckpt (pid {record.dumper_pid}, "
                                  f"into {record.images_dir}); wait until it is done")
            uffd = None
            if record is not None:
                uffd = tracking.take_uffd(record.holder_pid, record.holder_start_time, record.holder_fd)
                if uffd is None:
                    record, why = None, f"tracking holder {record.holder_pid} is gone"
            else:
                # A holder whose record was lost keeps every VMA registered with a
                # uffd nobody reaches (a new uffd's UFFDIO_REGISTER: EBUSY): adopt it.
                adopted = tracking.adopt_orphan(self.pid, here)
                if adopted is not None:
                    record, uffd = adopted
                    why = f"an orphaned tracking holder (pid {record.holder_pid}) was adopted, its state unknown"
        except TargetError:
            raise
        except CkptError as err:  # the registry cannot be used: this session tracks, nothing persists
            self.tracking_problem = str(err)
            return None, None, "the tracking registry cannot be used"
        if self._exec_since(head, -1 if uffd is None else uffd):
            if uffd is not None:
                os.close(uffd)
                with contextlib.suppress(CkptError):
                    tracking.stop(self.pid)
            return None, None, self._exec_why
        if record is None or uffd is None or head is None or why:
            return record, uffd, why
        if record.checkpoint_id is None:
            why = "a previous dump did not complete"
        elif record.images_dir != here:
            why = f"it was tracking for {record.images_dir}"
        elif record.checkpoint_id != head.id:
            why = f"it matches checkpoint {record.checkpoint_id}, not {head.id}"
        return record, uffd, why

    def _start_tracking(self) -> None:
        """Inject a new uffd into the target and start an attached holder for it,
        published at once (state "dumping") so that ``ckpt track`` sees it
        (no holder with ``track=False``: tracking ends with this session)."""
        self.uffd = self._inject_uffd()  # owned from here on: close() releases it on any error
        self.record = None
        if self.tracking_problem or not self.track:
            return
        try:
            # Its interpreter starts while this dump works.
            self.holder = tracking.spawn_holder(self.pid, self.uffd)
            self.record = tracking.publish(self.holder.record(str(self.images.path), None))
        except (CkptError, OSError) as err:
            self.tracking_problem = str(err) if isinstance(err, CkptError) else \
                f"cannot start a tracking holder: {err.strerror or err}"
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None

    @property
    def _exec_why(self) -> str:
        return f"ended: pid {self.pid} exec'd a new program (its tracked address space is gone)"

    def _exec_since(self, head: Checkpoint | None, uffd: int) -> bool:
        """Whether the target exec'd since tracking began (or since ``head``): then
        the uffd (if any, >= 0) belongs to an address space that no longer exists."""
        if not self._target_alive():
            return False  # exited: its mm is gone too, and the dump says so as before
        if uffd >= 0 and not tracking.address_space_alive(uffd, self.pid):
            return True
        saved = head.state.mm.auxv if head is not None and head.state.mm is not None else None
        if not isinstance(saved, bytes):
            return False
        # auxv is written at each exec (fs/binfmt_elf.c create_elf_tables): its
        # AT_RANDOM and AT_EXECFN point into the new, randomized stack.  (This also
        # catches an exec whose old mm lives on in a CLONE_VM sibling, where the
        # uffd probe above still succeeds.)
        try:
            return procfs.read_auxv(self.pid) != saved
        except OSError:
            return False

    def _inject_uffd(self) -> int:
        """Create a userfaultfd inside the target and take it; the target's fd table
        is left exactly as it was (the injected fd is closed in the target)."""
        with FrozenProcess(self.pid, self.freeze_timeout) as proc:
            flags = os.O_CLOEXEC | os.O_NONBLOCK | uffd_sys.UFFD_USER_MODE_ONLY
            # Should ckpt die before the close below, the injector closes the new fd itself.
            fd = proc.inject(SYS_userfaultfd, flags, undo=(SYS_close, 0))
            if -fd in (errno.EMFILE, errno.ENFILE):
                raise TargetError(f"userfaultfd() in target {self.pid} failed: {os.strerror(-fd)} (its "
                                  "RLIMIT_NOFILE, or the system's file table, is full); nothing was written")
            if fd < 0:
                raise KernelUnsupported("userfaultfd", f"userfaultfd() in the target failed: "
                                        f"{os.strerror(-fd)}; an old kernel, or ckpt without the privilege?")
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

    def _hand_over_tracking(self, checkpoint_id: int) -> list[str]:
        """Make sure a holder keeps the uffd, consistent with ``checkpoint_id`` (or,
        with ``track=False``, that none does).

        Runs after the commit: whatever fails here, the checkpoint stands; the
        returned notes say that tracking could not be kept (the next dump is full).
        """
        if self.target_gone or not self.track:
            if self.record is not None:
                holder = -1 if self.target_gone else _holder_pidfd(self.record)
                with contextlib.suppress(CkptError):
                    tracking.stop(self.pid)
                if holder >= 0:
                    # Until it exits, its reference keeps the target's VMAs registered.
                    try:
                        pidfd_sys.wait_exit(holder, 5.0)
                    finally:
                        os.close(holder)
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None
            self.record = None
            return []
        here = str(self.images.path)
        try:
            if self.holder is not None:
                holder = self.holder
                holder.wait_ready()
                self.record = tracking.publish(holder.record(here, checkpoint_id))
                self.holder = None
                try:
                    holder.detach()
                except CkptError:
                    self.holder = holder  # abandoned below; its record names a dead holder
                    raise
            elif self.record is not None:
                self.record = tracking.mark(self.record, checkpoint_id=checkpoint_id, images_dir=here)
            elif self.tracking_problem:
                return [f"tracking is not kept after this dump ({self.tracking_problem}): the next dump will be full"]
        except (CkptError, OSError) as err:
            why = str(err) if isinstance(err, CkptError) else f"the registry: {err.strerror or err}"
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None
            self.record = None
            return [f"tracking could not be kept ({why}): the next dump will be full"]
        return []

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
            chunk, lost = self._reader().read(batch, rnd.via_mem, rnd.objects)
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

    def _vma_records(self, rnd: Round, objects: ObjectSet | None = None) -> list[VmaRecord]:
        return vma_records(self.pid, rnd, objects)

    # -- the other tasks of a tree ---------------------------------------------------------

    def _capture_tree(self, tree: FrozenTree) -> list[TaskImage]:
        """Everything of the tree's other live tasks, frozen with the target: each one's
        state, and its pages whole (tracking them between dumps is not built yet)."""
        others: list[TaskImage] = []
        try:
            for pid in tree.order[1:]:
                if pid in tree.processes:
                    others.append(capture_task(tree.processes[pid], self.ghost_limit))
        except BaseException:
            for other in others:
                other.reader.close()
            raise
        return others

    def _tree_records(self, tree: FrozenTree, state: State, others: list[TaskImage]) -> tuple[Task, ...]:
        """The ``state.tree`` of the checkpoint: every task, with the open files it shares
        (:mod:`ckpt.files.tree`); () for a target without descendants."""
        if len(tree.order) == 1:
            return ()
        states = {self.pid: state, **{o.pid: o.state for o in others}}
        shared = sharing({pid: tree.tasks[pid].ppid for pid in tree.order}, states)
        out = []
        for pid in tree.order:
            t = tree.tasks[pid]
            s = shared.get(pid, Sharing())
            out.append(Task(pid=pid, ppid=t.ppid, pgid=t.pgid, sid=t.sid, state=t.state, exit_status=t.exit_status,
                            stop_signal=t.stop_signal, start_time=t.start_time, comm=t.comm,
                            inherited=s.inherited if pid != self.pid else (),
                            shared_with=s.shared_with))
        return tuple(out)


@dataclass
class TaskImage:
    """One other live task of a dumped tree, as read while the tree was frozen."""

    pid: int
    state: State
    records: list[VmaRecord]
    final: Round
    chunk: Chunk
    objects: ObjectSet
    reader: MemoryReader
    left_out: list[Range] = field(default_factory=list)   # stored by another task (treememory)

    def store(self, tree_writer: Any, start_time: int | None) -> int:
        """Stage this task's checkpoint in the tree's writer; return the bytes stored."""
        try:
            writer = tree_writer.task_writer(self.pid)
            stored = Dumper._store(_drop(self.chunk, self.left_out), ranges.subtract(self.final.zero, self.left_out),
                                   writer)
            self.objects.store(writer)
            data_ranges = ranges.normalize((v.start, v.end) for v in self.records if v.kind in DATA_KINDS)
            state = dataclasses.replace(self.state, target=Target(pid=self.pid, start_time=start_time))
            writer.stage(vmas=self.records, present=self.final.present,
                         whole=ranges.intersect(self.final.whole, data_ranges), state=state)
        finally:
            self.reader.close()
        return stored


def _share_memory(root: int, records: list[VmaRecord], others: list[TaskImage]) -> tuple[SharedMemory, ...]:
    """The tree's shared anonymous memory (:func:`ckpt.treememory.shared_objects`), each object
    stored once: the pages other tasks' checkpoints leave out are set on them."""
    shared, left_out = treememory.shared_objects([(root, records), *((o.pid, o.records) for o in others)])
    for other in others:
        other.left_out = left_out.get(other.pid, [])
    return shared


def capture_task(proc: FrozenProcess, ghost_limit: int) -> TaskImage:
    """Read a frozen task whole: its task state (injected syscalls first, as for the target),
    then every page it has, without arming anything."""
    pid = proc.pid
    objects = ObjectSet(pid, ghost_limit)
    state = taskstate.capture(proc, objects)
    proc.release_injector()
    tracker = Tracker(pid, -1)
    reader = MemoryReader(pid)
    try:
        final = tracker.round(final=True, arm=False)
        # The round's shared objects are read through fds the tracker holds: close it after.
        chunk, lost = reader.read(final.copy, final.via_mem, final.objects)
        if lost:
            raise TargetError(f"pages of pid {pid} could not be read: "
                              + ", ".join(f"{s:#x}-{e:#x}" for s, e in lost[:4]))
        objects.from_mappings(m for m, k in zip(final.maps, final.kinds) if k in (SHMEM, FILE_PRIVATE))
        state = dataclasses.replace(state, objects=tuple(objects.records()))
        records = vma_records(pid, final, objects)
    except BaseException:
        reader.close()
        raise
    finally:
        tracker.close()
    return TaskImage(pid=pid, state=state, records=records, final=final, chunk=chunk, objects=objects, reader=reader)


def vma_records(pid: int, rnd: Round, objects: ObjectSet | None = None) -> list[VmaRecord]:
    """The VMA records of the final round (``objects``: the file objects recorded, which
    mappings of memfds and deleted files refer to).

    A file mapping also records the identity of the file its path leads to
    (device, inode, mount id, size, mtime), but only when that file is the
    mapped one: a restore opens the path without following symlinks and
    requires that identity (ckpt/trust.py).  The mapped file is known from
    /proc/PID/map_files/START-END when ckpt may read it (root, the target
    still alive), else from the maps device and inode.
    """
    from . import trust  # here, not at the top: only this function needs it
    from ._sys import fs

    def path_identity(m: procfs.Mapping) -> tuple[trust.FileIdentity, int, int] | None:
        try:
            mapped: trust.FileIdentity | None = trust.FileIdentity.of(
                f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
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
        obj = None
        if objects is not None and kind in (SHMEM, FILE_PRIVATE):   # not in a pre-dump
            obj = objects.id_of_mapping(m)
            if obj is None and ranges.covers(rnd.kept, m.start, m.end):
                # The tracker left its content to the object, which could not be opened after all.
                raise TargetError(f"the mapping {m.start:#x}-{m.end:#x} of {m.path} could not be read")
        out.append(VmaRecord(start=m.start, end=m.end, perms=m.perms, offset=m.offset, dev=m.dev,
                             inode=m.inode, path=m.path, flags=tuple(sorted(m.flags)), kind=kind,
                             file_size=size, file_mtime_ns=mtime,
                             file_dev=file_id.dev if file_id else None,
                             file_ino=file_id.ino if file_id else None,
                             file_mnt_id=file_id.mnt_id if file_id else None, object=obj))
    return out


def _holder_pidfd(record: tracking.TrackingRecord) -> int:
    """A pidfd of the record's holder, -1 if it is gone (or its pid was reused)."""
    try:
        pfd = pidfd_sys.pidfd_open(record.holder_pid)
    except OSError:
        return -1
    try:
        if procfs.start_time(record.holder_pid) == record.holder_start_time:
            return pfd
    except OSError:
        pass
    os.close(pfd)
    return -1


def _drop(chunk: Chunk, lost: list[Range]) -> Chunk:
    """A chunk without the ranges that could not be read."""
    keep = ranges.subtract(chunk.ranges, lost)
    data = bytearray()
    for address, piece in chunk.pieces():
        for s, e in ranges.clip(keep, address, address + len(piece)):
            data += piece[s - address : e - address]
    return Chunk(keep, data)


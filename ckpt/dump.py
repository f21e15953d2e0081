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

The target's descendants are frozen with it (:class:`ckpt.live.tree.FrozenTree`) and
checkpointed with it, each into ``tasks/PID/`` of the same checkpoint, the same way:
each task has its own tracking (:class:`ckpt.tasktracking.TaskTracking`); before the
freeze, a task dumped whole gets a running round that copies its pages; in the frozen
window, each one's task state and the pages written since (its own last checkpoint,
or that running round).  A task forked since the running phase is read whole while
frozen (its uffd injected through the frozen task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from . import cow, files, log, namedshm, procfs, ranges, restorability, sharedincr, taskstate, tracking, treememory
from ._sys.libc import tune_malloc
from .errors import (AccessDenied, CkptError, ImageError, Interrupted, InterruptedAfterCommit,
                     KillRefused, NoSuchProcess, StorageError, TargetError, TargetExited, UsageError)
from .image import Checkpoint, ImageDir, VmaRecord
from .image.imagedir import MAX_LEVEL, MIN_LEVEL
from .image.schema import SchemaError, SharedMemory, State, Target, Task, Tracking
from .live import DEFAULT_FREEZE_TIMEOUT, FrozenProcess, check_target, wrap_process_errors
from .live.tree import FrozenTree, descendants
from .memcopy import Chunk, MemoryReader, split
from .ranges import Range
from .tasktracking import TaskTracking
from .files.ghost import DEFAULT_GHOST_LIMIT
from .files.objects import ObjectSet
from .files.survey import FreezeView
from .files.tree import Sharing, sharing, table_shared
from .tracker import DATA_KINDS, FILE_PRIVATE, FILE_SHARED, SHMEM, Round, Tracker

After = Literal["run", "stop", "kill"]
Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)

# Bytes copied per batch while the target runs (the reader's buffer: a memory budget).  16 MiB,
# not 64: the buffer's pages are touched fresh by each dump (16,384 first touches at 64 MiB,
# 4.7 us each on this VM, and as long again to unmap them at exit), and the compressing
# workers get their first frames sooner.  Full dumps of 1 GiB took 5-10 % less CPU.
COPY_CHUNK = 16 << 20
PRECOPY_MIN_BYTES = 4 << 20  # an incremental dump copies this much while running first
PRECOPY_ROUNDS = 4           # running rounds at most, each copying what was written during the last
# Raw bytes of an incremental's running round kept in memory until the frozen round
# said which of its pages were written again (those are then stored once, in their
# final version: CheckpointWriter.hold).  Beyond it the oldest are written as they come.
HOLD_MAX_BYTES = 512 << 20
TRACKING_STATE_VERSION = 1


def _summary_count(key: str, doc: str) -> property:
    """A read-only attribute of :class:`DumpReport`: the checkpoint summary's ``key``."""
    def get(self: DumpReport) -> int:
        return int(self.checkpoint.summary()[key])
    get.__doc__ = f"{doc} (``--json`` key {key!r}; summed over a tree's tasks)."
    return property(get)


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
        """The ``ckpt dump --json`` object: every key is an attribute of the same name."""
        d = self.checkpoint.summary()
        d.update(kind=self.kind, tracking=self.tracking, frozen_ms=self.frozen_ms, wall_ms=self.wall_ms,
                 pages_written=self.pages_written, pages_copied=self.pages_copied, notes=self.notes,
                 restorable=self.restorable, unrestorable=self.unrestorable, restore_notes=self.restore_notes,
                 killed=self.killed, restorable_with=self.restorable_with, images_dir=self.images_dir)
        return d

    # The JSON's other keys, as attributes: the checkpoint's summary (Checkpoint.summary).
    @property
    def id(self) -> int:
        """The checkpoint's id in its images directory."""
        return self.checkpoint.id

    @property
    def parent(self) -> int | None:
        """The id of the checkpoint it is incremental to (None: full)."""
        return self.checkpoint.parent

    @property
    def time(self) -> float:
        """When the checkpoint was taken (seconds since the epoch)."""
        return self.checkpoint.time

    @property
    def pid(self) -> int:
        """The pid of the process dumped (a tree's root)."""
        return self.checkpoint.pid

    @property
    def frozen_ms(self) -> float:
        """``frozen_seconds`` in milliseconds, rounded to the microsecond."""
        return round(self.frozen_seconds * 1e3, 3)

    @property
    def wall_ms(self) -> float:
        """``wall_seconds`` in milliseconds, rounded to the microsecond."""
        return round(self.wall_seconds * 1e3, 3)

    @property
    def images_dir(self) -> str:
        """The images directory the checkpoint is in."""
        return str(self.checkpoint.image_dir.path)

    processes = _summary_count("processes", "Processes in the checkpoint (1, or a tree's live tasks)")
    pages_present = _summary_count("pages_present", "Pages present in the process(es) at the checkpoint")
    pages_stored = _summary_count("pages_stored", "Pages this checkpoint stores (the others resolve from its parents)")
    pages_zero = _summary_count("pages_zero", "Pages stored as zero ranges, without data")
    bytes_raw = _summary_count("bytes_raw", "Bytes of page data stored, before compression")
    bytes_compressed = _summary_count("bytes_compressed", "Bytes of page data stored, compressed")
    vmas = _summary_count("vmas", "Mappings (VMA records) in the checkpoint")
    frames = _summary_count("frames", "zstd frames written")


def dump(pid: int, images_dir: str | os.PathLike[str], *, pre: bool = False, after: After = "run",
         compression_level: int = 1, progress: Progress | None = None,
         freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT, track: bool = True,
         ghost_limit: int = DEFAULT_GHOST_LIMIT, fsync: bool = True) -> DumpReport:
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
    ``fsync=False`` (``ckpt dump --no-fsync``) commits without any fsync: the checkpoint
    is still atomic against a crash of ckpt (written, then renamed), not against a power
    loss or a kernel crash (CRIU's guarantee; docs/FORMAT.md section 5).
    A SIGINT/SIGTERM that arrives once the checkpoint is committed raises
    :class:`ckpt.errors.InterruptedAfterCommit`, whose ``report`` is this
    function's result: the checkpoint was taken.
    """
    check_options(compression_level=compression_level, pre=pre, after=after, freeze_timeout=freeze_timeout,
                  ghost_limit=ghost_limit)
    with Dumper(pid, images_dir, compression_level=compression_level, progress=progress,
                freeze_timeout=freeze_timeout, track=track, ghost_limit=ghost_limit, fsync=fsync) as dumper:
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
                 track: bool = True, ghost_limit: int = DEFAULT_GHOST_LIMIT, fsync: bool = True) -> None:
        check_options(compression_level=compression_level, freeze_timeout=freeze_timeout, ghost_limit=ghost_limit)
        check_target(pid)
        self.freeze_timeout = freeze_timeout
        self.ghost_limit = ghost_limit
        tune_malloc()
        self.pid = pid
        with wrap_process_errors(pid, "reading /proc"):
            self.start_time = procfs.start_time(pid)
        self.images = ImageDir(images_dir, create=True, durable=fsync)
        self.compression_level = compression_level
        self.fsync = fsync   # False: checkpoints committed without fsync (see dump())
        self.progress = progress
        self.track = track
        self.tracking = TaskTracking(pid, self.start_time, self.images, track=track, freeze_timeout=freeze_timeout)
        self.others: dict[int, TaskTracking] = {}   # the tree's other live tasks, by pid
        self._mem_reader: MemoryReader | None = None
        self._shared_buffer = bytearray()   # the tree's shared anonymous pages (ckpt/sharedincr.py)
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
        self.tracking.close()
        for task in self.others.values():
            task.close()
        self.others.clear()

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
        log.begin("pre-dump" if pre else "dump", pid=self.pid, images=self.images.path)
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
            for task in [self.tracking, *self.others.values()]:
                task.last_id = None
                task.abandon_holder()
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
        if not self.tracking.alive():
            return TargetExited(self.pid, "dump")
        if err.errno in (errno.EPERM, errno.EACCES):
            return AccessDenied(self.pid, "dump", err.strerror or "")
        return TargetError(f"dump of pid {self.pid} failed: {err}")

    def _previous(self) -> tuple[Checkpoint | None, list[str]]:
        """The checkpoint this dump continues (its parent; None in an empty directory), and
        notes: this process's newest checkpoint in the directory, else the checkpoint it was
        restored from, proven by the origin record its restore made (ckpt/tracking.py
        :class:`~ckpt.tracking.Origin`; never guessed from a pid or a name).  A directory
        holding only other processes' checkpoints is refused (ImageError)."""
        def own(cp: Checkpoint) -> bool:
            owner = cp.state.target
            started = owner.start_time if owner is not None and owner.start_time is not None else self.start_time
            return cp.pid == self.pid and started == self.start_time

        head = self.images.head
        if head is None or own(head):
            return head, []
        mine = [cp for cp in self.images.checkpoints if own(cp)]
        if mine:
            return mine[-1], [f"checkpoints {mine[-1].id + 1}..{head.id} are another branch: this one "
                              f"continues checkpoint {mine[-1].id}, this process's newest"]
        try:
            origin = tracking.lookup_origin(self.pid)
        except CkptError:
            origin = None   # the registry cannot be used: no proof of lineage
        if origin is None or origin.target_start_time != self.start_time or not origin.of_dir(self.images.path):
            raise ImageError(f"{self.images.path} holds checkpoints of another process (pid {head.pid}); "
                             "use a new directory (a process restored from this directory continues its "
                             "chain: this one was not)")
        try:
            base = self.images.checkpoint(origin.checkpoint_id)
        except CkptError:
            return None, [f"checkpoint {origin.checkpoint_id}, which pid {self.pid} was restored from, is no longer "
                          "in the directory: this dump starts a new chain in it"]
        notes = []
        if base.id != head.id:
            notes.append(f"pid {self.pid} was restored from checkpoint {base.id}: this checkpoint continues it, "
                         f"a branch beside checkpoints {base.id + 1}..{head.id}")
        return base, notes

    def _dump_locked(self, pre: bool, after: After, t0: float) -> DumpReport:
        # The checkpoint this one continues ("head" below): not always the newest, when the
        # process was restored from an older one (a branch of the chain).
        head, notes = self._previous()
        note = self.tracking.prepare(head)
        log.mark("lock and tracking", tracking=note)
        continued = note == "continued"
        kind = "pre" if pre else ("incremental" if continued else "full")
        parent = head.id if head is not None else None
        tracker = self.tracking.tracker
        assert tracker is not None
        if not continued and head is not None:
            notes.append(f"this dump is full: {note.removeprefix('lost: ')}")
        if self.tracking.moved_from is not None:
            notes.append(f"tracking moves from {self.tracking.moved_from} to {self.tracking.here}: the next dump "
                         f"into {self.tracking.moved_from} will be full")
            self.tracking.moved_from = None   # said once (a --every session continues here)

        with wrap_process_errors(self.pid, "dump", attached=True), \
                self.images.new_checkpoint(kind=kind, parent=parent, pid=self.pid,
                                           compression_level=self.compression_level,
                                           durable=self.fsync) as writer:
            copied = 0
            wholes: list[Range] = []
            frozen = 0.0
            state: State
            precopy = pre or not continued
            if not precopy:
                # Much written since the last checkpoint: copy it while the target
                # runs, so that the frozen window only sees what is written meanwhile.
                expected = tracker.prime()
                _plain_records(self.pid, *tracker.layout())   # the frozen window's VMA records, made now
                # Shared objects are copied whole in the frozen round anyway.
                precopy = expected.written >= PRECOPY_MIN_BYTES
            if precopy:
                # Running round: new VMAs are armed, and what it finds copied, while the target runs.
                rnd = tracker.round(final=False)
                wholes = rnd.whole
                # An incremental's running round copies pages the target is writing: the
                # frozen round may copy them again.  Hold them raw, so that the writer
                # stores only the final version (compressed after the thaw, never frozen).
                # A full dump's running round copies everything: written at once.
                if continued and not pre:
                    writer.hold(HOLD_MAX_BYTES)
                last = self._copy_running(rnd, writer)
                copied += last
                rounds = 1
                # What the target wrote while that round copied is copied again while it runs,
                # as long as it shrinks, so that the frozen round copies only what is written
                # after the last one (redis under 20,000 SET/s writes ~10,000 pages during a
                # round of ~50,000: ~40 MB to copy while frozen).  An incremental holds them
                # too; a full dump writes them as they come, as its first round.
                while not pre and rounds < PRECOPY_ROUNDS:
                    again = tracker.prime().written
                    if again < PRECOPY_MIN_BYTES or again * 2 > last:
                        break
                    rnd = tracker.round(final=False)
                    wholes = ranges.union(wholes, rnd.whole)
                    last = self._copy_running(rnd, writer)
                    copied += last
                    rounds += 1
                writer.end_hold()
                log.mark("copy while running", bytes=copied, rounds=rounds)
            others: list[TaskImage] = []   # a tree's other live tasks
            if pre:
                final = rnd
                state = State()
                records = self._vma_records(final)
                # Shared anonymous memory whole (a pre-dump records no fork count: the next dump
                # stores it whole too, ckpt/sharedincr.py); read while the target runs.
                plans, _ = sharedincr.decide([sharedincr.Mapper(self.pid, rnd, None, None)], None, None, {self.pid})
                root_shared = plans[self.pid]
                chunks, self._shared_buffer = sharedincr.read(plans, self._shared_buffer)
                if self.pid in chunks:
                    copied += self._store(chunks[self.pid], [], writer)
            else:
                # Work that need not be frozen: settle the running round, read
                # the VMA flags, fault in a copy buffer big enough for what is
                # being written now (with room for what comes until the freeze).
                expected = tracker.prime()
                _plain_records(self.pid, *tracker.layout())   # the frozen window's VMA records, made now
                self._reader().reserve(expected.total + expected.written // 4 + (1 << 20))
                if len(self._shared_buffer) < expected.anon_shared:
                    self._shared_buffer = bytearray(expected.anon_shared + expected.anon_shared // 4 + (1 << 20))
                objects = ObjectSet(self.pid, self.ghost_limit)
                running = self._run_tree(head, writer, notes)
                # Who else maps the shared anonymous memory, read while the tree runs (sharedincr).
                outside = sharedincr.outside_mappers() if head is not None else None
                tracker.scan_guards()   # after the last running round: the frozen one needs no full scan
                log.mark("prepare the freeze", other_tasks=len(running))
                with _readers_closed(running), FrozenTree(self.pid, self.freeze_timeout) as tree:
                    proc = tree.processes[self.pid]
                    # Frozen time counts from the first PTRACE_INTERRUPT.
                    t_freeze = time.monotonic() - tree.freeze_time
                    log.mark("freeze", tasks=len(tree.processes))
                    # Task state first: its injected syscalls return to user mode
                    # once each, which lets the kernel refresh the rseq areas; the
                    # memory copied afterwards is what the threads will resume with.
                    view = FreezeView()   # what every task's capture shares: who holds which fd
                    state = taskstate.capture(proc, objects, view, guards=False)   # the round tells them
                    proc.release_injector()
                    log.mark("task state")
                    # Without tracking afterwards, registering VMAs now would only
                    # keep them from merging with the target's later mappings.
                    final = tracker.round(final=True, arm=self.track, maps=proc.layout())
                    chunk, lost = self._reader().read(final.copy, final.via_mem, final.objects)
                    if lost:
                        raise TargetError(f"pages of pid {self.pid} could not be read: "
                                          + ", ".join(f"{s:#x}-{e:#x}" for s, e in lost[:4]))
                    guards = (ranges.to_bytes(final.guards) if final.guards is not None
                              else taskstate.guard_regions(self.pid))
                    state = dataclasses.replace(state, mm=dataclasses.replace(state.mm, guard=guards))
                    log.mark("final round and copy", pages=final.written_pages)
                    # The memfds and deleted files only mapped (the fds gave the others).
                    objects.from_mappings(m for m, k in zip(final.maps, final.kinds) if k in (SHMEM, FILE_PRIVATE))
                    state = dataclasses.replace(state, objects=tuple(objects.records()))
                    paths: dict[str, Any] = {}   # what each mapped path leads to, for every task
                    records = self._vma_records(final, objects, paths)
                    others = self._capture_tree(tree, head, notes, paths, running, writer, view, objects.kept)
                    state = dataclasses.replace(state, tree=self._tree_records(tree, state, others),
                                                shared_memory=_share_memory(self.pid, records, others),
                                                # Only SHMEM records can be segments: one cheap pass
                                                # over 20,000 records, not a call per record.
                                                sysv_shm=namedshm.segments(self.pid,
                                                                           [v for v in records if v.kind == SHMEM]))
                    _store_tables_once(state.tree, others)
                    _share_cow(self.pid, tree, others, head)   # COW pages a task shares with its parent: ckpt/cow.py
                    root_shared, shared_chunks = self._capture_shared(head if continued else None, final, others,
                                                                      outside, set(tree.processes), notes)
                    log.mark("other tasks and shared memory", tasks=len(others))
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
                        held = tree.wait_reaped()
                        if held:
                            notes.append(f"pids {', '.join(map(str, held))} of the killed tree were not reaped yet: "
                                         "a restore needs them free")
                    else:
                        tree.thaw(stop=after == "stop")
                        frozen += time.monotonic() - t_release
                    log.mark("kill" if kill else "thaw", frozen_ms=round(frozen * 1e3, 1))
                copied += self._store(chunk, final.zero, writer)
                if self.pid in shared_chunks:
                    copied += self._store(shared_chunks[self.pid], [], writer)
                objects.store(writer)
                try:
                    for other in others:
                        copied += other.store(writer, tree.tasks[other.pid].start_time)
                finally:
                    for other in others:
                        other.reader.close()
                log.mark("compress and write", bytes=copied)
            data_ranges = ranges.normalize((v.start, v.end) for v in records if v.kind in DATA_KINDS)
            whole = ranges.intersect(ranges.union(ranges.union(wholes, final.whole), root_shared.whole), data_ranges)
            state = dataclasses.replace(
                state, target=Target(pid=self.pid, start_time=self.start_time),
                tracking=Tracking(version=TRACKING_STATE_VERSION, armed=self.tracking.armed_state(),
                                  untrackable=tuple((s, e, why) for (s, e), why in final.untrackable),
                                  forks=None if pre else root_shared.forks, shared=root_shared.shared))
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
            log.mark("fsync and commit", checkpoint=cp.id)
        for task in [self.tracking, *(o.tracking for o in others if o.tracking is not None)]:
            task.last_id = cp.id
            task.gone = self.target_gone
            notes.extend(task.hand_over(cp.id))
        log.mark("holder handover")
        return report(cp)

    def _capture_shared(self, head: Checkpoint | None, final: Round, others: list[TaskImage],
                        outside: dict[sharedincr.Key, set[int]] | None, tree: set[int], notes: list[str]
                        ) -> tuple[sharedincr.TaskShared, dict[int, Chunk]]:
        """In the frozen window, once every task's round ran: what each task stores of the
        shared anonymous memory it maps, incrementally where sound (ckpt/sharedincr.py),
        read from the objects now.  The others' parts go on their :class:`TaskImage`."""
        mappers = [sharedincr.Mapper(self.pid, final, head, self.tracking.forks(), self.tracking.counter_why,
                                     self.tracking.watch)]
        for o in others:
            t = o.tracking
            mappers.append(sharedincr.Mapper(o.pid, o.final, o.previous, t.forks() if t is not None else None,
                                             t.counter_why if t is not None else "not tracked",
                                             t.watch if t is not None else -1, o.left_out))
        plans, shared_notes = sharedincr.decide(mappers, head, outside, tree)
        notes.extend(shared_notes)
        chunks, self._shared_buffer = sharedincr.read(plans, self._shared_buffer)
        for m, o in zip(mappers[1:], others):
            o.shared_plan, o.shared_chunk, o.forks = plans[o.pid], chunks.get(o.pid), m.forks
        root = plans[self.pid]
        root.forks = mappers[0].forks
        return root, chunks

    # -- copying -------------------------------------------------------------------------

    def _reader(self) -> MemoryReader:
        if self._mem_reader is None:
            self._mem_reader = MemoryReader(self.pid)
        return self._mem_reader

    def _copy_running(self, rnd: Round, writer: Any) -> int:
        tracker = self.tracking.tracker
        assert tracker is not None
        return copy_running(rnd, self._reader(), tracker, writer, self.progress)

    @staticmethod
    def _store(chunk: Chunk, zero: list[Range], writer: Any) -> int:
        writer.add_ranges(chunk.ranges, chunk.data)
        if zero:
            writer.add_zero_pages(zero)
        return len(chunk.data)

    def _vma_records(self, rnd: Round, objects: ObjectSet | None = None,
                     paths: dict[str, Any] | None = None) -> list[VmaRecord]:
        return vma_records(self.pid, rnd, objects, paths)

    # -- the other tasks of a tree ---------------------------------------------------------

    def _run_tree(self, head: Checkpoint | None, writer: Any, notes: list[str]) -> dict[int, RunningTask]:
        """While the tree runs: get the tracking of each other task /proc shows now, and copy
        the memory of those dumped whole (first dump, tracking lost) in a running round, as
        for the target, so that the frozen window holds only what they write meanwhile.  A
        task that exits meanwhile is left to the freeze (which does not find it)."""
        running: dict[int, RunningTask] = {}
        try:
            self._run_tasks(head, writer, notes, running)
        except BaseException:
            for ran in running.values():
                ran.reader.close()
            raise
        return running

    def _run_tasks(self, head: Checkpoint | None, writer: Any, notes: list[str],
                   running: dict[int, RunningTask]) -> None:
        for pid in descendants(self.pid):
            try:
                stat = procfs.read_stat(pid)
            except OSError:
                continue
            if stat.state in ("Z", "X"):
                continue   # a zombie: nothing to track (the freeze records it)
            start_time = stat.start_time
            task = self.others.get(pid)
            if task is not None and task.start_time != start_time:
                self.others.pop(pid).close()
                task = None
            if task is None:
                task = self.others[pid] = TaskTracking(pid, start_time, self.images, track=self.track,
                                                       freeze_timeout=self.freeze_timeout)
            try:
                self._run_task(task, head, writer, notes, running)
            except (OSError, NoSuchProcess, TargetExited, AccessDenied):
                if task.alive():
                    raise
                # Gone (or a zombie: ptrace refuses to seize one) meanwhile: the freeze
                # finds what it is.  A task ckpt may not trace fails the freeze by name.
                ran = running.pop(pid, None)
                if ran is not None:
                    ran.reader.close()
                    if ran.writer is not None:
                        writer.drop_task(pid)
                self.others.pop(pid).close()

    def _run_task(self, task: TaskTracking, head: Checkpoint | None, writer: Any, notes: list[str],
                  running: dict[int, RunningTask]) -> None:
        """One task while it runs: its tracking, and the running round of a whole dump."""
        pid = task.pid
        previous = _task_checkpoint(head, pid, task.start_time)
        note = task.prepare(previous)
        if previous is not None and note != "continued":
            notes.append(f"pid {pid} stored whole: {note.removeprefix('lost: ')}")
        ran = running[pid] = RunningTask(task, MemoryReader(pid), note=note)
        if note == "continued" and head is not None:
            ran.kind, ran.parent = "incremental", head.id
            return
        assert task.tracker is not None
        rnd = task.tracker.round(final=False, arm=self.track)
        # Shared memory is read whole in the frozen round, which also decides which task
        # of the tree stores an object they share (ckpt/treememory.py): not copied here.
        shared = ranges.normalize((m.start, m.end) for m, kind in zip(rnd.maps, rnd.kinds) if kind == SHMEM)
        rnd = dataclasses.replace(rnd, copy=ranges.subtract(rnd.copy, shared), zero=ranges.subtract(rnd.zero, shared))
        # Pages still its parent's (COW since a fork) are the parent's to store; the frozen
        # window checks again which still are (_share_cow).
        ran.cow_skipped = _cow_now(pid, procfs.read_stat(pid).ppid)
        rnd = dataclasses.replace(rnd, copy=ranges.subtract(rnd.copy, ran.cow_skipped))
        ran.writer = writer.task_writer(pid)
        ran.wholes = rnd.whole
        copy_running(rnd, ran.reader, task.tracker, ran.writer)

    def _capture_tree(self, tree: FrozenTree, head: Checkpoint | None, notes: list[str],
                      paths: dict[str, Any], running: dict[int, RunningTask], writer: Any,
                      view: FreezeView | None = None, kept: dict[tuple[int, int], int] | None = None
                      ) -> list[TaskImage]:
        """Everything of the tree's other live tasks, frozen with the target: each one's
        state, and its pages -- those written since its own last checkpoint when its
        tracking continues from it (each task has its own, :class:`TaskTracking`), all it
        has otherwise, arming its memory for the next dump.  ``kept``: the file objects an
        earlier task keeps (:class:`ckpt.files.objects.ObjectSet`), stored once."""
        others: list[TaskImage] = []
        for pid in [p for p in self.others if p not in tree.processes]:
            self.others.pop(pid).close()   # exited: its tracking went with its memory
        try:
            for pid in tree.order[1:]:
                if pid not in tree.processes:
                    continue
                start_time = tree.tasks[pid].start_time
                task = self.others.get(pid)
                if task is not None and task.start_time != start_time:
                    self.others.pop(pid).close()   # its pid was reused
                    task = None
                if task is None:
                    task = self.others[pid] = TaskTracking(pid, start_time, self.images, track=self.track,
                                                           freeze_timeout=self.freeze_timeout)
                ran = running.pop(pid, None)
                if ran is not None and ran.tracking is task:
                    note, reader = ran.note, ran.reader
                else:   # found by the freeze: forked since, or out of the running phase's reach
                    previous = _task_checkpoint(head, pid, start_time)
                    note = task.prepare(previous, tree.processes[pid])
                    if previous is not None and note != "continued":
                        notes.append(f"pid {pid} stored whole: {note.removeprefix('lost: ')}")
                    ran = RunningTask(task, MemoryReader(pid), kind="incremental" if note == "continued" else "full",
                                      parent=head.id if note == "continued" and head is not None else None)
                    reader = ran.reader
                image = capture_task(tree.processes[pid], self.ghost_limit, task.tracker, arm=self.track,
                                     paths=paths, reader=reader, view=view, kept=kept)
                image.tracking, image.kind, image.parent = task, ran.kind, ran.parent
                if ran.kind == "incremental":
                    image.previous = _task_checkpoint(head, pid, start_time)
                image.writer, image.wholes, image.cow_skipped = ran.writer, ran.wholes, ran.cow_skipped
                others.append(image)
            for pid, ran in running.items():   # exited, or left the tree, before the freeze
                ran.reader.close()
                if ran.writer is not None:
                    writer.drop_task(pid)
                if self.others.get(pid) is ran.tracking:
                    self.others.pop(pid).close()
            running.clear()
        except BaseException:
            for other in others:
                other.reader.close()
            for ran in running.values():
                ran.reader.close()
            for task in self.others.values():
                task.last_id = None   # what this attempt re-armed was never stored
                task.abandon_holder()
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
                            shared_with=s.shared_with, shares=t.shares if pid != self.pid else ()))
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
    kind: str = "full"               # "incremental" when its tracking continued from the last checkpoint
    parent: int | None = None        # then: the checkpoint it continues
    tracking: TaskTracking | None = None
    writer: Any = None               # its task writer, if a running round filled it already
    wholes: list[Range] = field(default_factory=list)   # what that round stored whole
    left_out: list[Range] = field(default_factory=list)   # stored by another task (treememory)
    previous: Checkpoint | None = None   # its own last checkpoint, when its tracking continued from it
    shared_plan: sharedincr.TaskShared = field(default_factory=sharedincr.TaskShared)   # ckpt/sharedincr.py
    shared_chunk: Chunk | None = None
    forks: int | None = None             # its fork counter in the frozen window
    cow: list[Range] = field(default_factory=list)           # its pages that are its parent's (ckpt/cow.py)
    cow_skipped: list[Range] = field(default_factory=list)   # left out as such by the running round
    cow_chunk: Chunk | None = None       # pages left out as shared earlier that are its own now

    def store(self, tree_writer: Any, start_time: int | None) -> int:
        """Stage this task's checkpoint in the tree's writer; return the bytes stored."""
        try:
            writer = self.writer or tree_writer.task_writer(self.pid, kind=self.kind, parent=self.parent)
            stored = Dumper._store(_drop(self.chunk, self.left_out), ranges.subtract(self.final.zero, self.left_out),
                                   writer)
            if self.shared_chunk is not None:
                stored += Dumper._store(self.shared_chunk, [], writer)
            if self.cow_chunk is not None:
                stored += Dumper._store(self.cow_chunk, [], writer)
            self.objects.store(writer)
            data_ranges = ranges.normalize((v.start, v.end) for v in self.records if v.kind in DATA_KINDS)
            state = dataclasses.replace(self.state, target=Target(pid=self.pid, start_time=start_time),
                                        cow=ranges.to_bytes(self.cow))
            if self.tracking is not None and self.tracking.tracker is not None:
                state = dataclasses.replace(state, tracking=Tracking(
                    version=TRACKING_STATE_VERSION, armed=self.tracking.armed_state(),
                    untrackable=tuple((s, e, why) for (s, e), why in self.final.untrackable),
                    forks=self.forks, shared=self.shared_plan.shared))
            whole = ranges.union(ranges.union(self.wholes, self.final.whole), self.shared_plan.whole)
            writer.stage(vmas=self.records, present=self.final.present,
                         whole=ranges.intersect(whole, data_ranges), state=state)
        finally:
            self.reader.close()
        return stored


def copy_running(rnd: Round, reader: MemoryReader, tracker: Tracker, writer: Any,
                 progress: Progress | None = None) -> int:
    """Copy a running round's pages batch by batch into the writer; the bytes copied."""
    total = ranges.total(rnd.copy)
    done = 0
    for batch in split(rnd.copy, COPY_CHUNK):
        chunk, lost = reader.read(batch, rnd.via_mem, rnd.objects)
        if lost:
            # Unmapped meanwhile, most likely; the frozen round sees the truth.
            # Pages still mapped are re-armed already, so keep them for it.
            tracker.carry = ranges.union(tracker.carry, lost)
            chunk = _drop(chunk, lost)
        done += Dumper._store(chunk, [], writer)
        if progress:
            progress("copy", done, total)
    writer.add_zero_pages(rnd.zero)
    return done


@dataclass
class RunningTask:
    """Another task of the tree, prepared while it runs: its tracking, and for a full dump
    of it the pages a running round copied into its checkpoint already."""

    tracking: TaskTracking
    reader: MemoryReader
    writer: Any = None                 # its task writer, once a running round copied something
    wholes: list[Range] = field(default_factory=list)
    kind: str = "full"
    parent: int | None = None
    note: str = ""
    cow_skipped: list[Range] = field(default_factory=list)   # its parent's pages, not copied (ckpt/cow.py)


@contextlib.contextmanager
def _readers_closed(running: dict[int, RunningTask]) -> Iterator[None]:
    """Close the readers of the running phase that the frozen one did not take over (all of
    them when the freeze or the target's capture fails)."""
    try:
        yield
    finally:
        for ran in running.values():
            ran.reader.close()


def _task_checkpoint(head: Checkpoint | None, pid: int, start_time: int | None) -> Checkpoint | None:
    """Task ``pid``'s own checkpoint in ``head``, if ``head`` recorded that very process alive."""
    if head is None:
        return None
    entry = next((t for t in head.tree if t.pid == pid), None)
    if entry is None or entry.state == "zombie":
        return None
    if entry.start_time != start_time and not _restored_from(head, pid, start_time):
        return None
    try:
        return head.task(pid)   # read before the freeze (_dump_locked): from the cache here
    except CkptError:
        return None   # unreadable: this task's dump is full (verify says what is wrong)


def _restored_from(cp: Checkpoint, pid: int, start_time: int | None) -> bool:
    """Whether live task ``pid`` was restored from checkpoint ``cp`` (its pid is the recorded
    one, a tree's tasks get theirs back): proven by the origin record its restore made."""
    try:
        origin = tracking.lookup_origin(pid)
    except CkptError:
        return False
    return (origin is not None and origin.target_start_time == start_time and origin.checkpoint_id == cp.id
            and origin.of_dir(cp.image_dir.path))


def _store_tables_once(tree: tuple[Task, ...], others: list[TaskImage]) -> None:
    """A task sharing its parent's fd table (``Task.shares`` CLONE_FILES) keeps no open files
    in its checkpoint: they are its parent's, stored there (``files.tree.table_shared``).
    After ``Task.inherited`` was read from them (its children's fds come from its table)."""
    sharers = {t.pid for t in tree if "CLONE_FILES" in t.shares}
    for other in others:
        if other.pid in sharers:
            other.state = table_shared(other.state)


def _share_memory(root: int, records: list[VmaRecord], others: list[TaskImage]) -> tuple[SharedMemory, ...]:
    """The tree's shared anonymous memory (:func:`ckpt.treememory.shared_objects`), each object
    stored once: the pages other tasks' checkpoints leave out are set on them."""
    if not others:
        return ()   # an object is shared between two tasks at least (a pass over every VMA spared)
    tasks = [(root, records), *((o.pid, o.records) for o in others)]
    shared, left_out = treememory.shared_objects(tasks)
    _, named = treememory.shared_objects(tasks, select=namedshm.named)   # SysV, /dev/shm: ckpt/namedshm.py
    for other in others:
        other.left_out = ranges.union(left_out.get(other.pid, []), named.get(other.pid, []))
    return shared


def _cow_now(pid: int, parent: int, exclude: list[Range] | None = None,
             maps: Callable[[int], Any] = procfs.read_maps, within: list[Range] | None = None) -> list[Range]:
    """The pages of ``pid`` that are still its parent's (:func:`ckpt.cow.shared_with_parent`),
    among ``within`` when given; none when either is gone meanwhile."""
    try:
        return cow.shared_with_parent(pid, parent, exclude or (), maps, within)
    except (OSError, ValueError):
        return []


def _share_cow(root: int, tree: FrozenTree, others: list[TaskImage], head: Checkpoint | None = None) -> None:
    """In the frozen window: each other task's pages that are still its parent's at the same
    address (COW since a fork) are left out of its checkpoint -- the parent's holds them, and a
    restore shares them again (ckpt/cow.py).  Pages left out so earlier (the task's last
    checkpoint, this dump's running round) that are no longer shared are read now.  A task
    whose parent itself shares a VMA with *its* parent keeps that VMA's pages: one level."""
    by_pid = {o.pid: o for o in others}
    read = functools.lru_cache(maxsize=None)(procfs.read_maps)   # a parent's once for all its children
    before = {t.pid: t for t in head.tree} if head is not None else {}
    for o in others:   # tree order: a parent before its children
        ppid = tree.tasks[o.pid].ppid
        if ppid != root and ppid not in by_pid:
            continue
        # Between two processes that both lived through the last checkpoint, fork made every
        # page they share: a page shared now was shared then, so only the pages the task left
        # out then need comparing (a write, a discard since: no longer shared).
        within = None
        parent_then = before.get(ppid)
        if (o.kind == "incremental" and o.previous is not None and before.get(o.pid) is not None
                and before[o.pid].ppid == ppid and parent_then is not None
                and parent_then.start_time == tree.tasks[ppid].start_time and (ppid == root or by_pid[ppid].kind == "incremental")):
            within = ranges.from_bytes(o.previous.state.cow)
        o.cow = _cow_now(o.pid, ppid, by_pid[ppid].cow if ppid in by_pid else None, read, within)
        skipped = list(o.cow_skipped)
        if o.kind == "incremental" and o.previous is not None and o.previous.state.cow:
            skipped = ranges.union(skipped, ranges.from_bytes(o.previous.state.cow))
        # (present is computed lazily, after the thaw otherwise: only when something was skipped)
        own = ranges.subtract(cow.lost(skipped, o.cow, o.final.present), o.final.copy) if skipped else []
        if own:
            reader = MemoryReader(o.pid)   # o.reader's buffer holds o.chunk
            try:
                chunk, failed = reader.read(own, via_mem=own)   # /proc/PID/mem: pins nothing
                if failed:
                    raise TargetError(f"pages of pid {o.pid} could not be read: "
                                      + ", ".join(f"{s:#x}-{e:#x}" for s, e in failed[:4]))
                o.cow_chunk = Chunk(chunk.ranges, bytearray(chunk.data))
            finally:
                reader.close()
        o.left_out = ranges.union(o.left_out, o.cow)


def capture_task(proc: FrozenProcess, ghost_limit: int, tracker: Tracker | None = None,
                 arm: bool = False, paths: dict[str, Any] | None = None,
                 reader: MemoryReader | None = None, view: FreezeView | None = None,
                 kept: dict[tuple[int, int], int] | None = None) -> TaskImage:
    """Read a frozen task: its task state (injected syscalls first, as for the target), then
    its pages: with ``tracker`` (the task's own, kept by the caller) what it says to copy,
    arming new VMAs with ``arm``; without, every page it has, arming nothing.  ``view``:
    what the tasks frozen together share (ckpt/files/survey.py); ``kept``: the file objects
    other tasks of the tree keep already (:class:`ckpt.files.objects.ObjectSet`)."""
    pid = proc.pid
    objects = ObjectSet(pid, ghost_limit, kept)
    state = taskstate.capture(proc, objects, view)
    proc.release_injector()
    own = tracker is None
    rounds = Tracker(pid, -1) if tracker is None else tracker
    reader = MemoryReader(pid) if reader is None else reader
    try:
        final = rounds.round(final=True, arm=arm and not own, maps=proc.layout())
        # The round's shared objects are read through fds the tracker holds: close it after.
        chunk, lost = reader.read(final.copy, final.via_mem, final.objects)
        if lost:
            raise TargetError(f"pages of pid {pid} could not be read: "
                              + ", ".join(f"{s:#x}-{e:#x}" for s, e in lost[:4]))
        objects.from_mappings(m for m, k in zip(final.maps, final.kinds) if k in (SHMEM, FILE_PRIVATE))
        state = dataclasses.replace(state, objects=tuple(objects.records()))
        records = vma_records(pid, final, objects, paths)
        state = dataclasses.replace(state, sysv_shm=namedshm.segments(pid, records))
    except BaseException:
        reader.close()
        raise
    finally:
        if own:
            rounds.close()
    return TaskImage(pid=pid, state=state, records=records, final=final, chunk=chunk, objects=objects, reader=reader)


def vma_records(pid: int, rnd: Round, objects: ObjectSet | None = None,
                paths: dict[str, Any] | None = None) -> list[VmaRecord]:
    """The VMA records of the final round (``objects``: the file objects recorded, which
    mappings of memfds and deleted files refer to; ``paths``: what each path led to, shared
    by the tasks of one dump, which map the same libraries).

    A file mapping also records the identity of the file its path leads to
    (device, inode, mount id, size, mtime), but only when that file is the
    mapped one: a restore opens the path without following symlinks and
    requires that identity (ckpt/trust.py).  The mapped file is known from
    /proc/PID/map_files/START-END when ckpt may read it (root, the target
    still alive), else from the maps device and inode.
    """
    from . import trust  # here, not at the top: only this function needs it
    from ._sys import fs

    known = {} if paths is None else paths

    def path_leads_to(path: str) -> tuple[trust.FileIdentity, int, int] | None:
        if path not in known:
            try:
                fd = fs.openat2(path, os.O_PATH, fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS)
            except OSError:
                known[path] = None
                return None
            try:
                st = os.fstat(fd)
                known[path] = trust.FileIdentity.of(fd=fd), st.st_size, st.st_mtime_ns
            finally:
                os.close(fd)
        return known[path]

    # Mappings of one file (10,000 in zdtm maps06) that the maps identity settles: one answer.
    same_file: dict[tuple[str, str, int], tuple[trust.FileIdentity, int, int]] = {}

    def path_identity(m: procfs.Mapping) -> tuple[trust.FileIdentity, int, int] | None:
        settled = same_file.get((m.path, m.dev, m.inode))
        if settled is not None:
            return settled
        found = path_leads_to(m.path)
        if found is None:
            return None
        # The maps device and inode are the mapped inode's (its superblock's s_dev): equal to
        # what the path's stat gives, they are that file, and no statx of map_files is
        # needed (a hundred per process, in the frozen window).  They differ where stat
        # reports another device (overlayfs, btrfs subvolumes): then ask map_files.
        by_maps = trust.maps_identity(m.dev, m.inode)
        if by_maps is not None and (by_maps.dev, by_maps.ino) == (found[0].dev, found[0].ino):
            same_file[(m.path, m.dev, m.inode)] = found
            return found
        try:
            mapped: trust.FileIdentity | None = trust.FileIdentity.of(
                f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
        except OSError:  # EPERM without CAP_CHECKPOINT_RESTORE; ENOENT once the target died
            mapped = by_maps
        if mapped is None or (found[0].dev, found[0].ino) != (mapped.dev, mapped.ino):
            return None  # the path leads elsewhere now: a restore must refuse it
        return found

    plain = _plain_records(pid, rnd.maps, rnd.kinds)
    out = list(plain.records)
    object_of: dict[tuple[str, int], int | None] = {}   # ObjectSet.id_of_mapping goes by dev and inode
    for i in plain.special:
        m, kind = rnd.maps[i], rnd.kinds[i]
        ident = None
        if (kind in (FILE_PRIVATE, FILE_SHARED) and m.path.startswith("/")
                or kind == SHMEM and m.path.startswith(namedshm.SHM_DIR)) and not m.deleted:
            ident = path_identity(m)
        file_id, size, mtime = ident if ident is not None else (None, None, None)
        obj = None
        if objects is not None and kind in (SHMEM, FILE_PRIVATE):   # not in a pre-dump
            key = (m.dev, m.inode)
            obj = object_of[key] if key in object_of else object_of.setdefault(key, objects.id_of_mapping(m))
            if obj is None and ranges.covers(rnd.kept, m.start, m.end):
                # The tracker left its content to the object, which could not be opened after all.
                raise TargetError(f"the mapping {m.start:#x}-{m.end:#x} of {m.path} could not be read")
        out[i] = VmaRecord(start=m.start, end=m.end, perms=m.perms, offset=m.offset, dev=m.dev,
                           inode=m.inode, path=m.path, flags=tuple(sorted(m.flags)), kind=kind,
                           file_size=size, file_mtime_ns=mtime,
                           file_dev=file_id.dev if file_id else None,
                           file_ino=file_id.ino if file_id else None,
                           file_mnt_id=file_id.mnt_id if file_id else None, object=obj)
    return out


@dataclass
class _PlainRecords:
    """The VMA records of one layout that depend on the mapping alone (anonymous memory,
    special and device mappings), and the indices of the others (file mappings, shared
    memory), which :func:`vma_records` makes at dump time: a file's identity and the
    objects are read with the target frozen."""

    maps: list[procfs.Mapping]
    kinds: list[str]
    records: list[VmaRecord | None]
    special: list[int]


# Per pid, the last layout's plain records: made before the freeze (Dumper primes it while
# the target runs) and reused by the frozen window when the layout is the same (the maps
# lists compare by identity first: procfs and the tracker reuse their Mapping objects).
_PLAIN: dict[int, _PlainRecords] = {}


def _plain_records(pid: int, maps: list[procfs.Mapping], kinds: list[str]) -> _PlainRecords:
    """The plain VMA records of ``maps`` (see :class:`_PlainRecords`), kept per pid."""
    hit = _PLAIN.get(pid)
    if hit is not None and hit.kinds == kinds and hit.maps == maps:
        return hit
    records: list[VmaRecord | None] = []
    special: list[int] = []
    for i, (m, kind) in enumerate(zip(maps, kinds)):
        if kind in (FILE_PRIVATE, FILE_SHARED, SHMEM):
            records.append(None)
            special.append(i)
        else:
            records.append(VmaRecord(start=m.start, end=m.end, perms=m.perms, offset=m.offset, dev=m.dev,
                                     inode=m.inode, path=m.path, flags=tuple(sorted(m.flags)), kind=kind))
    if len(_PLAIN) >= 16 and pid not in _PLAIN:   # a long-lived caller dumping many processes
        _PLAIN.clear()
    _PLAIN[pid] = made = _PlainRecords(list(maps), list(kinds), records, special)
    return made


def _drop(chunk: Chunk, lost: list[Range]) -> Chunk:
    """A chunk without the ranges that could not be read."""
    keep = ranges.subtract(chunk.ranges, lost)
    data = bytearray()
    for address, piece in chunk.pieces():
        for s, e in ranges.clip(keep, address, address + len(piece)):
            data += piece[s - address : e - address]
    return Chunk(keep, data)


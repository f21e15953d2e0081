"""Write tracking of one task between dumps: its userfaultfd, its tracker, its holder.

A dump arms userfaultfd write-protection on the task's memory (the uffd is injected into
the task, then taken with pidfd_getfd); between dumps a holder process keeps the uffd, so
that the next dump -- another ckpt process -- takes it back and its PAGEMAP_SCAN finds what
was written since (ckpt/tracking.py keeps the registry of holders, ckpt/holder.py is the
holder).  :class:`TaskTracking` is that life cycle for one task: the root of a dump, and
each other live task of its tree, has one.  Tracking continues only from the task's own
previous checkpoint, by the same holder, with no exec in between; otherwise the dump of
the task is full and says why.
"""

from __future__ import annotations

import contextlib
import errno
import os

from . import procfs, ranges, tracking
from ._sys import inotify
from . import forkcount
from .forkcount import ForkCounter
from ._sys import pidfd as pidfd_sys
from ._sys import uffd as uffd_sys
from ._sys.libc import SYS_close, SYS_userfaultfd
from .errors import CkptError, KernelUnsupported, TargetError
from .image import Checkpoint, ImageDir
from .live import DEFAULT_FREEZE_TIMEOUT, FrozenProcess, wrap_process_errors
from .tracker import Tracker

__all__ = ["TaskTracking"]


class TaskTracking:
    """The write tracking of task ``pid`` for dumps into ``images``."""

    def __init__(self, pid: int, start_time: int, images: ImageDir, *, track: bool = True,
                 freeze_timeout: float = DEFAULT_FREEZE_TIMEOUT) -> None:
        self.pid = pid
        self.start_time = start_time
        self.images = images
        self.track = track
        self.freeze_timeout = freeze_timeout
        self.uffd = -1
        self.tracker: Tracker | None = None
        self.last_id: int | None = None   # checkpoint the in-memory tracker matches
        self.record: tracking.TrackingRecord | None = None
        self.holder: tracking.Holder | None = None  # started by this session, not detached yet
        self.tracking_problem = ""  # why tracking cannot be kept past this session, if it cannot
        self.gone = False           # the task was killed after its checkpoint (dump --kill)
        # Its fork counter (ckpt/forkcount.py), opened with the uffd, kept by the holder with it;
        # None with ``counter_why`` saying why (its shared memory is then stored whole).
        self.counter: ForkCounter | None = None
        self.counter_why = "no fork counter"
        # An inotify instance watching the shared anonymous objects it maps for writes through
        # a file descriptor (ckpt/sharedincr.py); -1 without one.  Kept by the holder too.
        self.watch = -1
        # The images directory the holder tracked for before this dump took it over (another
        # chain, whose next dump will be full), or None.
        self.moved_from: str | None = None

    def close(self) -> None:
        """Release the uffd and the tracker; end a holder this session started but never
        handed a checkpoint to (a detached holder keeps tracking for the next dump)."""
        self.abandon_holder()
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        if self.counter is not None:
            self.counter.close()
            self.counter = None
            self.counter_why = "no fork counter"
        if self.watch >= 0:
            os.close(self.watch)
            self.watch = -1
        if self.uffd >= 0:
            os.close(self.uffd)
            self.uffd = -1

    def abandon_holder(self) -> None:
        """End the holder this session started, if it has not been handed a checkpoint."""
        if self.holder is not None:
            self.holder.abandon()
            self.holder = None

    def forks(self) -> int | None:
        """The fork counter's reading (None without one): read in the frozen window, so that
        the next checkpoint can tell whether the task forked since (ckpt/sharedincr.py)."""
        if self.counter is None:
            return None
        try:
            return self.counter.read()
        except OSError as err:
            self.counter_why = f"the fork counter cannot be read: {err.strerror or err}"
            return None

    def armed_state(self) -> bytes:
        """The ranges armed now, for the checkpoint's ``state.tracking.armed``."""
        assert self.tracker is not None
        return ranges.to_bytes(self.tracker.armed)

    def alive(self) -> bool:
        """The task is still the process tracking began with, and not a zombie."""
        try:
            return procfs.start_time(self.pid) == self.start_time and procfs.read_status(self.pid).state != "Z"
        except OSError:
            return False


    def prepare(self, head: Checkpoint | None, proc: FrozenProcess | None = None) -> str:
        """Get a uffd and a tracker; return "continued", "new" or "lost: why".

        ``head``: this task's own last checkpoint (None: there is none); ``proc``: the task
        frozen already (a tree's), to inject a new uffd through instead of freezing it."""
        if self.tracker is not None and head is not None and self.last_id == head.id:
            if not self._exec_since(head, self.uffd):
                return "continued"
            self.close()
            with contextlib.suppress(CkptError):
                tracking.stop(self.pid)  # its holder holds the dead address space's uffd too
            self._start(proc)
            self.tracker = Tracker(self.pid, self.uffd)
            return f"lost: {self._exec_why}"
        if self.tracker is not None:
            self.close()
        record, uffd, why = self._find(head)
        if uffd is None:
            self._start(proc)
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
                self._start(proc)
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

    def _find(self, head: Checkpoint | None) -> tuple[tracking.TrackingRecord | None, int | None, str]:
        """The holder tracking this target, its uffd taken, and why it cannot be
        continued from ``head`` ("" if it can); (None, None, why) if there is none."""
        here = self.here
        try:
            record, why = tracking.lookup(self.pid)
            if why == "not tracked":
                why = "no tracking holder keeps its writes"
            if record is not None and record.busy:
                raise TargetError(f"pid {self.pid} is being dumped by another ckpt (pid {record.dumper_pid}, "
                                  f"into {record.images_dir}); wait until it is done")
            uffd = None
            if record is not None:
                uffd = tracking.take_uffd(record.holder_pid, record.holder_start_time, record.holder_fd)
                if uffd is None:
                    record, why = None, f"tracking holder {record.holder_pid} is gone"
                else:
                    self._take_counter(record)
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
        if record is not None and uffd is not None and record.checkpoint_id is not None \
                and not record.tracks_for(self.images.path):
            # The one uffd of the process now serves this directory: the other chain's next
            # dump will be full (docs/DESIGN.md "Tracking follows the latest directory").
            self.moved_from = record.images_dir
        if record is None or uffd is None or head is None or why:
            return record, uffd, why
        if record.checkpoint_id is None:
            why = "a previous dump did not complete"
        elif not record.tracks_for(self.images.path):
            why = (f"tracking of pid {self.pid} moved to {record.images_dir} when it was dumped there "
                   "(ckpt tracks a process's writes for one images directory at a time)")
        elif record.checkpoint_id != head.id:
            why = f"the tracking holder is consistent with checkpoint {record.checkpoint_id}, not {head.id}"
        return record, uffd, why

    def _start(self, proc: FrozenProcess | None = None) -> None:
        """Inject a new uffd into the target and start an attached holder for it,
        published at once (state "dumping") so that ``ckpt track`` sees it
        (no holder with ``track=False``: tracking ends with this session)."""
        forkcount.tracepoint_ids()   # found once, before the freeze (it may mount a private tracefs)
        self.uffd = self._inject_uffd(proc)  # owned from here on: close() releases it on any error
        self.record = None
        if self.tracking_problem or not self.track:
            return
        try:
            # Its interpreter starts while this dump works.
            self.holder = tracking.spawn_holder(self.pid, self.uffd,
                                                tuple(self.counter.fds) if self.counter is not None else (),
                                                self.watch if self.watch >= 0 else None)
            self.record = tracking.publish(self.holder.record(self.here, None))
        except (CkptError, OSError) as err:
            self.tracking_problem = str(err) if isinstance(err, CkptError) else \
                f"cannot start a tracking holder: {err.strerror or err}"
            if self.holder is not None:
                self.holder.abandon()
                self.holder = None

    @property
    def _exec_why(self) -> str:
        return f"pid {self.pid} exec'd a new program (its tracked address space is gone)"

    @property
    def here(self) -> str:
        """The images directory's absolute path, as records name it."""
        return os.path.realpath(self.images.path)

    def _exec_since(self, head: Checkpoint | None, uffd: int) -> bool:
        """Whether the target exec'd since tracking began (or since ``head``): then
        the uffd (if any, >= 0) belongs to an address space that no longer exists."""
        if not self.alive():
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

    def _inject_uffd(self, proc: FrozenProcess | None = None) -> int:
        """Create a userfaultfd inside the target and take it; the target's fd table
        is left exactly as it was (the injected fd is closed in the target)."""
        with contextlib.nullcontext(proc) if proc is not None else FrozenProcess(self.pid, self.freeze_timeout) as proc:
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
                    mine = take_target_fd(self.pid, fd)
            finally:
                proc.inject(SYS_close, fd)
            # While the task is frozen: no thread of it can be created meanwhile (ckpt/forkcount.py).
            self._open_counter()
        enable_wp_async(mine)
        return mine

    def _open_counter(self) -> None:
        """Open the task's fork counter (it must be frozen); without one, say why."""
        if self.counter is not None:
            self.counter.close()
            self.counter = None
        if self.watch >= 0:
            os.close(self.watch)
            self.watch = -1
        try:
            self.counter = ForkCounter.open(self.pid)
            self.watch = inotify.inotify_init1(inotify.IN_NONBLOCK | inotify.IN_CLOEXEC)
        except OSError as err:
            self.counter_why = err.strerror or str(err)
            if self.counter is not None:
                self.counter.close()
                self.counter = None

    def _take_counter(self, record: tracking.TrackingRecord) -> None:
        """Take the fork counter the holder keeps with the uffd, if it keeps one."""
        fds = tracking.take_fds(record.holder_pid, record.holder_start_time, record.counter_fds, tracking.PERF_LINK)
        watch = None if record.watch_fd is None else tracking.take_fds(
            record.holder_pid, record.holder_start_time, (record.watch_fd,), tracking.INOTIFY_LINK)
        if fds is None or watch is None:
            self.counter_why = "its tracking holder keeps no fork counter"
            for fd in (fds or []) + (watch or []):
                os.close(fd)
        else:
            self.counter, self.watch = ForkCounter(fds), watch[0]

    def hand_over(self, checkpoint_id: int) -> list[str]:
        """Make sure a holder keeps the uffd, consistent with ``checkpoint_id`` (or,
        with ``track=False``, that none does).

        Runs after the commit: whatever fails here, the checkpoint stands; the
        returned notes say that tracking could not be kept (the next dump is full).
        """
        if self.gone or not self.track:
            if self.record is not None:
                holder = -1 if self.gone else _holder_pidfd(self.record)
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
        here = self.here
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


def take_target_fd(pid: int, fd: int) -> int:
    """Duplicate fd ``fd`` of process ``pid`` into ckpt (``pidfd_getfd``: the same ptrace
    access as a dump needs, kernel/pid.c ``pidfd_getfd``)."""
    pfd = pidfd_sys.pidfd_open(pid)
    try:
        return pidfd_sys.pidfd_getfd(pfd, fd)
    finally:
        os.close(pfd)


def enable_wp_async(uffd: int) -> None:
    """Handshake ``uffd`` (UFFDIO_API with ckpt's features); KernelUnsupported, ``uffd``
    closed, unless the kernel grants asynchronous write-protection."""
    try:
        granted = uffd_sys.api(uffd, uffd_sys.CKPT_FEATURES)
    except OSError as err:
        os.close(uffd)
        raise KernelUnsupported("UFFD_FEATURE_WP_ASYNC", str(err)) from err
    if not granted & uffd_sys.UFFD_FEATURE_WP_ASYNC:
        os.close(uffd)
        raise KernelUnsupported("UFFD_FEATURE_WP_ASYNC")

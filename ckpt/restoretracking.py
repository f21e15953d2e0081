"""A restored process keeps its chain: write tracking armed by the restore itself.

A restore knows exactly what memory it wrote: the content of checkpoint K.  So just
before the process is released (every thread still stopped, its registers loaded or
about to be), the restore puts the process in the state a dump of checkpoint K leaves
it in: a userfaultfd created inside it (injected, taken with ``pidfd_getfd``, the
process's own copy closed: its fd table is as restored), every range K's
``state.tracking.armed`` names registered with ``UFFDIO_REGISTER_MODE_WP`` and
write-protected (``PAGEMAP_SCAN`` with ``PM_SCAN_WP_MATCHING``: markers on unpopulated
pages too), then the uffd handed to a tracking holder (ckpt/holder.py) whose registry
record says "consistent with checkpoint K of DIR" (DIR by device and inode).  A page
the process writes after its release is then reported written by the next dump's
written-scan, exactly as in a process that was dumped as K and ran on: that dump is an
incremental child of K (ckpt/dump.py ``Dumper._previous``) -- a branch of the chain
when K is not the newest checkpoint.

Every armed range is registered, or none is: a range K armed that the restored process
could not arm would read as "not written" and lose its writes, so any failure drops the
tracking (the next dump is full, and says why).  Ranges K did not arm are stored whole
by the next dump, as they would have been.  The holder also keeps a fork counter and an
inotify for the process (:meth:`RestoredTracking._open_counter`): the first dump stores
shared anonymous memory whole (its objects are new inodes), the ones after it
incrementally (ckpt/sharedincr.py).

Besides the tracking, the restore records the process's *origin* (:class:`ckpt.tracking.Origin`):
proof that it continues checkpoint K of DIR, which outlives the holder.  Without a
holder, the next dump of the process into DIR is full but still K's child; a different
process is still refused ("holds checkpoints of another process").

A restore that fails or is killed leaves nothing behind: the holder is *attached*
(ckpt/holder.py) until the process was released and its record published, and exits
when the restore's pipe to it closes; the origin is written only after the release.

Trees: every live task is armed from its own sub-checkpoint's ranges and gets its origin.
The non-root tasks get their recorded pids back (ckpt/pstree.py), so the next dump finds
each one's sub-checkpoint ``tasks/PID/`` of K by pid, and the origin proves that the task,
with its new start time, is the one restored from it (ckpt/dump.py ``_task_checkpoint``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable

from . import procfs, ranges, tracking
from ._sys import inotify
from ._sys import uffd as uffd_sys
from ._sys.libc import SYS_close, SYS_userfaultfd
from ._sys.pagemap import PagemapScanner
from .errors import CkptError
from .forkcount import ForkCounter
from .image import Checkpoint
from .tasktracking import enable_wp_async, take_target_fd

__all__ = ["RestoredTracking"]

# The tracking state versions this module can continue (ckpt/dump.py TRACKING_STATE_VERSION).
_VERSIONS = (1,)

Inject = Callable[..., int]   # Rebuilder.inject: (nr, *args, what=...) -> value, OSError on -errno


class RestoredTracking:
    """The tracking a restore arms in process ``pid`` restored from checkpoint ``cp``."""

    def __init__(self, pid: int, cp: Checkpoint, *, untracked: str = "") -> None:
        """``untracked``: why no tracking is to be armed (only the origin is recorded then)."""
        self.pid = pid
        self.cp = cp
        self.uffd = -1
        self.counter: ForkCounter | None = None
        self.watch = -1
        self.holder: tracking.Holder | None = None
        self.why_not = untracked   # why the next dump will be full ("" when armed)

    # -- in the stopped process ----------------------------------------------------------

    def arm(self, inject: Inject) -> None:
        """Arm K's ranges in the stopped process (``inject`` runs a syscall in it) and start
        an attached holder.  Never fails the restore: a problem only drops the tracking."""
        if self.why_not:
            return
        state = self.cp.state.tracking
        if state is None or state.version not in _VERSIONS or not state.armed:
            self.why_not = f"checkpoint {self.cp.id} records no tracking to continue"
            return
        armed = ranges.from_bytes(state.armed)
        try:
            self.uffd = _inject_uffd(self.pid, inject)
            _arm_ranges(self.pid, self.uffd, armed, self.cp.vma_ranges)
            self._open_counter()
            self.holder = tracking.spawn_holder(self.pid, self.uffd,
                                                tuple(self.counter.fds) if self.counter is not None else (),
                                                self.watch if self.watch >= 0 else None)
        except (CkptError, OSError) as err:
            if isinstance(err, OSError) and err.errno == errno.ESRCH:
                raise   # the process is gone: the restore fails on its own
            self.abandon()
            self.why_not = f"write tracking could not be armed ({err})"

    # -- after the release ---------------------------------------------------------------

    def hand_over(self) -> list[str]:
        """Record the origin and hand the uffd to the holder (the process runs now).  Returns
        notes; failures only cost incrementality, never the restore."""
        notes: list[str] = []
        images = os.path.realpath(self.cp.image_dir.path)
        ident = tracking.dir_identity(images)
        try:
            tracking.sweep_origins()
            start = procfs.start_time(self.pid)
            if ident is not None:
                tracking.publish_origin(tracking.Origin(self.pid, start, images, ident[0], ident[1],
                                                        self.cp.id, time.time()))
            if self.holder is not None:
                holder, self.holder = self.holder, None
                try:
                    holder.wait_ready()
                    tracking.publish(holder.record(images, self.cp.id))
                    holder.detach()
                except BaseException:
                    holder.abandon()
                    raise
        except (CkptError, OSError) as err:
            why = str(err) if isinstance(err, CkptError) else (err.strerror or str(err))
            self.why_not = self.why_not or f"tracking could not be handed to a holder ({why})"
        finally:
            self._close_uffd()
        if self.why_not:
            notes.append(f"its next dump into {images} will be full: {self.why_not}")
        else:
            notes.append(f"its writes are tracked: its next dump into {images} is an incremental child of "
                         f"checkpoint {self.cp.id}")
        return notes

    def _open_counter(self) -> None:
        """The process's fork counter and the inotify that watches its shared objects, opened
        while every thread is stopped (ckpt/forkcount.py), kept by the holder as a dump's
        holder keeps them.  Their first reading cannot be compared with K's (another
        process's), and the restored shared objects are new inodes: the first dump stores
        shared anonymous memory whole, the ones after it incrementally.  Without them (no
        perf tracepoint access) every dump stores it whole."""
        try:
            self.counter = ForkCounter.open(self.pid)
            self.watch = inotify.inotify_init1(inotify.IN_NONBLOCK | inotify.IN_CLOEXEC)
        except OSError:
            self._close_counter()

    def _close_counter(self) -> None:
        if self.counter is not None:
            self.counter.close()
            self.counter = None
        if self.watch >= 0:
            os.close(self.watch)
            self.watch = -1

    def abandon(self) -> None:
        """End the holder (it never detached) and release the uffd: the restore failed."""
        if self.holder is not None:
            self.holder.abandon()
            self.holder = None
        self._close_uffd()

    def _close_uffd(self) -> None:
        self._close_counter()   # the holder has its own copies
        if self.uffd >= 0:
            os.close(self.uffd)
            self.uffd = -1


def _inject_uffd(pid: int, inject: Inject) -> int:
    """A userfaultfd created inside the stopped process and taken by ckpt; the process's own
    fd is closed again (its fd table stays as restored)."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK | uffd_sys.UFFD_USER_MODE_ONLY
    fd = inject(SYS_userfaultfd, flags, what="userfaultfd")
    mine = -1
    try:
        mine = take_target_fd(pid, fd)
        inject(SYS_close, fd, what="close the userfaultfd")
    except BaseException:
        if mine >= 0:
            os.close(mine)
        else:
            inject(SYS_close, fd, what="close the userfaultfd")
        raise
    enable_wp_async(mine)
    return mine


def _arm_ranges(pid: int, uffd: int, armed: list[ranges.Range], mapped: list[ranges.Range]) -> None:
    """Register and write-protect every range of ``armed``; CkptError unless all of it is
    mapped and armed.  ``mapped``: the ranges the rebuild mapped, the checkpoint's VMAs (each
    mmap was checked to land where recorded), not read back from /proc/PID/maps (0.1 s at
    20,000 mappings).  One UFFDIO_REGISTER per run of adjacent VMAs: the kernel checks
    every VMA of the range before registering any (fs/userfaultfd.c userfaultfd_register,
    its "not compatible vmas" walk), so a failed run is registered again VMA by VMA to
    name the one it refused."""
    armed = ranges.normalize(armed)
    missing = ranges.subtract(armed, mapped)
    if missing:
        s, e = missing[0]
        raise CkptError(f"{s:#x}-{e:#x}, armed in the checkpoint, is not mapped in the restored process")
    runs = ranges.intersect(armed, mapped)
    for start, end in runs:
        try:
            uffd_sys.register_wp(uffd, start, end - start)
        except OSError:
            for m in procfs.read_maps(pid):
                for s, e in ranges.clip([(start, end)], m.start, m.end):
                    try:
                        uffd_sys.register_wp(uffd, s, e - s)
                    except OSError as err:
                        raise CkptError(f"UFFDIO_REGISTER of {s:#x}-{e:#x}: {os.strerror(err.errno or 0)}") from err
            raise CkptError(f"UFFDIO_REGISTER of {start:#x}-{end:#x} failed, and of each of its VMAs did not")
    with contextlib.closing(PagemapScanner(pid)) as scanner:
        for s, e in runs:
            scanner.arm(s, e)

"""Counting the forks (and hole punches) of a tracked task between two checkpoints (issue 9 item 3).

Why: a child forked without ``UFFD_FEATURE_EVENT_FORK`` loses its parent's
userfaultfd registration (fs/userfaultfd.c ``dup_userfaultfd``: the child's VMAs get
no ctx, and ``VM_UFFD_WP`` is cleared), so its writes into shared memory it inherited
show in no tracked page table; it may also exit before the next dump.  A shared
object is dumped incrementally only when none of its mappers forked since the last
checkpoint (ckpt/sharedincr.py).  ``EVENT_FORK`` itself blocks every fork until the
holder reads the event (docs/DESIGN.md "Incremental shared memory").

How: a perf counter on the ``task:task_newtask`` tracepoint (kernel/fork.c
``copy_process`` -> ``trace_task_newtask``), one per thread of the task, opened while
the task is frozen (no thread can be created meanwhile), each with ``inherit`` so that
threads and processes created afterwards by a counted thread count into it
(kernel/events/core.c ``perf_event_init_task``; a child's count is folded into its
parent event when it exits, ``sync_child_event``, and read() adds live children:
``perf_event_read_value``).  A filter ``!(clone_flags & 256)`` leaves out CLONE_VM
clones (threads, vfork, posix_spawn): they share the page tables that are tracked.
The filter of the opened event applies to its inherited copies too
(kernel/events/core.c ``perf_tp_filter_match``: "only top level events have filters
set").  The count is read in the frozen window of each checkpoint and stored with it
(``state.tracking.forks``); between dumps the tracking holder keeps the fds
(ckpt/tracking.py), as it keeps the uffd.

The same counter also counts ``madvise(MADV_REMOVE)`` calls (the ``syscalls:
sys_enter_madvise`` tracepoint, filter ``behavior == 9``): a hole punched through a
mapping whose pages were write-protected leaves uffd-wp markers and no written bit
(mm/memory.c ``zap_install_uffd_wp_if_needed``); a page read back in afterwards is a new
zero page that no written-scan reports.

Why perf and not eBPF: the counter is a few syscalls through ctypes; an eBPF program
would need a verifier-accepted bytecode and a map maintained by hand.  Measured
(2026-12-02, Linux 6.18): 3 forks whose children forked once each, plus 5 threads,
read 6.

The tracepoint's id comes from tracefs (``events/task/task_newtask/id``): a tracefs
mounted on this system (/proc/self/mounts), else a tracefs mounted privately, in a
child in a mount namespace of its own, on a temporary directory.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import subprocess
import sys

from ._sys.libc import libc

__all__ = ["ForkCounter", "tracepoint_ids", "why_unavailable"]

SYS_perf_event_open = 298
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_FILTER = 0x40082406    # _IOW('$', 6, char *)
ATTR_DISABLED, ATTR_INHERIT = 1 << 0, 1 << 1
CLONE_VM = 0x100
MADV_REMOVE = 9
# (tracefs file of the tracepoint's id, perf filter): what is counted.
EVENTS = (("events/task/task_newtask/id", f"!(clone_flags & {CLONE_VM})"),
          ("events/syscalls/sys_enter_madvise/id", f"behavior == {MADV_REMOVE}"))


class _Attr(ctypes.Structure):
    """struct perf_event_attr up to what is set here (PERF_ATTR_SIZE_VER8 = 136 bytes)."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("rest", ctypes.c_uint8 * 88)]


_syscall = libc.syscall
_syscall.restype = ctypes.c_long


# A child in its own mount namespace mounts tracefs on a temporary directory and prints
# the id; nothing of the mount is seen outside it.  Standard library only, run isolated.
_PRIVATE_MOUNT = r"""
import ctypes, os, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000) != 0:                                  # CLONE_NEWNS
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
if libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) != 0:   # MS_REC | MS_PRIVATE
    sys.exit("mount --make-rprivate: " + os.strerror(ctypes.get_errno()))
where = tempfile.mkdtemp()
try:
    if libc.mount(b"tracefs", where.encode(), b"tracefs", 0, None) != 0:
        sys.exit("mount tracefs: " + os.strerror(ctypes.get_errno()))
    for event in sys.argv[1:]:
        with open(os.path.join(where, event)) as f:
            print(int(f.read()))
finally:
    libc.umount2(where.encode(), 2)
    os.rmdir(where)
"""


def _mounted_tracefs() -> list[str]:
    """Mount points of tracefs in this mount namespace (/proc/self/mounts; octal escapes decoded)."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "tracefs":
                out.append(fields[1].encode().decode("unicode_escape"))
    return out


@functools.lru_cache(maxsize=1)
def tracepoint_ids() -> tuple[int, ...] | None:
    """The ids of the :data:`EVENTS` tracepoints; None when they cannot be found."""
    for where in _mounted_tracefs():
        try:
            ids = []
            for event, _ in EVENTS:
                with open(os.path.join(where, event)) as f:
                    ids.append(int(f.read()))
            return tuple(ids)
        except (OSError, ValueError):
            continue
    return private_tracepoint_ids()


def private_tracepoint_ids() -> tuple[int, ...] | None:
    """The tracepoint ids read from a tracefs mounted privately (see the module docstring)."""
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _PRIVATE_MOUNT, *(e for e, _ in EVENTS)],
                              capture_output=True, cwd="/", env={}, timeout=30, check=False)
        ids = tuple(int(x) for x in done.stdout.split())
        return ids if done.returncode == 0 and len(ids) == len(EVENTS) else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def why_unavailable(err: OSError | None = None) -> str:
    """Why no fork counter could be opened, for a dump note."""
    if err is None:
        return "the task_newtask and sys_enter_madvise tracepoints were not found (no tracefs)"
    return f"perf_event_open on a tracepoint failed: {os.strerror(err.errno or 0)}"


class ForkCounter:
    """The fork counter of one task: one perf fd per thread it had when opened and event counted."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    @classmethod
    def open(cls, pid: int) -> "ForkCounter":
        """Count the non-CLONE_VM clones of every thread of ``pid`` (frozen: see the module
        docstring) and of what they create from now on.  OSError when it cannot."""
        ids = tracepoint_ids()
        if ids is None:
            raise OSError(0, why_unavailable())
        fds: list[int] = []
        try:
            for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
                for tp, (_, what) in zip(ids, EVENTS):
                    fds.append(_open_one(tp, tid, what))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(fds)

    def read(self) -> int:
        """The events counted so far, summed over the threads' counters."""
        return sum(struct.unpack("=Q", os.read(fd, 8))[0] for fd in self.fds)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _open_one(tp: int, tid: int, what: str) -> int:
    attr = _Attr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_Attr), config=tp,
                 flags=ATTR_DISABLED | ATTR_INHERIT)
    fd = _syscall(ctypes.c_long(SYS_perf_event_open), ctypes.byref(attr), ctypes.c_long(tid), ctypes.c_long(-1),
                  ctypes.c_long(-1), ctypes.c_long(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, why_unavailable(OSError(err, "")))
    try:
        if libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(PERF_EVENT_IOC_SET_FILTER),
                      ctypes.c_char_p(what.encode())) != 0 \
                or libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(PERF_EVENT_IOC_ENABLE), ctypes.c_ulong(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setting up the fork counter of thread {tid}: {os.strerror(err)}")
    except BaseException:
        os.close(int(fd))
        raise
    return int(fd)

"""eventfd(2): the counter and the semaphore mode, made anew.

Minimal: the counter, EFD_SEMAPHORE and O_NONBLOCK, what an epoll's targets
need to be tested with (ckpt/files/epoll.py).  fdinfo shows
``eventfd-count: %16llx`` and ``eventfd-semaphore: %d`` (fs/eventfd.c
``eventfd_show_fdinfo``); a restore creates an eventfd with the recorded flags
and writes the count into it (``eventfd(2)`` takes only 32 bits of it).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import TargetError
from .base import FileKind, FileRecord, PlannedFile, Probe, RestoreContext, Subject

ULLONG_MAX = (1 << 64) - 1   # the count after an overflow (EPOLLERR): eventfd_write cannot make it
_FLAGS = os.O_RDWR | os.O_NONBLOCK   # f_flags an eventfd can have that this kind restores


class EventFd(FileKind):
    """Kind "eventfd" (record ``file_eventfd``)."""

    names = ("eventfd",)

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        if f.kind != "anon" or f.anon_type != "eventfd":
            return None
        extra = probe.fdinfo().extra
        # Older kernels show no eventfd-semaphore line: without it the mode is unknown.
        return "eventfd" if "eventfd-count" in extra and "eventfd-semaphore" in extra else None

    def dump(self, probe: Probe) -> dict[str, Any]:
        extra = probe.fdinfo().extra
        return {"count": int(extra["eventfd-count"], 16), "semaphore": extra["eventfd-semaphore"] != "0"}

    def describe(self, file: FileRecord) -> str:
        return f"an eventfd ({file['target']})"

    def reasons(self, file: FileRecord, subject: Subject) -> list[str]:
        out = []
        if file["count"] == ULLONG_MAX:
            out.append(f"{subject} {subject.verb('is', 'are')} an eventfd whose counter overflowed, which ckpt "
                       "cannot restore")
        if file["flags"] & ~_FLAGS or file["flags"] & os.O_ACCMODE != os.O_RDWR:
            from .rules import flags_text
            out.append(f"{subject} {subject.verb('is', 'are')} an eventfd with flags {flags_text(file['flags'])}, "
                       "which ckpt cannot restore")
        return out

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        flags = os.EFD_CLOEXEC | (os.EFD_NONBLOCK if f["flags"] & os.O_NONBLOCK else 0) \
            | (os.EFD_SEMAPHORE if f["semaphore"] else 0)
        fd = os.eventfd(0, flags)
        try:
            if f["count"]:
                os.eventfd_write(fd, f["count"])
        except OSError as err:
            os.close(fd)
            raise TargetError(f"checkpoint {ctx.checkpoint}: {planned.what}: cannot set its count "
                              f"{f['count']}: {err.strerror}") from None
        return fd


EVENTFD = EventFd()

"""eventfd: a 64-bit counter, in semaphore mode or not (fs/eventfd.c).

Dump: fdinfo shows the counter and the mode (``eventfd_show_fdinfo``:
``eventfd-count: %16llx``, ``eventfd-semaphore: %d``, Linux 6.4+); ``O_NONBLOCK``
is in ``f_flags``.  The counter is read under the wait-queue lock: a process
outside the dump that shares the eventfd (a forked child) may change it
afterwards; the dump records what it read.  ``eventfd-id`` numbers the
eventfd system-wide and is not kept (nothing a process can ask for).

Restore: ``eventfd(0, EFD_SEMAPHORE?|EFD_NONBLOCK?)``, then one ``write`` of
the count: ``eventfd()`` takes an ``unsigned int`` and a counter can hold up to
2^64 - 2 (``eventfd_write`` refuses more).  A count from an image is just a
number the process could have written itself.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import KernelUnsupported
from .anon import AnonKind, closed_on_error, creation_flags, set_status_flags
from ..image.schema import EventfdFile
from .base import PlannedFile, Probe, RestoreContext

EVENTFD_MAX = (1 << 64) - 2   # ULLONG_MAX - 1: the most a counter holds (eventfd_write)


class Eventfd(AnonKind):
    """Kind "eventfd" (record ``file_eventfd``)."""

    names = ("eventfd",)
    anon_name = "eventfd"

    def dump(self, probe: Probe) -> dict[str, Any]:
        extra = probe.fdinfo().extra
        if "eventfd-semaphore" not in extra:
            raise KernelUnsupported("eventfd-semaphore in fdinfo",
                                    "Linux 6.4: whether an eventfd counts as a semaphore cannot be told")
        return {"count": int(extra["eventfd-count"], 16), "semaphore": extra["eventfd-semaphore"] == "1"}

    def describe(self, file: EventfdFile) -> str:
        mode = ", semaphore" if file.semaphore else ""
        return f"an eventfd ({file.target}, count {file.count}{mode})"

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        os.close(self.open(planned, ctx))   # no effect but an object made and freed

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        fd = os.eventfd(0, creation_flags(f.flags) | (os.EFD_SEMAPHORE if f.semaphore else 0))
        with closed_on_error(fd):
            if f.count:
                os.eventfd_write(fd, f.count)   # the counter is 0: this never blocks
            set_status_flags(fd, f.flags)
        return fd


EVENTFD = Eventfd()

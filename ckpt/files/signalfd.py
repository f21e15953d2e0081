"""signalfd: reads the pending signals of a mask (fs/signalfd.c).

Dump: the mask is fdinfo's ``sigmask:`` (``signalfd_show_fdinfo``, hex, bit
N-1 for signal N, as /proc/PID/status shows masks); ``O_NONBLOCK`` is in
``f_flags``.  A signalfd holds no signals of its own: a ``read`` takes them
from the pending signals of the process that reads, which a checkpoint keeps
with the threads (``pending``, queued again at restore with their siginfo),
and which signals are blocked is each thread's ``sigmask``.

Restore: ``signalfd(-1, mask, SFD_NONBLOCK?)``.  No privilege is involved: a
signalfd only reads signals sent to its reader.
"""

from __future__ import annotations

import os
from typing import Any

from .._sys.signalfd import signalfd
from .anon import AnonKind, closed_on_error, creation_flags, set_status_flags
from ..image.schema import SignalfdFile
from .base import PlannedFile, Probe, RestoreContext


class Signalfd(AnonKind):
    """Kind "signalfd" (record ``file_signalfd``)."""

    names = ("signalfd",)
    anon_name = "signalfd"

    def dump(self, probe: Probe) -> dict[str, Any]:
        return {"sigmask": int(probe.fdinfo().extra["sigmask"], 16)}

    def describe(self, file: SignalfdFile) -> str:
        signals = [n for n in range(1, 65) if file.sigmask >> (n - 1) & 1]
        return f"a signalfd ({file.target}, signals {', '.join(map(str, signals)) or 'none'})"

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        os.close(self.open(planned, ctx))

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        fd = signalfd(f.sigmask, creation_flags(f.flags))
        with closed_on_error(fd):
            set_status_flags(fd, f.flags)
        return fd


SIGNALFD = Signalfd()

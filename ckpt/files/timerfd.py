"""timerfd: a timer on a clock, relative or absolute, one-shot or periodic (fs/timerfd.c).

Dump.  fdinfo shows the clock, the expirations not read yet (``ticks``), the
flags of the last ``timerfd_settime`` (``settime flags``), the time left
(``it_value``) and the period (``it_interval``) (``timerfd_show``).  But a
periodic timer that expired is not re-armed until it is read or asked for
its time (``timerfd_triggered`` only sets ``expired`` and counts one tick; a
``read`` or ``timerfd_gettime`` moves it forward over every period gone by and
counts those too): until then fdinfo shows one tick and no time left, however
many periods have passed.  So the dump first calls ``timerfd_gettime`` on its
copy of the fd (``Probe.getfd``), which does exactly that -- what a read would
return and when the next expiration comes are unchanged, so the process sees
no difference -- and then reads fdinfo.  If the timer expired again in
between (fdinfo: no time left, a period, ticks), that expiration is recorded
as due at once (``value_ns`` 1) and not counted in ``ticks``: the restored
timer expires right away and counts it then.  A periodic timer with no time
left after the gettime is asked again twice, 1 ms apart, before it is taken
for disarmed (it may be due, its interrupt not run yet).  A one-shot timer
caught in that same microsecond is recorded as disarmed, without the
expiration it was about to count.

Restore.  ``timerfd_create(clockid, TFD_NONBLOCK?)``, ``timerfd_settime`` with
the recorded flags and period, and the expirations not read with
``TFD_IOC_SET_TICKS`` (CONFIG_CHECKPOINT_RESTORE; ``timerfd_settime`` clears
them).  What the time left means after ``dump --kill`` and a restore later:

* a relative timer (no ``TFD_TIMER_ABSTIME``) gets the time it had left at
  the dump, counted from the restore -- the time in between does not count,
  as for CRIU; a restore says so in a note;
* an absolute timer keeps its expiry on its clock: the clock's reading at the
  dump plus the time left (read after fdinfo, so that the expiry is never
  earlier than the real one).  If that moment has passed, it expires at once,
  and a periodic one counts every period since, as it would have.  A
  ``CLOCK_MONOTONIC`` or ``CLOCK_BOOTTIME`` expiry means nothing on another
  boot: such a restore is refused.

``CLOCK_REALTIME_ALARM`` and ``CLOCK_BOOTTIME_ALARM`` need CAP_WAKE_ALARM
(``timerfd_create``): restored only from images root trusts (ckpt/trust.py).
A ``TFD_TIMER_CANCEL_ON_SET`` timer whose clock was set reads ECANCELED once,
a state fdinfo does not show: one with expirations not read is refused, as
they may be that cancellation.
"""

from __future__ import annotations

import errno
import os
import re
import time
from typing import Any

from .. import procfs
from .._sys import timerfd as tfd
from ..errors import ImageError, UntrustedImage
from .anon import AnonKind, closed_on_error, creation_flags, set_status_flags
from ..image.schema import TimerfdFile
from .base import PlannedFile, Probe, RestoreContext, Subject

I64_MAX, U64_MAX = (1 << 63) - 1, (1 << 64) - 1
# The clock an absolute expiry is read from: the alarm clocks run on these.
_READ_CLOCK = {tfd.CLOCK_REALTIME_ALARM: tfd.CLOCK_REALTIME, tfd.CLOCK_BOOTTIME_ALARM: tfd.CLOCK_BOOTTIME}
# Clocks that start again at boot: an absolute expiry on them means nothing on another boot.
_BOOT_CLOCKS = (tfd.CLOCK_MONOTONIC, tfd.CLOCK_BOOTTIME, tfd.CLOCK_BOOTTIME_ALARM)
_PAIR = re.compile(r"\((\d+), (\d+)\)")
_DISARMED_CHECKS = 3   # gettime calls, 1 ms apart, before a periodic timer with no time left is disarmed


class Timerfd(AnonKind):
    """Kind "timerfd" (record ``file_timerfd``)."""

    names = ("timerfd",)
    anon_name = "timerfd"

    def dump(self, probe: Probe) -> dict[str, Any]:
        copy = probe.getfd()
        value, interval = tfd.timerfd_gettime(copy)   # moves an expired periodic timer on (docstring)
        checks = 1
        while interval and not value and checks < _DISARMED_CHECKS:
            # Armed and periodic, gettime leaves it in the future; no time left means it is
            # disarmed -- or due this very microsecond, its interrupt not run yet: ask again.
            time.sleep(0.001)
            value, interval = tfd.timerfd_gettime(copy)
            checks += 1
        # Not Probe.fdinfo(): it may have been read before the gettime.
        extra = procfs.read_fdinfo(probe.pid, probe.fd).extra
        clockid = int(extra["clockid"])
        clock_ns = time.clock_gettime_ns(_READ_CLOCK.get(clockid, clockid))
        ticks = int(extra["ticks"])
        value_ns, interval_ns = (_ns(extra["it_value"]), _ns(extra["it_interval"]))
        if value and interval_ns and not value_ns and ticks:
            # It expired again between the gettime and fdinfo: due now, counted when it expires.
            ticks, value_ns = ticks - 1, 1
        return {"clockid": clockid, "ticks": ticks, "settime_flags": int(extra["settime flags"], 8),
                "value_ns": value_ns, "interval_ns": interval_ns, "clock_ns": clock_ns}

    def describe(self, file: TimerfdFile) -> str:
        clock = tfd.CLOCK_NAMES.get(file.clockid, f"clock {file.clockid}")
        return f"a timerfd ({file.target}, {clock})"

    def reasons(self, file: TimerfdFile, subject: Subject) -> list[str]:
        out = self.flag_reasons(file, subject)
        are = subject.verb("is", "are")
        if file.clockid not in tfd.CLOCK_NAMES:
            out.append(f"{subject} {are} a timerfd on clock {file.clockid}, which timerfd_create does not "
                       "accept: the image was edited")
        if file.settime_flags & tfd.TFD_TIMER_CANCEL_ON_SET and file.ticks:
            out.append(f"{subject} {are} {self.describe(file)} set to be cancelled when its clock is set, "
                       f"with {file.ticks} expiration(s) not read: whether they are expirations or that "
                       "cancellation (a read failing with ECANCELED) cannot be told, so ckpt cannot restore it")
        return out

    def notes(self, file: TimerfdFile, subject: Subject) -> list[str]:
        if not file.value_ns or file.settime_flags & tfd.TFD_TIMER_ABSTIME:
            return []
        return [f"{subject} {subject.verb('is', 'are')} {self.describe(file)} with "
                f"{file.value_ns / tfd.NSEC:.3f} s left before it expires: a restore gives it that time "
                "from the restore (the time between the dump and the restore does not count)"]

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        os.close(self.open(planned, ctx))   # an alarm clock is tried here: it needs CAP_WAKE_ALARM

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        clockid, flags = f.clockid, f.settime_flags
        absolute = bool(flags & tfd.TFD_TIMER_ABSTIME)
        if clockid in tfd.ALARM_CLOCKS and not ctx.trusted:
            raise UntrustedImage(f"checkpoint {ctx.checkpoint}: {planned.what} is a timer on "
                                 f"{tfd.CLOCK_NAMES[clockid]}, which needs CAP_WAKE_ALARM: a restore makes one "
                                 "only from images root trusts")
        if absolute and f.value_ns and clockid in _BOOT_CLOCKS and not ctx.same_boot:
            raise ImageError(f"checkpoint {ctx.checkpoint}: {planned.what} expires at an absolute time of "
                             f"{tfd.CLOCK_NAMES[clockid]}, which counts from the boot of the dump: it means "
                             "nothing on this boot")
        try:
            fd = tfd.timerfd_create(clockid, creation_flags(f.flags))
        except PermissionError as err:
            raise UntrustedImage(f"checkpoint {ctx.checkpoint}: {planned.what}: a timer on "
                                 f"{tfd.CLOCK_NAMES[clockid]} needs CAP_WAKE_ALARM: {err.strerror}") from None
        with closed_on_error(fd):
            value = f.value_ns
            if absolute and value:
                value = min(f.clock_ns + value, I64_MAX)   # the expiry the dump saw
            try:
                tfd.timerfd_settime(fd, flags, value, f.interval_ns)
            except OSError as err:
                why = "its clock was set meanwhile" if err.errno == errno.ECANCELED else err.strerror
                raise ImageError(f"checkpoint {ctx.checkpoint}: {planned.what}: timerfd_settime failed: "
                                 f"{why}") from None
            if f.ticks:
                # Count an expiration since the settime (a timer due at once) with the recorded ones.
                now = int(procfs.read_fdinfo(os.getpid(), fd).extra["ticks"])
                tfd.set_ticks(fd, min(f.ticks + now, U64_MAX))
            set_status_flags(fd, f.flags)
        return fd


def _ns(pair: str) -> int:
    """fdinfo's ``(sec, nsec)`` in nanoseconds."""
    match = _PAIR.fullmatch(pair)
    if match is None:
        raise ValueError(f"malformed timerfd time {pair!r} in fdinfo")
    return int(match[1]) * tfd.NSEC + int(match[2])


TIMERFD = Timerfd()

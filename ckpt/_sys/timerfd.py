"""timerfd_create(2), timerfd_settime(2), timerfd_gettime(2) and TFD_IOC_SET_TICKS (fs/timerfd.c).

Times are passed as nanoseconds and converted to ``struct __kernel_itimerspec``
(two ``struct __kernel_timespec``: it_interval first, then it_value).
``TFD_IOC_SET_TICKS`` (CONFIG_CHECKPOINT_RESTORE) sets the count of
expirations a ``read`` returns next -- CRIU's way, and ckpt's, of giving back
expirations the process had not read; it refuses 0 (EINVAL).
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Final

from .libc import address_of, syscall

SYS_timerfd_create: Final = 283
SYS_timerfd_settime: Final = 286
SYS_timerfd_gettime: Final = 287

# include/uapi/linux/time.h
CLOCK_REALTIME: Final = 0
CLOCK_MONOTONIC: Final = 1
CLOCK_BOOTTIME: Final = 7
CLOCK_REALTIME_ALARM: Final = 8
CLOCK_BOOTTIME_ALARM: Final = 9
CLOCK_NAMES: Final = {CLOCK_REALTIME: "CLOCK_REALTIME", CLOCK_MONOTONIC: "CLOCK_MONOTONIC",
                      CLOCK_BOOTTIME: "CLOCK_BOOTTIME", CLOCK_REALTIME_ALARM: "CLOCK_REALTIME_ALARM",
                      CLOCK_BOOTTIME_ALARM: "CLOCK_BOOTTIME_ALARM"}   # what timerfd_create accepts
ALARM_CLOCKS: Final = (CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)   # they need CAP_WAKE_ALARM

# include/uapi/linux/timerfd.h
TFD_TIMER_ABSTIME: Final = 1 << 0
TFD_TIMER_CANCEL_ON_SET: Final = 1 << 1
TFD_SETTIME_FLAGS: Final = TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
TFD_NONBLOCK: Final = os.O_NONBLOCK
TFD_CLOEXEC: Final = os.O_CLOEXEC
TFD_IOC_SET_TICKS: Final = 0x40085400   # _IOW('T', 0, __u64)

NSEC: Final = 1_000_000_000
_ITIMERSPEC = struct.Struct("<qqqq")      # it_interval {sec, nsec}, it_value {sec, nsec}
_TICKS = struct.Struct("<Q")


def timerfd_create(clockid: int, flags: int) -> int:
    """A new, disarmed timerfd on ``clockid``."""
    return syscall(SYS_timerfd_create, clockid, flags)


def timerfd_settime(fd: int, flags: int, value_ns: int, interval_ns: int) -> None:
    """Arm (``value_ns`` > 0) or disarm (0) the timer; ``flags``: TFD_TIMER_ABSTIME, ..."""
    spec = bytearray(_ITIMERSPEC.pack(*divmod(interval_ns, NSEC), *divmod(value_ns, NSEC)))
    syscall(SYS_timerfd_settime, fd, flags, address_of(spec), 0)


def timerfd_gettime(fd: int) -> tuple[int, int]:
    """``(value_ns, interval_ns)``: the time left before the next expiration (0: disarmed,
    or a one-shot timer that has expired) and the period."""
    spec = bytearray(_ITIMERSPEC.size)
    syscall(SYS_timerfd_gettime, fd, address_of(spec))
    isec, insec, vsec, vnsec = _ITIMERSPEC.unpack(spec)
    return vsec * NSEC + vnsec, isec * NSEC + insec


def set_ticks(fd: int, ticks: int) -> None:
    """Make the next ``read`` of the timerfd return ``ticks`` (> 0) expirations."""
    fcntl.ioctl(fd, TFD_IOC_SET_TICKS, _TICKS.pack(ticks))

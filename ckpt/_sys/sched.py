"""sched_getattr(2) and sched_setattr(2) on any thread, by tid.

Both work from outside the thread: reading needs no privilege
(kernel/sched/syscalls.c ``sched_getattr``); setting is checked against the
*target's* RLIMIT_RTPRIO/RLIMIT_NICE and the caller's CAP_SYS_NICE and uid
(``__sched_setscheduler``, ``user_check_sched_setscheduler``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Final

from .libc import SYS_sched_getattr, SYS_sched_setattr, syscall

SCHED_OTHER: Final = 0
SCHED_FIFO: Final = 1
SCHED_RR: Final = 2
SCHED_BATCH: Final = 3
SCHED_IDLE: Final = 5
SCHED_DEADLINE: Final = 6
SCHED_EXT: Final = 7
POLICY_NAMES: Final = {SCHED_OTHER: "SCHED_OTHER", SCHED_FIFO: "SCHED_FIFO", SCHED_RR: "SCHED_RR",
                       SCHED_BATCH: "SCHED_BATCH", SCHED_IDLE: "SCHED_IDLE", SCHED_DEADLINE: "SCHED_DEADLINE",
                       SCHED_EXT: "SCHED_EXT"}
RT_POLICIES: Final = frozenset({SCHED_FIFO, SCHED_RR})
FAIR_POLICIES: Final = frozenset({SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, SCHED_EXT})
SCHED_FLAG_RESET_ON_FORK: Final = 0x01


class sched_attr(ctypes.Structure):  # noqa: N801 - the kernel's name (include/uapi/linux/sched/types.h)
    """SCHED_ATTR_SIZE_VER1 (56 bytes), with the utilization clamps (reported only by a
    kernel with CONFIG_UCLAMP_TASK; 0 and 0 without)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


assert ctypes.sizeof(sched_attr) == 56
SCHED_CAPACITY_SCALE: Final = 1024   # the default util_max of a uclamp kernel (include/linux/sched.h)
# The sched_flags a restore passes back: the others ask for the utilization clamps or
# are "keep" modifiers of sched_setattr itself (include/uapi/linux/sched.h).
SCHED_FLAG_RECLAIM: Final = 0x02
SCHED_FLAG_DL_OVERRUN: Final = 0x04
RESTORED_FLAGS: Final = SCHED_FLAG_RESET_ON_FORK | SCHED_FLAG_RECLAIM | SCHED_FLAG_DL_OVERRUN


@dataclass(frozen=True)
class SchedAttr:
    """A thread's scheduling parameters, as sched_getattr() gives them.

    ``nice`` is the fair-class nice value; the kernel reports 0 there for RT
    and deadline threads (``get_params``), whose nice value stays underneath
    and comes back with SCHED_OTHER: read it with getpriority(2) instead.
    ``runtime`` is, for fair policies, the thread's time slice (Linux 6.12+
    lets sched_setattr set a custom one); deadline/period are SCHED_DEADLINE's.
    """

    policy: int
    flags: int
    nice: int
    priority: int
    runtime: int
    deadline: int
    period: int
    util_min: int = 0
    util_max: int = 0


def get_attr(tid: int) -> SchedAttr:
    """sched_getattr(tid, &attr, 56, 0); ``OSError`` on failure."""
    attr = sched_attr()
    syscall(SYS_sched_getattr, tid, ctypes.addressof(attr), ctypes.sizeof(attr), 0)
    return SchedAttr(attr.sched_policy, attr.sched_flags, attr.sched_nice, attr.sched_priority,
                     attr.sched_runtime, attr.sched_deadline, attr.sched_period, attr.sched_util_min,
                     attr.sched_util_max)


def set_attr(tid: int, want: SchedAttr) -> None:
    """sched_setattr(tid, &attr, 0) without the utilization clamps (SCHED_ATTR_SIZE_VER0);
    ``OSError`` on failure."""
    attr = sched_attr(48, want.policy, want.flags, want.nice, want.priority, want.runtime, want.deadline,
                      want.period)
    syscall(SYS_sched_setattr, tid, ctypes.addressof(attr), 0)

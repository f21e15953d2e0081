"""Freeze a target, inject syscalls as a dump does, and SIGKILL this very process at a
chosen step of the injection protocol (tests/test_abandon.py).

    python abandon_driver.py PID POINT N

POINT is one of after-setregs, entry, exit, park: the process kills itself at the
N-th time it reaches that point (counting every injected syscall, in every thread,
including the ones that map and unmap the injector's stub area).  Before dying it
prints "killed NR KIND" on stdout: the syscall number it was injecting and how
(gadget, stub, plain).  If N is never reached it finishes like a dump (the userfaultfd
it created is taken and closed) and prints "completed".
"""

from __future__ import annotations

import os
import signal
import sys

from ckpt._sys import ptrace as pt
from ckpt._sys.libc import SYS_close, SYS_getpid, SYS_userfaultfd
from ckpt.live import FrozenProcess
from ckpt.live import inject

pid, point, nth = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seen = 0
current = {"nr": -1, "kind": "?"}


def maybe_die(where: str) -> None:
    global seen
    if where != point:
        return
    seen += 1
    if seen == nth:
        print(f"killed {current['nr']} {current['kind']}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


original_run = inject.Injector._run
original_park = inject.Injector.park


def run(self: inject.Injector, thread, regs):  # type: ignore[no-untyped-def]
    current["nr"] = regs.rax
    if self.base and regs.rip == self.base:
        current["kind"] = "stub"
    elif self.gadgets is not None and regs.rip == self.gadgets.syscall_ret and (
            regs.rsp == self._frame0 or (regs.rsp == self._frame1 and regs.rax not in (9, 10, 11))):
        current["kind"] = "gadget"
    else:
        current["kind"] = "plain"
    tid = thread.tid
    thread.dirty = True
    pt.set_regs(tid, regs)
    thread.in_stub = True
    maybe_die("after-setregs")
    pt.set_sigmask(tid, inject.ALL_SIGNALS)
    pt.syscall_step(tid)
    self._wait_syscall_stop(thread)
    maybe_die("entry")
    pt.syscall_step(tid)
    self._wait_syscall_stop(thread)
    maybe_die("exit")
    return inject.arch.signed(pt.get_regs(tid).rax)


def park(self: inject.Injector, thread) -> None:  # type: ignore[no-untyped-def]
    maybe_die("park")
    original_park(self, thread)


inject.Injector._run = run  # type: ignore[method-assign]
inject.Injector.park = park  # type: ignore[method-assign]

with FrozenProcess(pid) as proc:
    for tid in sorted(proc.threads):
        proc.inject(SYS_getpid, tid=tid)
    fd = proc.inject(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK | 1, undo=(SYS_close, 0))
    assert fd >= 0, fd
    proc.inject(SYS_close, fd)
    proc.release_injector()
print("completed", flush=True)

"""A live target under ptrace: freeze and thaw every thread, inject syscalls.

:class:`FrozenProcess` is the only place ckpt stops a target.  It is a context
manager whose exit — on success, on exception, on ``KeyboardInterrupt`` — puts
every register it changed back and detaches every thread (DESIGN.md invariant
2).  While ckpt does not hold a :class:`FrozenProcess`, it does not trace the
target at all, so a ckpt that dies outside the frozen window leaves nothing to
undo; inside it, the kernel detaches the tracees when the tracer exits.

Syscall injection follows the prototype in KERNEL-FACTS.md G and compel: load
the arguments into the registers of a stopped thread, point ``rip`` at a
``syscall`` instruction (found in the vDSO, which every x86_64 process maps),
set ``orig_rax = -1`` so the kernel does not restart the syscall the thread was
stopped in, single-step, read ``rax``, and finally restore the saved registers —
which re-arms the original syscall's restart exactly as if the thread had only
been interrupted (arch/x86/kernel/signal.c ``arch_do_signal_or_restart`` runs
after the ptrace stop, on the registers as the tracer left them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import procfs
from ._sys import ptrace as pt
from ._sys.libc import SYS_mmap, SYS_munmap, SYS_tgkill, syscall
from .errors import AccessDenied, CkptError, NoSuchProcess, TargetError, TargetExited

PAGE = 4096
_U64 = (1 << 64) - 1


@contextlib.contextmanager
def wrap_process_errors(pid: int, operation: str, *, attached: bool = False) -> Iterator[None]:
    """Translate ``OSError`` from the kernel into the ckpt error family, once.

    ``attached`` tells whether the target was known to exist before: a vanished
    process is then :class:`TargetExited` rather than :class:`NoSuchProcess`.
    """
    try:
        yield
    except CkptError:
        raise
    except OSError as err:
        if err.errno in (errno.ESRCH, errno.ENOENT, errno.ECHILD):
            if attached:
                raise TargetExited(pid, operation) from err
            raise NoSuchProcess(pid) from err
        if err.errno in (errno.EPERM, errno.EACCES):
            raise AccessDenied(pid, operation, err.strerror or "") from err
        raise TargetError(f"{operation} on pid {pid} failed: {err.strerror or err}") from err


def check_target(pid: int) -> None:
    """Refuse pids ckpt cannot work on before touching anything."""
    if pid <= 0:
        raise NoSuchProcess(pid, f"invalid pid: {pid}")
    if pid == os.getpid():
        raise TargetError("ckpt cannot checkpoint itself")
    with wrap_process_errors(pid, "reading /proc"):
        status = procfs.read_status(pid)
        if status.tgid != pid:
            raise TargetError(f"{pid} is a thread of process {status.tgid}; give the process id")
        if status.state == "Z":
            raise TargetExited(pid, "attach (it is a zombie)")
        with open(f"/proc/{pid}/maps", "rb") as f:
            if not f.read(1):
                raise AccessDenied(pid, "ptrace", "it is a kernel thread")
    if status.tracer_pid not in (0, os.getpid()):
        raise TargetError(f"pid {pid} is already traced by pid {status.tracer_pid}")


def inject_syscall(tid: int, base: pt.user_regs_struct, insn: int, nr: int, *args: int,
                   on_clone: Callable[[int], None] | None = None) -> tuple[int, list[int]]:
    """Execute one syscall in stopped thread ``tid`` and leave it stopped.

    Registers are ``base`` with the syscall number and arguments loaded, ``rip``
    at the ``syscall`` instruction ``insn`` and ``orig_rax = -1`` (no restart of
    whatever the thread was in); one single step runs it.  Returns the raw
    result (``-errno`` in (-4096, 0)) and the signals that arrived meanwhile
    (suppressed; the caller decides).  A ``PTRACE_EVENT_CLONE`` stop on the way
    (with PTRACE_O_TRACECLONE) is reported to ``on_clone`` with the new tid.
    """
    regs = pt.user_regs_struct.from_buffer_copy(base)
    regs.rax = nr
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        setattr(regs, name, value & _U64)
    regs.rip = insn
    regs.orig_rax = _U64
    pt.set_regs(tid, regs)
    pt.singlestep(tid, 0)
    signals: list[int] = []
    while True:
        _, raw = pt.wait_tid(tid)
        status = pt.StopStatus(tid, raw)
        if status.exited:
            raise ProcessLookupError(3, f"thread {tid} exited during syscall injection")
        if status.event == pt.PTRACE_EVENT_CLONE and on_clone is not None:
            on_clone(pt.get_event_msg(tid))
        elif status.signal == signal.SIGTRAP and status.event == 0:
            break
        elif status.event == 0 and status.signal:
            signals.append(status.signal)
        pt.singlestep(tid, 0)
    value = pt.get_regs(tid).rax
    return (value - (1 << 64) if value >= 1 << 63 else value), signals


class _SignalDeferral:
    """Hold SIGINT/SIGTERM/SIGHUP while the target is frozen; deliver them after.

    A Python signal handler that raises in the middle of an injection (between
    PTRACE_SINGLESTEP and the wait for its trap) would leave a thread running
    with injected registers and the trap flag set: the trap then kills it with
    SIGTRAP once ckpt exits.  So while frozen, these signals are only noted, and
    re-sent to ckpt itself after the thaw, where the original handlers run.
    Only the main thread can install handlers; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.caught: list[int] = []

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.caught.append(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        caught, self.caught = self.caught, []
        for sig in dict.fromkeys(caught):
            os.kill(os.getpid(), sig)


@dataclass
class _Thread:
    tid: int
    regs: pt.user_regs_struct | None = None  # as found at freeze; restored at thaw
    dirty: bool = False                        # regs changed by an injection
    pending_signal: int = 0                    # a signal we intercepted while stopping it


@dataclass
class FrozenProcess:
    """Every thread of ``pid`` seized and stopped, until :meth:`thaw`.

    Use as ``with FrozenProcess(pid) as proc: ...``.
    """

    pid: int
    threads: dict[int, _Thread] = field(default_factory=dict)
    _syscall_insn: int = 0
    _scratch: int = 0
    _scratch_len: int = 0
    _thawed: bool = False
    freeze_time: float = 0.0

    # -- freezing -----------------------------------------------------------------

    def __enter__(self) -> "FrozenProcess":
        self._deferred = _SignalDeferral()
        self._deferred.__enter__()
        try:
            self.freeze()
        except BaseException:
            self.thaw()
            self._deferred.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.thaw()
        finally:
            self._deferred.__exit__()

    def freeze(self) -> None:
        """Seize and interrupt every thread, looping until no new thread appears."""
        t0 = time.monotonic()
        with wrap_process_errors(self.pid, "ptrace seize", attached=False):
            pt.seize(self.pid, pt.PTRACE_O_TRACECLONE)
        self.threads[self.pid] = _Thread(self.pid)
        with wrap_process_errors(self.pid, "freeze", attached=True):
            pt.interrupt(self.pid)
            self._wait_stopped(self.threads[self.pid])
            while True:
                try:
                    tids = procfs.list_threads(self.pid)
                except FileNotFoundError:
                    raise TargetExited(self.pid, "freeze") from None
                new = [t for t in tids if t not in self.threads]
                if not new:
                    break
                for tid in new:
                    try:
                        pt.seize(tid, pt.PTRACE_O_TRACECLONE)
                    except OSError as err:
                        if err.errno == errno.EPERM and tid in self.threads:
                            continue  # auto-attached through TRACECLONE meanwhile
                        if err.errno == errno.ESRCH:
                            continue  # exited meanwhile
                        raise
                    self.threads[tid] = _Thread(tid)
                    pt.interrupt(tid)
                    self._wait_stopped(self.threads[tid])
            for thread in self.threads.values():
                thread.regs = pt.get_regs(thread.tid)
        self.freeze_time = time.monotonic() - t0

    def _wait_stopped(self, thread: _Thread) -> None:
        """Wait until ``thread`` sits in a ptrace-stop we can work from.

        A signal that arrives first shows up as a signal-delivery-stop: remember
        it, suppress it for now (re-raised at thaw) and let the pending
        interrupt turn into a ``PTRACE_EVENT_STOP``.  A clone event means a new
        thread was auto-attached: adopt it as well.
        """
        while True:
            _, raw = pt.wait_tid(thread.tid)
            status = pt.StopStatus(thread.tid, raw)
            if status.exited:
                self.threads.pop(thread.tid, None)
                if thread.tid == self.pid:
                    raise TargetExited(self.pid, "freeze")
                return
            if status.event == pt.PTRACE_EVENT_STOP:
                return
            if status.event == pt.PTRACE_EVENT_CLONE:
                new_tid = pt.get_event_msg(thread.tid)
                if new_tid not in self.threads:
                    child = _Thread(new_tid)
                    self.threads[new_tid] = child
                    self._wait_stopped(child)
                pt.interrupt(thread.tid)
                pt.cont(thread.tid, 0)
                continue
            if status.event == 0 and status.signal:
                thread.pending_signal = status.signal
                pt.interrupt(thread.tid)
                pt.cont(thread.tid, 0)
                continue
            pt.cont(thread.tid, 0)

    # -- thawing ------------------------------------------------------------------

    def thaw(self, *, stop: bool = False) -> None:
        """Restore every changed register, re-raise intercepted signals, detach.

        Safe to call twice and from error paths: failures on threads that
        vanished are ignored, so every other thread is still released.
        ``stop`` leaves the process in group-stop (SIGSTOP) after detaching.
        """
        if self._thawed:
            return
        self._thawed = True
        with contextlib.suppress(CkptError, OSError):
            self.release_scratch()
        if stop:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGSTOP)
        for thread in list(self.threads.values()):
            with contextlib.suppress(OSError):
                if thread.dirty and thread.regs is not None:
                    pt.set_regs(thread.tid, thread.regs)
            with contextlib.suppress(OSError):
                pt.detach(thread.tid, 0)
            if thread.pending_signal:
                # Re-raised with tgkill: the original siginfo is lost, the signal is not.
                with contextlib.suppress(OSError):
                    syscall(SYS_tgkill, self.pid, thread.tid, thread.pending_signal)

    def kill(self) -> None:
        """SIGKILL the target and wait until every traced thread has exited (no thaw needed).

        The leader is waited for with WNOWAIT: its exit status stays for its real
        parent, which may be the very process running ckpt (the Python API)."""
        self._thawed = True
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        # Reap the non-leader threads first: waiting on a leader blocks until
        # every other traced thread is gone (KERNEL-FACTS.md G).
        for tid in self.threads:
            if tid == self.pid:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                while True:
                    _, raw = pt.wait_tid(tid)
                    if os.WIFEXITED(raw) or os.WIFSIGNALED(raw):
                        break
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | pt.WALL)

    # -- registers and injection --------------------------------------------------

    def regs(self, tid: int | None = None) -> pt.user_regs_struct:
        """The registers a thread had when frozen."""
        regs = self.threads[tid or self.pid].regs
        assert regs is not None
        return regs

    def _find_syscall_insn(self) -> int:
        if self._syscall_insn:
            return self._syscall_insn
        maps = procfs.read_maps(self.pid)
        candidates = [m for m in maps if m.path == "[vdso]"]
        candidates += [m for m in maps if m.executable and m.readable and m.path and not m.is_special]
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            for m in candidates:
                try:
                    mem.seek(m.start)
                    code = mem.read(min(m.size, 1 << 20))
                except OSError:
                    continue
                pos = code.find(b"\x0f\x05")
                if pos >= 0:
                    self._syscall_insn = m.start + pos
                    return self._syscall_insn
        raise TargetError(f"no syscall instruction found in the address space of pid {self.pid}")

    def inject(self, nr: int, *args: int, tid: int | None = None) -> int:
        """Run syscall ``nr`` in thread ``tid`` (default: the leader); return its raw result.

        Negative values in (-4096, 0) are ``-errno``, as the kernel returns them.
        """
        thread = self.threads[tid or self.pid]
        assert thread.regs is not None
        insn = self._find_syscall_insn()
        with wrap_process_errors(self.pid, f"syscall injection ({nr})", attached=True):
            thread.dirty = True
            value, signals = inject_syscall(thread.tid, thread.regs, insn, nr, *args)
        if signals and not thread.pending_signal:
            # A real signal raced with the step: keep it for thaw.
            thread.pending_signal = signals[0]
        return value

    def inject_checked(self, nr: int, *args: int, tid: int | None = None, what: str = "") -> int:
        """:meth:`inject`, raising ``OSError`` for an ``-errno`` result."""
        res = self.inject(nr, *args, tid=tid)
        if -4096 < res < 0:
            raise OSError(-res, f"{what or nr}: {os.strerror(-res)} (in target {self.pid})")
        return res

    def scratch(self, length: int = PAGE) -> int:
        """A private anonymous scratch area in the target, unmapped at :meth:`thaw`."""
        if self._scratch and self._scratch_len >= length:
            return self._scratch
        length = (length + PAGE - 1) & ~(PAGE - 1)
        prot_rw, map_private_anon = 0x3, 0x22
        addr = self.inject_checked(SYS_mmap, 0, length, prot_rw, map_private_anon, _U64, 0,
                                   what="mmap of a scratch page")
        if self._scratch:
            self.inject(SYS_munmap, self._scratch, self._scratch_len)
        self._scratch, self._scratch_len = addr, length
        return addr

    def release_scratch(self) -> None:
        """Unmap the scratch area now (before the layout is read for the image)."""
        if self._scratch:
            addr, self._scratch = self._scratch, 0
            self.inject_checked(SYS_munmap, addr, self._scratch_len, what="munmap of the scratch page")

    def read(self, address: int, length: int) -> bytes:
        """Read target memory through /proc/PID/mem (works on any mapping)."""
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            return mem.read(length)


"""A live target under ptrace: freeze and thaw every thread, within a deadline.

:class:`FrozenProcess` is the only place ckpt stops a target.  It is a context
manager whose exit — on success, on exception, on ``KeyboardInterrupt`` — puts
every register and signal mask it changed back and detaches every thread
(DESIGN.md invariant 2).  Its ptrace requests run on a thread of their own
(:mod:`ckpt.live.tracer`), so a thread that never stops is released when the
session ends.  Syscalls are injected through :mod:`ckpt.live.inject`, whose
injections are safe to abandon at any instant: if ckpt dies (SIGKILL, OOM) in
the middle of one, the thread finishes it and puts itself back.

Freezing is ``PTRACE_SEIZE`` + ``PTRACE_INTERRUPT`` of every thread (no SIGSTOP
is sent, the target's signal state is untouched: man 2 ptrace, "PTRACE_SEIZE"),
looping until no new thread appears.  A signal that arrives while a thread is
being stopped shows up as a signal-delivery-stop; it is delivered right away
(the kernel sets up the handler frame, and the pending interrupt then stops the
thread before the handler's first instruction), so no signal is held by ckpt
and none is lost or re-sent without its siginfo.  A thread that does not stop
within the deadline (uninterruptible sleep: a vfork parent, FUSE, NFS) makes
the freeze fail with its name, state and wait channel, after every other
thread was released.

A process can also be one of many frozen by one session (:class:`ckpt.live.tree.FrozenTree`):
it then shares the session's tracer thread (:meth:`FrozenProcess.in_session`), is seized
and interrupted together with the others before any of them is waited for, and reports
the processes its threads fork while being stopped to the session (``on_new_process``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import procfs, seccomp
from .._sys import ptrace as pt
from ..errors import AccessDenied, CkptError, FreezeTimeout, NoSuchProcess, TargetError, TargetExited
from .tracer import TracerThread

T = TypeVar("T")
PAGE = 4096
DEFAULT_FREEZE_TIMEOUT = 5.0  # seconds every thread gets to reach its stop
SEIZE_OPTIONS = pt.PTRACE_O_TRACECLONE | pt.PTRACE_O_TRACESYSGOOD
SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 1, 2   # include/uapi/linux/seccomp.h


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
    refuse_strict_seccomp(pid)


def refuse_strict_seccomp(pid: int) -> None:
    """Refuse a process one of whose threads runs in seccomp strict mode."""
    # Seccomp strict mode allows read, write, exit and sigreturn only and kills the
    # thread on any other syscall (kernel/seccomp.c __secure_computing_strict):
    # the first syscall ckpt injects would kill it.  Per thread.
    with wrap_process_errors(pid, "reading /proc"):
        for tid in procfs.list_threads(pid):
            try:
                strict = procfs.read_status(tid).seccomp == SECCOMP_MODE_STRICT
            except (FileNotFoundError, ProcessLookupError):
                # Exited meanwhile: before the open (ENOENT) or between the open and the
                # read (ESRCH: fs/proc/array.c proc_pid_status finds no task).
                continue
            if strict:
                raise TargetError(f"thread {tid} of pid {pid} runs in seccomp strict mode: any syscall ckpt "
                                  "injects would kill it, so ckpt cannot checkpoint it")


class _SignalDeferral:
    """Hold SIGINT/SIGTERM/SIGHUP while the target is frozen; deliver them after.

    A Python signal handler that raises in the middle of the session would
    unwind past the code that puts the target back.  So while frozen, these
    signals are only noted, and re-sent to ckpt itself after the thaw, where the
    original handlers run.  Only the main thread can install handlers; elsewhere
    this does nothing.
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


class TracerSession:
    """What a freeze session is, for one process (:class:`FrozenProcess`) or a tree
    (:class:`ckpt.live.tree.FrozenTree`): a with-block whose ptrace requests run on one
    tracer thread, with SIGINT/SIGTERM/SIGHUP held until the thaw.  A subclass gives
    ``_freeze()``, ``_thaw(stop)`` and ``_kill()`` (run on the tracer thread) and enters
    through :meth:`_start`."""

    _tracer: TracerThread | None
    _thawed: bool
    _owns_tracer: bool   # False: the tracer is a larger session's, which stops it
    _deferred: _SignalDeferral

    def _start(self, tracer_name: str, prefetch: Iterable[int]) -> None:
        """Start the tracer thread, prefetch the injection gadgets of ``prefetch`` (not
        frozen time: the targets still run), freeze; on any failure, thaw and re-raise."""
        self._deferred = _SignalDeferral()
        self._deferred.__enter__()
        self._tracer = TracerThread(tracer_name)
        try:
            from .inject import prefetch_gadgets

            for pid in prefetch:
                prefetch_gadgets(pid)
            self.run(self._freeze)
        except BaseException:
            self.thaw()
            self._deferred.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.thaw()
        finally:
            self._deferred.__exit__()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the tracer thread (every ptrace request must come from it)."""
        assert self._tracer is not None, f"{type(self).__name__} used outside its with block"
        return self._tracer.call(fn, *args, **kwargs)

    def thaw(self, *, stop: bool = False) -> None:
        """Put back every register and mask the session changed, detach every thread.

        Safe to call twice and from error paths: failures on threads that
        vanished are ignored, so every other thread is still released.
        Group-stopped processes stay stopped; ``stop`` leaves every process in
        group-stop (SIGSTOP) after detaching.
        """
        if self._thawed:
            return
        self._thawed = True
        if self._tracer is None:
            return
        try:
            self.run(self._thaw, stop)
        finally:
            if self._owns_tracer:
                self._tracer.stop()  # releases any thread that never stopped

    def kill(self) -> None:
        """SIGKILL the target(s) and wait until every traced thread has exited (no thaw
        needed).  A process's leader is waited for with WNOWAIT: its exit status stays
        for its real parent, which may be the very process running ckpt (the Python API)."""
        self._thawed = True
        if self._tracer is None:
            return
        try:
            self.run(self._kill)
        finally:
            if self._owns_tracer:
                self._tracer.stop()

    def _freeze(self) -> None:
        raise NotImplementedError

    def _thaw(self, stop: bool) -> None:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError


@dataclass
class FrozenThread:
    """One seized thread: what it was when frozen, and what the injector did to it."""

    tid: int
    regs: pt.user_regs_struct | None = None  # as found at freeze; restored at thaw
    sigmask: int = 0                          # as found at freeze; restored at thaw
    stopped: bool = False                     # reached a ptrace stop ckpt can work from
    stop_signal: int = 0                      # WSTOPSIG of that stop: SIGTRAP when ckpt's interrupt
                                              # stopped it, the stop signal when it was in group-stop
    dirty: bool = False                       # registers or mask changed by the injector
    in_stub: bool = False                     # stopped inside injected code: park it first
    _xstate: bytes | None = None

    def xstate(self) -> bytes:
        """The thread's XSAVE area (PTRACE_GETREGSET NT_X86_XSTATE), read once."""
        if self._xstate is None:
            self._xstate = pt.get_regset(self.tid, pt.NT_X86_XSTATE)
        return self._xstate


@dataclass
class FrozenProcess(TracerSession):
    """Every thread of ``pid`` seized and stopped, until :meth:`thaw`.

    Use as ``with FrozenProcess(pid) as proc: ...``.  Work that issues ptrace
    requests itself (reading registers, regsets) runs through :meth:`run`.
    """

    pid: int
    timeout: float = DEFAULT_FREEZE_TIMEOUT
    threads: dict[int, FrozenThread] = field(default_factory=dict)
    freeze_time: float = 0.0
    seccomp_suspended: bool = False   # PTRACE_O_SUSPEND_SECCOMP on every thread (see _suspend_seccomp)
    options: int = SEIZE_OPTIONS      # PTRACE_O_* every thread is seized with
    # Called on the tracer thread as (thread, new pid, PTRACE_EVENT_*) when a thread being
    # stopped forks a process (its own process's new threads are adopted here); None: one
    # process alone, whose seize options report no forks.
    on_new_process: Callable[[FrozenThread, int, int], None] | None = None
    _thawed: bool = False
    _injector: Any = None
    _tracer: TracerThread | None = None
    _owns_tracer: bool = True         # False: a session's (FrozenTree's), which stops it

    @classmethod
    def in_session(cls, pid: int, tracer: TracerThread, *, timeout: float = DEFAULT_FREEZE_TIMEOUT,
                   options: int = SEIZE_OPTIONS,
                   on_new_process: Callable[[FrozenThread, int, int], None] | None = None) -> FrozenProcess:
        """A process frozen by a larger session that owns ``tracer`` (not entered with
        ``with``): the session seizes its threads (:meth:`seize_thread`), waits for them
        (:meth:`wait_stopped`), calls :meth:`frozen` once all are stopped, and thaws it;
        its :meth:`thaw` and :meth:`kill` leave the tracer thread to the session."""
        return cls(pid, timeout, options=options, on_new_process=on_new_process, _tracer=tracer,
                   _owns_tracer=False)

    # -- the session ----------------------------------------------------------------

    def __enter__(self) -> FrozenProcess:
        self._start(f"ckpt-tracer-{self.pid}", [self.pid])
        return self

    # -- freezing -------------------------------------------------------------------

    def _freeze(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        with wrap_process_errors(self.pid, "ptrace seize", attached=False):
            pt.seize(self.pid, self.options)
        self.threads[self.pid] = FrozenThread(self.pid)
        with wrap_process_errors(self.pid, "freeze", attached=True):
            pt.interrupt(self.pid)
            pending = [self.threads[self.pid]]
            while True:
                for thread in pending:
                    self.wait_stopped(thread, deadline)
                pending = self.seize_new_threads()
                pending += [t for t in self.threads.values() if not t.stopped and t not in pending]
                if not pending:
                    break
            self.frozen()
        self.freeze_time = time.monotonic() - t0

    def seize_thread(self, tid: int) -> FrozenThread | None:
        """``PTRACE_SEIZE`` + ``PTRACE_INTERRUPT`` one thread, without waiting for its stop
        (:meth:`wait_stopped`); None when it exited meanwhile.  ``OSError`` otherwise."""
        try:
            pt.seize(tid, self.options)
        except OSError as err:
            if err.errno == errno.ESRCH:
                return None  # exited meanwhile
            if err.errno == errno.EPERM and tid in self.threads:
                return None  # auto-attached through TRACECLONE meanwhile
            raise
        thread = self.threads[tid] = FrozenThread(tid)
        pt.interrupt(tid)
        return thread

    def seize_new_threads(self) -> list[FrozenThread]:
        """Seize and interrupt the threads of /proc/PID/task not seized yet; the new ones."""
        try:
            tids = procfs.list_threads(self.pid)
        except FileNotFoundError:
            raise TargetExited(self.pid, "freeze") from None
        return [thread for tid in tids if tid not in self.threads and (thread := self.seize_thread(tid))]

    def frozen(self) -> None:
        """Every thread stopped: keep their registers and masks (put back at thaw), and
        suspend seccomp for the injections."""
        for thread in self.threads.values():
            thread.regs = pt.get_regs(thread.tid)
            thread.sigmask = pt.get_sigmask(thread.tid)
        self._suspend_seccomp()

    def _suspend_seccomp(self) -> None:
        """Let ckpt's injected syscalls bypass the threads' seccomp filters, or refuse.

        ckpt injects getitimer, prctl, rt_sigaction, mmap... into every frozen
        target; a filter that kills at one of them would make the dump what kills
        the process.  PTRACE_O_SUSPEND_SECCOMP (as CRIU's dump) is set only now,
        every thread stopped: the target's own code never runs suspended (only
        the stub's syscalls do), and the flag goes with the detach
        (kernel/ptrace.c __ptrace_unlink clears task->ptrace).  Where ckpt cannot
        set it, it cannot read the filters either (PTRACE_SECCOMP_GET_FILTER needs
        the same CAP_SYS_ADMIN): it refuses before injecting anything.  One window
        is left: should ckpt die while a thread stops at the entry of an injected
        syscall that its filters forbid, the kernel applies them once ckpt is gone
        (seccomp runs after the syscall-entry stop, kernel/entry/common.c
        syscall_trace_enter)."""
        why = seccomp.suspension_unavailable()
        if not why:
            # Every thread, filtered or not: one ptrace call each, where telling which are
            # filtered would read each thread's /proc status (about as long as an injection).
            for tid in self.threads:
                pt.set_options(tid, self.options | pt.PTRACE_O_SUSPEND_SECCOMP)
            self.seccomp_suspended = True
            return
        for tid in self.threads:
            with contextlib.suppress(FileNotFoundError):
                if procfs.read_status(tid).seccomp == SECCOMP_MODE_FILTER:
                    raise TargetError(f"thread {tid} of pid {self.pid} runs under seccomp filters that ckpt can "
                                      f"neither read nor suspend ({why}; PTRACE_O_SUSPEND_SECCOMP needs it): a "
                                      "syscall ckpt injects could kill the process, so ckpt does not checkpoint it")

    def wait_stopped(self, thread: FrozenThread, deadline: float) -> None:
        """Wait until ``thread`` sits in a ptrace-stop ckpt can work from.

        A signal-delivery-stop is let through at once (``PTRACE_INTERRUPT`` then
        ``PTRACE_CONT`` with the signal: the kernel delivers it as it would have,
        with its siginfo, and the interrupt stops the thread right after).  A
        clone event means a new thread was auto-attached: it is adopted.  A fork
        event (seize options with TRACEFORK/TRACEVFORK) or a clone that made a
        process goes to ``on_new_process``: the new process is auto-attached too
        and arrives stopped (kernel/ptrace.c ``ptrace_init_task``: a seized
        tracer's new tracee gets ``JOBCTL_TRAP_STOP``).
        """
        while True:
            raw = _wait_until(thread.tid, deadline)
            if raw is None:
                raise self._stuck(thread)
            status = pt.StopStatus(thread.tid, raw)
            if status.exited:
                self.threads.pop(thread.tid, None)
                if thread.tid == self.pid:
                    raise TargetExited(self.pid, "freeze")
                return
            if status.event == pt.PTRACE_EVENT_STOP:
                thread.stopped = True
                thread.stop_signal = status.signal
                return
            if status.event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE):
                new_tid = pt.get_event_msg(thread.tid)
                if self.on_new_process is not None and not self._is_own_thread(new_tid, status.event):
                    self.on_new_process(thread, new_tid, status.event)
                elif new_tid not in self.threads:
                    child = FrozenThread(new_tid)
                    self.threads[new_tid] = child
                    self.wait_stopped(child, deadline)
                pt.interrupt(thread.tid)
                pt.cont(thread.tid, 0)
                continue
            if status.event == 0 and status.signal:
                pt.interrupt(thread.tid)
                pt.cont(thread.tid, status.signal)
                continue
            pt.cont(thread.tid, 0)

    def _is_own_thread(self, tid: int, event: int) -> bool:
        """Is the task a clone event reported a thread of this process (not a process)?"""
        if event != pt.PTRACE_EVENT_CLONE:
            return False
        try:
            return procfs.read_status(tid).tgid == self.pid
        except (FileNotFoundError, ProcessLookupError):
            return True   # gone already: adopted as a thread, its exit is waited for as one

    def _stuck(self, thread: FrozenThread) -> FreezeTimeout:
        """The error for a thread that did not stop in time (names its state and wchan)."""
        tid = thread.tid
        try:
            comm = procfs.read_comm(self.pid, tid)
            state = procfs.read_stat(tid).state
            with open(f"/proc/{self.pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip() or "?"
        except OSError:
            comm, state, wchan = "?", "?", "?"
        where = f"in {wchan}" if wchan not in ("0", "?") else "wait channel unknown"
        return FreezeTimeout(
            f"thread {tid} ({comm}) of pid {self.pid} did not stop within {self.timeout:g} s "
            f"(state {state}, {where}); every thread was released and nothing was written")

    # -- thawing --------------------------------------------------------------------

    def _thaw(self, stop: bool) -> None:
        if self._injector is not None:
            with contextlib.suppress(CkptError, OSError):
                self._injector.release()
        if stop:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGSTOP)
        for thread in list(self.threads.values()):
            if not thread.stopped:
                continue  # still running: released when the tracer thread ends
            if thread.dirty and thread.regs is not None:
                with contextlib.suppress(CkptError, OSError):
                    if thread.in_stub and self._injector is not None:
                        self._injector.park(thread)
                with contextlib.suppress(OSError):
                    pt.set_regs(thread.tid, thread.regs)
                with contextlib.suppress(OSError):
                    pt.set_sigmask(thread.tid, thread.sigmask)
            with contextlib.suppress(OSError):
                pt.detach(thread.tid, 0)

    def _kill(self) -> None:
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

    # -- what the frozen threads were -----------------------------------------------

    def regs(self, tid: int | None = None) -> pt.user_regs_struct:
        """The registers a thread had when frozen."""
        regs = self.threads[tid or self.pid].regs
        assert regs is not None
        return regs

    def sigmask(self, tid: int | None = None) -> int:
        """The signal mask a thread had when frozen."""
        return self.threads[tid or self.pid].sigmask

    # -- injection ------------------------------------------------------------------

    @property
    def injector(self) -> Any:
        """The session's :class:`ckpt.live.inject.Injector` (created on first use)."""
        if self._injector is None:
            from .inject import Injector

            self._injector = Injector(self)
        return self._injector

    def inject(self, nr: int, *args: int, tid: int | None = None, undo: tuple[int, int] | None = None) -> int:
        """Run syscall ``nr`` in thread ``tid`` (default: the leader); return its raw result.

        Negative values in (-4096, 0) are ``-errno``, as the kernel returns them.
        ``undo`` is ``(syscall, second argument)`` run with the result as first
        argument should ckpt die before the injection completes (e.g. ``close``
        for a syscall that creates an fd).
        """
        with wrap_process_errors(self.pid, f"syscall injection ({nr})", attached=True):
            return self.run(lambda: self.injector.syscall(tid or self.pid, nr, *args, undo=undo))

    def inject_checked(self, nr: int, *args: int, tid: int | None = None, what: str = "",
                       undo: tuple[int, int] | None = None) -> int:
        """:meth:`inject`, raising ``OSError`` for an ``-errno`` result."""
        res = self.inject(nr, *args, tid=tid, undo=undo)
        if -4096 < res < 0:
            raise OSError(-res, f"{what or nr}: {os.strerror(-res)} (in target {self.pid})")
        return res

    def scratch(self, length: int = PAGE) -> int:
        """Address of a scratch buffer in the target for syscall outputs (valid until
        :meth:`release_injector`)."""
        with wrap_process_errors(self.pid, "preparing syscall injection", attached=True):
            return self.run(lambda: self.injector.scratch(length))

    def layout(self) -> list[procfs.Mapping]:
        """The VMAs as the freeze found them: /proc/PID/maps read once in the session, by
        the injector before it maps anything (read now when nothing was injected yet).

        The frozen round uses this read instead of a second one (7-8 ms of frozen time at
        20,000 mappings: fs/proc/task_mmu.c prints them one seq_file page per read(2)).
        It is the layout the round would read, once :meth:`release_injector` ran:
        the stopped threads change nothing, ckpt's injections leave nothing behind (the
        stub area lies in a free range with a free page each side, so it never merged
        with a VMA of the target, and is unmapped by the release; the mlockall probe of
        ckpt/taskstate.py is unmapped at once), and no other process can map or unmap
        in this mm: a CLONE_VM sharer is refused (ckpt/live/tree.py), remote
        process_madvise(2) advice changes no VMA (mm/madvise.c
        process_madvise_remote_valid: COLD, PAGEOUT, WILLNEED, COLLAPSE).  What remains
        is another process holding a userfaultfd of this mm, whose UFFDIO_(UN)REGISTER
        splits and merges VMAs (fs/userfaultfd.c): it can do so just after any read as
        well, and the written-scan checks registration itself (CHECK_WPASYNC)."""
        if self._injector is not None:
            return list(self._injector.maps)
        return procfs.read_maps(self.pid)

    def release_injector(self) -> None:
        """Remove everything injection put in the target (its code and data area),
        now: before the layout and memory are read for the image."""
        if self._injector is not None:
            with wrap_process_errors(self.pid, "removing the injector", attached=True):
                self.run(self._injector.release)

    def read(self, address: int, length: int) -> bytes:
        """Read target memory through /proc/PID/mem (works on any mapping)."""
        with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            return mem.read(length)


def _wait_until(tid: int, deadline: float) -> int | None:
    """The next wait status of ``tid`` (``__WALL``), or None once ``deadline`` passed.

    waitpid has no timeout, so this polls: at first without sleeping (a thread
    interrupted in a syscall stops within microseconds), then with sleeps
    growing to 2 ms.
    """
    delay = 0.0
    while True:
        try:
            pid, raw = os.waitpid(tid, os.WNOHANG | pt.WALL)
        except InterruptedError:
            continue
        if pid:
            return raw
        now = time.monotonic()
        if now >= deadline:
            return None
        time.sleep(min(delay, deadline - now))
        delay = min(max(delay * 2, 25e-6), 2e-3)

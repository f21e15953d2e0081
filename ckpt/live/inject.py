"""Syscall injection into a frozen target, safe to abandon at any instant.

The classic way (load the registers, point rip at a ``syscall`` instruction,
single-step, put the registers back) leaves a thread with injected registers —
and the trap flag — whenever the tracer dies between the two register loads:
the kernel detaches it (kernel/ptrace.c ``exit_ptrace``) and it runs on from
there, into SIGTRAP or SIGSEGV.  ckpt killed by SIGKILL, the OOM killer or a
timeout inside a frozen window killed its target that way (issue 7, item 5).

Here every injected syscall runs through a small stub that ckpt maps into the
target (``ckpt.arch.x86_64.STUB_CODE``), whose code after the syscall puts the
thread back by itself.  ckpt stops the thread at the syscall's entry and exit
(PTRACE_SYSCALL) and never lets it run that code; should ckpt vanish at any
point, the thread runs it:

1. the injected syscall (if it had not run yet);
2. its *undo* with the result as argument: ``close`` of an fd it created, for
   example, so that no fd is left behind;
3. path A: ``munmap`` of the stub area through the vDSO's ``syscall; ...; ret``
   code, whose ``ret`` lands on the target's own ``rt_sigreturn`` code (glibc,
   musl and Go all carry one), with an ``rt_sigframe`` that ckpt wrote below
   the leader's stack pointer (past the red zone: memory the kernel itself uses
   for signal frames).  rt_sigreturn loads every register, the signal mask and
   the FPU state.  Nothing of ckpt remains;
   path B (when path A's pieces are missing — no such gadgets, no room on a
   ``[stack]``, or a shadow stack): restore the signal mask, pop every register
   from a save block in the stub area and jump back.  The thread is restored;
   the stub area stays mapped.

Only one thread is ever inside the stub: after its injections a thread is
*parked* — PTRACE_INTERRUPT then PTRACE_CONT turn its syscall-exit stop into a
PTRACE_EVENT_STOP without running an instruction, where its own registers are
loaded back, so that resuming it runs the kernel's syscall-restart logic as if
it had only been interrupted.  While a thread is in the stub, every signal is
blocked for it (PTRACE_SETSIGMASK), so no handler can run on injected
registers, and signals arriving meanwhile stay queued with their siginfo.

The stub area itself is created by two syscalls (mmap, mprotect) run through
the same vDSO code with a two-frame chain: should ckpt die there, the thread
unmaps the area and sigreturns.  On path B those two (and the final munmap)
are plain injections: the one window left, a few microseconds, is documented.

A thread that was in a restartable syscall comes back, on the abandon path,
with the restart rule applied in advance (``ckpt.arch.x86_64.restarted``).  It
differs from the kernel's own restart in two corner cases: a signal pending at
that very moment whose handler lacks SA_RESTART (the syscall restarts instead of
failing with EINTR), and on path A a syscall that had a restart block (sleeps,
poll, futex waits with a timeout): rt_sigreturn discards the block, so the
syscall starts again with its original timeout (its number read from the
``mov $NR, %eax`` before the syscall instruction when the thread was already in
restart_syscall; should that fail, the sleep returns EINTR).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import procfs
from .._sys import ptrace as pt
from .._sys.libc import SYS_getpid, SYS_mmap, SYS_mprotect, SYS_munmap
from ..arch import x86_64 as arch
from ..errors import TargetError, TargetExited

if TYPE_CHECKING:
    from .freeze import FrozenProcess, FrozenThread

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
SYSCALL_STOP = signal.SIGTRAP | 0x80   # PTRACE_O_TRACESYSGOOD
ALL_SIGNALS = (1 << 64) - 1            # SIGKILL/SIGSTOP stay unblockable whatever the mask says
NO_UNDO = (SYS_getpid, 0)
_ALIGN = 64                            # XSAVE areas and frames


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) & ~(to - 1)


@dataclass(frozen=True)
class Gadgets:
    """Code path A needs in the target: the vDSO's ``syscall; ...; ret`` and an rt_sigreturn."""

    syscall_ret: int
    sigreturn: int


# (pid, start, end, offset, inode) of an executable mapping -> gadget offset or -1.
# Code does not change between the freezes of one dump; the bytes are checked again.
_gadget_cache: dict[tuple[int, int, int, int, int], int] = {}


def find_gadgets(pid: int, maps: list[procfs.Mapping], mem_fd: int) -> Gadgets | None:
    """Look for path A's gadgets in the target's executable mappings (libc first)."""
    def search(m: procfs.Mapping, finder: Callable[[bytes], int], length: int) -> int:
        key = (pid, m.start, m.end, m.offset, m.inode)
        offset = _gadget_cache.get(key)
        if offset is None:
            if len(_gadget_cache) > 4096:  # a long-lived caller dumping many processes
                _gadget_cache.clear()
            try:
                code = os.pread(mem_fd, m.size, m.start)
            except OSError:
                code = b""
            offset = finder(code)
            _gadget_cache[key] = offset
        if offset < 0:
            return -1
        try:  # still there?
            code = os.pread(mem_fd, length, m.start + offset)
        except OSError:
            return -1
        return m.start + offset if finder(code) == 0 else -1

    executable = [m for m in maps if m.executable and m.readable]
    vdso = [m for m in executable if m.path == "[vdso]"]
    syscall_ret = next((a for m in vdso if (a := search(m, arch.find_syscall_ret, 16)) >= 0), -1)
    if syscall_ret < 0:
        return None
    files = [m for m in executable if m.path.startswith("/")]
    files.sort(key=lambda m: "libc" not in os.path.basename(m.path))
    for m in files:
        sigreturn = search(m, arch.find_sigreturn, 9)
        if sigreturn >= 0:
            return Gadgets(syscall_ret, sigreturn)
    return None


def prefetch_gadgets(pid: int) -> None:
    """Search for path A's gadgets while the target still runs (the search reads a few
    MB of code; a later :class:`Injector` of the same session finds them cached)."""
    try:
        maps = procfs.read_maps(pid)
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        find_gadgets(pid, maps, fd)
    finally:
        os.close(fd)


class Injector:
    """Runs syscalls in the threads of one :class:`FrozenProcess` (see the module docstring).

    Every method runs on the session's tracer thread.
    """

    def __init__(self, proc: FrozenProcess) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.mem_fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        self.base = 0                 # the stub area while it is mapped
        self.current: FrozenThread | None = None  # the one thread injections run in now
        self.frames = 0               # path A: the frame area (scratch, frame 1, frame 0, FPU state)
        self.gadgets: Gadgets | None = None
        self._saved_frames = b""      # what the frame area held before
        self._closed = False
        # The layout as frozen, before the injector maps anything: the frozen round takes
        # it from here (FrozenProcess.layout), so the maps file is read once while frozen.
        self.maps: list[procfs.Mapping] = procfs.read_maps(proc.pid)
        maps = self.maps
        # Each pass over the VMAs costs ~1 ms of frozen time at 20,000 mappings: the code
        # mappings are picked out once, the stack found by bisection, the free area by a
        # walk that stops at the first gap.
        code = [m for m in maps if m.executable]
        self.vdso_syscall = self._vdso_syscall(code)
        if os.environ.get("CKPT_INJECTOR") != "B" and not _shadow_stack(proc.pid):
            self.gadgets = find_gadgets(proc.pid, code, self.mem_fd)
            if self.gadgets is not None:
                self._place_frames(maps)
        # /proc/PID/maps lists the VMAs in address order, disjoint (fs/proc/task_mmu.c walks
        # the maple tree): free_area takes them as they are, touching ones included, without
        # a normalize that costs ~4 ms in the frozen window at 20,000 mappings.
        area = arch.free_area(((m.start, m.end) for m in maps), arch.STUB_SIZE)
        if area is None:
            raise TargetError("no free address range in the target for ckpt's syscall injector")
        self.area = area

    # -- public ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """"A" (nothing left behind if ckpt dies) or "B" (the stub area may stay)."""
        return "A" if self.frames else "B"

    def syscall(self, tid: int, nr: int, *args: int, undo: tuple[int, int] | None = None) -> int:
        """Run syscall ``nr`` in thread ``tid``; return the raw result (-errno on failure).

        ``undo`` (a syscall and its second argument) runs with the result as first
        argument should ckpt die before the injection completes.  On path A a
        syscall without one runs straight at the vDSO gadget, with no stub area at
        all; one with an undo goes through the stub area, which then belongs to
        this thread alone (it is unmapped before any other thread is entered, so
        that the area is never orphaned nor unmapped under a thread running in it).
        """
        thread = self.proc.threads[tid]
        if self._closed:
            raise TargetError("the syscall injector was already released")
        self._enter(thread)
        if self.frames and self.gadgets is not None and undo is None:
            # While the stub area exists, frame 1 comes first: it unmaps the area.
            rsp = self._frame1 if self.base else self._frame0
            regs = self._regs_for(thread, rip=self.gadgets.syscall_ret, rsp=rsp, nr=nr, args=args)
            return self._run(thread, regs)
        self._ensure_stub(thread)
        undo_nr, undo_arg = undo or NO_UNDO
        regs = self._regs_for(thread, rip=self.base, rsp=self.base + arch.STUB_STACK_TOP, nr=nr, args=args)
        regs.r12, regs.r13 = undo_nr, undo_arg & arch.U64
        regs.rbx, regs.r14 = self.base, arch.STUB_SIZE
        regs.r15 = self._frame0 if self.frames else 0
        regs.rbp = self.gadgets.syscall_ret if self.frames and self.gadgets else 0
        return self._run(thread, regs)

    def scratch(self, length: int) -> int:
        """Address of a scratch buffer in the target (``length`` bytes at most) for
        syscall outputs: in the frame area on path A, in the stub area on path B."""
        if length > arch.STUB_SCRATCH_SIZE:
            raise ValueError(f"scratch of {length} bytes requested; the injector has {arch.STUB_SCRATCH_SIZE}")
        if self.frames:
            return self.frames
        thread = self.current or self.proc.threads[self.pid]
        self._enter(thread)
        self._ensure_stub(thread)
        return self.base + arch.STUB_SCRATCH

    def release(self) -> None:
        """Unmap the stub area, park the thread injections ran in, put the frame area back."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.base:
                thread = self.current or self.proc.threads[self.pid]
                self._enter(thread)
                self._unmap_stub(thread)
            if self.current is not None and self.current.in_stub:
                self.park(self.current)
            if self.frames and self._saved_frames:
                os.pwrite(self.mem_fd, self._saved_frames, self.frames)
        finally:
            os.close(self.mem_fd)

    def park(self, thread: FrozenThread) -> None:
        """Move ``thread`` from a stop inside injected code to a PTRACE_EVENT_STOP
        with its own registers and mask loaded back.

        Its mask goes back first (should ckpt die now, the injected code's own path
        puts the registers back), then PTRACE_INTERRUPT + PTRACE_CONT: on the way
        out of the syscall-exit stop the kernel handles the interrupt before
        returning to user mode (kernel/signal.c get_signal: job-control traps come
        before any signal), so no injected instruction runs.  The registers are
        loaded in that stop.
        """
        tid = thread.tid
        pt.set_sigmask(tid, thread.sigmask)
        pt.interrupt(tid)
        pt.cont(tid, 0)
        while True:
            status = pt.StopStatus(tid, pt.wait_tid(tid)[1])
            if status.exited:
                raise TargetExited(self.pid, "syscall injection")
            if status.event == pt.PTRACE_EVENT_STOP:
                break
            pt.cont(tid, 0)
        assert thread.regs is not None
        pt.set_regs(tid, thread.regs)
        thread.in_stub = False
        if self.current is thread:
            self.current = None

    # -- the stub area -----------------------------------------------------------------

    def _ensure_stub(self, thread: FrozenThread) -> None:
        """Map the stub area (``thread`` is the current thread)."""
        if self.base:
            return
        area = self.area
        got = self._plain(thread, SYS_mmap, area, arch.STUB_SIZE, PROT_READ | PROT_EXEC,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, arch.U64, 0)
        if got != area:
            raise TargetError(f"could not map ckpt's syscall injector at {area:#x} in pid {self.pid}: "
                              f"{os.strerror(-got) if -4096 < got < 0 else hex(got)}")
        self.base = area
        # /proc/PID/mem writes use FOLL_FORCE: the R-X page is written as ptrace pokes are.
        os.pwrite(self.mem_fd, arch.STUB_CODE, area)
        res = self._plain(thread, SYS_mprotect, area + arch.STUB_DATA, arch.STUB_SIZE - arch.STUB_DATA,
                          PROT_READ | PROT_WRITE)
        if res != 0:
            raise TargetError(f"mprotect of ckpt's syscall injector failed in pid {self.pid}: "
                              f"{os.strerror(-res) if -4096 < res < 0 else res}")
        if not self.frames:
            self._write_save_block(thread)

    def _unmap_stub(self, thread: FrozenThread) -> None:
        res = self._plain(thread, SYS_munmap, self.base, arch.STUB_SIZE)
        if res != 0:
            raise TargetError(f"munmap of ckpt's syscall injector failed in pid {self.pid}: {res}")
        self.base = 0

    def _plain(self, thread: FrozenThread, nr: int, *args: int) -> int:
        """A syscall that creates or removes the stub area itself.

        Path A runs it at the vDSO's ``syscall; ...; ret`` with rsp on frame 1:
        abandoned, the thread returns into rt_sigreturn of frame 1, which unmaps
        the stub area and returns into rt_sigreturn of frame 0, the thread's own
        state.  Path B runs it at a plain vDSO syscall instruction.
        """
        if self.frames and self.gadgets is not None:
            regs = self._regs_for(thread, rip=self.gadgets.syscall_ret, rsp=self._frame1, nr=nr, args=args)
        else:
            assert thread.regs is not None
            regs = self._regs_for(thread, rip=self.vdso_syscall, rsp=thread.regs.rsp, nr=nr, args=args)
        return self._run(thread, regs)

    # -- threads -------------------------------------------------------------------------

    def _enter(self, thread: FrozenThread) -> None:
        """Make ``thread`` the one injections run in: unmap a stub area the previous
        one owned (path A), park it, and write what ``thread`` needs to put itself
        back should ckpt die."""
        if self.current is thread:
            return
        previous = self.current
        if previous is not None:
            if self.frames and self.base:
                self._unmap_stub(previous)
            if previous.in_stub:
                self.park(previous)
        if self.frames:
            self._write_frames(thread)
        elif self.base:
            self._write_save_block(thread)
        self.current = thread

    def _regs_for(self, thread: FrozenThread, *, rip: int, rsp: int, nr: int,
                  args: tuple[int, ...]) -> pt.user_regs_struct:
        assert thread.regs is not None
        regs = pt.user_regs_struct.from_buffer_copy(thread.regs)
        regs.rip, regs.rsp, regs.rax, regs.orig_rax = rip, rsp, nr, arch.U64
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & arch.U64)
        return regs

    def _run(self, thread: FrozenThread, regs: pt.user_regs_struct) -> int:
        """Load ``regs`` and run the syscall they describe to its exit stop; return rax.

        The registers go in before the mask: abandoned in between, the thread
        runs the injected code with its own mask (a handler may then run on the
        injected stack, and returns there); the other order could leave it with
        every signal blocked.
        """
        tid = thread.tid
        thread.dirty = True
        pt.set_regs(tid, regs)
        thread.in_stub = True
        pt.set_sigmask(tid, ALL_SIGNALS)
        pt.syscall_step(tid)
        self._wait_syscall_stop(thread)   # entry
        pt.syscall_step(tid)
        self._wait_syscall_stop(thread)   # exit
        return arch.signed(pt.get_regs(tid).rax)

    def _wait_syscall_stop(self, thread: FrozenThread) -> None:
        tid = thread.tid
        while True:
            try:
                status = pt.StopStatus(tid, pt.wait_tid(tid)[1])
            except ChildProcessError:
                raise TargetExited(self.pid, "syscall injection") from None
            if status.exited:
                self.proc.threads.pop(tid, None)
                raise TargetExited(self.pid, "syscall injection")
            if status.stopped and os.WSTOPSIG(status.raw) == SYSCALL_STOP:
                return
            if status.event == 0 and status.signal:
                # Every blockable signal is blocked: this is SIGSTOP (let it stop
                # the group, as it would have), or a fault in injected code.
                if status.signal == signal.SIGSTOP:
                    pt.syscall_step(tid, signal.SIGSTOP)
                    continue
                raise TargetError(f"injected syscall faulted in thread {tid} of pid {self.pid} "
                                  f"({signal.Signals(status.signal).name})")
            # A group-stop (PTRACE_EVENT_STOP) or another event: go on.
            pt.syscall_step(tid)

    # -- what a thread needs to put itself back --------------------------------------

    def _place_frames(self, maps: list[procfs.Mapping]) -> None:
        """Path A: a frame area below the leader's stack pointer, past its red zone,
        inside the ``[stack]`` mapping (memory that signal delivery uses as well):
        a scratch buffer, frame 1, frame 0 and the FPU state frame 0 points to."""
        leader = self.proc.threads[self.pid]
        assert leader.regs is not None
        rsp = leader.regs.rsp
        at = bisect.bisect_right(maps, rsp - arch.RED_ZONE, key=lambda m: m.start) - 1   # maps: ascending
        stack = maps[at] if at >= 0 and rsp - arch.RED_ZONE < maps[at].end else None
        if stack is None or stack.path != "[stack]":
            return
        frame = _round_up(arch.SIGFRAME_SIZE, _ALIGN)
        size = arch.STUB_SCRATCH_SIZE + 2 * frame + _round_up(len(leader.xstate()) + 4, _ALIGN)
        top = (rsp - arch.RED_ZONE) & ~(_ALIGN - 1)
        if top - size < stack.start:
            return
        self.frames = top - size
        self._frame1 = self.frames + arch.STUB_SCRATCH_SIZE
        self._frame0 = self._frame1 + frame
        self._fpstate = self._frame0 + frame
        self._saved_frames = os.pread(self.mem_fd, size, self.frames)

    def _write_frames(self, thread: FrozenThread) -> None:
        """Frame 1: unmap the stub area, then rt_sigreturn into frame 0.
        Frame 0: ``thread``'s own registers (restart rule applied), mask and FPU."""
        assert thread.regs is not None and self.gadgets is not None
        regs = pt.regs_to_dict(thread.regs)
        original = None
        if regs["orig_rax"] == arch.SYS_restart_syscall:
            with contextlib.suppress(OSError):
                original = arch.syscall_nr_before(os.pread(self.mem_fd, 7, regs["rip"] - 7))
        own = arch.restarted(regs, restart_block=False, original_nr=original)
        unmap = dict(own, rip=self.gadgets.syscall_ret, rsp=self._frame0, rax=SYS_munmap,
                     rdi=self.area, rsi=arch.STUB_SIZE)
        blob = bytearray(self._fpstate - self._frame1)
        blob[0 : arch.SIGFRAME_SIZE] = arch.rt_sigframe(unmap, ALL_SIGNALS, 0, self.gadgets.sigreturn)
        at0 = self._frame0 - self._frame1
        blob[at0 : at0 + arch.SIGFRAME_SIZE] = arch.rt_sigframe(own, thread.sigmask, self._fpstate,
                                                                 self.gadgets.sigreturn)
        os.pwrite(self.mem_fd, bytes(blob) + arch.sigframe_fpstate(thread.xstate()), self._frame1)

    def _write_save_block(self, thread: FrozenThread) -> None:
        """Path B: ``thread``'s registers and mask in the stub area's save block."""
        assert thread.regs is not None
        os.pwrite(self.mem_fd, arch.stub_save_block(pt.regs_to_dict(thread.regs), thread.sigmask),
                  self.base + arch.STUB_SAVE_REGS)

    def _vdso_syscall(self, maps: list[procfs.Mapping]) -> int:
        """A ``syscall`` instruction for path B's plain injections: the vDSO's, or,
        in a process that unmapped its vDSO, the first one in its executable
        mappings (any two bytes 0f 05 are one, whatever precedes them)."""
        code = [m for m in maps if m.path == "[vdso]"]
        code += [m for m in maps if m.executable and m.readable and m.path != "[vdso]"]
        for m in code:
            try:
                pos = os.pread(self.mem_fd, m.size, m.start).find(arch.SYSCALL_INSN)
            except OSError:
                continue
            if pos >= 0:
                return m.start + pos
        if _exited(self.pid):
            # Killed meanwhile: its memory reads as nothing once the mm is gone.
            raise TargetExited(self.pid, "syscall injection")
        raise TargetError(f"no syscall instruction found in the code of pid {self.pid}")


def _exited(pid: int) -> bool:
    """Whether ``pid`` is dead, a zombie, or on its way there (a traced process killed
    meanwhile): between releasing its memory (kernel/exit.c do_exit -> exit_mm) and
    becoming a zombie it still shows R or D, but /proc/PID/maps reads empty, as for a
    task without an mm (fs/proc/task_mmu.c m_start)."""
    try:
        if procfs.read_status(pid).state[:1] in ("Z", "X"):
            return True
        with open(f"/proc/{pid}/maps", "rb") as f:
            return not f.read(1)
    except (FileNotFoundError, ProcessLookupError):
        return True


def _shadow_stack(pid: int) -> bool:
    """True when a thread of ``pid`` runs with a CET shadow stack: the ``ret`` and
    rt_sigreturn of path A would not match it (x86_Thread_features in status)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:  # bytes: Name may be any bytes
            return any(line.startswith(b"x86_Thread_features:") and b"shstk" in line for line in f)
    except OSError:
        return False


def inject_syscall(tid: int, base: pt.user_regs_struct, insn: int, nr: int, *args: int,
                   on_clone: Callable[[int], None] | None = None, step: bool = False) -> tuple[int, list[int]]:
    """Execute one syscall in stopped thread ``tid``; leave it stopped at its exit.

    This is the classic injection, *not* safe to abandon: it is for the restore
    child, which ckpt traces with PTRACE_O_EXITKILL (the half-built process dies
    with ckpt).  Registers are ``base`` with the syscall number and arguments
    loaded, ``rip`` at the ``syscall`` instruction ``insn`` and ``orig_rax = -1``;
    returns the raw result and the signals that arrived meanwhile (suppressed).
    A ``PTRACE_EVENT_CLONE`` stop on the way is reported to ``on_clone``.

    The thread runs to the syscall's entry and exit stops (PTRACE_SYSCALL; the
    tracer set PTRACE_O_TRACESYSGOOD): ptrace notifications, which queue no
    signal.  It is left in the exit stop, outside get_signal: detached from
    there it would return to user mode without the syscall-restart logic (see
    ckpt.rebuild.Rebuilder.release).

    ``step`` single-steps instead: one stop instead of two, about a third
    faster over a rebuild's thousands of mmaps, but the stop is a trap that *is*
    a signal, a forced SIGTRAP (arch/x86/kernel/ptrace.c user_single_step_report
    -> send_sigtrap -> force_sig_fault): kernel/signal.c force_sig_info_to_task
    resets the SIGTRAP handler to SIG_DFL when SIGTRAP is blocked or ignored,
    and a SIGTRAP already pending absorbs it (legacy_queue) and is taken for
    the step's.  Only for a thread whose sigactions, mask and pending signals
    are all set afterwards.
    """
    regs = pt.user_regs_struct.from_buffer_copy(base)
    regs.rax = nr
    for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
        setattr(regs, name, value & arch.U64)
    regs.rip = insn
    regs.orig_rax = arch.U64
    resume = pt.singlestep if step else pt.syscall_step
    pt.set_regs(tid, regs)
    resume(tid, 0)
    signals: list[int] = []
    entered = False
    while True:
        _, raw = pt.wait_tid(tid)
        status = pt.StopStatus(tid, raw)
        if status.exited:
            raise ProcessLookupError(errno.ESRCH, f"thread {tid} exited during syscall injection")
        if status.event == pt.PTRACE_EVENT_CLONE and on_clone is not None:
            on_clone(pt.get_event_msg(tid))
        elif step and status.signal == signal.SIGTRAP and status.event == 0:
            break
        elif not step and status.signal == SYSCALL_STOP:
            if entered:
                break
            entered = True
        elif status.event == 0 and status.signal:
            signals.append(status.signal)
        resume(tid, 0)
    value = pt.get_regs(tid).rax
    return arch.signed(value), signals


__all__ = ["Gadgets", "Injector", "find_gadgets", "inject_syscall", "prefetch_gadgets"]

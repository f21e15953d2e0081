"""ptrace(2) on x86_64: seize, interrupt, wait, registers, regsets, sigmask, rseq.

Requests and layouts from include/uapi/linux/ptrace.h and
arch/x86/include/asm/user_64.h.  ``PTRACE_SEIZE`` (not ``ATTACH``) is used
throughout so that attaching sends no SIGSTOP and ``PTRACE_INTERRUPT`` can stop
a thread without disturbing its signal state (man 2 ptrace, "PTRACE_SEIZE").
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Final

from .libc import SYS_ptrace, address_of, syscall

PTRACE_PEEKDATA: Final = 2
PTRACE_CONT: Final = 7
PTRACE_KILL: Final = 8
PTRACE_SINGLESTEP: Final = 9
PTRACE_SYSCALL: Final = 24
PTRACE_GETREGS: Final = 12
PTRACE_SETREGS: Final = 13
PTRACE_GETFPREGS: Final = 14
PTRACE_SETFPREGS: Final = 15
PTRACE_DETACH: Final = 17
PTRACE_SETOPTIONS: Final = 0x4200
PTRACE_GETEVENTMSG: Final = 0x4201
PTRACE_GETSIGINFO: Final = 0x4202
PTRACE_GETREGSET: Final = 0x4204
PTRACE_SETREGSET: Final = 0x4205
PTRACE_SEIZE: Final = 0x4206
PTRACE_INTERRUPT: Final = 0x4207
PTRACE_LISTEN: Final = 0x4208
PTRACE_PEEKSIGINFO: Final = 0x4209
PTRACE_GETSIGMASK: Final = 0x420A
PTRACE_SETSIGMASK: Final = 0x420B
PTRACE_SECCOMP_GET_FILTER: Final = 0x420C
PTRACE_SECCOMP_GET_METADATA: Final = 0x420D
PTRACE_GET_RSEQ_CONFIGURATION: Final = 0x420F

PTRACE_O_TRACESYSGOOD: Final = 0x01
PTRACE_O_TRACEFORK: Final = 0x02
PTRACE_O_TRACEVFORK: Final = 0x04
PTRACE_O_TRACECLONE: Final = 0x08
PTRACE_O_EXITKILL: Final = 0x100000
PTRACE_O_SUSPEND_SECCOMP: Final = 0x200000

PTRACE_EVENT_FORK: Final = 1
PTRACE_EVENT_VFORK: Final = 2
PTRACE_EVENT_CLONE: Final = 3
PTRACE_EVENT_STOP: Final = 128

NT_PRSTATUS: Final = 1
NT_PRFPREG: Final = 2
NT_X86_XSTATE: Final = 0x202

WALL: Final = 0x40000000  # __WALL: wait for threads too (man 2 waitpid)

# Syscall-restart return values (include/linux/errno.h): a thread stopped
# while inside an interruptible syscall shows one of these in rax.
ERESTARTSYS: Final = 512
ERESTARTNOINTR: Final = 513
ERESTARTNOHAND: Final = 514
ERESTART_RESTARTBLOCK: Final = 516


class user_regs_struct(ctypes.Structure):
    """``struct user_regs_struct`` (arch/x86/include/asm/user_64.h), 216 bytes.

    ``fs_base``/``gs_base`` are part of it, so ``PTRACE_SETREGS`` sets the TLS base.
    """

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]


assert ctypes.sizeof(user_regs_struct) == 216
REG_NAMES: Final = tuple(name for name, _ in user_regs_struct._fields_)


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class ptrace_rseq_configuration(ctypes.Structure):
    """``struct ptrace_rseq_configuration`` (include/uapi/linux/ptrace.h), 24 bytes."""

    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


assert ctypes.sizeof(ptrace_rseq_configuration) == 24


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """Raw ptrace syscall (not glibc's wrapper, whose PEEK* convention differs)."""
    return syscall(SYS_ptrace, request, pid, addr, data)


def seize(tid: int, options: int = 0) -> None:
    """Attach to one thread without stopping it."""
    ptrace(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """Ask a seized thread to enter a ``PTRACE_EVENT_STOP``."""
    ptrace(PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_CONT, tid, 0, sig)


def syscall_step(tid: int, sig: int = 0) -> None:
    """``PTRACE_SYSCALL``: resume until the next syscall entry or exit (or a signal)."""
    ptrace(PTRACE_SYSCALL, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_SINGLESTEP, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_DETACH, tid, 0, sig)


def get_event_msg(tid: int) -> int:
    msg = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return msg.value


def get_regs(tid: int) -> user_regs_struct:
    regs = user_regs_struct()
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def set_regs(tid: int, regs: user_regs_struct) -> None:
    ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def regs_to_dict(regs: user_regs_struct) -> dict[str, int]:
    return {name: getattr(regs, name) for name in REG_NAMES}


def regs_from_dict(values: dict[str, int]) -> user_regs_struct:
    regs = user_regs_struct()
    for name in REG_NAMES:
        setattr(regs, name, values[name])
    return regs


def get_regset(tid: int, note_type: int, max_size: int = 1 << 16) -> bytes:
    """``PTRACE_GETREGSET``: the kernel shrinks ``iov_len`` to the real size."""
    buf = bytearray(max_size)
    iov = iovec(address_of(buf), max_size)
    ptrace(PTRACE_GETREGSET, tid, note_type, ctypes.addressof(iov))
    return bytes(buf[: iov.iov_len])


def set_regset(tid: int, note_type: int, data: bytes) -> None:
    buf = bytearray(data)
    iov = iovec(address_of(buf), len(buf))
    ptrace(PTRACE_SETREGSET, tid, note_type, ctypes.addressof(iov))


def get_sigmask(tid: int) -> int:
    mask = ctypes.c_uint64()
    ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(mask))
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    value = ctypes.c_uint64(mask)
    ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.addressof(value))


@dataclass(frozen=True, slots=True)
class RseqConfig:
    """A thread's rseq registration as ``PTRACE_GET_RSEQ_CONFIGURATION`` reports it."""

    pointer: int
    size: int
    signature: int
    flags: int


def get_rseq_configuration(tid: int) -> RseqConfig:
    conf = ptrace_rseq_configuration()
    ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), ctypes.addressof(conf))
    return RseqConfig(conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature, conf.flags)




BPF_MAXINSNS: Final = 4096        # include/uapi/linux/bpf_common.h: a classic BPF program's limit
SOCK_FILTER_SIZE: Final = 8        # struct sock_filter { u16 code; u8 jt, jf; u32 k; }


@dataclass(frozen=True, slots=True)
class SeccompFilter:
    """One seccomp filter of a thread: its classic BPF program and install flags."""

    insns: bytes   # struct sock_filter[], as installed (the kernel keeps the original)
    flags: int     # SECCOMP_FILTER_FLAG_LOG is the only flag the kernel reports


def get_seccomp_filters(tid: int) -> list[SeccompFilter]:
    """The seccomp filters of a stopped tracee, the first installed first.

    ``PTRACE_SECCOMP_GET_FILTER`` with index N copies the N-th filter counted
    from the oldest (kernel/seccomp.c ``get_nth_filter``) and fails with ENOENT
    past the newest; ``PTRACE_SECCOMP_GET_METADATA`` gives its flags.  Both need
    CAP_SYS_ADMIN in the tracer and a tracer not itself under seccomp (EACCES
    otherwise), and a kernel built with CONFIG_CHECKPOINT_RESTORE.
    """
    out: list[SeccompFilter] = []
    buf = bytearray(BPF_MAXINSNS * SOCK_FILTER_SIZE)
    meta = (ctypes.c_uint64 * 2)()   # struct seccomp_metadata { filter_off, flags }
    while True:
        try:
            count = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, len(out), address_of(buf))
        except OSError as err:
            if err.errno == errno.ENOENT:
                return out
            raise
        meta[0], meta[1] = len(out), 0
        ptrace(PTRACE_SECCOMP_GET_METADATA, tid, ctypes.sizeof(meta), ctypes.addressof(meta))
        out.append(SeccompFilter(bytes(buf[: count * SOCK_FILTER_SIZE]), meta[1]))


SIGINFO_SIZE: Final = 128
PEEKSIGINFO_SHARED: Final = 1
_PEEK_BATCH: Final = 64


class peeksiginfo_args(ctypes.Structure):
    """``struct ptrace_peeksiginfo_args`` (include/uapi/linux/ptrace.h)."""

    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


def peek_pending_signals(tid: int, shared: bool = False) -> list[bytes]:
    """Every queued siginfo of a thread (or of its process, ``shared``), oldest first,
    without dequeuing any.

    ``PTRACE_PEEKSIGINFO`` copies at most ``nr`` entries starting at ``off``
    (kernel/ptrace.c ptrace_peek_siginfo), so the queue is read in batches until
    a batch comes back short.  A queue can hold up to RLIMIT_SIGPENDING entries
    (thousands of realtime signals), and each one is kept with its siginfo.
    """
    out: list[bytes] = []
    buf = bytearray(SIGINFO_SIZE * _PEEK_BATCH)
    while True:
        args = peeksiginfo_args(len(out), PEEKSIGINFO_SHARED if shared else 0, _PEEK_BATCH)
        n = ptrace(PTRACE_PEEKSIGINFO, tid, ctypes.addressof(args), address_of(buf))
        out.extend(bytes(buf[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE]) for i in range(n))
        if n < _PEEK_BATCH:
            return out


def get_siginfo(tid: int) -> bytes:
    """The siginfo of the signal a thread is stopped for (``PTRACE_GETSIGINFO``)."""
    buf = bytearray(SIGINFO_SIZE)
    ptrace(PTRACE_GETSIGINFO, tid, 0, address_of(buf))
    return bytes(buf)


def wait_tid(tid: int, options: int = WALL) -> tuple[int, int]:
    """waitpid() one thread with ``__WALL`` (threads are not children), retrying EINTR."""
    while True:
        try:
            return os.waitpid(tid, options)
        except InterruptedError:
            continue


@dataclass(frozen=True, slots=True)
class StopStatus:
    """A decoded wait status of a traced thread."""

    tid: int
    raw: int

    @property
    def exited(self) -> bool:
        return os.WIFEXITED(self.raw) or os.WIFSIGNALED(self.raw)

    @property
    def stopped(self) -> bool:
        return os.WIFSTOPPED(self.raw)

    @property
    def signal(self) -> int:
        """The stop signal (SIGTRAP for events and single steps)."""
        return os.WSTOPSIG(self.raw) if os.WIFSTOPPED(self.raw) else 0

    @property
    def event(self) -> int:
        """The ``PTRACE_EVENT_*`` code carried in bits 16..23, or 0."""
        return (self.raw >> 16) & 0xFF if os.WIFSTOPPED(self.raw) else 0




def set_options(tid: int, options: int) -> None:
    ptrace(PTRACE_SETOPTIONS, tid, 0, options)


def traceme() -> None:
    """``PTRACE_TRACEME`` (request 0): the parent becomes this process's tracer."""
    ptrace(0, 0)

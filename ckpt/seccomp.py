"""What a recorded seccomp filter does: run its classic BPF, and what a restore cannot redo.

A seccomp filter is a classic BPF program over ``struct seccomp_data``
(include/uapi/linux/seccomp.h: ``int nr; u32 arch; u64 instruction_pointer;
u64 args[6]``), restricted by kernel/seccomp.c ``seccomp_check_filter`` to
absolute word loads from that struct, the scratch memory, ALU and jump
instructions and returns.  :func:`chain_action` runs a thread's filters the
way ``seccomp_run_filters`` does (every filter, the lowest action wins), so
that ckpt can tell, before it injects a syscall of its own into a frozen
target, whether the target's filters would kill it, send it SIGSYS or hand
the call to a supervisor.  :func:`filter_problem` says what in a filter a
restore cannot reproduce.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .image.schema import SeccompFilter

from . import procfs

AUDIT_ARCH_X86_64 = 0xC000003E                # include/uapi/linux/audit.h
SECCOMP_DATA_SIZE = 64
SECCOMP_RET_KILL_PROCESS = 0x80000000         # include/uapi/linux/seccomp.h
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
CAP_SYS_ADMIN = 21                            # include/uapi/linux/capability.h
SECCOMP_SET_MODE_FILTER = 1                   # seccomp(2) operations and flags
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
# Actions after which an injected syscall returns to ckpt with the thread intact:
# it ran, or failed with an errno (ERRNO; TRACE without a tracer that asked for
# seccomp events gives ENOSYS, kernel/seccomp.c __seccomp_filter).
HARMLESS = frozenset({SECCOMP_RET_ALLOW, SECCOMP_RET_LOG, SECCOMP_RET_ERRNO, SECCOMP_RET_TRACE})

# include/uapi/linux/bpf_common.h
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_IMM, BPF_ABS, BPF_MEM, BPF_LEN = 0x00, 0x00, 0x20, 0x60, 0x80
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
_U32 = 0xFFFFFFFF
_INSN = struct.Struct("<HBBI")   # struct sock_filter { u16 code; u8 jt, jf; u32 k; }


def seccomp_data(nr: int, args: Iterable[int] = (), ip: int = 0, arch: int = AUDIT_ARCH_X86_64) -> bytes:
    """``struct seccomp_data`` for syscall ``nr`` with ``args`` at instruction pointer ``ip``."""
    values = list(args) + [0] * 6
    return struct.pack("<iIQ6Q", nr, arch, ip, *(v & (1 << 64) - 1 for v in values[:6]))


def filter_action(insns: bytes, data: bytes) -> int:
    """The value one filter returns for ``data`` (action | data bits).

    A program that runs off its end or divides by zero returns 0, KILL_THREAD,
    as the kernel's classic BPF does; the kernel refused anything else
    (an unknown opcode, a load outside ``seccomp_data``) when it was installed.
    """
    a = x = 0
    mem = [0] * 16
    count = len(insns) // _INSN.size
    pc = 0
    while pc < count:
        code, jt, jf, k = _INSN.unpack_from(insns, pc * _INSN.size)
        pc += 1
        cls = code & 0x07
        if cls == BPF_RET:
            return (a if code & 0x18 == BPF_A else k) & _U32
        if cls == BPF_LD:
            mode = code & 0xE0
            if mode == BPF_ABS:
                if k + 4 > len(data):
                    return SECCOMP_RET_KILL_THREAD
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == BPF_LEN:
                a = SECCOMP_DATA_SIZE
            elif mode == BPF_MEM:
                a = mem[k & 15]
            else:
                a = k
        elif cls == BPF_LDX:
            mode = code & 0xE0
            x = SECCOMP_DATA_SIZE if mode == BPF_LEN else mem[k & 15] if mode == BPF_MEM else k
        elif cls == BPF_ST:
            mem[k & 15] = a
        elif cls == BPF_STX:
            mem[k & 15] = x
        elif cls == BPF_ALU:
            operand = x if code & BPF_X else k
            op = code & 0xF0
            if op == 0x00:
                a = a + operand
            elif op == 0x10:
                a = a - operand
            elif op == 0x20:
                a = a * operand
            elif op == 0x30:
                if not operand:
                    return SECCOMP_RET_KILL_THREAD
                a = a // operand
            elif op == 0x40:
                a = a | operand
            elif op == 0x50:
                a = a & operand
            elif op == 0x60:
                a = a << (operand & 31)
            elif op == 0x70:
                a = a >> (operand & 31)
            elif op == 0x80:
                a = -a
            elif op == 0xA0:
                a = a ^ operand
            a &= _U32
        elif cls == BPF_JMP:
            op = code & 0xF0
            operand = x if code & BPF_X else k
            if op == 0x00:          # JA
                pc += k
                continue
            taken = (a == operand if op == 0x10 else a > operand if op == 0x20 else
                     a >= operand if op == 0x30 else bool(a & operand))
            pc += jt if taken else jf
        elif cls == BPF_MISC:
            if code & 0xF8 == 0x00:  # TAX
                x = a
            else:                    # TXA
                a = x
    return SECCOMP_RET_KILL_THREAD


def chain_action(chain: Iterable[bytes], data: bytes) -> int:
    """The action a thread's filters take on ``data`` (kernel/seccomp.c seccomp_run_filters:
    every filter runs, the lowest action, compared as a signed value, wins)."""
    def rank(value: int) -> int:
        action = value & SECCOMP_RET_ACTION_FULL
        return action - (1 << 32) if action & 0x80000000 else action

    result = SECCOMP_RET_ALLOW
    for insns in chain:
        value = filter_action(insns, data)
        if rank(value) < rank(result):
            result = value
    return result


def chain(nodes: Sequence[SeccompFilter], index: int | None) -> list[int]:
    """The recorded filters (``state.process.seccomp_filters`` indices) of a thread whose
    newest filter is ``index``, the first installed first."""
    out: list[int] = []
    while index is not None:
        out.append(index)
        index = nodes[index].prev
    return out[::-1]


def harmless(action: int) -> bool:
    """True when a syscall ckpt injects comes back with the thread intact under ``action``."""
    return action & SECCOMP_RET_ACTION_FULL in HARMLESS


def filter_problem(insns: bytes, flags: int) -> str:
    """What in one recorded filter a restore cannot reproduce ('' when nothing).

    The kernel reports only SECCOMP_FILTER_FLAG_LOG of a filter's flags.  A
    filter that hands syscalls to a user-space supervisor (SECCOMP_RET_USER_NOTIF)
    needs its listener, which lives in another process or in an fd ckpt does
    not restore: without it those syscalls would fail with ENOSYS.  A filter
    that returns its accumulator (BPF_RET | BPF_A) could compute that action."""
    if flags & ~SECCOMP_FILTER_FLAG_LOG:
        return f"has flags {flags:#x} that ckpt does not know"
    for pc in range(0, len(insns), _INSN.size):
        code, _, _, k = _INSN.unpack_from(insns, pc)
        if code & 0x07 != BPF_RET:
            continue
        if code & 0x18 == BPF_A:
            return "returns an action it computes (BPF_RET | BPF_A), which ckpt cannot check"
        if k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF:
            return ("hands syscalls to a user-space supervisor (SECCOMP_RET_USER_NOTIF), which a restore "
                    "cannot reconnect")
    return ""


def suspension_unavailable() -> str:
    """Why ckpt cannot trace with PTRACE_O_SUSPEND_SECCOMP ("" when it can): the
    kernel wants CAP_SYS_ADMIN and the tracer not under seccomp itself
    (kernel/ptrace.c check_ptrace_options).  Suspended, a traced thread's
    syscalls bypass its filters -- only ever the syscalls ckpt injects into a
    stopped thread (ckpt.live.freeze, ckpt.rebuild)."""
    me = procfs.read_status(os.getpid())
    if me.seccomp:
        return "ckpt runs under seccomp itself"
    if not procfs.has_capability(CAP_SYS_ADMIN):
        return "ckpt lacks CAP_SYS_ADMIN"
    return ""

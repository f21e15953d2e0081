"""x86_64: the syscall-restart rule, the injector stub, rt_sigreturn frames.

Everything here is pure: byte layouts and register arithmetic, no syscalls.
Sources: arch/x86/include/uapi/asm/sigcontext.h (``struct sigcontext_64``,
``struct _fpx_sw_bytes``), arch/x86/include/asm/sighandling.h and
arch/x86/kernel/signal_64.c (``struct rt_sigframe``, ``rt_sigreturn``),
arch/x86/kernel/fpu/signal.c (``check_xstate_in_sigframe``), kernel/signal.c
(``arch_do_signal_or_restart`` restart codes), include/linux/errno.h.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

U64: Final = (1 << 64) - 1
PAGE: Final = 4096
SYSCALL_INSN: Final = b"\x0f\x05"
RED_ZONE: Final = 128  # System V AMD64 ABI: below rsp, owned by the running function
TASK_SIZE: Final = 0x7FFFFFFFF000  # user address space, 4-level paging
MMAP_MIN_ADDR: Final = 0x10000     # vm.mmap_min_addr's usual value: nothing is mapped below

SYS_restart_syscall: Final = 219
EINTR: Final = 4
# Values a thread stopped inside a syscall shows in rax (include/linux/errno.h).
ERESTARTSYS: Final = 512
ERESTARTNOINTR: Final = 513
ERESTARTNOHAND: Final = 514
ERESTART_RESTARTBLOCK: Final = 516


def signed(value: int) -> int:
    """A u64 register value as the signed number the kernel means."""
    return value - (1 << 64) if value >= 1 << 63 else value


def restarted(regs: dict[str, int], *, restart_block: bool = True, original_nr: int | None = None) -> dict[str, int]:
    """The registers a thread resumes with when nothing will restart its syscall for it.

    A thread frozen inside an interruptible syscall has ``orig_rax`` = the syscall
    and ``rax`` = -ERESTART*.  Resumed from a ptrace stop by the kernel, the
    restart happens in ``arch_do_signal_or_restart`` (arch/x86/kernel/signal.c):
    for -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND ``rax = orig_rax, rip -= 2``
    (the syscall runs again), for -ERESTART_RESTARTBLOCK ``rax =
    __NR_restart_syscall, rip -= 2`` (the kernel continues it from its restart
    block: a sleep with the time that was left).  Where registers are loaded some
    other way (rt_sigreturn, or the injector's own restore path, both leaving
    ``orig_rax = -1``), this applies the same rule in advance.

    ``restart_block=False`` is for registers loaded by rt_sigreturn, which
    discards the restart block (arch/x86/kernel/signal_64.c restore_sigcontext:
    restart_syscall would then fail with EINTR, which the program never sees
    without a signal handler): the syscall is run again from its start instead
    (a relative timeout starts again — a sleep may only get longer, as POSIX
    allows).  A thread interrupted twice is already inside restart_syscall
    (``orig_rax`` is 219): ``original_nr`` is then the syscall its code issued
    (see :func:`syscall_nr_before`); without it, restart_syscall it is.
    """
    out = dict(regs)
    if regs["orig_rax"] < 1 << 63:
        rax = signed(regs["rax"])
        if rax in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):
            out["rax"] = regs["orig_rax"]
            out["rip"] = regs["rip"] - 2
        elif rax == -ERESTART_RESTARTBLOCK:
            nr = SYS_restart_syscall
            if not restart_block:
                nr = regs["orig_rax"] if regs["orig_rax"] != SYS_restart_syscall else (original_nr or nr)
            out["rax"] = nr
            out["rip"] = regs["rip"] - 2
    out["orig_rax"] = U64
    return out


def free_area(occupied: Iterable[tuple[int, int]], size: int) -> int | None:
    """The lowest address with ``size`` free bytes and a free page on each side,
    given the sorted, disjoint ``occupied`` ranges (read only up to the first gap
    that fits); None if there is none."""
    pos = MMAP_MIN_ADDR + PAGE
    for start, end in occupied:
        if start - PAGE >= pos + size:
            return pos
        pos = max(pos, end + PAGE)
    return pos if pos + size <= TASK_SIZE else None


def syscall_nr_before(code: bytes) -> int | None:
    """The syscall number loaded by ``mov $NR, %eax; syscall`` (how glibc, musl and Go
    issue fixed syscalls), given the 7 bytes that end with the ``syscall``."""
    if len(code) == 7 and code[0] == 0xB8 and code[5:] == SYSCALL_INSN:
        return struct.unpack_from("<I", code, 1)[0]
    return None


# -- the injector stub -------------------------------------------------------------
#
# The injector (ckpt.live.inject) maps a region P in the target: one R-X code page
# holding the stub below, then read-write pages (the save block, a scratch area
# for syscall outputs, a stack).  A syscall is injected by loading the registers
#   rip = P, rsp = STUB_STACK_TOP, rax = nr, rdi rsi rdx r10 r8 r9 = arguments,
#   r12 = undo nr, r13 = undo's second argument, rbx = P, r14 = len(P),
#   r15 = frame area (path A) or 0 (path B), rbp = the vDSO "syscall; ...; ret" gadget
# and resuming with PTRACE_SYSCALL: ckpt stops the thread at the syscall's entry
# and exit and never lets it run the rest.  Should ckpt die at any instant, the
# thread runs on: the syscall, then `undo(result, r13)` (closing an fd it just
# created), then puts itself back:
#   path A: munmap(P) through the vDSO gadget, whose `ret` pops a sigreturn gadget
#           off the frame area; rt_sigreturn loads every register, the signal mask
#           and the FPU state from a frame ckpt wrote there.  Nothing is left.
#   path B: restore the signal mask, pop every register from the save block and
#           jump to the saved rip.  P stays mapped (see ckpt.live.inject).
#
#         .intel_syntax noprefix            # assembled with GNU as 2.40
#   0x00: syscall                           # the injected syscall
#   0x02: mov rdi, rax ; mov rsi, r13 ; mov rax, r12
#   0x0b: syscall                           # undo
#   0x0d: test r15, r15 ; jz 0x22
#   0x12: mov rdi, rbx ; mov rsi, r14 ; mov eax, 11 ; mov rsp, r15 ; jmp rbp
#   0x22: mov eax, 14 ; mov edi, 2 ; lea rsi, [rip + S_MASK] ; xor edx, edx ; mov r10d, 8
#   0x3b: syscall                           # rt_sigprocmask(SIG_SETMASK, S_MASK)
#   0x3d: lea rsp, [rip + S_REGS]
#   0x44: pop r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi ; popfq
#   0x5c: mov rsp, [rip + S_RSP]
#   0x63: jmp qword ptr [rip + S_RIP]
STUB_CODE: Final = bytes.fromhex(
    "0f054889c74c89ee4c89e00f054d85ff74104889df4c89f6b80b0000004c89fcffe5"
    "b80e000000bf02000000488d355d10000031d241ba080000000f05488d25bc0f0000"
    "415f415e415d415c5d5b415b415a4159415858595a5e5f9d488b251d100000ff251f100000")
STUB_SIZE: Final = 16 * PAGE       # code page + 15 read-write pages
STUB_DATA: Final = PAGE            # first read-write page
STUB_SAVE_REGS: Final = 0x1000     # 16 u64: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi rflags
STUB_SAVE_RSP: Final = 0x1080
STUB_SAVE_RIP: Final = 0x1088
STUB_SAVE_MASK: Final = 0x1090
STUB_SCRATCH: Final = 0x2000       # syscall output buffers, 8 KiB
STUB_SCRATCH_SIZE: Final = 0x2000
STUB_STACK_TOP: Final = STUB_SIZE  # the stack grows down from the end of P
_SAVE_ORDER: Final = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                      "rax", "rcx", "rdx", "rsi", "rdi", "eflags")
assert len(STUB_CODE) == 0x69


def stub_save_block(regs: dict[str, int], sigmask: int) -> bytes:
    """Path B's save block (at ``STUB_SAVE_REGS``): the thread's registers with the
    restart rule applied, its rsp and rip, and its signal mask."""
    r = restarted(regs)
    return (struct.pack("<16Q", *(r[name] & U64 for name in _SAVE_ORDER))
            + struct.pack("<QQQ", r["rsp"], r["rip"], sigmask & U64))


# -- gadgets for path A -------------------------------------------------------------
#
# The vDSO's syscall fallbacks end in "syscall; <register clearing>; ret"
# (arch/x86/entry/vdso: clock_getres, gettimeofday on 6.x), and every libc or Go
# runtime carries its signal restorer "mov $15, %eax|%rax; syscall" (glibc and
# musl __restore_rt, Go runtime.sigreturn__sigaction).

_CLEARING = (b"\x31\xc0", b"\x31\xc9", b"\x31\xd2", b"\x31\xdb", b"\x31\xf6", b"\x31\xff",
             b"\x45\x31\xc0", b"\x45\x31\xc9", b"\x45\x31\xd2", b"\x45\x31\xdb")
SIGRETURN_GADGETS: Final = (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05", b"\xb8\x0f\x00\x00\x00\x0f\x05")


def find_syscall_ret(code: bytes) -> int:
    """Offset of a ``syscall`` followed only by register clearing and ``ret``, or -1."""
    pos = code.find(SYSCALL_INSN)
    while pos >= 0:
        i = pos + 2
        while True:
            if code[i : i + 1] == b"\xc3":
                return pos
            step = next((c for c in _CLEARING if code.startswith(c, i)), None)
            if step is None:
                break
            i += len(step)
        pos = code.find(SYSCALL_INSN, pos + 1)
    return -1


def find_sigreturn(code: bytes) -> int:
    """Offset of an ``rt_sigreturn`` gadget (``mov $15, %eax; syscall``), or -1."""
    hits = [code.find(g) for g in SIGRETURN_GADGETS]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else -1


# -- rt_sigreturn frames ---------------------------------------------------------------

UC_FP_XSTATE: Final = 0x1
UC_SIGCONTEXT_SS: Final = 0x2
UC_STRICT_RESTORE_SS: Final = 0x4
FP_XSTATE_MAGIC1: Final = 0x46505853
FP_XSTATE_MAGIC2: Final = 0x46505845
_FX_SW_OFFSET: Final = 464            # struct _fpx_sw_bytes in the fxsave area's sw_reserved
_UC_OFFSET: Final = 8                 # struct rt_sigframe: pretcode, then the ucontext
_SIGCONTEXT_OFFSET: Final = _UC_OFFSET + 8 + 8 + 24
_SIGMASK_OFFSET: Final = _SIGCONTEXT_OFFSET + 256
SIGFRAME_SIZE: Final = _SIGMASK_OFFSET + 8 + 128   # + siginfo, unused by rt_sigreturn
_SIGCONTEXT_ORDER: Final = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi",
                            "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip", "eflags")
# An ss_flags value do_sigaltstack() rejects with EINVAL: restore_altstack()
# ignores the error, so rt_sigreturn leaves the thread's alternate stack alone.
_KEEP_ALTSTACK_FLAGS: Final = 0x7FFF0000


def sigframe_fpstate(xstate: bytes) -> bytes:
    """The fpstate of a signal frame, made from the XSAVE area PTRACE_GETREGSET
    (NT_X86_XSTATE) returned.  ptrace puts the XCR0 mask in the first u64 of
    sw_reserved; a signal frame wants ``struct _fpx_sw_bytes`` there and
    FP_XSTATE_MAGIC2 right after the area (fpu/signal.c check_xstate_in_sigframe)."""
    size = len(xstate)
    xfeatures = struct.unpack_from("<Q", xstate, _FX_SW_OFFSET)[0]
    out = bytearray(xstate)
    struct.pack_into("<IIQI28x", out, _FX_SW_OFFSET, FP_XSTATE_MAGIC1, size + 4, xfeatures, size)
    return bytes(out) + struct.pack("<I", FP_XSTATE_MAGIC2)


def rt_sigframe(regs: dict[str, int], sigmask: int, fpstate_address: int, pretcode: int) -> bytes:
    """``struct rt_sigframe`` whose rt_sigreturn loads ``regs`` (rip, rsp and all),
    ``sigmask`` and, when ``fpstate_address`` is non-zero, the FPU state there
    (0: rt_sigreturn resets the FPU to its initial state).  Execute rt_sigreturn
    with rsp = frame address + 8."""
    out = bytearray(SIGFRAME_SIZE)
    struct.pack_into("<Q", out, 0, pretcode)
    flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS | (UC_FP_XSTATE if fpstate_address else 0)
    struct.pack_into("<QQQi4xQ", out, _UC_OFFSET, flags, 0, 0, _KEEP_ALTSTACK_FLAGS, 0)
    struct.pack_into("<18Q", out, _SIGCONTEXT_OFFSET, *(regs[n] & U64 for n in _SIGCONTEXT_ORDER))
    struct.pack_into("<HHHHQQQQQ", out, _SIGCONTEXT_OFFSET + 144, regs["cs"], regs["gs"], regs["fs"],
                     regs["ss"], 0, 0, 0, 0, fpstate_address)
    struct.pack_into("<Q", out, _SIGMASK_OFFSET, sigmask & U64)
    return bytes(out)

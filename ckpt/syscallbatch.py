"""Many syscalls in the restore child for one ptrace round trip (issue 11 item 6).

Rebuilding a process with 20,000 mappings by :func:`ckpt.live.inject_syscall` costs
20,000 round trips between ckpt and the child (set the registers, step, wait, read
``rax``: about 25-60 us each on this VM, over a second in all).  CRIU's restorer blob
runs the whole layout inside the restored process instead.  This module does the same
for a list of independent syscalls: a small loop placed in the restorer's trampoline
(:data:`ckpt.rebuild.TRAMPOLINE_SIZE`, mapped read-write-execute by the rebuild) reads
a table of ``{nr, 6 arguments, result}`` entries from the trampoline's argument pages,
makes each call, stores its result, and stops at the first error or at the end with an
``int3``.  ckpt then reads the results back in one ``pread`` and checks each.

The loop (x86-64, assembled with GNU as; entry: ``r12`` the first entry, ``r13`` the end)::

    loop: cmp r12, r13 ; jae done
          mov rax, [r12] ; mov rdi, [r12+8] ; mov rsi, [r12+16] ; mov rdx, [r12+24]
          mov r10, [r12+32] ; mov r8, [r12+40] ; mov r9, [r12+48]
          syscall
          mov [r12+56], rax
          cmp rax, -4095 ; jae done      ; -errno (unsigned >= -4095): stop there
          add r12, 64 ; jmp loop
    done: int3

The ``int3`` stops the child with a SIGTRAP (arch/x86/kernel/traps.c do_int3_user ->
do_trap -> force_sig(SIGTRAP)), the same forced signal a single step gives: like
:func:`ckpt.live.inject_syscall` with ``step=True``, this is only for a child whose
sigactions, mask and pending signals are all set afterwards (the rebuild's first steps),
and the registers are loaded from scratch by every later injection.  The child runs
under PTRACE_CONT, so no syscall stop interrupts the loop (the rebuild traces it with
PTRACE_O_TRACESYSGOOD, which only matters under PTRACE_SYSCALL).
"""

from __future__ import annotations

import errno
import os
import signal
from array import array

from ._sys import ptrace as pt
from .arch import x86_64 as arch

# The loop above, as GNU as assembled it (objdump -d).
CODE = bytes.fromhex(
    "4d39ec"            # cmp r12, r13
    "7337"              # jae done
    "498b0424"          # mov rax, [r12]
    "498b7c2408"        # mov rdi, [r12+8]
    "498b742410"        # mov rsi, [r12+16]
    "498b542418"        # mov rdx, [r12+24]
    "4d8b542420"        # mov r10, [r12+32]
    "4d8b442428"        # mov r8, [r12+40]
    "4d8b4c2430"        # mov r9, [r12+48]
    "0f05"              # syscall
    "4989442438"        # mov [r12+56], rax
    "483d01f0ffff"      # cmp rax, -4095
    "7306"              # jae done
    "4983c440"          # add r12, 64
    "ebc4"              # jmp loop
    "cc")               # done: int3
ENTRY = 64                     # bytes: one table entry (8 u64)
_ENTRY_WORDS = ENTRY // 8


class SyscallBatch:
    """Syscalls queued for the stopped child ``tid``, run by the trampoline loop.

    ``code`` is where the loop is written (executable memory of the child, not used
    otherwise), ``table``/``table_size`` the argument area the entries go in (as many
    per run as fit).  :meth:`add` queues a call; :meth:`flush` runs what is queued and
    raises ``OSError`` naming the first call that failed (with the errno it returned)
    or :class:`ValueError` for a call whose result is not the one it expected (an mmap
    that landed elsewhere); the calls after a failed one are not made.
    """

    def __init__(self, tid: int, mem_fd: int, code: int, table: int, table_size: int) -> None:
        self.tid = tid
        self.mem_fd = mem_fd
        self.code = code
        self.table = table
        self.capacity = table_size // ENTRY
        if self.capacity < 1:
            raise ValueError("no room for one syscall entry")
        self._words = array("Q")
        self._what: list[str] = []
        self._expect: list[int | None] = []
        self._code_written = False
        self.calls = 0    # made, for the log
        self.runs = 0

    def __len__(self) -> int:
        return len(self._what)

    def add(self, nr: int, *args: int, what: str = "", expect: int | None = None) -> None:
        """Queue ``syscall(nr, *args)``; ``expect``: the only result that is a success."""
        if len(args) > 6:
            raise ValueError(f"syscall {nr}: {len(args)} arguments, at most 6")
        self._words.extend([nr & arch.U64, *(a & arch.U64 for a in args), *([0] * (6 - len(args))), 0])
        self._what.append(what or f"syscall {nr}")
        self._expect.append(expect)
        if len(self._what) >= self.capacity:
            self.flush()

    def flush(self) -> None:
        """Run every queued call, in order; raise on the first that failed."""
        words, whats, expects = self._words, self._what, self._expect
        self._words, self._what, self._expect = array("Q"), [], []
        if not whats:
            return
        if not self._code_written:
            self._pwrite(CODE, self.code)
            self._code_written = True
        data = words.tobytes()
        self._pwrite(data, self.table)
        end = self._run(len(whats))
        done = (end - self.table) // ENTRY       # index of the call the loop stopped at
        results = array("Q", os.pread(self.mem_fd, len(data), self.table))[_ENTRY_WORDS - 1 :: _ENTRY_WORDS]
        self.runs += 1
        self.calls += min(done + 1, len(whats))
        for k in range(min(done + 1, len(whats))):
            value = arch.signed(results[k])
            if -4096 < value < 0:
                raise OSError(-value, f"{whats[k]}: {os.strerror(-value)}")
            if expects[k] is not None and value != expects[k]:
                raise ValueError(f"{whats[k]}: returned {value:#x}, expected {expects[k]:#x}")
        if done < len(whats):   # cannot happen: the loop stops early only on an error
            raise OSError(errno.EIO, f"the syscall loop stopped at call {done} of {len(whats)}")

    def _pwrite(self, data: bytes, address: int) -> None:
        if os.pwrite(self.mem_fd, data, address) != len(data):
            raise OSError(errno.EIO, f"short write at {address:#x}")

    def _run(self, count: int) -> int:
        """Run the loop over ``count`` entries; return where it stopped (``r12``)."""
        regs = pt.get_regs(self.tid)
        regs.rip = self.code
        regs.r12 = self.table
        regs.r13 = self.table + count * ENTRY
        regs.orig_rax = arch.U64     # no syscall restart on the way out of this stop
        pt.set_regs(self.tid, regs)
        pt.cont(self.tid, 0)
        while True:
            _, raw = pt.wait_tid(self.tid)
            status = pt.StopStatus(self.tid, raw)
            if status.exited:
                raise ProcessLookupError(errno.ESRCH, f"thread {self.tid} exited in the syscall loop")
            if status.event == 0 and status.signal == signal.SIGTRAP:
                break
            # Anything else (a signal sent to the half-built child) is suppressed, as
            # inject_syscall does: the restored process gets its own signals later.
            pt.cont(self.tid, 0)
        after = pt.get_regs(self.tid)
        if after.rip != self.code + len(CODE):
            raise OSError(errno.EIO, f"the syscall loop stopped at {after.rip:#x}, not at its int3")
        return int(after.r12)


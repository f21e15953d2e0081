"""Rebuild a stopped, traced child into the checkpointed process, by injected syscalls.

The child (forked by :mod:`ckpt.restore`) sits in ``kill(getpid(), SIGSTOP)``
(PTRACE_TRACEME), or, a task of a tree (:mod:`ckpt.pstree`), in ``pause()``, seized
and interrupted there: either way the two bytes before its ``rip`` are a ``syscall``
instruction, the first one used for injection (:func:`ckpt.live.inject_syscall`).
A task interrupted inside pause() is in a PTRACE_EVENT_STOP with the syscall's
-ERESTARTNOHAND in ``rax``: every injection loads ``orig_rax = -1``, so the kernel
restarts nothing on the way out of the stop (arch/x86/kernel/signal.c
arch_do_signal_or_restart looks at ``orig_ax``), and the task never returns to pause().  Each step below is one
method of :class:`Rebuilder`; ``run`` calls them in CRIU's order
(KERNEL-FACTS.md D and G) and names the step in any error.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import signal
import struct
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from . import log, namedshm, procfs, ranges, seccomp, trust, workers
from ._sys import ptrace as pt
from ._sys import fs, sched, vm
from ._sys.libc import (SYS_close, SYS_getitimer, SYS_madvise, SYS_membarrier, SYS_mlock, SYS_mlock2,
                        SYS_mlockall, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_mseal, SYS_munmap, SYS_prctl, SYS_rseq,
                        SYS_shmat,
                        SYS_rt_sigaction, SYS_seccomp, SYS_set_robust_list, SYS_set_tid_address,
                        SYS_setgroups, SYS_setitimer, SYS_setresgid, SYS_setresuid, SYS_sigaltstack, SYS_clone3,
                        SYS_capset, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo, SYS_personality, SYS_timer_create,
                        SYS_timer_settime, SYS_ioprio_get, SYS_ioprio_set, syscall)
from .arch import x86_64 as arch
from .errors import CkptError, ImageError, Interrupted, TargetError
from .files.objects import Filler
from .image import Checkpoint, VmaRecord
from .image.schema import Itimer, Regs, SeccompFilter, Thread
from .live import inject_syscall
from .restorability import SIGEV_THREAD_ID, cpu_clock, describe_clock
from .restore import TRACE_OPTIONS, VDSO_AREAS, FilePlan, iter_threads
from .taskstate import ITIMERS
from .restoretracking import RestoredTracking
from .lazy import LazyMemory
from .syscallbatch import SyscallBatch
from .treememory import Placements
from .tracker import ANON, DATA_KINDS, FILE_PRIVATE, SHMEM, SPECIAL

PAGE = 4096
# Page 0: code; pages 1-15: arguments for injected calls (a seccomp filter is up
# to 4096 instructions, 32 KiB).
TRAMPOLINE_SIZE = 16 * PAGE
_U64 = (1 << 64) - 1

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_GROWSDOWN, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x100, 0x4000, 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
PR_SET_NAME, PR_SET_MM, PR_SET_MM_MAP, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 15, 35, 14, 38, 24
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 1, 4, 47, 2
PR_GET_DUMPABLE, PR_SET_TIMERSLACK, PR_SET_CHILD_SUBREAPER = 3, 29, 36
PR_GET_THP_DISABLE, PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED = 42, 41, 1 << 1
PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON = 77, 0, 1
PR_GET_SECUREBITS, PR_SET_SECUREBITS, PR_SET_MDWE, PR_SET_MEMORY_MERGE = 27, 28, 65, 67
# include/uapi/linux/securebits.h: the bit that forbids PR_CAP_AMBIENT_RAISE, and its lock.
SECBIT_NO_CAP_AMBIENT_RAISE_BITS = (1 << 6) | (1 << 7)
IOPRIO_WHO_PROCESS = 1
ITIMER_REAL = 0
SIGEVENT_SIZE = 64             # sigevent_t (include/uapi/asm-generic/siginfo.h, SIGEV_MAX_SIZE)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_ALL_SIGNALS = (1 << 64) - 1  # SIGKILL/SIGSTOP stay unblockable whatever the mask says
# Signals _into_get_signal never uses: the unblockable ones, and those whose sending
# flushes others from the queues (kernel/signal.c prepare_signal).
_NOT_FOR_RELEASE = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN,
                              signal.SIGTTOU})
RSEQ_FLAG_UNREGISTER = 1
SS_DISABLE = 2
CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  # VM FS FILES SIGHAND THREAD SYSVSEM
# smaps VmFlags that madvise() sets again on a fresh mapping, and the advice for
# each (include/uapi/asm-generic/mman-common.h).  Set right after the mmap, before
# the pages are written: MADV_HUGEPAGE then lets the writes fault in huge pages.
MADVISE_FOR_FLAG = {
    "rr": 1,    # MADV_RANDOM
    "sr": 2,    # MADV_SEQUENTIAL
    "dc": 10,   # MADV_DONTFORK
    "mg": 12,   # MADV_MERGEABLE (KSM)
    "hg": 14,   # MADV_HUGEPAGE
    "nh": 15,   # MADV_NOHUGEPAGE
    "dd": 16,   # MADV_DONTDUMP
    "wf": 18,   # MADV_WIPEONFORK
}
MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 102, 103
MADV_DONTNEED = 4
MLOCK_ONFAULT = 1                   # mlock2() flag
MAP_DROPPABLE = 0x08                # a mapping type, instead of MAP_PRIVATE (Linux 6.11)
# membarrier REGISTER_* commands GET_REGISTRATIONS reports (include/uapi/linux/membarrier.h)
MEMBARRIER_REGISTER_COMMANDS = (1 << 2, 1 << 4, 1 << 6, 1 << 8)

# The code page: syscall; int3 (the int3 is never reached: each injection ends in the
# syscall's exit stop, see ckpt.live.inject_syscall).
TRAMPOLINE_CODE = b"\x0f\x05\xcc"


class Rebuilder:
    """Turns the stopped child ``pid`` into the process of checkpoint ``cp``."""

    def __init__(self, pid: int, cp: Checkpoint, files: FilePlan, shared: Placements | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 tracking: RestoredTracking | None = None, lazy: LazyMemory | None = None) -> None:
        self.pid = pid
        self.lazy = lazy           # memory left to a page server (ckpt/lazy.py), or None
        self.progress = progress   # (phase, bytes done, bytes total) while the pages are written
        self.tracking = tracking   # write tracking armed before the release (ckpt/restoretracking.py)
        self.shared = shared or Placements()   # a tree's shared anonymous memory, premapped (ckpt/treememory.py)
        self.cp = cp
        self.files = files
        self.state = cp.state
        if cp.state.process is None or cp.state.mm is None:
            raise ImageError(f"checkpoint {cp.id} records no task state")
        self.process = cp.state.process
        self.mm = cp.state.mm
        self.notes: list[str] = []
        self.tids: dict[int, int] = {}   # saved tid -> new tid
        self.mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        regs = pt.get_regs(pid)
        self.insn = regs.rip - 2
        if self._read(self.insn, 2) != b"\x0f\x05":
            raise TargetError("the restore child did not stop in a syscall")
        self.tramp = 0
        self._new_threads: list[int] = []
        self._at_syscall_exit: set[int] = set()   # threads left in an injected syscall's exit stop
        # Single steps (faster) until the sigactions are restored: the forced SIGTRAP each
        # ends in can only reset the child's own SIGTRAP action and unblock it in its
        # mask, both set afresh later, and nothing is pending yet (inject_syscall).
        self._step = True
        self.objects = Filler(pid, files.objects, cp)   # memfds and deleted files: content, seals

    # -- plumbing -------------------------------------------------------------------

    def _read(self, address: int, length: int) -> bytes:
        return os.pread(self.mem_fd, length, address)

    def _write(self, address: int, data: bytes) -> None:
        if os.pwrite(self.mem_fd, data, address) != len(data):
            raise OSError(errno.EIO, f"short write at {address:#x}")

    def inject(self, nr: int, *args: int, tid: int | None = None, what: str = "",
               on_clone: Callable[[int], None] | None = None) -> int:
        """Run a syscall in thread ``tid`` (default: the leader); ``OSError`` on ``-errno``."""
        tid = tid or self.pid
        if not self._step:
            self._at_syscall_exit.add(tid)
        value, _ = inject_syscall(tid, pt.get_regs(tid), self.insn, nr, *args, on_clone=on_clone, step=self._step)
        if -4096 < value < 0:
            raise OSError(-value, f"{what or f'syscall {nr}'}: {os.strerror(-value)}")
        return value

    def _data(self, offset: int, payload: bytes) -> int:
        """Put ``payload`` in the trampoline's argument area; return its address."""
        assert self.tramp
        if offset + len(payload) > TRAMPOLINE_SIZE - PAGE:
            # A valid image can ask for more (setgroups() takes up to NGROUPS_MAX
            # groups): refuse by name rather than fail an assertion.
            raise TargetError(f"an argument of {len(payload)} bytes does not fit the restorer's "
                              f"{TRAMPOLINE_SIZE - PAGE - offset}-byte argument area")
        address = self.tramp + PAGE + offset
        self._write(address, payload)
        return address

    # -- the steps --------------------------------------------------------------------

    def run(self, release: bool = True) -> list[str]:
        """Every step, in order; ``release=False`` stops short of the detach (the registers
        loaded, every thread still stopped): :meth:`detach` then lets it run, when a tree's
        tasks are released together.  Returns notes."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("map the trampoline", self.map_trampoline),
            ("unregister rseq", self.unregister_rseq),
            ("move the vDSO", self.move_vdso),
            ("unmap the old layout", self.unmap_old_layout),
            ("restore the THP setting", self.restore_thp_disable),
            ("fill the memfds and deleted files", self.objects.fill),
            ("map the saved VMAs", self.map_vmas),
            ("set the times and seals of the memfds and deleted files", self.objects.seal),
            ("write the pages", self.write_pages),
            ("install guard regions", self.install_guard_regions),
            ("set the mm fields", self.set_mm),
            ("register membarrier", self.register_membarrier),
            ("restore the personality", self.restore_personality),
            ("restore sigactions", self.restore_sigactions),
            ("create threads", self.create_threads),
            ("restore per-thread state", self.restore_thread_state),
            ("create the POSIX timers", self.create_posix_timers),
            ("queue pending signals", self.queue_pending_signals),
            ("restore the subreaper, KSM and core dump flags and oom_score_adj", self.restore_process_flags),
            ("install seccomp filters", self.install_seccomp_filters),
            # While the child is still root (ckpt/lazy.py says why), after the last injection
            # that makes the kernel write its memory (rseq registration).
            ("register the lazy memory", self.register_lazy),
            ("restore credentials", self.restore_credentials),
            ("lock memory", self.lock_memory),
            ("seal mappings", self.seal_mappings),
            ("restore memory-deny-write-execute", self.restore_mdwe),
            ("restore the parent-death signal", self.restore_parent_death_signal),
            ("restore scheduling and timer slack", self.restore_scheduling),
            ("arm the timers", self.arm_timers),
            # Last: every page the restore writes is written by now (ckpt/restoretracking.py).
            ("arm write tracking", self.arm_tracking),
            ("unmap the trampoline", self.unmap_trampoline),
            ("load registers and release", self.release) if release else ("load registers", self.load_registers),
        ]
        try:
            for name, step in steps:
                try:
                    step()
                    log.mark(name)
                except Interrupted:
                    raise   # SIGINT/SIGTERM: not a failure of the step (exit 130/143)
                except ImageError as err:
                    raise ImageError(f"restore step '{name}': {err}") from err
                except (CkptError, OSError) as err:
                    raise TargetError(f"restore step '{name}' failed: {err}") from err
        finally:
            os.close(self.mem_fd)
            self.objects.close()
        return self.notes

    def map_trampoline(self) -> None:
        occupied = ranges.union(self.cp.vma_ranges,
                                ranges.normalize((m.start, m.end) for m in procfs.read_maps(self.pid)))
        self.tramp = _free_gap(occupied, TRAMPOLINE_SIZE)
        addr = self.inject(SYS_mmap, self.tramp, TRAMPOLINE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, _U64, 0, what="mmap trampoline")
        if addr != self.tramp:
            raise TargetError(f"trampoline landed at {addr:#x}, not {self.tramp:#x}")
        self._write(self.tramp, TRAMPOLINE_CODE)
        self.insn = self.tramp

    def unregister_rseq(self) -> None:
        """The child's own rseq area is about to be unmapped: the kernel would write
        cpu_id into it on the next return to user mode and kill it (SIGSEGV)."""
        conf = pt.get_rseq_configuration(self.pid)
        if conf.pointer:
            self.inject(SYS_rseq, conf.pointer, conf.size, RSEQ_FLAG_UNREGISTER, conf.signature,
                        what="rseq unregister")

    def move_vdso(self) -> None:
        """Move our [vvar], [vvar_vclock] and [vdso] to the checkpoint's addresses
        (the sizes were checked equal before forking).  Via a free spot first, in
        case a destination overlaps a source.  Those the process had unmapped are
        not in the checkpoint: ``unmap_old_layout`` removes ours."""
        saved = {v.path: v for v in self.cp.vmas if v.path in VDSO_AREAS}
        ours = {m.path: m for m in procfs.read_maps(self.pid) if m.path in saved}
        if all(ours[name].start == saved[name].start for name in saved):
            return
        occupied = ranges.union(self.cp.vma_ranges,
                                ranges.normalize((m.start, m.end) for m in procfs.read_maps(self.pid)))
        spot = _free_gap(occupied, sum(m.size for m in ours.values()) + PAGE)
        parked = {}
        for name, m in ours.items():
            self.inject(SYS_mremap, m.start, m.size, m.size, MREMAP_MAYMOVE | MREMAP_FIXED, spot,
                        what=f"mremap {name}")
            parked[name] = spot
            spot += m.size
        for name, m in ours.items():
            self.inject(SYS_mremap, parked[name], m.size, m.size, MREMAP_MAYMOVE | MREMAP_FIXED,
                        saved[name].start, what=f"mremap {name}")

    def unmap_old_layout(self) -> None:
        keep = [(self.tramp, self.tramp + TRAMPOLINE_SIZE)]
        keep += [(v.start, v.end) for v in self.cp.vmas if v.path in VDSO_AREAS]
        keep += self.shared.temporary   # unmapped once map_vmas placed what it maps
        for start, end in ranges.subtract([(0, arch.TASK_SIZE)], ranges.normalize(keep)):
            self.inject(SYS_munmap, start, end - start, what="munmap")

    def restore_thp_disable(self) -> None:
        """PR_SET_THP_DISABLE, as the process had it (per mm: MMF_DISABLE_THP_*), before any
        page is mapped and written, so that memory the process had in small pages is not
        faulted in huge.  The child has ckpt's own setting (fork copies it)."""
        want = self.process.thp_disable
        if want is None or want == syscall(SYS_prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0):
            return
        self.inject(SYS_prctl, PR_SET_THP_DISABLE, 1 if want else 0, want & PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0,
                    what=f"PR_SET_THP_DISABLE({want})")

    def map_vmas(self) -> None:
        """Map every saved VMA.  Files come from the fds the child opened and verified
        (:class:`ckpt.restore.FilePlan`); they are closed once everything is mapped.

        The plain mmaps and madvises go through :class:`ckpt.syscallbatch.SyscallBatch`
        (hundreds per ptrace round trip: one each made restoring 20,000 mappings take a
        second); the rarer placements that read the child's layout (a tree's shared and
        copy-on-write memory, System V segments) flush it and are injected one by one."""
        batch = self._batch()
        try:
            for vma in self.cp.vmas:
                if vma.kind == SPECIAL:
                    continue
                self._map_one(vma, batch)
            batch.flush()
            for start, end in self.shared.temporary:
                self.inject(SYS_munmap, start, end - start, what="munmap premapped shared memory")
        except ValueError as err:   # an mmap that did not land where asked
            raise TargetError(str(err)) from None
        finally:
            for fd in [*self.files.mapped.values(), *self.files.objects.numbers()]:
                self.inject(SYS_close, fd)
        log.debug("map: %d syscalls in %d runs of the trampoline loop", batch.calls, batch.runs)

    def _batch(self) -> SyscallBatch:
        """A syscall batch running from the trampoline: its loop after the code page's
        ``syscall``, its table in the argument pages (free between injections)."""
        assert self.tramp and self._step   # the loop ends in a forced SIGTRAP (ckpt/syscallbatch.py)
        return SyscallBatch(self.pid, self.mem_fd, self.tramp + 64, self.tramp + PAGE, TRAMPOLINE_SIZE - PAGE)

    def _map_one(self, vma: VmaRecord, batch: SyscallBatch) -> None:
        prot = ((PROT_READ if vma.perms[0] == "r" else 0) | (PROT_WRITE if vma.perms[1] == "w" else 0)
                | (PROT_EXEC if vma.perms[2] == "x" else 0))
        shared = vma.perms[3] == "s"
        flags = MAP_FIXED | (MAP_SHARED if shared else MAP_PRIVATE)
        if "gd" in vma.flags:
            flags |= MAP_GROWSDOWN
        if "nr" in vma.flags:
            flags |= MAP_NORESERVE
        fd, offset = _U64, 0
        if vma.kind in (ANON, SHMEM) and vma.object is None and not namedshm.shm_file(vma):
            flags |= MAP_ANONYMOUS
        else:   # a file, or a memfd or deleted file the child made (ckpt/files/objects.py)
            fd, offset = self.files.fd_of(vma), vma.offset
        if "dp" in vma.flags and vma.kind == ANON:
            flags = flags & ~MAP_PRIVATE | MAP_DROPPABLE
        source = self.shared.sources.get(vma.start)
        if source is not None or vma.start in self.shared.moves or namedshm.sysv(vma):
            batch.flush()
            if source is not None:
                got = self._place_shared(vma, source, prot)
            elif vma.start in self.shared.moves:
                got = self._move_cow(vma, self.shared.moves[vma.start], prot)
            else:
                got = self._attach_sysv(vma, prot)
            if got != vma.start:
                raise TargetError(f"mapping {vma.start:#x} landed at {got:#x}")
        else:
            batch.add(SYS_mmap, vma.start, vma.end - vma.start, prot, flags, fd, offset,
                      what=f"mmap {vma.start:#x}-{vma.end:#x} {vma.path}", expect=vma.start)
        for flag, advice in MADVISE_FOR_FLAG.items():
            if flag in vma.flags:
                batch.add(SYS_madvise, vma.start, vma.end - vma.start, advice, what=f"madvise {flag}")
        if "gu" in vma.flags:
            # VM_MAYBE_GUARD stays once a guard region was installed, even after it
            # was removed (mm/madvise.c): set it the same way, on a page that holds
            # nothing yet.  The guard regions themselves come after the pages.
            batch.add(SYS_madvise, vma.start, PAGE, MADV_GUARD_INSTALL, what="madvise MADV_GUARD_INSTALL")
            batch.add(SYS_madvise, vma.start, PAGE, MADV_GUARD_REMOVE, what="madvise MADV_GUARD_REMOVE")

    def _place_shared(self, vma: VmaRecord, source: int, prot: int) -> int:
        """A VMA of a tree's shared anonymous memory: a new mapping of the premapped object's pages
        (``mremap`` with old size 0 of a shared mapping, mm/mremap.c), with its protection."""
        length = vma.end - vma.start
        got = self.inject(SYS_mremap, source, 0, length, MREMAP_MAYMOVE | MREMAP_FIXED, vma.start,
                          what=f"mremap shared memory to {vma.start:#x}-{vma.end:#x}")
        if prot != PROT_READ | PROT_WRITE:   # the premapped object's
            self.inject(SYS_mprotect, vma.start, length, prot, what=f"mprotect {vma.start:#x}-{vma.end:#x}")
        return got

    def _move_cow(self, vma: VmaRecord, source: int, prot: int) -> int:
        """A private anonymous VMA whose pages are shared copy-on-write with the parent or
        children (ckpt/cow.py): move the mapping premapped before the fork into place whole
        (``mremap`` moves the page table entries, the pages stay shared: mm/mremap.c
        ``move_page_tables``), drop the pages a sibling shares and this task does not, and
        give it its protection."""
        length = vma.end - vma.start
        got = self.inject(SYS_mremap, source, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, vma.start,
                          what=f"mremap copy-on-write memory to {vma.start:#x}-{vma.end:#x}")
        for start, end in ranges.clip(list(self.shared.discard), vma.start, vma.end):
            self.inject(SYS_madvise, start, end - start, MADV_DONTNEED, what=f"madvise MADV_DONTNEED {start:#x}")
        if prot != PROT_READ | PROT_WRITE:   # the premapped mapping's
            self.inject(SYS_mprotect, vma.start, length, prot, what=f"mprotect {vma.start:#x}-{vma.end:#x}")
        return got

    def _attach_sysv(self, vma: VmaRecord, prot: int) -> int:
        """A VMA of a System V segment (ckpt/namedshm.py made or found it, with the recorded id):
        ``shmat`` of the whole segment at a free address, then ``mremap`` of the VMA's part into
        place (a VMA may be part of an attach: split by mprotect or a partial munmap), the rest
        unmapped.  Each step keeps ``shm_nattch`` counting VMAs (ipc/shm.c shm_open/shm_close)."""
        length = vma.end - vma.start
        rec = next((r for r in self.state.sysv_shm if r.id == vma.inode), None)
        if rec is None:
            raise ImageError(f"the mapping at {vma.start:#x} is of a System V segment ({vma.inode}) not recorded")
        size = -(-rec.size // PAGE) * PAGE
        occupied = ranges.union(self.cp.vma_ranges,
                                ranges.normalize((m.start, m.end) for m in procfs.read_maps(self.pid)))
        spot = _free_gap(occupied, size)
        try:
            base = self.inject(SYS_shmat, vma.inode, spot, namedshm.attach_flags(vma),
                               what=f"shmat segment {vma.inode}")
        except OSError as err:
            raise TargetError(f"cannot attach the System V segment shmid {vma.inode} for {vma.start:#x}-"
                              f"{vma.end:#x}: {err.strerror}") from None
        got = self.inject(SYS_mremap, base + vma.offset, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, vma.start,
                          what=f"mremap segment {vma.inode} to {vma.start:#x}")
        for m in procfs.read_maps(self.pid):   # what is left of the attach
            if base <= m.start < base + size and m.inode == vma.inode:
                self.inject(SYS_munmap, m.start, m.end - m.start, what=f"munmap the rest of segment {vma.inode}")
        if prot != _shm_prot(vma):
            self.inject(SYS_mprotect, vma.start, length, prot, what=f"mprotect {vma.start:#x}-{vma.end:#x}")
        return got

    def write_pages(self) -> None:
        """Write every stored page, each from the newest checkpoint holding it.

        Pages of writable mappings go through process_vm_writev, 512 iovecs a
        call, straight from the decompressed frames.  The others use
        /proc/PID/mem, whose writes use FOLL_FORCE (fs/proc/base.c ``mem_rw``)
        and so fill read-only and PROT_NONE mappings without changing their
        protection — slower (a bounce page per page), and rarely needed.  Fresh
        anonymous memory is zero already: zero pages are written over file
        mappings only.
        """
        # A shared mapping of a file object holds the object's content, filled already.
        data_vmas = [v for v in self.cp.vmas
                     if v.kind in DATA_KINDS and not (v.kind == SHMEM and v.object is not None)
                     and v.start not in self.shared.sources   # premapped and filled (ckpt/treememory.py)
                     and not namedshm.named(v)]   # filled by ckpt/namedshm.py
        want = ranges.normalize((v.start, v.end) for v in data_vmas)
        if self.lazy is not None:   # left to the page server (ckpt/lazy.py)
            want = ranges.subtract(want, self.lazy.ranges)
        if self.shared.placed:   # copy-on-write pages premapped (ckpt/treememory.py): a write would unshare
            want = ranges.subtract(want, list(self.shared.placed))
        file_ranges = ranges.normalize((v.start, v.end) for v in data_vmas if v.kind == FILE_PRIVATE)
        writable = ranges.normalize((v.start, v.end) for v in data_vmas if v.perms[1] == "w")
        links = {link.id: link for link in self.cp.chain()}
        pieces = self.cp.resolve(want)
        expected = sum(p.end - p.start for p in pieces if p.source == "data")
        writer = _PageWriter(self.pid, self.mem_fd, self.progress, expected)
        try:
            for piece in pieces:
                if piece.source == "data":
                    assert piece.checkpoint is not None
                    link = links[piece.checkpoint]
                    for start, end in ranges.intersect([(piece.start, piece.end)], writable):
                        for address, frame, offset, length in link.iter_stored(start, end):
                            writer.add(address, frame, offset, length)
                    for start, end in ranges.subtract([(piece.start, piece.end)], writable):
                        for address, frame, offset, length in link.iter_stored(start, end):
                            writer.force(address, memoryview(frame)[offset : offset + length])
                elif piece.source == "zero":
                    for start, end in ranges.intersect([(piece.start, piece.end)], file_ranges):
                        writer.force(start, memoryview(bytes(end - start)))
            writer.flush()
        finally:
            writer.close()

    def install_guard_regions(self) -> None:
        """MADV_GUARD_INSTALL over each recorded guard region, once the pages are
        written (installing one discards what its pages held; they held nothing)."""
        guard = self.mm.guard
        for start, end in ranges.from_bytes(guard) if guard else ():
            self.inject(SYS_madvise, start, end - start, MADV_GUARD_INSTALL,
                        what=f"MADV_GUARD_INSTALL {start:#x}-{end:#x}")

    def register_membarrier(self) -> None:
        """Run again the membarrier REGISTER_* commands the process had run (per mm)."""
        mask = self.mm.membarrier or 0
        unknown = mask & ~sum(MEMBARRIER_REGISTER_COMMANDS)
        if unknown:
            raise ImageError(f"membarrier registrations {unknown:#x} are not REGISTER_* commands ckpt knows")
        for command in MEMBARRIER_REGISTER_COMMANDS:
            if mask & command:
                self.inject(SYS_membarrier, command, 0, 0, what=f"membarrier({command:#x})")

    def lock_memory(self) -> None:
        """mlock (mlock2 MLOCK_ONFAULT for ``lf``) every VMA that was locked, then
        mlockall(MCL_FUTURE) when every new mapping was locked.

        Runs after the credentials: the kernel then applies the process's own
        RLIMIT_MEMLOCK and CAP_IPC_LOCK (mm/mlock.c ``do_mlock``), so a restore
        locks no more than the process itself could
        (:func:`ckpt.restorability.mm_reasons` refuses beforehand what the
        kernel would refuse here).  Locking faults in every page not present."""
        for vma in self.cp.vmas:
            if "lo" not in vma.flags or vma.kind == SPECIAL:
                continue
            length = vma.end - vma.start
            if "lf" in vma.flags:
                self.inject(SYS_mlock2, vma.start, length, MLOCK_ONFAULT, what=f"mlock2 {vma.start:#x}")
            else:
                self.inject(SYS_mlock, vma.start, length, what=f"mlock {vma.start:#x}")
        future = self.mm.mlockall or 0
        if future:
            self.inject(SYS_mlockall, future, what=f"mlockall({future:#x})")

    def seal_mappings(self) -> None:
        """mseal() the VMAs that were sealed (``sl``), last: nothing may change them after."""
        for vma in self.cp.vmas:
            if "sl" in vma.flags and vma.kind != SPECIAL:
                self.inject(SYS_mseal, vma.start, vma.end - vma.start, 0, what=f"mseal {vma.start:#x}")

    def install_seccomp_filters(self) -> None:
        """Give every thread its seccomp filters back, in the order they were installed.

        Why this grants nothing: a seccomp filter can only take away (its actions
        are allow, an errno, a signal, kill, log, trace and user notification; none
        bypasses a permission check or adds a capability), and each thread gets
        exactly the filters it had -- the kernel verifies every program again
        (kernel/seccomp.c seccomp_check_filter).  The one way a filter could help
        an attacker is to mislead a set-user-ID program the process executes,
        which is why the kernel wants no_new_privs or CAP_SYS_ADMIN to install
        one: images not trusted as root's must record no_new_privs on every
        filtered thread (:func:`ckpt.trust.check_identity`), and credentials,
        no_new_privs included, are restored right after this step as recorded.

        Filters are installed here, before the credentials, while the child still
        has the restorer's CAP_SYS_ADMIN (as CRIU's restorer does), so a thread
        that had a filter without no_new_privs (installed by root, which then
        dropped privileges) comes back as it was.  The rest of the rebuild must
        not run under the filters (a filter may forbid setresuid or mmap):
        PTRACE_O_SUSPEND_SECCOMP lets the threads' syscalls bypass them while
        ckpt traces them; it needs CAP_SYS_ADMIN (kernel/ptrace.c
        ptrace_setoptions) and ends with the detach in ``release``.

        Filters shared by every thread (inherited, or synced with TSYNC) are
        installed once in the leader with SECCOMP_FILTER_FLAG_TSYNC, so that they
        are one filter again and a later TSYNC of the process succeeds as it did.
        A filter shared by only some of the threads becomes one copy per thread:
        the kernel shares filters only through fork and TSYNC.
        """
        nodes = self.process.seccomp_filters
        threads = list(iter_threads(self.cp))
        chains = {self.tids[t.tid]: seccomp.chain(nodes, t.seccomp_filter) for t in threads}
        if not any(chains.values()):
            return
        for tid in self.tids.values():
            pt.set_options(tid, TRACE_OPTIONS | pt.PTRACE_O_SUSPEND_SECCOMP)
        common: list[int] = []
        for column in zip(*chains.values()):
            if len(set(column)) != 1:
                break
            common.append(column[0])
        for index in common:
            self._install_filter(self.pid, nodes[index], seccomp.SECCOMP_FILTER_FLAG_TSYNC)
        for tid, chain in chains.items():
            for index in chain[len(common):]:
                self._install_filter(tid, nodes[index], 0)

    def _install_filter(self, tid: int, node: SeccompFilter, flags: int) -> None:
        insns = node.insns
        program = self._data(16, insns)
        fprog = self._data(0, struct.pack("<H6xQ", len(insns) // 8, program))   # struct sock_fprog
        flags |= node.flags & seccomp.SECCOMP_FILTER_FLAG_LOG
        res = self.inject(SYS_seccomp, seccomp.SECCOMP_SET_MODE_FILTER, flags, fprog, tid=tid,
                          what=f"seccomp(SECCOMP_SET_MODE_FILTER) in thread {tid}")
        if res:
            # TSYNC answers with the tid of a thread it could not synchronise.
            raise TargetError(f"seccomp TSYNC from thread {tid} failed for thread {res}")

    def set_mm(self) -> None:
        """``PR_SET_MM_MAP`` with the saved fields and auxv (kernel/sys.c prctl_set_mm_map);
        then the exe link where the kernel allows it."""
        mm = self.mm
        auxv = mm.auxv
        auxv_addr = self._data(1024, auxv)
        fields = [getattr(mm, k) for k in ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                                  "start_stack", "arg_start", "arg_end", "env_start", "env_end")]

        def call(exe_fd: int) -> None:
            blob = struct.pack("<11QQII", *fields, auxv_addr, len(auxv), exe_fd & 0xFFFFFFFF)
            self.inject(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, self._data(0, blob), len(blob), 0,
                        what="prctl(PR_SET_MM_MAP)")

        call(-1)
        fd = self.files.exe_fd
        if fd is None:
            self.notes.append("/proc/PID/exe not restored: the dump did not identify the executable")
            return
        if not os.path.exists(f"/proc/{self.pid}/fd/{fd}"):
            return  # the child could not open it, and made a note saying why
        try:
            if _same_file(f"/proc/{self.pid}/exe", f"/proc/{self.pid}/fd/{fd}"):
                return   # the restore child runs the recorded executable already (python restoring python)
            call(fd)
        except OSError as err:
            # EBUSY: the previous exe, another file, is still mapped (kernel/fork.c replace_mm_exe_file);
            # EPERM: no CAP_CHECKPOINT_RESTORE (kernel/sys.c prctl_set_mm_map).
            self.notes.append(f"/proc/PID/exe not restored ({err.strerror or err})")
        finally:
            self.inject(SYS_close, fd)

    def restore_personality(self) -> None:
        persona = self.process.personality
        if persona:
            self.inject(SYS_personality, persona & 0xFFFFFFFF, what="personality")

    def restore_sigactions(self) -> None:
        """Set every saved sigaction; from here on no injection raises a SIGTRAP."""
        self._step = False
        for sig, act in (self.state.sigactions or {}).items():
            blob = struct.pack("<QQQQ", act.handler, act.flags, act.restorer, act.mask)
            self.inject(SYS_rt_sigaction, int(sig), self._data(0, blob), 0, 8, what=f"rt_sigaction({sig})")

    def create_threads(self) -> None:
        """One ``clone3`` per saved thread, run in the leader (PTRACE_O_TRACECLONE
        attaches each new thread, which starts stopped)."""
        threads = list(iter_threads(self.cp))
        leader_saved = threads[0].tid
        self.tids[leader_saved] = self.pid
        same_pid = self.pid == leader_saved
        for t in threads[1:]:
            set_tid = 0
            if same_pid:
                set_tid = self._data(256, struct.pack("<Q", t.tid))
            args = struct.pack("<11Q", CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, set_tid, 1 if set_tid else 0, 0)
            new: list[int] = []
            tid = self.inject(SYS_clone3, self._data(0, args), len(args), what="clone3", on_clone=new.append)
            # The new thread arrives with a SIGSTOP (it is traced from birth).
            _, status = pt.wait_tid(tid)
            if not os.WIFSTOPPED(status):
                raise TargetError(f"new thread {tid} did not stop")
            self.tids[t.tid] = tid
            self._new_threads.append(tid)
        if not same_pid and len(threads) > 1:
            self.notes.append("threads have new tids")

    def restore_thread_state(self) -> None:
        for t in iter_threads(self.cp):
            tid = self.tids[t.tid]
            self.inject(SYS_set_tid_address, t.clear_child_tid, tid=tid, what="set_tid_address")
            robust = t.robust_list
            if robust.head:
                self.inject(SYS_set_robust_list, robust.head, robust.len, tid=tid, what="set_robust_list")
            rseq = t.rseq
            if rseq and rseq.pointer:
                self.inject(SYS_rseq, rseq.pointer, rseq.size, 0, rseq.signature, tid=tid,
                            what="rseq register")
            ss = t.sigaltstack
            if ss and not ss.flags & SS_DISABLE and ss.size:
                blob = struct.pack("<Qi4xQ", ss.sp, ss.flags & ~1, ss.size)  # SS_ONSTACK is not settable
                self.inject(SYS_sigaltstack, self._data(0, blob), 0, tid=tid, what="sigaltstack")
            elif tid == self.pid:
                # The leader is the restore child: fork kept the alternate signal stack of the
                # thread that forked it (kernel/fork.c copy_process resets it only for CLONE_VM),
                # in memory the rebuild unmapped -- an SA_ONSTACK handler would fault on it.
                blob = struct.pack("<Qi4xQ", 0, SS_DISABLE, 0)
                self.inject(SYS_sigaltstack, self._data(0, blob), 0, tid=tid, what="sigaltstack")
            comm = os.fsencode(t.comm)[:15] + b"\0"
            self.inject(SYS_prctl, PR_SET_NAME, self._data(0, comm), 0, 0, 0, tid=tid, what="PR_SET_NAME")

    def create_posix_timers(self) -> None:
        """Create every POSIX timer with its own id, clock and sigevent, disarmed
        (:meth:`arm_timers` arms them last).

        The ids: in PR_TIMER_CREATE_RESTORE_IDS mode (Linux 6.15+, per process),
        timer_create() takes the id from ``*created_timer_id`` and fails with EBUSY
        if it is taken (kernel/time/posix-timers.c do_timer_create, posix_timer_add),
        so no create/delete loop up to each id as CRIU needs on older kernels, which
        ckpt refuses instead.  SIGEV_THREAD_ID names the thread's new tid; a CPU
        clock of the process or of one of its threads names the new pid or tid.
        Created before the credentials are restored: a timer on an alarm clock needs
        CAP_WAKE_ALARM (checked against the images' owner by ckpt.trust)."""
        timers = self.process.posix_timers
        if not timers:
            return
        try:
            self.inject(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0,
                        what="prctl(PR_TIMER_CREATE_RESTORE_IDS)")
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            raise TargetError(f"the process has {len(timers)} POSIX timer(s), and this kernel cannot create "
                              "one with a given id (prctl PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15)") from None
        for timer in timers:
            tid = self.tids.get(timer.notify_pid, 0) if timer.notify & SIGEV_THREAD_ID else 0
            event = struct.pack("<Qiii", timer.sigval, timer.signal, timer.notify, tid)
            event_addr = self._data(0, event.ljust(SIGEVENT_SIZE, b"\0"))
            id_addr = self._data(SIGEVENT_SIZE, struct.pack("<i", timer.id))
            self.inject(SYS_timer_create, self._clock(timer.clock), event_addr, id_addr,
                        what=f"timer_create(id {timer.id}, {describe_clock(timer.clock)})")
            got = struct.unpack("<i", self._read(id_addr, 4))[0]
            if got != timer.id:
                raise TargetError(f"POSIX timer {timer.id} was created with id {got}")
        self.inject(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0,
                    what="prctl(PR_TIMER_CREATE_RESTORE_IDS, off)")

    def _clock(self, clock: int) -> int:
        """A timer's clock id for the new process: a CPU clock that names the process or
        one of its threads names the new pid or tid (same encoding); others are kept
        (ckpt.restorability refused those that name anything else)."""
        decoded = cpu_clock(clock)
        if decoded is None or decoded[0] == 0:
            return clock
        owner, per_thread, _ = decoded
        new = self.tids[owner] if per_thread else self.pid
        return (~new << 3) | (clock & 7)

    def restore_process_flags(self) -> None:
        """The child-subreaper flag (injected: a process sets its own) and
        oom_score_adj (written here to /proc/PID/oom_score_adj of the child, which
        inherited ckpt's; below the child's oom_score_adj_min the kernel wants
        CAP_SYS_RESOURCE, fs/proc/base.c __set_oom_adj)."""
        proc = self.process
        if proc.child_subreaper:
            self.inject(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, what="PR_SET_CHILD_SUBREAPER")
        if proc.ksm_merge_any:
            # MMF_VM_MERGE_ANY: every present and future mapping mergeable (mm/ksm.c
            # ksm_enable_merge_any); no privilege needed.
            self.inject(SYS_prctl, PR_SET_MEMORY_MERGE, 1, 0, 0, 0, what="PR_SET_MEMORY_MERGE")
        core = proc.coredump_filter
        if core is not None and core != procfs.read_coredump_filter(self.pid):
            self._write_proc("coredump_filter", f"{core:#x}")
        adj = proc.oom_score_adj
        if adj is None or adj == procfs.read_oom_score_adj(self.pid):
            return
        try:
            self._write_proc("oom_score_adj", str(adj))
        except OSError as err:
            raise TargetError(f"oom_score_adj {adj} cannot be set ({err.strerror}): lowering it below "
                              "the floor the restore inherits needs CAP_SYS_RESOURCE") from None

    def _write_proc(self, name: str, value: str) -> None:
        """Write ``value`` to /proc/PID/NAME of the new process."""
        fd = os.open(f"/proc/{self.pid}/{name}", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def restore_credentials(self) -> None:
        """Give every thread back the saved identity and capability sets.

        Credentials are per thread (glibc's setuid broadcast does not happen for
        injected syscalls).  Order matters: the bounding set is reduced while
        still root (needs CAP_SETPCAP), then groups, gids and uids; dropping to
        another uid clears the effective and permitted sets by itself; a process
        that kept uid 0 gets its saved sets back with capset, then its ambient
        set.  Never more privilege than the process had, and never more than
        the images' owner may have (:func:`ckpt.trust.check_identity` refused
        that before the fork).
        """
        creds = self.process.creds
        uids, gids, groups = creds.uids, creds.gids, creds.groups
        current = procfs.read_status(self.pid)
        same_ids = (tuple(current.uids) == uids and tuple(current.gids) == gids
                    and sorted(current.groups) == sorted(groups))
        drop = current.cap_bnd & ~creds.cap_bnd
        # Securebits before the uid change, which SECBIT_KEEP_CAPS and NO_SETUID_FIXUP
        # govern (security/commoncap.c cap_emulate_setxuid), while the thread still has
        # CAP_SETPCAP; the bit that forbids raising ambient capabilities after them.
        securebits = self.process.securebits
        early_bits = securebits & ~SECBIT_NO_CAP_AMBIENT_RAISE_BITS
        for thread in iter_threads(self.cp):
            tid = self.tids[thread.tid]
            for cap in range(64):
                if drop >> cap & 1:
                    self.inject(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0, tid=tid, what="PR_CAPBSET_DROP")
            if early_bits:
                self.inject(SYS_prctl, PR_SET_SECUREBITS, early_bits, 0, 0, 0, tid=tid,
                            what=f"PR_SET_SECUREBITS({early_bits:#x})")
            if not same_ids:
                arr = self._data(512, struct.pack(f"<{len(groups)}I", *groups)) if groups else 0
                self.inject(SYS_setgroups, len(groups), arr, tid=tid, what="setgroups")
                self.inject(SYS_setresgid, gids[0], gids[1], gids[2], tid=tid, what="setresgid")
                # setresgid/setresuid make the fs id the effective one (kernel/sys.c
                # __sys_setresgid): the recorded one comes after each.  setfsgid/setfsuid
                # return the previous id, never an error (setfsuid(2)); the values are
                # checked against /proc by the tests.
                self.inject(fs.SYS_setfsgid, gids[3], tid=tid, what="setfsgid")
                self.inject(SYS_setresuid, uids[0], uids[1], uids[2], tid=tid, what="setresuid")
                self.inject(fs.SYS_setfsuid, uids[3], tid=tid, what="setfsuid")
            wanted = (creds.cap_eff, creds.cap_prm, creds.cap_inh)
            now = procfs.read_status(tid)
            if (now.cap_eff, now.cap_prm, now.cap_inh) != wanted:
                eff, prm, inh = wanted
                data = struct.pack("<6I", eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF,
                                   eff >> 32, prm >> 32, inh >> 32)
                header = struct.pack("<Ii", _LINUX_CAPABILITY_VERSION_3, 0)
                self.inject(SYS_capset, self._data(0, header), self._data(64, data), tid=tid, what="capset")
            for cap in range(64):
                if creds.cap_amb >> cap & 1:
                    self.inject(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, tid=tid,
                                what=f"PR_CAP_AMBIENT_RAISE({cap})")
            if securebits != early_bits:
                self.inject(SYS_prctl, PR_SET_SECUREBITS, securebits, 0, 0, 0, tid=tid,
                            what=f"PR_SET_SECUREBITS({securebits:#x})")
            # no_new_privs is per thread (task->atomic_flags); older images record the leader's only.
            if trust.no_new_privs(thread, creds):
                self.inject(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, tid=tid, what="PR_SET_NO_NEW_PRIVS")
        # A change of uid, gid or fs ids resets the dumpable flag to suid_dumpable
        # (kernel/cred.c commit_creds): a process the user could ptrace (and dump
        # again) would come back unptraceable.  The flag is per mm.
        dumpable = self.process.dumpable
        if dumpable in (0, 1):
            self.inject(SYS_prctl, PR_SET_DUMPABLE, dumpable, 0, 0, 0, what="PR_SET_DUMPABLE")
        elif dumpable == 2:
            # SUID_DUMP_ROOT comes only from fs.suid_dumpable at a credential change or
            # exec; prctl refuses it (kernel/sys.c PR_SET_DUMPABLE).
            now = self.inject(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0, what="PR_GET_DUMPABLE")
            if now != 2:
                self.notes.append(f"the process was dumpable 2 (suid_dumpable); prctl cannot set that, it is {now}")

    def restore_mdwe(self) -> None:
        """PR_SET_MDWE (memory-deny-write-execute) as recorded, after every mapping is
        made (it would refuse the trampoline) and before nothing but munmap remains.
        It cannot be undone (kernel/sys.c prctl_set_mdwe), as for the process itself."""
        flags = self.process.mdwe
        if flags:
            self.inject(SYS_prctl, PR_SET_MDWE, flags, 0, 0, 0, what=f"PR_SET_MDWE({flags:#x})")

    def restore_parent_death_signal(self) -> None:
        """Each thread's parent-death signal as recorded (0 for most).  The child asked
        for SIGKILL at ckpt's death until it was traced (ckpt.pstree.die_with_parent),
        which the leader's recorded value replaces: the restored process outlives ckpt
        unless it asked otherwise.  It follows its new parent, the caller of the
        restore, as CRIU's restore does (restorability.pdeathsig_notes says so)."""
        for thread in iter_threads(self.cp):
            tid = self.tids[thread.tid]
            sig = thread.pdeathsig
            if sig or tid == self.pid:
                self.inject(SYS_prctl, PR_SET_PDEATHSIG, sig, 0, 0, 0, tid=tid, what=f"PR_SET_PDEATHSIG({sig})")

    def restore_scheduling(self) -> None:
        """Per thread: the timer slack, the nice value, the policy with its parameters.

        Timer slack first, injected (PR_SET_TIMERSLACK sets only the caller's, and an
        RT thread ignores it and has 0: kernel/sys.c, kernel/sched/syscalls.c
        __setscheduler_params).  Then, from here: setpriority(), which also sets the
        nice value an RT thread keeps underneath, and sched_setattr() when the policy,
        priority, flags (reset-on-fork) or the deadline parameters or a fair thread's
        custom time slice differ from what the new thread has.  Late, so that the
        rebuild's own steps never run under an RT policy; the kernel checks each call
        against ckpt's privilege and the thread's restored rlimits, and ckpt.trust
        refused before the fork what the images' owner could not have set.
        """
        for t in iter_threads(self.cp):
            tid = self.tids[t.tid]
            slack = t.timer_slack_ns
            if slack:
                self.inject(SYS_prctl, PR_SET_TIMERSLACK, slack, 0, 0, 0, tid=tid, what="PR_SET_TIMERSLACK")
            self._restore_affinity(t, tid)
            ioprio = t.ioprio
            if ioprio and syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) != ioprio:
                try:
                    syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, ioprio)
                except OSError as err:
                    raise TargetError(f"thread {t.tid}: I/O priority {ioprio:#x} (class {ioprio >> 13}, level "
                                      f"{ioprio & 7}): {err.strerror}") from None
            want = t.sched
            if not want:
                continue
            name = sched.POLICY_NAMES.get(want.policy, str(want.policy))
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) != want.nice:
                    os.setpriority(os.PRIO_PROCESS, tid, want.nice)
                now = sched.get_attr(tid)
                flags = want.flags & sched.RESTORED_FLAGS
                if want.policy in sched.FAIR_POLICIES:
                    # A fair thread's runtime is its time slice; 0 asks for the default.
                    runtime = 0 if want.runtime == now.runtime else want.runtime
                    differs = runtime != 0
                else:
                    runtime = want.runtime
                    differs = (runtime, want.deadline, want.period) != (now.runtime, now.deadline, now.period)
                if differs or (want.policy, want.priority, flags) != (
                        now.policy, now.priority, now.flags & sched.RESTORED_FLAGS):
                    sched.set_attr(tid, sched.SchedAttr(want.policy, flags, want.nice, want.priority,
                                                        runtime, want.deadline, want.period))
            except OSError as err:
                raise TargetError(f"thread {t.tid}: {name} priority {want.priority} nice {want.nice}: "
                                  f"{err.strerror}") from None

    def _restore_affinity(self, thread: Thread, tid: int) -> None:
        """sched_setaffinity(2) to the recorded CPUs that this machine lets the new thread
        use (its cpuset: the kernel intersects, kernel/sched/syscalls.c
        __sched_setaffinity); a note names those it does not, and none at all leaves the
        thread where it is (a process moved to a smaller machine still runs)."""
        want = thread.cpu_affinity
        if not want:
            return
        want_set = set(want)
        if want_set == os.sched_getaffinity(tid):
            return
        try:
            os.sched_setaffinity(tid, want_set)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
        got = os.sched_getaffinity(tid)
        if got != want_set:
            missing = sorted(want_set - got)
            self.notes.append(f"thread {thread.tid} ran on CPUs {_cpu_list(want)}; "
                              + (f"CPUs {_cpu_list(missing)} are not available here, it runs on {_cpu_list(sorted(got))}"
                                 if missing else f"it runs on {_cpu_list(sorted(got))}"))

    def arm_timers(self) -> None:
        """Arm the interval and POSIX timers with the time they had left, as the last
        injections before the release.

        The remaining time is restored as it was recorded (CRIU's rule): the time
        the process spent frozen, killed and waiting for its restore does not count,
        as for a process that was stopped (docs/DESIGN.md "Timers").  An absolute
        timer (TIMER_ABSTIME) becomes relative.  Every thread has all signals
        blocked meanwhile (release() loads the saved masks), so that a timer that
        fires before the release only leaves its signal pending.
        """
        proc = self.process
        itimers = proc.itimers
        armed = [(name, which) for name, which in ITIMERS
                 if itimers is not None and _itimer_value(name, getattr(itimers, name))]
        timers = [t for t in proc.posix_timers if t.value_ns]
        if not armed and not timers:
            return
        for t in iter_threads(self.cp):
            pt.set_sigmask(self.tids[t.tid], _ALL_SIGNALS)
        for name, which in armed:
            assert itimers is not None
            itimer = getattr(itimers, name)
            self._setitimer(name, which, _itimer_value(name, itimer), itimer.interval_us)
        for timer in timers:
            spec = struct.pack("<qqqq", *divmod(timer.interval_ns, 1_000_000_000),
                               *divmod(timer.value_ns, 1_000_000_000))
            self.inject(SYS_timer_settime, timer.id, 0, self._data(0, spec), 0,
                        what=f"timer_settime(id {timer.id})")

    def _setitimer(self, name: str, which: int, value_us: int, interval_us: int) -> None:
        """setitimer() in the leader.  A CPU-time itimer gets one clock tick added to its
        value by the kernel (kernel/time/itimer.c set_cpu_itimer adds TICK_NSEC, so
        that it never fires early) and getitimer() reports it: the recorded value
        includes the original's tick already, so the tick added here is measured (set,
        read back) and taken off, which also leaves no drift over repeated restores."""
        def arm(value: int) -> None:
            spec = struct.pack("<qqqq", *divmod(interval_us, 1_000_000), *divmod(value, 1_000_000))
            self.inject(SYS_setitimer, which, self._data(0, spec), 0, what=f"setitimer({name})")

        arm(value_us)
        if which == ITIMER_REAL:
            return
        out = self._data(64, bytes(32))
        self.inject(SYS_getitimer, which, out, what=f"getitimer({name})")
        _, _, sec, usec = struct.unpack("<qqqq", self._read(out, 32))
        extra = sec * 1_000_000 + usec - value_us
        if extra > 0:
            arm(max(value_us - extra, 1))

    def queue_pending_signals(self) -> None:
        """Queue again the signals that were pending, with their siginfo.

        Injected into the target itself, so that rt_[tg]sigqueueinfo may carry
        any si_code (kernel/signal.c do_rt_sigqueueinfo, do_rt_tgsigqueueinfo
        refuse si_code >= 0 or SI_TKILL from another process).  Every thread
        blocks all signals first: a signal taken during the remaining injections
        would stop the thread for ckpt, which suppresses it; ``release`` loads
        the saved masks.

        A pending SIGTRAP (one sent with kill(), or a breakpoint trap not yet
        taken) is queued as any other: the injections raise no SIGTRAP of their
        own (ckpt.live.inject_syscall), so nothing takes it or, through a forced
        SIGTRAP, resets its handler.  CRIU refuses to dump such a thread ("Can't
        dump the thread with a pending SIGTRAP") because its own parasite and
        restorer run on breakpoints and single steps; ckpt uses neither.
        """
        process_pending = self.process.pending
        threads = list(iter_threads(self.cp))
        if not process_pending and not any(t.pending for t in threads):
            return
        for t in threads:
            pt.set_sigmask(self.tids[t.tid], _ALL_SIGNALS)
        for info in process_pending:
            signo = struct.unpack_from("<i", info)[0]
            self.inject(SYS_rt_sigqueueinfo, self.pid, signo, self._data(0, bytes(info)),
                        what=f"rt_sigqueueinfo({signo})")
        for t in threads:
            tid = self.tids[t.tid]
            for info in t.pending:
                signo = struct.unpack_from("<i", info)[0]
                self.inject(SYS_rt_tgsigqueueinfo, self.pid, tid, signo, self._data(0, bytes(info)), tid=tid,
                            what=f"rt_tgsigqueueinfo({signo})")

    def register_lazy(self) -> None:
        if self.lazy is not None:
            self.lazy.register(self.inject)

    def arm_tracking(self) -> None:
        if self.tracking is not None:
            self.tracking.arm(self.inject)

    def unmap_trampoline(self) -> None:
        # The thread stops at the syscall's exit: it never returns to the unmapped rip.
        self.inject(SYS_munmap, self.tramp, TRAMPOLINE_SIZE, what="munmap trampoline")

    def _resumed(self, saved: Regs) -> dict[str, int]:
        """The registers a thread resumes with, when it was frozen inside a syscall.

        Every thread is released from a ptrace stop inside get_signal (the
        signal-delivery stop :meth:`_into_get_signal` makes), where the kernel's
        own restart logic runs on the registers as loaded
        (arch_do_signal_or_restart): -ERESTARTSYS,
        -ERESTARTNOINTR and -ERESTARTNOHAND are left to it, so that a signal
        whose handler runs first makes the syscall fail with EINTR exactly as it
        would have (a pause() or sigsuspend() woken by a signal sent right after
        the restore returns).  -ERESTART_RESTARTBLOCK cannot be: the new process
        has no restart block, so the syscall (a sleep, a poll, a futex wait with
        a timeout) is issued again from its start (ckpt.arch.x86_64.restarted;
        its number read from the ``mov $NR, %eax`` before the syscall
        instruction when the thread was in restart_syscall) rather than failing
        with EINTR, which a program without a signal handler never sees (CRIU
        returns EINTR there)."""
        regs = saved.as_dict()
        if regs["orig_rax"] >= 1 << 63 or arch.signed(regs["rax"]) != -arch.ERESTART_RESTARTBLOCK:
            return regs
        original = None
        if regs["orig_rax"] == arch.SYS_restart_syscall:
            try:
                original = arch.syscall_nr_before(self._read(regs["rip"] - 7, 7))
            except OSError:
                original = None
        return arch.restarted(regs, restart_block=False, original_nr=original)

    def release(self) -> None:
        """Load every thread's saved registers, xstate and sigmask; detach all."""
        self.load_registers()
        self.detach()

    def load_registers(self) -> None:
        """Load every thread's saved registers, xstate and sigmask, each thread left stopped.

        Each thread is first moved from its last injection's syscall-exit stop
        into a signal-delivery stop inside get_signal (:meth:`_into_get_signal`),
        so that on detach the kernel delivers what is pending and unblocked and
        then runs its syscall-restart logic on the loaded registers
        (:meth:`_resumed`)."""
        threads = list(iter_threads(self.cp))
        for t in threads:
            tid = self.tids[t.tid]
            if tid in self._at_syscall_exit:
                self._into_get_signal(tid)
            pt.set_regs(tid, pt.regs_from_dict(self._resumed(t.regs)))
            if t.xstate:
                pt.set_regset(tid, pt.NT_X86_XSTATE, t.xstate)
            elif t.fpregs:
                pt.set_regset(tid, pt.NT_PRFPREG, t.fpregs)
            pt.set_sigmask(tid, t.sigmask)

    def detach(self, stop_signal: int = 0) -> None:
        """Let every thread run, the leader last.  ``stop_signal``: the signal that had
        stopped the process, given as each thread leaves its signal-delivery stop: the
        kernel takes it as the signal being delivered (kernel/signal.c ptrace_signal), and
        its default action puts the process back into group stop before it runs any code
        of its own; the parent gets a fresh CLD_STOPPED report, as after CRIU's restore."""
        for t in reversed(list(iter_threads(self.cp))):  # the leader last
            pt.detach(self.tids[t.tid], stop_signal)

    def _into_get_signal(self, tid: int) -> None:
        """Move ``tid`` from a syscall-exit stop into a signal-delivery stop, where
        detaching with no signal runs the rest of get_signal and the restart logic.

        Detached from a syscall-exit stop, a thread returns to user mode without
        them unless a signal is pending for it (kernel/entry/common.c
        exit_to_user_mode_loop calls arch_do_signal_or_restart only on
        TIF_SIGPENDING): a thread saved inside pause() would return -ERESTARTNOHAND.
        So the thread is resumed with a signal, sent to itself by the kernel as
        it leaves the stop (include/linux/ptrace.h ptrace_report_syscall: send_sig,
        private, not forced), that its mask lets through alone and that nothing
        pending shares (a second instance of a legacy signal would be dropped,
        kernel/signal.c legacy_queue, and an RT one queued behind the saved one);
        never a stop signal or SIGCONT, whose sending flushes the other kind
        (prepare_signal).  It stops for ckpt before any handler (ptrace_signal),
        and detaching with signal 0 discards it.  No SIGTRAP: see
        ckpt.live.inject_syscall.
        """
        status = procfs.read_status(tid)
        busy = status.sig_pnd | status.shd_pnd
        sig = next((s for s in range(1, 65) if s not in _NOT_FOR_RELEASE and not busy >> (s - 1) & 1), 0)
        if not sig:
            raise TargetError(f"thread {tid}: every signal is pending; none is left to release it with")
        pt.set_sigmask(tid, _ALL_SIGNALS & ~(1 << (sig - 1)))
        pt.cont(tid, sig)
        while True:
            stop = pt.StopStatus(tid, pt.wait_tid(tid)[1])
            if stop.exited:
                raise TargetError(f"thread {tid} exited before its release")
            if stop.event == 0 and stop.signal == sig:
                self._at_syscall_exit.discard(tid)
                return
            pt.cont(tid, 0)   # a SIGSTOP from outside, as an injection suppresses it


def _itimer_value(name: str, itimer: Itimer) -> int:
    """The time an interval timer is armed with.  A periodic ITIMER_REAL whose SIGALRM is
    pending shows no time left: the kernel arms it again only when that signal is
    dequeued (kernel/signal.c dequeue_signal, ``it_real_incr``), which the restored
    process will do with the SIGALRM restored among its pending signals -- so it is armed
    for one period, not left disarmed."""
    if name == "real" and not itimer.value_us:
        return itimer.interval_us
    return itimer.value_us


def _cpu_list(cpus: Sequence[int]) -> str:
    """CPUs as the kernel's cpulist format writes them ("0-3,6")."""
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _shm_prot(vma: VmaRecord) -> int:
    """The protection ``shmat`` gives with :func:`ckpt.namedshm.attach_flags` (ipc/shm.c do_shmat)."""
    flags = namedshm.attach_flags(vma)
    return PROT_READ | (0 if flags & namedshm.SHM_RDONLY else PROT_WRITE) | (PROT_EXEC if flags & namedshm.SHM_EXEC else 0)


def _free_gap(occupied: list[tuple[int, int]], size: int) -> int:
    """A free spot of ``size`` bytes (see ckpt.arch.x86_64.free_area)."""
    spot = arch.free_area(occupied, size)
    if spot is None:
        raise TargetError("no free address range for the restorer's trampoline")
    return spot


class _PageWriter:
    """Batches page writes into the rebuilt process (see ``Rebuilder.write_pages``).

    Batches are written by two threads: most of the time goes into the first
    touch of the new process's memory (page faults, 4-5 µs a page on this VM,
    whose fresh memory comes from the host), and faults on two CPUs overlap.
    """

    BATCH = 512              # iovecs per process_vm_writev (IOV_MAX is 1024)
    BATCH_BYTES = 16 << 20   # so that big contiguous runs still make several batches

    def __init__(self, pid: int, mem_fd: int, progress: Callable[[str, int, int], None] | None = None,
                 expected: int = 0) -> None:
        self.pid = pid
        self.mem_fd = mem_fd
        self.progress = progress
        self.expected = expected   # bytes of stored pages to write, for progress
        self.done = 0
        self.local = array("Q")
        self.remote = array("Q")
        self.total = 0
        self.keep: list[bytes] = []  # frames referenced by the pending iovecs
        self.pool = workers.pool(2, "ckpt-write")
        self.pending: collections.deque[Future[None]] = collections.deque()

    def add(self, address: int, frame: bytes, offset: int, length: int) -> None:
        """Queue ``frame[offset:offset+length]`` for ``address`` (a writable mapping)."""
        base = ctypes.cast(ctypes.c_char_p(frame), ctypes.c_void_p).value or 0  # no copy
        self.local.extend((base + offset, length))
        self.remote.extend((address, length))
        self.total += length
        self.keep.append(frame)
        if len(self.remote) >= 2 * self.BATCH or self.total >= self.BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        count = len(self.remote) // 2
        if count:
            self.pending.append(self.pool.submit(self._write, self.local, self.remote, count, self.total,
                                                 self.keep))
            self.done += self.total
            self.local, self.remote, self.total, self.keep = array("Q"), array("Q"), 0, []
        while len(self.pending) > 4:  # bounded: each batch pins its frames
            self.pending.popleft().result()
        if self.progress:
            self.progress("memory", min(self.done, self.expected), self.expected)

    def _write(self, local: array, remote: array, count: int, total: int, _frames: list[bytes]) -> None:
        written = vm.write_iovecs(self.pid, local, remote, count)
        if written != total:
            raise OSError(errno.EIO, f"process_vm_writev wrote {written} of {total} bytes")

    def flush(self) -> None:
        """Write everything queued and wait for it."""
        self._submit()
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Stop the writer threads (pending batches are dropped on an error path)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def force(self, address: int, data: memoryview) -> None:
        """Write through /proc/PID/mem (FOLL_FORCE), for mappings without write permission."""
        if os.pwrite(self.mem_fd, data, address) != len(data):
            raise OSError(errno.EIO, f"short write at {address:#x}")
        self.done += len(data)


def _same_file(a: str, b: str) -> bool:
    """The two paths (magic links followed) lead to one file."""
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

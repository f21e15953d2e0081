"""Everything besides memory that a restore needs, read from a frozen target.

Per thread: registers (fs_base/gs_base included), the XSAVE area, sigmask,
rseq registration, robust list, clear_child_tid, sigaltstack, name,
scheduling policy and nice value, timer slack, no_new_privs and seccomp mode,
parent-death signal, CPU affinity, I/O priority, credentials when they are not
the leader's.
Per process: mm fields (code/data/brk/stack/arg/env, auxv, exe), guard
regions, mlockall(MCL_FUTURE), membarrier registrations, sigactions, cwd,
root, umask, rlimits, credentials, personality, every thread's seccomp
filters (one tree), interval and POSIX timers, oom_score_adj, loginuid, the
child-subreaper, THP-disable and dumpable flags, securebits, memory-deny-write-execute
(PR_SET_MDWE), KSM merge-any (PR_SET_MEMORY_MERGE), coredump_filter, and the open files and the
fd table (:mod:`ckpt.files`).

What /proc, ptrace and sched_getattr(2) cannot tell is asked from inside the
target by injected syscalls writing into the injector's scratch area
(``brk(0)``, ``prctl(PR_GET_TID_ADDRESS)``, ``sigaltstack``, ``rt_sigaction``,
``getitimer``, ``timer_gettime``, ``prctl(PR_GET_*)``,
``membarrier(GET_REGISTRATIONS)``, an ``mmap`` probe for MCL_FUTURE), as
CRIU's parasite does (criu/pie/parasite.c); :mod:`ckpt.live.inject` makes each
of them safe to abandon should ckpt die meanwhile.  None of them changes what
it reads.  The result is a :class:`ckpt.image.schema.State`, stored as the
checkpoint's ``state``.
"""

from __future__ import annotations

import errno
import os
import signal
import dataclasses
import struct
from typing import Any

from . import cgroups, files, procfs, ranges, restorability, seccomp, trust
from ._sys import ptrace as pt
from ._sys import sched
from ._sys.libc import (address_of, SYS_brk, SYS_get_robust_list, SYS_getitimer, SYS_ioprio_get, SYS_membarrier,
                        SYS_mmap, SYS_munmap, SYS_prctl, SYS_rt_sigaction, SYS_sigaltstack, SYS_timer_gettime, syscall)
from ._sys.pagemap import PagemapScanner, guard_category
from .arch import x86_64 as arch
from .image.schema import (TASK_STATE_VERSION, Child, Creds, ExeStat, Identity, InSyscall, Itimer, Itimers, Mm,
                           PosixTimer, Process, Regs, RobustList, Rseq, Sched, SeccompFilter, Sigaction, Sigaltstack,
                           State, Thread)
from .files.survey import FreezeView
from .live import FrozenProcess, wrap_process_errors

PR_GET_DUMPABLE, PR_GET_TIMERSLACK, PR_GET_CHILD_SUBREAPER, PR_GET_TID_ADDRESS, PR_GET_THP_DISABLE = 3, 30, 37, 40, 42
PR_GET_PDEATHSIG, PR_GET_SECUREBITS, PR_GET_MDWE = 2, 27, 66   # include/uapi/linux/prctl.h
IOPRIO_WHO_PROCESS = 1                              # include/uapi/linux/ioprio.h (a tid: per thread)
PAGE = 4096
PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS = 1, 2, 0x02, 0x20
MCL_FUTURE, MCL_ONFAULT = 2, 4                      # include/uapi/asm-generic/mman-common.h
SECCOMP_MODE_FILTER = 2                             # include/uapi/linux/seccomp.h
MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9           # include/uapi/linux/membarrier.h
STATE_VERSION = TASK_STATE_VERSION  # the image schema (ckpt/image/schema.py) owns the number
ITIMERS = (("real", 0), ("virtual", 1), ("prof", 2))   # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
_TIMESPEC_PAIR = struct.Struct("<qqqq")   # struct itimerval / __kernel_itimerspec: interval, then value


def capture(proc: FrozenProcess, objects: files.ObjectSet | None = None, view: FreezeView | None = None,
            *, guards: bool = True) -> State:
    """Capture the task state of a frozen process (all threads stopped).  The memfds and
    deleted files its fds are open files of are recorded in ``objects`` (ckpt/files/objects.py);
    ``view`` is what the processes frozen with it share (ckpt/files/survey.py).
    ``guards=False`` leaves ``mm.guard`` None for the caller to fill in (the dump's frozen
    round tells the guard regions: ckpt/tracker.py ``Tracker.scan_guards``; else
    :func:`guard_regions`).

    Runs on the session's tracer thread: it reads registers and regsets with
    ptrace, which only the tracer thread may do."""
    return proc.run(_capture, proc, objects, view, guards)


def guard_regions(pid: int) -> bytes | None:
    """The guard regions (MADV_GUARD_INSTALL) of the whole address space, as ``mm.guard``
    stores them: one PAGEMAP_SCAN, which visits every VMA (about 0.5 ms per GiB of
    populated memory, 6.3 ms at 20,000 mappings here); None on kernels without
    PAGE_IS_GUARD."""
    guard = guard_category()
    if not guard:
        return None
    with PagemapScanner(pid) as scanner:
        return ranges.to_bytes(scanner.ranges(0, arch.TASK_SIZE, mask=guard, return_mask=guard))


def _capture(proc: FrozenProcess, objects: files.ObjectSet | None = None, view: FreezeView | None = None,
             guards: bool = True) -> State:
    pid = proc.pid
    with wrap_process_errors(pid, "capturing task state", attached=True):
        scratch = proc.scratch(4096)
        leader_ids = _ids(procfs.read_status(pid))
        threads = [_capture_thread(proc, tid, scratch, leader_ids) for tid in sorted(proc.threads)]
        brk = proc.inject(SYS_brk, 0)
        mm = _capture_mm(pid, brk)
        process = _capture_process(pid)
        threads, seccomp_fields = _capture_seccomp(threads)
        process.update(seccomp_fields)
        process.update(_capture_timers(proc, scratch))
        process.update(_capture_process_flags(proc, scratch, process))
        mm.update(_capture_mm_flags(proc, threads, process["seccomp_filters"], guards))
        open_files = files.capture(pid, objects, view)
        return State(
            version=STATE_VERSION,
            threads=tuple(threads),
            mm=Mm(**mm),
            sigactions=_capture_sigactions(proc, scratch),
            process=Process(**process),
            files=tuple(open_files["files"]),
            fds=tuple(open_files["fds"]),
        )


def _capture_thread(proc: FrozenProcess, tid: int, scratch: int, leader_ids: Creds) -> Thread:
    regs = proc.regs(tid)
    status = procfs.read_status(tid)
    xstate = b""
    try:
        xstate = pt.get_regset(tid, pt.NT_X86_XSTATE)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENODEV, errno.EIO):
            raise
    fpregs = pt.get_regset(tid, pt.NT_PRFPREG)
    try:
        rseq = pt.get_rseq_configuration(tid)
        rseq_d: Rseq | None = Rseq(pointer=rseq.pointer, size=rseq.size, signature=rseq.signature,
                                   flags=rseq.flags)
    except OSError:
        rseq_d = None
    # get_robust_list works on another thread given ptrace read access (kernel/futex/syscalls.c).
    head_len = bytearray(16)
    syscall(SYS_get_robust_list, tid, address_of(head_len), address_of(head_len) + 8)
    robust_head, robust_len = struct.unpack("<QQ", head_len)
    proc.inject_checked(SYS_prctl, PR_GET_TID_ADDRESS, scratch, tid=tid, what="prctl(PR_GET_TID_ADDRESS)")
    proc.inject_checked(SYS_sigaltstack, 0, scratch + 8, tid=tid, what="sigaltstack")
    # Timer slack is per thread and only the thread itself can read it
    # (/proc/PID/timerslack_ns is the leader's); PR_GET_TIMERSLACK returns it.
    slack = proc.inject_checked(SYS_prctl, PR_GET_TIMERSLACK, 0, 0, 0, 0, tid=tid, what="prctl(PR_GET_TIMERSLACK)")
    # The parent-death signal is per thread too (task->pdeath_signal), and only
    # PR_GET_PDEATHSIG tells it.
    proc.inject_checked(SYS_prctl, PR_GET_PDEATHSIG, scratch + 32, 0, 0, 0, tid=tid, what="prctl(PR_GET_PDEATHSIG)")
    raw = proc.read(scratch, 36)
    clear_child_tid = struct.unpack_from("<Q", raw, 0)[0]
    ss_sp, ss_flags, ss_size = struct.unpack_from("<Qi4xQ", raw, 8)  # stack_t
    return Thread(
        tid=tid,
        regs=Regs(**pt.regs_to_dict(regs)),
        xstate=xstate,
        fpregs=fpregs,
        sigmask=proc.sigmask(tid),  # as frozen: injections block signals meanwhile
        rseq=rseq_d,
        robust_list=RobustList(head=robust_head, len=robust_len),
        clear_child_tid=clear_child_tid,
        sigaltstack=Sigaltstack(sp=ss_sp, flags=ss_flags, size=ss_size),
        comm=procfs.read_comm(proc.pid, tid),
        in_syscall=_syscall_restart_info(regs),
        # Queued signals, read without dequeuing them (PTRACE_PEEKSIGINFO): the
        # thread's own queue here, the process-wide one under "process".
        pending=tuple(pt.peek_pending_signals(tid, shared=False)),
        sched=_capture_sched(tid),
        timer_slack_ns=slack,
        # Both are per thread (task->atomic_flags, task->seccomp); /proc/PID/status
        # shows the leader's only.
        no_new_privs=status.no_new_privs,
        seccomp_mode=status.seccomp,
        pdeathsig=struct.unpack_from("<i", raw, 32)[0],
        # Both from here, per thread, no privilege: sched_getaffinity(2), ioprio_get(2).
        cpu_affinity=tuple(sorted(os.sched_getaffinity(tid))),
        ioprio=_ioprio(tid),
        # Credentials are per thread (struct cred); process.creds are the leader's.
        creds=None if _ids(status) == leader_ids else _ids(status),
        cgroups=_thread_cgroups(proc.pid, tid),
    )


def _thread_cgroups(pid: int, tid: int) -> tuple[cgroups.Cgroup, ...] | None:
    """A thread's cgroups when they are not its process's (v1 controllers, v2 threaded)."""
    mine = cgroups.read(pid, tid)
    return None if mine == cgroups.read(pid) else mine


def _ioprio(tid: int) -> int | None:
    """The thread's I/O priority (IOPRIO_PRIO_VALUE(class, level); 0: none set, it
    follows the nice value), None when ioprio_get fails (block/ioprio.c)."""
    try:
        return syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid)
    except OSError:
        return None


def _creds(status: procfs.Status) -> Creds:
    """A thread's credentials as /proc/TID/status shows them."""
    return Creds(uids=tuple(status.uids), gids=tuple(status.gids), groups=tuple(status.groups),
                 cap_inh=status.cap_inh, cap_prm=status.cap_prm, cap_eff=status.cap_eff,
                 cap_bnd=status.cap_bnd, cap_amb=status.cap_amb,
                 no_new_privs=status.no_new_privs, seccomp=status.seccomp)


def _ids(status: procfs.Status) -> Creds:
    """A thread's ids and capability sets, without what a thread records apart
    (``no_new_privs``, ``seccomp_mode``)."""
    return dataclasses.replace(_creds(status), no_new_privs=None, seccomp=0)


def _capture_sched(tid: int) -> Sched:
    """The thread's scheduling policy and parameters: sched_getattr(2) from here (no
    injection, no privilege), and the nice value from getpriority(2), which keeps
    it under RT policies where sched_getattr says 0 (kernel/sched/syscalls.c get_params)."""
    attr = sched.get_attr(tid)
    return Sched(policy=attr.policy, flags=attr.flags, nice=os.getpriority(os.PRIO_PROCESS, tid),
                 priority=attr.priority, runtime=attr.runtime, deadline=attr.deadline,
                 period=attr.period, util_min=attr.util_min, util_max=attr.util_max)


def _syscall_restart_info(regs: pt.user_regs_struct) -> InSyscall | None:
    """What the thread was doing in the kernel when frozen (restore applies CRIU's
    restart rule: -ERESTART{SYS,NOINTR,NOHAND} -> re-execute, RESTARTBLOCK -> EINTR)."""
    orig = regs.orig_rax
    if orig >= 1 << 63:
        return None
    rax = regs.rax - (1 << 64) if regs.rax >= 1 << 63 else regs.rax
    return InSyscall(nr=orig, result=rax)


def _capture_mm(pid: int, brk: int) -> dict[str, Any]:
    st = procfs.read_stat(pid)
    exe = procfs.read_exe(pid)
    exe_stat = ExeStat()
    try:
        s = os.stat(f"/proc/{pid}/exe")
        exe_stat = ExeStat(dev=s.st_dev, ino=s.st_ino, size=s.st_size, mtime_ns=s.st_mtime_ns,
                           mnt_id=trust.identity_record(f"/proc/{pid}/exe").get("mnt_id"))
    except OSError:
        pass
    return {
        "start_code": st.start_code, "end_code": st.end_code,
        "start_data": st.start_data, "end_data": st.end_data,
        "start_brk": st.start_brk, "brk": brk,
        "start_stack": st.start_stack,
        "arg_start": st.arg_start, "arg_end": st.arg_end,
        "env_start": st.env_start, "env_end": st.env_end,
        "auxv": procfs.read_auxv(pid),
        "exe": exe, "exe_stat": exe_stat,
    }


def _capture_sigactions(proc: FrozenProcess, scratch: int) -> dict[int, Sigaction]:
    """Handlers of every signal not at SIG_DFL (from SigIgn|SigCgt), read with
    injected ``rt_sigaction(sig, NULL, &old, 8)``."""
    status = procfs.read_status(proc.pid)
    wanted = status.sig_ign | status.sig_cgt
    out: dict[int, Sigaction] = {}
    for sig in range(1, 65):
        if not wanted & (1 << (sig - 1)) or sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        slot = scratch + 64 + 32 * (sig % 64)
        proc.inject_checked(SYS_rt_sigaction, sig, 0, slot, 8, what=f"rt_sigaction({sig})")
    raw = proc.read(scratch, 4096)
    for sig in range(1, 65):
        if not wanted & (1 << (sig - 1)) or sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        handler, flags, restorer, mask = struct.unpack_from("<QQQQ", raw, 64 + 32 * (sig % 64))
        out[sig] = Sigaction(handler=handler, flags=flags, restorer=restorer, mask=mask)
    return out


def _capture_process(pid: int) -> dict[str, Any]:
    """The fields of :class:`Process` /proc gives (the caller adds the injected ones)."""
    status = procfs.read_status(pid)
    stat = procfs.read_stat(pid)
    return {
        "pid": pid,
        "comm": procfs.read_comm(pid),
        "cmdline": procfs.read_cmdline(pid),
        # cwd and root with the identity of the directory each led to, which a
        # restore requires of the directory it opens (ckpt/trust.py).
        "cwd": procfs.read_cwd(pid),
        "cwd_id": Identity(**trust.identity_record(f"/proc/{pid}/cwd")),
        "root": procfs.read_root(pid),
        "root_id": Identity(**trust.identity_record(f"/proc/{pid}/root")),
        "boot_id": trust.boot_id(),
        "dumpable": _dumpable(pid, status.uids[1]),
        "umask": status.umask,
        "personality": procfs.read_personality(pid),
        "rlimits": {k: tuple(v) for k, v in procfs.read_limits(pid).items()},
        "creds": _creds(status),
        "sig_pending_shared": status.shd_pnd,
        "pending": tuple(pt.peek_pending_signals(pid, shared=True)),
        "children": _capture_children(pid),
        # Its session, group and controlling terminal (ckpt/files/tty.py gives the terminal back).
        "session": stat.session, "pgid": stat.pgrp, "tty_nr": stat.tty_nr,
        **_time_namespaces(pid),
        "cgroups": cgroups.read(pid),   # (ckpt/cgroups.py gives them back)
    }


def _time_namespaces(pid: int) -> dict[str, bool | None]:
    """Whether the process runs in another time namespace than ckpt's own (which a restore
    runs in), and whether its children would get another one than its own (unshare
    CLONE_NEWTIME moves only the children, kernel/time/namespace.c ``timens_on_fork``):
    ``timens_own``, ``timens_children``; None each without time namespaces (no
    /proc/PID/ns/time: CONFIG_TIME_NS off)."""
    def ns(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino
    own, children, mine = ns(f"/proc/{pid}/ns/time"), ns(f"/proc/{pid}/ns/time_for_children"), ns("/proc/self/ns/time")
    if own is None or children is None or mine is None:
        return {"timens_own": None, "timens_children": None}
    return {"timens_own": own != mine, "timens_children": children != own}


def _capture_seccomp(threads: list[Thread]) -> tuple[list[Thread], dict[str, Any]]:
    """The seccomp filters of every thread, as one tree (CRIU's seccomp.c does the same).

    Filters are per thread and form a tree in the kernel: a thread created
    after a filter was installed shares it (kernel/fork.c copy_seccomp), and
    SECCOMP_FILTER_FLAG_TSYNC gives every thread the caller's (kernel/seccomp.c
    seccomp_sync_threads).  User space cannot see that identity (no kcmp type
    for it, and the metadata holds only the LOG flag), so filters with the same
    program and flags at the same place of two threads' chains are taken to be
    one filter -- what inheritance and TSYNC make.  Should they have been
    installed separately, a restore that shares them only lets a later TSYNC
    succeed where it failed: it can add filters to the other threads, never
    remove one.

    Returns the threads with ``seccomp_filter`` set (index of its newest filter,
    None without one, or when the filters could not be read) and the process's
    ``seccomp_filters`` (each with the index of the filter installed before it,
    ``prev``) and, when some could not be read, why.
    """
    nodes: list[SeccompFilter] = []
    index: dict[tuple[int | None, bytes, int], int] = {}
    unreadable = ""
    out_threads = []
    for thread in threads:
        if thread.seccomp_mode != SECCOMP_MODE_FILTER:
            out_threads.append(dataclasses.replace(thread, seccomp_filter=None))
            continue
        try:
            chain = pt.get_seccomp_filters(thread.tid)
        except OSError as err:
            # EACCES without CAP_SYS_ADMIN (or under seccomp ourselves); EINVAL
            # on kernels built without CONFIG_CHECKPOINT_RESTORE.
            unreadable = (f"PTRACE_SECCOMP_GET_FILTER: {err.strerror}"
                          + (" (it needs CAP_SYS_ADMIN)" if err.errno in (errno.EACCES, errno.EPERM) else ""))
            out_threads.append(dataclasses.replace(thread, seccomp_filter=None))
            continue
        prev: int | None = None
        for f in chain:
            key = (prev, f.insns, f.flags)
            if key not in index:
                index[key] = len(nodes)
                nodes.append(SeccompFilter(insns=f.insns, flags=f.flags, prev=prev))
            prev = index[key]
        out_threads.append(dataclasses.replace(thread, seccomp_filter=prev))
    out: dict[str, Any] = {"seccomp_filters": tuple(nodes)}
    if unreadable:
        out["seccomp_unreadable"] = unreadable
    return out_threads, out


def _capture_mm_flags(proc: FrozenProcess, threads: list[Thread],
                      nodes: tuple[SeccompFilter, ...], guards: bool = True) -> dict[str, Any]:
    """What the address space carries besides its VMAs: guard regions, mlockall's
    MCL_FUTURE, membarrier registrations.

    * Guard regions (MADV_GUARD_INSTALL) are PTE markers, not VMAs: one
      PAGEMAP_SCAN over the whole address space finds them (:func:`guard_regions`),
      unless ``guards`` is False (the caller finds them another way).
    * MCL_FUTURE lives in mm->def_flags, which /proc does not show: a page
      mapped by an injected mmap() is locked (VmLck grows) only under it, and
      populated at once unless MCL_ONFAULT came with it (mm/mmap.c, mm/gup.c
      mm_populate).
    * Membarrier registrations (mm->membarrier_state) are reported only to the
      process itself, by MEMBARRIER_CMD_GET_REGISTRATIONS (Linux 6.3,
      kernel/sched/membarrier.c membarrier_get_registrations); MEMBARRIER_CMD_QUERY
      tells what the kernel supports, not what was registered.

    Both injections run in a thread whose seccomp filters let them through
    (:func:`_unharmed_thread`) where there is one: the filters are suspended
    meanwhile (ckpt.live.freeze), but should ckpt die at the entry of an
    injected syscall, the kernel would apply them.
    """
    out: dict[str, Any] = {"guard": guard_regions(proc.pid) if guards else None}
    out["mlockall"] = _mlockall_flags(proc, threads, nodes)
    what = "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)"
    tid = _unharmed_thread(proc, threads, nodes, (SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0))
    res = proc.inject(SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, tid=tid) if tid else -errno.EPERM
    if -4096 < res < 0:
        out["membarrier"] = None
        out["membarrier_unreadable"] = (f"{what}: {os.strerror(-res)}" if tid else
                                        f"every thread's seccomp filters would stop {what}; ckpt did not ask")
    else:
        out["membarrier"] = res
    return out


def _unharmed_thread(proc: FrozenProcess, threads: list[Thread], nodes: tuple[SeccompFilter, ...],
                     *calls: tuple[int, ...]) -> int | None:
    """A thread in which ckpt may inject ``calls`` (each a syscall number and its
    arguments): one without a seccomp filter, else one whose filters let each of
    them return (allow it, or fail it with an errno) rather than kill the thread,
    send it SIGSYS or wait for a supervisor; else, the filters being suspended,
    the leader.  None when there is none.  The filters run with
    instruction_pointer 0: a filter that tells ckpt's code from the program's by
    address is not judged right."""
    for thread in sorted(threads, key=lambda t: t.seccomp_filter is not None):
        if thread.seccomp_mode == 0:
            return thread.tid
        if thread.seccomp_mode != SECCOMP_MODE_FILTER or thread.seccomp_filter is None:
            continue
        programs = [nodes[i].insns for i in seccomp.chain(nodes, thread.seccomp_filter)]
        if all(seccomp.harmless(seccomp.chain_action(programs, seccomp.seccomp_data(nr, args)))
               for nr, *args in calls):
            return thread.tid
    return proc.pid if proc.seccomp_suspended else None


def _mlockall_flags(proc: FrozenProcess, threads: list[Thread], nodes: tuple[SeccompFilter, ...]
                    ) -> int | None:
    """MCL_FUTURE (| MCL_ONFAULT) when mlockall() made every new mapping locked, 0
    when not, None when the probe mapping could not be made.

    The probe (an injected mmap, undone by the injector should ckpt die, and
    its munmap) costs about 0.6 ms of frozen time, so it runs only when some
    memory is locked (VmLck > 0).  With nothing locked, MCL_FUTURE can only be
    in effect if the process has not mapped anything since (no malloc arena,
    no thread stack, no heap growth); that case is taken as "not in effect"."""
    before = procfs.read_status(proc.pid).vm_lck
    if not before:
        return 0
    probe = (SYS_mmap, 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    tid = _unharmed_thread(proc, threads, nodes, probe, (SYS_munmap, 0, PAGE))
    if tid is None:
        return None
    # Undone (unmapped) by the injector itself should ckpt die before the munmap.
    addr = proc.inject(SYS_mmap, 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0,
                       tid=tid, undo=(SYS_munmap, PAGE))
    if -4096 < addr < 0:
        return None
    try:
        if procfs.read_status(proc.pid).vm_lck - before < PAGE:
            return 0
        with open(f"/proc/{proc.pid}/pagemap", "rb", buffering=0) as f:
            entry = struct.unpack("<Q", os.pread(f.fileno(), 8, addr // PAGE * 8))[0]
        return MCL_FUTURE | (0 if entry >> 63 else MCL_ONFAULT)
    finally:
        proc.inject_checked(SYS_munmap, addr, PAGE, tid=tid, what="munmap of the mlockall probe")


def _capture_children(pid: int) -> tuple[Child, ...]:
    """The children of every thread (read while frozen: none can be forked meanwhile).
    A restore makes one process, so any child makes the checkpoint unrestorable."""
    out = []
    for child in procfs.read_children(pid):
        try:
            comm = procfs.read_comm(child)
        except OSError:
            comm = "?"  # exited (and reaped) since the listing
        out.append(Child(pid=child, comm=comm))
    return tuple(out)


def _capture_timers(proc: FrozenProcess, scratch: int) -> dict[str, Any]:
    """The interval timers (injected getitimer) and every POSIX timer: what
    /proc/PID/timers says of it (id, clock, signal, value, notify target) and its
    time left and interval (injected timer_gettime; for an interval timer whose
    signal is queued the kernel moves the expiry past now first, as any
    timer_gettime would: kernel/time/posix-timers.c common_timer_get)."""
    for i, (name, which) in enumerate(ITIMERS):
        proc.inject_checked(SYS_getitimer, which, scratch + 32 * i, what=f"getitimer({name})")
    raw = proc.read(scratch, 32 * len(ITIMERS))
    itimers = {}
    for i, (name, _) in enumerate(ITIMERS):
        isec, iusec, vsec, vusec = _TIMESPEC_PAIR.unpack_from(raw, 32 * i)
        itimers[name] = Itimer(value_us=vsec * 1_000_000 + vusec, interval_us=isec * 1_000_000 + iusec)
    posix = []
    timers = procfs.read_timers(proc.pid)  # frozen: no thread can create or delete one meanwhile
    batch = 128                            # 32 bytes each: 4 KiB of scratch a round
    for first in range(0, len(timers), batch):
        chunk = timers[first:first + batch]
        for i, timer in enumerate(chunk):
            proc.inject_checked(SYS_timer_gettime, timer.id, scratch + 32 * i, what=f"timer_gettime({timer.id})")
        raw = proc.read(scratch, 32 * len(chunk))
        for i, timer in enumerate(chunk):
            isec, insec, vsec, vnsec = _TIMESPEC_PAIR.unpack_from(raw, 32 * i)
            posix.append(PosixTimer(id=timer.id, clock=timer.clock, notify=timer.notify, signal=timer.signal,
                                    sigval=timer.sigval, notify_pid=timer.notify_pid,
                                    value_ns=vsec * 1_000_000_000 + vnsec, interval_ns=isec * 1_000_000_000 + insec))
    return {"itimers": Itimers(**itimers), "posix_timers": tuple(sorted(posix, key=lambda t: t.id))}


def _capture_process_flags(proc: FrozenProcess, scratch: int, process: dict[str, Any]) -> dict[str, Any]:
    """oom_score_adj and loginuid (/proc); the child-subreaper and THP-disable flags
    (injected prctl: /proc shows neither exactly -- status "THP_enabled" does not tell
    PR_THP_DISABLE_EXCEPT_ADVISED); the dumpable flag of an euid-0 process, which the
    owner of /proc/PID/status cannot tell (see :func:`_dumpable`)."""
    proc.inject_checked(SYS_prctl, PR_GET_CHILD_SUBREAPER, scratch, 0, 0, 0, what="prctl(PR_GET_CHILD_SUBREAPER)")
    out: dict[str, Any] = {
        "child_subreaper": 1 if struct.unpack("<i", proc.read(scratch, 4))[0] else 0,
        "thp_disable": proc.inject_checked(SYS_prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0,
                                           what="prctl(PR_GET_THP_DISABLE)"),
        "oom_score_adj": procfs.read_oom_score_adj(proc.pid),
        "loginuid": procfs.read_loginuid(proc.pid),
        # The leader's securebits (per thread in struct cred; threads with credentials
        # of their own are refused, ckpt.restorability).
        "securebits": proc.inject_checked(SYS_prctl, PR_GET_SECUREBITS, 0, 0, 0, 0, what="prctl(PR_GET_SECUREBITS)"),
        "mdwe": _mdwe(proc),
        "ksm_merge_any": procfs.read_ksm_merge_any(proc.pid),
        "coredump_filter": procfs.read_coredump_filter(proc.pid),
    }
    if process.get("dumpable") is None:
        out["dumpable"] = proc.inject_checked(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0, what="prctl(PR_GET_DUMPABLE)")
    return out


def _mdwe(proc: FrozenProcess) -> int | None:
    """PR_GET_MDWE: the memory-deny-write-execute flags of the mm (Linux 6.3,
    kernel/sys.c prctl_get_mdwe); None on kernels without it (EINVAL)."""
    res = proc.inject(SYS_prctl, PR_GET_MDWE, 0, 0, 0, 0)
    if res == -errno.EINVAL:
        return None
    if -4096 < res < 0:
        raise OSError(-res, f"prctl(PR_GET_MDWE): {os.strerror(-res)} (in target {proc.pid})")
    return res


def _dumpable(pid: int, euid: int) -> int | None:
    """The process's dumpable flag (PR_GET_DUMPABLE), read without injecting anything:
    /proc/PID/status belongs to the process's euid when it is dumpable and to root
    otherwise (fs/proc/base.c ``task_dump_owner``).  None for an euid-0 process,
    where both read the same (:func:`_capture_process_flags` asks it instead)."""
    if euid == 0:
        return None
    try:
        return 1 if os.stat(f"/proc/{pid}/status").st_uid == euid else 0
    except OSError:
        return None

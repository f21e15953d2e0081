"""``ckpt restore``: bring a checkpointed process back to life.

The order follows CRIU's restorer (KERNEL-FACTS.md D) as proven from Python in
KERNEL-FACTS.md G, with ptrace injection instead of a restorer blob:

1. *Checks* before anything is created: the checkpoint is restorable (not a
   ``pre``), every mapped file still exists with the recorded size and mtime,
   no fd or mapping of an unsupported kind, the kernel's vDSO areas have the
   checkpoint's sizes, the pid is free (``--same-pid``).
2. *Fork* a child that resets its signal handlers, closes every fd, reopens
   the saved ones (same numbers, flags and offsets; 0-2 are ckpt's own streams
   or the files given), sets cwd, umask and rlimits, then ``PTRACE_TRACEME`` and
   stops itself.
3. *Rebuild* it by injected syscalls (:mod:`ckpt.rebuild`): trampoline page,
   rseq unregistered, vDSO moved, old layout unmapped, saved VMAs mapped, pages
   written (each from the newest checkpoint holding it, frame by frame),
   mm fields, sigactions, threads, per-thread kernel state, credentials.
4. *Release*: registers, xstate and sigmask of every thread, detach.

If any step fails, the half-built process is killed (``PTRACE_O_EXITKILL``
covers ckpt itself dying) and the error names the step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import procfs, restorability
from ._sys import ptrace as pt
from ._sys.libc import SYS_rt_sigaction, address_of, syscall, tune_malloc
from .errors import CkptError, ImageError, NotRestorable, TargetError
from .image import Checkpoint, ImageDir, VmaRecord
from .tracker import FILE_PRIVATE, FILE_SHARED

STD_STREAMS = restorability.STD_STREAMS
VDSO_AREAS = ("[vvar]", "[vvar_vclock]", "[vdso]")
# O_CREAT|O_EXCL|O_NOCTTY|O_TRUNC never make sense when reopening an fd by path.
_REOPEN_MASK = ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_CLOEXEC)


@dataclass
class RestoreResult:
    """What a restore made: the new process, and (without ``detach``) how it ended."""

    pid: int
    checkpoint: int
    threads: int
    notes: list[str] = field(default_factory=list)
    exit_status: int | None = None  # waitpid status once it ended (detach=False)

    @property
    def exit_code(self) -> int | None:
        """The process's exit code as a shell reports it (128+N for signal N)."""
        if self.exit_status is None:
            return None
        if os.WIFSIGNALED(self.exit_status):
            return 128 + os.WTERMSIG(self.exit_status)
        return os.WEXITSTATUS(self.exit_status)

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "checkpoint": self.checkpoint, "threads": self.threads,
                "notes": self.notes, "exit_code": self.exit_code}


def pick_checkpoint(images: ImageDir, checkpoint: int | None) -> Checkpoint:
    """The checkpoint to restore: the given one, or the newest restorable."""
    cps = images.checkpoints
    if checkpoint is not None:
        cp = images.checkpoint(checkpoint)
        if cp.kind == "pre":
            raise ImageError(f"checkpoint {cp.id} is a pre-dump (memory only): it cannot be restored; "
                             "restore a later full or incremental checkpoint")
        return cp
    for cp in reversed(cps):
        if cp.kind != "pre":
            return cp
    raise ImageError(f"{images.path} holds no restorable checkpoint (only pre-dumps, or none)")


def check(cp: Checkpoint, *, same_pid: bool = False,
          streams: Mapping[int, str | os.PathLike[str] | None] | None = None) -> list[str]:
    """Refuse, before creating anything, what this restore cannot reproduce.

    First the rules over what the checkpoint recorded (:mod:`ckpt.restorability`:
    fd kinds, locks, deleted files, device mappings, seccomp, children, ...),
    then what depends on this machine: mapped and open files still there, the
    vDSO layout, the pid.  ``streams`` names the files fds 0-2 get (None: ckpt's
    own).  Returns notes about what will differ (a new pid, replaced fds 0-2)."""
    state = cp.state
    verdict = restorability.assess(state, cp.vmas, kind=cp.kind)
    if not verdict.restorable:
        raise NotRestorable(f"checkpoint {cp.id}", verdict.reasons)
    for vma in cp.vmas:
        if vma.kind in (FILE_PRIVATE, FILE_SHARED):
            _check_file(vma, cp.id)
    for fd in state.get("fds", []):
        if fd["fd"] not in STD_STREAMS and fd["kind"] == "regular" and not os.path.exists(fd["target"]):
            raise ImageError(f"fd {fd['fd']}: file {fd['target']} no longer exists")
    _check_vdso(cp)
    notes = restorability.std_stream_notes(state.get("fds", []), streams)
    pid = state["target"]["pid"] if "target" in state else cp.pid
    if same_pid:
        if os.path.exists(f"/proc/{pid}"):
            raise TargetError(f"pid {pid} is in use; restore without --same-pid to get a new one")
    else:
        notes.append(f"restored with a new pid (was {pid})")
    return notes


def _check_file(vma: VmaRecord, cp_id: int) -> None:
    path = vma.path
    try:
        st = os.stat(path)
    except OSError:
        raise ImageError(f"checkpoint {cp_id}: mapped file {path} is missing") from None
    if vma.file_size is None or vma.file_mtime_ns is None:
        return  # identity not recorded (file was replaced at dump time): nothing to compare
    if st.st_size != vma.file_size or st.st_mtime_ns != vma.file_mtime_ns:
        raise ImageError(f"checkpoint {cp_id}: mapped file {path} changed since the checkpoint "
                         f"(size {vma.file_size} -> {st.st_size}, mtime differs: "
                         f"{st.st_mtime_ns != vma.file_mtime_ns})")


def vdso_layout(maps: list[Any]) -> dict[str, int]:
    """Sizes of the kernel-provided areas, by name."""
    return {m.path: m.end - m.start for m in maps if m.path in VDSO_AREAS}


def _check_vdso(cp: Checkpoint) -> None:
    saved = vdso_layout(cp.vmas)
    ours = vdso_layout(procfs.read_maps(os.getpid()))
    if saved != ours:
        raise TargetError(f"the vDSO layout of this kernel ({_fmt(ours)}) differs from the "
                          f"checkpoint's ({_fmt(saved)}); restore on the kernel it was taken on")


def _fmt(layout: dict[str, int]) -> str:
    return ", ".join(f"{k} {v // 4096} pages" for k, v in layout.items()) or "none"


def restore(images_dir: str | os.PathLike[str], checkpoint: int | None = None, *, detach: bool = True,
            same_pid: bool = False, stdin: str | os.PathLike[str] | None = None,
            stdout: str | os.PathLike[str] | None = None,
            stderr: str | os.PathLike[str] | None = None) -> RestoreResult:
    """Restore a checkpoint of ``images_dir`` into a new process.

    The new process is a child of the caller.  ``detach=True`` returns as soon
    as it runs (reap it with ``os.waitpid(result.pid, 0)`` when it ends; the
    ``ckpt restore --detach`` command simply exits and leaves it to init);
    otherwise this waits for it (forwarding SIGINT/SIGTERM/SIGHUP) and fills
    ``exit_status``.  Standard streams default to the caller's own; give paths
    to redirect them.
    """
    tune_malloc()
    images = ImageDir(images_dir)
    cp = pick_checkpoint(images, checkpoint)
    cp.chain()  # a broken chain is refused before anything is created
    notes = check(cp, same_pid=same_pid, streams={0: stdin, 1: stdout, 2: stderr})
    streams = _open_streams(stdin, stdout, stderr)
    try:
        child = _fork_child(cp, streams, same_pid)
    finally:
        for fd in streams.values():
            os.close(fd)
    from .rebuild import Rebuilder

    try:
        rebuilder = Rebuilder(child, cp)
        notes += rebuilder.run()
    except BaseException as err:
        _kill_and_reap(child)
        if isinstance(err, CkptError):
            raise
        if isinstance(err, OSError):
            raise TargetError(f"restore failed: {err}") from err
        raise
    result = RestoreResult(pid=child, checkpoint=cp.id, threads=len(cp.state["threads"]), notes=notes)
    if not detach:
        result.exit_status = wait_forwarding_signals(child)
    return result


def _open_streams(stdin: Any, stdout: Any, stderr: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    try:
        for num, path, flags in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                                 (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND)):
            if path is not None:
                out[num] = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as err:
        for fd in out.values():
            os.close(fd)
        raise CkptError(f"cannot open {err.filename}: {err.strerror}") from err
    return out


def _fork_child(cp: Checkpoint, streams: dict[int, int], same_pid: bool) -> int:
    """Fork the process-to-be; it sets up what is simplest from inside, then stops."""
    state = cp.state
    saved_pid = state["target"]["pid"] if "target" in state else cp.pid
    if same_pid:
        _set_next_pid(saved_pid)
    sys.stdout.flush()
    sys.stderr.flush()
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which becomes the target
        try:
            # Keep the error pipe out of the way of the fd numbers to restore.
            high = max([f["fd"] for f in state.get("fds", [])] + [report_w, 2]) + 1
            report_w = fcntl.fcntl(report_w, fcntl.F_DUPFD_CLOEXEC, high)
            _child_setup(state, streams, keep={report_w})
            os.close(report_w)
            pt.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
        except BaseException as err:  # noqa: BLE001 - reported to the parent, then exit
            with contextlib.suppress(OSError):
                os.write(report_w, f"{type(err).__name__}: {err}".encode(errors="replace"))
        finally:
            os._exit(125)
    os.close(report_w)
    try:
        if same_pid and pid != saved_pid:
            _kill_and_reap(pid)
            raise TargetError(f"pid {saved_pid} was taken meanwhile; could not restore with --same-pid")
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            why = os.read(report_r, 4096).decode(errors="replace") or f"status {status:#x}"
            raise TargetError(f"the restore child could not set up its files and limits: {why}")
    finally:
        os.close(report_r)
    pt.set_options(pid, pt.PTRACE_O_TRACECLONE | pt.PTRACE_O_EXITKILL)
    return pid


def _set_next_pid(pid: int) -> None:
    """Make the next fork get ``pid`` (/proc/sys/kernel/ns_last_pid, as CRIU's set_next_pid)."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
    except OSError as err:
        raise TargetError(f"--same-pid needs write access to ns_last_pid: {err.strerror}") from err


def _child_setup(state: dict[str, Any], streams: dict[int, int], keep: set[int]) -> None:  # pragma: no cover
    """In the forked child: everything a process can do to itself by plain syscalls."""
    for sig in range(1, 65):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        # Handlers inherited from Python point into memory about to be unmapped.
        with contextlib.suppress(OSError):
            syscall(SYS_rt_sigaction, sig, address_of(_SIG_DFL_ACTION), 0, 8)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    proc = state["process"]
    for name, (soft, hard) in proc.get("rlimits", {}).items():
        number = procfs.RLIMIT_NUMBERS.get(name)
        if number is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(number, (soft, hard))
    os.chdir(proc["cwd"])
    if proc.get("umask") is not None:
        os.umask(proc["umask"])
    # The standard streams: ours unless redirected; then every saved fd by path.
    keep = {0, 1, 2} | set(streams.values()) | keep
    for fd in _open_fds():
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd is gone already
                os.close(fd)
    for num, fd in streams.items():
        os.dup2(fd, num)
        os.close(fd)
    for f in state.get("fds", []):
        if f["fd"] in STD_STREAMS:
            continue
        new = os.open(f["target"], f["flags"] & _REOPEN_MASK)
        if new != f["fd"]:
            os.dup2(new, f["fd"])
            os.close(new)
        if stat.S_ISREG(f["mode"]):
            os.lseek(f["fd"], f["pos"], os.SEEK_SET)
        os.set_inheritable(f["fd"], not f["flags"] & os.O_CLOEXEC)


def _open_fds() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2)


# A zeroed struct kernel_sigaction (SIG_DFL, no flags, empty mask) for the child.
_SIG_DFL_ACTION = bytearray(32)


def _kill_and_reap(pid: int) -> None:
    """Kill a half-built child and reap it and its traced threads (only those:
    the caller of the Python API may have children of its own)."""
    try:
        tids = procfs.list_threads(pid)
    except OSError:
        tids = []
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    for tid in tids:
        if tid != pid:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(tid, pt.WALL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, pt.WALL)


def wait_forwarding_signals(pid: int) -> int:
    """Wait for ``pid``, passing SIGINT/SIGTERM/SIGHUP on to it (as ``criu restore`` does)."""
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                return status
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def iter_threads(cp: Checkpoint) -> Iterator[dict[str, Any]]:
    """Saved threads, the leader (the process's own pid) first."""
    threads = cp.state["threads"]
    leader = cp.state["target"]["pid"] if "target" in cp.state else cp.pid
    yield from sorted(threads, key=lambda t: (t["tid"] != leader, t["tid"]))


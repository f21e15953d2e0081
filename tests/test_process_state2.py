"""Process state a restore used to drop silently (issue 8, item 3, second part).

Per-thread seccomp filters, the VmFlags of the address space that a process
sets with madvise/mlock/mseal/mmap (CRIU's zdtm maps02), guard regions,
mlockall(MCL_FUTURE), an unmapped vDSO, membarrier registrations: each is
restored; seccomp strict mode and AIO contexts are refused by name.

The targets (tests/programs/seccomp_threads.c, mm_state.c, resource_target.c)
check their own state: ``check`` on stdin while they run, and on SIGUSR1 once
restored (``PASS`` or ``FAIL: what``).  Each is dumped twice while it runs (no
``--kill``), which must leave it passing its checks, then killed by a third
dump, restored, and asked to check itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt import restorability, seccomp
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt._sys import ptrace as pt
from ckpt.errors import UntrustedImage
from ckpt.image.schema import TASK_STATE_VERSION
from helpers import Target, canned_state, proc_status_field, run_ckpt, thread_ids
from test_restorable import EXIT_KILL_REFUSED, EXIT_NOT_RESTORABLE, assert_healthy, one_error_line, restore_refused
from test_trust_restore import (DROP_AND_EXEC, UserEnv, assert_refused, copy_images, edit_meta,  # noqa: F401
                                restore_detached, restored_pid, uenv, user_site, wait_running, kill_pid)
from users import User

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

SECCOMP_FILTER_FLAG_LOG = 2


# ---------------------------------------------------------------------------
# Running, dumping, restoring


def dump(target: Target, images_dir: Path, *args: str) -> dict[str, object]:
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--json", *args)
    assert result.returncode == 0, f"dump {' '.join(args)}: exit {result.returncode}, {result.stderr!r}"
    return json.loads(result.stdout)


def dump_twice_then_kill(target: Target, images_dir: Path) -> dict[str, object]:
    """Two dumps while it runs (each leaves it passing its checks), then ``--kill``."""
    assert target.cmd("check") == ""
    for kind in ("full", "incremental"):
        report = dump(target, images_dir)
        assert report["kind"] == kind and report["restorable"] is True, report
        assert target.cmd("check") == "", f"the {kind} dump disturbed the target"
    report = dump(target, images_dir, "--kill")
    assert report["killed"] is True and report["restorable"] is True, report
    target.wait_state("Z", timeout=10)
    target.kill()
    return report


def restore(images_dir: Path, tmp_path: Path) -> tuple[int, Path]:
    """Restore (API, detached: the new process is our child); its pid and stdout file."""
    out = tmp_path / "restored.out"
    result = ckpt.restore(images_dir, detach=True, stdin=os.devnull, stdout=out, stderr=tmp_path / "restored.err")
    return result.pid, out


def finish(pid: int, out: Path, timeout: float = 30) -> str:
    """SIGUSR1 to the restored target; its verdict line, once it exited 0.

    The targets wait with ``while (!go) pause();``, which loses a signal that comes
    between the test of ``go`` and ``pause()`` -- as after any ptrace stop of a
    thread in pause(), whose restart re-enters it: the signal is sent again each
    second until the target answers."""
    deadline = time.monotonic() + timeout
    next_signal = 0.0
    while True:
        if time.monotonic() >= next_signal:
            os.kill(pid, signal.SIGUSR1)
            next_signal = time.monotonic() + 1.0
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"restored pid {pid} did not finish: {out.read_text()!r}")
        time.sleep(0.02)
    text = out.read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"exit status {status:#x}: {text!r}"
    return text.splitlines()[-1] if text else ""


def run_restored(images_dir: Path, tmp_path: Path, inspect: Callable[[int], None] | None = None) -> None:
    """Restore, let ``inspect`` look at the running copy, then make it check itself."""
    pid, out = restore(images_dir, tmp_path)
    try:
        if inspect is not None:
            inspect(pid)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert finish(pid, out) == "PASS"


def seccomp_filters(pid: int) -> list[list[tuple[bytes, int]]]:
    """Every thread's filters (oldest first) with their flags, read with ptrace (threads sorted)."""
    tids = thread_ids(pid)
    for tid in tids:
        pt.seize(tid)
    try:
        for tid in tids:
            pt.interrupt(tid)
            pt.wait_tid(tid)
        # PTRACE_SECCOMP_GET_FILTER fails with EINVAL for a thread not in filter mode.
        return [[(f.insns, f.flags) for f in pt.get_seccomp_filters(tid)]
                if proc_status_field(tid, "Seccomp") == "2" else [] for tid in tids]
    finally:
        for tid in tids:
            pt.detach(tid)


# ---------------------------------------------------------------------------
# seccomp


@needs_kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["one", "two"])
def test_per_thread_seccomp_filters_come_back(mode: str, programs: dict[str, Path],
                                              spawn: Callable[..., Target], images_dir: Path,
                                              tmp_path: Path) -> None:
    """one: only thread 1 has a filter (sysinfo fails with EPERM), the leader none, so
    the process's status says "Seccomp: 0" -- the restore used to bring the thread
    back unfiltered.  two: a filter every thread shares (installed with TSYNC) plus
    one of its own in each worker, one with SECCOMP_FILTER_FLAG_LOG; once restored,
    thread 1 can TSYNC a new filter onto the leader only if the shared filter is
    one filter again, not a copy per thread (the target checks this itself)."""
    target = spawn([programs["seccomp_threads"], mode])
    before = seccomp_filters(target.pid)
    assert [len(chain) for chain in before] == ([0, 1, 0] if mode == "one" else [1, 2, 2]), before
    report = dump_twice_then_kill(target, images_dir)
    state = ckpt.ImageDir(images_dir).checkpoint(report["id"]).state
    assert [t.seccomp_mode for t in sorted(state.threads, key=lambda t: t.tid)] == \
        ([0, 2, 0] if mode == "one" else [2, 2, 2])
    # The filter every thread shares is recorded once.
    assert len(state.process.seccomp_filters) == (1 if mode == "one" else 3)

    def same_filters(pid: int) -> None:
        after = seccomp_filters(pid)
        assert after == before, "the restored threads' filters differ from the original's"
        if mode == "two":
            assert after[2][1][1] == SECCOMP_FILTER_FLAG_LOG
        assert proc_status_field(pid, "Seccomp") == ("0" if mode == "one" else "2")

    run_restored(images_dir, tmp_path, same_filters)


@needs_kernel
@pytest.mark.timeout(180)
def test_filters_that_kill_at_what_a_dump_injects_do_not_kill_the_target(programs: dict[str, Path],
                                                                           spawn: Callable[..., Target],
                                                                           images_dir: Path, tmp_path: Path) -> None:
    """Every thread's filter kills the process at membarrier(2), getitimer(2) and prctl(2),
    which a dump injects into every target: the filters are suspended while it is frozen
    (PTRACE_O_SUSPEND_SECCOMP, as CRIU's dump), so two dumps leave it running and checking
    itself, the membarrier registrations are recorded (the dump used to skip them and call
    the checkpoint unrestorable; a filter on getitimer or prctl killed the target), and the
    restored process has filter K again and passes its checks."""
    target = spawn([programs["seccomp_threads"], "deny"])
    report = dump_twice_then_kill(target, images_dir)
    state = ckpt.ImageDir(images_dir).checkpoint(report["id"]).state
    assert state.mm.membarrier is not None and not state.mm.membarrier_unreadable
    assert all(t.seccomp_mode == 2 for t in state.threads)

    def killed_at_getitimer(pid: int) -> None:
        assert proc_status_field(pid, "Seccomp") == "2"

    run_restored(images_dir, tmp_path, killed_at_getitimer)


@needs_kernel
@pytest.mark.timeout(60)
def test_seccomp_strict_mode_is_refused_before_anything_is_injected(programs: dict[str, Path],
                                                                    spawn: Callable[..., Target],
                                                                    images_dir: Path) -> None:
    """Strict mode kills a thread at any syscall but read/write/exit/sigreturn: the
    dump used to kill the target with its first injection."""
    target = spawn([programs["seccomp_threads"], "strict"])
    assert target.cmd("check") == ""
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
    assert result.returncode != 0
    assert re.search(rf"thread {target.pid} of pid {target.pid} runs in seccomp strict mode",
                     one_error_line(result)), result.stderr
    assert target.alive() and target.cmd("check") == "", "the refused dump hurt the target"
    assert not images_dir.exists() or not list(images_dir.glob("0*")), "a checkpoint was written"


@needs_kernel
@pytest.mark.timeout(120)
def test_seccomp_filters_a_dump_can_neither_read_nor_suspend_are_refused_by_name(
        uenv: UserEnv, programs: dict[str, Path], spawn: Callable[..., Target]) -> None:
    """A user's own dump can neither read filters (PTRACE_SECCOMP_GET_FILTER) nor suspend
    them (PTRACE_O_SUSPEND_SECCOMP): both need CAP_SYS_ADMIN.  A syscall it injects could
    kill the target, so it refuses by name before injecting anything, writes nothing, and
    the target runs on unharmed."""
    binary = uenv.bin / "seccomp_threads"
    binary.write_bytes(programs["seccomp_threads"].read_bytes())
    binary.chmod(0o755)
    target = spawn(uenv.argv("seccomp_threads", "one"))
    images = uenv.home / "images"
    result = uenv.ckpt("dump", "--pid", target.pid, "-D", images, "--kill", "--json")
    assert result.returncode != 0 and result.returncode != EXIT_KILL_REFUSED, result.stderr
    assert re.search(r"thread \d+ of pid \d+ runs under seccomp filters that ckpt can neither read nor suspend "
                     r"\(ckpt lacks CAP_SYS_ADMIN; PTRACE_O_SUSPEND_SECCOMP needs it\)", one_error_line(result)), \
        result.stderr
    assert not any(images.glob("0*")), "a refused dump wrote a checkpoint"
    assert target.cmd("check") == ""


@needs_kernel
@pytest.mark.timeout(180)
def test_untrusted_images_cannot_add_a_filter_without_no_new_privs(programs: dict[str, Path],
                                                                   spawn: Callable[..., Target],
                                                                   other_user: User, tmp_path: Path) -> None:
    """Images the user owns restore as the user: a filtered thread must have
    no_new_privs, as the kernel requires of a user installing a filter (one that
    fakes success could mislead a set-user-ID program).  Unedited, they restore
    with the filter; with thread 1's no_new_privs cleared in meta.ckpt, refused."""
    home = Path(tempfile.mkdtemp(prefix="ckpt-seccomp-home-", dir="/tmp"))   # reachable by the user
    try:
        binary = home / "seccomp_threads"
        binary.write_bytes(programs["seccomp_threads"].read_bytes())
        binary.chmod(0o755)
        other_user.owns(home)
        target = spawn([sys.executable, "-c", DROP_AND_EXEC, str(other_user.uid), str(other_user.gid),
                        str(home), str(binary), "one"])
        _restore_untrusted(target, other_user, tmp_path)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _restore_untrusted(target: Target, other_user: User, tmp_path: Path) -> None:
    root_images = tmp_path / "root-images"
    dump(target, root_images, "--kill")
    target.kill()

    images = copy_images(root_images, tmp_path / "user-images", other_user)
    result = restore_detached(images, tmp_path)
    pid = restored_pid(result)
    try:
        wait_running(pid)
        assert [int(x) for x in proc_status_field(pid, "Uid").split()] == [other_user.uid] * 4
        tids = thread_ids(pid)
        assert [proc_status_field(tid, "Seccomp_filters") for tid in tids] == ["0", "1", "0"]
        assert [proc_status_field(tid, "NoNewPrivs") for tid in tids] == ["0", "1", "0"]
    finally:
        kill_pid(pid)

    def clear_nnp(body: dict[str, object]) -> None:
        for thread in body["state"]["threads"]:  # type: ignore[index]
            thread["no_new_privs"] = 0
    edited = copy_images(root_images, tmp_path / "edited", None)
    edit_meta(edited / "000001" / "meta.ckpt", clear_nnp)
    edited = copy_images(edited, tmp_path / "edited-user", other_user)
    assert_refused(restore_detached(edited, tmp_path, name="edited"), UntrustedImage.exit_code,
                   r"seccomp filters without no_new_privs on thread \d+")


# ---------------------------------------------------------------------------
# The address space: VmFlags, guard regions, mlockall, vDSO, membarrier


@needs_kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["flags", "future", "futureonfault", "novdso", "vdsoonly", "membarrier"])
def test_address_space_state_comes_back(mode: str, programs: dict[str, Path], spawn: Callable[..., Target],
                                        images_dir: Path, tmp_path: Path) -> None:
    """flags: madvise hints, mlock and mlock2(MLOCK_ONFAULT), guard regions, mseal and
    MAP_DROPPABLE, each visible in smaps after the restore (the target checks its
    VmFlags, Locked, guard pages and content).  future*: mlockall(MCL_FUTURE), with
    and without MCL_ONFAULT.  novdso / vdsoonly: a process that unmapped its vDSO
    (and vvar) comes back without them.  membarrier: its registrations."""
    target = spawn([programs["mm_state"], mode])
    report = dump_twice_then_kill(target, images_dir)
    mm = ckpt.ImageDir(images_dir).checkpoint(report["id"]).state.mm
    if mode == "flags":
        guards = mm.guard
        assert len(guards) == 16, "one guard region of two pages recorded"
    elif mode.startswith("future"):
        assert mm.mlockall == (2 | 4 if mode == "futureonfault" else 2)
    elif mode == "membarrier":
        assert mm.membarrier == (1 << 2) | (1 << 4) | (1 << 8)
    run_restored(images_dir, tmp_path)


# ---------------------------------------------------------------------------
# AIO contexts: refused by name


@needs_kernel
@pytest.mark.timeout(120)
def test_an_aio_context_is_refused_by_name(programs: dict[str, Path], spawn: Callable[..., Target],
                                           images_dir: Path, tmp_path: Path) -> None:
    """The ring io_setup() maps ("/[aio] (deleted)", shared) used to come back as
    plain shared memory, the context itself gone: io_getevents then fails with
    EINVAL.  Now it is refused at dump (not killed) and at restore."""
    target = spawn([programs["resource_target"], "aio"])
    assert target.readline().split()[:2] == ["holding", "aio"]
    assert target.cmd("check") == ""
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == EXIT_KILL_REFUSED, result.stderr
    reason = r"the mapping at 0x[0-9a-f]+-0x[0-9a-f]+ is the ring of an AIO context \(io_setup\)"
    assert re.search(reason, one_error_line(result)), result.stderr
    assert_healthy(target, "aio", tmp_path)
    target.kill()
    refused = restore_refused(images_dir, tmp_path)
    assert refused.returncode == EXIT_NOT_RESTORABLE, refused.stderr
    assert re.search(reason, one_error_line(refused)), refused.stderr


# ---------------------------------------------------------------------------
# The rules, on canned records


def _filter(insns: list[tuple[int, int]], flags: int = 0, prev: int | None = None) -> dict[str, object]:
    return {"insns": b"".join(struct.pack("<HBBI", code, 0, 0, k) for code, k in insns), "flags": flags,
            "prev": prev}


ALLOW = (0x06, 0x7FFF0000)            # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
NOTIFY = (0x06, 0x7FC00000)           # SECCOMP_RET_USER_NOTIF
RET_A = (0x16, 0)                     # BPF_RET | BPF_A


def _state(threads: list[dict[str, object]], filters: list[dict[str, object]], **mm: object) -> dict[str, object]:
    # A state of this version, whose mm flags were read unless a case says otherwise.
    mm = {"guard": b"", "mlockall": 0, "membarrier": 0, **mm}
    return {"version": TASK_STATE_VERSION, "threads": threads, "target": {"pid": 10}, "mm": mm,
            "process": {"pid": 10, "creds": {"seccomp": 0}, "seccomp_filters": filters,
                        "seccomp_unreadable": "PTRACE_SECCOMP_GET_FILTER: Permission denied"}, "fds": []}


def _thread(tid: int, mode: int = 0, index: int | None = None) -> dict[str, object]:
    return {"tid": tid, "seccomp_mode": mode, "seccomp_filter": index, "no_new_privs": 1}


def _prog(*insns: tuple[int, int, int, int]) -> bytes:
    return b"".join(struct.pack("<HBBI", code, jt, jf, k) for code, jt, jf, k in insns)


# ld [4] (arch); jeq x86_64 ? next : allow; ld [0] (nr); jeq 99 ? errno EPERM : allow
EPERM_SYSINFO = _prog((0x20, 0, 0, 4), (0x15, 1, 0, 0xC000003E), (0x06, 0, 0, 0x7FFF0000), (0x20, 0, 0, 0),
                      (0x15, 0, 1, 99), (0x06, 0, 0, 0x50001), (0x06, 0, 0, 0x7FFF0000))
# ld [16] (args[0] low word); tax; txa; and #0xff; st M[3]; ld M[3]; jgt 7 ? kill process : trap
ARG_BELOW_8 = _prog((0x20, 0, 0, 16), (0x07, 0, 0, 0), (0x87, 0, 0, 0), (0x54, 0, 0, 0xFF), (0x02, 0, 0, 3),
                    (0x60, 0, 0, 3), (0x25, 0, 1, 7), (0x06, 0, 0, 0x80000000), (0x06, 0, 0, 0x30000))


@pytest.mark.parametrize("chain,nr,args,action", [
    ([EPERM_SYSINFO], 99, (), 0x50001),
    ([EPERM_SYSINFO], 324, (), 0x7FFF0000),
    ([ARG_BELOW_8], 1, (0x107,), 0x30000),              # 0x107 & 0xff = 7: not above 7, TRAP
    ([ARG_BELOW_8], 1, (8,), 0x80000000),
    ([EPERM_SYSINFO, ARG_BELOW_8], 99, (0,), 0x30000),  # the lowest action wins: TRAP < ERRNO
    ([EPERM_SYSINFO, ARG_BELOW_8], 99, (9,), 0x80000000),   # KILL_PROCESS is negative as s32
    ([_prog((0x20, 0, 0, 0))], 1, (), 0),                # off the end: KILL_THREAD, as the kernel
])
def test_seccomp_filters_run_as_the_kernel_runs_them(chain: list[bytes], nr: int, args: tuple[int, ...],
                                                     action: int) -> None:
    got = seccomp.chain_action(chain, seccomp.seccomp_data(nr, args))
    assert got == action, hex(got)
    assert seccomp.harmless(got) == (action & 0xFFFF0000 in (0x7FFF0000, 0x50000))


class _Vma:
    def __init__(self, start: int, flags: tuple[str, ...] = (), path: str = "", kind: str = "anon") -> None:
        self.start, self.end, self.kind, self.path, self.flags = start, start + 0x100000, kind, path, flags


@pytest.mark.parametrize("state,vmas,expected", [
    (_state([_thread(10), _thread(11, 2, 1)], [_filter([ALLOW]), _filter([ALLOW], prev=0)]), [], []),
    (_state([_thread(10, 1)], []), [], [r"^thread 10 runs in seccomp strict mode"]),
    (_state([_thread(10), _thread(11, 2), _thread(12, 2)], []), [],
     [r"^threads 11, 12 run under seccomp filters the dump could not read \(PTRACE_SECCOMP_GET_FILTER"]),
    (_state([_thread(10, 2, 1), _thread(11, 2, 0)], [_filter([NOTIFY]), _filter([ALLOW], prev=0)]), [],
     [r"^a seccomp filter of threads 10, 11 hands syscalls to a user-space supervisor"]),
    (_state([_thread(10, 2, 0)], [_filter([RET_A])]), [], [r"^a seccomp filter of thread 10 returns an action"]),
    (_state([_thread(10, 2, 0)], [_filter([ALLOW], flags=1 << 3)]), [], [r"flags 0x8 that ckpt does not know"]),
    (_state([_thread(10)], []), [_Vma(0x1000, ("lo",))], []),   # no RLIMIT_MEMLOCK recorded: unlimited
    ({**_state([_thread(10)], []), "process": {"pid": 10, "creds": {"cap_eff": 0},
                                                 "rlimits": {"RLIMIT_MEMLOCK": [65536, 65536]}}},
     [_Vma(0x1000, ("lo",))], [r"^1024 KiB of its memory is locked \(mlock\), more than its RLIMIT_MEMLOCK \(64 KiB\)"]),
    ({**_state([_thread(10)], []), "process": {"pid": 10, "creds": {"cap_eff": 1 << 14},
                                                 "rlimits": {"RLIMIT_MEMLOCK": [65536, 65536]}}},
     [_Vma(0x1000, ("lo",))], []),   # CAP_IPC_LOCK: no limit
    (_state([_thread(10)], [], guard=None), [_Vma(0x1000, ("gu",))], [r"guard regions .* cannot report"]),
    (_state([_thread(10)], [], membarrier=None, membarrier_unreadable="membarrier(...): Operation not permitted"),
     [], [r"^its membarrier registrations could not be read \(membarrier\(\.\.\.\): Operation not permitted\)"]),
    (_state([_thread(10)], [], mlockall=None), [], [r"mlockall\(MCL_FUTURE\)"]),
    (_state([_thread(10)], []), [_Vma(0x1000, path="/[aio] (deleted)", kind="shmem")],
     [r"^the mapping at 0x1000-0x101000 is the ring of an AIO context"]),
])
def test_assess_process_state(state: dict[str, object], vmas: list[_Vma], expected: list[str]) -> None:
    verdict = restorability.assess(canned_state(state), vmas)
    assert len(verdict.reasons) == len(expected), verdict.reasons
    for pattern, reason in zip(expected, verdict.reasons):
        assert re.search(pattern, reason), (pattern, reason)

"""Helpers shared by the ckpt test suite: live targets, /proc readers, checks.

Nothing here imports ckpt at module level: the target programs must be testable
before the package exists, and ckpt must first see the ``CKPT_RUN_DIR`` that
``conftest.py`` sets up for the session.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
HUGE_PAGE = 2 * MIB

# Kinds of checkpoint VMA records whose content is not compared with the target.
UNCOMPARED_KINDS = frozenset({"special", "device"})
# Live mappings a checkpoint need not describe as ordinary memory (never dumped).
SPECIAL_MAPPINGS = frozenset({"[vsyscall]", "[vvar]", "[vvar_vclock]", "[vdso]"})
COMPARE_CHUNK = 16 * MIB

# ---------------------------------------------------------------------------
# /proc readers


def proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc/PID/stat ("R", "S", "T", "t", "Z", ...)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name is in parentheses and may itself contain ") ".
    return stat[stat.rindex(")") + 2]


def proc_status_field(pid: int, field: str) -> str:
    """The value of one ``Field:`` line of /proc/PID/status, stripped."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == field:
                return value.strip()
    raise KeyError(f"/proc/{pid}/status has no {field!r} line")


def tracer_pid(pid: int) -> int:
    """The pid tracing ``pid``, 0 when it is not ptraced."""
    return int(proc_status_field(pid, "TracerPid"))


def fd_table(pid: int) -> dict[int, str]:
    """The open fds of ``pid`` and what each points at (readlink of /proc/PID/fd/N)."""
    table = {}
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            table[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except FileNotFoundError:
            continue  # closed while listing
    return table


def thread_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


@dataclass(frozen=True)
class LiveMapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    path: str


def live_mappings(pid: int) -> list[LiveMapping]:
    """The mappings of ``pid`` as /proc/PID/maps lists them."""
    mappings = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].rstrip("\n") if len(fields) > 5 else ""
            mappings.append(LiveMapping(start, end, fields[1], path))
    return mappings


def anon_huge_bytes(pid: int, address: int) -> int:
    """AnonHugePages of the VMA of ``pid`` containing ``address`` (from /proc/PID/smaps)."""
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1]) * 1024
    raise LookupError(f"no VMA of pid {pid} contains {address:#x}")


def read_target_memory(pid: int, start: int, length: int) -> bytes:
    """Read ``length`` bytes at ``start`` of ``pid`` through /proc/PID/mem.

    /proc/PID/mem uses FOLL_FORCE, so it also reads PROT_NONE and read-only
    mappings.  A short read (an unmapped or unbacked page) raises OSError(EIO).
    """
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        parts = []
        done = 0
        while done < length:
            data = os.pread(fd, length - done, start + done)
            if not data:
                raise OSError(errno.EIO, f"short read of pid {pid} memory at {start + done:#x}")
            parts.append(data)
            done += len(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a, the hash memtarget's ``sum`` answers (keep inputs small: pure Python)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---------------------------------------------------------------------------
# Whole-process snapshots (registers read with plain ptrace, independently of ckpt)


def snapshot_registers(pid: int) -> dict[int, tuple[dict[str, int], bytes, int]]:
    """(regs, xstate, sigmask) of every thread, read under a short ptrace stop."""
    from ckpt._sys import ptrace as pt

    out = {}
    for tid in thread_ids(pid):
        pt.seize(tid)
        try:
            pt.interrupt(tid)
            _, status = pt.wait_tid(tid)
            assert os.WIFSTOPPED(status), status
            out[tid] = (pt.regs_to_dict(pt.get_regs(tid)), pt.get_regset(tid, pt.NT_X86_XSTATE),
                        pt.get_sigmask(tid))
        finally:
            pt.detach(tid)
    return out


def rseq_areas(pid: int) -> list[tuple[int, int]]:
    """The rseq areas of all threads: the kernel rewrites cpu_id there whenever a
    thread migrates, so they legitimately change while the target runs."""
    from ckpt._sys import ptrace as pt

    out = []
    for tid in thread_ids(pid):
        pt.seize(tid)
        try:
            pt.interrupt(tid)
            pt.wait_tid(tid)
            conf = pt.get_rseq_configuration(tid)
            if conf.pointer:
                out.append((conf.pointer, conf.pointer + max(conf.size, 32)))
        finally:
            pt.detach(tid)
    return out


def memory_image(pid: int) -> tuple[str, dict[int, bytes]]:
    """/proc/PID/maps and the content of every readable mapping (the rseq areas in
    ``rseq_areas_cache[pid]`` zeroed)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    skip = ("[vvar]", "[vvar_vclock]", "[vsyscall]")
    content = {}
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps.splitlines():
            fields = line.split()
            if fields[1][0] != "r" or (len(fields) > 5 and fields[5] in skip):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mem.seek(start)
            data = bytearray(mem.read(end - start))
            for s, e in rseq_areas_cache.get(pid, []):
                if start <= s < end:
                    data[s - start : e - start] = bytes(e - s)
            content[start] = bytes(data)
    return maps, content


rseq_areas_cache: dict[int, list[tuple[int, int]]] = {}


# ---------------------------------------------------------------------------
# Targets


class TargetCommandError(Exception):
    """A target answered ``err ...``, or did not answer."""


class Target:
    """A target program started with pipes on stdin and stdout.

    A reader thread moves stdout lines into a queue, so every read can have a
    timeout.  Nothing here calls ``waitpid`` except :meth:`kill`: while ckpt
    ptraces the target from this very process, a stray ``waitpid`` would steal
    its ptrace-stop notifications.
    """

    def __init__(self, argv: Sequence[str | os.PathLike[str]], name: str | None = None) -> None:
        self.argv = [os.fspath(a) for a in argv]
        script = self.argv[1] if self.argv[0] == sys.executable and len(self.argv) > 1 else self.argv[0]
        self.name = name or Path(script).name
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=False,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read_lines, name=f"{self.name}-{self.pid}-stdout", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Target {self.name} pid={self.pid}>"

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass  # the pipe was closed by kill()
        finally:
            self._lines.put(None)

    def readline(self, timeout: float = 20) -> str:
        """The next line the target printed, without the newline."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TargetCommandError(
                f"{self.name} (pid {self.pid}) printed nothing within {timeout} s "
                f"(state {self._state_or_gone()})"
            ) from None
        if line is None:
            self._lines.put(None)  # keep reporting EOF
            raise TargetCommandError(f"{self.name} (pid {self.pid}) closed its stdout (exited?)")
        return line

    def drain(self) -> list[str]:
        """The lines already printed and not yet read (does not wait)."""
        lines = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return lines
            if line is None:
                self._lines.put(None)
                return lines
            lines.append(line)

    def wait_ready(self, timeout: float = 60) -> Target:
        """Wait for the ``ready PID`` line and check the pid."""
        line = self.readline(timeout)
        words = line.split()
        if len(words) != 2 or words[0] != "ready" or int(words[1]) != self.pid:
            raise TargetCommandError(f"{self.name}: expected 'ready {self.pid}', got {line!r}")
        return self

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise TargetCommandError(f"{self.name} (pid {self.pid}) is gone; cannot send {line!r}") from None

    def cmd(self, line: str, timeout: float = 20) -> str:
        """Send one command and return the text after ``ok``; raise on ``err`` or timeout."""
        self.send(line)
        answer = self.readline(timeout)
        if answer == "ok":
            return ""
        if answer.startswith("ok "):
            return answer[3:]
        raise TargetCommandError(f"{self.name} (pid {self.pid}): {line!r} -> {answer!r}")

    def state(self) -> str:
        return proc_state(self.pid)

    def _state_or_gone(self) -> str:
        try:
            return self.state()
        except (FileNotFoundError, ProcessLookupError):
            return "gone"

    def wait_state(self, states: str, timeout: float = 10) -> str:
        """Wait until the target's state letter is one of ``states``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} (pid {self.pid}) stayed in state {state}, wanted {states}")
            time.sleep(0.005)

    def stop(self) -> None:
        """SIGSTOP the target and wait for the group stop (state T)."""
        os.kill(self.pid, signal.SIGSTOP)
        self.wait_state("T")

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[Target]:
        """Keep the target SIGSTOPped for the duration of the block."""
        self.stop()
        try:
            yield self
        finally:
            with contextlib.suppress(ProcessLookupError):
                self.cont()

    def alive(self) -> bool:
        """True while the process exists and is not a zombie (no waitpid involved)."""
        try:
            return self.state() not in ("Z", "X")
        except FileNotFoundError:
            return False

    def kill(self) -> None:
        """SIGCONT, SIGKILL and reap; safe to call more than once."""
        if self.proc.returncode is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        self._reader.join(timeout=5)


class MemTarget(Target):
    """memtarget with one method per command (addresses are ints)."""

    def map(self, size: int, kind: str = "anon", path: str | os.PathLike[str] | None = None,
            thp: str | None = None) -> int:
        words = ["map", str(size), kind]
        if path is not None:
            words.append(os.fspath(path))
        if thp is not None:
            words.append(thp)
        return int(self.cmd(" ".join(words)), 16)

    def fill(self, addr: int, length: int, seed: int) -> None:
        self.cmd(f"fill {addr:#x} {length} {seed}")

    def memset(self, addr: int, length: int, byte: int) -> None:
        self.cmd(f"set {addr:#x} {length} {byte}")

    def touch(self, addr: int, length: int) -> None:
        self.cmd(f"touch {addr:#x} {length}")

    def dontneed(self, addr: int, length: int) -> None:
        self.cmd(f"dontneed {addr:#x} {length}")

    def unmap(self, addr: int, length: int) -> None:
        self.cmd(f"unmap {addr:#x} {length}")

    def mremap(self, addr: int, old_length: int, new_length: int, move: bool = False) -> int:
        suffix = " move" if move else ""
        return int(self.cmd(f"mremap {addr:#x} {old_length} {new_length}{suffix}"), 16)

    def mapfixed(self, addr: int, length: int) -> None:
        self.cmd(f"mapfixed {addr:#x} {length}")

    def protect(self, addr: int, length: int, mode: str) -> None:
        self.cmd(f"protect {addr:#x} {length} {mode}")

    def sum(self, addr: int, length: int) -> int:
        return int(self.cmd(f"sum {addr:#x} {length}", timeout=60), 16)

    def openfile(self, path: str | os.PathLike[str], offset: int) -> int:
        return int(self.cmd(f"openfile {os.fspath(path)} {offset}"))


# ---------------------------------------------------------------------------
# Checking a checkpoint against the live target


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _uncovered(ranges: list[tuple[int, int]], cover: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` not inside the union of ``cover``."""
    cover = _merge(cover)
    missing = []
    for start, end in _merge(ranges):
        pos = start
        for c_start, c_end in cover:
            if c_end <= pos or c_start >= end:
                continue
            if c_start > pos:
                missing.append((pos, c_start))
            pos = max(pos, c_end)
            if pos >= end:
                break
        if pos < end:
            missing.append((pos, end))
    return missing


def _fmt_ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"{s:#x}-{e:#x}" for s, e in ranges[:8]) + (" ..." if len(ranges) > 8 else "")


def vma_ranges(checkpoint: Any) -> list[tuple[int, int]]:
    """The address ranges of a checkpoint's VMA records, merged."""
    return _merge([(v.start, v.end) for v in checkpoint.vmas])


def covers(checkpoint: Any, start: int, end: int) -> bool:
    """True when the checkpoint's VMA records cover [start, end) entirely."""
    return not _uncovered([(start, end)], [(v.start, v.end) for v in checkpoint.vmas])


def overlaps(checkpoint: Any, start: int, end: int) -> bool:
    """True when any of the checkpoint's VMA records overlaps [start, end)."""
    return any(v.start < end and start < v.end for v in checkpoint.vmas)


def assert_layout_matches(checkpoint: Any, pid: int) -> None:
    """The checkpoint's VMA records describe exactly the live target's ordinary mappings."""
    live = [(m.start, m.end) for m in live_mappings(pid) if m.path not in SPECIAL_MAPPINGS]
    recorded = [(v.start, v.end) for v in checkpoint.vmas if v.kind not in UNCOMPARED_KINDS]
    missing = _uncovered(live, [(v.start, v.end) for v in checkpoint.vmas])
    assert not missing, (
        f"checkpoint {checkpoint.id} lacks VMAs the frozen target {pid} has: {_fmt_ranges(missing)}"
    )
    extra = _uncovered(recorded, live)
    assert not extra, (
        f"checkpoint {checkpoint.id} records VMAs the frozen target {pid} does not have: "
        f"{_fmt_ranges(extra)}"
    )


def _first_different_page(live: bytes, image: bytes) -> tuple[int, int]:
    """(offset of the first differing page, number of differing pages)."""
    first = -1
    count = 0
    view_live, view_image = memoryview(live), memoryview(image)
    for off in range(0, len(live), PAGE):
        if view_live[off:off + PAGE] != view_image[off:off + PAGE]:
            count += 1
            if first < 0:
                first = off
    return first, count


def assert_image_matches(checkpoint: Any, pid: int) -> None:
    """Every ordinary VMA of ``checkpoint`` reads the same as the frozen target's memory.

    Compares ``checkpoint.read_memory`` with /proc/PID/mem in chunks of at most
    16 MiB for every VMA record except kinds "special" and "device", after
    checking that the VMA records and the live mappings agree.  The target must
    be stopped (dumped with after="stop", or inside ``Target.stopped()``), and
    ``checkpoint`` must be the one taken at that stop.  A mismatch names the
    first differing page, the VMA and the count of differing pages in the chunk;
    it never prints the bytes.
    """
    state = proc_state(pid)
    assert state in ("T", "t"), (
        f"assert_image_matches needs a frozen target, but pid {pid} is in state {state}"
    )
    assert_layout_matches(checkpoint, pid)
    # The kernel owns the threads' rseq areas and rewrites cpu_id there whenever a
    # thread migrates and returns to user mode — also after the dump, before the
    # comparison: those bytes are not compared.
    kernel_owned = [(t.rseq.pointer, t.rseq.pointer + max(t.rseq.size, 32))
                    for t in checkpoint.state.threads or () if t.rseq and t.rseq.pointer]
    for vma in checkpoint.vmas:
        if vma.kind in UNCOMPARED_KINDS:
            continue
        for chunk in range(vma.start, vma.end, COMPARE_CHUNK):
            length = min(COMPARE_CHUNK, vma.end - chunk)
            where = (
                f"VMA {vma.start:#x}-{vma.end:#x} {vma.perms} kind={vma.kind} "
                f"path={vma.path!r} of checkpoint {checkpoint.id}"
            )
            try:
                live = read_target_memory(pid, chunk, length)
            except OSError as err:
                raise AssertionError(f"cannot read the live target at {chunk:#x} ({where}): {err}") from err
            image = checkpoint.read_memory(chunk, length)
            assert len(image) == length, (
                f"read_memory({chunk:#x}, {length}) returned {len(image)} bytes ({where})"
            )
            live, image = _mask(live, chunk, kernel_owned), _mask(image, chunk, kernel_owned)
            if live != image:
                offset, count = _first_different_page(live, image)
                page = bytes(image[offset:offset + PAGE])
                raise AssertionError(
                    f"page {chunk + offset:#x} differs from the live target ({where}); "
                    f"{count} page(s) differ in the chunk {chunk:#x}+{length:#x}; "
                    f"the image page is {'all zeros' if not any(page) else 'not zero'}"
                )


def _mask(data: bytes, start: int, areas: list[tuple[int, int]]) -> bytes:
    """``data`` (the memory at ``start``) with the bytes of ``areas`` zeroed."""
    end = start + len(data)
    hits = [(max(s, start), min(e, end)) for s, e in areas if s < end and e > start]
    if not hits:
        return data
    out = bytearray(data)
    for s, e in hits:
        out[s - start:e - start] = bytes(e - s)
    return bytes(out)


# ---------------------------------------------------------------------------
# The ckpt command line


def ckpt_env() -> dict[str, str]:
    """Environment for ckpt subprocesses: this checkout first, the session's CKPT_RUN_DIR."""
    env = dict(os.environ)
    assert "CKPT_RUN_DIR" in env, "conftest.py sets CKPT_RUN_DIR for the session"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def ckpt_argv(*args: str | os.PathLike[str] | int) -> list[str]:
    return [sys.executable, "-m", "ckpt", *(os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args)]


def run_ckpt(*args: str | os.PathLike[str] | int, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ckpt ARGS`` and capture its text output."""
    return subprocess.run(
        ckpt_argv(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ckpt_env(),
        cwd=REPO_ROOT,
    )


# ---------------------------------------------------------------------------
# Kernel features


def strict_features() -> bool:
    """True where a missing kernel feature must fail the run (CI's machine has them all)."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("CKPT_STRICT_FEATURES") == "1"


def require_feature(name: str, available: bool, reason: str) -> None:
    """Skip the test when the kernel lacks ``name``; fail instead under CI or CKPT_STRICT_FEATURES=1."""
    if available:
        return
    message = f"kernel feature {name} unavailable: {reason}"
    if strict_features():
        pytest.fail(message + " (CI / CKPT_STRICT_FEATURES=1: missing features fail)", pytrace=False)
    pytest.skip(message)


# Constants from include/uapi/linux/userfaultfd.h and fs.h (see KERNEL-FACTS.md).
_NR_USERFAULTFD = 323
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_UFFDIO_API = 0xC018AA3F
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_PAGEMAP_SCAN = 0xC0606610
_PAGE_IS_WRITTEN = 1 << 1


def probe_kernel_features() -> dict[str, tuple[bool, str]]:
    """Probe, independently of ckpt, what it needs: name -> (available, reason if not).

    The probes run in the test process on throwaway objects, so that a bug in
    ckpt's own ``check`` can never turn its tests into skips.
    """
    features: dict[str, tuple[bool, str]] = {}
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(_NR_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY)
    if fd < 0:
        err = ctypes.get_errno()
        features["userfaultfd"] = (False, f"userfaultfd(UFFD_USER_MODE_ONLY) failed: {os.strerror(err)}")
        features["uffd-wp-async"] = (False, "no userfaultfd")
    else:
        features["userfaultfd"] = (True, "")
        try:
            wanted = _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED
            api = bytearray(struct.pack("=QQQ", _UFFD_API, wanted, 0))
            fcntl.ioctl(fd, _UFFDIO_API, api, True)
            got = struct.unpack("=QQQ", api)[1]
            ok = got & wanted == wanted
            features["uffd-wp-async"] = (ok, "" if ok else f"UFFDIO_API returned features {got:#x}")
        except OSError as err:
            features["uffd-wp-async"] = (False, f"UFFDIO_API(UFFD_FEATURE_WP_ASYNC): {err.strerror}")
        finally:
            os.close(fd)

    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        # struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len, max_pages,
        # category_inverted, category_mask, category_anyof_mask, return_mask
        arg = bytearray(struct.pack("=12Q", 96, 0, 0, 0, 0, 0, 0, 0, 0,
                                    _PAGE_IS_WRITTEN, 0, _PAGE_IS_WRITTEN))
        fcntl.ioctl(pagemap, _PAGEMAP_SCAN, arg, True)
        features["PAGEMAP_SCAN"] = (True, "")
    except OSError as err:
        features["PAGEMAP_SCAN"] = (False, f"ioctl(PAGEMAP_SCAN) on /proc/self/pagemap: {err.strerror}")
    finally:
        os.close(pagemap)

    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        features["THP"] = ("[never]" not in thp, f"transparent_hugepage/enabled is {thp.strip()!r}")
    except OSError as err:
        features["THP"] = (False, f"no /sys/kernel/mm/transparent_hugepage: {err.strerror}")
    return features


# -- canned task states ----------------------------------------------------------------------


def canned_state(raw: dict[str, Any]) -> Any:
    """A :class:`ckpt.image.schema.State` from a partial raw state map, for tests of the rules
    on canned records: each record names only the fields the rule reads; every required field
    it leaves out gets a zero value of its type (a real image must have them all)."""
    from ckpt.image import schema

    return _filled(schema.TASK_STATE.record_for(raw), raw)


def canned_record(record: Any, raw: dict[str, Any]) -> Any:
    """The instance of ``record`` (a schema Record with a class) from a partial raw map,
    filled as :func:`canned_state` fills."""
    return _filled(record, raw)


def _filled(kind: Any, value: Any) -> Any:
    from ckpt.image import schema

    if isinstance(kind, schema.Chosen):
        return _filled(kind.record_for(value), value)
    if isinstance(kind, schema.Record):
        if kind.cls is None:
            return kind.build(value)
        if isinstance(value, kind.cls):
            return value
        fields = {key: _filled(spec.type, value[key]) for key, spec in kind.fields.items() if key in value}
        fields.update({key: _zero(spec.type) for key, spec in kind.fields.items()
                       if spec.required and key not in value})
        return kind.cls(**fields)
    if isinstance(kind, schema.Nullable):
        return None if value is None else _filled(kind.inner, value)
    if isinstance(kind, schema.ListOf):
        return tuple(_filled(kind.item, item) for item in value)
    if isinstance(kind, schema.Fixed):
        return tuple(_filled(k, item) for k, item in zip(kind.items, value))
    if isinstance(kind, schema.MapOf):
        return {k: _filled(kind.value, v) for k, v in value.items()}
    return kind.build(value)


def _zero(kind: Any) -> Any:
    from ckpt.image import schema

    if isinstance(kind, schema.Int):
        return max(kind.lo, 0)
    if isinstance(kind, (schema.Str, schema.Name)):
        return ""
    if isinstance(kind, schema.Bin):
        return bytes(kind.min_len)
    if isinstance(kind, schema.OneOf):
        return kind.values[0]
    if isinstance(kind, schema.Fixed):
        return tuple(_zero(k) for k in kind.items)
    if isinstance(kind, (schema.Record, schema.Chosen)):
        return _filled(kind, {})
    return {"Bool": False, "ListOf": (), "MapOf": {}, "Nullable": None}.get(type(kind).__name__)

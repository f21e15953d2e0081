"""Tracking kept alive between one-shot ``ckpt dump`` runs (ckpt/tracking.py).

Every dump here is a separate ``python -m ckpt`` process, so the only thing
that carries dirty tracking from one dump to the next is the holder process
and its registry record in ``$CKPT_RUN_DIR`` (private to the test session,
see conftest.py).  The tests check what the user sees (``kind``, ``tracking``,
``notes`` of ``dump --json``; ``track list``), what the kernel sees (the
holder's fds, the target's VmFlags, TracerPid, fd table) and that whatever
happened to the holder, the next checkpoint is still correct.

An exited holder is reparented to init, which may reap it only seconds later:
"gone" below means no such process, a zombie, or a pid now naming another
process — in each case it has closed its userfaultfd.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import (
    MIB,
    PAGE,
    MemTarget,
    TargetCommandError,
    assert_image_matches,
    ckpt_argv,
    ckpt_env,
    fd_table,
    fnv1a64,
    proc_state,
    read_target_memory,
    run_ckpt,
    tracer_pid,
)

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

# Pages a quiescent memtarget writes on its own between two dumps (stack,
# stdio buffers), as in test_dirty.py.
SLACK = 64
UFFD_LINK = "anon_inode:[userfaultfd]"


# ---------------------------------------------------------------------------
# helpers


def ckpt_json(*args: Any, timeout: float = 120) -> dict[str, Any]:
    """Run ``python -m ckpt ARGS --json``, expect exit 0, return the parsed JSON."""
    result = run_ckpt(*args, "--json", timeout=timeout)
    assert result.returncode == 0, (
        f"ckpt {' '.join(map(str, args))} exited {result.returncode}; stderr: {result.stderr!r}"
    )
    return json.loads(result.stdout)


def dump_json(target: MemTarget, images_dir: Path, *extra: str) -> dict[str, Any]:
    """One CLI dump; the target is checked to be left untraced (and stopped iff asked)."""
    report = ckpt_json("dump", "--pid", target.pid, "-D", images_dir, *extra)
    if "--leave-stopped" in extra:
        target.wait_state("T")
    assert tracer_pid(target.pid) == 0, f"ckpt dump left pid {target.pid} traced"
    return report


def registry_path(pid: int) -> Path:
    return Path(os.environ["CKPT_RUN_DIR"]) / f"{pid}.json"


def tracked() -> dict[int, dict[str, Any]]:
    """``ckpt track list --json`` as target pid -> record."""
    data = ckpt_json("track", "list")
    return {r["target_pid"]: r for r in data["tracked"]}


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22


def gone(pid: int, started: int) -> bool:
    """The process ``pid`` (started at ``started``) has exited (zombie, reaped, or pid reused)."""
    try:
        return proc_state(pid) in ("Z", "X") or start_time(pid) != started
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_for(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.01)


def wait_holder_gone(holder_pid: int, started: int, why: str) -> None:
    wait_for(lambda: gone(holder_pid, started), f"holder {holder_pid} exits ({why})")


def uffd_fds(pid: int) -> list[int]:
    return sorted(fd for fd, link in fd_table(pid).items() if link == UFFD_LINK)


def wp_vmas(pid: int) -> list[str]:
    """The smaps headers of ``pid``'s VMAs whose VmFlags include ``uw`` (uffd-wp registered)."""
    out = []
    header = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("VmFlags:"):
                if "uw" in line.split()[1:]:
                    out.append(header)
            elif not line[:1].isupper():
                header = line.strip()
    return out


def small_target(memtarget: MemTarget, size: int = 4 * MIB, seed: int = 1) -> int:
    addr = memtarget.map(size, thp="nohuge")
    memtarget.fill(addr, size, seed)
    return addr


def assert_full_because_lost(report: dict[str, Any], why: str) -> None:
    assert report["kind"] == "full", f"{why}: expected a full dump, got {report['kind']!r}"
    assert report["tracking"].startswith("lost"), (
        f"{why}: tracking should say it was lost, got {report['tracking']!r}"
    )
    assert any("full" in note for note in report["notes"]), (
        f"{why}: the notes should say that the dump is full, got {report['notes']!r}"
    )


def head(images_dir: Path) -> Any:
    cp = ckpt.ImageDir(images_dir).head
    assert cp is not None
    return cp


# ---------------------------------------------------------------------------
# tests


def test_two_cli_dumps_continue_tracking_through_the_holder(memtarget: MemTarget, images_dir: Path) -> None:
    size = 4 * MIB
    addr = small_target(memtarget, size)
    fds = fd_table(memtarget.pid)

    first = dump_json(memtarget, images_dir)
    assert (first["kind"], first["tracking"]) == ("full", "new")
    assert first["notes"] == []
    assert first["pages_stored"] >= size // PAGE
    assert fd_table(memtarget.pid) == fds, "the first dump changed the target's fd table"

    record = tracked().get(memtarget.pid)
    assert record is not None, f"track list does not show pid {memtarget.pid}"
    assert record["checkpoint_id"] == first["id"]
    holder = record["holder_pid"]
    assert holder != memtarget.pid
    assert os.path.exists(f"/proc/{holder}"), f"holder {holder} listed by track list does not exist"
    assert proc_state(holder) not in ("Z", "X")
    assert uffd_fds(holder) == [record["holder_fd"]], (
        f"holder {holder} should hold exactly one userfaultfd, as fd {record['holder_fd']}: "
        f"{fd_table(holder)}"
    )
    assert wp_vmas(memtarget.pid), "no VMA of the tracked target is registered for uffd-wp (no 'uw')"

    written = [addr + 3 * PAGE, addr + 100 * PAGE, addr + 101 * PAGE, addr + size - PAGE]
    for i, page in enumerate(written):
        memtarget.memset(page, PAGE, 0xA0 + i)
    second = dump_json(memtarget, images_dir)
    assert (second["kind"], second["tracking"]) == ("incremental", "continued")
    assert second["parent"] == first["id"]
    assert len(written) <= second["pages_stored"] <= len(written) + SLACK, (
        f"{second['pages_stored']} pages stored after {len(written)} pages were written"
    )
    assert fd_table(memtarget.pid) == fds, "the second dump changed the target's fd table"

    cp = head(images_dir)
    assert cp.id == second["id"]
    for i, page in enumerate(written):
        assert cp.read_memory(page, PAGE) == bytes([0xA0 + i]) * PAGE
    assert cp.read_memory(addr + 4 * PAGE, PAGE) == read_target_memory(memtarget.pid, addr + 4 * PAGE, PAGE)

    record = tracked()[memtarget.pid]
    assert record["holder_pid"] == holder, "the second dump should hand the uffd back to the same holder"
    assert record["checkpoint_id"] == second["id"]
    assert uffd_fds(holder) == [record["holder_fd"]]


def test_track_stop_ends_holder_and_disarms(memtarget: MemTarget, images_dir: Path) -> None:
    addr = small_target(memtarget)
    dump_json(memtarget, images_dir)
    record = tracked()[memtarget.pid]
    holder, holder_start = record["holder_pid"], record["holder_start_time"]
    assert wp_vmas(memtarget.pid), "the tracked target has no VMA with 'uw' in VmFlags"

    result = run_ckpt("track", "stop", memtarget.pid)
    assert result.returncode == 0, result.stderr
    wait_holder_gone(holder, holder_start, "ckpt track stop")
    assert memtarget.pid not in tracked()
    assert not registry_path(memtarget.pid).exists()
    armed = wp_vmas(memtarget.pid)
    assert not armed, f"after the holder exited the kernel should have disarmed every VMA: {armed[:4]}"

    memtarget.memset(addr + 7 * PAGE, PAGE, 0x5C)
    report = dump_json(memtarget, images_dir, "--leave-stopped")
    assert_full_because_lost(report, "after ckpt track stop")
    assert head(images_dir).read_memory(addr + 7 * PAGE, PAGE) == b"\x5c" * PAGE
    assert_image_matches(head(images_dir), memtarget.pid)
    memtarget.cont()

    # Stopping what is not tracked is an error (one line), not a crash.
    assert run_ckpt("track", "stop", memtarget.pid).returncode == 0  # tracked again by the last dump
    result = run_ckpt("track", "stop", memtarget.pid)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_killed_holder_makes_next_dump_full_and_correct(memtarget: MemTarget, images_dir: Path) -> None:
    addr = small_target(memtarget)
    dump_json(memtarget, images_dir)
    record = tracked()[memtarget.pid]
    holder = record["holder_pid"]
    os.kill(holder, signal.SIGKILL)
    wait_holder_gone(holder, record["holder_start_time"], "SIGKILL")

    # Written while nothing tracks the target: only a full dump can see it.
    memtarget.memset(addr + 9 * PAGE, 2 * PAGE, 0x3D)
    report = dump_json(memtarget, images_dir, "--leave-stopped")
    assert_full_because_lost(report, "after the holder was killed")
    cp = head(images_dir)
    assert cp.kind == "full" and cp.parent == 1
    assert cp.read_memory(addr + 9 * PAGE, 2 * PAGE) == b"\x3d" * (2 * PAGE)
    assert_image_matches(cp, memtarget.pid)
    memtarget.cont()

    record = tracked()[memtarget.pid]
    assert record["holder_pid"] != holder, "a new holder should keep tracking after the full dump"
    assert record["checkpoint_id"] == cp.id


def test_holder_exits_with_the_target(memtarget: MemTarget, images_dir: Path) -> None:
    small_target(memtarget, MIB)
    dump_json(memtarget, images_dir)
    record = tracked()[memtarget.pid]
    assert registry_path(memtarget.pid).exists()

    memtarget.kill()  # SIGKILL and reap
    wait_holder_gone(record["holder_pid"], record["holder_start_time"], "its target exited")
    wait_for(lambda: not registry_path(memtarget.pid).exists(),
             f"the holder removes {registry_path(memtarget.pid)}", timeout=5)
    assert memtarget.pid not in tracked()


def _interrupt_one_dump(target: MemTarget, images_dir: Path) -> subprocess.CompletedProcess[str]:
    """Start a CLI dump, SIGTERM it once it froze the target (or after a while); return its result."""
    proc = subprocess.Popen(ckpt_argv("dump", "--pid", target.pid, "-D", images_dir, "--json"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ckpt_env())
    try:
        deadline = time.monotonic() + 2.0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if tracer_pid(target.pid) != 0:
                    break
            except FileNotFoundError:
                break
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_failed_dumps_and_tracking_trust(memtarget: MemTarget, images_dir: Path) -> None:
    small = small_target(memtarget, MIB)
    big_size = 512 * MIB
    big = memtarget.map(big_size, thp="nohuge")  # untouched: cheap to dump for now
    fds = fd_table(memtarget.pid)
    dump_json(memtarget, images_dir)

    # A dump refused because DIR is locked must not disturb tracking.
    memtarget.memset(small + 5 * PAGE, PAGE, 0x77)
    with open(images_dir / ".lock", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_ckpt("dump", "--pid", memtarget.pid, "-D", images_dir, "--json")
    assert result.returncode == errors.ImageDirLocked.exit_code, (result.returncode, result.stderr)
    assert tracked()[memtarget.pid]["checkpoint_id"] == 1, "a refused dump changed the tracking record"
    second = dump_json(memtarget, images_dir)
    assert (second["kind"], second["tracking"]) == ("incremental", "continued"), (
        "a dump refused for a locked DIR disturbed tracking"
    )
    assert head(images_dir).read_memory(small + 5 * PAGE, PAGE) == b"\x77" * PAGE

    # A dump interrupted midway: 512 MiB written since the last checkpoint keep it busy.
    attempts = []
    for seed in (21, 22, 23):
        memtarget.cmd(f"fill {big:#x} {big_size} {seed}", timeout=60)
        result = _interrupt_one_dump(memtarget, images_dir)
        attempts.append(result.returncode)
        if result.returncode != 0:
            break
    assert attempts[-1] == 128 + signal.SIGTERM == 143, (
        f"SIGTERM during a dump: expected exit 143 (or 0 when it finished first), got {attempts}; "
        f"stderr: {result.stderr!r}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    try:
        state = memtarget.wait_state("SRZ", timeout=2)
    except TimeoutError:
        pytest.fail(f"an interrupted dump left pid {memtarget.pid} in state {proc_state(memtarget.pid)}")
    # The target must still run its own code correctly: it answers a command.
    try:
        if state == "Z":
            raise TargetCommandError("zombie")
        answer = memtarget.sum(small + 5 * PAGE, PAGE)
    except TargetCommandError:
        died = memtarget.proc.wait(timeout=10)
        raise AssertionError(
            f"ckpt bug: the target died after a dump interrupted by SIGTERM (wait status {died}"
            f"{', SIGTRAP' if died == -signal.SIGTRAP else ''}): the SIGTERM arrived while an injected "
            f"syscall was being single-stepped, and thaw could not restore/detach the running thread; "
            f"ckpt said {result.stderr.strip()!r}"
        ) from None
    assert tracer_pid(memtarget.pid) == 0, "an interrupted dump left the target traced"
    assert answer == fnv1a64(b"\x77" * PAGE)
    assert fd_table(memtarget.pid) == fds, "an interrupted dump changed the target's fd table"

    memtarget.memset(small + 6 * PAGE, PAGE, 0x78)
    report = dump_json(memtarget, images_dir, "--leave-stopped")
    if report["tracking"] != "continued":
        assert_full_because_lost(report, "after an interrupted dump")
    else:
        assert report["kind"] == "incremental"
    cp = head(images_dir)
    assert cp.read_memory(small + 6 * PAGE, PAGE) == b"\x78" * PAGE
    assert_image_matches(cp, memtarget.pid)
    assert run_ckpt("verify", images_dir).returncode == 0


def test_every_count_prints_a_chain(memtarget: MemTarget, images_dir: Path) -> None:
    small_target(memtarget, 2 * MIB)
    result = run_ckpt("dump", "--pid", memtarget.pid, "-D", images_dir,
                      "--every", "200ms", "--count", "3", "--json")
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    reports, text, pos = [], result.stdout, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        obj, pos = decoder.raw_decode(text, pos)
        reports.append(obj)
    assert [r["kind"] for r in reports] == ["full", "incremental", "incremental"], result.stdout
    assert [r["tracking"] for r in reports] == ["new", "continued", "continued"]
    assert tracer_pid(memtarget.pid) == 0 and proc_state(memtarget.pid) in ("S", "R")

    chain = ckpt_json("inspect", images_dir)["checkpoints"]
    assert [c["id"] for c in chain] == [r["id"] for r in reports]
    assert [c["parent"] for c in chain] == [None, chain[0]["id"], chain[1]["id"]]
    assert [c["kind"] for c in chain] == ["full", "incremental", "incremental"]
    assert tracked()[memtarget.pid]["checkpoint_id"] == chain[-1]["id"]


def test_dump_kill_is_final(memtarget: MemTarget, images_dir: Path) -> None:
    addr = small_target(memtarget, 2 * MIB)
    dump_json(memtarget, images_dir)
    record = tracked()[memtarget.pid]
    memtarget.memset(addr, PAGE, 0x11)

    report = ckpt_json("dump", "--pid", memtarget.pid, "-D", images_dir, "--kill")
    assert report["kind"] == "incremental"
    # Killed, not left stopped: a zombie until we reap it.
    try:
        memtarget.wait_state("Z", timeout=5)
    except TimeoutError:
        pytest.fail(f"dump --kill left pid {memtarget.pid} in state {proc_state(memtarget.pid)}")
    memtarget.kill()
    assert memtarget.proc.returncode == -signal.SIGKILL

    verify = run_ckpt("verify", images_dir)
    assert verify.returncode == 0, verify.stderr
    assert head(images_dir).read_memory(addr, PAGE) == b"\x11" * PAGE
    wait_holder_gone(record["holder_pid"], record["holder_start_time"], "dump --kill")
    assert not registry_path(memtarget.pid).exists(), "dump --kill left a tracking record"
    assert memtarget.pid not in tracked()


def test_pre_dump_then_dump(memtarget: MemTarget, images_dir: Path) -> None:
    addr = small_target(memtarget)
    pre = ckpt_json("pre-dump", "--pid", memtarget.pid, "-D", images_dir)
    assert pre["kind"] == "pre"
    assert pre["pages_stored"] >= 4 * MIB // PAGE
    assert tracer_pid(memtarget.pid) == 0

    memtarget.memset(addr + 2 * PAGE, PAGE, 0x42)
    final = dump_json(memtarget, images_dir, "--leave-stopped")
    assert (final["kind"], final["tracking"]) == ("incremental", "continued")
    assert final["parent"] == pre["id"]
    assert final["pages_stored"] <= 1 + SLACK

    first, last = ckpt.ImageDir(images_dir).checkpoints
    assert not first.state.threads, "a pre-dump must not hold thread state"
    assert last.state.threads, "the final dump holds no thread state"
    assert last.read_memory(addr + 2 * PAGE, PAGE) == b"\x42" * PAGE
    assert_image_matches(last, memtarget.pid)

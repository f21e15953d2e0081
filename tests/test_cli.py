"""The ``ckpt`` command-line surface: help, check, inspect, usage errors, modes, the Python API.

Every command runs as ``python -m ckpt`` in a subprocess (``run_ckpt``), with
this session's private ``CKPT_RUN_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import (
    MIB,
    PAGE,
    REPO_ROOT,
    MemTarget,
    ckpt_argv,
    ckpt_env,
    fd_table,
    proc_state,
    read_target_memory,
    run_ckpt,
    tracer_pid,
)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

INSPECT_KEYS = {"id", "parent", "kind", "time", "pid", "pages_present", "pages_stored",
                "bytes_raw", "bytes_compressed", "vmas"}


def mentions(text: str, option: str) -> bool:
    """``option`` appears in ``text`` as a word of its own (``--json`` is not ``--jsonx``)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args[3:]))} exited {result.returncode}; stderr: {result.stderr!r}"
    )
    return result


def dump(target: MemTarget, images_dir: Path) -> dict[str, Any]:
    return json.loads(ok(run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--json")).stdout)


# ---------------------------------------------------------------------------
# --help


HELP = {
    (): ["dump", "pre-dump", "restore", "inspect", "verify", "check", "track", "demo", "Exit codes", "130",
         "143", "12", "--version", "-v", "--log-file"],
    ("dump",): ["--pid", "-t", "-D", "--kill", "--leave-stopped", "--leave-running", "--shell-job", "--every",
                "--count", "--json", "--compress", "--quiet", "-v", "--log-file"],
    ("pre-dump",): ["--pid", "-D", "--json", "--compress", "--quiet"],
    ("restore",): ["-D", "--checkpoint", "--detach", "--json"],
    ("inspect",): ["DIR", "-D", "--json"],
    ("verify",): ["DIR", "-D", "--quiet"],
    ("check",): ["--json", "--feature"],
    ("track",): ["list", "stop"],
    ("track", "list"): ["--json"],
    ("track", "stop"): ["PID", "--all"],
    ("demo",): ["-D"],
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "ckpt")
def test_help(command: tuple[str, ...]) -> None:
    result = ok(run_ckpt(*command, "--help", timeout=30))
    assert result.stderr == ""
    assert result.stdout.startswith(f"usage: ckpt {' '.join(command)}".rstrip())
    missing = [word for word in HELP[command] if not mentions(result.stdout, word)]
    assert not missing, f"ckpt {' '.join(command)} --help does not mention {missing}:\n{result.stdout}"
    if command == ("pre-dump",):
        # Freezing options belong to dump only.
        for option in ("--kill", "--leave-stopped", "--every", "--count"):
            assert not mentions(result.stdout, option), f"pre-dump --help offers {option}"


def test_help_is_fast() -> None:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        ok(run_ckpt("--help", timeout=30))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    assert median < 0.5, f"python -m ckpt --help took {median:.3f} s (median of {[round(t, 3) for t in times]})"


# ---------------------------------------------------------------------------
# check


@needs_kernel
def test_check_lists_the_required_features() -> None:
    result = ok(run_ckpt("check", timeout=60))
    lines = result.stdout.splitlines()
    for name in ("userfaultfd", "UFFD_FEATURE_WP_ASYNC", "PAGEMAP_SCAN"):
        pattern = re.compile(rf"^\s*ok\s+{re.escape(name)}\s+required\b")
        assert any(pattern.match(line) for line in lines), (
            f"ckpt check does not list {name} as available:\n{result.stdout}"
        )
    assert not any(line.split()[:1] == ["MISSING"] for line in lines), result.stdout

    data = json.loads(ok(run_ckpt("check", "--json", timeout=60)).stdout)
    assert data["ok"] is True
    assert data["kernel"] == os.uname().release
    by_name = {f["name"]: f for f in data["features"]}
    for name in ("userfaultfd", "UFFD_FEATURE_WP_ASYNC", "PAGEMAP_SCAN"):
        assert by_name[name]["available"] is True and by_name[name]["required"] is True, by_name.get(name)
    assert all(f["available"] for f in data["features"] if f["required"])


# ---------------------------------------------------------------------------
# inspect


@needs_kernel
def test_inspect_table_and_json(memtarget: MemTarget, images_dir: Path) -> None:
    addr = memtarget.map(2 * MIB, thp="nohuge")
    memtarget.fill(addr, 2 * MIB, 3)
    first = dump(memtarget, images_dir)
    memtarget.memset(addr, 3 * PAGE, 0x31)
    second = dump(memtarget, images_dir)

    table = ok(run_ckpt("inspect", images_dir)).stdout.splitlines()
    assert len(table) == 3, "expected a header and two rows:\n" + "\n".join(table)
    assert table[0].split() == ["ID", "PARENT", "KIND", "TIME", "PID", "PRESENT", "STORED", "RAW",
                                "COMPRESSED", "VMAS"]
    for line, report, parent in ((table[1], first, "-"), (table[2], second, str(first["id"]))):
        cells = line.split()  # TIME is "date time": two words
        assert cells[:3] == [str(report["id"]), parent, report["kind"]], line
        assert cells[5:8] == [str(memtarget.pid), str(report["pages_present"]), str(report["pages_stored"])], line
    assert [line.split()[2] for line in table[1:]] == ["full", "incremental"]

    data = json.loads(ok(run_ckpt("inspect", images_dir, "--json")).stdout)
    rows = data["checkpoints"]
    assert len(rows) == 2
    for row, report in zip(rows, (first, second)):
        missing = INSPECT_KEYS - set(row)
        assert not missing, f"inspect --json lacks {sorted(missing)}: {row}"
        for key in INSPECT_KEYS:
            assert row[key] == report[key], f"{key}: inspect says {row[key]!r}, dump said {report[key]!r}"
    assert [r["kind"] for r in rows] == ["full", "incremental"]
    assert [r["parent"] for r in rows] == [None, rows[0]["id"]]
    assert all(r["pid"] == memtarget.pid for r in rows)
    assert rows[0]["time"] <= rows[1]["time"] <= time.time()
    assert rows[1]["pages_stored"] < rows[0]["pages_stored"]
    assert all(r["bytes_compressed"] > 0 and r["vmas"] > 0 for r in rows)


# ---------------------------------------------------------------------------
# usage errors


USAGE_ERRORS = {
    "dump-without-pid": ("dump", "-D", "{dir}"),
    "count-without-every": ("dump", "--pid", "{pid}", "-D", "{dir}", "--count", "3"),
    "every-not-a-duration": ("dump", "--pid", "{pid}", "-D", "{dir}", "--every", "notaduration"),
}


@needs_kernel
@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors(case: str, memtarget: MemTarget, images_dir: Path) -> None:
    fds = fd_table(memtarget.pid)
    args = [a.format(pid=memtarget.pid, dir=images_dir) for a in USAGE_ERRORS[case]]
    result = run_ckpt(*args, timeout=30)
    output = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, output
    assert "Traceback" not in result.stderr, output
    assert result.stdout == "", output
    assert not images_dir.exists(), f"a usage error created {images_dir}"
    assert proc_state(memtarget.pid) not in ("T", "t") and tracer_pid(memtarget.pid) == 0
    assert fd_table(memtarget.pid) == fds
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (
        f"a usage error must be one line on stderr (README: 'Every error is one line on stderr'), "
        f"got {len(lines)} lines; {output}"
    )


# ---------------------------------------------------------------------------
# permissions


@needs_kernel
def test_modes_under_umask_000(memtarget: MemTarget, images_dir: Path) -> None:
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 4)
    command = " ".join(ckpt_argv("dump", "--pid", memtarget.pid, "-D", images_dir, "--quiet"))
    for i in range(2):
        memtarget.memset(addr, PAGE, i)
        result = subprocess.run(["sh", "-c", f"umask 000; exec {command}"], capture_output=True, text=True,
                                timeout=120, env=ckpt_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
    assert len(ckpt.ImageDir(images_dir).checkpoints) == 2

    wrong = []
    mode = stat.S_IMODE(images_dir.stat().st_mode)
    if mode != 0o700:
        wrong.append(f"{images_dir}: {mode:04o}")
    files = 0
    for root, dirs, names in os.walk(images_dir):
        for name in dirs:
            mode = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
            if mode != 0o700:
                wrong.append(f"{os.path.join(root, name)}/: {mode:04o}")
        for name in names:
            files += 1
            mode = stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode)
            if mode != 0o600:
                wrong.append(f"{os.path.join(root, name)}: {mode:04o}")
    assert files >= 4
    assert not wrong, "under umask 000, images must be 0700 dirs and 0600 files: " + ", ".join(wrong)

    record = Path(os.environ["CKPT_RUN_DIR"]) / f"{memtarget.pid}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600, f"tracking record {record} is not 0600"


# ---------------------------------------------------------------------------
# the Python API


@needs_kernel
def test_read_memory_unaligned_across_pages(memtarget: MemTarget, images_dir: Path) -> None:
    addr = memtarget.map(16 * PAGE, thp="nohuge")
    memtarget.fill(addr, 16 * PAGE, 5)
    start, length = addr + 3 * PAGE - 123, 300  # 123 bytes of page 2, 177 of page 3
    before = read_target_memory(memtarget.pid, start, length)
    dump(memtarget, images_dir)

    memtarget.memset(addr + 3 * PAGE + 10, 50, 0xEE)  # the second of the two pages only
    after = read_target_memory(memtarget.pid, start, length)
    assert after != before and after[:133] == before[:133]
    dump(memtarget, images_dir)

    first, second = ckpt.ImageDir(images_dir).checkpoints
    assert (first.kind, second.kind) == ("full", "incremental")
    assert first.read_memory(start, length) == before
    assert second.read_memory(start, length) == after
    assert second.read_memory(start + 1, 1) == before[1:2]
    assert len(second.read_memory(start, 1)) == 1

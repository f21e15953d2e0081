"""The command line as a CRIU or Linux user expects it (issue 10, items 4-6).

``--version``; ``-v``/``--log-file`` traces of a dump, restore and verify with
each step's duration; a ``--help`` that imports nothing heavy; no abbreviated
long options; ``-D DIR`` on every sub-command that takes an images directory;
CRIU's option names; progress with rate and time left on a terminal (a real
pty) and nothing when stderr is not one; ``dump --every --json`` as JSON
Lines; exit codes: a full disk is a storage error (12), SIGTERM 143.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from ckpt import errors
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import (
    MIB,
    PAGE,
    REPO_ROOT,
    MemTarget,
    Target,
    ckpt_argv,
    ckpt_env,
    fd_table,
    proc_state,
    run_ckpt,
    tracer_pid,
)
from test_trust_files import tmpfs

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args[3:]))} exited {result.returncode}; stderr: {result.stderr!r}"
    )
    return result


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a usage error (exit 2, nothing on stdout, no traceback)."""
    output = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, output
    assert result.stdout == "" and "Traceback" not in result.stderr, output
    assert len(result.stderr.splitlines()) == 1, output
    return result.stderr


def assert_running(target: Target, fds: dict[int, str]) -> None:
    """The target runs on, untraced, with its fds as they were."""
    assert proc_state(target.pid) not in ("T", "t", "Z"), proc_state(target.pid)
    assert tracer_pid(target.pid) == 0
    assert fd_table(target.pid) == fds


# ---------------------------------------------------------------------------
# --version, --help's imports, abbreviations


def test_version() -> None:
    result = ok(run_ckpt("--version", timeout=30))
    assert result.stdout == f"ckpt {ckpt.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", ckpt.__version__)


# Nothing a help text needs: the image codec, ctypes bindings, the dump and restore engines,
# nor the standard modules only some sub-commands use (json, dataclasses, subprocess, logging).
HEAVY = ("zstandard", "msgpack", "ctypes", "json", "dataclasses", "subprocess", "tempfile", "logging",
         "ckpt.dump", "ckpt.restore", "ckpt.image", "ckpt.live", "ckpt._sys", "ckpt.log")


@pytest.mark.parametrize("command", [(), ("dump",), ("restore",), ("verify",), ("check",)],
                         ids=lambda c: " ".join(c) or "ckpt")
def test_help_imports_nothing_heavy(command: tuple[str, ...]) -> None:
    """What ``--help`` imports, not how long it takes (time depends on the machine; the
    import set is what made it slow: 150-170 ms, of which ~60 ms is Python itself)."""
    code = ("import sys\nfrom ckpt.cli import main\n"
            f"try:\n    main({[*command, '--help']!r})\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                            env=ckpt_env(), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ckpt"), result.stdout
    # Less what this Python loads before any ckpt code runs (site hooks of installed packages).
    baseline = subprocess.run([sys.executable, "-c", "import sys; print('\\n'.join(sys.modules))"],
                              capture_output=True, text=True, timeout=30, env=ckpt_env(), cwd=REPO_ROOT)
    loaded = set(result.stderr.split()) - set(baseline.stdout.split())
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"ckpt {' '.join(command)} --help imports {heavy}"


def test_no_parser_takes_abbreviations() -> None:
    from ckpt.cli import _parser, _sub_parsers

    parser = _parser()
    lax = [p.prog for p in [parser, *_sub_parsers(parser)] if p.allow_abbrev]
    assert not lax, f"these parsers accept abbreviated long options: {lax}"


@needs_kernel
@pytest.mark.parametrize("option", ["--kil", "--leave-stop", "--ever=1s", "--no-tr"])
def test_an_abbreviated_option_is_a_usage_error(option: str, memtarget: MemTarget, images_dir: Path) -> None:
    """``--kil`` ran as ``--kill`` and killed the target."""
    fds = fd_table(memtarget.pid)
    stderr = usage_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", images_dir, option, timeout=30))
    assert "unrecognized arguments" in stderr, stderr
    assert not images_dir.exists()
    assert_running(memtarget, fds)
    assert memtarget.alive()


# ---------------------------------------------------------------------------
# -D everywhere, CRIU's names


@needs_kernel
def test_inspect_and_verify_take_D(memtarget: MemTarget, images_dir: Path, tmp_path: Path) -> None:
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 7)
    ok(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "--quiet"))
    for command in ("inspect", "verify"):
        positional = ok(run_ckpt(command, images_dir, "--json"))
        option = ok(run_ckpt(command, "-D", images_dir, "--json"))
        long_option = ok(run_ckpt(command, "--images-dir", images_dir, "--json"))
        assert json.loads(option.stdout) == json.loads(positional.stdout) == json.loads(long_option.stdout)
        ok(run_ckpt(command, images_dir, "-D", images_dir))   # the same twice is fine
        other = tmp_path / "other"
        assert "two images directories" in usage_error(run_ckpt(command, images_dir, "-D", other))
        assert "images directory is missing" in usage_error(run_ckpt(command))
        assert not other.exists()


@needs_kernel
def test_criu_option_names(memtarget: MemTarget, images_dir: Path) -> None:
    fds = fd_table(memtarget.pid)
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 8)
    fds = fd_table(memtarget.pid)
    # criu dump -t PID -D DIR --shell-job --leave-running
    report = json.loads(ok(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "--shell-job",
                                    "--leave-running", "--json")).stdout)
    assert report["killed"] is False
    assert_running(memtarget, fds)
    assert memtarget.sum(addr, PAGE) >= 0   # it runs its own code
    usage_error(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "--leave-running", "--kill"))
    assert memtarget.alive()
    help_text = ok(run_ckpt("dump", "--help")).stdout
    assert "--leave-running" in help_text and "--shell-job" in help_text and "-t" in help_text


@needs_kernel
def test_check_feature() -> None:
    """``criu check --feature NAME``: CRIU's names where ckpt makes the same check, and ckpt's own."""
    for name in ("uffd", "mem_dirty_track", "PAGEMAP_SCAN", "userfaultfd"):
        result = ok(run_ckpt("check", "--feature", name, timeout=60))
        assert result.stdout.splitlines()[-1] == "supported", result.stdout
    data = json.loads(ok(run_ckpt("check", "--feature", "mem_dirty_track", "--json", timeout=60)).stdout)
    assert data["ok"] is True
    assert {f["name"] for f in data["features"]} == {"UFFD_FEATURE_WP_ASYNC", "PAGEMAP_SCAN"}
    # soft-dirty is optional and not built here (README): named, it is what decides the exit code.
    soft = run_ckpt("check", "--feature", "soft-dirty", timeout=60)
    assert soft.returncode in (0, 5), soft.stderr
    if soft.returncode == 5:
        assert soft.stdout.splitlines()[-1] == "not supported: soft-dirty", soft.stdout
    assert "no such feature" in usage_error(run_ckpt("check", "--feature", "nonsense", timeout=60))
    names = ok(run_ckpt("check", "--feature", "list", timeout=60)).stdout.splitlines()
    assert "PAGEMAP_SCAN" in names and "uffd (CRIU's name)" in names


# ---------------------------------------------------------------------------
# -v and --log-file


DUMP_STEPS = ("lock and tracking", "freeze", "task state", "final round and copy", "thaw",
              "compress and write", "fsync and commit", "holder handover")
RESTORE_STEPS = ("plan", "create", "map the saved VMAs", "write the pages", "restore credentials",
                 "load registers", "release")
STEP_LINE = re.compile(r"^\(\s*\d+\.\d{4}\) (\w[\w-]*): (.+?): (\d+\.\d) ms")


def steps(text: str, operation: str) -> dict[str, float]:
    """The steps an -v trace shows for ``operation``, with their durations in ms."""
    out = {}
    for line in text.splitlines():
        m = STEP_LINE.match(line)
        if m and m.group(1) == operation:
            out[m.group(2)] = float(m.group(3))
    return out


@needs_kernel
def test_verbose_and_log_file_trace_dump_restore_verify(spawn: Callable[..., Target], images_dir: Path,
                                                        tmp_path: Path) -> None:
    target = spawn([sys.executable, "-c", "import os, time\nb = bytearray(8 << 20)\n"
                    "print('ready', os.getpid(), flush=True)\nwhile True: time.sleep(0.05)"])
    log_file = tmp_path / "ckpt.log"
    # The global options before and after the sub-command, as criu takes -v4 -o anywhere.
    first = ok(run_ckpt("-v", "dump", "-t", target.pid, "-D", images_dir, "--log-file", log_file))
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    shown = steps(first.stderr, "dump")
    missing = [s for s in DUMP_STEPS if s not in shown]
    assert not missing, f"-v does not show the dump steps {missing}:\n{first.stderr}"
    assert first.stdout.startswith("checkpoint 1 (full)"), first.stdout   # stdout as without -v
    logged = log_file.read_text()
    assert steps(logged, "dump").keys() == shown.keys(), logged
    assert "copy while running" in logged    # a first dump copies while the target runs

    ok(run_ckpt("dump", "-t", target.pid, "-D", images_dir, "--kill", "-q", "--log-file", log_file))
    assert target.proc.wait(timeout=30) is not None
    restored = ok(run_ckpt("--log-file", log_file, "restore", "-D", images_dir, "--detach", "--json", "-vv"))
    pid = json.loads(restored.stdout)["pid"]
    try:
        shown = steps(restored.stderr, "restore")
        missing = [s for s in RESTORE_STEPS if s not in shown]
        assert not missing, f"-vv does not show the restore steps {missing}:\n{restored.stderr}"
        assert steps(log_file.read_text(), "restore").keys() == shown.keys()
    finally:
        os.kill(pid, signal.SIGKILL)
    verified = ok(run_ckpt("verify", "-D", images_dir, "-v"))
    assert set(steps(verified.stderr, "verify")) == {"checkpoint 1", "checkpoint 2"}, verified.stderr
    # Appended to, one run after the other; a run without -v/--log-file prints no trace.
    assert [line.split(": ", 1)[1].split()[0] for line in log_file.read_text().splitlines()
            if re.match(r"^\(\s*\d+\.\d{4}\) ckpt \S+: ", line)] == ["-v", "dump", "--log-file"]
    quiet = ok(run_ckpt("verify", "-D", images_dir))
    assert not STEP_LINE.search(quiet.stderr) and quiet.stderr == ""


@needs_kernel
def test_log_file_is_never_followed_or_borrowed(memtarget: MemTarget, images_dir: Path, tmp_path: Path) -> None:
    fds = fd_table(memtarget.pid)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link.log"
    link.symlink_to(victim)
    stderr = usage_error(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "--log-file", link))
    assert "--log-file" in stderr, stderr
    assert victim.read_text() == "precious\n"
    theirs = tmp_path / "theirs.log"
    theirs.write_text("")
    os.chown(theirs, 65534, 65534)
    assert "not a regular file of this user" in usage_error(
        run_ckpt("-v", "--log-file", theirs, "dump", "-t", memtarget.pid, "-D", images_dir))
    assert theirs.read_text() == ""
    assert "given twice" in usage_error(run_ckpt("--log-file", tmp_path / "a", "verify", images_dir,
                                                 "--log-file", tmp_path / "b"))
    assert not images_dir.exists()
    assert_running(memtarget, fds)


# ---------------------------------------------------------------------------
# Progress on a terminal


def run_on_pty(argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a new pty (stdout a pipe); (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=ckpt_env(), cwd=REPO_ROOT)
    os.close(slave)
    got = bytearray()
    deadline = time.monotonic() + timeout

    def read(wait: float) -> bool:
        """Read what the terminal got within ``wait`` s; False at its end (every slave fd closed)."""
        ready, _, _ = select.select([master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(master, 65536)
        except OSError:   # EIO: the last slave fd is closed
            return False
        got.extend(data)
        return bool(data)

    try:
        while time.monotonic() < deadline and proc.poll() is None and read(0.1):
            pass
        while read(0.2) and len(got) < (1 << 24):   # what it wrote before it exited
            if not select.select([master], [], [], 0)[0]:
                break
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, stdout, got.decode(errors="replace")


PROGRESS = re.compile(r"\rckpt: (\w[\w ]*?) (\d+(?:\.\d)? [KMG]?i?B) / (\d+(?:\.\d)? [KMG]?i?B) \( *(\d+)%\)"
                      r"(?:, (\d+(?:\.\d)? [KMG]?i?B)/s)?(?:, (\S+) left)?\x1b\[K")


@needs_kernel
@pytest.mark.timeout(300)
def test_progress_on_a_terminal_with_rate_and_time_left(spawn: Callable[..., Target], images_dir: Path) -> None:
    size = 512 * MIB
    # Random bytes (zstd cannot make them small or fast); the process lives on after a
    # restore with /dev/null as stdin.
    target = spawn([sys.executable, "-c", "import ctypes, os, time\n"
                    f"buf = ctypes.create_string_buffer(os.urandom({size}), {size})\n"
                    "print('ready', os.getpid(), flush=True)\nprint(ctypes.addressof(buf), flush=True)\n"
                    "while True: time.sleep(0.05)"])
    addr = int(target.readline())
    rc, stdout, tty = run_on_pty(ckpt_argv("dump", "-t", target.pid, "-D", images_dir, "--kill"))
    assert rc == 0, tty
    assert stdout.startswith("checkpoint 1 (full)"), stdout   # the report is on stdout, not the terminal
    shown = PROGRESS.findall(tty)
    copy = [s for s in shown if s[0] == "copy"]
    assert copy, f"no copy progress on the terminal: {tty!r}"
    assert any(s[4] for s in copy), f"no rate in {copy}"
    assert any(s[5] for s in copy), f"no time left in {copy}"
    assert copy[-1][3] == "100"
    assert tty.endswith("\r\x1b[K"), f"the progress line is not cleared at the end: {tty[-200:]!r}"

    rc, stdout, tty = run_on_pty(ckpt_argv("verify", "-D", images_dir))
    assert rc == 0, tty
    assert any(s[0] == "verify" for s in PROGRESS.findall(tty)), tty
    assert "\x1b[K" in tty and tty.endswith("\r\x1b[K"), tty[-200:]

    rc, stdout, tty = run_on_pty(ckpt_argv("restore", "-D", images_dir, "--detach", "--json"))
    assert rc == 0, tty
    pid = json.loads(stdout)["pid"]
    try:
        memory = [s for s in PROGRESS.findall(tty) if s[0] == "memory"]
        assert memory and memory[-1][3] == "100", tty
        assert memory[-1][2] == memory[-1][1]
        # Cleared once the memory is written: before the restored process may write to the
        # terminal, and before ckpt's own notes.
        assert tty[:tty.rindex("\x1b[K") + 3].endswith("\r\x1b[K"), tty
        assert "ckpt: note:" in tty.rsplit("\x1b[K", 1)[1]
        # And what it wrote is the checkpoint's memory.
        cp = ckpt.ImageDir(images_dir).checkpoints[-1]
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for offset in range(0, size, 64 * MIB):
                mem.seek(addr + offset)
                assert mem.read(64 * MIB) == cp.read_memory(addr + offset, 64 * MIB), f"at {offset:#x}"
    finally:
        os.kill(pid, signal.SIGKILL)


@needs_kernel
def test_no_progress_when_stderr_is_not_a_terminal(memtarget: MemTarget, images_dir: Path) -> None:
    size = 128 * MIB
    addr = memtarget.map(size, thp="nohuge")
    memtarget.fill(addr, size, 12)
    dump = ok(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir))
    verify = ok(run_ckpt("verify", images_dir))
    for result in (dump, verify):
        assert "\r" not in result.stderr and "\x1b" not in result.stderr, result.stderr
        assert "\r" not in result.stdout and "\x1b" not in result.stdout


# ---------------------------------------------------------------------------
# --every --json: JSON Lines


@needs_kernel
def test_every_json_prints_one_object_per_line(memtarget: MemTarget, images_dir: Path) -> None:
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 9)
    result = ok(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "--every", "100ms", "--count", "3",
                         "--json"))
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    reports = [json.loads(line) for line in lines]
    assert [r["id"] for r in reports] == [1, 2, 3]
    assert [r["kind"] for r in reports] == ["full", "incremental", "incremental"]
    single = ok(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "--json"))
    assert json.loads(single.stdout)["id"] == 4 and len(single.stdout.splitlines()) > 1   # indented, as before


@needs_kernel
def test_every_json_lines_arrive_as_each_checkpoint_is_taken(memtarget: MemTarget, images_dir: Path) -> None:
    cli = subprocess.Popen(ckpt_argv("dump", "-t", memtarget.pid, "-D", images_dir, "--every", "60s", "--json"),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=ckpt_env(), cwd=REPO_ROOT)
    try:
        assert cli.stdout is not None
        first = json.loads(cli.stdout.readline())   # a whole object on one line, flushed; then it sleeps
        assert first["id"] == 1
        cli.send_signal(signal.SIGTERM)
        rest, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    # Stopped after a good checkpoint: exit 0, and how many it made (README: exit codes).
    assert cli.returncode == 0, stderr
    assert rest == ""
    assert stderr.splitlines() == ["ckpt: stopped by SIGTERM: 1 checkpoint taken, the last is checkpoint 1"]


# ---------------------------------------------------------------------------
# Exit codes


def test_documented_exit_codes_match_the_errors() -> None:
    from ckpt.cli import EXIT_CODES

    for cls in (errors.NoSuchProcess, errors.AccessDenied, errors.KernelUnsupported, errors.TargetExited,
                errors.ImageError, errors.ImageDirLocked, errors.TargetError, errors.KillRefused,
                errors.UntrustedImage, errors.StorageError, errors.UsageError):
        assert re.search(rf"(?<!\d){cls.exit_code} ", EXIT_CODES), cls
    assert errors.StorageError.exit_code not in {c.exit_code for c in (errors.ImageError, errors.CkptError)}
    assert errors.Interrupted("x", "SIGINT").exit_code == 130
    assert errors.Interrupted("x", "SIGTERM").exit_code == 143
    readme = (REPO_ROOT / "README.md").read_text()
    table = {cell.strip() for row in re.findall(r"^\| *([\d, ]+) *\|", readme, re.M) for cell in row.split(",")}
    assert {"12", "130", "143", "7"} <= table, table


@needs_kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_full_disk_is_a_storage_error(memtarget: MemTarget, tmp_path: Path) -> None:
    size = 16 * MIB
    addr = memtarget.map(size, thp="nohuge")
    memtarget.memset(addr, size, 0x5A)    # compresses to almost nothing: the first dump fits
    fds = fd_table(memtarget.pid)
    with tmpfs(tmp_path / "small", "size=4m,mode=0700") as mnt:
        images_dir = mnt / "images"
        ok(run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir, "-q"))
        before = ok(run_ckpt("inspect", images_dir, "--json")).stdout
        memtarget.fill(addr, size, 13)     # 16 MiB that do not compress: 4 MiB cannot hold them
        result = run_ckpt("dump", "-t", memtarget.pid, "-D", images_dir)
        output = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
        assert result.returncode == errors.StorageError.exit_code == 12, output
        assert len(result.stderr.splitlines()) == 1 and "No space left on device" in result.stderr, output
        assert "Traceback" not in result.stderr
        assert_running(memtarget, fds)
        assert memtarget.sum(addr, PAGE) >= 0
        # The chain is as before: the same checkpoint, verified; the next dump cleans up.
        ok(run_ckpt("verify", images_dir))
        after = json.loads(ok(run_ckpt("inspect", images_dir, "--json")).stdout)
        assert after["checkpoints"] == json.loads(before)["checkpoints"]
        assert [cp.id for cp in ckpt.ImageDir(images_dir).checkpoints] == [1]


@needs_kernel
@pytest.mark.timeout(300)
def test_sigterm_during_a_restore_exits_143(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to ``ckpt restore`` while it rebuilds the process: the half-built process is
    killed, and ckpt exits 143 (128 + SIGTERM), not 130 (Ctrl-C's)."""
    size = 512 * MIB
    target = spawn([sys.executable, "-c", "import ctypes, os, time\n"
                    f"buf = ctypes.create_string_buffer(os.urandom({size}), {size})\n"
                    "print('ready', os.getpid(), flush=True)\nwhile True: time.sleep(0.05)"])
    ok(run_ckpt("dump", "-t", target.pid, "-D", images_dir, "--kill", "-q"))
    outcomes = []
    for _ in range(4):
        cli = subprocess.Popen(ckpt_argv("restore", "-D", images_dir, "--stdout", tmp_path / "out",
                                         "--stderr", tmp_path / "err"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ckpt_env(), cwd=REPO_ROOT)
        child = None
        try:
            # The process being rebuilt: ckpt's child, traced by ckpt.
            deadline = time.monotonic() + 60
            while child is None and time.monotonic() < deadline and cli.poll() is None:
                with contextlib.suppress(OSError):
                    with open(f"/proc/{cli.pid}/task/{cli.pid}/children") as f:
                        for pid in map(int, f.read().split()):
                            if tracer_pid(pid) == cli.pid:
                                child = pid
                time.sleep(0.002)
            cli.send_signal(signal.SIGTERM)
            stdout, stderr = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        outcomes.append((cli.returncode, stderr))
        if child is not None and "restored checkpoint" not in stderr:
            # Interrupted in the rebuild: nothing was restored, nothing left behind.
            assert cli.returncode == 143, outcomes
            assert stderr.splitlines() == ["ckpt: interrupted by SIGTERM"], stderr
            # ckpt killed and reaped it before it exited (it was ckpt's child: nobody else
            # could have, and a zombie would name init as its parent).
            assert not os.path.exists(f"/proc/{child}"), Path(f"/proc/{child}/status").read_text()
            return
        # The rebuild was over: ckpt forwarded SIGTERM to the restored process, which it ended.
        assert cli.returncode == 143, outcomes
    pytest.fail(f"SIGTERM never arrived during the rebuild: {outcomes}")


@needs_kernel
@pytest.mark.timeout(180)
def test_demo_runs_to_the_end() -> None:
    """``ckpt demo`` (the README's first command) ran into a traceback at its inspect step."""
    result = run_ckpt("demo", timeout=150)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "== done" and "all checkpoints verified" in lines, result.stdout
    assert any(re.match(r"\s+1\s+-\s+full\s", line) for line in lines), result.stdout

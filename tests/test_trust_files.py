"""Issue 7 items 3, 4, 8 and part of 14: what ckpt opens, runs and leaves behind.

* Item 3: the tracking holder never imports code from the current directory
  or from PYTHONPATH (root dumping from a directory another user controls).
* Item 4: planted symlinks and foreign directories — an images directory, its
  ``.lock``, checkpoint files, the tracking registry — are refused, never followed.
* Item 8: a killed or interrupted command leaves nothing that changes later
  behaviour (an orphan holder, an unadoptable directory, silent staging
  leftovers), and a target that execs is not tracked with its dead address
  space's uffd.
* Item 14: errors while creating or locking the images directory, and a holder
  failing after the commit, are one line (or a note), never a traceback.

Security tests use the real second and third users (``other_user``,
``third_user``).  Each test reproduces the problem on the code before the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import MIB, PAGE, REPO_ROOT, MemTarget, Target, ckpt_env, fd_table, proc_state, run_ckpt, tracer_pid
from test_badinput import assert_clean_error
from test_tracking import ckpt_json, dump_json, gone, tracked, wait_for, wp_vmas
from users import User

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

HOLDER_SCRIPT = str(REPO_ROOT / "ckpt" / "holder.py")


# ---------------------------------------------------------------------------
# helpers


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat_line = f.read()
    return int(stat_line[stat_line.rindex(")") + 2:].split()[1])


def holder_processes() -> list[tuple[int, int, list[str]]]:
    """(pid, parent pid, argv) of every live (not zombie) ckpt holder, whatever started it."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = cmdline(int(name))
            if any(a.endswith("holder.py") or a == "ckpt.holder" for a in argv) and \
                    proc_state(int(name)) not in ("Z", "X"):
                out.append((int(name), ppid(int(name)), argv))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return out


def holders_of(target_pid: int) -> list[int]:
    """Holders of ``target_pid`` (its pid is on their command line)."""
    return [pid for pid, _, argv in holder_processes() if str(target_pid) in argv]


def children_holders(parent: int) -> list[int]:
    """Holders started by ``parent`` (a running ``ckpt dump``)."""
    return [pid for pid, pp, _ in holder_processes() if pp == parent]


def start_dump(target: Target, images_dir: Path, *extra: str, env: dict[str, str] | None = None,
               cwd: Path = REPO_ROOT, python_flags: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    argv = [sys.executable, *python_flags, "-m", "ckpt", "dump", "--pid", str(target.pid), "-D", str(images_dir),
            "--json", *extra]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or ckpt_env(), cwd=cwd)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def json_reports(text: str) -> list[dict[str, Any]]:
    """The JSON objects printed one after another by ``dump --every --json``."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return out
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)


def untracked_notes(report: dict[str, Any]) -> list[str]:
    return [n for n in report["notes"] if "is not tracked" in n]


def file_identity(path: Path) -> tuple[bytes, int, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns


@pytest.fixture
def big_target(memtarget: MemTarget) -> Callable[[int], int]:
    """Give memtarget ``size`` bytes of written, barely compressible memory; return the address."""
    def make(size: int) -> int:
        addr = memtarget.map(size, thp="nohuge")
        memtarget.cmd(f"fill {addr:#x} {size} 7", timeout=120)
        return addr
    return make


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (root only) for the duration of the block."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "ckpt-test", str(where)], check=True,
                   capture_output=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


# ---------------------------------------------------------------------------
# item 3: the holder runs isolated


PLANT = """\
import os
with open({marker!r}, "a") as f:
    f.write(__name__ + " from " + __file__ + "\\n")
"""


def plant(directory: Path, markers: Path, owner: User, *stdlib: str) -> None:
    """A ``ckpt`` package, a ``ckpt/holder.py``, a top-level ``holder.py`` (and modules
    named like the standard library's ``stdlib``) that leave a marker when imported."""
    (directory / "ckpt").mkdir(parents=True)
    for rel in ("ckpt/__init__.py", "ckpt/holder.py", "holder.py", *(f"{name}.py" for name in stdlib)):
        (directory / rel).write_text(PLANT.format(marker=str(markers / f"{directory.name}-{rel.replace('/', '.')}")))
    for path in [directory, *directory.rglob("*")]:
        owner.owns(path)


def test_holder_never_imports_from_cwd_or_pythonpath(memtarget: MemTarget, tmp_path: Path,
                                                      other_user: User) -> None:
    markers = tmp_path / "markers"
    markers.mkdir(mode=0o777)
    markers.chmod(0o777)
    cwd, later = tmp_path / "cwd", tmp_path / "later"
    # The directory root runs ckpt from, controlled by another user (where the
    # holder would also find shadows of the modules it imports), and a directory
    # on PYTHONPATH after the repository (before the standard library: no
    # shadows there, the dumping ckpt itself would import them).
    plant(cwd, markers, other_user, "json", "select", "signal")
    plant(later, markers, other_user)
    env = ckpt_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(later)])
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 3)
    images = tmp_path / "images"

    # -P: the dumping ckpt itself does not put its cwd on sys.path (as an installed
    # `ckpt` script would not); what is under test is the holder it starts.
    first = finish(start_dump(memtarget, images, env=env, cwd=cwd, python_flags=("-P",)))
    assert first.returncode == 0, first.stderr
    planted = sorted(p.name for p in markers.iterdir())
    assert not planted, f"root's dump imported code planted by another user: {planted}"
    report = json.loads(first.stdout)
    assert report["kind"] == "full" and not report["notes"], report

    record = tracked()[memtarget.pid]
    holder = record["holder_pid"]
    assert cmdline(holder)[1:4] == ["-I", "-S", HOLDER_SCRIPT], cmdline(holder)
    assert os.readlink(f"/proc/{holder}/cwd") == "/"
    assert Path(f"/proc/{holder}/environ").read_bytes() == b"", "the holder should run with an empty environment"

    memtarget.memset(addr + 5 * PAGE, PAGE, 0x55)
    second = finish(start_dump(memtarget, images, env=env, cwd=cwd, python_flags=("-P",)))
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert (report["kind"], report["tracking"]) == ("incremental", "continued"), report
    assert not list(markers.iterdir())
    assert ckpt.ImageDir(images).head.read_memory(addr + 5 * PAGE, PAGE) == b"\x55" * PAGE


# ---------------------------------------------------------------------------
# item 4: planted symlinks, foreign directories


@pytest.mark.parametrize("layout", ["user-owned", "user-owned-with-marker", "world-writable", "user-ancestor"])
def test_root_dump_refuses_a_directory_another_user_controls(memtarget: MemTarget, tmp_path: Path,
                                                              other_user: User, layout: str) -> None:
    secret = tmp_path / "root-secret"
    secret.write_bytes(b"root's data\n")
    secret.chmod(0o640)
    before = file_identity(secret)
    if layout == "user-ancestor":
        parent = tmp_path / "users-dir"
        parent.mkdir(mode=0o755)
        other_user.owns(parent)
        images = parent / "images"
        images.mkdir(mode=0o700)   # root's own directory, inside one the user can rename things in
    else:
        images = tmp_path / "images"
        images.mkdir(mode=0o700)
        if layout == "world-writable":
            images.chmod(0o777)
        else:
            other_user.owns(images)
        if layout == "user-owned-with-marker":
            (images / "CKPT-IMAGES").write_text("ckpt images directory\nformat-version 1\n")
            other_user.owns(images / "CKPT-IMAGES")
    lock = images / ".lock"
    os.symlink(secret, lock)
    os.lchown(lock, other_user.uid, other_user.gid)
    fds = fd_table(memtarget.pid)

    line = assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", images),
                              errors.ImageError.exit_code)
    expected = {"user-owned": "owned by uid", "user-owned-with-marker": "owned by uid",
                "world-writable": "writable by group or others", "user-ancestor": "owned by uid"}[layout]
    assert expected in line, line
    assert file_identity(secret) == before, "a refused dump changed the file the planted .lock points to"
    assert os.path.islink(lock)
    with pytest.raises(errors.ImageError):
        ckpt.dump(memtarget.pid, images)
    assert file_identity(secret) == before
    assert tracer_pid(memtarget.pid) == 0 and fd_table(memtarget.pid) == fds
    assert memtarget.pid not in tracked()


def test_lock_symlink_is_never_followed(memtarget: MemTarget, tmp_path: Path) -> None:
    """Even in a directory that passes the ownership checks, ``.lock`` is opened O_NOFOLLOW."""
    secret = tmp_path / "root-secret"
    secret.write_bytes(b"root's data\n")
    secret.chmod(0o640)
    before = file_identity(secret)
    images = tmp_path / "images"
    images.mkdir(mode=0o700)
    os.symlink(secret, images / ".lock")
    line = assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", images),
                              errors.ImageError.exit_code)
    assert "symbolic link" in line, line
    assert file_identity(secret) == before
    # A hard link to someone else's file is refused the same way.
    os.unlink(images / ".lock")
    os.link(secret, images / ".lock")
    assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", images), errors.ImageError.exit_code,
                       mentions=("hard link",))
    assert file_identity(secret) == before


def test_images_dir_given_as_symlink_is_refused_for_writing(memtarget: MemTarget, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    os.symlink(real, link)
    assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", link), errors.ImageError.exit_code,
                       mentions=("symbolic link",))
    assert os.listdir(real) == []


@pytest.mark.parametrize("what", ["checkpoint-dir", "meta", "pages"])
def test_readers_never_follow_symlinks_inside_images(memtarget: MemTarget, tmp_path: Path, what: str) -> None:
    images = tmp_path / "images"
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.fill(addr, MIB, 9)
    dump_json(memtarget, images)
    assert run_ckpt("verify", images).returncode == 0
    # Move the genuine file elsewhere and leave a symlink to it: the content is
    # valid, so only refusing the symlink itself makes the readers fail.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = {"checkpoint-dir": images / "000001", "meta": images / "000001" / "meta.ckpt",
              "pages": images / "000001" / "pages.ckpt"}[what]
    moved = elsewhere / source.name
    os.rename(source, moved)
    os.symlink(moved, source)

    for command in ("verify", "inspect"):
        line = assert_clean_error(run_ckpt(command, images), errors.CorruptImage.exit_code)
        assert "symbolic link" in line, line
    with pytest.raises(errors.CorruptImage, match="symbolic link"):
        ckpt.ImageDir(images).verify()
    with pytest.raises(errors.CorruptImage, match="symbolic link"):
        cp = ckpt.ImageDir(images).checkpoint(1)
        cp.read_memory(addr, PAGE)


def _python_for(user: User) -> str:
    """An interpreter ``user`` can run: the test's own may sit under /root (0700)."""
    try:
        if user.run([sys.executable, "-c", "pass"]).returncode == 0:
            return sys.executable
    except PermissionError:
        pass
    return "/usr/bin/python3"


def _user_run_dir(user: User, python: str) -> Path:
    """``tracking.run_dir()`` as ``user`` with no CKPT_RUN_DIR, XDG_RUNTIME_DIR nor HOME."""
    code = "from ckpt import tracking; print(tracking.run_dir())"
    result = user.run([python, "-c", code], env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, cwd="/")
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.mark.parametrize("planted", ["directory", "symlink"])
def test_tmp_run_dir_created_by_another_user_is_not_used(other_user: User, third_user: User,
                                                          planted: str) -> None:
    python = _python_for(other_user)
    if other_user.run([python, "-c", "import ctypes, fcntl"]).returncode != 0:
        pytest.skip(f"{python} cannot run as {other_user.name}")
    default = Path(f"/tmp/ckpt-{other_user.uid}")

    def cleanup() -> None:
        for path in [default, *Path("/tmp").glob(f"ckpt-{other_user.uid}.*")]:
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
            else:
                subprocess.run(["rm", "-rf", "--", str(path)], check=True, timeout=30)

    cleanup()
    thirds = Path(f"/tmp/ckpt-test-third-{os.getpid()}")
    try:
        third_user.run(["mkdir", "-m", "0777", str(thirds)], check=True)
        if planted == "directory":
            third_user.run(["mkdir", "-m", "0777", str(default)], check=True)
        else:
            third_user.run(["ln", "-s", str(thirds), str(default)], check=True)
        third_user.run(["touch", str(thirds / "planted")], check=True)

        chosen = _user_run_dir(other_user, python)
        assert chosen != default and not str(chosen).startswith(str(thirds)), chosen
        st = os.lstat(chosen)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == other_user.uid and stat.S_IMODE(st.st_mode) == 0o700, (
            f"{chosen}: uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
        )
        assert _user_run_dir(other_user, python) == chosen, "the fallback registry must be found again"
        assert os.lstat(default).st_uid == third_user.uid
        assert sorted(os.listdir(thirds)) == ["planted"], "another user's directory was written to"
    finally:
        cleanup()
        subprocess.run(["rm", "-rf", "--", str(thirds)], timeout=30)


def test_explicit_run_dir_owned_by_another_user_is_refused(memtarget: MemTarget, tmp_path: Path,
                                                           other_user: User) -> None:
    foreign = tmp_path / "foreign-run"
    foreign.mkdir(mode=0o700)
    other_user.owns(foreign)
    env = ckpt_env()
    env["CKPT_RUN_DIR"] = str(foreign)
    images = tmp_path / "images"
    result = finish(start_dump(memtarget, images, env=env))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "full"
    assert any("tracking is not kept" in n and str(foreign) in n for n in report["notes"]), report["notes"]
    assert os.listdir(foreign) == [], "root wrote its tracking registry into another user's directory"
    assert not holders_of(memtarget.pid), "an unreachable holder was left running"
    listing = subprocess.run([sys.executable, "-m", "ckpt", "track", "list"], capture_output=True, text=True,
                             env=env, cwd=REPO_ROOT, timeout=60)
    assert_clean_error(listing, 1, mentions=("owned by uid",))


# ---------------------------------------------------------------------------
# item 8: a killed dump leaves nothing that changes later behaviour


def test_first_dump_killed_midway_leaves_nothing_behind(memtarget: MemTarget, big_target: Callable[[int], int],
                                                        images_dir: Path) -> None:
    size = 512 * MIB
    addr = big_target(size)
    proc = start_dump(memtarget, images_dir)
    try:
        wait_for(lambda: children_holders(proc.pid) or proc.poll() is not None, "the dump starts its holder")
        assert proc.poll() is None, f"the dump ended too early: {proc.communicate()}"
        # The holder is visible while the dump runs.
        wait_for(lambda: tracked().get(memtarget.pid, {}).get("state") == "dumping",
                 "track list shows the running dump's holder", timeout=5)

        def staged() -> int:
            names = [n for n in os.listdir(images_dir) if n.startswith(".staging-")]
            return sum(f.stat().st_size for n in names for f in (images_dir / n).iterdir()) if names else 0
        wait_for(lambda: staged() > 16 * MIB or proc.poll() is not None, "the dump stores pages", timeout=60)
        assert proc.poll() is None, "the dump finished before it could be killed; make the target bigger"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ckpt.ImageDir(images_dir).checkpoints == [], "the killed dump committed a checkpoint"
    assert tracer_pid(memtarget.pid) == 0

    # Nothing keeps the target registered: no holder, no 'uw' VMA, no record.
    wait_for(lambda: not holders_of(memtarget.pid), "the killed dump's holder exits", timeout=10)
    # A holder killed between its fork and its exec is not recognisable by its command
    # line yet, but holds the uffd until it execs, reads the end of its pipe and exits.
    wait_for(lambda: not wp_vmas(memtarget.pid), "a killed dump's registrations go away", timeout=10)
    assert memtarget.pid not in tracked()

    # The leftover staging dir is named, with its size, by inspect and verify.
    staging = [n for n in os.listdir(images_dir) if n.startswith(".staging-")]
    assert len(staging) == 1, staging
    for command in ("inspect", "verify"):
        text = run_ckpt(command, images_dir)
        assert text.returncode == 0, text.stderr
        assert staging[0] in text.stdout and "MiB" in text.stdout and "next dump removes it" in text.stdout, (
            f"ckpt {command} does not mention {staging[0]}: {text.stdout!r}"
        )
        data = ckpt_json(command, images_dir)
        rows = data["staging"]
        assert [r["name"] for r in rows] == staging and rows[0]["bytes"] > 16 * MIB, rows
        assert rows[0]["writer_pid"] is None

    # While a ckpt holds the lock, the staging dir may be its work in progress: said so.
    with open(images_dir / ".lock", "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rows = ckpt_json("inspect", images_dir)["staging"]
        assert rows[0]["writer_pid"] == os.getpid() and "being written" in rows[0]["note"], rows

    full = dump_json(memtarget, images_dir)
    assert full["kind"] == "full" and not untracked_notes(full), full["notes"]
    assert not [n for n in os.listdir(images_dir) if n.startswith(".staging-")], "the next dump kept the leftover"
    memtarget.memset(addr + 10 * PAGE, PAGE, 0x10)
    incremental = dump_json(memtarget, images_dir)
    assert (incremental["kind"], incremental["tracking"]) == ("incremental", "continued"), incremental
    assert incremental["pages_stored"] < 200, incremental
    print(f"\nafter a killed first dump of {size >> 20} MiB: full dump frozen {full['frozen_ms']} ms, "
          f"next incremental frozen {incremental['frozen_ms']} ms")


def test_orphaned_holder_is_adopted_and_can_be_stopped(memtarget: MemTarget, images_dir: Path) -> None:
    addr = memtarget.map(8 * MIB, thp="nohuge")
    memtarget.fill(addr, 8 * MIB, 4)
    dump_json(memtarget, images_dir)
    holder = tracked()[memtarget.pid]["holder_pid"]
    # The registry is lost (a /tmp cleaner, another CKPT_RUN_DIR): the holder
    # still keeps every VMA registered with its uffd.
    Path(os.environ["CKPT_RUN_DIR"], f"{memtarget.pid}.json").unlink()
    listed = tracked()[memtarget.pid]
    assert (listed["state"], listed["holder_pid"]) == ("orphan", holder), listed

    memtarget.memset(addr, PAGE, 0x21)
    adopted = dump_json(memtarget, images_dir)
    assert adopted["kind"] == "full" and "adopted" in adopted["tracking"], adopted
    assert not untracked_notes(adopted), "a new uffd could not register VMAs held by the orphan"
    assert tracked()[memtarget.pid]["holder_pid"] == holder
    memtarget.memset(addr + PAGE, PAGE, 0x22)
    after = dump_json(memtarget, images_dir)
    assert (after["kind"], after["tracking"]) == ("incremental", "continued"), after
    assert ckpt.ImageDir(images_dir).head.read_memory(addr, 2 * PAGE) == b"\x21" * PAGE + b"\x22" * PAGE

    # An orphan can also be stopped by `track stop`.
    Path(os.environ["CKPT_RUN_DIR"], f"{memtarget.pid}.json").unlink()
    assert run_ckpt("track", "stop", memtarget.pid).returncode == 0
    wait_for(lambda: not holders_of(memtarget.pid), "the orphan holder exits", timeout=10)
    assert not wp_vmas(memtarget.pid)


@pytest.mark.parametrize("leftover", ["marker-tmp", "marker-tmp-and-lock"])
def test_images_dir_left_by_a_killed_creation_is_adopted(memtarget: MemTarget, images_dir: Path,
                                                         leftover: str) -> None:
    # Run ckpt's own creation code and die exactly between writing the marker
    # and renaming it into place, as a SIGKILL there would.
    script = (
        "import os, sys\n"
        "from ckpt.image import ImageDir\n"
        "os.rename = lambda *a, **k: os._exit(9)\n"
        f"ImageDir({str(images_dir)!r}, create=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=ckpt_env(), cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 9
    if leftover == "marker-tmp-and-lock":
        (images_dir / ".lock").write_text("12345\n")
        (images_dir / ".lock").chmod(0o600)
    names = sorted(os.listdir(images_dir))
    assert names and all(n.startswith(".CKPT-IMAGES.tmp-") or n == ".lock" for n in names), names

    report = dump_json(memtarget, images_dir)
    assert report["kind"] == "full"
    assert not [n for n in os.listdir(images_dir) if n.startswith(".CKPT-IMAGES.tmp-")]
    assert run_ckpt("verify", images_dir).returncode == 0


def test_exec_between_dumps_restarts_tracking(spawn: Callable[..., Target], programs: dict[str, Path],
                                              images_dir: Path) -> None:
    target = spawn([programs["exec_target"]])
    first = dump_json(target, images_dir)
    assert first["kind"] == "full"
    old_holder = tracked()[target.pid]
    target.send("exec")
    target.wait_ready()
    addr = int(target.cmd("buf"), 16)

    second = dump_json(target, images_dir)
    assert second["kind"] == "full", second
    assert "exec" in second["tracking"] and any("exec" in n for n in second["notes"]), second
    assert not untracked_notes(second), f"tracking with the dead address space's uffd: {second['notes'][:3]}"
    wait_for(lambda: gone(old_holder["holder_pid"], old_holder["holder_start_time"]),
             "the stale holder is stopped", timeout=10)
    assert tracked()[target.pid]["holder_pid"] != old_holder["holder_pid"]

    target.cmd("set 3 170")
    third = dump_json(target, images_dir)
    assert (third["kind"], third["tracking"]) == ("incremental", "continued"), third
    assert third["pages_stored"] < 64
    assert ckpt.ImageDir(images_dir).head.read_memory(addr + 3 * PAGE, PAGE) == b"\xaa" * PAGE


def test_exec_during_a_dump_session_is_not_reported_as_exited(spawn: Callable[..., Target],
                                                              programs: dict[str, Path], images_dir: Path) -> None:
    target = spawn([programs["exec_target"]])
    proc = start_dump(target, images_dir, "--every", "600ms", "--count", "3")
    try:
        wait_for(lambda: (images_dir / "000001").exists() or proc.poll() is not None, "the first checkpoint",
                 timeout=30)
        target.send("exec")
        target.wait_ready()
    finally:
        result = finish(proc)
    assert result.returncode == 0, result.stderr
    assert "exited" not in result.stderr, result.stderr
    reports = json_reports(result.stdout)
    assert len(reports) == 3, result.stdout
    after_exec = [r for r in reports if any("exec" in n for n in r["notes"])]
    assert len(after_exec) == 1 and after_exec[0]["kind"] == "full", [(r["kind"], r["notes"]) for r in reports]
    assert not any(untracked_notes(r) for r in reports)
    assert proc_state(target.pid) in ("S", "R") and tracer_pid(target.pid) == 0


# ---------------------------------------------------------------------------
# item 14: clean errors around the images directory and the holder


def test_holder_failing_after_the_commit_is_a_note(memtarget: MemTarget, big_target: Callable[[int], int],
                                                   images_dir: Path) -> None:
    addr = big_target(256 * MIB)
    proc = start_dump(memtarget, images_dir)
    try:
        wait_for(lambda: children_holders(proc.pid) or proc.poll() is not None, "the dump starts its holder")
        victims = children_holders(proc.pid)
        assert victims and proc.poll() is None, "the dump ended before its holder could be killed"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        result = finish(proc)
    assert result.returncode == 0, f"a committed checkpoint reported as a failure: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert any("tracking could not be kept" in n for n in report["notes"]), report["notes"]
    assert run_ckpt("verify", images_dir).returncode == 0
    assert [c.id for c in ckpt.ImageDir(images_dir).checkpoints] == [report["id"]]

    memtarget.memset(addr, PAGE, 0x31)
    again = dump_json(memtarget, images_dir)
    assert again["kind"] == "full" and not untracked_notes(again), again
    memtarget.memset(addr + PAGE, PAGE, 0x32)
    assert dump_json(memtarget, images_dir)["kind"] == "incremental"


def test_disk_full_at_the_lock_is_a_storage_error(memtarget: MemTarget, tmp_path: Path) -> None:
    users_root = tmp_path  # root-owned: the ancestors of the mount are safe
    with tmpfs(users_root / "small", "size=1m,mode=0700") as mnt:
        images = mnt / "images"
        ckpt.ImageDir(images, create=True)  # the marker fits; then the disk fills up
        with contextlib.suppress(OSError), open(mnt / "filler", "wb") as f:
            while True:
                f.write(bytes(PAGE))
                f.flush()
        fds = fd_table(memtarget.pid)
        line = assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", images),
                                  errors.StorageError.exit_code, mentions=("No space left on device", ".lock"))
        assert "target" not in line.lower(), line
        assert tracer_pid(memtarget.pid) == 0 and fd_table(memtarget.pid) == fds


def test_read_only_fs_and_file_parent_are_one_line_errors(memtarget: MemTarget, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,mode=0700") as mnt:
        assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", mnt / "images"),
                           errors.StorageError.exit_code, mentions=("Read-only file system",))
    regular = tmp_path / "a-file"
    regular.write_text("not a directory\n")
    assert_clean_error(run_ckpt("dump", "--pid", memtarget.pid, "-D", regular / "images"),
                       errors.NotAnImageDir.exit_code, mentions=("not a directory",))
    assert regular.read_text() == "not a directory\n"
    assert tracer_pid(memtarget.pid) == 0


def test_later_dump_killed_midway_leaves_an_incomplete_holder_the_next_dump_uses(
        memtarget: MemTarget, big_target: Callable[[int], int], images_dir: Path) -> None:
    size = 256 * MIB
    addr = big_target(size)
    dump_json(memtarget, images_dir)
    holder = tracked()[memtarget.pid]["holder_pid"]
    memtarget.cmd(f"fill {addr:#x} {size} 8", timeout=120)  # a lot to copy: the next dump is slow
    proc = start_dump(memtarget, images_dir)
    try:
        wait_for(lambda: any(n.startswith(".staging-") for n in os.listdir(images_dir)) or proc.poll() is not None,
                 "the second dump starts writing", timeout=60)
        assert proc.poll() is None, "the second dump finished before it could be killed"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [c.id for c in ckpt.ImageDir(images_dir).checkpoints] == [1]
    listed = tracked()[memtarget.pid]
    assert (listed["state"], listed["holder_pid"], listed["checkpoint_id"]) == ("incomplete", holder, None), listed

    memtarget.memset(addr, PAGE, 0x41)
    full = dump_json(memtarget, images_dir)
    assert full["kind"] == "full" and "did not complete" in full["tracking"], full
    assert not untracked_notes(full)
    assert tracked()[memtarget.pid]["holder_pid"] == holder, "the holder should have been reused"
    memtarget.memset(addr + PAGE, PAGE, 0x42)
    after = dump_json(memtarget, images_dir)
    assert (after["kind"], after["tracking"]) == ("incremental", "continued"), after
    assert ckpt.ImageDir(images_dir).head.read_memory(addr, 2 * PAGE) == b"\x41" * PAGE + b"\x42" * PAGE

"""eventfd, signalfd, timerfd and inotify (ckpt/files/eventfd.py, signalfd.py, timerfd.py,
inotify.py): recorded from fdinfo and the fd itself, made anew at restore, in their state.

A self-checking target per kind (tests/programs/zdtm_<kind>.c, see zdtm_anon.h)
sets its objects up, is dumped twice while it runs (what it checks must not
change), then dumped with --kill and restored, and checks its own state: counts,
modes, masks, pending signals, timers' clocks, periods, expirations not read and
absolute expiries, inotify watches with their numbers and the events they catch.
Then one test per refusal, and the trust rules with a real second user: a watch
the images' owner may not read, an alarm timer the owner could not make.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files
from ckpt._sys import timerfd as tfd
from ckpt.image.schema import InotifyFile, State
from helpers import Target, proc_status_field, run_ckpt
from test_badinput import assert_clean_error, edit_meta
from test_restore import Profile, dump_and_kill, restore_and_check, run_to_end, signal_until_exit
from test_trust_restore import (EXIT_UNTRUSTED, UserEnv, assert_refused, copy_images, detached, restore_detached,
                                user_dump, wait_running)
from test_trust_restore import edit_meta as edit_user_meta
from test_trust_restore import uenv, user_site  # noqa: F401  (fixtures)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

# Each target's go signal: SIGUSR1 is one of zdtm_signalfd's pending signals.
GO = {"eventfd": signal.SIGUSR1, "signalfd": signal.SIGUSR2, "timerfd": signal.SIGUSR1,
      "inotify": signal.SIGUSR1}
KINDS = tuple(GO)


def argv_of(kind: str, programs: dict[str, Path], tmp_path: Path, *extra: str) -> list[str | Path]:
    if kind != "inotify":
        return [programs[f"zdtm_{kind}"], *extra]
    where = tmp_path / "watched-tree"
    where.mkdir()
    return [programs["zdtm_inotify"], where, *extra]


def records(state: State, kind: str) -> dict[int, Any]:
    """fd number -> the file record of that kind at it."""
    by_id = {f.id: f for f in state.files}
    return {e.fd: by_id[e.file] for e in state.fds if by_id[e.file].kind == kind}


# ---------------------------------------------------------------------------
# The targets, the dumps while they run, the restore


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_the_target_checks_itself(kind: str, programs: dict[str, Path], spawn: Callable[..., Target],
                                  tmp_path: Path) -> None:
    target = spawn(argv_of(kind, programs, tmp_path))
    time.sleep(0.2)
    rc, lines = run_to_end(target, sig=GO[kind])
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_dumps_while_running_change_nothing_it_sees(kind: str, programs: dict[str, Path],
                                                    spawn: Callable[..., Target], images_dir: Path,
                                                    tmp_path: Path) -> None:
    """Two dumps record the objects (restorable) and leave them as they were: counts, pending
    signals, expirations not read, queued events (none), watches."""
    target = spawn(argv_of(kind, programs, tmp_path))
    for _ in range(2):
        report = ckpt.dump(target.pid, images_dir)
        assert report.restorable, report.unrestorable
        time.sleep(0.1)
    mine = records(report.checkpoint.state, kind)
    assert set(mine) >= {10, 11, 12}, mine
    rc, lines = run_to_end(target, sig=GO[kind])
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_restore_after_kill(kind: str, programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                           tmp_path: Path) -> None:
    """Dumped twice while running, then with --kill; the restored target passes its own checks.
    The timerfd target is restored 1.5 s after the kill: its absolute timers must keep their
    expiry (fd 13 counts the periods in between), its relative ones their time left, and fd 10
    its expirations not read (it reads at least as many as the image recorded)."""
    target = spawn(argv_of(kind, programs, tmp_path))
    ckpt.dump(target.pid, images_dir)
    time.sleep(0.5 if kind == "timerfd" else 0.1)
    ckpt.dump(target.pid, images_dir)
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    state = ckpt.ImageDir(images_dir).checkpoint(3).state
    mine = records(state, kind)
    if kind == "timerfd":
        time.sleep(1.5)
    lines = restore_and_check(images_dir, tmp_path, expected, go=GO[kind])
    if kind == "timerfd":
        periodic = int(next(line.split()[1] for line in lines if line.startswith("periodic ")))
        assert mine[10].ticks >= 20, mine[10]
        assert periodic >= mine[10].ticks, (periodic, mine[10])
        assert mine[11].ticks == 1 and mine[11].value_ns == 0, mine[11]
    if kind == "eventfd":
        assert (mine[10].count, mine[10].semaphore) == ((1 << 40) + 5, False)
        assert (mine[11].count, mine[11].semaphore) == (3, True)
    if kind == "inotify":
        assert [w.wd for w in mine[10].watches] == [1, 3] and mine[10].queued == 0


@needs_kernel
@pytest.mark.timeout(60)
def test_inspect_shows_them(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                            tmp_path: Path) -> None:
    target = spawn(argv_of("timerfd", programs, tmp_path))
    report = ckpt.dump(target.pid, images_dir)
    text = run_ckpt("inspect", images_dir, "--fds")
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.split()[0::2][:2] == ["12", "timerfd"])
    assert "CLOCK_REALTIME" in row and row.rstrip().endswith("restored"), row
    # A relative timer's time left counts from the restore: said, not silent.
    assert any(note.startswith("fd 10 is a timerfd") and "that time from the restore" in note
               for note in report.restore_notes), report.restore_notes


# ---------------------------------------------------------------------------
# Refused, by name


@needs_kernel
@pytest.mark.timeout(60)
def test_queued_inotify_events_refuse_a_kill(programs: dict[str, Path], spawn: Callable[..., Target],
                                             images_dir: Path, tmp_path: Path) -> None:
    """Events queued and not read cannot be recorded (reading them takes them): dump --kill
    refuses and leaves the target running; the queue is untouched."""
    target = spawn(argv_of("inotify", programs, tmp_path, "queued"))
    with pytest.raises(errors.KillRefused) as refused:
        ckpt.dump(target.pid, images_dir, after="kill")
    reasons = refused.value.report.unrestorable
    assert any(re.match(r"fds 10, 12 \(an inotify instance .*\) had \d+ bytes of events queued", r)
               for r in reasons), reasons
    assert target.alive()
    result = run_ckpt("inspect", images_dir, "--fds")
    assert "bytes of events queued" in result.stdout, result.stdout
    with open(f"/proc/{target.pid}/fdinfo/10") as f:
        assert f.read().count("inotify wd:") == 2


@needs_kernel
@pytest.mark.timeout(120)
def test_a_watched_directory_replaced_after_the_dump_is_refused(programs: dict[str, Path],
                                                                spawn: Callable[..., Target], images_dir: Path,
                                                                tmp_path: Path) -> None:
    target = spawn(argv_of("inotify", programs, tmp_path))
    dump_and_kill(target, images_dir)
    # Another directory in its place (made before the old one goes: another inode number).
    watched = tmp_path / "watched-tree" / "watched"
    (tmp_path / "watched-tree" / "other").mkdir()
    watched.rmdir()
    (tmp_path / "watched-tree" / "other").rename(watched)
    assert_refused(restore_detached(images_dir, tmp_path), errors.ImageError.exit_code,
                   re.escape(f"inotify watch 1 on {watched} is not the file the dump saw"))


PY_TARGET = """
import ctypes, fcntl, os, sys, time
sys.path.insert(0, {repo!r})
from ckpt._sys import inotify as ino, timerfd as tfd
what = sys.argv[1]
if what == "symlink":
    fd = ino.inotify_init1(0)
    ino.add_watch(fd, sys.argv[2], 0x4 | 0x02000000)   # IN_ATTRIB | IN_DONT_FOLLOW: the link itself
elif what == "async":
    fd = ino.inotify_init1(0)   # an inotify instance takes O_ASYNC (inotify_fasync); eventfds ignore it
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
elif what == "cancel-on-set":
    fd = tfd.timerfd_create(tfd.CLOCK_REALTIME, 0)
    tfd.timerfd_settime(fd, tfd.TFD_TIMER_ABSTIME | tfd.TFD_TIMER_CANCEL_ON_SET, 1, 0)   # long past
    time.sleep(0.05)
elif what == "alarm":
    fd = tfd.timerfd_create(tfd.CLOCK_BOOTTIME_ALARM, 0)
    tfd.timerfd_settime(fd, 0, 3600 * tfd.NSEC, 0)
elif what == "monotonic-abs":
    fd = tfd.timerfd_create(tfd.CLOCK_MONOTONIC, 0)
    tfd.timerfd_settime(fd, tfd.TFD_TIMER_ABSTIME, time.clock_gettime_ns(time.CLOCK_MONOTONIC) + 3600 * tfd.NSEC, 0)
os.dup2(fd, 20)
os.close(fd)
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
with open("/proc/self/fdinfo/20") as f:
    print(" ".join(f.read().split()), flush=True)
time.sleep(600)
"""


def py_target(spawn: Callable[..., Target], tmp_path: Path, *args: str | Path) -> Target:
    script = tmp_path / "anon_target.py"
    script.write_text(PY_TARGET.format(repo=str(Path(__file__).resolve().parent.parent)))
    script.chmod(0o644)
    return spawn([sys.executable, script, *map(str, args)])


def py_target_killed(spawn: Callable[..., Target], tmp_path: Path, images_dir: Path, case: str) -> None:
    """The Python target of ``case``, dumped with --kill into ``images_dir``."""
    target = py_target(spawn, tmp_path, case)
    ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,reason", [
    ("symlink", r"^fd 20 \(an inotify instance .*\): watch 1 on .*: it is a symbolic link"),
    # At least 1 expiration: a step of CLOCK_REALTIME meanwhile (the VM's clock sync) adds one
    # to a cancel-on-set timer's ticks (fs/timerfd.c timerfd_clock_was_set).
    ("cancel-on-set", r"^fd 20 is a timerfd .* cancelled when its clock is set, with [1-9][0-9]* expirations?"),
])
def test_what_cannot_be_given_back_refuses_a_kill(case: str, reason: str, spawn: Callable[..., Target],
                                                  images_dir: Path, tmp_path: Path) -> None:
    args: list[str | Path] = [case]
    if case == "symlink":
        (tmp_path / "real").write_text("x")
        (tmp_path / "link").symlink_to(tmp_path / "real")
        args.append(tmp_path / "link")
    target = py_target(spawn, tmp_path, *args)
    with pytest.raises(errors.KillRefused) as refused:
        ckpt.dump(target.pid, images_dir, after="kill")
    assert any(re.search(reason, r) for r in refused.value.report.unrestorable), refused.value.report.unrestorable
    assert target.alive()


@needs_kernel
@pytest.mark.timeout(120)
def test_an_inotify_instance_with_o_async_comes_back_with_it(spawn: Callable[..., Target], images_dir: Path,
                                                             tmp_path: Path) -> None:
    """O_ASYNC on an inotify instance, refused while its owner was not recorded
    (ckpt/files/fown.py): restored, with the process itself (a new pid) as the owner."""
    import fcntl
    import struct

    from ckpt._sys import pidfd as pidfd_sys

    py_target_killed(spawn, tmp_path, images_dir, "async")
    with detached(restore_detached(images_dir, tmp_path)) as pid:
        flags = re.search(r"flags:\s+(\d+)", Path(f"/proc/{pid}/fdinfo/20").read_text())
        assert flags is not None and int(flags.group(1), 8) & os.O_ASYNC
        pidfd = os.pidfd_open(pid)
        try:
            copy = pidfd_sys.pidfd_getfd(pidfd, 20)
        finally:
            os.close(pidfd)
        try:
            assert struct.unpack("ii", fcntl.fcntl(copy, files.fown.F_GETOWN_EX, bytes(8))) == (1, pid)
        finally:
            os.close(copy)


def test_inotify_numbers_beyond_reach_are_refused() -> None:
    watch = {"wd": 100_000, "mask": 0x100, "dev": 1, "ino": 2,   # IN_CREATE
             "mnt_id": None, "mode": 0o40700, "path": "/x", "unresolved": ""}
    record = InotifyFile.of({"id": 1, "kind": "inotify", "target": "anon_inode:inotify", "flags": 0, "pos": 0,
                             "mode": 0o600, "dev": 16, "ino": 9, "rdev": 0, "watches": [watch], "queued": 0})
    assert files.kind_named("inotify").reasons(record, files.Subject((5,))) == [
        "fd 5 (an inotify instance (anon_inode:inotify, 1 watch)) has watch numbers up to 100000 with 99999 unused "
        "below them: a restore reproduces at most 65536 unused numbers"]


@needs_kernel
@pytest.mark.timeout(120)
def test_an_absolute_monotonic_timer_of_another_boot_is_refused(spawn: Callable[..., Target], images_dir: Path,
                                                                tmp_path: Path) -> None:
    py_target_killed(spawn, tmp_path, images_dir, "monotonic-abs")
    edit_meta(images_dir, 1, lambda body: body["state"]["process"].__setitem__("boot_id", "another-boot"))
    assert_refused(restore_detached(images_dir, tmp_path), errors.ImageError.exit_code,
                   r"fd 20 \(anon_inode:\[timerfd\]\) expires at an absolute time of CLOCK_MONOTONIC",
                   "means nothing on this boot")


@needs_kernel
@pytest.mark.timeout(60)
def test_an_eventfd_count_beyond_the_counter_is_refused_on_open(programs: dict[str, Path],
                                                                spawn: Callable[..., Target],
                                                                images_dir: Path, tmp_path: Path) -> None:
    target = spawn(argv_of("eventfd", programs, tmp_path))
    ckpt.dump(target.pid, images_dir)

    def overflow(body: dict[str, Any]) -> None:
        next(f for f in body["state"]["files"] if f["kind"] == "eventfd")["count"] = (1 << 64) - 1

    edit_meta(images_dir, 1, overflow)
    with pytest.raises(errors.CorruptImage, match=r"count is 18446744073709551615, outside u64 0..2\^64-2"):
        ckpt.ImageDir(images_dir).checkpoint(1)


# ---------------------------------------------------------------------------
# Trust: a restore grants at most what the images' owner could have


@pytest.fixture
def anon_uenv(uenv: UserEnv, programs: dict[str, Path]) -> UserEnv:
    """The second user, with the inotify and timerfd targets in their bin."""
    for name in ("zdtm_inotify", "zdtm_timerfd"):
        shutil.copyfile(programs[name], uenv.bin / name)
        (uenv.bin / name).chmod(0o755)
    return uenv


def user_inotify_images(uenv: UserEnv, spawn: Callable[..., Target], tmp_path: Path) -> Path:
    """The user's zdtm_inotify, watching a tree of theirs, dumped with --kill into images the user
    owns.  Root dumps it (a user cannot find the path of a watch: see the next test) and hands
    the images over: they are then the user's, every field theirs to edit."""
    where = uenv.home / "watched-tree"
    where.mkdir()
    uenv.user.owns(where)
    target = spawn(uenv.argv("zdtm_inotify", where))
    ckpt.dump(target.pid, tmp_path / "root-images", after="kill")
    target.kill()
    return copy_images(tmp_path / "root-images", uenv.home / "images", uenv.user)


@needs_kernel
@pytest.mark.timeout(180)
def test_a_user_cannot_find_the_paths_of_watches(anon_uenv: UserEnv, spawn: Callable[..., Target]) -> None:
    """open_by_handle_at needs CAP_DAC_READ_SEARCH (fs/fhandle.c may_decode_fh): the user's own
    dump --kill refuses by name, and leaves the target running."""
    where = anon_uenv.home / "watched-tree"
    where.mkdir()
    anon_uenv.user.owns(where)
    target = spawn(anon_uenv.argv("zdtm_inotify", where))
    result = anon_uenv.ckpt("dump", "--pid", target.pid, "-D", anon_uenv.home / "images", "--kill")
    line = assert_clean_error(result, errors.KillRefused.exit_code, ("watch 1 on device",
                                                                    "needs CAP_DAC_READ_SEARCH"))
    assert "not killed" in line and target.alive()


@needs_kernel
@pytest.mark.timeout(180)
def test_user_images_restore_their_watches_as_the_user(anon_uenv: UserEnv, spawn: Callable[..., Target],
                                                      tmp_path: Path) -> None:
    """The user's images restored by root: the watches are added as the user (who may read
    those directories), and the target passes its checks."""
    images = user_inotify_images(anon_uenv, spawn, tmp_path)
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        assert proc_status_field(pid, "Uid").split() == [str(anon_uenv.user.uid)] * 4
        with open(f"/proc/{pid}/fdinfo/10") as f:
            assert f.read().count("inotify wd:") == 2
        pidfd = os.pidfd_open(pid)
        try:
            exited = signal_until_exit(pidfd, 30)
        finally:
            os.close(pidfd)
    out = (tmp_path / "restored.out").read_text()
    assert exited and out.splitlines()[-1:] == ["PASS"], out


@needs_kernel
@pytest.mark.timeout(180)
def test_a_watch_the_owner_may_not_read_is_refused(anon_uenv: UserEnv, spawn: Callable[..., Target],
                                                   tmp_path: Path) -> None:
    """The user edits their image's watch into /root (0700, root's: its path, device, inode and
    type are public).  A watch there would tell them every name created in it: root's restore
    refuses, as the kernel refuses the user's own inotify_add_watch."""
    root = Path("/root")
    st = root.stat()
    assert st.st_uid == 0 and not st.st_mode & 0o005, "/root is readable by others here: nothing to test"
    images = user_inotify_images(anon_uenv, spawn, tmp_path)

    def to_root(body: dict[str, Any]) -> None:
        inst = next(f for f in body["state"]["files"] if f["kind"] == "inotify" and len(f["watches"]) == 2)
        inst["watches"][0].update(path=str(root), dev=st.st_dev, ino=st.st_ino, mnt_id=None, mode=st.st_mode)

    edit_user_meta(images / "000001" / "meta.ckpt", to_root)
    assert_refused(restore_detached(images, tmp_path), EXIT_UNTRUSTED, r"inotify watch 1 on /root",
                   r"may not watch it")


@needs_kernel
@pytest.mark.timeout(180)
def test_an_alarm_timer_the_owner_could_not_make_is_refused(anon_uenv: UserEnv, spawn: Callable[..., Target],
                                                            tmp_path: Path) -> None:
    """An alarm clock needs CAP_WAKE_ALARM, which the user has not: their image edited to one
    is refused by root's restore (which could make it)."""
    target = spawn(anon_uenv.argv("zdtm_timerfd"))
    images = anon_uenv.home / "images"
    user_dump(anon_uenv, target, images)

    def to_alarm(body: dict[str, Any]) -> None:
        timers = [f for f in body["state"]["files"] if f["kind"] == "timerfd"]
        timers[0]["clockid"] = tfd.CLOCK_BOOTTIME_ALARM

    edit_user_meta(images / "000001" / "meta.ckpt", to_alarm)
    assert_refused(restore_detached(images, tmp_path), EXIT_UNTRUSTED, r"CLOCK_BOOTTIME_ALARM",
                   r"needs CAP_WAKE_ALARM")


@needs_kernel
@pytest.mark.timeout(120)
def test_root_images_restore_an_alarm_timer(spawn: Callable[..., Target], images_dir: Path,
                                            tmp_path: Path) -> None:
    py_target_killed(spawn, tmp_path, images_dir, "alarm")
    result = restore_detached(images_dir, tmp_path)
    with detached(result) as pid:
        with open(f"/proc/{pid}/fdinfo/20") as f:
            info = f.read()
    assert "clockid: 9" in info and "it_value: (0, 0)" not in info, info

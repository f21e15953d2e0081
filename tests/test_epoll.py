"""epoll instances (ckpt/files/epoll.py): every registration, with its events, data and
key, restored after the files it watches; what cannot be is refused by name.

The target, tests/programs/zdtm_epoll.c, holds two epoll instances (one watching the
other) and eventfds registered level- and edge-triggered, EPOLLONESHOT already fired,
EPOLLEXCLUSIVE, and a registration keyed by a number its file no longer has (dup2'd
away, the number reused for another registered eventfd).  After SIGUSR1 it checks its
own fdinfo, what epoll_wait reports (twice: edge-triggered ones once), that the fired
EPOLLONESHOT stays silent until re-armed, and which registration EPOLL_CTL_MOD/DEL by
number reach.  The eventfds are restored by ckpt/files/eventfd.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files
from ckpt._sys import epoll as ep
from ckpt.errors import KillRefused
from ckpt.files.epoll import keeps_epollwakeup, parse_registrations
from ckpt.image import schema
from ckpt.image.schema import State
from helpers import Target, canned_state
from test_badinput import edit_meta
from test_files import InheritingTarget
from test_restore import (EXIT_UNSUPPORTED, Profile, assert_refused, dump_and_kill, restore_and_check,
                          restore_refused, run_to_end)
from users import User

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EP1, EP2 = 20, 21
EXIT_UNTRUSTED = errors.UntrustedImage.exit_code
D_MOVED, D_REUSE = 0xfeedface00000041, 0x40


def registrations(pid: int, fd: int) -> list[tuple[int, int, int]]:
    """(fd number, events, data) of each registration of epoll ``fd`` of ``pid``, sorted."""
    regs = parse_registrations(ckpt.procfs.read_fdinfo(pid, fd).extra.get("tfd", ""))
    assert regs is not None
    return sorted((r.fd, r.events, r.data) for r in regs)


def file_at(state: State, fd: int) -> Any:
    entry = next(e for e in state.fds if e.fd == fd)
    return next(f for f in state.files if f.id == entry.file)


def python_target(spawn: Callable[..., Target], script: str) -> Target:
    return spawn([sys.executable, "-c", "import os, select, sys, time\n" + script
                  + "print('ready', os.getpid(), flush=True)\ntime.sleep(600)\n"], cls=Target)


# ---------------------------------------------------------------------------
# The target checks what it should


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", [None, "ready", "oneshot"])
def test_the_target_checks_itself(damage: str | None, programs: dict[str, Path], spawn: Callable[..., Target],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Straight through it passes; a drained eventfd or a re-armed EPOLLONESHOT fails it."""
    if damage:
        monkeypatch.setenv("ZDTM_CORRUPT", damage)
    rc, lines = run_to_end(spawn([programs["zdtm_epoll"]]))
    if damage is None:
        assert rc == 0 and lines[-1:] == ["PASS"], lines
    else:
        wanted = {"ready": "did not report data 0x1111222233334444", "oneshot": "registration fd 33 events"}
        assert rc == 1 and any(wanted[damage] in line for line in lines), lines


# ---------------------------------------------------------------------------
# Dump


@needs_kernel
@pytest.mark.timeout(60)
def test_every_registration_is_recorded(programs: dict[str, Path], spawn: Callable[..., Target],
                                        images_dir: Path) -> None:
    """Each registration with its key, events and data, and the open file it watches --
    found by kcmp(KCMP_EPOLL_TFD), so the two registrations keyed by fd 40 go to the
    eventfd now at 41 and to the one at 40."""
    target = spawn([programs["zdtm_epoll"]])
    live = {fd: registrations(target.pid, fd) for fd in (EP1, EP2)}
    state = ckpt.dump(target.pid, images_dir).checkpoint.state
    ids = {e.fd: e.file for e in state.fds}
    ep1, ep2 = file_at(state, EP1), file_at(state, EP2)
    assert ep1.kind == ep2.kind == "epoll" and ep1.flags == os.O_RDWR
    for record, fd in ((ep1, EP1), (ep2, EP2)):
        assert sorted((t.fd, t.events, t.data) for t in record.targets) == live[fd]
    by_data = {t.data: t for t in ep1.targets}
    assert by_data[D_MOVED].fd == by_data[D_REUSE].fd == 40
    assert by_data[D_MOVED].file == ids[41] and by_data[D_REUSE].file == ids[40]
    assert by_data[0x33].events == ep.EPOLLONESHOT, "a fired EPOLLONESHOT keeps its private bits only"
    assert by_data[0x36].events & ep.EPOLLEXCLUSIVE and by_data[0x1111222233334444].file == ids[30]
    assert [t.file for t in ep2.targets if t.fd == EP1] == [ids[EP1]], "the nested instance"
    assert set(files.kind_named("epoll").depends(ep1)) == {ids[n] for n in (30, 31, 32, 33, 34, 35, 36, 37, 40, 41)}
    assert file_at(state, 32).kind == "eventfd" and file_at(state, 32).semaphore
    assert file_at(state, 41).count == 6 and file_at(state, 41).flags == os.O_RDWR
    assert file_at(state, 32).flags == os.O_RDWR | os.O_NONBLOCK
    verdict = ckpt.restorability.assess(state, [])
    assert verdict.restorable, verdict.reasons
    assert f"fd {EP1}: the EPOLLONESHOT registration of fd 33 had fired; each is disabled again only if its " \
        "target is ready for something at restore, else it stays armed for EPOLLERR|EPOLLHUP (which epoll_ctl " \
        "always adds)" in verdict.notes, verdict.notes
    assert any(n.startswith(f"fd {EP1}: the edge-triggered registrations of fds 34, 35 are made anew")
               for n in verdict.notes), verdict.notes


@needs_kernel
@pytest.mark.timeout(60)
def test_dumps_leave_the_target_as_it_was(programs: dict[str, Path], spawn: Callable[..., Target],
                                          images_dir: Path) -> None:
    """Two dumps while it runs consume no edge, fire no EPOLLONESHOT, change no count."""
    target = spawn([programs["zdtm_epoll"]])
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


# ---------------------------------------------------------------------------
# Restore


@needs_kernel
@pytest.mark.timeout(120)
def test_epoll_instances_restore(programs: dict[str, Path], spawn: Callable[..., Target], images_dir: Path,
                                 tmp_path: Path) -> None:
    """Dumped twice while running, then with --kill, and restored: the restored target's
    own checks pass (registrations, readiness, keys); its fdinfo lists what the
    original's did."""
    target = spawn([programs["zdtm_epoll"]])
    live = {fd: registrations(target.pid, fd) for fd in (EP1, EP2)}
    expected = Profile.of(target.pid)
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    dump_and_kill(target, images_dir)

    def inspect(run: Any) -> None:
        assert {fd: registrations(run.pid, fd) for fd in (EP1, EP2)} == live

    restore_and_check(images_dir, tmp_path, expected, inspect=inspect)


def test_install_lends_a_registration_its_number() -> None:
    """In the restore child: a registration keyed by a number its file is not at gets that
    number for the call, and whatever was there (here fd 903, placed already, not
    close-on-exec) is put back; the epoll lands above every number in use."""
    numbers = (901, 902, 903)
    assert all(not os.path.exists(f"/proc/self/fd/{n}") for n in numbers), "the test needs free fds"
    ctx = files.RestoreContext(1, True, park_above=950)
    efd = os.eventfd(2, os.EFD_CLOEXEC)
    other = os.eventfd(0, os.EFD_CLOEXEC)
    os.dup2(efd, 901)
    os.dup2(other, 903, inheritable=True)
    os.close(efd)
    os.close(other)
    ctx.opened = {1: 901, 2: 903}
    record = schema.EpollFile.of({
        "id": 3, "kind": "epoll", "target": "anon_inode:[eventpoll]", "flags": os.O_RDWR, "pos": 0, "mode": 0,
        "dev": 0, "ino": 0, "rdev": 0, "targets": [
            {"fd": 903, "file": 1, "events": ep.EPOLLIN | ep.EPOLLERR | ep.EPOLLHUP, "data": 7, "ino": 0, "dev": 0},
            {"fd": 903, "file": 2, "events": ep.EPOLLIN | ep.EPOLLERR | ep.EPOLLHUP, "data": 8, "ino": 0, "dev": 0},
            {"fd": 902, "file": 1, "events": ep.EPOLLONESHOT, "data": 9, "ino": 0, "dev": 0}]})
    planned = files.PlannedFile(3, record, files.kind_named("epoll"), (904,), (True,))
    epfd = -1
    try:
        epfd = planned.kind.open(planned, ctx)
        assert epfd >= 950
        assert registrations(os.getpid(), epfd) == sorted([(903, 0x19, 7), (903, 0x19, 8),
                                                           (902, ep.EPOLLONESHOT, 9)])
        assert not os.path.exists("/proc/self/fd/902"), "a number lent for the call is closed after"
        assert os.get_inheritable(903), "put back with its close-on-exec flag"
        assert ckpt.procfs.read_fdinfo(os.getpid(), 903).extra["eventfd-count"] == "0", "the eventfd put back"
        assert ep.epoll_wait(epfd, 8, 0) == [(ep.EPOLLIN, 7)], "fd 901 ready (data 7), the oneshot disabled"
    finally:
        for fd in (epfd, *numbers):
            if fd >= 0 and os.path.exists(f"/proc/self/fd/{fd}"):
                os.close(fd)


# ---------------------------------------------------------------------------
# Refused, by name


@needs_kernel
@pytest.mark.timeout(90)
def test_a_target_open_at_no_fd_is_refused(spawn: Callable[..., Target], images_dir: Path,
                                           tmp_path: Path) -> None:
    """Registered, then closed while this test keeps it open: the registration lives on,
    its file open at no fd of the target; its number now holds another eventfd (same
    inode: every anonymous inode is one), which kcmp tells apart."""
    efd = os.eventfd(0)
    number = fcntl.fcntl(efd, fcntl.F_DUPFD, 100)   # a number free here, above the target's own
    os.close(efd)
    try:
        script = (f"import os, select, time\ne = select.epoll()\nos.dup2(e.fileno(), 50)\n"
                  f"e.register({number}, select.EPOLLIN)\nos.close({number})\n"
                  f"os.dup2(os.eventfd(0), {number})\nprint('ready', os.getpid(), flush=True)\ntime.sleep(600)\n")
        target = spawn([sys.executable, "-c", script], cls=lambda argv: InheritingTarget(argv, (number,)))
        with pytest.raises(KillRefused):
            ckpt.dump(target.pid, images_dir, after="kill")
    finally:
        os.close(number)   # the registration's file lived on here
    epoll_file = file_at(ckpt.ImageDir(images_dir).checkpoint(1).state, 50)
    assert [t.file for t in epoll_file.targets] == [None]
    refusal = restore_refused(images_dir, tmp_path)
    assert_refused(refusal, EXIT_UNSUPPORTED, rf"fds \d+, 50 are an epoll instance watching a file that is open at "
                   rf"no fd of the process \(registered as fd {number}, inode \d+ on device \d+:\d+")


@needs_kernel
@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", ["pidfd", "stdin"])
def test_an_epoll_whose_target_is_not_restored_is_refused(case: str, spawn: Callable[..., Target],
                                                           images_dir: Path, tmp_path: Path) -> None:
    """A target ckpt cannot restore (a pidfd) refuses the epoll too, saying so; a target
    only at fd 0 (replaced by a restore) as well."""
    watched = "os.dup2(os.pidfd_open(os.getpid()), 60)\nn = 60\n" if case == "pidfd" else "n = 0\n"
    target = python_target(spawn, watched + "e = select.epoll()\nos.dup2(e.fileno(), 50)\n"
                                            "e.register(n, select.EPOLLIN)\n")
    with pytest.raises(KillRefused):
        ckpt.dump(target.pid, images_dir, after="kill")
    if case == "pidfd":
        why = (r"fds \d+, 50 \(an epoll instance \(anon_inode:\[eventpoll\]\) with 1 registration \(fd 60\)\) "
               r"cannot be restored without fds \d+, 60 \(a pidfd \(anon_inode:\[pidfd\]\)\), "
               r"which ckpt cannot restore")
    else:
        why = (r"fds \d+, 50 \(an epoll instance .* with 1 registration \(fd 0\)\) cannot be restored without "
               r"fd 0 \(a pipe \(pipe:\[\d+\]\)\), which a restore replaces with its own stream")
    verdict = ckpt.restorability.assess(ckpt.ImageDir(images_dir).checkpoint(1).state, [])
    assert any(re.fullmatch(why, r) for r in verdict.reasons), verdict.reasons
    rows = {r["fd"]: r for r in ckpt.files.rows(ckpt.files.table(ckpt.ImageDir(images_dir).checkpoint(1).state))}
    assert not rows[50]["restorable"] and any(re.fullmatch(why, r) for r in rows[50]["reasons"]), rows[50]
    target.kill()
    assert_refused(restore_refused(images_dir, tmp_path), EXIT_UNSUPPORTED, why)


def _base_state() -> dict[str, Any]:
    def common(i: int, kind: str, target: str) -> dict[str, Any]:
        return {"id": i, "kind": kind, "target": target, "flags": os.O_RDWR, "pos": 0, "mode": 0o600,
                "dev": 16, "ino": 1039, "rdev": 0}

    return {"version": schema.TASK_STATE_VERSION, "threads": [{"tid": 10}],
            "process": {"pid": 10, "creds": {"seccomp": 0}},
            "files": [{**common(1, "epoll", "anon_inode:[eventpoll]"), "targets": [
                {"fd": 4, "file": 2, "events": 0x19, "data": 1, "ino": 1039, "dev": 16}]},
                {**common(2, "eventfd", "anon_inode:[eventfd]"), "count": 0, "semaphore": False}],
            "fds": [{"fd": 3, "file": 1, "cloexec": False}, {"fd": 4, "file": 2, "cloexec": False}]}


@pytest.mark.parametrize("edit,reason", [
    (None, None),
    (lambda s: s["files"][0]["targets"][0].update(file=9),
     "fd 3 (an epoll instance (anon_inode:[eventpoll]) with 1 registration (fd 4)) depends on open file 9, which "
     "the checkpoint does not hold"),
    (lambda s: s["files"][0]["targets"][0].update(file=1),
     "fd 3 (an epoll instance (anon_inode:[eventpoll]) with 1 registration (fd 4)) cannot be restored without "
     "fd 3 (an epoll instance (anon_inode:[eventpoll]) with 1 registration (fd 4)), which ckpt cannot restore"),
    (lambda s: s["files"][0].update(flags=os.O_RDONLY),
     "fd 3 is an epoll instance with flags O_RDONLY, which ckpt cannot restore"),
], ids=["as-dumped", "file-not-held", "watching-itself", "read-only"])
def test_crafted_records_are_refused_by_name(edit: Callable[[dict[str, Any]], None] | None,
                                             reason: str | None) -> None:
    """A registration of a file the checkpoint does not hold, of the epoll itself, bad flags."""
    state = _base_state()
    if edit is not None:
        edit(state)
    for file in state["files"]:
        schema.FILE_RECORDS[file["kind"]].check(file)
    verdict = ckpt.restorability.assess(canned_state(state), [])
    if reason is None:
        assert verdict.restorable, verdict.reasons
    else:
        assert reason in verdict.reasons, verdict.reasons


def test_two_registrations_of_one_key_are_malformed() -> None:
    epoll = _base_state()["files"][0]
    epoll["targets"].append(dict(epoll["targets"][0], data=2))
    with pytest.raises(schema.SchemaError, match=r"targets\[1\] registers open file 2 under fd 4 again"):
        schema.FILE_EPOLL.check(epoll)


# ---------------------------------------------------------------------------
# EPOLLWAKEUP: CAP_BLOCK_SUSPEND, which a restore grants only from root's images


@pytest.fixture
def user_program(other_user: User, programs: dict[str, Path]) -> Iterator[Path]:
    """zdtm_epoll where ``other_user`` may run it."""
    top = Path(tempfile.mkdtemp(prefix="ckpt-epoll-", dir="/tmp"))
    try:
        top.chmod(0o755)
        shutil.copyfile(programs["zdtm_epoll"], top / "zdtm_epoll")
        (top / "zdtm_epoll").chmod(0o755)
        yield top / "zdtm_epoll"
    finally:
        shutil.rmtree(top, ignore_errors=True)


@needs_kernel
@pytest.mark.timeout(120)
def test_another_users_epoll_restores_as_that_user(other_user: User, user_program: Path,
                                                   spawn: Callable[..., Target], images_dir: Path,
                                                   tmp_path: Path) -> None:
    """The same target run by the second user, its images theirs: restored by root with the
    user's identity (the child opens, registers and reads its own fdinfo as the user), it
    passes its own checks."""
    from test_trust_restore import DROP_AND_EXEC, copy_images

    target = spawn([sys.executable, "-c", DROP_AND_EXEC, str(other_user.uid), str(other_user.gid), "/",
                    str(user_program)])
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    images = copy_images(images_dir, tmp_path / "theirs", other_user)

    def inspect(run: Any) -> None:
        assert int(ckpt.procfs.read_status(run.pid).uids[1]) == other_user.uid

    restore_and_check(images, tmp_path, expected, inspect=inspect)


def _add_epollwakeup(body: dict[str, Any]) -> None:
    epoll = next(f for f in body["state"]["files"] if f["kind"] == "epoll" and len(f["targets"]) > 2)
    epoll["targets"][0]["events"] |= ep.EPOLLWAKEUP


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("owner", ["root", "other"])
def test_epollwakeup_is_granted_only_from_root_images(owner: str, other_user: User, user_program: Path,
                                                      spawn: Callable[..., Target], images_dir: Path,
                                                      tmp_path: Path) -> None:
    """The images' owner adds EPOLLWAKEUP (blocks system suspend: CAP_BLOCK_SUSPEND) to a
    registration of their own process, and asks root to restore: refused.  From root's
    images it is restored where the kernel keeps it, and refused by name where it would
    drop it (CONFIG_PM_SLEEP off, as on the test VM): never dropped without a word."""
    from test_trust_restore import DROP_AND_EXEC, copy_images

    if owner == "other":
        argv = [sys.executable, "-c", DROP_AND_EXEC, str(other_user.uid), str(other_user.gid), "/", str(user_program)]
    else:
        argv = [str(user_program)]
    target = spawn(argv)
    dump_and_kill(target, images_dir)
    images = copy_images(images_dir, tmp_path / "edited", other_user if owner == "other" else None)
    edit_meta(images, 1, _add_epollwakeup)
    if owner == "root" and keeps_epollwakeup():
        # Where the kernel keeps it, root's images may have it: the restore's own check passes.
        cp = ckpt.ImageDir(images).checkpoint(1)
        files.preflight(files.plan(files.table(cp.state), files.RestoreContext(1, True, True, park_above=100)))
        return
    refusal = restore_refused(images, tmp_path)
    if owner == "other":
        assert_refused(refusal, EXIT_UNTRUSTED, r"registers fd \d+ with EPOLLWAKEUP, which needs CAP_BLOCK_SUSPEND, "
                       r"and its images do not belong to root")
    else:
        assert_refused(refusal, EXIT_UNSUPPORTED, r"EPOLLWAKEUP, which needs CAP_BLOCK_SUSPEND \(and a kernel with "
                       r"CONFIG_PM_SLEEP\): here the kernel would drop the flag without a word")


"""memfds and files deleted while open (ckpt/files/objects.py, memfd.py, ghost.py; issue 8
item 2): kept in the checkpoint as file objects, each restored as one object whatever
refers to it -- open files and mappings.

Before: a memfd or deleted file at an fd made ``dump --kill`` refuse ("fd 10 refers to
a deleted file"), a private mapping of one too, and a shared mapping came back as
anonymous shared memory: no fd and no name, writes through it no longer seen through
the fd.  The targets check themselves after SIGUSR1:

* tests/programs/zdtm_memfd.c -- memfds sealed and not, open (dup'd, reopened) and
  mapped shared and private, mapped only (a child's page in it), sealed against writes
  and mapped read-only, MFD_NOEXEC_SEAL, hugetlbfs (-H);
* tests/programs/zdtm_ghost.c -- deleted files open twice and mapped shared, mapped
  private only, and one above the ghost limit (-b).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files, ranges
from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from ckpt.files import memfd as memfd_kind
from ckpt.image import schema
from ckpt.image.schema import Object, State
from helpers import REPO_ROOT, Target, ckpt_argv, ckpt_env, require_feature, run_ckpt
from test_badinput import assert_clean_error, edit_meta
from test_restorable import one_error_line, restore_refused
from test_restore import Profile, restore_and_check, restoring, run_to_end
from test_trust_restore import (EXIT_UNTRUSTED, UserEnv, assert_refused, detached, restore_detached, user_dump,
                                wait_running)
from test_trust_restore import edit_meta as edit_user_meta
from test_trust_restore import uenv, user_site  # noqa: F401  (fixtures: the second user, ckpt's modules for it)

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_KILL_REFUSED = errors.KillRefused.exit_code
EXIT_NOT_RESTORABLE = errors.NotRestorable.exit_code
PAGE = 4096
HUGE = 2 << 20
SEALED = memfd_kind.F_SEAL_SHRINK | memfd_kind.F_SEAL_GROW | memfd_kind.F_SEAL_FUTURE_WRITE
# zdtm_memfd's memfds: name -> (seals, an fd of it or None, is mapped)
MEMFDS = {"zdtm-sealed": (SEALED, 10, True), "zdtm-noexec": (memfd_kind.F_SEAL_EXEC, 13, False),
          "zdtm-write-sealed": (memfd_kind.F_SEAL_WRITE, 14, True),
          "zdtm-mapped-only": (memfd_kind.F_SEAL_SEAL, None, True)}


def ghost_argv(programs: dict[str, Path], tmp_path: Path, *flags: str) -> list[str | Path]:
    directory = tmp_path / "dir"
    directory.mkdir(exist_ok=True)
    return [programs["zdtm_ghost"], directory, *flags]


def objects_by_name(state: State) -> dict[str, Object]:
    return {o.name: o for o in state.objects}


def file_at(state: State, fd: int) -> Any:
    entry = next(e for e in state.fds if e.fd == fd)
    return next(f for f in state.files if f.id == entry.file)


def poke(target: Target) -> None:
    """SIGUSR2: the target writes through a mapping of its memfd or deleted file (zdtm_mapped.h)."""
    os.kill(target.pid, signal.SIGUSR2)
    assert target.readline() == "poked"


def dump_twice_then_kill(target: Target, images_dir: Path, **options: Any) -> list[ckpt.DumpReport]:
    """Two dumps while it runs -- between them it writes through a mapping, which only a
    checkpoint that keeps the object whole holds -- then the last with --kill."""
    reports = [ckpt.dump(target.pid, images_dir, **options)]
    poke(target)
    reports.append(ckpt.dump(target.pid, images_dir, **options))
    reports.append(ckpt.dump(target.pid, images_dir, after="kill", **options))
    target.kill()
    assert [r.kind for r in reports] == ["full", "incremental", "incremental"], reports
    return reports


@pytest.fixture
def huge_pages() -> Iterator[None]:
    """Two free 2 MiB huge pages (nr_hugepages raised for the test, then put back)."""
    top = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
    if not top.exists():
        require_feature("2 MiB huge pages", False, f"{top} does not exist")
    before = int((top / "nr_hugepages").read_text())
    free = int((top / "free_hugepages").read_text())
    try:
        if free < 2:
            (top / "nr_hugepages").write_text(str(before + 2 - free))
        free = int((top / "free_hugepages").read_text())
        require_feature("2 MiB huge pages", free >= 2, f"only {free} free after raising nr_hugepages")
        yield
    finally:
        (top / "nr_hugepages").write_text(str(before))


# ---------------------------------------------------------------------------
# The targets check what they should; dumps leave them as they were


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", ["zdtm_memfd", "zdtm_ghost"])
@pytest.mark.parametrize("damaged", [False, True])
def test_the_targets_check_themselves(program: str, damaged: bool, programs: dict[str, Path],
                                      spawn: Callable[..., Target], tmp_path: Path) -> None:
    argv = ghost_argv(programs, tmp_path) if program == "zdtm_ghost" else [programs[program]]
    rc, lines = run_to_end(spawn([*argv, *(["-c"] if damaged else [])]))
    if damaged:
        assert rc == 1 and lines and all(line.startswith("FAIL: ") for line in lines), lines
    else:
        assert (rc, lines) == (0, ["PASS"])


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("program", ["zdtm_memfd", "zdtm_ghost"])
def test_dumps_leave_the_files_as_they_were(program: str, programs: dict[str, Path],
                                            spawn: Callable[..., Target], images_dir: Path,
                                            tmp_path: Path) -> None:
    """Reading the content goes through an open file of ckpt's own, O_NOATIME: the target's
    offsets, flags, times and content are untouched (its own checks)."""
    argv = ghost_argv(programs, tmp_path) if program == "zdtm_ghost" else [programs[program]]
    target = spawn(argv)
    for i in range(2):
        report = ckpt.dump(target.pid, images_dir)
        assert report.restorable, report.unrestorable
        if i == 0:
            poke(target)
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"] and re.fullmatch(r"page \d written after a dump", lines[0]), lines


# ---------------------------------------------------------------------------
# What a checkpoint holds


@needs_kernel
@pytest.mark.timeout(120)
def test_each_memfd_is_one_object_kept_whole_in_every_checkpoint(programs: dict[str, Path],
                                                                 spawn: Callable[..., Target],
                                                                 images_dir: Path) -> None:
    target = spawn([programs["zdtm_memfd"]])
    first = ckpt.dump(target.pid, images_dir)
    second = ckpt.dump(target.pid, images_dir)
    assert (first.kind, second.kind) == ("full", "incremental")
    for report in (first, second):
        cp = report.checkpoint
        state = cp.state
        found = {name: o for name, o in objects_by_name(state).items() if o.type == "memfd"}
        assert set(found) == set(MEMFDS), found.keys()   # (fd 2 is pytest's capture file: a ghost)
        for name, (seals, fd, mapped) in MEMFDS.items():
            obj = found[name]
            assert (obj.type, obj.seals, obj.problem, obj.huge_page) == ("memfd", seals, "", 0), obj
            if fd is not None:
                assert file_at(state, fd).kind == "memfd" and file_at(state, fd).object == obj.id
            maps = [v for v in cp.vmas if v.object == obj.id]
            assert bool(maps) == mapped, (name, maps)
            for vma in maps:
                # No page of a shared mapping is stored by address: the object holds them.
                if vma.kind == "shmem":
                    assert not ranges.clip(cp.present, vma.start, vma.end) and ranges.covers(cp.whole, vma.start,
                                                                                               vma.end)
        # Every fd of memfd A, its dup and its second open file refer to one object.
        sealed = found["zdtm-sealed"]
        assert {file_at(state, fd).object for fd in (10, 11, 12)} == {sealed.id}
        assert file_at(state, 10).id == file_at(state, 11).id != file_at(state, 12).id
        # Its data (pages 0-15 and 300) is stored, its hole is not, in each checkpoint.
        stored = ranges.normalize((o, o + n) for o, _, _, n in cp.object_stored(sealed.id))
        assert ranges.union(stored, cp.object_zero(sealed.id)) == [(0, 16 * PAGE), (300 * PAGE, 301 * PAGE)]
        assert sealed.size == (2 << 20) + 100 and stat.S_IMODE(sealed.mode) == 0o777
        assert cp.read_memory(next(v.start for v in cp.vmas if v.object == sealed.id and v.kind == "shmem")
                              + 300 * PAGE, 8) != bytes(8)
    verify = run_ckpt("verify", images_dir)
    assert verify.returncode == 0, verify.stderr
    rows = {r["fd"]: r for r in json.loads(run_ckpt("inspect", images_dir, "--fds", "--json").stdout)["fds"]}
    assert rows[10]["what"] == "the memfd memfd:zdtm-sealed" and rows[10]["restorable"], rows[10]


@needs_kernel
@pytest.mark.timeout(120)
def test_a_deleted_file_is_one_object_with_its_directory(programs: dict[str, Path],
                                                         spawn: Callable[..., Target], images_dir: Path,
                                                         tmp_path: Path) -> None:
    target = spawn(ghost_argv(programs, tmp_path))
    state = ckpt.dump(target.pid, images_dir).checkpoint.state
    found = objects_by_name(state)
    directory = tmp_path / "dir"
    g1, g2 = found[str(directory / "g1")], found[str(directory / "g2")]
    assert (g1.type, g1.problem, stat.S_IMODE(g1.mode), g1.size) == ("ghost", "", 0o640, 40 * PAGE + 123)
    assert (g1.dir.dev, g1.dir.ino) == (os.stat(directory).st_dev, os.stat(directory).st_ino)
    assert file_at(state, 10).object == file_at(state, 11).object == g1.id
    assert file_at(state, 10).kind == "ghost" and g2.problem == ""


# ---------------------------------------------------------------------------
# Restore


@needs_kernel
@pytest.mark.timeout(180)
def test_memfds_restore_as_one_object_each(programs: dict[str, Path], spawn: Callable[..., Target],
                                           images_dir: Path, tmp_path: Path) -> None:
    """The restored target's own checks: content, seals, names, flags, offsets, the hole; a
    write through memfd A's mapping between the dumps reads back through its fd after the
    restore, and so does one after the restore.  Before: ``dump --kill`` refused ("fd 10
    refers to a deleted file (/memfd:zdtm-sealed (deleted))")."""
    target = spawn([programs["zdtm_memfd"]])
    expected = Profile.of(target.pid)
    dump_twice_then_kill(target, images_dir)

    def inspect(run: Any) -> None:
        maps = Path(f"/proc/{run.pid}/maps").read_text()
        assert "/memfd:zdtm-mapped-only (deleted)" in maps and "/memfd:zdtm-sealed (deleted)" in maps
        assert os.readlink(f"/proc/{run.pid}/fd/10") == "/memfd:zdtm-sealed (deleted)"

    lines = restore_and_check(images_dir, tmp_path, expected, inspect=inspect)
    assert lines == ["page 7 written after a dump", "PASS"], lines


@needs_kernel
@pytest.mark.timeout(180)
def test_a_hugetlb_memfd_restores(huge_pages: None, programs: dict[str, Path], spawn: Callable[..., Target],
                                  images_dir: Path, tmp_path: Path) -> None:
    """MFD_HUGETLB: made again with its huge page size, filled through a mapping (hugetlbfs
    has no write())."""
    target = spawn([programs["zdtm_memfd"], "-H"])
    expected = Profile.of(target.pid)
    reports = dump_twice_then_kill(target, images_dir)
    huge = objects_by_name(reports[-1].checkpoint.state)["zdtm-huge"]
    assert (huge.huge_page, huge.size) == (HUGE, HUGE)
    restore_and_check(images_dir, tmp_path, expected)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damaged", [False, True])
def test_the_exec_target_checks_itself(damaged: bool, programs: dict[str, Path], spawn: Callable[..., Target],
                                       tmp_path: Path) -> None:
    """zdtm_exec_object's exec check can fail: with a writer open on the memfd, exec of
    it is refused (ETXTBSY)."""
    argv = [programs["zdtm_exec_object"], tmp_path, *(["-c"] if damaged else [])]
    rc, lines = run_to_end(spawn(argv))
    if damaged:
        assert (rc, lines) == (1, ["FAIL: exec of fd 10: Text file busy", "FAIL: exec of fd 11: Text file busy"])
    else:
        assert (rc, lines) == (0, ["PASS"])


@needs_kernel
@pytest.mark.timeout(180)
def test_an_executable_memfd_and_deleted_file_exec_after_restore(programs: dict[str, Path],
                                                                 spawn: Callable[..., Target],
                                                                 images_dir: Path, tmp_path: Path) -> None:
    """CRIU's zdtm memfd04/memfd05: execveat(fd, "", AT_EMPTY_PATH) of a memfd (the file
    memfd_create returned, O_RDWR, and an O_RDONLY open of it) and of a deleted script
    works after a restore.  Before: the restored O_RDWR open file was a reopen through
    /proc/self/fd, which counts as a writer (fs/open.c do_dentry_open), and exec failed
    with ETXTBSY."""
    target = spawn([programs["zdtm_exec_object"], tmp_path])
    expected = Profile.of(target.pid)
    report = ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    assert report.restorable, report.unrestorable
    kept = {(o.type, o.name) for o in report.checkpoint.state.objects}
    assert {("memfd", "zdtm-exec"), ("ghost", f"{tmp_path}/script")} <= kept, kept
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]


@needs_kernel
@pytest.mark.timeout(180)
def test_deleted_files_restore_unlinked_as_one_object_each(programs: dict[str, Path],
                                                           spawn: Callable[..., Target], images_dir: Path,
                                                           tmp_path: Path) -> None:
    """The restored target's own checks: "DIR/g1 (deleted)" at fds 10 and 11, st_nlink 0,
    mode, times, content and hole, the mapping the same file as the fds.  The directory is
    as it was: the restore made each file there and unlinked it."""
    target = spawn(ghost_argv(programs, tmp_path))
    expected = Profile.of(target.pid)
    dump_twice_then_kill(target, images_dir)
    directory = tmp_path / "dir"
    assert list(directory.iterdir()) == []

    def inspect(run: Any) -> None:
        assert os.readlink(f"/proc/{run.pid}/fd/10") == f"{directory}/g1 (deleted)"
        assert list(directory.iterdir()) == []

    lines = restore_and_check(images_dir, tmp_path, expected, inspect=inspect)
    assert lines == ["page 2 written after a dump", "PASS"], lines
    assert list(directory.iterdir()) == []


@needs_kernel
@pytest.mark.timeout(180)
def test_a_deleted_file_whose_name_is_taken_comes_back_under_another(programs: dict[str, Path],
                                                                     spawn: Callable[..., Target],
                                                                     images_dir: Path, tmp_path: Path) -> None:
    """A new file has the name now: it is left alone (O_EXCL), the object is made under
    another name and unlinked, and the restore says so."""
    target = spawn(ghost_argv(programs, tmp_path))
    dump_twice_then_kill(target, images_dir)
    taken = tmp_path / "dir" / "g1"
    taken.write_bytes(b"someone else's")
    result = restore_detached(images_dir, tmp_path)
    with detached(result) as pid:
        wait_running(pid)
        link = os.readlink(f"/proc/{pid}/fd/10")
        assert link.startswith(f"{taken}.ckpt-") and link.endswith(" (deleted)"), link
        assert os.pread(os.open(f"/proc/{pid}/fd/10", os.O_RDONLY), 4, 0) != b"some"
    assert re.search(rf"the deleted file {re.escape(str(taken))} comes back as {re.escape(str(taken))}\.ckpt-\d+ "
                     r"\(deleted\): another file has its name now", result.stderr), result.stderr
    assert taken.read_bytes() == b"someone else's" and sorted(p.name for p in taken.parent.iterdir()) == ["g1"]


# ---------------------------------------------------------------------------
# Refused by name


@needs_kernel
@pytest.mark.timeout(180)
def test_a_deleted_file_above_the_ghost_limit_is_refused_by_name(programs: dict[str, Path],
                                                                spawn: Callable[..., Target], images_dir: Path,
                                                                tmp_path: Path) -> None:
    """2 MiB of data, more than the default limit (1 MiB): ``dump --kill`` refuses naming the
    file and the option, the target runs on; restore refuses by the same name.  With a
    higher ``--ghost-limit`` it is kept and restores."""
    target = spawn(ghost_argv(programs, tmp_path, "-b"))
    expected = Profile.of(target.pid)
    big = tmp_path / "dir" / "big"
    reason = (rf"fd 12 refers to the deleted file {re.escape(str(big))}: its 2,097,152 bytes of data are more "
              r"than the ghost limit \(1,048,576 bytes; dump --ghost-limit\)")
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json")
    assert result.returncode == EXIT_KILL_REFUSED, result.stderr
    assert re.search(reason, one_error_line(result))
    assert target.alive()
    refused = restore_refused(images_dir, tmp_path)
    assert refused.returncode == EXIT_NOT_RESTORABLE and re.search(reason, one_error_line(refused)), refused.stderr
    bad = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--ghost-limit", "lots")
    assert bad.returncode == errors.UsageError.exit_code and "not a size" in bad.stderr, bad.stderr

    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--ghost-limit", "2M", "--json")
    assert result.returncode == 0, result.stderr
    target.kill()
    assert objects_by_name(ckpt.ImageDir(images_dir).checkpoints[-1].state)[str(big)].problem == ""
    restore_and_check(images_dir, tmp_path, expected)


@needs_kernel
@pytest.mark.timeout(120)
def test_a_ghost_whose_directory_is_gone_is_refused_by_name(spawn: Callable[..., Target], images_dir: Path,
                                                            tmp_path: Path) -> None:
    """A restore makes a deleted file again in its directory: without one, the dump refuses."""
    directory = tmp_path / "gone"
    directory.mkdir()
    script = ("import os, sys, time; d = sys.argv[1]; fd = os.open(d + '/f', os.O_RDWR | os.O_CREAT); "
              "os.write(fd, b'x'); os.dup2(fd, 9); os.close(fd); os.unlink(d + '/f'); os.rmdir(d); "
              "print('ready', os.getpid(), flush=True); time.sleep(600)")
    target = spawn([sys.executable, "-c", script, directory])
    report = ckpt.dump(target.pid, images_dir)
    assert any(re.fullmatch(rf"fd 9 refers to the deleted file {re.escape(str(directory))}/f: its directory "
                            rf"{re.escape(str(directory))} cannot be opened \(No such file or directory\): a "
                            r"restore makes it again there", why) for why in report.unrestorable), report.unrestorable


# ---------------------------------------------------------------------------
# Trust: what a user's images may ask


@needs_kernel
@pytest.mark.timeout(240)
def test_a_users_deleted_file_comes_back_as_theirs_and_only_where_they_may_write(
        uenv: UserEnv, programs: dict[str, Path], spawn: Callable[..., Target], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """The user dumps their own zdtm_ghost (-n: each deleted file has an fd, which a dump
    without CAP_CHECKPOINT_RESTORE needs).  Root restores it as the user: the file is the
    user's, made in the user's directory.  An image edited to give the file to root comes
    back the user's, with a note; one edited to make it in a directory of root's is refused
    before anything is made, and that directory stays empty."""
    shutil.copyfile(programs["zdtm_ghost"], uenv.bin / "zdtm_ghost")
    (uenv.bin / "zdtm_ghost").chmod(0o755)
    directory = uenv.home / "dir"
    directory.mkdir()
    uenv.user.owns(directory)
    target = spawn(uenv.argv("zdtm_ghost", directory, "-n"))
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    obj = objects_by_name(ckpt.ImageDir(images).checkpoint(1).state)[str(directory / "g1")]
    assert (obj.uid, obj.problem) == (uenv.user.uid, "")
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        st = os.stat(f"/proc/{pid}/fd/10")
        assert (st.st_uid, st.st_gid, st.st_nlink) == (uenv.user.uid, uenv.user.gid, 0)

    def to_root(body: dict[str, Any]) -> None:
        ghost = next(o for o in body["state"]["objects"] if o["name"].endswith("/g1"))
        ghost["uid"], ghost["gid"], ghost["mode"] = 0, 0, ghost["mode"] | stat.S_ISUID

    meta = images / "000001" / "meta.ckpt"
    original = meta.read_bytes()
    edit_user_meta(meta, to_root)
    result = restore_detached(images, tmp_path, name="to-root")
    with detached(result) as pid:
        wait_running(pid)
        st = os.stat(f"/proc/{pid}/fd/10")
        assert (st.st_uid, st.st_gid) == (uenv.user.uid, uenv.user.gid), "the file was given away"
    assert f"comes back owned by uid {uenv.user.uid} gid {uenv.user.gid} (was uid 0 gid 0)" in result.stderr

    roots = Path(tempfile.mkdtemp(prefix="ckpt-roots-", dir="/tmp"))   # root's, 0755: the user may enter
    request.addfinalizer(lambda: shutil.rmtree(roots, ignore_errors=True))
    roots.chmod(0o755)

    def elsewhere(body: dict[str, Any]) -> None:
        ghost = next(o for o in body["state"]["objects"] if o["name"].endswith("/g1"))
        ghost["name"] = f"{roots}/g1"
        ghost["dir"] = {"dev": os.stat(roots).st_dev, "ino": os.stat(roots).st_ino, "mnt_id": None}

    meta.write_bytes(original)
    uenv.user.owns(meta)
    edit_user_meta(meta, elsewhere)
    assert_refused(restore_detached(images, tmp_path, name="elsewhere"), EXIT_UNTRUSTED,
                   rf"the directory of the deleted file {re.escape(str(roots))}/g1: uid {uenv.user.uid} "
                   rf"\(gid {uenv.user.gid}\) may not create a file in {re.escape(str(roots))}")
    assert list(roots.iterdir()) == []


# ---------------------------------------------------------------------------
# The records, and what readers refuse


def test_the_records_are_in_the_schema() -> None:
    assert schema.FILE_RECORDS["memfd"] is schema.FILE_MEMFD is schema.FILE_RECORDS["ghost"]
    assert files.kind_named("memfd") is not None and files.kind_named("ghost") is not None
    assert schema.TASK_STATE_VERSION >= 5 and schema.OBJECT in schema.RECORDS


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,mention", [
    ("content dropped", "has no content for object"),
    ("unknown object", "which no object of state.objects has"),
    ("object on an anonymous mapping", "is set on a mapping of kind anon"),
    ("extent outside its frames", "object_extents (object"),
    ("a seal on a ghost", "are set on a file that is not a memfd"),
])
def test_a_malformed_object_is_refused_on_open(case: str, mention: str, programs: dict[str, Path],
                                               spawn: Callable[..., Target], images_dir: Path,
                                               tmp_path: Path) -> None:
    target = spawn(ghost_argv(programs, tmp_path))
    ckpt.dump(target.pid, images_dir)

    def damage(body: dict[str, Any]) -> None:
        if case == "content dropped":
            body["object_extents"].pop()
        elif case == "unknown object":
            next(v for v in body["vmas"] if v.get("object"))["object"] = 999
        elif case == "object on an anonymous mapping":
            next(v for v in body["vmas"] if v["kind"] == "anon")["object"] = 1
        elif case == "extent outside its frames":
            record = body["object_extents"][0]
            record["extents"] = (0).to_bytes(8, "little") + (1).to_bytes(8, "little") + \
                (10 ** 6).to_bytes(8, "little") + (0).to_bytes(8, "little")
        else:
            body["state"]["objects"][0]["seals"] = 1

    edit_meta(images_dir, 1, damage)
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        ckpt.ImageDir(images_dir).checkpoint(1)
    assert_clean_error(run_ckpt("verify", images_dir), errors.CorruptImage.exit_code, (mention,))


@needs_kernel
@pytest.mark.timeout(180)
def test_without_map_files_a_memfd_at_an_fd_is_still_kept_whole(programs: dict[str, Path],
                                                                 spawn: Callable[..., Target], images_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE /proc/PID/map_files cannot be opened:
    a memfd open at an fd is read through it, whole, and its mappings map it; one only mapped
    is stored from the page tables as shared memory, with the note it had (its page a child
    wrote is then lost: the only check the restored target fails)."""
    target = spawn([programs["zdtm_memfd"]])
    expected = Profile.of(target.pid)
    argv = ["setpriv", "--inh-caps=-sys_admin,-checkpoint_restore", "--bounding-set=-sys_admin,-checkpoint_restore",
            *ckpt_argv("dump", "-D", images_dir, "--json", "--kill", "--pid", target.pid)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ckpt_env(), cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    target.kill()
    notes = [n for n in json.loads(result.stdout)["notes"] if "may be missing" in n]
    assert len(notes) == 1 and "/memfd:zdtm-mapped-only (deleted)" in notes[0], notes
    cp = ckpt.ImageDir(images_dir).checkpoints[-1]
    found = objects_by_name(cp.state)
    assert "zdtm-mapped-only" not in found and found["zdtm-sealed"].problem == ""
    assert all(v.object is not None for v in cp.vmas if "zdtm-sealed" in v.path or "write-sealed" in v.path)
    with restoring(images_dir, tmp_path, expected) as run:
        assert run.go() == 1
        assert run.output() == ["FAIL: C: page 3 differs"]


@needs_kernel
@pytest.mark.timeout(60)
def test_verify_checks_the_content_of_a_file_object(programs: dict[str, Path], spawn: Callable[..., Target],
                                                   images_dir: Path, tmp_path: Path) -> None:
    """An object's content is in the frames of pages.ckpt: their checksums cover it."""
    target = spawn(ghost_argv(programs, tmp_path))
    cp = ckpt.dump(target.pid, images_dir).checkpoint
    ok = run_ckpt("verify", images_dir)
    assert ok.returncode == 0 and re.search(r"checkpoint 1 .*: ok, .*, \d+ file objects", ok.stdout), ok.stdout
    g1 = objects_by_name(cp.state)[str(tmp_path / "dir" / "g1")]
    extents, _ = cp.meta.objects[g1.id]
    frame = extents[2]   # (offset, npages, frame, page) of its first extent
    where = cp.meta.frames[4 * frame] + cp.meta.frames[4 * frame + 1] // 2
    pages = cp.path / "pages.ckpt"
    data = bytearray(pages.read_bytes())
    data[where] ^= 0xFF
    pages.write_bytes(bytes(data))
    line = assert_clean_error(run_ckpt("verify", images_dir), errors.CorruptImage.exit_code, ("checkpoint 1",))
    assert "crc" in line.lower() or "checksum" in line.lower(), line


# A file made with O_TMPFILE: never linked, its f_flags keep __O_TMPFILE | O_DIRECTORY.
# It waits in pause() with a handler, as the C targets do, not in sigwait(): while in
# rt_sigtimedwait the kernel unblocks the awaited signals (kernel/signal.c
# do_sigtimedwait), so SigBlk read just after "ready" (before the wait began) and read
# from the restored process (inside it) differed, and the restore check waited in vain.
TMPFILE_TARGET = r"""
import os, signal, sys
go = []
signal.signal(signal.SIGUSR1, lambda *_: go.append(1))
fd = os.open(sys.argv[1], os.O_RDWR | os.O_TMPFILE, 0o600)
os.write(fd, b"tmpfile data")
print("ready", os.getpid(), flush=True)
while not go:
    signal.pause()
ok = os.pread(fd, 100, 0) == b"tmpfile data" and os.fstat(fd).st_nlink == 0
os.write(fd, b"!")
print("PASS" if ok and os.pread(fd, 100, 0) == b"tmpfile data!" else "FAIL: its content", flush=True)
"""


@needs_kernel
@pytest.mark.timeout(120)
def test_a_file_made_with_o_tmpfile_comes_back(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """Its recorded flags hold O_TMPFILE's O_DIRECTORY bit: the restore's reopen failed with
    ENOTDIR (a raw NotADirectoryError; zdtm unlink_fstat041)."""
    where = tmp_path / "dir"
    where.mkdir()
    target = spawn([sys.executable, "-c", TMPFILE_TARGET, str(where)])
    expected = Profile.of(target.pid)
    report = ckpt.dump(target.pid, images_dir, after="kill")
    target.kill()
    assert report.restorable, report.unrestorable
    assert restore_and_check(images_dir, tmp_path, expected) == ["PASS"]

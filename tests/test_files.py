"""Open files and the fd table (ckpt/files): fds that share an open file description
are recorded once and restored as one; close-on-exec is per fd; older images restore.

The target, tests/programs/zdtm_fds.c, holds four fds of one description (dup,
dup2, F_DUPFD_CLOEXEC), a second description of the same file, a pair with
O_APPEND|O_NONBLOCK, and two fds inherited from its parent that share one
description; after SIGUSR1 it checks, by their effects (lseek, F_SETFL), that
the shared ones are shared and the others are not.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt import errors, files, procfs
from ckpt._sys.kcmp import kcmp_file
from ckpt.files.dump import fd_copies
from ckpt.image import schema
from ckpt.image.schema import State
from ckpt.live import FrozenProcess
from helpers import Target, canned_state, run_ckpt
from test_badinput import assert_clean_error, edit_meta
from test_restore import Profile, dump_and_kill, holding, restore_and_check, run_to_end

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

SHARED = (10, 11, 12, 13)   # zdtm_fds: one description (dup, dup2, F_DUPFD_CLOEXEC)
OWN = 14                    # the same file opened again: its own description
APPEND = (15, 16)           # O_WRONLY|O_APPEND|O_NONBLOCK, dup2'd
PATH_ONLY = 17              # O_PATH (restored without an offset: lseek fails on it)
INHERITED_OFFSET = 777


class InheritingTarget(Target):
    """A Target started with ``pass_fds``: the fds it inherits from this process (fork,
    then exec) are open file descriptions this process opened."""

    def __init__(self, argv: Sequence[str | os.PathLike[str]], pass_fds: Sequence[int]) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = Path(self.argv[0]).name
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, pass_fds=tuple(pass_fds))
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, name=f"{self.name}-{self.pid}-stdout",
                                        daemon=True)
        self._reader.start()


def start_fds_target(programs: dict[str, Path], spawn: Callable[..., Target], tmp_path: Path
                     ) -> tuple[Target, tuple[int, int]]:
    """zdtm_fds with two inherited fds of one description of its data file, at
    INHERITED_OFFSET; returns the target and the two fd numbers."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"")
    fd = os.open(data, os.O_RDWR)
    # Two numbers free in this process, above any the target sets up itself.
    a = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
    b = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
    os.close(fd)
    try:
        os.lseek(a, INHERITED_OFFSET, os.SEEK_SET)
        argv = [programs["zdtm_fds"], data, f"{a},{b},{INHERITED_OFFSET}"]
        target = spawn(argv, cls=lambda argv: InheritingTarget(argv, (a, b)))
    finally:
        os.close(a)
        os.close(b)
    return target, (a, b)


def file_of(state: State, fd: int) -> dict[str, Any]:
    entry = next(e for e in state.fds if e.fd == fd)
    return next(f for f in state.files if f["id"] == entry.file)


# ---------------------------------------------------------------------------
# The target checks what it should


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", [None, "share"])
def test_the_target_checks_sharing(damage: str | None, programs: dict[str, Path], spawn: Callable[..., Target],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Straight through it passes; with fd 11 reopened apart from 10, 12 and 13 it fails."""
    if damage:
        monkeypatch.setenv("ZDTM_CORRUPT", damage)
    target, _ = start_fds_target(programs, spawn, tmp_path)
    rc, lines = run_to_end(target)
    if damage is None:
        assert rc == 0 and lines[-1:] == ["PASS"], lines
    else:
        assert rc == 1 and any("after lseek on fd 11" in line for line in lines), lines


def test_kcmp_tells_shared_descriptions_apart(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a = os.open(path, os.O_RDONLY)
    b, c = os.dup(a), os.open(path, os.O_RDONLY)
    try:
        me = os.getpid()
        assert kcmp_file(me, a, me, b) == 0
        assert kcmp_file(me, a, me, c) != 0
        assert kcmp_file(me, a, me, c) == -kcmp_file(me, c, me, a)   # an order, for sorting
        with pytest.raises(OSError):
            kcmp_file(me, a, me, 10_000)
    finally:
        for fd in (a, b, c):
            os.close(fd)


def test_ckpt_check_lists_kcmp() -> None:
    data = json.loads(run_ckpt("check", "--json", timeout=60).stdout)
    kcmp = next(f for f in data["features"] if f["name"] == "kcmp")
    assert kcmp["required"] and kcmp["available"], kcmp


# ---------------------------------------------------------------------------
# Dump: one record per open file description


@needs_kernel
@pytest.mark.timeout(60)
def test_shared_descriptions_are_recorded_once(programs: dict[str, Path], spawn: Callable[..., Target],
                                                images_dir: Path, tmp_path: Path) -> None:
    target, inherited = start_fds_target(programs, spawn, tmp_path)
    state = ckpt.dump(target.pid, images_dir).checkpoint.state
    assert state.version == schema.TASK_STATE_VERSION >= schema.FILES_MODEL_VERSION
    ids = {e.fd: e.file for e in state.fds}
    assert len({ids[n] for n in SHARED}) == 1, ids
    assert len({ids[SHARED[0]], ids[OWN], ids[APPEND[0]], ids[inherited[0]]}) == 4, ids
    assert ids[APPEND[0]] == ids[APPEND[1]] and ids[inherited[0]] == ids[inherited[1]], ids
    cloexec = {e.fd for e in state.fds if e.cloexec}
    assert cloexec & {*SHARED, OWN, *APPEND, *inherited} == {13, OWN}, cloexec
    shared = file_of(state, 10)
    assert shared["kind"] == "regular" and shared["target"] == str(tmp_path / "data.bin")
    assert shared["pos"] == 1000 and shared["flags"] & os.O_ACCMODE == os.O_RDWR
    assert not shared["flags"] & os.O_CLOEXEC, "close-on-exec belongs to the fd, not the open file"
    assert file_of(state, OWN)["pos"] == 500 and file_of(state, inherited[0])["pos"] == INHERITED_OFFSET
    assert file_of(state, 15)["flags"] & (os.O_APPEND | os.O_NONBLOCK) == os.O_APPEND | os.O_NONBLOCK
    assert file_of(state, PATH_ONLY)["flags"] & os.O_PATH and ids[PATH_ONLY] not in (ids[10], ids[OWN])
    assert [f["id"] for f in state.files] == list(range(1, len(state.files) + 1))
    # The harness's pipes at 0 and 1: recorded, but a restore replaces fds 0-2, so nothing of
    # them is copied (ckpt/files/pipe.py).
    assert file_of(state, 0).kind == "pipe" and file_of(state, 0).data is None


@needs_kernel
@pytest.mark.timeout(60)
def test_dumps_leave_the_target_as_it_was(programs: dict[str, Path], spawn: Callable[..., Target],
                                          images_dir: Path, tmp_path: Path) -> None:
    """Two dumps while it runs change none of what it checks (offsets, flags, fds)."""
    target, _ = start_fds_target(programs, spawn, tmp_path)
    ckpt.dump(target.pid, images_dir)
    ckpt.dump(target.pid, images_dir)
    rc, lines = run_to_end(target)
    assert rc == 0 and lines[-1:] == ["PASS"], lines


@needs_kernel
@pytest.mark.timeout(120)
def test_many_fds_are_grouped_exactly(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """300 fds of one file: 100 descriptions opened apart, each dup'd twice, the dups in
    another order than the opens.  kcmp sorts them into exactly those 100."""
    path = tmp_path / "f"
    path.write_bytes(b"y" * 4096)
    script = (
        "import os, sys, time\n"
        f"opens = [os.open({str(path)!r}, os.O_RDONLY) for _ in range(100)]\n"
        "for i, fd in enumerate(reversed(opens)):\n"
        "    os.lseek(fd, i, 0)\n"
        "dups = [os.dup(fd) for fd in reversed(opens)] + [os.dup(fd) for fd in opens]\n"
        "print('ready', os.getpid(), flush=True)\n"
        "time.sleep(600)\n")
    target = spawn([sys.executable, "-c", script], cls=Target)
    state = ckpt.dump(target.pid, images_dir).checkpoint.state
    mine = [f for f in state.files if f["target"] == str(path)]
    assert len(mine) == 100
    by_file: dict[int, list[int]] = {}
    for e in state.fds:
        by_file.setdefault(e.file, []).append(e.fd)
    assert sorted(len(by_file[f["id"]]) for f in mine) == [3] * 100
    # Each group is one description: its three fds had one offset (and the groups all differ).
    assert sorted(f["pos"] for f in mine) == list(range(100))
    for f in mine:
        offsets = {procfs.read_fdinfo(target.pid, n).pos for n in by_file[f["id"]]}
        assert offsets == {f["pos"]}


@needs_kernel
@pytest.mark.timeout(60)
def test_a_probe_hands_over_the_fd_itself(spawn: Callable[..., Target]) -> None:
    """Probe.getfd(): the target's fd, taken with pidfd_getfd on first use, closed after."""
    script = ("import os, time\nr, w = os.pipe()\nos.dup2(r, 40)\nos.write(w, b'abc')\n"
              "print('ready', os.getpid(), flush=True)\ntime.sleep(600)\n")
    target = spawn([sys.executable, "-c", script], cls=Target)
    with FrozenProcess(target.pid):
        opened = {f.fd: f for f in procfs.read_open_files(target.pid)}
        with fd_copies(target.pid) as getfd:
            probe = files.Probe(target.pid, opened[40], getfd)
            mine = probe.getfd()
            assert probe.getfd() == mine, "taken once"
            assert os.fstat(mine).st_ino == opened[40].ino
            assert probe.fdinfo().flags == opened[40].flags
        with pytest.raises(OSError):
            os.fstat(mine)
    assert procfs.read_fdinfo(target.pid, 40).pos == 0


# ---------------------------------------------------------------------------
# Restore: one open file per description, at each of its fds


class _PipeReadEnds(files.FileKind):
    """A kind made up for the test: opens a pipe, keeps the write end for later."""

    names = ("test-pipe",)
    parked_at = -1

    def open(self, planned: files.PlannedFile, ctx: files.RestoreContext) -> int:
        r, w = os.pipe()
        ctx.park(("write end", planned.id), w)
        self.parked_at = ctx.parked[("write end", planned.id)]
        return r


def test_install_places_one_open_file_at_each_of_its_fds() -> None:
    """files.install (what the restore child runs): one open per file, dup2'd to each
    of its numbers with that fd's close-on-exec; an fd a kind parked is kept above
    every number being placed, and closed if nothing asked for it."""
    numbers = (901, 902, 905)
    assert all(not os.path.exists(f"/proc/self/fd/{n}") for n in numbers), "the test needs free fds"
    ctx = files.RestoreContext(1, True, park_above=950)
    record = {"id": 1, "kind": "test-pipe", "target": "pipe:[0]"}
    kind = _PipeReadEnds()
    planned = files.PlannedFile(1, record, kind, numbers, (True, False, True))
    before = set(os.listdir("/proc/self/fd"))
    try:
        files.install(files.FdPlan((planned,), ctx))
        me = os.getpid()
        assert kcmp_file(me, 901, me, 902) == 0 and kcmp_file(me, 902, me, 905) == 0
        assert [os.get_inheritable(n) for n in numbers] == [False, True, False]
        assert ctx.opened == {1: 901} and ctx.parked == {} and kind.parked_at >= 950
        # Nothing else left open: the pipe's first fd (closed once placed) and its
        # write end (parked at >= 950, then closed: no file asked for it).
        assert set(os.listdir("/proc/self/fd")) - before == {str(n) for n in numbers}
    finally:
        for n in numbers:
            if os.path.exists(f"/proc/self/fd/{n}"):
                os.close(n)




@needs_kernel
@pytest.mark.timeout(120)
def test_shared_descriptions_restore_as_one(programs: dict[str, Path], spawn: Callable[..., Target],
                                            images_dir: Path, tmp_path: Path) -> None:
    """The restored target's own checks: fds 10-13 one description (lseek on one moves the
    others, F_SETFL shows on all), 14 its own, 15/16 one with O_APPEND|O_NONBLOCK, 17
    O_PATH, the inherited pair one; close-on-exec on 13 and 14 only.  Before: four
    descriptions for 10-13, two for 15/16 and for the pair, and fd 17 made the restore
    child fail (lseek on an O_PATH fd: EBADF)."""
    target, inherited = start_fds_target(programs, spawn, tmp_path)
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)

    def inspect(run: Any) -> None:
        link = {n: os.readlink(f"/proc/{run.pid}/fd/{n}") for n in (*SHARED, OWN, *APPEND, PATH_ONLY, *inherited)}
        assert set(link.values()) == {str(tmp_path / "data.bin")}, link

    restore_and_check(images_dir, tmp_path, expected, inspect=inspect)


@needs_kernel
@pytest.mark.timeout(120)
def test_an_image_of_state_version_1_still_restores(programs: dict[str, Path], spawn: Callable[..., Target],
                                                     images_dir: Path, tmp_path: Path) -> None:
    """A checkpoint in the layout of state version 1 (one record per fd, no ``files``),
    written here from a real dump: each fd is its own open file, as version 1 restored it.
    zdtm_single checks its fds 10 and 11 (two descriptions), their flags, offsets and
    close-on-exec."""
    from test_restore import single_argv

    target = spawn(single_argv(programs, tmp_path))
    expected = Profile.of(target.pid)
    dump_and_kill(target, images_dir)
    edit_meta(images_dir, 1, lambda body: to_version_1(body["state"]))
    cp = ckpt.ImageDir(images_dir).checkpoint(1)
    assert cp.state.version == 1 and cp.state.files is None and cp.state.fds[0].target
    table = files.table(cp.state)
    assert [(e.fd, e.file) for e in table.fds if e.fd >= 10] == [(10, 4), (11, 5)], table.fds
    rows = {r["fd"]: r for r in json.loads(run_ckpt("inspect", images_dir, "--fds", "--json").stdout)["fds"]}
    assert rows[11]["cloexec"] and not rows[10]["cloexec"] and rows[10]["offset"] == 12345
    restore_and_check(images_dir, tmp_path, expected)


def to_version_1(state: dict[str, Any]) -> None:
    """Rewrite a task state in the layout of version 1, as ckpt wrote it before ckpt/files."""
    by_id = {f["id"]: f for f in state.pop("files")}
    old = []
    for entry in state["fds"]:
        f = by_id[entry["file"]]
        kind = f["type"] if f["kind"] == "unsupported" else f["kind"]
        old.append({
            "fd": entry["fd"], "target": f["target"], "kind": kind, "anon_type": f.get("anon_type", ""),
            "flags": f["flags"] | (os.O_CLOEXEC if entry["cloexec"] else 0), "pos": f["pos"],
            "deleted": f.get("deleted", False), "dev": f["dev"], "ino": f["ino"], "rdev": f["rdev"],
            "size": f.get("size", 0), "mtime_ns": f.get("mtime_ns", 0), "mnt_id": f.get("mnt_id"),
            "mode": f["mode"], "is_regular": kind == "regular", "locks": f.get("locks", []),
            "supported": f["kind"] != "unsupported", "unsupported_reason": "",
        })
    state["fds"] = old
    state["version"] = 1


# ---------------------------------------------------------------------------
# inspect --fds


@needs_kernel
@pytest.mark.timeout(60)
def test_inspect_fds(spawn: Callable[..., Target], images_dir: Path, tmp_path: Path) -> None:
    """The fd table as restore sees it: shared open files, close-on-exec, offsets, what is
    refused and why, fds 0-2 replaced; --checkpoint picks an older table."""
    log, data = tmp_path / "log", tmp_path / "data"
    data.write_bytes(b"z" * 100)
    script = (
        "import os, sys, time\n"
        f"out = os.dup(1)\nlog = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)\n"
        "os.dup2(log, 1)\nos.dup2(log, 25)\n"
        f"d = os.open({str(data)!r}, os.O_RDONLY)\nos.lseek(d, 42, 0)\nos.dup2(d, 30, inheritable=True)\n"
        "r, w = os.pipe()\nos.dup2(r, 40)\n"
        "os.write(out, b'ready %d\\n' % os.getpid())\n"
        "sys.stdin.readline()\nos.close(30)\nos.write(out, b'closed\\n')\ntime.sleep(600)\n")
    target = spawn([sys.executable, "-c", script], cls=Target)
    # Both ends of the pipe are the target's: it would restore; a copy of its read end in
    # this process makes it one a restore refuses (ckpt/files/pipe.py).
    with holding(target.pid, 40):
        ckpt.dump(target.pid, images_dir)
    target.send("")
    assert target.readline() == "closed"
    ckpt.dump(target.pid, images_dir)

    newest = json.loads(run_ckpt("inspect", images_dir, "--fds", "--json").stdout)
    first = json.loads(run_ckpt("inspect", images_dir, "--fds", "--json", "--checkpoint", "1").stdout)
    assert (newest["checkpoint"], first["checkpoint"]) == (2, 1)
    rows = {r["fd"]: r for r in first["fds"]}
    assert 30 in rows and 30 not in {r["fd"] for r in newest["fds"]}
    d, dup = next(r for r in first["fds"] if r["what"] == f"the file {data}" and r["fd"] != 30), rows[30]
    assert d["file"] == dup["file"] and d["shared_with"] == [30] and dup["shared_with"] == [d["fd"]]
    assert d["offset"] == dup["offset"] == 42 and d["kind"] == "regular" and d["flags_text"].startswith("O_RDONLY")
    assert d["cloexec"] and not dup["cloexec"] and d["restorable"] and d["restore"].startswith("restored")
    assert rows[40]["kind"] == "pipe" and not rows[40]["restorable"]
    # The pipe's read end, dup2'd to 40: one open file, refused once, naming both fds.
    assert re.match(rf"fds \d+, 40 are a pipe \(pipe:\[\d+\]\), the read end, also open in pid {os.getpid()} ",
                    rows[40]["reasons"][0]), rows[40]
    assert rows[1]["file"] == rows[25]["file"] and rows[1]["restore"].startswith("replaced")
    log_fd = next(n for n in rows[25]["shared_with"] if n != 1)   # the open() before the dup2s
    assert rows[25]["restore"] == f"restored, one open file with fd {log_fd} (no longer shared with fd 1, replaced)"
    assert rows[0]["restorable"] and rows[0]["what"].startswith("a pipe")

    text = run_ckpt("inspect", images_dir, "--fds", "--checkpoint", "1")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("checkpoint 1 (pid ")
    assert lines[1].split() == ["FD", "FILE", "KIND", "FLAGS", "OFFSET", "CLOEXEC", "WHAT", "RESTORE"]
    row30 = next(line.split() for line in lines[2:] if line.split()[0] == "30")
    assert row30[1:6] == [str(dup["file"]), "regular", dup["flags_text"], "42", "no"], row30
    assert any(line.split()[0] == "40" and ", 40 are a pipe" in line for line in lines[2:])

    verdict = ckpt.ImageDir(images_dir).checkpoint(1).state
    notes = ckpt.restorability.assess(verdict, []).notes
    assert f"fds {log_fd}, 25 shared the file {log} with fd 1, which a restore replaces: fds {log_fd}, 25 get it " \
        "reopened, no longer sharing its offset and status flags" in notes, notes

    usage = run_ckpt("inspect", images_dir, "--checkpoint", "1")
    assert_clean_error(usage, errors.UsageError.exit_code, ("--checkpoint goes with --fds",))


# ---------------------------------------------------------------------------
# Images: what readers refuse, and kinds they do not know


def test_a_kind_this_ckpt_does_not_know_is_refused_by_name() -> None:
    state = {"version": schema.TASK_STATE_VERSION, "threads": [{"tid": 10}],
             "process": {"pid": 10, "creds": {"seccomp": 0}},
             "files": [{"id": 1, "kind": "hologram", "target": "hologram:[5]", "flags": 0, "pos": 0,
                        "mode": 0o10600, "dev": 0, "ino": 5, "rdev": 0, "buffered": b"x"}],
             "fds": [{"fd": 3, "file": 1, "cloexec": False}, {"fd": 7, "file": 1, "cloexec": True}]}
    schema.FILE.check(state["files"][0])   # read as its common fields
    verdict = ckpt.restorability.assess(canned_state(state), [])
    assert verdict.reasons == ("fds 3, 7 are an open file of kind 'hologram' (hologram:[5]), a kind of open file "
                               "this ckpt does not know (the checkpoint was written by a newer ckpt?)",)


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["fd-of-no-file", "file-of-no-fd", "file-id-twice", "file-without-kind-fields"])
def test_a_malformed_fd_table_is_refused_on_open(case: str, programs: dict[str, Path],
                                                 spawn: Callable[..., Target], images_dir: Path,
                                                 tmp_path: Path) -> None:
    target, _ = start_fds_target(programs, spawn, tmp_path)
    ckpt.dump(target.pid, images_dir)
    edits: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
        "fd-of-no-file": (lambda s: s["fds"][0].__setitem__("file", 999), "state.fds[0].file is 999"),
        "file-of-no-fd": (lambda s: s["files"].append({**s["files"][-1], "id": len(s["files"]) + 1}),
                          "which no fd refers to"),
        "file-id-twice": (lambda s: s["files"][1].__setitem__("id", 1), "state.files[1].id is 1 again"),
        "file-without-kind-fields": (lambda s: next(f for f in s["files"] if f["kind"] == "regular").pop("size"),
                                     "size is missing"),
    }
    edit, mention = edits[case]
    edit_meta(images_dir, 1, lambda body: edit(body["state"]))
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        ckpt.ImageDir(images_dir).checkpoint(1)
    assert_clean_error(run_ckpt("inspect", images_dir, "--fds"), errors.CorruptImage.exit_code, (mention,))


# A process holding what no path gives back: an nsfs file, an entry of its own /proc
# directory, and a working directory it deleted.
PSEUDO_TARGET = r"""
import os, sys, time
d = sys.argv[1]
os.mkdir(d)
ns = os.open("/proc/self/ns/net", os.O_RDONLY)
status = os.open("/proc/self/status", os.O_RDONLY)
os.chdir(d)
os.rmdir(d)
print("ready", os.getpid(), flush=True)
while True:
    time.sleep(1)
"""


def test_files_no_path_gives_back_are_refused_at_the_dump(spawn: Callable[..., Target], images_dir: Path,
                                                          tmp_path: Path) -> None:
    """An nsfs file ("net:[...]"), /proc/PID/status and a deleted working directory used
    to pass the dump and fail the restore (after dump --kill had killed the process):
    each is now refused by name at the dump, which leaves the process running."""
    target = spawn([sys.executable, "-c", PSEUDO_TARGET, str(tmp_path / "gone")])
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill")
    assert result.returncode == 10, result.stderr
    assert re.search(r"fd \d+ is net:\[\d+\], a file with no path to open again", result.stderr), result.stderr
    assert re.search(rf"fd \d+ is /proc/{target.pid}/status, an entry of a process's /proc directory",
                     result.stderr), result.stderr
    assert f"its working directory {tmp_path / 'gone'} (deleted) was deleted" in result.stderr, result.stderr
    assert target.alive()

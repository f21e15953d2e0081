"""Trust at restore (issue 7: items 1, 2, 13 and the restore part of 8).

Images are data: whoever can write them may have edited them.  These tests
play the attacker with a real second user (``other_user``), who runs and dumps
their own process with ckpt (as that user), edits or swaps things, and asks
root to restore:

* item 1: credentials from the image (uid 0, capabilities, root's group, a
  raised rlimit, a chroot) are refused by name; the unedited images restore
  as the user, with no capability; root's own images restore as recorded;
  the user may still restore their own images;
* item 2: a file swapped for a symlink after the dump (an fd, a shared
  mapping) is refused; a crafted mapping of /etc/shadow is refused by the
  restore and by ``Checkpoint.read_memory``; a mapped file replaced by another
  of the same size and mtime is refused by ``read_memory``; a chrooted process
  comes back inside its root;
* item 13: ``restore --detach`` does not keep the caller's pipes;
* item 8: ``ckpt restore`` killed right after its fork leaves nothing behind.

Restores run as ``ckpt restore --detach`` with every standard stream named, so
that a restore that should have been refused (on code without these fixes)
cannot hang the test: the process it made is described in the failure and
killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

import ckpt
from ckpt import errors, tracking, trust  # noqa: F401  (tracking lets the spawn fixture stop holders)
from helpers import (REPO_ROOT, Target, ckpt_argv, ckpt_env, proc_status_field, require_feature, run_ckpt,
                     strict_features)
from test_restore import checkpointed_counter
from users import User

needs_kernel = pytest.mark.usefixtures("ckpt_kernel")

EXIT_IMAGE = errors.ImageError.exit_code
EXIT_UNTRUSTED = errors.UntrustedImage.exit_code
ALL_CAPS = int(proc_status_field(os.getpid(), "CapBnd"), 16)  # every capability this machine has

# Runs a program as another user (argv: UID GID CWD PROGRAM ARGS...) by exec, so that the
# target keeps the pid the spawn fixture knows.
# Raises capability CAP in the inheritable and ambient sets, then execs (argv: CAP PROGRAM ARGS...).
AMBIENT_AND_EXEC = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
header = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0))   # _LINUX_CAPABILITY_VERSION_3
data = ctypes.create_string_buffer(24)
assert libc.capget(header, data) == 0, os.strerror(ctypes.get_errno())
sets = list(struct.unpack("<6I", data.raw))   # eff, prm, inh (low words), then the high words
cap = int(sys.argv[1])
sets[2 + 3 * (cap // 32)] |= 1 << (cap % 32)
assert libc.capset(header, ctypes.create_string_buffer(struct.pack("<6I", *sets))) == 0
assert libc.prctl(47, 2, cap, 0, 0) == 0, os.strerror(ctypes.get_errno())   # PR_CAP_AMBIENT_RAISE
os.execv(sys.argv[2], sys.argv[2:])
"""
CAP_NET_RAW = 13

DROP_AND_EXEC = ("import os, sys; uid, gid = int(sys.argv[1]), int(sys.argv[2]); os.chdir(sys.argv[3]); "
                 "os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid); "
                 "os.execv(sys.argv[4], sys.argv[4:])")


# ---------------------------------------------------------------------------
# The second user: a home, a Python that runs ckpt, the test programs


@pytest.fixture(scope="session")
def user_site() -> Iterator[Path]:
    """A copy of ckpt's dependencies that any user can read: this interpreter may live
    under /root (0700), where another user cannot import from."""
    top = Path(tempfile.mkdtemp(prefix="ckpt-trust-site-", dir="/tmp"))
    try:
        top.chmod(0o755)
        for module in (msgpack, zstandard):
            source = Path(module.__file__).parent
            shutil.copytree(source, top / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        for path in top.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@dataclass
class UserEnv:
    """The second user, with a 0700 home of their own under /tmp and a way to run ckpt."""

    user: User
    home: Path
    python: str
    env: dict[str, str]
    bin: Path        # copies of the test programs the user can execute

    def ckpt(self, *args: str | os.PathLike[str] | int, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``python -m ckpt ARGS`` as the user, from their home."""
        return self.user.run([self.python, "-m", "ckpt", *map(os.fspath, map(_arg, args))], env=self.env,
                             cwd=self.home, stdin=subprocess.DEVNULL, timeout=timeout)

    def argv(self, program: str, *args: str | os.PathLike[str]) -> list[str]:
        """argv that starts ``program`` as the user (for the spawn fixture), in their home."""
        return [sys.executable, "-c", DROP_AND_EXEC, str(self.user.uid), str(self.user.gid), str(self.home),
                str(self.bin / program), *map(os.fspath, args)]

    def file(self, name: str, data: bytes, mode: int = 0o600) -> Path:
        """A file of the user's in their home."""
        path = self.home / name
        path.write_bytes(data)
        path.chmod(mode)
        self.user.owns(path)
        return path


def _arg(value: str | os.PathLike[str] | int) -> str | os.PathLike[str]:
    return str(value) if isinstance(value, int) else value


def _python_for(user: User, env: dict[str, str]) -> str:
    """An interpreter that runs ckpt as ``user``: ours if the user may run it, else the system's
    (same minor version, for the copied binary modules)."""
    candidates = [sys.executable]
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if system.exists():
        candidates.append(str(system))
    tried = []
    for python in candidates:
        try:
            result = user.run([python, "-c", "import ckpt.image, ckpt.restore, zstandard"], env=env, cwd="/")
        except PermissionError as err:
            tried.append(f"{python}: {err}")
            continue
        if result.returncode == 0:
            return python
        tried.append(f"{python}: {result.stderr.strip().splitlines()[-1:]}")
    message = f"no Python runs ckpt as {user.name}: {tried}"
    if strict_features():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def uenv(other_user: User, user_site: Path, programs: dict[str, Path]) -> Iterator[UserEnv]:
    home = Path(tempfile.mkdtemp(prefix="ckpt-trust-home-", dir="/tmp"))
    try:
        bin_dir = home / "bin"
        bin_dir.mkdir()
        for name in ("trust_target", "zdtm_counter"):
            shutil.copyfile(programs[name], bin_dir / name)
            (bin_dir / name).chmod(0o755)
        bin_dir.chmod(0o755)
        home.chmod(0o700)
        other_user.owns(home)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{user_site}",
               "CKPT_RUN_DIR": str(home / "run"), "HOME": str(home), "PYTHONNOUSERSITE": "1"}
        yield UserEnv(other_user, home, _python_for(other_user, env), env, bin_dir)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def user_dump(uenv: UserEnv, target: Target, images: Path) -> None:
    """The user checkpoints their own process (final dump: the target is killed)."""
    result = uenv.ckpt("dump", "--pid", target.pid, "-D", images, "--kill")
    assert result.returncode == 0, f"the user's own dump failed: {result.stderr!r}"
    target.kill()


# ---------------------------------------------------------------------------
# Editing an image as its owner could (meta.ckpt's CRC is easy to recompute)


META_HEADER = struct.Struct("<8sIIQ")


def edit_meta(meta: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Decode meta.ckpt, let ``change`` edit the map, write it back with a valid CRC (same owner)."""
    data = meta.read_bytes()
    magic, version, _crc, _length = META_HEADER.unpack_from(data)
    body = msgpack.unpackb(data[META_HEADER.size:], raw=False, strict_map_key=False)
    change(body)
    new = msgpack.packb(body, use_bin_type=True)
    meta.write_bytes(META_HEADER.pack(magic, version, zlib.crc32(new), len(new)) + new)


def copy_images(source: Path, dest: Path, owner: User | None) -> Path:
    shutil.copytree(source, dest)
    if owner is not None:
        for path in [dest, *dest.rglob("*")]:
            os.lchown(path, owner.uid, owner.gid)
    return dest


# ---------------------------------------------------------------------------
# Restoring as root, and what came back


def restore_detached(images: Path, workdir: Path, *args: str, name: str = "restored",
                     runner: Callable[..., subprocess.CompletedProcess[str]] = run_ckpt
                     ) -> subprocess.CompletedProcess[str]:
    """``ckpt restore --detach`` with every standard stream of the restored process named."""
    return runner("restore", "-D", images, "--detach", "--stdin", os.devnull,
                  "--stdout", workdir / f"{name}.out", "--stderr", workdir / f"{name}.err", *args, timeout=60)


def restored_pid(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, f"restore failed: exit {result.returncode}, {result.stderr!r}"
    return int(result.stdout.split()[0])


def describe(pid: int) -> str:
    """What a restored process runs with: ids, capabilities, files."""
    try:
        ids = {f: proc_status_field(pid, f) for f in ("Uid", "Gid", "Groups", "CapEff", "CapPrm")}
        fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        files = sorted({line.split(maxsplit=5)[5].strip() for line in open(f"/proc/{pid}/maps")
                        if len(line.split(maxsplit=5)) > 5})
        return f"{ids}, fds {fds}, root {os.readlink(f'/proc/{pid}/root')}, mapped {files}"
    except OSError as err:
        return f"(gone: {err})"


def kill_pid(pid: int) -> None:
    """SIGKILL a process that is not our child and wait until it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 10)
    finally:
        os.close(pidfd)


def wait_exit(pid: int, timeout: float) -> bool:
    pidfd = os.pidfd_open(pid)
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *patterns: str) -> str:
    """One ``ckpt:`` line matching every pattern and exit ``code``; a process restored
    instead is described in the failure, then killed."""
    if result.returncode == 0:
        pid = int(result.stdout.split()[0])
        what = describe(pid)
        kill_pid(pid)
        raise AssertionError(f"the restore was not refused; restored pid {pid} runs with {what}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    output = f"exit {result.returncode}, stderr {result.stderr!r}"
    assert "Traceback" not in result.stderr, output
    assert len(lines) == 1 and lines[0].startswith("ckpt: "), output
    assert result.returncode == code, f"wanted exit {code}: {output}"
    for pattern in patterns:
        assert re.search(pattern, lines[0]), f"{pattern!r} not in the message: {output}"
    return lines[0]


@contextlib.contextmanager
def detached(result: subprocess.CompletedProcess[str]) -> Iterator[int]:
    """The pid a successful ``restore --detach`` printed; killed at the end."""
    pid = restored_pid(result)
    try:
        yield pid
    finally:
        kill_pid(pid)


def ids(pid: int, field: str) -> list[int]:
    return [int(x) for x in proc_status_field(pid, field).split()]


def capabilities(pid: int) -> dict[str, int]:
    return {f: int(proc_status_field(pid, f), 16) for f in ("CapEff", "CapPrm", "CapInh", "CapAmb")}


def wait_running(pid: int, timeout: float = 10) -> None:
    """Until the restored process is released (not traced) and running or sleeping."""
    deadline = time.monotonic() + timeout
    while True:
        state = proc_status_field(pid, "State").split()[0]
        if int(proc_status_field(pid, "TracerPid")) == 0 and state in ("R", "S"):
            return
        assert time.monotonic() < deadline, f"restored pid {pid} stays in state {state}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# Item 1: the principal


def _tree(top: Path, owner: User | None = None) -> Path:
    """A minimal images directory layout (what the principal rule looks at)."""
    images = top / "images"
    (images / "000001").mkdir(parents=True, mode=0o700)
    for path in (images / "CKPT-IMAGES", images / "000001" / "meta.ckpt", images / "000001" / "pages.ckpt"):
        path.write_bytes(b"x")
        path.chmod(0o600)
    images.chmod(0o700)
    if owner is not None:
        for path in [images, *images.rglob("*")]:
            os.lchown(path, owner.uid, owner.gid)
    return images


def _principal(images: Path) -> trust.Principal:
    return trust.images_principal(images, [images / "000001"])


def test_principal_of_root_owned_images_is_root(tmp_path: Path) -> None:
    assert _principal(_tree(tmp_path)).trusted


def test_principal_is_the_single_other_owner(tmp_path: Path, other_user: User) -> None:
    images = _tree(tmp_path)
    os.chown(images / "000001" / "meta.ckpt", other_user.uid, other_user.gid)
    principal = _principal(images)
    assert (principal.uid, principal.name) == (other_user.uid, other_user.name)
    assert other_user.gid in principal.groups and 0 not in principal.groups


def test_principal_counts_the_directories_above(tmp_path: Path, other_user: User) -> None:
    """Root-owned images inside a directory the user owns: the user can swap them."""
    parent = tmp_path / "users-dir"
    parent.mkdir()
    images = _tree(parent)
    os.chown(parent, other_user.uid, other_user.gid)
    assert _principal(images).uid == other_user.uid


def test_principal_of_a_symlinked_images_dir(tmp_path: Path, other_user: User) -> None:
    """Readers may be given a symlink to the directory: its target is judged, and whoever
    owns the directory holding the link could point it elsewhere."""
    images = _tree(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(images)
    assert _principal(link).trusted
    users_dir = tmp_path / "users-dir"
    users_dir.mkdir()
    os.chown(users_dir, other_user.uid, other_user.gid)
    (users_dir / "link").symlink_to(images)
    assert _principal(users_dir / "link").uid == other_user.uid


@pytest.mark.parametrize("how", ["group-writable dir", "other-writable meta", "two owners", "symlinked meta"])
def test_principal_refused(how: str, tmp_path: Path, other_user: User, third_user: User) -> None:
    images = _tree(tmp_path, other_user)
    meta = images / "000001" / "meta.ckpt"
    if how == "group-writable dir":
        images.chmod(0o770)
    elif how == "other-writable meta":
        meta.chmod(0o602)
    elif how == "two owners":
        os.chown(meta, third_user.uid, third_user.gid)
    else:
        real = tmp_path / "elsewhere.ckpt"
        real.write_bytes(b"x")
        meta.unlink()
        meta.symlink_to(real)
    word = {"group-writable dir": "writable", "other-writable meta": "writable", "two owners": "two users",
            "symlinked meta": "symbolic link"}[how]
    with pytest.raises(errors.UntrustedImage, match=word):
        _principal(images)


# ---------------------------------------------------------------------------
# Item 1: credentials


@pytest.fixture
def user_images(uenv: UserEnv, spawn: Callable[..., Target]) -> Path:
    """The user's own zdtm_counter, dumped by the user (it pauses once restored: its stop file exists)."""
    stop = uenv.file("stop", b"")
    stop.unlink()  # created again after the dump, so that the original keeps counting until then
    target = spawn(uenv.argv("zdtm_counter", "-s", stop))
    assert ids(target.pid, "Uid") == [uenv.user.uid] * 4
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    uenv.file("stop", b"")
    return images


def _set_creds(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["state"]["process"]["creds"].update(fields)
    return change


def _raise_nofile(body: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    body["state"]["process"]["rlimits"]["RLIMIT_NOFILE"] = [soft, hard * 4]


def _chroot_to_tmp(body: dict[str, Any]) -> None:
    st = os.stat("/tmp")
    body["state"]["process"]["root"] = "/tmp"
    body["state"]["process"]["root_id"] = {"dev": st.st_dev, "ino": st.st_ino, "mnt_id": None}


CRAFTED = {
    "uid 0 and every capability": (_set_creds(uids=[0] * 4, gids=[0] * 4, cap_eff=ALL_CAPS, cap_prm=ALL_CAPS),
                                   r"uids 0/0/0/0"),
    "capabilities": (_set_creds(cap_eff=ALL_CAPS, cap_prm=ALL_CAPS), r"capabilities 0x[0-9a-f]+ in prm"),
    "ambient capability": (_set_creds(cap_amb=1 << 21), r"capabilities 0x200000 in amb"),
    "root group": (_set_creds(groups=[0]), r"supplementary groups 0 \(root\)"),
    "gid 0": (_set_creds(gids=[0] * 4), r"gids 0 \(root\)"),
    "raised rlimit": (_raise_nofile, r"RLIMIT_NOFILE hard limit"),
    "chroot": (_chroot_to_tmp, r"chroot into /tmp without no_new_privs"),
}


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("crafted", list(CRAFTED))
def test_credentials_beyond_the_images_owner_are_refused(crafted: str, uenv: UserEnv, user_images: Path,
                                                         tmp_path: Path) -> None:
    assert_crafted_refused(uenv, user_images, tmp_path, *CRAFTED[crafted])


def assert_crafted_refused(uenv: UserEnv, images: Path, workdir: Path, change: Callable[[dict[str, Any]], None],
                           named: str) -> None:
    """The user's images edited by ``change``: root's restore refuses them, naming ``named``
    and the user (tests/test_process_state.py uses it too)."""
    edit_meta(images / "000001" / "meta.ckpt", change)
    line = assert_refused(restore_detached(images, workdir), EXIT_UNTRUSTED, named, re.escape(uenv.user.name))
    assert "checkpoint 1" in line


@needs_kernel
@pytest.mark.timeout(120)
def test_unedited_user_images_restore_as_the_user(uenv: UserEnv, user_images: Path, tmp_path: Path) -> None:
    with detached(restore_detached(user_images, tmp_path)) as pid:
        wait_running(pid)
        for field in ("Uid", "Gid"):
            assert ids(pid, field) == [uenv.user.uid if field == "Uid" else uenv.user.gid] * 4, describe(pid)
        assert proc_status_field(pid, "Groups") == ""
        assert capabilities(pid) == {"CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapAmb": 0}, describe(pid)
        # Dumpable, as it was: /proc/PID/status belongs to the user (fs/proc/base.c task_dump_owner),
        # and the user can dump the restored process again.
        assert os.stat(f"/proc/{pid}/status").st_uid == uenv.user.uid
        again = uenv.ckpt("dump", "--pid", pid, "-D", uenv.home / "again")
        assert again.returncode == 0, f"the user cannot dump their restored process: {again.stderr!r}"


@needs_kernel
@pytest.mark.timeout(120)
def test_the_user_restores_their_own_images(uenv: UserEnv, user_images: Path) -> None:
    """Not root: the kernel holds the restore to the user's own rights; it still works."""
    result = restore_detached(user_images, uenv.home, runner=uenv.ckpt)
    with detached(result) as pid:
        wait_running(pid)
        assert ids(pid, "Uid") == [uenv.user.uid] * 4
        assert capabilities(pid)["CapEff"] == 0


@needs_kernel
@pytest.mark.timeout(120)
def test_a_chroot_the_restorer_cannot_make_is_refused(uenv: UserEnv, user_images: Path) -> None:
    """A checkpoint of a chrooted process (here: the user's, edited, with no_new_privs so that the
    trust rules allow it) restored by the user, who lacks CAP_SYS_CHROOT: refused, not restored
    outside its root."""
    def chrooted(body: dict[str, Any]) -> None:
        _chroot_to_tmp(body)
        body["state"]["process"]["creds"]["no_new_privs"] = 1

    edit_meta(user_images / "000001" / "meta.ckpt", chrooted)
    assert_refused(restore_detached(user_images, uenv.home, runner=uenv.ckpt), errors.TargetError.exit_code,
                   r"chrooted in /tmp", r"CAP_SYS_CHROOT")


@needs_kernel
@pytest.mark.timeout(120)
def test_root_images_of_a_root_process_restore_as_recorded(programs: dict[str, Path],
                                                            spawn: Callable[..., Target], tmp_path: Path) -> None:
    before = capabilities(os.getpid())  # a root child (zdtm_counter) has the same
    assert os.getuid() == 0 and before["CapEff"], "this test runs as root"
    images = tmp_path / "images"
    checkpointed_counter(programs, spawn, images, tmp_path)
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        assert ids(pid, "Uid") == [0] * 4
        assert capabilities(pid) == before


@needs_kernel
@pytest.mark.timeout(120)
def test_root_images_keep_ambient_capabilities(programs: dict[str, Path], spawn: Callable[..., Target],
                                               tmp_path: Path) -> None:
    """Restored as recorded means the ambient set too (it was dropped without a word)."""
    stop = tmp_path / "stop"
    target = spawn([sys.executable, "-c", AMBIENT_AND_EXEC, str(CAP_NET_RAW), programs["zdtm_counter"],
                    "-s", stop])
    before = capabilities(target.pid)
    assert before["CapAmb"] == 1 << CAP_NET_RAW, before
    images = tmp_path / "images"
    ckpt.dump(target.pid, images, after="kill")
    target.kill()
    stop.touch()
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        assert capabilities(pid) == before, describe(pid)


# ---------------------------------------------------------------------------
# Item 2: paths


@dataclass
class SwapSetup:
    images: Path
    secret: Path
    victim: Path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A root-only file (0600 in a 0700 directory the user cannot enter)."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    path = vault / "secret"
    path.write_bytes(b"ROOT-ONLY SECRET " * 64)
    path.chmod(0o600)
    return path


def _info(target: Target) -> dict[str, int]:
    words = target.readline().split()
    assert words[0] == "info", words
    return {k: (0 if v == "(nil)" else int(v, 0)) for k, v in (w.split("=") for w in words[1:])}


@needs_kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("dumper", ["user", "root"])
@pytest.mark.parametrize("swapped", ["fd", "shared mapping"])
def test_a_file_swapped_for_a_symlink_is_refused(swapped: str, dumper: str, uenv: UserEnv, secret: Path,
                                                 spawn: Callable[..., Target], tmp_path: Path) -> None:
    """The user's process has a file of theirs open O_RDWR and another mapped rw-s; after the dump
    the user replaces one with a symlink to a root 0600 file (same size and mtime, so that a
    size+mtime check cannot tell).  Root restores: refused, whoever wrote the images."""
    st = secret.stat()
    data = uenv.file("data", b"user data " * (st.st_size // 10) + b"x" * (st.st_size % 10))
    shared = uenv.file("shared", data.read_bytes())
    for path in (data, shared):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    target = spawn(uenv.argv("trust_target", "-o", data, "-s", shared))
    info = _info(target)
    assert info["fd"] >= 3 and info["shared"]
    if dumper == "user":
        images = uenv.home / "images"
        user_dump(uenv, target, images)
    else:
        images = tmp_path / "images"
        ckpt.dump(target.pid, images, after="kill")
        target.kill()
    victim = data if swapped == "fd" else shared
    victim.unlink()
    victim.symlink_to(secret)
    os.lchown(victim, uenv.user.uid, uenv.user.gid)
    assert_refused(restore_detached(images, tmp_path), EXIT_IMAGE, re.escape(str(victim)), "symbolic link")


@needs_kernel
@pytest.mark.timeout(60)
@pytest.mark.parametrize("swapped", ["fd", "shared mapping"])
def test_the_restore_child_checks_again(swapped: str, programs: dict[str, Path], spawn: Callable[..., Target],
                                        secret: Path, tmp_path: Path) -> None:
    """A swap between the checks before the fork and the child's own opens (the window the
    preflight cannot close): the child refuses, and its error comes back as what it is."""
    # ckpt.restore is the function (a lazy name of ckpt/__init__.py); importing the module
    # ckpt.restore by name first would make ckpt.restore the module for every later caller.
    assert callable(ckpt.restore)
    restore_mod = sys.modules["ckpt.restore"]

    data, shared = tmp_path / "data", tmp_path / "shared"
    data.write_bytes(b"d" * 4096)
    shared.write_bytes(b"s" * 4096)
    target = spawn([programs["trust_target"], "-o", data, "-s", shared])
    _info(target)
    images = tmp_path / "images"
    ckpt.dump(target.pid, images, after="kill")
    target.kill()
    cp = ckpt.ImageDir(images).checkpoint(1)
    plan = restore_mod.plan_files(cp, trust.checkpoint_principal(cp))
    restore_mod.preflight(plan)
    victim = data if swapped == "fd" else shared
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(errors.ImageError, match=re.escape(str(victim)) + ".*symbolic link"):
        pid, _ = restore_mod._fork_child(cp, {}, False, plan)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"the child opened {victim} through a symlink")


@needs_kernel
@pytest.mark.timeout(120)
def test_a_crafted_mapping_of_a_root_file_is_refused(uenv: UserEnv, spawn: Callable[..., Target],
                                                     tmp_path: Path) -> None:
    """The user maps a file of theirs, dumps, and edits the mapping into /etc/shadow (path,
    device, inode, size and mtime: all of them public).  Root restores it, or reads it
    with read_memory: both refused -- the user may not read /etc/shadow."""
    shadow = Path("/etc/shadow")
    sst = shadow.stat()
    assert not sst.st_mode & 0o004 and sst.st_gid not in trust.principal_of_uid(uenv.user.uid).groups, (
        f"{uenv.user.name} may read /etc/shadow here: nothing to test")
    mine = uenv.file("mine", b"the user's own bytes\n" * 300)
    target = spawn(uenv.argv("trust_target", "-m", mine))
    address = _info(target)["private"]
    images = uenv.home / "images"
    user_dump(uenv, target, images)
    cp = ckpt.ImageDir(images).checkpoint(1)
    assert cp.read_memory(address, 21) == b"the user's own bytes\n", "the unedited image reads the user's file"

    def to_shadow(body: dict[str, Any]) -> None:
        for vma in body["vmas"]:
            if vma["path"] == str(mine):
                vma.update(path=str(shadow), dev=f"{os.major(sst.st_dev):02x}:{os.minor(sst.st_dev):02x}",
                           inode=sst.st_ino, file_size=sst.st_size, file_mtime_ns=sst.st_mtime_ns,
                           file_dev=sst.st_dev, file_ino=sst.st_ino, file_mnt_id=None)
                return
        raise AssertionError(f"no VMA of {mine} in the image")

    edit_meta(images / "000001" / "meta.ckpt", to_shadow)
    assert_refused(restore_detached(images, tmp_path), EXIT_UNTRUSTED, r"/etc/shadow", r"may not open")
    cp = ckpt.ImageDir(images).checkpoint(1)
    with pytest.raises(errors.UntrustedImage, match=r"/etc/shadow.*may not open"):
        leaked = cp.read_memory(address, 64)
        raise AssertionError(f"read_memory returned /etc/shadow's bytes: {leaked[:16]!r}...")


@needs_kernel
@pytest.mark.timeout(60)
def test_read_memory_refuses_a_replaced_mapped_file(programs: dict[str, Path], spawn: Callable[..., Target],
                                                    tmp_path: Path) -> None:
    """Replaced by another file of the same size and mtime: read_memory must not return its bytes."""
    mapped = tmp_path / "mapped"
    mapped.write_bytes(b"A" * 8192)
    target = spawn([programs["trust_target"], "-m", mapped])
    address = _info(target)["private"]
    images = tmp_path / "images"
    ckpt.dump(target.pid, images, after="kill")
    target.kill()
    st = mapped.stat()
    impostor = tmp_path / "impostor"
    impostor.write_bytes(b"B" * 8192)
    os.utime(impostor, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(impostor, mapped)
    with pytest.raises(errors.ImageError, match=r"not the file the dump saw"):
        data = ckpt.ImageDir(images).checkpoint(1).read_memory(address, 16)
        raise AssertionError(f"read_memory returned the replacement's bytes {data!r}")
    assert_refused(restore_detached(images, tmp_path), EXIT_IMAGE, re.escape(str(mapped)))


def _mount(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True, timeout=30)


@needs_kernel
@pytest.mark.timeout(60)
def test_a_file_reached_through_another_mount_is_refused(programs: dict[str, Path], spawn: Callable[..., Target],
                                                         tmp_path: Path) -> None:
    """Same device and inode, but through a mount made after the dump (same boot): refused."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    (source / "data").write_bytes(b"through a bind mount\n")
    mounted = _mount("--bind", source, view)
    require_feature("bind mounts", mounted.returncode == 0, mounted.stderr.strip())
    try:
        target = spawn([programs["trust_target"], "-o", view / "data"])
        _info(target)
        images = tmp_path / "images"
        ckpt.dump(target.pid, images, after="kill")
        target.kill()
        subprocess.run(["umount", str(view)], check=True, timeout=30)
        assert _mount("--bind", source, view).returncode == 0
        assert_refused(restore_detached(images, tmp_path), EXIT_IMAGE, re.escape(str(view / "data")),
                       "another mount")
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True, timeout=30)


@needs_kernel
@pytest.mark.timeout(120)
def test_a_chrooted_process_comes_back_inside_its_root(programs: dict[str, Path], spawn: Callable[..., Target],
                                                       tmp_path: Path) -> None:
    jail = tmp_path / "jail"
    (jail / "sub").mkdir(parents=True)
    (jail / "trust-jail-marker").write_text("inside\n")
    target = spawn([programs["trust_target"], "-c", jail, "-d", "/sub"])
    _info(target)
    assert os.readlink(f"/proc/{target.pid}/root") == str(jail)
    images = tmp_path / "images"
    ckpt.dump(target.pid, images, after="kill")
    target.kill()
    out = tmp_path / "restored.out"
    with detached(restore_detached(images, tmp_path)) as pid:
        wait_running(pid)
        assert os.readlink(f"/proc/{pid}/root") == str(jail), describe(pid)
        assert os.readlink(f"/proc/{pid}/cwd") == str(jail / "sub")
        # Sent again until it exits: ``while (!go) pause();`` can miss one (test_restore).
        deadline = time.monotonic() + 20
        while not wait_exit(pid, 0.5):
            assert time.monotonic() < deadline, "the restored process did not exit after SIGUSR1"
            os.kill(pid, signal.SIGUSR1)
    lines = out.read_text().splitlines()
    assert "marker=yes" in lines and "cwd=/sub" in lines and lines[-1] == "PASS", lines


# ---------------------------------------------------------------------------
# Item 13: --detach and the caller's pipes


def _lookalikes(needle: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(name))
    return found


@needs_kernel
@pytest.mark.timeout(90)
def test_detach_does_not_keep_the_callers_pipes(programs: dict[str, Path], spawn: Callable[..., Target],
                                                tmp_path: Path) -> None:
    images = tmp_path / "images"
    checkpointed_counter(programs, spawn, images, tmp_path)
    started = time.monotonic()
    try:
        result = subprocess.run(ckpt_argv("restore", "-D", images, "--detach"), capture_output=True, text=True,
                                timeout=30, env=ckpt_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        for pid in _lookalikes(str(tmp_path / "stop")):
            kill_pid(pid)
        raise AssertionError("restore --detach under capture_output did not return: the restored "
                             "process holds the caller's pipes") from None
    elapsed = time.monotonic() - started
    with detached(result) as pid:
        wait_running(pid)
        assert [os.readlink(f"/proc/{pid}/fd/{n}") for n in (0, 1, 2)] == [os.devnull] * 3
        assert re.search(r"note: .*/dev/null", result.stderr), result.stderr
        assert elapsed < 20, f"restore --detach took {elapsed:.1f} s"


# ---------------------------------------------------------------------------
# Item 8: ckpt restore killed right after its fork


# A child subreaper that starts ckpt restore, SIGKILLs it DELAY seconds after its fork
# (the restore child appearing in /proc/CKPT/task/CKPT/children), and reports what is left.
# argv: REPORT DELAY CKPT_ARGV...
KILL_AFTER_FORK = r"""
import contextlib, ctypes, json, os, signal, subprocess, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
delay = float(sys.argv[2])

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2:].split()
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None

ckpt = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
children = f"/proc/{ckpt.pid}/task/{ckpt.pid}/children"
child, deadline = None, time.monotonic() + 30
while child is None and time.monotonic() < deadline and ckpt.poll() is None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(children) as f:
            child = int(f.read().split()[0])
seen = time.monotonic()
while time.monotonic() < seen + delay:
    pass
os.kill(ckpt.pid, signal.SIGKILL)
at_kill = stat(child) if child else None
ckpt.wait()

def adopted():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat(int(name))
            if s is not None and s[1] == os.getpid() and s[0] not in ("Z", "X"):
                out[int(name)] = s[0]
    return out

deadline = time.monotonic() + 3
while True:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    left = adopted()
    if not left or time.monotonic() > deadline:
        break
    time.sleep(0.02)
for pid in left:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
end = time.monotonic() + 10
while time.monotonic() < end:
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
            time.sleep(0.02)
    except ChildProcessError:
        break
with open(sys.argv[1], "w") as f:
    json.dump({"child": child, "at_kill": at_kill[0] if at_kill else None,
               "left": [f"pid {p} state {s}" for p, s in sorted(left.items())]}, f)
"""

KILL_DELAYS = [0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.013, 0.021, 0.034]


@needs_kernel
@pytest.mark.timeout(180)
def test_a_restore_killed_after_its_fork_leaves_nothing(programs: dict[str, Path], spawn: Callable[..., Target],
                                                        tmp_path: Path) -> None:
    images = tmp_path / "images"
    checkpointed_counter(programs, spawn, images, tmp_path)
    reports = []
    for n, delay in enumerate(KILL_DELAYS):
        report = tmp_path / f"kill-{n}.json"
        argv = [sys.executable, "-c", KILL_AFTER_FORK, str(report), str(delay),
                *ckpt_argv("restore", "-D", images, "--stdin", os.devnull, "--stdout", tmp_path / f"{n}.out",
                           "--stderr", tmp_path / f"{n}.err")]
        subprocess.run(argv, check=True, timeout=60, env=ckpt_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
        reports.append((delay, json.loads(report.read_text())))
    assert all(r["child"] for _, r in reports), f"ckpt restore never forked: {reports}"
    left = [(delay, r) for delay, r in reports if r["left"]]
    assert not left, (f"SIGKILL of ckpt restore after its fork left processes behind "
                      f"(delay s, report): {left}; all: {reports}")

"""What a restore (and an image reader) trusts in an images directory.

Images are data that whoever can write them may have edited: recomputing the
CRC of ``meta.ckpt`` is easy.  So a restore never grants more than the images'
owner could have, and never opens a file other than the one the dump saw.

**The principal.**  The user whose word the images are:

* root, when the images directory, every file the restore reads in it (the
  marker, each checkpoint directory of the chain, its ``meta.ckpt`` and
  ``pages.ckpt``) and every directory above it are owned by root and not
  writable by group or others (a sticky directory such as /tmp counts as
  not writable: only an entry's owner may replace it);
* otherwise the single non-root user owning one of them (that user could
  have written or replaced anything there);
* refused: any of them writable by group or others, or owned by two
  different non-root users, or a symbolic link inside the images directory.

**Credentials.**  Root-trusted images restore as recorded.  Otherwise every
recorded uid must be the principal's, every gid and supplementary group one
of the principal's groups (passwd/group database), no capability in the
permitted, effective, inheritable or ambient sets, no rlimit hard limit
above the restorer's own, and no chroot unless ``no_new_privs`` is set (a
set-user-ID program run in a root the user controls would trust the user's
files).  Nor what an unprivileged process cannot give itself: an RT policy
above the restorer's RLIMIT_RTPRIO, SCHED_DEADLINE, a nice value below both
the restorer's own and what its RLIMIT_NICE allows, an oom_score_adj below the
restorer's own (lowering it needs CAP_SYS_RESOURCE), a timer on an alarm
clock (CAP_WAKE_ALARM), the realtime I/O priority class (CAP_SYS_NICE), a loginuid other than the owner's (see
:func:`restore_loginuid`: not granted, with a note), or a seccomp filter on a
thread without ``no_new_privs`` (the kernel's own rule for installing one
without CAP_SYS_ADMIN).  Dropping privilege (a smaller bounding set,
``no_new_privs``, a seccomp filter, securebits when the restorer can set them)
is always allowed.  When the restorer is
not root, the kernel enforces the same limits on its own.

**Paths.**  Every path a restore opens (mapped files, fds, exe, cwd, root)
was recorded at dump with the device, inode and (kernel 6.8+) unique mount id
of the file it led to.  It is opened with ``openat2(RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS)`` — the recorded paths come from ``d_path`` and so
never contain a symlink — and the opened file must have the recorded device
and inode (and mount id, on the same boot).  For images that are not
root-trusted it is opened with the restored process's own filesystem
identity, so the kernel's permission checks are the process's, not root's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import grp
import os
import pwd
import resource
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import procfs, restorability
from ._sys import fs, sched
from ._sys.libc import SYS_prctl, SYS_setresgid, SYS_setresuid, syscall
from .errors import ImageError, UntrustedImage
from .image.schema import Creds, ExeStat, File, Identity, Process, State, Thread

if TYPE_CHECKING:
    from .image import Checkpoint, VmaRecord

ROOT = 0
PR_GET_PDEATHSIG, PR_SET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE = 2, 1, 3, 4
CAP_SETS = ("cap_prm", "cap_eff", "cap_inh", "cap_amb")
CAP_SETPCAP = 8                             # include/uapi/linux/capability.h
IOPRIO_CLASS_SHIFT, IOPRIO_CLASS_RT = 13, 1  # include/uapi/linux/ioprio.h
_RESOLVE = fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


# -- the principal --------------------------------------------------------------------

FsIdentity = tuple[int, int, list[int]]   # fsuid, fsgid, supplementary groups


@dataclass(frozen=True)
class Principal:
    """The user an images directory speaks for (see the module docstring)."""

    uid: int
    gid: int
    groups: frozenset[int]  # every gid the user may hold: primary and supplementary
    name: str
    because: str = ""        # the path whose owner made it this user

    @property
    def trusted(self) -> bool:
        """True for root-trusted images, which restore as recorded."""
        return self.uid == ROOT

    def describe(self) -> str:
        """``name (uid N)``, for messages."""
        return f"{self.name} (uid {self.uid})"

    def fs_identity(self) -> FsIdentity | None:
        """The (uid, gid, groups) to open the images' files as; None for root-trusted images."""
        return None if self.trusted else (self.uid, self.gid, sorted(self.groups))


ROOT_PRINCIPAL = Principal(ROOT, ROOT, frozenset({ROOT}), "root")


def images_principal(images_dir: str | os.PathLike[str], checkpoint_dirs: Iterable[str | os.PathLike[str]]
                     ) -> Principal:
    """The principal of ``images_dir`` for a read of the given checkpoint directories
    (the chain being restored or read); ``UntrustedImage`` when there is none."""
    from .image.format import MARKER_NAME, META_NAME, PAGES_NAME  # image imports this module

    given = Path(os.path.abspath(images_dir))
    top = Path(os.path.realpath(given))   # readers may be given a symlink to the directory
    owners: dict[int, str] = {}
    # Every directory above, on the path given and on the resolved one: whoever
    # may rename entries there (or change a symlink there) can swap the images.
    seen: set[Path] = set()
    for path in (given, top):
        for parent in reversed(path.parents):
            if parent not in seen:
                seen.add(parent)
                _judge(parent, owners, inside=False)
    _judge(top, owners, inside=True, kind=stat.S_IFDIR)
    _judge(top / MARKER_NAME, owners, inside=True, kind=stat.S_IFREG)
    for cp_dir in checkpoint_dirs:
        cp_dir = top / Path(cp_dir).name
        _judge(cp_dir, owners, inside=True, kind=stat.S_IFDIR)
        for name in (META_NAME, PAGES_NAME):
            _judge(cp_dir / name, owners, inside=True, kind=stat.S_IFREG)
    if not owners:
        return ROOT_PRINCIPAL
    if len(owners) > 1:
        (u1, p1), (u2, p2) = sorted(owners.items())[:2]
        raise UntrustedImage(f"{top}: {p1} is owned by uid {u1} and {p2} by uid {u2}; "
                             "images written by two users are not read")
    uid, because = next(iter(owners.items()))
    return principal_of_uid(uid, because)


def checkpoint_principal(cp: Checkpoint) -> Principal:
    """The principal for reading or restoring checkpoint ``cp`` (its whole chain)."""
    return images_principal(cp.image_dir.path, [link.path for link in cp.chain()])


def principal_of_uid(uid: int, because: str = "") -> Principal:
    """The principal for user ``uid``, with the groups the group database gives it."""
    if uid == ROOT:
        return ROOT_PRINCIPAL
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise UntrustedImage(f"{because or 'the images'} belong to uid {uid}, which has no passwd entry: "
                             "its groups are unknown, so its images are not read") from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Principal(uid, entry.pw_gid, groups, entry.pw_name, because)


def _judge(path: Path, owners: dict[int, str], *, inside: bool, kind: int | None = None) -> None:
    """Record who can change ``path``; refuse what nobody single can be held to."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if inside:
            raise ImageError(f"{path} is missing") from None
        return
    except OSError as err:
        raise ImageError(f"{path}: {err.strerror}") from err
    if stat.S_ISLNK(st.st_mode):
        if inside:
            raise UntrustedImage(f"{path} is a symbolic link; ckpt reads no symlink in an images directory")
        # A link above the images dir: whoever owns the directory holding it can
        # change it (that directory is judged too); its target is judged by realpath.
        return
    if kind is not None and stat.S_IFMT(st.st_mode) != kind:
        what = "directory" if kind == stat.S_IFDIR else "regular file"
        raise UntrustedImage(f"{path} is not a {what}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if inside or not sticky:
            raise UntrustedImage(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                                 "anyone there could have edited the images")
    if st.st_uid != ROOT:
        owners.setdefault(st.st_uid, str(path))


# -- credentials ----------------------------------------------------------------------


def check_identity(state: State, principal: Principal, cp_id: int) -> None:
    """Refuse a recorded identity beyond what ``principal`` may have (module docstring)."""
    proc = state.process
    if proc is None:
        raise ImageError(f"checkpoint {cp_id} records no process credentials (no task state?)")
    if principal.trusted:
        return

    def refuse(what: str) -> None:
        raise UntrustedImage(f"checkpoint {cp_id} records {what}, but its images belong to "
                             f"{principal.describe()}{_owner_of(principal)}: a restore never grants more "
                             "than the images' owner has")

    creds = proc.creds
    uids = list(creds.uids)
    if any(u != principal.uid for u in uids):
        refuse("uids " + "/".join(map(str, uids)) + " (real/effective/saved/fs)")
    for label, gids in (("gids", creds.gids), ("supplementary groups", creds.groups)):
        foreign = sorted(set(gids) - principal.groups)
        if foreign:
            refuse(f"{label} {', '.join(_group_name(g) for g in foreign)}, outside {principal.name}'s groups")
    for key in CAP_SETS:
        if getattr(creds, key):
            refuse(f"capabilities {getattr(creds, key):#x} in {key.removeprefix('cap_')}")
    if chrooted(proc) and not creds.no_new_privs:
        refuse(f"a chroot into {proc.root} without no_new_privs (a set-user-ID program would "
               "trust files its owner controls there)")
    # The kernel lets a thread install a seccomp filter only with no_new_privs or
    # CAP_SYS_ADMIN (kernel/seccomp.c seccomp_prepare_filter): a filter can make
    # a syscall "succeed" without doing anything (SECCOMP_RET_ERRNO with 0), and
    # a set-user-ID program that then believes it dropped privileges would not
    # have.  The owner has no capability here, so no_new_privs it must be.
    unguarded = [t.tid for t in state.threads or ()
                 if t.seccomp_filter is not None and not no_new_privs(t, creds)]
    if unguarded:
        refuse(f"seccomp filters without no_new_privs on thread {', '.join(map(str, unguarded))} "
               "(a set-user-ID program would run under filters its owner wrote)")
    for name, (_soft, hard) in proc.rlimits.items():
        number = getattr(resource, name, None)
        if number is None:
            continue
        own = resource.getrlimit(number)[1]
        if _rlim(hard) > _rlim(own):
            refuse(f"{name} hard limit {_fmt_rlim(hard)}, above this restore's own {_fmt_rlim(own)}")
    for thread in state.threads or ():
        _check_sched(thread, refuse)
    adj = proc.oom_score_adj
    own_adj = procfs.read_oom_score_adj(os.getpid())
    if adj is not None and adj < own_adj:
        # fs/proc/base.c __set_oom_adj: below oom_score_adj_min needs CAP_SYS_RESOURCE.
        refuse(f"oom_score_adj {adj}, below this restore's own {own_adj} (lowering it needs CAP_SYS_RESOURCE)")
    for thread in state.threads or ():
        if (thread.ioprio or 0) >> IOPRIO_CLASS_SHIFT == IOPRIO_CLASS_RT:
            # block/ioprio.c ioprio_check_cap: the realtime class needs CAP_SYS_NICE or CAP_SYS_ADMIN.
            refuse(f"thread {thread.tid} in the realtime I/O priority class, which needs CAP_SYS_NICE")
    if proc.securebits and not procfs.has_capability(CAP_SETPCAP):
        # security/commoncap.c cap_task_prctl PR_SET_SECUREBITS: CAP_SETPCAP in the setter.
        refuse(f"securebits {proc.securebits:#x}, which this restore cannot set without CAP_SETPCAP")
    for timer in proc.posix_timers:
        if timer.clock in restorability.ALARM_CLOCKS:
            refuse(f"POSIX timer {timer.id} on {restorability.describe_clock(timer.clock)}, which needs "
                   "CAP_WAKE_ALARM")


def no_new_privs(thread: Thread, creds: Creds) -> int:
    """The thread's no_new_privs; the process's (creds) in a checkpoint of an older ckpt,
    which recorded the leader's only."""
    if thread.no_new_privs is not None:
        return thread.no_new_privs
    return creds.no_new_privs or 0


def _check_sched(thread: Thread, refuse: Callable[[str], None]) -> None:
    """What an unprivileged owner could not have set (kernel/sched/syscalls.c
    user_check_sched_setscheduler, kernel/sched/core.c can_nice): an RT priority above
    RLIMIT_RTPRIO, SCHED_DEADLINE, a nice value below the one a restored thread starts
    with (ckpt's own) unless RLIMIT_NICE allows it (20 - nice <= the limit).  The
    restorer's hard limits count: the owner could have raised the soft ones to them."""
    s = thread.sched
    if not s:
        return
    tid, policy = thread.tid, s.policy
    name = sched.POLICY_NAMES.get(policy, f"policy {policy}")
    if policy in sched.RT_POLICIES:
        rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)[1]
        if s.priority > _rlim(rtprio):
            refuse(f"thread {tid} at {name} priority {s.priority}, above this restore's RLIMIT_RTPRIO "
                   f"({_fmt_rlim(rtprio)})")
    elif policy == sched.SCHED_DEADLINE:
        refuse(f"thread {tid} under SCHED_DEADLINE, which needs CAP_SYS_NICE")
    own = os.getpriority(os.PRIO_PROCESS, 0)
    limit = resource.getrlimit(resource.RLIMIT_NICE)[1]
    if s.nice < own and 20 - s.nice > _rlim(limit):
        refuse(f"thread {tid} at nice {s.nice}, below this restore's own ({own}) and what its RLIMIT_NICE "
               f"({_fmt_rlim(limit)}) allows")


def _owner_of(principal: Principal) -> str:
    return f", owner of {principal.because}" if principal.because else ""


def _group_name(gid: int) -> str:
    try:
        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return str(gid)


def _rlim(value: int) -> float:
    return float("inf") if value in (resource.RLIM_INFINITY, (1 << 64) - 1) else value


def _fmt_rlim(value: int) -> str:
    return "unlimited" if _rlim(value) == float("inf") else str(value)


def chrooted(proc: Process) -> bool:
    """True when the recorded root directory is not this restore's own root."""
    root = "/" if proc.root is None else proc.root   # not recorded (an older ckpt): ours
    recorded = FileIdentity.from_record(proc.root_id)
    if root != "/":
        return True
    if recorded is None:
        return False
    dev, ino, _ = fs.statx_identity("/")
    return (recorded.dev, recorded.ino) != (dev, ino)


# -- file identity ----------------------------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    """Device, inode and (when the kernel gives one) unique mount id of a file."""

    dev: int
    ino: int
    mnt_id: int | None = None

    @classmethod
    def from_record(cls, record: Identity | ExeStat | File | None) -> FileIdentity | None:
        """From a state record with ``dev``, ``ino`` and ``mnt_id`` (an :class:`Identity`, the
        exe's stat, an open file); None when absent or incomplete (a stat that failed)."""
        if record is None or record.dev is None or record.ino is None or not (record.dev or record.ino):
            return None
        return cls(record.dev, record.ino, record.mnt_id)

    @classmethod
    def of(cls, path: str = "", fd: int = fs.AT_FDCWD) -> FileIdentity:
        """The identity of the file ``path`` leads to (magic links followed), or of open file ``fd``."""
        return cls(*fs.statx_identity(path, fd))

    def record(self) -> dict[str, Any]:
        """The state record of this identity (msgpack-able)."""
        return {"dev": self.dev, "ino": self.ino, "mnt_id": self.mnt_id}

    def describe(self) -> str:
        """``device MAJOR:MINOR inode N``, for messages."""
        return f"device {os.major(self.dev)}:{os.minor(self.dev)} inode {self.ino}"


def identity_record(path: str) -> dict[str, Any]:
    """For the dump: the identity record of what ``path`` (a /proc magic link) points at, or {}."""
    try:
        return FileIdentity.of(path).record()
    except OSError:
        return {}


@functools.cache
def boot_id() -> str:
    """This boot's id (mount ids are only comparable within one boot)."""
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def check_path(path: str, what: str) -> None:
    """Refuse a path the dump cannot have recorded: relative, with ``..``, or with a NUL."""
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise UntrustedImage(f"{what}: {path!r} is not an absolute path without '..' and NUL; "
                             "the dump records no such path")


def open_verified(path: str, flags: int, expected: FileIdentity | None, what: str, *,
                  same_boot: bool, mode: int | None = None) -> int:
    """Open ``path`` as the dump saw it and return the fd; refuse anything else.

    No symlink is followed (the recorded paths come from d_path and have none);
    the opened file must have the recorded device and inode, and the recorded
    mount id when the checkpoint was taken on this boot, and the recorded file
    type when ``mode`` is given (an inode number freed by an unlink is handed to
    the next file created, so a FIFO or a device made in a file's place can
    carry its old inode number).  ``expected=None`` (an old image without
    identity) only forbids the symlinks.  Permission is
    checked with the calling thread's filesystem identity (see :func:`acting_as`).
    """
    check_path(path, what)
    try:
        # O_NONBLOCK until the identity is checked: a FIFO swapped in for the file
        # would otherwise block the open itself (fifo_open waits for the other end).
        fd = fs.openat2(path, flags | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, _RESOLVE)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageError(f"{what} now goes through a symbolic link the dump did not see") from None
        if err.errno == errno.ENOENT:
            raise ImageError(f"{what} is missing") from None
        if err.errno in (errno.EACCES, errno.EPERM):
            uid, gid, _ = fs.thread_fs_identity()
            raise UntrustedImage(f"{what}: uid {uid} (gid {gid}) may not open it: {err.strerror}") from None
        raise ImageError(f"{what} cannot be opened: {err.strerror}") from err
    try:
        found_mode = os.fstat(fd).st_mode
        if mode is not None and stat.S_IFMT(found_mode) != stat.S_IFMT(mode):
            raise ImageError(f"{what} is not the file the dump saw (another file type now)")
        if expected is not None:
            found = FileIdentity.of(fd=fd)
            if (found.dev, found.ino) != (expected.dev, expected.ino):
                raise ImageError(f"{what} is not the file the dump saw "
                                 f"({expected.describe()}; now {found.describe()})")
            if same_boot and expected.mnt_id is not None and found.mnt_id is not None \
                    and found.mnt_id != expected.mnt_id:
                raise ImageError(f"{what} is reached through another mount than at the dump "
                                 f"(mount {expected.mnt_id}, now {found.mnt_id})")
        elif not (stat.S_ISREG(found_mode) or stat.S_ISDIR(found_mode) or stat.S_ISCHR(found_mode)):
            raise ImageError(f"{what} is no longer a file, a directory or a device")
        if not flags & (os.O_NONBLOCK | os.O_PATH):  # an O_PATH fd has no status flags
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def restore_fs_identity(creds: Creds, principal: Principal) -> FsIdentity | None:
    """The identity a restore opens files as: the restored process's own fsuid, fsgid and
    groups for images that are not root-trusted (checked against ``principal`` already);
    None -- the restorer's own -- for root-trusted images, and for a restorer that is not
    root, whom the kernel holds to its own rights."""
    if principal.trusted or os.geteuid() != ROOT:
        return None
    return (creds.uids[3], creds.gids[3], list(creds.groups))


@contextlib.contextmanager
def acting_as(identity: FsIdentity | None, effective: tuple[int, int] | None = None) -> Iterator[None]:
    """Open files in the block with the filesystem identity ``identity`` (this thread only).

    Nothing changes for None, when the thread has that identity already, or when
    the caller is not root: the kernel holds it to its own permissions then.
    ``effective`` (uid, gid) also sets the effective ids for the block, for what the
    kernel copies from them rather than from the filesystem ids: the credentials a
    unix socket gives its peer (``SO_PEERCRED``, net/unix/af_unix.c ``init_peercred``).
    An effective uid other than 0 clears the effective capabilities until it is set
    back (kernel/commoncap.c ``cap_emulate_setxuid``), and makes the filesystem ids
    follow it (kernel/sys.c ``__sys_setresuid``): ``identity`` is then applied as far
    as an unprivileged thread may (its uid or 0).  Changing ids resets the process's
    dumpable flag and this thread's parent-death signal (kernel/cred.c
    ``commit_creds``); both are put back.
    """
    before = fs.thread_fs_identity()
    same = identity is None or (before[0], before[1], sorted(before[2])) == (
        identity[0], identity[1], sorted(identity[2]))
    switch = effective is not None and tuple(effective) != (os.geteuid(), os.getegid())
    if os.geteuid() != ROOT or (same and not switch):
        yield
        return
    dumpable = syscall(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0)
    pdeath = ctypes.c_int(0)
    syscall(SYS_prctl, PR_GET_PDEATHSIG, ctypes.addressof(pdeath), 0, 0, 0)
    egid = os.getegid()
    try:
        take_fs_identity(*(identity or before))
        if switch:
            assert effective is not None
            # Raw syscalls: glibc's setres[ug]id would change every thread of the process.
            syscall(SYS_setresgid, -1, effective[1], -1)
            syscall(SYS_setresuid, -1, effective[0], -1)
            uid, gid, _ = identity or before
            for number, value in ((fs.SYS_setfsgid, gid), (fs.SYS_setfsuid, uid)):
                syscall(number, value)   # refused silently when not allowed: checked by the caller
        yield
    finally:
        if switch:
            syscall(SYS_setresuid, -1, ROOT, -1)   # the saved uid is root's: always allowed
            syscall(SYS_setresgid, -1, egid, -1)
        fs.set_thread_fs_identity(*before)
        syscall(SYS_prctl, PR_SET_DUMPABLE, dumpable, 0, 0, 0)
        if pdeath.value:
            syscall(SYS_prctl, PR_SET_PDEATHSIG, pdeath.value, 0, 0, 0)


UNSET_LOGINUID = 4294967295   # (uid_t)-1: kernel/audit.c audit_loginuid_set()


def restore_loginuid(proc: Process, fs_identity: FsIdentity | None) -> list[str]:
    """In the restore child (the process to be), before it takes the owner's identity or
    enters a chroot: give it its recorded loginuid; the notes to report.

    Only the process itself may write its /proc/PID/loginuid (fs/proc/base.c
    ``proc_loginuid_write``), and the kernel lets it change a loginuid that is set
    only with CAP_AUDIT_CONTROL (kernel/auditsc.c ``audit_set_loginuid_perm``).  For
    images that are not root-trusted (``fs_identity`` given) only the owner's own uid
    is granted: another one would have the audit trail blame someone else.  A loginuid
    that cannot be given is not a refusal but a note: it names the login session the
    process descends from, and the restored one descends from this restore's session;
    programs do not depend on it (audit does), and refusing would forbid every restore
    from another session without CAP_AUDIT_CONTROL.  Writing it starts a new audit
    session id (``sessionid``), which is not restored."""
    recorded = proc.loginuid
    if recorded is None:
        return []
    current = procfs.read_loginuid(os.getpid())
    if recorded == current:
        return []
    if current is None:
        return [f"loginuid {recorded} not restored: this kernel has no audit support"]
    if fs_identity is not None and recorded != fs_identity[0]:
        return [f"loginuid {recorded} not restored: the images belong to uid {fs_identity[0]}, whose process may "
                f"carry only its own; it keeps this restore's ({current})"]
    try:
        fd = os.open("/proc/self/loginuid", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(recorded).encode())
        finally:
            os.close(fd)
    except OSError as err:
        return [f"loginuid {recorded} not restored ({err.strerror}: changing a loginuid that is set needs "
                f"CAP_AUDIT_CONTROL); it keeps this restore's ({current})"]
    return []


def take_fs_identity(uid: int, gid: int, groups: list[int]) -> None:
    """Check file access as ``uid``/``gid``/``groups`` from now on (this thread only);
    ``UntrustedImage`` if this process may not (no CAP_SETUID/CAP_SETGID)."""
    try:
        fs.set_thread_fs_identity(uid, gid, groups)
    except OSError as err:
        raise UntrustedImage(f"cannot open files as uid {uid} gid {gid}, the images' owner: "
                             f"{err.strerror or err}") from None


def maps_identity(dev: str, inode: int) -> FileIdentity | None:
    """The identity /proc/PID/maps gives a mapped file (device field and inode); None without one."""
    if not inode:
        return None
    major, _, minor = dev.partition(":")
    try:
        return FileIdentity(os.makedev(int(major, 16), int(minor, 16)), inode)
    except ValueError:
        raise ImageError(f"malformed device {dev!r} in a VMA record") from None


def vma_identity(vma: VmaRecord) -> FileIdentity | None:
    """The identity a restore requires of the file of a file VMA: what its path led to at
    dump (``file_dev``/``file_ino``/``file_mnt_id``), else (older images, or a path that
    did not lead to the mapped file) the maps device and inode of the mapped file."""
    if vma.file_dev is not None and vma.file_ino is not None:
        return FileIdentity(vma.file_dev, vma.file_ino, vma.file_mnt_id)
    return maps_identity(vma.dev, vma.inode)

"""inotify: an instance, its watches by inode, and the events it has queued (fs/notify/inotify/).

Dump.  fdinfo has a line per watch (fs/notify/fdinfo.c ``inotify_fdinfo``, in
hex): its descriptor ``wd``, the inode (``ino``, and ``sdev``, the
superblock's dev_t in the kernel's encoding, MAJOR << 20 | MINOR), the
``mask`` it keeps (``inotify_mark_user_mask``: the events, IN_ONESHOT,
IN_EXCL_UNLINK), and a file handle of the inode.  A watch is on an inode, not
a path: the dump finds a path by opening the handle (``open_by_handle_at``
on a mount of that filesystem from /proc/self/mountinfo, which needs
CAP_DAC_READ_SEARCH) and reading the link of the fd it gets, then checks that
the path leads, with no symlink, to that very inode, and records the path
with the identity it led to (device, inode, mount, file type).  A watch no
path leads to (a file whose dentry the kernel cannot reconnect, a symlink
watched with IN_DONT_FOLLOW, a filesystem without file handles) is recorded
with why, and refused.  Events queued and not read yet cannot be recorded:
reading them takes them from the process, and nothing puts events back into
a queue.  The dump asks only how many bytes wait (``FIONREAD`` on its copy of
the fd), and a restore refuses an instance that had any.

Restore.  ``inotify_init1``, then each watch in the order of its number:
the recorded path opened as any restored path is (:func:`ckpt.trust.open_verified`:
no symlink, the recorded device, inode, mount and type, as the restored
process's identity when the images are not root-trusted), and watched with
``inotify_add_watch`` through that fd (``/proc/self/fd/N``); the kernel checks
read permission on it as that identity too.  Watch descriptors are numbered
cyclically (:mod:`ckpt._sys.inotify`): a new instance gives 1, 2, 3, ... in
order, so watches added in the order of their numbers get them back, and a
number that was not in use at the dump (the process removed that watch) is
skipped by adding the next watch, removing it and adding it again, at most
:data:`MAX_SKIPPED` times per instance (13 µs a number here: 0.86 s for
65,536, done twice with the preflight).  Each removal queues an IN_IGNORED
event, so an instance whose numbers had gaps has its queue emptied at the end:
events its watches caught while the restore ran are dropped with them, as
those caught between the dump and the restore were.  The next watch the
process adds gets the number after its highest one, which may differ from
what it would have had (its last watch may have been removed).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .. import trust
from .._sys import fs
from .._sys import inotify as ino
from .._sys.fhandle import open_by_handle_at
from ..errors import ImageError, UntrustedImage
from .anon import AnonKind, closed_on_error, set_status_flags
from ..image.schema import InotifyFile, InotifyWatch
from .base import PlannedFile, Probe, RestoreContext, Subject

MAX_SKIPPED = 1 << 16   # watch numbers a restore skips per instance (each costs an add and a remove)
_MINORBITS = 20         # include/linux/kdev_t.h: the kernel's dev_t is MAJOR << 20 | MINOR


class Inotify(AnonKind):
    """Kind "inotify" (record ``file_inotify``, its watches ``inotify_watch``)."""

    names = ("inotify",)
    anon_name = "inotify"
    access = os.O_RDONLY    # inotify_init1: O_RDONLY | (flags & O_NONBLOCK)

    def dump(self, probe: Probe) -> dict[str, Any]:
        queued = ino.queued_bytes(probe.getfd())
        lines = probe.fdinfo().extra.get("inotify wd", "")
        with _mounts() as mount_fd:
            watches = [_watch(_fields(line), mount_fd) for line in lines.split("\n") if line]
        watches.sort(key=lambda w: w["wd"])
        return {"watches": watches, "queued": queued}

    def describe(self, file: InotifyFile) -> str:
        count = len(file.watches)
        return f"an inotify instance ({file.target}, {count} watch{'es' if count != 1 else ''})"

    def reasons(self, file: InotifyFile, subject: Subject) -> list[str]:
        out = self.flag_reasons(file, subject)
        who = f"{subject} ({self.describe(file)})"
        if file.queued:
            out.append(f"{who} had {file.queued} bytes of events queued: reading them would have taken "
                       "them from the process, so ckpt cannot restore them (dump again once it has read them)")
        seen: set[tuple[int, int]] = set()
        for w in file.watches:
            where = f"{who}: watch {w.wd} on {_where(w)}"
            if w.path is None:
                out.append(f"{where}: {w.unresolved or 'the dump found no path to it'}")
            if w.mask & ~ino.WATCH_MASK or not w.mask & ino.IN_ALL_EVENTS:
                out.append(f"{where} has mask {w.mask:#x}, which no watch keeps: the image was edited")
            if (w.dev, w.ino) in seen:
                out.append(f"{where} watches an inode watched already: the image was edited")
            seen.add((w.dev, w.ino))
        skipped = _skipped(file.watches)
        if skipped > MAX_SKIPPED:
            out.append(f"{who} has watch numbers up to {max(w.wd for w in file.watches)} with {skipped} "
                       f"unused below them: a restore reproduces at most {MAX_SKIPPED} unused numbers")
        return out

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        os.close(self.open(planned, ctx))   # every path opened and watched as the child will

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        fd = ino.inotify_init1(ino.IN_NONBLOCK | ino.IN_CLOEXEC)
        with closed_on_error(fd):
            if _add_watches(fd, f.watches, planned, ctx):
                _drain(fd)   # the IN_IGNORED of the numbers skipped (module docstring)
            set_status_flags(fd, f.flags)
        return fd


# -- dump ---------------------------------------------------------------------------------


def _fields(line: str) -> dict[str, str]:
    """One fdinfo watch line as its ``key:value`` words ("1 ino:2220ea sdev:fe00000 mask:4 ...":
    what follows ``inotify wd:``)."""
    out = {}
    for word in f"wd:{line}".split():
        key, _, value = word.partition(":")
        out[key] = value
    return out


@contextmanager
def _mounts() -> Iterator[Any]:
    """A ``mount_fd(dev)`` for the dump of one instance: an fd of a mount of filesystem
    ``dev`` (None when ckpt sees none), opened on first use, all closed on exit."""
    opened: dict[int, int | None] = {}

    def mount_fd(dev: int) -> int | None:
        if dev not in opened:
            opened[dev] = _open_mount(dev)
        return opened[dev]

    try:
        yield mount_fd
    finally:
        for fd in opened.values():
            if fd is not None:
                os.close(fd)


def _open_mount(dev: int) -> int | None:
    """An open directory on a mount of filesystem ``dev`` in ckpt's mount namespace: ``/``
    when it is on that filesystem (most watches are; no mountinfo to read), else the mount of
    the filesystem's own root, else the one with the shortest mount point."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if os.fstat(fd).st_dev == dev:
        return fd
    os.close(fd)
    candidates = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            words = line.split()
            major, _, minor = words[2].partition(b":")
            if os.makedev(int(major), int(minor)) == dev:
                root, point = _unescape(words[3]), _unescape(words[4])
                candidates.append((root != "/", len(point), point))
    for _, _, point in sorted(candidates):
        try:
            fd = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        if os.fstat(fd).st_dev == dev:   # not hidden by a mount over it
            return fd
        os.close(fd)
    return None


def _unescape(field: bytes) -> str:
    """A mountinfo path: space, tab, newline and backslash are written as octal escapes."""
    for code in (b"\\040", b"\\011", b"\\012", b"\\134"):
        field = field.replace(code, bytes([int(code[1:], 8)]))
    return os.fsdecode(field)


def _watch(line: Mapping[str, str], mount_fd: Any) -> dict[str, Any]:
    """The record of one watch: its number and mask, and the path that leads to its inode."""
    sdev = int(line["sdev"], 16)
    record: dict[str, Any] = {
        "wd": int(line["wd"], 16), "mask": int(line["mask"], 16), "ino": int(line["ino"], 16),
        "dev": os.makedev(sdev >> _MINORBITS, sdev & ((1 << _MINORBITS) - 1)),
        "mnt_id": None, "mode": 0, "path": None, "unresolved": "",
    }
    try:
        record.update(_find_path(line, record["dev"], record["ino"], mount_fd))
    except _Unresolved as why:
        record["unresolved"] = str(why)
    return record


class _Unresolved(Exception):
    """Why no path was found for a watch (recorded, and a restore refuses it by name)."""


def _find_path(line: Mapping[str, str], dev: int, inode: int, mount_fd: Any) -> dict[str, Any]:
    if "f_handle" not in line:
        raise _Unresolved("the kernel gives no file handle for it (the filesystem cannot export one)")
    where = mount_fd(dev)
    if where is None:
        raise _Unresolved(f"no mount of device {os.major(dev)}:{os.minor(dev)} is visible to ckpt")
    try:
        handle = bytes.fromhex(line["f_handle"])
        found = open_by_handle_at(where, int(line["fhandle-type"], 16), handle, os.O_PATH | os.O_CLOEXEC)
    except PermissionError:
        raise _Unresolved("finding the path of a watch needs CAP_DAC_READ_SEARCH (open_by_handle_at)") from None
    except OSError as err:
        raise _Unresolved(f"its file handle cannot be opened: {err.strerror}") from None
    except ValueError:
        raise _Unresolved(f"malformed file handle {line['f_handle']!r} in fdinfo") from None
    try:
        st = os.fstat(found)
        if (st.st_dev, st.st_ino) != (dev, inode):
            raise _Unresolved("its file handle leads to another inode")
        if stat.S_ISLNK(st.st_mode):   # watched with IN_DONT_FOLLOW
            raise _Unresolved("it is a symbolic link, which a restore does not watch (it opens no symlink)")
        path = os.readlink(f"/proc/self/fd/{found}")
        return {"path": path, "mode": st.st_mode, **_identity(path, dev, inode)}
    finally:
        os.close(found)


def _identity(path: str, dev: int, inode: int) -> dict[str, Any]:
    """The identity ``path`` leads to without a symlink: the watched inode's, or _Unresolved."""
    if not path.startswith("/") or path.endswith(" (deleted)"):
        raise _Unresolved(f"its inode has no path ckpt can reach ({path})")
    try:
        fd = fs.openat2(path, os.O_PATH | os.O_CLOEXEC, fs.RESOLVE_NO_SYMLINKS | fs.RESOLVE_NO_MAGICLINKS)
    except OSError as err:
        raise _Unresolved(f"{path}, the path of its inode, cannot be opened without a symlink: "
                          f"{err.strerror}") from None
    try:
        found = trust.FileIdentity.of(fd=fd)
    finally:
        os.close(fd)
    if (found.dev, found.ino) != (dev, inode):
        raise _Unresolved(f"{path}, the path of its inode, leads to another file")
    return {"dev": found.dev, "ino": found.ino, "mnt_id": found.mnt_id}


# -- restore -------------------------------------------------------------------------------


def _where(watch: InotifyWatch) -> str:
    dev = watch.dev
    return watch.path or f"device {os.major(dev)}:{os.minor(dev)} inode {watch.ino}"


def _skipped(watches: Sequence[InotifyWatch]) -> int:
    """Numbers below the highest watch descriptor that no watch had: what a restore skips."""
    return max((w.wd for w in watches), default=0) - len(watches)


def _add_watches(fd: int, watches: Sequence[InotifyWatch], planned: PlannedFile, ctx: RestoreContext) -> int:
    """Add the recorded watches to the new instance ``fd`` with their numbers (module
    docstring); how many numbers were skipped."""
    skipped = 0
    placed: set[int] = set()
    for w in sorted(watches, key=lambda w: w.wd):
        what = f"checkpoint {ctx.checkpoint}: {planned.what}: inotify watch {w.wd} on {w.path}"
        expected = trust.FileIdentity(w.dev, w.ino, w.mnt_id)
        target = trust.open_verified(w.path, os.O_PATH, expected, what, same_boot=ctx.same_boot,
                                     mode=w.mode or None)
        try:
            while True:
                wd = _add(fd, target, w.mask, what)
                if wd == w.wd:
                    placed.add(wd)
                    break
                if wd > w.wd or wd in placed or skipped >= MAX_SKIPPED:
                    raise ImageError(f"{what}: it came out as watch {wd}: the numbering cannot be reproduced")
                ino.rm_watch(fd, wd)   # a number no watch had at the dump
                skipped += 1
        finally:
            os.close(target)
    return skipped


def _add(fd: int, target: int, mask: int, what: str) -> int:
    try:
        # The magic link of the verified fd: the kernel watches the inode it was opened on.
        return ino.add_watch(fd, f"/proc/self/fd/{target}", mask)
    except PermissionError as err:
        uid, gid, _ = fs.thread_fs_identity()
        raise UntrustedImage(f"{what}: uid {uid} (gid {gid}) may not watch it: {err.strerror}") from None
    except OSError as err:
        raise ImageError(f"{what}: inotify_add_watch failed: {err.strerror}") from None


def _drain(fd: int) -> None:
    """Read and drop every event queued on non-blocking instance ``fd``."""
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except BlockingIOError:
            return


INOTIFY = Inotify()

"""Paths nobody else controls: how ckpt opens files in directories users may own.

ckpt often runs as root on directories other users can reach (an images
directory given with ``-D``, the tracking registry under /tmp).  Two rules keep
another user from redirecting what it writes or reads:

* A directory ckpt writes into must be owned by the caller and not writable by
  group or others, and every ancestor owned by root or the caller and not
  writable by group or others unless sticky (/tmp is fine: in a sticky
  directory nobody can rename or remove another user's entry).  This is the
  walk of OpenSSH's ``safe_path()`` (misc.c), done on the resolved path.
* Files are opened with ``O_NOFOLLOW`` (and created with ``O_EXCL``), and what
  was actually opened is then checked with ``fstat``: a regular file, with the
  expected owner and one link.  A symlink (or a hard link to someone else's
  file) planted in place of ``.lock`` can then neither be truncated nor chmod'ed.

Nothing here imports the rest of ckpt: the tracking registry uses it too, and
it must stay importable without the image codec.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["unsafe_dir", "open_nofollow", "make_dir", "make_dirs"]


def unsafe_dir(path: str | os.PathLike[str], *, private: bool = False) -> str | None:
    """Why the directory ``path`` is not safe for the caller to write into, or None if it is.

    The directory itself must not be a symlink, must be owned by the caller's
    effective uid and not writable by group or others (``private``: no group
    or other bits at all).  Each ancestor of its resolved path must be owned by
    root or the caller and not writable by group or others unless sticky.
    The answer is a phrase to put after the path ("is owned by uid 1001, ...").
    """
    uid = os.geteuid()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be examined ({err.strerror})"
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by uid {uid} (you)"
    if mode & (0o077 if private else 0o022):
        what = "accessible" if private else "writable"
        return f"is {what} by group or others (mode {mode:04o})"
    real = Path(os.path.realpath(path))
    for ancestor in real.parents:
        try:
            st = os.stat(ancestor)
        except OSError as err:
            return f"cannot be trusted: its ancestor {ancestor} cannot be examined ({err.strerror})"
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, uid):
            return f"cannot be trusted: its ancestor {ancestor} is owned by uid {st.st_uid}"
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return (f"cannot be trusted: its ancestor {ancestor} is writable by group or others "
                    f"(mode {mode:04o}) and not sticky")
    return None


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o600, *, depth: int = 1,
                  owner: int | None = None) -> int:
    """Open ``path`` without following a symlink in its last ``depth`` components; return the fd.

    ``depth=2`` is for ``DIR/NNNNNN/meta.ckpt``: neither the checkpoint
    directory nor the file may be a symlink (the directory is opened with
    ``O_NOFOLLOW`` and the file relative to it, so nothing can be swapped in
    between).  What was opened must be a regular file; with ``owner``, owned
    by that uid and with a single link (a hard link to another user's file is
    refused before anything is written to it — open with ``O_TRUNC`` never).
    Raises ``OSError`` with ``ELOOP`` naming the symlink, or ``EPERM``/``EINVAL``
    for a file that is not what it should be.
    """
    path = Path(path)
    wanted_nonblock = flags & os.O_NONBLOCK
    # O_NONBLOCK: a FIFO planted where a file belongs would block the open itself
    # (fifo_open waits for a writer), before the fstat below could refuse it.
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    assert not flags & os.O_TRUNC, "O_TRUNC would act before the fstat checks"
    dir_fd = None
    try:
        if depth > 1:
            dir_fd = _open_dir_nofollow(path.parent, depth - 1)
        try:
            fd = os.open(path.name if dir_fd is not None else path, flags, mode, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(path)) from None
            raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(path))
        if owner is not None and st.st_uid != owner:
            raise OSError(errno.EPERM, f"is owned by uid {st.st_uid}, not by uid {owner}", str(path))
        if owner is not None and st.st_nlink != 1:
            raise OSError(errno.EPERM, f"has {st.st_nlink} hard links", str(path))
        if not wanted_nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dir(path: str | os.PathLike[str]) -> None:
    """Create the directory ``path`` (not its parents) with mode 0700 exactly.

    The mode is set through an fd opened with ``O_NOFOLLOW``: the umask can only
    narrow the mode given to ``mkdir``, and a ``chmod`` by path would follow a
    symlink swapped in after the ``mkdir``.
    """
    os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and its missing parents, each with mode 0700 (see :func:`make_dir`);
    an existing one (or a concurrent creator's) is left as it is."""
    missing = []
    path = Path(path).absolute()
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            make_dir(path)
        except FileExistsError:
            continue


def _open_dir_nofollow(path: Path, depth: int) -> int:
    """A directory fd for ``path``, refusing a symlink in its last ``depth`` components."""
    parts = [path]
    for _ in range(depth - 1):
        parts.insert(0, parts[0].parent)
    fd = os.open(parts[0].parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                new = os.open(part.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as err:
                # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (or ELOOP):
                # tell a symlink from a file by looking at the entry itself.
                if err.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(part.name, fd):
                    raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(part)) from None
                raise
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False

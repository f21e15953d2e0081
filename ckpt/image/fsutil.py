"""Small file-system helpers for the image layer: exact modes, full writes, fsync.

Checkpoint images hold a process's memory (keys, passwords), so every file is
created 0600 and every directory 0700, and the mode is then set again with
``fchmod``: the umask can only narrow the mode passed to ``open`` and
``mkdir``, and a narrowed mode (say 0400 under umask 0277) would break the
writer itself.

Nothing here follows a symlink (see ckpt/safepath.py): files are created with
``O_EXCL|O_NOFOLLOW``, directories are re-opened with ``O_NOFOLLOW`` before
their mode is set, and reads refuse a symlink and anything but a regular file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ckpt.safepath import make_dir, open_nofollow

__all__ = ["FILE_MODE", "DIR_MODE", "create_file", "write_all", "start_writeback", "fsync_dir", "make_dir",
           "read_file"]

FILE_MODE = 0o600
DIR_MODE = 0o700  # what make_dir (from ckpt.safepath, re-exported here) creates


def create_file(path: Path) -> int:
    """Create ``path`` (it must not exist; a symlink counts as existing) with mode 0600; return the fd."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``, continuing after short writes."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + nbytes)`` of ``fd`` to the disk now,
    without waiting (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that a final ``fsync``
    finds most of the file written already instead of writing all of it then.  Only a hint:
    a file system that refuses it (EINVAL, ESPIPE) just leaves the work to ``fsync``."""
    from ckpt._sys.fs import SYNC_FILE_RANGE_WRITE, sync_file_range   # lazily: ctypes set-up

    try:
        sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP):
            raise


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path, *, depth: int = 1) -> bytes:
    """Return the whole content of the regular file ``path``.

    No symlink is followed in the last ``depth`` components of ``path``
    (2 for ``DIR/NNNNNN/meta.ckpt``: the checkpoint directory must be real).
    """
    fd = open_nofollow(path, os.O_RDONLY, depth=depth)
    with os.fdopen(fd, "rb") as f:
        return f.read()

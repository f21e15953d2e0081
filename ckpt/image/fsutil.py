"""Small file-system helpers for the image layer: exact modes, full writes, fsync.

Checkpoint images hold a process's memory (keys, passwords), so every file is
created 0600 and every directory 0700, and the mode is then set again with
``fchmod``/``chmod``: the umask can only narrow the mode passed to ``open`` and
``mkdir``, and a narrowed mode (say 0400 under umask 0277) would break the
writer itself.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FILE_MODE", "DIR_MODE", "create_file", "write_all", "fsync_dir", "make_dir", "read_file"]

FILE_MODE = 0o600
DIR_MODE = 0o700


def create_file(path: Path, *, exclusive: bool = True) -> int:
    """Open ``path`` for writing, created with mode 0600, and return the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
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


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path) -> None:
    """Create the directory ``path`` (not its parents) with mode 0700 exactly."""
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)


def read_file(path: Path) -> bytes:
    """Return the whole content of ``path``."""
    with open(path, "rb") as f:
        return f.read()

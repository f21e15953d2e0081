"""The fd table and the open files it points at, as a checkpoint recorded them.

Since task state version 2 (``FILES_MODEL_VERSION``) the state holds
``files``, the open file descriptions by id, apart from ``fds``, the fd table
(fd number -> file id, close-on-exec): fds made by ``dup``, ``dup2``,
``F_DUPFD`` or inherited over ``fork`` share one description, its offset and
its status flags, and a restore must give them one again.  Version 1 recorded
one record per fd, mixing both; it is read here as what version 1 restores
did: each fd its own open file.  Every reader goes through :func:`from_state`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..image.schema import FILES_MODEL_VERSION, ChardevFile, Fd, FdV1, File, RegularFile, State, UnsupportedFile


FdEntry = Fd   # one entry of the fd table: the image's own record (fd, file id, cloexec)


@dataclass(frozen=True)
class FdTable:
    """The fd table of a checkpoint and its open files."""

    files: Mapping[int, File]   # id -> record, in id order
    fds: tuple[FdEntry, ...]          # sorted by fd number

    def by_file(self) -> dict[int, list[FdEntry]]:
        """file id -> its fd entries (ascending), in id order."""
        out: dict[int, list[FdEntry]] = {i: [] for i in self.files}
        for entry in self.fds:
            out.setdefault(entry.file, []).append(entry)
        return out

    def at(self, fd: int) -> File | None:
        """The open file at fd number ``fd``, or None if that fd was closed."""
        for entry in self.fds:
            if entry.fd == fd:
                return self.files.get(entry.file)
        return None

    @property
    def top(self) -> int:
        """The first fd number above every recorded fd (at least 3)."""
        return max([e.fd for e in self.fds] + [2]) + 1


def from_state(state: State) -> FdTable:
    """The fd table of a checkpoint's task ``state``, whatever its version."""
    if (state.version or 1) < FILES_MODEL_VERSION:
        return from_v1([e for e in state.fds or () if isinstance(e, FdV1)])
    files = {f.id: f for f in sorted(state.files or (), key=lambda f: f.id)}
    fds = tuple(sorted((e for e in state.fds or () if isinstance(e, Fd)), key=lambda e: e.fd))
    return FdTable(files, fds)


# Version 1 fd kinds that are a kind of their own now; any other is "unsupported".
_V1_KINDS = ("regular", "directory", "chardev")


def from_v1(records: Sequence[FdV1]) -> FdTable:
    """Version-1 fd records as a table where each fd is its own open file (what a
    version-1 restore made of them): id N for the N-th fd by number."""
    files: dict[int, File] = {}
    fds = []
    for file_id, r in enumerate(sorted(records, key=lambda r: r.fd), 1):
        flags = r.flags
        kind = r.kind if r.kind in _V1_KINDS and not r.deleted else "unsupported"
        common = dict(id=file_id, kind=kind, target=r.target, flags=flags & ~os.O_CLOEXEC, pos=r.pos,
                      mode=r.mode, dev=r.dev, ino=r.ino, rdev=r.rdev, mnt_id=r.mnt_id, locks=r.locks)
        if kind in ("regular", "directory"):
            files[file_id] = RegularFile(**common, size=r.size, mtime_ns=r.mtime_ns)
        elif kind == "chardev":
            files[file_id] = ChardevFile(**common)
        else:
            files[file_id] = UnsupportedFile(**common, type=r.kind, anon_type=r.anon_type, deleted=r.deleted)
        fds.append(Fd(fd=r.fd, file=file_id, cloexec=bool(flags & os.O_CLOEXEC)))
    return FdTable(files, tuple(fds))

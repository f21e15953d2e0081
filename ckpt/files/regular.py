"""Regular files and directories: reopened by path, verified to be the file the dump saw.

The restore child opens the recorded path with :func:`ckpt.trust.open_verified`
(no symlink, the recorded device, inode, mount and file type) with the recorded
access mode and status flags, then sets the recorded offset.  A file deleted
while open has no path to reopen: the checkpoint keeps it (:mod:`ckpt.files.ghost`).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from .. import trust
from ..errors import ImageError
from ..image.schema import RegularFile
from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject, reopen_flags

# An entry of a process's /proc directory (readlink shows /proc/self/... as /proc/PID/...):
# its inodes are made for that process (fs/proc/base.c proc_pid_make_inode), so reopening the
# path finds another inode, or another process's entry, or nothing.
_PROC_PID = re.compile(r"/proc/\d+(/|$)")


class Regular(FileKind):
    """Kinds "regular" and "directory" (record ``file_regular``)."""

    names = ("regular", "directory")

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        return f.kind if f.kind in self.names and not f.deleted else None

    def dump(self, probe: Probe) -> dict[str, Any]:
        return {"size": probe.file.size, "mtime_ns": probe.file.mtime_ns}

    def describe(self, file: RegularFile) -> str:
        return f"the {'directory' if file.kind == 'directory' else 'file'} {file.target}"

    def reasons(self, file: RegularFile, subject: Subject) -> list[str]:
        """What a path cannot give back: no path at all (an nsfs file, "net:[4026531840]",
        or another pseudo file), or an entry of a process's /proc directory."""
        path, verb = file.target, subject.verb("is", "are")
        if not path.startswith("/"):
            return [f"{subject} {verb} {path}, a file with no path to open again (a namespace or another "
                    "pseudo file), which ckpt cannot restore yet"]
        if _PROC_PID.match(path):
            return [f"{subject} {verb} {path}, an entry of a process's /proc directory, which a restore "
                    "cannot open again as the same file"]
        return []

    def check(self, planned: PlannedFile) -> None:
        path = planned.file.target
        if planned.file.kind == "regular" and not os.path.exists(path):
            raise ImageError(f"{planned.subject}: file {path} no longer exists")

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        os.close(reopen(planned, ctx))

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        fd = reopen(planned, ctx)
        # The offset of a directory is a filesystem cookie (getdents), and an O_PATH fd
        # has none (lseek fails with EBADF): only a regular file's is set.
        if stat.S_ISREG(f.mode) and not f.flags & os.O_PATH:
            os.lseek(fd, f.pos, os.SEEK_SET)
        return fd


def expected_identity(planned: PlannedFile, ctx: RestoreContext) -> trust.FileIdentity:
    """The identity the reopened file must have; ImageError when the dump recorded none."""
    expected = trust.FileIdentity.from_record(planned.file)
    if expected is None:
        raise ImageError(f"checkpoint {ctx.checkpoint}: {planned.what}: the dump recorded no identity for it")
    return expected


def reopen(planned: PlannedFile, ctx: RestoreContext) -> int:
    """Open the recorded path as the dump saw it (:func:`ckpt.trust.open_verified`), with
    the recorded access mode and status flags; the new fd (close-on-exec)."""
    f = planned.file
    return trust.open_verified(f.target, reopen_flags(f.flags), expected_identity(planned, ctx),
                               planned.what, same_boot=ctx.same_boot, mode=f.mode or None)


REGULAR = Regular()

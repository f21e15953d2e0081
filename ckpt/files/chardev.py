"""Character devices (a terminal, /dev/null, /dev/urandom): reopened by path.

As a regular file (:func:`ckpt.files.regular.reopen`: the recorded device,
inode, mount and file type), but never opened before the fork -- opening a
device can do something (a watchdog) -- and without an offset, which means
nothing to the devices a process keeps open.
"""

from __future__ import annotations

from .base import FileKind, FileRecord, PlannedFile, Probe, RestoreContext
from .regular import expected_identity, reopen


class CharDevice(FileKind):
    """Kind "chardev" (record ``file_chardev``)."""

    names = ("chardev",)

    def claims(self, probe: Probe) -> str | None:
        return "chardev" if probe.file.kind == "chardev" and not probe.file.deleted else None

    def describe(self, file: FileRecord) -> str:
        return str(file["target"])

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        expected_identity(planned, ctx)   # refused before the fork; the child opens it

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        return reopen(planned, ctx)


CHARDEV = CharDevice()

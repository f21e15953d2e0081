"""Character devices (/dev/null, /dev/urandom): reopened by path.

Terminals are not theirs: :mod:`ckpt.files.tty` claims them first.  A terminal an
older ckpt recorded as a character device is refused (a pts index may belong to
another session since the dump).

As a regular file (:func:`ckpt.files.regular.reopen`: the recorded device,
inode, mount and file type), but never opened before the fork -- opening a
device can do something (a watchdog) -- and without an offset, which means
nothing to the devices a process keeps open.
"""

from __future__ import annotations

from ..image.schema import ChardevFile
from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject
from .regular import expected_identity, reopen
from .tty import is_terminal_device


class CharDevice(FileKind):
    """Kind "chardev" (record ``file_chardev``)."""

    names = ("chardev",)

    def claims(self, probe: Probe) -> str | None:
        return "chardev" if probe.file.kind == "chardev" and not probe.file.deleted else None

    def describe(self, file: ChardevFile) -> str:
        return str(file.target)

    def reasons(self, file: ChardevFile, subject: Subject) -> list[str]:
        if is_terminal_device(file.rdev):
            return [f"{subject} {subject.verb('is', 'are')} the terminal {file.target}, recorded by an older "
                    "ckpt as a device to reopen by path, which would not be the same terminal"]
        return []

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        expected_identity(planned, ctx)   # refused before the fork; the child opens it

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        return reopen(planned, ctx)


CHARDEV = CharDevice()

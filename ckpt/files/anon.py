"""What the kinds made by a syscall on an anonymous inode share (eventfd, signalfd, timerfd, inotify).

Such an open file has no path to reopen: a restore creates the object anew
with its syscall and puts it in the recorded state.  Each is recognised by the
name of its anon inode (the /proc/PID/fd link ``anon_inode:[eventfd]``,
``anon_inode:inotify``: :attr:`ckpt.procfs.OpenFile.anon_type`).  Their
``f_flags`` are what the syscall made -- an access mode, and ``O_NONBLOCK``
when asked for -- plus what ``fcntl(F_SETFL)`` changed since: ``O_NONBLOCK``
and ``O_APPEND`` (which means nothing to these objects) are set again the
same way; ``O_ASYNC`` (only inotify has a ``->fasync``) with its owner by
:mod:`ckpt.files.fown`; the other bits F_SETFL takes (``O_DIRECT``, ``O_NOATIME``)
do not apply to them: a record with any of them is refused.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from ..image.schema import File
from .base import FileKind, Probe, Subject, article
from .fown import O_ASYNC

# f_flags status bits a restore sets again with F_SETFL (fs/fcntl.c setfl).
RESTORED_STATUS = os.O_NONBLOCK | os.O_APPEND


class AnonKind(FileKind):
    """A kind whose open file is an object on an anonymous inode, made by one syscall."""

    anon_name: ClassVar[str]              # the anon inode's name, as /proc/PID/fd shows it
    access: ClassVar[int] = os.O_RDWR     # the access mode the syscall gives the open file

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        return self.names[0] if f.kind == "anon" and f.anon_type == self.anon_name else None

    def describe(self, file: File) -> str:
        return f"{article(self.anon_name)} {self.anon_name} ({file.target})"

    def flag_reasons(self, file: File, subject: Subject) -> list[str]:
        """Why the recorded ``f_flags`` cannot be given back (see the module docstring)."""
        from .rules import flags_text   # rules imports the registry, which imports this module

        flags = file.flags
        if flags & os.O_ACCMODE != self.access:
            return [f"{subject} {subject.verb('is', 'are')} {self.describe(file)} open {flags_text(flags)}, "
                    f"but {self.anon_name} files are {flags_text(self.access)}: the image was edited"]
        extra = flags & ~os.O_ACCMODE & ~RESTORED_STATUS & ~O_ASYNC   # O_ASYNC: ckpt/files/fown.py
        if extra:
            return [f"{subject} {subject.verb('has', 'have')} status flags "
                    f"{flags_text(extra).removeprefix('O_RDONLY|')} on {self.describe(file)}, which ckpt cannot "
                    "restore"]
        return []

    def reasons(self, file: File, subject: Subject) -> list[str]:
        return self.flag_reasons(file, subject)


def set_status_flags(fd: int, flags: int) -> None:
    """Give the new open file ``fd`` the recorded status flags (O_NONBLOCK, O_APPEND)."""
    current = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = (current & ~RESTORED_STATUS) | (flags & RESTORED_STATUS)
    if wanted != current:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)


def creation_flags(flags: int) -> int:
    """O_NONBLOCK from the recorded ``f_flags``, and O_CLOEXEC: the flags an ``eventfd``,
    ``signalfd``, ``timerfd_create`` or ``inotify_init1`` call takes (the registry sets
    each fd's own close-on-exec once it is in place)."""
    return (flags & os.O_NONBLOCK) | os.O_CLOEXEC


@contextmanager
def closed_on_error(fd: int) -> Iterator[int]:
    """Close the new open file ``fd`` if putting it in its recorded state fails."""
    try:
        yield fd
    except BaseException:
        os.close(fd)
        raise

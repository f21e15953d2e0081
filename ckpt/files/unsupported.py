"""Every open file no other kind records: refused at restore, by name.

Sockets, anonymous inodes (eventfd, epoll, signalfd, timerfd, inotify,
io_uring, ...), block devices, deleted directories, FIFOs and devices (a
deleted regular file is a ghost: ckpt/files/ghost.py), and the pipes and FIFOs
of checkpoints taken before ckpt/files/pipe.py (the deleted files of those
before ckpt/files/objects.py).  The
record keeps what names it (the file type, the anon inode's name, whether it
was deleted), so that ``inspect``, ``verify``, ``dump --kill`` and ``restore``
say what it is.  A kind that learns to restore some of these claims them
before this one (ckpt/files/__init__.py ``KINDS``); checkpoints taken before
keep kind "unsupported" and stay refused: they hold nothing to restore from.
"""

from __future__ import annotations

from typing import Any

from ..image.schema import UnsupportedFile
from .base import FileKind, Probe, Subject, article


class Unsupported(FileKind):
    """Kind "unsupported" (record ``file_unsupported``)."""

    names = ("unsupported",)

    def claims(self, probe: Probe) -> str | None:
        return "unsupported"   # the last of KINDS: whatever the others left

    def dump(self, probe: Probe) -> dict[str, Any]:
        f = probe.file
        return {"type": f.kind, "anon_type": f.anon_type, "deleted": f.deleted}

    def describe(self, file: UnsupportedFile) -> str:
        kind, target = file.type, file.target
        if kind == "fifo":
            return f"a pipe ({target})" if target.startswith("pipe:") else f"the FIFO {target}"
        if kind == "socket":
            return f"a socket ({target})"
        if kind == "anon":
            what = file.anon_type or "anonymous inode"
            return f"{article(what)} {what} ({target})"
        if kind == "regular":
            return f"the file {target}"
        if kind == "directory":
            return f"the directory {target}"
        if kind == "chardev":
            return str(target)
        return f"{article(kind)} {kind} ({target})"

    def reasons(self, file: UnsupportedFile, subject: Subject) -> list[str]:
        if file.deleted:
            return [f"{subject} {subject.verb('refers', 'refer')} to a deleted file ({file.target})"]
        return [f"{subject} {subject.verb('is', 'are')} {self.describe(file)}, which ckpt cannot restore yet"]


UNSUPPORTED = Unsupported()

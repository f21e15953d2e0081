"""Files deleted while open ("ghost files", as CRIU calls them): their open files, and
making such a file again.

A file unlinked while a process holds it open lives on without a name: /proc
shows ``/dir/name (deleted)`` and ``fstat`` ``st_nlink`` 0.  Its content,
size, mode, owner and times belong to the *file object*, recorded once
whatever refers to it (ckpt/files/objects.py); an open file of it (kind
``"ghost"``, record ``file_memfd``) records its flags and offset and which
object it is.

**The limit.**  A checkpoint keeps a ghost's data, so the dump refuses by name
a ghost whose data (its ``SEEK_DATA`` extents: the size of a file without
holes) is larger than ``dump --ghost-limit`` (:data:`DEFAULT_GHOST_LIMIT`,
1 MiB, as CRIU's ``--ghost-limit``): a deleted log of gigabytes would
otherwise be copied into every checkpoint, in the frozen window.

**Making it again** (:func:`make`, in the restore child, with the restored
process's filesystem identity for images not root's).  Its directory -- the
parent of the recorded path -- is opened as the dump saw it
(:func:`ckpt.trust.open_verified`: no symlink, the recorded device, inode and
mount); the file is created there with ``O_CREAT | O_EXCL`` (never through a
symlink, never an existing file), mode 0600 until the restore sets the
recorded one, and unlinked at once, after checking that the name still leads
to it.  So the kernel checks the directory as the restored process: a restore
creates no file where the images' owner could not.  Under its own name when
that name is free, so that /proc shows the same ``/dir/name (deleted)``; when
another file has the name now, under ``name.ckpt-ID``, with a note.  The new
file is another inode (``st_ino``, ``st_ctime`` differ), as any restored file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .. import trust
from ..errors import TargetError
from ..shmem import DELETED_SUFFIX
from ..image.schema import MemfdFile
from .base import Probe
from .memfd import ObjectFile

if TYPE_CHECKING:
    from ..image.schema import Object

DEFAULT_GHOST_LIMIT = 1 << 20


class Ghost(ObjectFile):
    """Kind "ghost"."""

    names = ("ghost",)

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        return "ghost" if f.kind == "regular" and f.deleted else None   # after Memfd in KINDS

    def describe(self, file: MemfdFile) -> str:
        return f"the deleted file {file.target.removesuffix(DELETED_SUFFIX)}"


GHOST = Ghost()


def make(record: Object, same_boot: bool) -> tuple[int, list[str]]:  # pragma: no cover - child
    """The file of ghost ``record`` made again, unlinked (module docstring): its fd
    (O_RDWR, close-on-exec) and the notes on how it differs."""
    path = record.name
    directory, name = os.path.split(path)
    dirfd = trust.open_verified(directory, os.O_PATH | os.O_DIRECTORY, trust.FileIdentity.from_record(record.dir),
                                f"the directory of the deleted file {path}", same_boot=same_boot)
    try:
        for candidate in (name, f"{name}.ckpt-{record.id}", f".ckpt-{os.getpid()}-{record.id}"):
            try:
                fd = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dirfd)
                break
            except FileExistsError:
                continue
        else:
            raise TargetError(f"the deleted file {path}: every name ckpt tries in {directory} is taken")
        try:
            mine, there = os.fstat(fd), os.stat(candidate, dir_fd=dirfd, follow_symlinks=False)
            if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
                raise TargetError(f"the deleted file {path}: {directory}/{candidate} was replaced while ckpt "
                                  "made it; nothing was unlinked")
            os.unlink(candidate, dir_fd=dirfd)
        except BaseException:
            os.close(fd)
            raise
    except OSError as err:
        raise TargetError(f"the deleted file {path} cannot be made again in {directory}: {err.strerror}") from None
    finally:
        os.close(dirfd)
    notes = []
    if candidate != name:
        notes.append(f"the deleted file {path} comes back as {os.path.join(directory, candidate)} (deleted): "
                     f"another file has its name now")
    return fd, notes

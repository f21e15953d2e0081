"""Open files a restore takes from its caller: ``ckpt restore --inherit-fd N:KEY``.

As CRIU's ``--inherit-fd fd[N]:KEY``.  A pipe or FIFO whose other end is outside
the process (its parent's pipe, a shell pipeline) cannot come back from a
checkpoint: that end is not the process's.  The caller of a restore can give it
one instead.  ``KEY`` names an open file as the checkpoint recorded it (its
``target``, as ``ckpt inspect --fds`` shows it: ``pipe:[123]``, a FIFO's path);
``N`` is an fd of the caller.  The restored process gets the caller's open file
description itself at every fd number >= 3 that had that open file (fds 0-2 are
the restore's streams, as always), with the process's status flags set on it
(``F_SETFL``: ``O_NONBLOCK``, ``O_DIRECT``) -- on the caller's description too,
which is one with it, and which the restore notes.  Nothing of the recorded
open file is restored: the bytes of a pipe stay where they were.

:func:`inherit` rewrites the task state before anything reads it: each open file
named becomes an :class:`InheritedFile` (kind ``"inherited"``) holding a
:class:`Given`, a record no image can hold (the schema has none of that kind: an
image that says "inherited" is read as a plain :class:`File`, which is refused).
:func:`handed_down` copies the caller's fds above every fd the restore child
places, for the fork; :class:`Inherited` puts them in place.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..image.schema import FILES_MODEL_VERSION, File, State, TtyFile, UnixFile
from .base import SETFL_MASK, STD_STREAMS, FileKind, PlannedFile, Probe, RestoreContext, Subject

if TYPE_CHECKING:
    from .restore import FdPlan

_TYPES = {stat.S_IFIFO: "a pipe or FIFO", stat.S_IFSOCK: "a socket", stat.S_IFREG: "a regular file",
          stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_READS = (os.O_RDONLY, os.O_RDWR)
_WRITES = (os.O_WRONLY, os.O_RDWR)


@dataclass(frozen=True)
class Given:
    """An fd of the caller given for an open file (``--inherit-fd fd:key``)."""

    fd: int     # -1: an open file a tree's task takes from its ancestor (ckpt/files/handdown.py)
    key: str
    was: File   # the open file it stands for, as the checkpoint recorded it


@dataclass(frozen=True, kw_only=True, slots=True)
class InheritedFile(File):
    """An open file of kind "inherited": the caller's fd ``given`` in place of the recorded
    open file ``given.was``, whose common fields (id, target, flags, ...) it keeps.

    Made by :func:`inherit` from the task state a restore reads, never written to an
    image: it is not one of the schema's records (ckpt/image/schema.py ``FILE_RECORDS``
    has no kind "inherited"), so an image that says "inherited" is read as a plain
    :class:`File` and refused (:meth:`Inherited.reasons`)."""

    given: Given


class Inherited(FileKind):
    """Kind "inherited": an open file the restore takes from its caller (never in an image)."""

    names = ("inherited",)

    def claims(self, probe: Probe) -> str | None:
        return None   # made by a restore, never recorded by a dump

    def describe(self, file: File) -> str:
        if not isinstance(file, InheritedFile):
            return f"an open file of kind 'inherited' ({file.target})"
        from . import kind_named   # the registry imports this module

        given = file.given
        kind = kind_named(given.was.kind)
        was = kind.describe(given.was) if kind is not None else file.target
        return f"the caller's fd {given.fd}, given for {was}"

    def reasons(self, file: File, subject: Subject) -> list[str]:
        if isinstance(file, InheritedFile):
            return []
        return [f"{subject} {subject.verb('is', 'are')} an open file of kind 'inherited' ({file.target}), "
                "which only a restore's --inherit-fd makes"]

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:  # pragma: no cover - in the child
        fd = ctx.unpark(("inherit", planned.id))
        if fd is None:
            raise AssertionError(f"{planned.what}: the caller's fd was not handed down")
        fcntl.fcntl(fd, fcntl.F_SETFL, planned.file.flags & SETFL_MASK)
        return fd


INHERITED = Inherited()


def inherit(state: State, given: Mapping[int, str]) -> tuple[State, list[str]]:
    """The task ``state`` with each open file named in ``given`` (caller's fd -> key) taken
    from the caller, and notes saying so; ``UsageError`` for a key that names no single
    open file at fds >= 3, or an fd that is not open or not of its kind."""
    if not given:
        return state, []
    from .model import from_state
    from .rules import describe, flags_text, own_fd_link

    if (state.version or 1) < FILES_MODEL_VERSION:
        raise UsageError("--inherit-fd: the checkpoint was written by an older ckpt (task state version "
                         f"{state.version or 1}), which did not record open files apart from fds")
    table = from_state(state)
    by_file = table.by_file()
    files: dict[int, File] = {f.id: f for f in state.files or ()}
    notes = []
    for fd, key in given.items():
        option = f"--inherit-fd {fd}:{key}"
        named = [f for f in files.values() if f.target == key and f.kind != "inherited"]
        if not named:
            raise UsageError(f"{option}: the checkpoint has no open file {key} (ckpt inspect --fds lists them)")
        kept = {f.id: tuple(e.fd for e in by_file[f.id] if e.fd not in STD_STREAMS) for f in named}
        named = [f for f in named if kept[f.id]]
        if not named:
            raise UsageError(f"{option}: the process had {key} only at fds 0-2, which a restore gives its own "
                             "streams (or --stdin, --stdout, --stderr)")
        if len(named) > 1:
            where = "; ".join(f"{Subject(kept[f.id])}: {flags_text(f.flags)}" for f in named)
            raise UsageError(f"{option}: {key} is {len(named)} open files of the process ({where}); "
                             "--inherit-fd gives one")
        record = named[0]
        for other in _connected_to(files.values(), record):
            where = Subject(tuple(e.fd for e in by_file[other.id]))
            raise UsageError(f"{option}: {key} is connected within the process to {where} ({describe(other)}), "
                             "which would be left connected to nothing; --inherit-fd gives an open file whose "
                             "other end is outside the process")
        current = _check_given(option, fd, record)
        subject = Subject(kept[record.id])
        notes.append(f"{subject} ({describe(record)}) {subject.verb('is', 'are')} the caller's fd {fd} "
                     f"({own_fd_link(fd)}), as {option} asks")
        if current & SETFL_MASK != record.flags & SETFL_MASK:
            notes.append(f"{subject}: the caller's fd {fd} is one open file with {subject}; it now has the "
                         f"process's status flags ({flags_text(record.flags)})")
        common = {name: getattr(record, name) for name in File.RECORD.fields}
        files[record.id] = InheritedFile(**{**common, "kind": "inherited"}, given=Given(fd, key, record))
    return dataclasses.replace(state, files=tuple(files.values())), notes


def from_parent(state: State, pairs: Iterable[tuple[int, int]]) -> State:
    """The task state of a process of a restored tree, with each open file it shared with
    its parent (``pairs``: (its fd, the parent's fd), ``schema.Task.inherited``; fds >= 3)
    taken from the parent's fd: an :class:`InheritedFile`, which the task's setup parks
    from its parent's table before it closes it (``ckpt.restore``), as fork gave it."""
    wanted = {fd: parent_fd for fd, parent_fd in pairs if fd not in STD_STREAMS}
    if not wanted:
        return state
    from .model import from_state

    files: dict[int, File] = {f.id: f for f in state.files or ()}
    for file_id, entries in from_state(state).by_file().items():
        given = [wanted[e.fd] for e in entries if e.fd in wanted]
        if given and file_id in files:
            record = files[file_id]
            common = {name: getattr(record, name) for name in File.RECORD.fields}
            files[file_id] = InheritedFile(**{**common, "kind": "inherited"},
                                           given=Given(given[0], f"the parent's fd {given[0]}", record))
    return dataclasses.replace(state, files=tuple(files.values()))


def _connected_to(files: Iterable[File], record: File) -> list[File]:
    """The process's other open files made one with ``record`` at the restore: the peer or
    the accepted connections of a unix socket, the slave of a pty master.  Given the
    caller's file instead, ``record`` would not be theirs any more."""
    return [f for f in files if isinstance(f, UnixFile) and record.id in (f.peer_file, f.listener_file)
            or isinstance(f, TtyFile) and f.peer_file == record.id]


def _check_given(option: str, fd: int, record: File) -> int:
    """The caller's ``fd`` fits ``record`` (open, of its file type, with its access); its flags."""
    try:
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        raise UsageError(f"{option}: fd {fd} is not open") from None
    want = stat.S_IFMT(record.mode)
    if want and stat.S_IFMT(st.st_mode) != want:
        raise UsageError(f"{option}: fd {fd} is {_TYPES.get(stat.S_IFMT(st.st_mode), 'another kind of file')}, "
                         f"not {_TYPES.get(want, 'the kind of file the process had')}")
    need, have = record.flags & os.O_ACCMODE, flags & os.O_ACCMODE
    if (need in _READS and have not in _READS) or (need in _WRITES and have not in _WRITES):
        ends = {os.O_RDONLY: "reading", os.O_WRONLY: "writing", os.O_RDWR: "reading and writing"}
        raise UsageError(f"{option}: fd {fd} is open for {ends.get(have, '?')}; the process had it open for "
                         f"{ends.get(need, '?')}")
    return flags


@contextmanager
def handed_down(fd_plan: FdPlan) -> Iterator[set[int]]:
    """For the fork of the restore child: a copy of the caller's fd of each inherited open
    file of ``fd_plan``, parked above every fd number the child places
    (:meth:`RestoreContext.park`); yields the copies (the child keeps them) and closes
    them in the caller on exit."""
    def copy(given: Given) -> Callable[[], int]:
        return lambda: os.dup(given.fd)

    openers = [(item.id, copy(item.file.given)) for item in fd_plan.files
               if isinstance(item.file, InheritedFile) and item.file.given.fd >= 0]
    with fd_plan.context.handing_down("inherit", openers) as fds:
        yield fds

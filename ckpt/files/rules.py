"""What a checkpoint's fd table means for a restore: reasons, notes, and the rows of
``ckpt inspect --fds``.

The rules over the record alone (the same answer on every machine) are
:func:`reasons` and :func:`notes`, applied by :mod:`ckpt.restorability`.
fds 0-2 are never reopened: a restore gives them its own streams or the files
it is given (:func:`std_stream_notes`, which depends on the restoring ckpt's
own streams), so only their locks count.  An open file at fds >= 3 is
restored by its kind; one the kind cannot restore is a reason, naming its fds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from . import kind_named
from ..image.schema import File
from .base import STD_STREAMS, Subject, describe_lock
from .model import FdTable

_STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}


def describe(file: File) -> str:
    """What an open file is, for messages ("the file /x", "a pipe (pipe:[7])")."""
    kind = kind_named(file.kind)
    if kind is None:
        return f"an open file of kind {file.kind!r} ({file.target})"
    return kind.describe(file)


def file_reasons(file: File, numbers: tuple[int, ...]) -> list[str]:
    """Why open file ``file``, at fds ``numbers``, cannot be restored ([] when it can)."""
    return kind_reasons(file, tuple(n for n in numbers if n not in STD_STREAMS)) + lock_reasons(file, numbers)


def kind_reasons(file: File, restored: tuple[int, ...]) -> list[str]:
    """Why its kind cannot restore ``file`` at fds ``restored`` (>= 3; none: [])."""
    if not restored:
        return []
    kind, who = kind_named(file.kind), Subject(restored)
    if kind is None:
        return [f"{who} {who.verb('is', 'are')} {describe(file)}, a kind of open file this ckpt does "
                "not know (the checkpoint was written by a newer ckpt?)"]
    return kind.reasons(file, who)


def lock_reasons(file: File, numbers: tuple[int, ...]) -> list[str]:
    """One reason per lock or lease held through ``file``.  They count on every fd, 0-2
    included: a restore takes no lock, so another process could take it meanwhile (two
    sqlite writers)."""
    if not numbers:
        return []
    who = Subject(numbers)
    return [f"{who} {who.verb('holds', 'hold')} {describe_lock(lock, file.target)}, which ckpt cannot "
            "restore yet" for lock in file.locks]


def reasons(table: FdTable) -> list[str]:
    """Every reason the fd table stands in the way of a restore, by open file."""
    return [why for whys in table_reasons(table).values() for why in whys]


def table_reasons(table: FdTable) -> dict[int, list[str]]:
    """file id -> why it cannot be restored ([] when it can): its own reasons
    (:func:`file_reasons`), then one per open file it depends on (:meth:`FileKind.depends`:
    an epoll's targets) that is not restored -- refused itself, found only at fds 0-2
    (which a restore replaces), or not in the checkpoint at all."""
    by_file = table.by_file()
    out: dict[int, list[str]] = {}
    state: dict[int, str] = {}

    def visit(file_id: int) -> list[str]:
        if state.get(file_id) == "done":
            return out[file_id]
        file = table.files[file_id]
        numbers = tuple(e.fd for e in by_file[file_id])
        if state.get(file_id) == "visiting":   # a crafted image: real open files make no cycle
            return [f"{Subject(numbers)} ({describe(file)}) depend{'s' if len(numbers) == 1 else ''} "
                    "on itself through other open files"]
        state[file_id] = "visiting"
        why = file_reasons(file, numbers)
        restored = tuple(n for n in numbers if n not in STD_STREAMS)
        kind = kind_named(file.kind)
        if restored and kind is not None and not why:
            who = f"{Subject(restored)} ({describe(file)})"
            for dep in kind.depends(file):
                entries = by_file.get(dep)
                if not entries:
                    why.append(f"{who} depends on open file {dep}, which the checkpoint does not hold")
                    continue
                dep_numbers = tuple(e.fd for e in entries)
                what = f"{Subject(dep_numbers)} ({describe(table.files[dep])})"
                if all(n in STD_STREAMS for n in dep_numbers):
                    why.append(f"{who} cannot be restored without {what}, which a restore replaces with "
                               "its own stream")
                elif visit(dep):
                    why.append(f"{who} cannot be restored without {what}, which ckpt cannot restore")
        out[file_id] = why
        state[file_id] = "done"
        return why

    for file_id in table.files:
        visit(file_id)
    return out


def notes(table: FdTable) -> list[str]:
    """What a restore gives back differently: fds 0-2 (replaced), fds >= 3 that shared an
    open file with one of them (they no longer share it), and each kind's own notes."""
    out = []
    std = std_streams_summary(table)
    if std:
        out.append(f"fds 0-2 are not restored ({std}): a restore gives them its own standard streams, "
                   "or the files named by --stdin/--stdout/--stderr")
    for file_id, entries in table.by_file().items():
        file = table.files[file_id]
        numbers = tuple(e.fd for e in entries)
        kept = tuple(n for n in numbers if n not in STD_STREAMS)
        replaced = tuple(n for n in numbers if n in STD_STREAMS)
        if kept and replaced:
            out.append(f"{Subject(kept)} shared {describe(file)} with {Subject(replaced)}, which a restore "
                       f"replaces: {Subject(kept)} get{'s' if len(kept) == 1 else ''} it reopened, no longer "
                       "sharing its offset and status flags")
        kind = kind_named(file.kind)
        if kept and kind is not None:
            out += kind.notes(file, Subject(kept))
    return out


def std_streams_summary(table: FdTable) -> str:
    """"fd 0 is a pipe (pipe:[1]), fd 1 is /dev/null, fd 2 is closed" ('' without fds)."""
    if not table.fds:
        return ""
    parts = []
    for num in STD_STREAMS:
        file = table.at(num)
        parts.append(f"fd {num} is {describe(file) if file is not None else 'closed'}")
    return ", ".join(parts)


def std_stream_notes(table: FdTable, given: Mapping[int, str | os.PathLike[str] | None] | None = None) -> list[str]:
    """One note per fd 0-2 a restore replaces: "fd 1 was a pipe (pipe:[7]); it is now
    ckpt's stdout (/dev/pts/0)".

    ``given`` maps a stream number to the file the restore gives it (None or
    absent: the restoring ckpt's own stream, which is what ``ckpt.restore``
    hands down).  No note when the process had the very same character device
    (the same terminal, /dev/null) or regular file (a log it appended to):
    nothing observable changes."""
    out = []
    for num in STD_STREAMS:
        path = (given or {}).get(num)
        if path is not None:
            now, st = os.fspath(path), _stat(os.fspath(path))
        else:
            now, st = f"ckpt's {_STREAM_NAMES[num]} ({own_fd_link(num)})", _fstat(num)
        old = table.at(num)
        if old is not None and st is not None and _same_stream(old, st):
            continue
        was = describe(old) if old is not None else "closed"
        out.append(f"fd {num} was {was}; it is now {now}")
    return out


def rows(table: FdTable) -> list[dict[str, Any]]:
    """The fd table as a restore sees it, one row per fd (``ckpt inspect --fds``)."""
    by_file = table.by_file()
    blocked = table_reasons(table)
    out = []
    for entry in table.fds:
        file = table.files[entry.file]
        numbers = tuple(e.fd for e in by_file[entry.file])
        if entry.fd in STD_STREAMS:
            why = lock_reasons(file, numbers)   # the stream is replaced, not reopened
            how = (f"replaced: the restoring ckpt's {_STREAM_NAMES[entry.fd]}, or the file "
                   f"--{_STREAM_NAMES[entry.fd]} names")
        else:
            why = blocked[entry.file]
            kept = [n for n in numbers if n != entry.fd and n not in STD_STREAMS]
            lost = [n for n in numbers if n in STD_STREAMS]
            how = "restored" + (f", one open file with fd {', '.join(map(str, kept))}" if kept else "") \
                + (f" (no longer shared with fd {', '.join(map(str, lost))}, replaced)" if lost else "")
        out.append({
            "fd": entry.fd, "file": entry.file, "kind": file.kind, "what": describe(file),
            "flags": file.flags, "flags_text": flags_text(file.flags), "offset": file.pos,
            "cloexec": entry.cloexec, "shared_with": [n for n in numbers if n != entry.fd],
            "restorable": not why, "reasons": why, "restore": how if not why else "refused",
        })
    return out


# f_flags bits as the kernel defines them (include/uapi/asm-generic/fcntl.h; Python's
# os.O_LARGEFILE is 0 on x86-64, while the kernel sets 0o100000 on every 64-bit open).
# O_SYNC is __O_SYNC|O_DSYNC: named first, so that O_DSYNC alone is told apart.
_FLAG_NAMES = (("O_APPEND", 0o2000), ("O_NONBLOCK", 0o4000), ("O_SYNC", 0o4010000), ("O_DSYNC", 0o10000),
               ("O_ASYNC", 0o20000), ("O_DIRECT", 0o40000), ("O_LARGEFILE", 0o100000),
               ("O_DIRECTORY", 0o200000), ("O_NOFOLLOW", 0o400000), ("O_NOATIME", 0o1000000),
               ("O_CLOEXEC", 0o2000000), ("O_TMPFILE", 0o20200000))
_O_PATH = 0o10000000


def flags_text(flags: int) -> str:
    """"O_RDWR|O_APPEND" for an open file's ``f_flags``."""
    if flags & _O_PATH:
        parts, rest = ["O_PATH"], flags & ~_O_PATH & ~os.O_ACCMODE
    else:
        mode = flags & os.O_ACCMODE
        parts = [{os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}.get(mode, f"{mode:#o}")]
        rest = flags & ~os.O_ACCMODE
    for name, bits in _FLAG_NAMES:
        if rest & bits == bits:
            parts.append(name)
            rest &= ~bits
    if rest:
        parts.append(f"{rest:#o}")
    return "|".join(parts)


def _same_stream(old: File, st: os.stat_result) -> bool:
    """The recorded open file and the file now given are one terminal, device or file."""
    mode = old.mode
    if stat.S_ISCHR(mode) and stat.S_ISCHR(st.st_mode):
        return old.rdev == st.st_rdev
    if stat.S_ISREG(mode) and stat.S_ISREG(st.st_mode):
        return (old.dev, old.ino) == (st.st_dev, st.st_ino)
    return False


def own_fd_link(num: int) -> str:
    """What this process's fd ``num`` is (readlink of /proc/self/fd/N), or "closed"."""
    try:
        return os.readlink(f"/proc/self/fd/{num}")
    except OSError:
        return "closed"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _fstat(num: int) -> os.stat_result | None:
    try:
        return os.fstat(num)
    except OSError:
        return None

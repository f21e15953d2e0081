"""What one kind of open file provides: the base of every ``ckpt/files/<kind>.py``.

A kind is a :class:`FileKind` subclass.  At dump it is shown each open file
description of the frozen target as a :class:`Probe` (one of its fds: the
/proc/PID/fd link, the stat, the fdinfo, and the fd itself through
``pidfd_getfd`` on demand) and :meth:`FileKind.claims` it or not; the one that
claims it records its fields (:meth:`FileKind.dump`).  From a checkpoint it
says what stands in the way of a restore (:meth:`FileKind.reasons`), what a
restore gives back differently (:meth:`FileKind.notes`), which other open files
must exist first (:meth:`FileKind.depends`), and, in the restore child, opens
or creates the open file (:meth:`FileKind.open`); the registry then puts it at
every fd number that shared it and sets each fd's close-on-exec flag.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .. import procfs, trust
from ..image.schema import File, Lock

if TYPE_CHECKING:
    from ..image.schema import Creds
    from .objects import ObjectSet
    from .survey import FreezeView

# O_CREAT|O_EXCL|O_TRUNC never make sense when reopening a file by path (open_verified adds
# O_NOCTTY, and O_CLOEXEC: the registry sets each fd's own flag once it is in place).
# O_ASYNC neither: open(2) would set the bit without registering the file for signals (only
# ->fasync does that: fs/fcntl.c setfl, ioctl_fioasync), which ckpt/files/fown.py does later.
REOPEN_MASK = ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_CLOEXEC | os.O_ASYNC)
_O_TMPFILE_BIT = 0o20000000   # __O_TMPFILE, include/uapi/asm-generic/fcntl.h: O_TMPFILE is it | O_DIRECTORY
STD_STREAMS = (0, 1, 2)
# The status flags F_SETFL sets (fs/fcntl.c SETFL_MASK), O_ASYNC apart: it needs an owner (ckpt/files/fown.py).
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME


def reopen_flags(flags: int) -> int:
    """The recorded ``f_flags`` of a file as an open(2) of it again takes them: without
    what only creating it meant, and, for a file made with O_TMPFILE (whose f_flags keep
    ``__O_TMPFILE | O_DIRECTORY``: fs/open.c do_dentry_open clears only O_CREAT, O_EXCL,
    O_NOCTTY and O_TRUNC), without those two, which would make the open fail (ENOTDIR)."""
    if flags & _O_TMPFILE_BIT:
        flags &= ~(_O_TMPFILE_BIT | os.O_DIRECTORY)
    return flags & REOPEN_MASK


@dataclass(frozen=True)
class Subject:
    """The fds of one open file, as messages name them: "fd 4", "fds 4, 7"."""

    numbers: tuple[int, ...]

    def __str__(self) -> str:
        if len(self.numbers) == 1:
            return f"fd {self.numbers[0]}"
        return "fds " + ", ".join(map(str, self.numbers))

    def verb(self, one: str, many: str) -> str:
        """``one`` ("is", "refers") for a single fd, ``many`` ("are", "refer") otherwise."""
        return one if len(self.numbers) == 1 else many


@dataclass
class Capture:
    """One capture of a frozen target's fd table, shared by all of its probes.

    ``probes`` is every fd of the target (one :class:`Probe` each, by fd number);
    ``copies`` the numbers, in this process, of the fds :meth:`Probe.getfd` has
    handed over so far (so that a look at this process's own fds can tell them from
    fds it holds of its own); ``memo`` is where a kind keeps what it works out once
    per capture rather than once per fd (a pipe's buffered data, the other
    processes holding the target's pipes), under keys of its own; ``own`` the fds
    a kind opened for the whole capture, which are closed with the copies.
    """

    pid: int
    probes: list[Probe] = field(default_factory=list)
    copies: set[int] = field(default_factory=set)
    memo: dict[Any, Any] = field(default_factory=dict)
    own: list[int] = field(default_factory=list)
    # The file objects (memfds, deleted files) found so far, each recorded once whatever
    # refers to it (ckpt/files/objects.py); the dump adds the mapped ones after the fds.
    objects: ObjectSet | None = None
    # What every process frozen with this one shares, read once (ckpt/files/survey.py).
    view: FreezeView | None = None


class Probe:
    """One fd of a frozen target, as a kind's :meth:`FileKind.dump` sees it.

    ``file`` is what /proc told (:class:`ckpt.procfs.OpenFile`: the link, the
    fdinfo's flags and position, the stat, the locks).  :meth:`fdinfo` reads the
    whole fdinfo (kind-specific lines such as ``eventfd-count:`` are in its
    ``extra``); :meth:`getfd` hands over a copy of the fd itself, taken with
    ``pidfd_getfd`` the first time it is asked for and closed when the dump
    has captured every fd (the target stays frozen meanwhile) -- a copy shares
    the open file description, so a kind must leave its offset, flags and
    content as they are (read a pipe with ``tee``, never ``read``).  ``table``
    (:class:`FdIndex`) is every fd of the target and the id of its open file, for a
    record that refers to other open files; ``capture`` holds every fd of the same
    capture (:class:`Capture`).
    """

    def __init__(self, pid: int, file: procfs.OpenFile, getfd: Callable[[int], int],
                 table: FdIndex | None = None, capture: Capture | None = None) -> None:
        self.pid = pid
        self.file = file
        self._getfd = getfd
        self._fdinfo: procfs.FdInfo | None = None
        self.table = table if table is not None else FdIndex()
        self.capture = capture if capture is not None else Capture(pid, [self])

    @property
    def fd(self) -> int:
        """The fd number in the target."""
        return self.file.fd

    @property
    def link(self) -> str:
        """The /proc/PID/fd/N path (a magic link to the open file)."""
        return f"/proc/{self.pid}/fd/{self.file.fd}"

    def fdinfo(self) -> procfs.FdInfo:
        """/proc/PID/fdinfo/N, parsed (read once)."""
        if self._fdinfo is None:
            self._fdinfo = procfs.read_fdinfo(self.pid, self.file.fd)
        return self._fdinfo

    def getfd(self) -> int:
        """This process's copy of the fd (``pidfd_getfd``, O_CLOEXEC); do not close it."""
        copy = self._getfd(self.file.fd)
        self.capture.copies.add(copy)
        return copy


@dataclass
class FdIndex:
    """Every fd of the frozen target, for a kind whose record refers to other open files
    (an epoll's targets): what /proc told of each, and the id of its open file."""

    files: dict[int, procfs.OpenFile] = field(default_factory=dict)   # fd -> /proc facts
    ids: dict[int, int] = field(default_factory=dict)                 # fd -> its open file's id


@dataclass
class RestoreContext:
    """What a kind's restore side knows besides its record, and where it keeps fds
    between open files (the other end of a pipe, created with the first)."""

    checkpoint: int        # the checkpoint's id, for messages
    same_boot: bool        # recorded mount ids are comparable (ckpt/trust.py)
    # The images are root-trusted (ckpt/trust.Principal.trusted): a restore may make what
    # only a privileged process can (an alarm timer); otherwise only what their owner could.
    trusted: bool = False
    park_above: int = 3    # no fd the restore places or maps is at or above this number
    principal: trust.Principal | None = None   # whose images (ckpt/trust.py): what a kind may grant
    tcp_established: bool = False               # ckpt restore --tcp-established: TCP connections too
    creds: Creds | None = None      # the restored process's recorded credentials (state.process.creds)
    opened: dict[int, int] = field(default_factory=dict)   # file id -> its fd in the restore child
    # file id -> the record of every open file the restore makes (files.plan fills it): a kind
    # may read another's (the two ends of a unix connection)
    records: dict[int, File] = field(default_factory=dict)
    parked: dict[Any, int] = field(default_factory=dict)   # a kind's key -> an fd it keeps for later
    # file object id -> its fd (O_RDWR) in the restore child, made before the open files
    # (ckpt/files/objects.py); kept until the rebuild has mapped it.
    objects: dict[int, int] = field(default_factory=dict)
    # file objects whose own open file (a memfd's from memfd_create) went to one of their open
    # files already: the others reopen it (ckpt/files/memfd.py ObjectFile.open)
    objects_given: set[int] = field(default_factory=set)

    finishing: list[Callable[[], None]] = field(default_factory=list)   # see later()

    def later(self, step: Callable[[], None]) -> None:
        """Run ``step`` once every open file is in place, in the order asked; a step may ask
        for another, which runs after every step asked before it (a TCP connection is made
        once its listener exists, and leaves repair mode once its peer, maybe another of the
        process's fds, is connected too)."""
        self.finishing.append(step)

    def park(self, key: Any, fd: int) -> None:
        """Keep ``fd`` for a later open file, moved clear of every fd number being placed."""
        self.parked[key] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.park_above)
        os.close(fd)

    def unpark(self, key: Any) -> int | None:
        """The fd parked under ``key`` (now the caller's to place or close), or None."""
        return self.parked.pop(key, None)

    @contextmanager
    def handing_down(self, tag: str, openers: Iterable[tuple[int, Callable[[], int]]]) -> Iterator[set[int]]:
        """For the fork of the restore child: for each (file id, opener), the fd the opener
        returns, parked under ``(tag, id)`` above every fd number the child places; yields
        them (the child keeps them) and closes them in the caller on exit, an opener's
        failure included."""
        keys = []
        try:
            for file_id, opener in openers:
                self.park((tag, file_id), opener())
                keys.append((tag, file_id))
            yield {self.parked[key] for key in keys}
        finally:
            for key in keys:
                if key in self.parked:
                    os.close(self.parked.pop(key))


@dataclass(frozen=True)
class PlannedFile:
    """One open file the restore child opens, and the fd numbers it goes to."""

    id: int
    file: File
    kind: FileKind
    numbers: tuple[int, ...]     # the fd numbers >= 3 that shared it (0-2 are ckpt's streams)
    cloexec: tuple[bool, ...]    # FD_CLOEXEC of each, in the same order

    @property
    def subject(self) -> Subject:
        return Subject(self.numbers)

    @property
    def what(self) -> str:
        """Names it in errors: "fds 10, 11 (/data)"."""
        return f"{self.subject} ({self.file.target})"


class FileKind:
    """One kind of open file.  Subclass it in ``ckpt/files/<kind>.py`` and list an
    instance in ``KINDS`` of ``ckpt/files/__init__.py``; give each name in
    :attr:`names` its record in ``ckpt/image/schema.py`` ``FILE_RECORDS`` and a
    section in docs/FORMAT.md.

    Every record has the common fields (``id``, ``kind``, ``target``, ``flags``
    without O_CLOEXEC, ``pos``, ``mode``, ``dev``, ``ino``, ``rdev``, ``mnt_id``,
    ``locks``), which the registry fills; a kind adds its own with :meth:`dump`.
    Locks refuse a restore whatever the kind (the registry checks them).
    """

    names: ClassVar[tuple[str, ...]] = ()   # the record kinds it writes and reads

    # -- dump (the target is frozen) --------------------------------------------------

    def claims(self, probe: Probe) -> str | None:
        """The record kind (one of :attr:`names`) if this kind records ``probe``'s open
        file, else None.  Cheap: the registry asks the kinds in order."""
        raise NotImplementedError

    def dump(self, probe: Probe) -> dict[str, Any]:
        """The kind's own fields of the record (the common ones are filled already)."""
        return {}

    def before_kill(self, file: File, getfd: Callable[[], int]) -> None:
        """The dumped target, still frozen, is about to be killed (``dump --kill``): prepare
        ``file`` for it (``getfd()`` is a copy of one of its fds).  A TCP connection goes
        back into repair mode, so that the kill sends its peer nothing."""

    # -- what a checkpoint says ----------------------------------------------------------

    def describe(self, file: File) -> str:
        """What it is, for messages: "the file /x", "a pipe (pipe:[7])"."""
        return f"{file.kind} ({file.target})"

    def reasons(self, file: File, subject: Subject) -> list[str]:
        """Why it cannot be restored at the fds of ``subject`` (all >= 3); [] when it can."""
        return []

    def notes(self, file: File, subject: Subject) -> list[str]:
        """What a restore gives back differently, without losing it silently."""
        return []

    def depends(self, file: File) -> tuple[int, ...]:
        """Ids of the open files that must be opened before this one (an epoll's targets)."""
        return ()

    # -- restore --------------------------------------------------------------------------

    def check(self, planned: PlannedFile) -> None:
        """Before anything is created, what this machine must offer (a file still there),
        without opening anything; raise a :class:`ckpt.errors.CkptError`."""

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        """Before the fork, as the restore child will (same filesystem identity): try what
        :meth:`open` will do, if that has no effect; raise what it would raise."""

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        """In the restore child: a new fd of the open file as it was recorded (flags,
        offset, content), at any number; the registry moves it to its fd numbers.
        The fds of the files it :meth:`depends` on are in ``ctx.opened``."""
        raise NotImplementedError(f"ckpt cannot open a {self.names[0]} file")


def describe_lock(lock: Lock, path: str) -> str:
    """"a POSIX write lock on PATH (bytes 0-EOF)", "a flock exclusive lock on PATH", "a read lease on PATH"."""
    kind, access = lock.kind, (lock.access or "").lower()
    span = f" (bytes {lock.start}-{'EOF' if lock.end is None else lock.end})"
    if kind == "POSIX":
        return f"a POSIX {access} lock on {path}{span}"
    if kind == "OFDLCK":
        return f"an OFD {access} lock on {path}{span}"
    if kind == "FLOCK":
        return f"a flock {'shared' if access == 'read' else 'exclusive'} lock on {path}"
    if kind == "LEASE":
        return f"a {access} lease on {path}"
    if kind == "DELEG":
        return f"a {access} delegation on {path}"
    return f"a lock of kind {kind} ({access or '?'}) on {path}"


def article(word: str) -> str:
    """"a" or "an" before ``word``."""
    return "an" if word[:1].lower() in "aeio" else "a"


def place(fd: int, numbers: Sequence[int], cloexec: Sequence[bool]) -> None:
    """Put open fd ``fd`` at each of ``numbers`` (dup2: they share its open file
    description) with each one's own close-on-exec flag, then close ``fd`` unless it
    is one of them."""
    for number, flag in zip(numbers, cloexec):
        if number == fd:
            os.set_inheritable(fd, not flag)
        else:
            os.dup2(fd, number, inheritable=not flag)
    if fd not in numbers:
        os.close(fd)

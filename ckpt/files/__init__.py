"""Open files: the fd table, and the open file descriptions it points at, one module per kind.

A checkpoint records ``state.files``, the open file descriptions (one
record each, a :class:`ckpt.image.schema.File` of its kind), apart from ``state.fds``, the fd
table (:class:`ckpt.image.schema.Fd`: fd, file id, cloexec), as CRIU's file entries and fdinfo
entries: fds that share a description (``dup``, ``dup2``, ``fork``) share one
record, and a restore opens it once and puts it at each of their numbers
(docs/DESIGN.md "Open files").

This module is the registry.  ``KINDS`` lists one :class:`FileKind` per kind of
open file; at dump each description is recorded by the first kind that claims
it (:func:`claim`: from the /proc/PID/fd link, the file type, the anon inode's
name, or anything a kind asks of the fd itself), and a record is restored by
the kind its ``"kind"`` names (:func:`kind_named`).  The rest of the package
works through these two:

* ``dump.py`` -- dump: probe each fd of the frozen target, group the fds by
  description (kcmp), record each description.
* ``model.py`` -- the recorded table, version-1 images included (:func:`table`).
* ``rules.py`` -- what stands in the way of a restore, what it changes, what
  ``inspect --fds`` shows.
* ``restore.py`` -- restore: plan, check and preflight before the fork, and in
  the restore child open each description once and place it at its fds.
* ``regular.py``, ``tty.py`` (terminals: pty pairs, the controlling terminal,
  ``restore --shell-job``), ``chardev.py``, ``pipe.py``, ``eventfd.py``, ``signalfd.py``,
  ``timerfd.py``, ``inotify.py`` (these four on ``anon.py``, what objects on an
  anonymous inode share), ``epoll.py``, ``inet.py`` (with ``sockopts.py`` and
  ``tcp_repair.py``), ``unix.py``, ``memfd.py`` and ``ghost.py`` (open files of the file
  objects of ``objects.py``: memfds and files deleted while open, whose content
  the checkpoint keeps, mapped or not), ``unsupported.py`` -- the kinds.
* ``inherit.py`` -- open files a restore takes from its caller (``--inherit-fd``).
* ``fown.py`` -- the signal owner of any open file (``F_SETOWN_EX``, ``F_SETSIG``,
  ``O_ASYNC``): recorded with the common fields, restored by ckpt once the tasks exist.

**Adding a kind** (as ``pipe.py`` was added):

1. ``ckpt/files/pipe.py``: a :class:`FileKind` subclass -- ``names``,
   ``claims``, ``dump`` (given a :class:`Probe`: ``probe.getfd()`` is the fd
   itself, ``probe.fdinfo()`` its fdinfo), ``describe``, ``reasons`` and
   ``notes`` if any, ``depends`` if it needs other files first, and
   ``preflight``/``open`` -- and one instance of it.
2. One line in ``KINDS`` below, before ``UNSUPPORTED``.
3. Its record in ``ckpt/image/schema.py`` ``FILE_RECORDS`` and a section in
   docs/FORMAT.md (tests/test_badinput.py fails until both exist).
"""

from __future__ import annotations

from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject
from .chardev import CHARDEV
from .epoll import EPOLL
from .eventfd import EVENTFD
from .ghost import GHOST
from .inherit import INHERITED
from .inotify import INOTIFY
from .memfd import MEMFD
from .pipe import PIPE
from .inet import INET
from .unix import UNIX
from .regular import REGULAR
from .signalfd import SIGNALFD
from .timerfd import TIMERFD
from .tty import TTY
from .unsupported import UNSUPPORTED

# Asked in this order at dump; the first kind that claims an fd records it.
KINDS: tuple[FileKind, ...] = (
    REGULAR,
    MEMFD,         # a memfd, then any other file deleted while open (ckpt/files/objects.py)
    GHOST,
    TTY,           # terminals, before the other character devices (ckpt/files/tty.py)
    CHARDEV,
    PIPE,          # pipes and FIFOs
    EVENTFD,
    SIGNALFD,
    TIMERFD,
    INOTIFY,
    EPOLL,
    INET,
    UNIX,          # unix sockets (ckpt/files/unix.py)
    INHERITED,     # claims nothing: what restore --inherit-fd gives (ckpt/files/inherit.py)
    UNSUPPORTED,   # last: records whatever the kinds above leave, so that restore refuses it by name
)

_BY_NAME = {name: kind for kind in KINDS for name in kind.names}


def kind_named(name: str) -> FileKind | None:
    """The kind that restores records of kind ``name``; None for a kind this ckpt does
    not know (an image from a newer ckpt: refused by :func:`reasons`)."""
    return _BY_NAME.get(name)


def claim(probe: Probe) -> tuple[FileKind, str]:
    """The kind that records ``probe``'s open file, and the record kind it writes."""
    for kind in KINDS:
        name = kind.claims(probe)
        if name is not None:
            return kind, name
    raise AssertionError(f"no kind claims fd {probe.fd} ({probe.file.target}); UNSUPPORTED must be last")


# The rest of the package uses the registry above, so it is imported after it.
from .dump import before_kill, capture  # noqa: E402
from .objects import ObjectPlan, ObjectSet  # noqa: E402
from .restore import FdPlan, check, install, plan, preflight  # noqa: E402
from .model import FdEntry, FdTable, from_state as table, from_v1  # noqa: E402
from .rules import describe, flags_text, notes, reasons, rows, std_stream_notes  # noqa: E402
from .inherit import handed_down, inherit  # noqa: E402
from . import fown  # noqa: E402  (signal owners, O_ASYNC: every kind's)

__all__ = [
    "KINDS", "FileKind", "Probe", "Subject", "PlannedFile", "RestoreContext", "kind_named", "claim",
    "capture", "before_kill", "FdEntry", "FdTable", "table", "from_v1", "describe", "flags_text", "notes",
    "reasons", "rows", "std_stream_notes", "FdPlan", "plan", "check", "preflight", "install", "inherit",
    "handed_down", "ObjectSet", "ObjectPlan", "fown",
]

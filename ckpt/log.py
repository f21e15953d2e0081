"""ckpt's trace: what a dump, restore or verify did and how long each step took.

The ``ckpt`` command turns it on with ``-v``/``-vv`` (on stderr) and
``--log-file FILE`` (everything, ``-vv`` detail included), in the manner of
CRIU's ``-v4 -o dump.log``.  Each line starts with the seconds since the
command started, as CRIU's ``(00.012345)``::

    (  0.0123) dump: freeze: 2.1 ms

Code marks a step boundary with one line -- :func:`mark` logs the time since
the previous mark (or :func:`begin`) in this thread, :func:`step` is a context
manager that logs the duration of its block -- so that the layers below carry
no logging set-up of their own.  Nothing is printed unless the command (or a
Python user, through :mod:`logging`'s ``"ckpt"`` logger) asked for it; with no
handler configured a mark costs one ``isEnabledFor`` check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("ckpt")

_local = threading.local()

#: ``-v``: one line per step with its duration; ``-vv``: details besides.
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"({record.created - _START_WALL:8.4f}) {record.getMessage()}"


_START_WALL = time.time()


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """On a terminal, a trace line first erases a progress line being drawn there
    (ckpt.cli.common.TerminalProgress redraws it at its next update)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The command's own one-line error is on stderr already: the log file only.
        return not getattr(record, "file_only", False) and bool(super().filter(record))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\r\x1b[K" + text if self.stream.isatty() else text


def begin(operation: str, **details: Any) -> None:
    """Start timing ``operation`` (a dump, a restore) in this thread; the next
    :func:`mark` measures from here."""
    _local.operation = operation
    _local.last = time.monotonic()
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s: start%s", operation, _details(details))
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s: kernel %s %s, Python %s, ckpt pid %d, euid %d", operation, os.uname().release,
                     os.uname().machine, sys.version.split()[0], os.getpid(), os.geteuid())


def mark(name: str, **details: Any) -> None:
    """Log that step ``name`` ended, with the time since the previous mark, and ``details``."""
    now = time.monotonic()
    last = getattr(_local, "last", None)
    _local.last = now
    if not logger.isEnabledFor(logging.INFO):
        return
    took = f": {(now - last) * 1e3:.1f} ms" if last is not None else ""
    logger.info("%s: %s%s%s", getattr(_local, "operation", "ckpt"), name, took, _details(details))


@contextlib.contextmanager
def step(name: str, **details: Any) -> Iterator[None]:
    """Log how long the block took (also when it raises); the next :func:`mark` measures from its end."""
    t0 = time.monotonic()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s: %s ...", getattr(_local, "operation", "ckpt"), name)
    failed = True
    try:
        yield
        failed = False
    finally:
        _local.last = t0
        mark(name + (" (failed)" if failed else ""), **details)


def outcome(message: str) -> None:
    """How the command ended (its error line, its exit code), for the log file: stderr has it already."""
    logger.info("%s", message, extra={"file_only": True})


def debug(message: str, *args: Any) -> None:
    """A detail line, shown with ``-vv`` and in the log file."""
    logger.debug(message, *args)


def _details(details: dict[str, Any]) -> str:
    return "".join(f", {k.replace('_', ' ')} {v}" for k, v in details.items())


def open_log_file(path: str) -> int:
    """Open ``path`` for appending, 0600, refusing what is not the caller's own regular file.

    ``O_NOFOLLOW``: a symbolic link planted where the log goes is refused
    (ELOOP), not followed; an existing file must be a regular file owned by the
    effective user (a log holds addresses, paths and pids), and is made 0600.
    Raises :class:`ckpt.errors.UsageError` naming the problem."""
    from .errors import UsageError

    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as err:
        raise UsageError(f"--log-file {path}: {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UsageError(f"--log-file {path}: not a regular file of this user")
    os.fchmod(fd, 0o600)
    os.set_blocking(fd, True)
    return fd


def configure(verbosity: int = 0, log_file: str | None = None) -> None:
    """Send the trace to stderr (``verbosity`` 1: steps, 2: details) and/or to ``log_file``
    (everything); called once by the ``ckpt`` command."""
    formatter = _Formatter()
    level = logging.WARNING
    if verbosity > 0:
        handler: logging.Handler = _TerminalHandler(sys.stderr)
        handler.setLevel(LEVELS[min(verbosity, 2)])
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        level = LEVELS[min(verbosity, 2)]
    if log_file is not None:
        stream = os.fdopen(open_log_file(log_file), "a", buffering=1)
        handler = logging.StreamHandler(stream)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        level = logging.DEBUG
    logger.setLevel(level)
    logger.propagate = False
    logger.info("ckpt %s: %s", _version(), " ".join(sys.argv[1:]) or "-")


def _version() -> str:
    from . import __version__

    return __version__

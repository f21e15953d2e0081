"""The ckpt exception family.

Every error a user can cause or meet (bad pid, missing kernel feature, broken
image) is a :class:`CkptError` subclass carrying a one-line message and the exit
code the ``ckpt`` command returns for it.  Raw ``OSError`` from the kernel
bindings is translated once, at the boundary where the pid and the operation are
known (see :func:`ckpt.live.wrap_process_errors`), in the manner of psutil.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any


class CkptError(Exception):
    """Base class: a failure ckpt reports as one line and a non-zero exit code."""

    exit_code = 1


class NoSuchProcess(CkptError):
    """The target pid does not exist (or exited before ckpt could attach)."""

    exit_code = 3

    def __init__(self, pid: int, msg: str | None = None) -> None:
        self.pid = pid
        super().__init__(msg or f"no such process: {pid}")


class AccessDenied(CkptError):
    """The kernel refused an operation on the target (ptrace, pidfd_getfd, /proc)."""

    exit_code = 4

    def __init__(self, pid: int, operation: str, detail: str = "") -> None:
        self.pid = pid
        self.operation = operation
        extra = f": {detail}" if detail else ""
        super().__init__(f"permission denied: {operation} on pid {pid}{extra}")


class KernelUnsupported(CkptError):
    """A kernel feature ckpt needs is missing (the message names it)."""

    exit_code = 5

    def __init__(self, feature: str, detail: str = "") -> None:
        self.feature = feature
        extra = f" ({detail})" if detail else ""
        super().__init__(f"kernel feature unavailable: {feature}{extra}; run 'ckpt check'")


class TargetExited(CkptError):
    """The target process exited while ckpt was working on it."""

    exit_code = 6

    def __init__(self, pid: int, during: str = "") -> None:
        self.pid = pid
        extra = f" during {during}" if during else ""
        super().__init__(f"target {pid} exited{extra}; no checkpoint was written")


class ImageError(CkptError):
    """An images directory or checkpoint is unusable (not one, corrupt, broken chain)."""

    exit_code = 7


class NotAnImageDir(ImageError):
    """The directory exists but is not a ckpt images directory."""


class CorruptImage(ImageError):
    """A checksum, length or index check failed; the message names checkpoint and offset."""


class UntrustedImage(ImageError):
    """The images ask for more than their owner may have (credentials, a file it may not
    open), or nobody single can be held to them (see ckpt/trust.py)."""

    exit_code = 11


class ImageDirLocked(ImageError):
    """Another ckpt process is writing to the same images directory."""

    exit_code = 8


class StorageError(CkptError):
    """Writing to disk failed for a reason that is neither the image's nor the target's:
    disk full, quota, read-only file system, I/O error (the message names the file).
    Nothing was committed: the chain is as it was, the target keeps running."""

    exit_code = 12

    #: errno values that say "the storage", not "the images": ENOSPC, EDQUOT, EROFS, EIO, EFBIG.
    ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def write_error(message: str, err: OSError) -> ImageError | StorageError:
    """The error for ``err`` met while writing images: a :class:`StorageError` when the
    storage failed (disk full, quota, read-only, I/O error), an :class:`ImageError` otherwise."""
    if err.errno in StorageError.ERRNOS:
        return StorageError(f"{message}: {err.strerror or err}")
    return ImageError(f"{message}: {err}")


class TargetError(CkptError):
    """The target is in a state ckpt cannot handle (the message says which)."""

    exit_code = 9


class FreezeTimeout(TargetError):
    """A thread of the target did not stop within the deadline (uninterruptible
    sleep); every thread was released and nothing was written."""


class NotRestorable(TargetError):
    """A checkpoint records state ckpt cannot restore; the message names every reason
    (the rules are in :mod:`ckpt.restorability`)."""

    def __init__(self, what: str, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"{what} cannot be restored: " + "; ".join(self.reasons))


class KillRefused(TargetError):
    """``dump --kill`` of a target whose checkpoint could not be restored: the
    target was thawed and left running instead.  The checkpoint was committed
    (marked unrestorable); ``report`` is its :class:`ckpt.dump.DumpReport`."""

    exit_code = 10

    def __init__(self, report: Any) -> None:
        self.report = report
        self.reasons = list(report.unrestorable)
        super().__init__(f"not killed: pid {report.checkpoint.pid} could not be restored ("
                         + "; ".join(self.reasons) + f"); it was left running, and checkpoint "
                         f"{report.checkpoint.id} was written as not restorable")


class Interrupted(CkptError):
    """ckpt was asked to stop (SIGINT/SIGTERM/SIGHUP); the target was released first.

    The exit code is 128 + the signal's number, as a shell reports a command
    that signal ended: 130 for SIGINT (the class attribute), 143 for SIGTERM."""

    exit_code = 130

    def __init__(self, msg: str = "interrupted; the target was released", signal_name: str = "SIGINT") -> None:
        import signal

        self.signal_name = signal_name
        number = getattr(signal, signal_name, None)
        if isinstance(number, int):
            self.exit_code = 128 + number
        super().__init__(msg)


class InterruptedAfterCommit(Interrupted):
    """SIGINT/SIGTERM arrived after a dump committed its checkpoint.

    The checkpoint is complete and usable (``report``, a
    :class:`ckpt.dump.DumpReport`, describes it): the dump did not fail.  Only
    what follows a commit was cut short (handing the tracking over to a
    holder), so the next dump of the process will be full.
    """

    def __init__(self, report: object, checkpoint_id: int, signal_name: str) -> None:
        self.report = report
        super().__init__(f"checkpoint {checkpoint_id} was taken; {signal_name} arrived after its commit, "
                         "before tracking was handed over: the next dump will be full", signal_name)


class UsageError(CkptError):
    """Options that do not go together (argparse cannot express every rule)."""

    exit_code = 2

"""The ckpt exception family.

Every error a user can cause or meet (bad pid, missing kernel feature, broken
image) is a :class:`CkptError` subclass carrying a one-line message and the exit
code the ``ckpt`` command returns for it.  Raw ``OSError`` from the kernel
bindings is translated once, at the boundary where the pid and the operation are
known (see :func:`ckpt.live.wrap_process_errors`), in the manner of psutil.
"""

from __future__ import annotations


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

    exit_code = 10


class ImageDirLocked(ImageError):
    """Another ckpt process is writing to the same images directory."""

    exit_code = 8


class TargetError(CkptError):
    """The target is in a state ckpt cannot handle (the message says which)."""

    exit_code = 9


class Interrupted(CkptError):
    """ckpt was asked to stop (SIGINT/SIGTERM); the target was released first."""

    exit_code = 130


class UsageError(CkptError):
    """Options that do not go together (argparse cannot express every rule)."""

    exit_code = 2

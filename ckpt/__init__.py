"""ckpt: incremental checkpoints of live Linux processes (Linux 6.7+, x86_64).

A quick tour::

    import ckpt
    report = ckpt.dump(pid, "images/")                 # full, then incremental
    cp = ckpt.ImageDir("images/").checkpoints[-1]
    data = cp.read_memory(address, length)             # memory as it was at that checkpoint
    result = ckpt.restore("images/")                   # the process again, from the newest
                                                       # checkpoint; waits for it, as the CLI
    result = ckpt.restore("images/", detach=True)      # return at once (os.waitpid(result.pid, 0))
    result = ckpt.restore("images/", detach=True, lazy=True)  # runs before its memory arrives
                                                       # (result.page_server fills it: ckpt.lazy)

The public API (``dir(ckpt)``; ``help(ckpt.NAME)`` for each):

``dump(pid, images_dir, *, pre=False, after="run", ...) -> DumpReport``
    One checkpoint of a process (and its descendants) into an images directory.
``Dumper(pid, images_dir, ...)``
    A dump session: several checkpoints of one target, tracking kept in memory between
    them (``ckpt dump --every``); ``.dump()`` -> ``DumpReport``, ``.close()``.
``restore(images_dir, checkpoint=None, *, detach=False, ...) -> RestoreResult``
    A checkpoint brought back to life as a child of the caller.  By default it waits for
    the process and forwards signals, as ``ckpt restore`` and ``criu restore`` do.
``prune(images_dir, *, keep=None, keep_within=None, dry_run=False) -> PruneReport``
    Old checkpoints removed, what the kept ones still need folded in (``ckpt prune``).
``ImageDir(path)``, ``Checkpoint``, ``VmaRecord``
    An images directory (``.checkpoints``, ``.checkpoint(id)``, ``.verify()``); one
    checkpoint (``.read_memory()``, ``.iter_memory()``, ``.summary()``); one mapping.
``DumpReport``, ``RestoreResult``, ``PruneReport``
    What a dump, a restore or a prune did; ``.to_dict()`` is the ``--json`` output of the command,
    each of its keys an attribute of the same name.
``CkptError`` and its subclasses
    Every failure ckpt reports: a one-line message and ``.exit_code``, the exit code of
    the ``ckpt`` command for it (``ckpt --help`` lists them).
``tracking``
    The holder processes that keep write-tracking alive between one-shot dumps.

Names are loaded on first use, so that ``import ckpt`` (and ``ckpt --help``) stays cheap.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import (AccessDenied, CkptError, CorruptImage, FreezeTimeout, ImageDirLocked, ImageError,
                     Interrupted, InterruptedAfterCommit, KernelUnsupported, KillRefused, NoSuchProcess,
                     NotAnImageDir, NotRestorable, StorageError, TargetError, TargetExited, UntrustedImage,
                     UsageError)

__version__ = "0.1.0"

# name -> (module, attribute; None: the module itself), imported on first use.
_LAZY = {
    "ImageDir": ("ckpt.image", "ImageDir"),
    "Checkpoint": ("ckpt.image", "Checkpoint"),
    "VmaRecord": ("ckpt.image", "VmaRecord"),
    "dump": ("ckpt.dump", "dump"),
    "Dumper": ("ckpt.dump", "Dumper"),
    "DumpReport": ("ckpt.dump", "DumpReport"),
    "restore": ("ckpt.restore", "restore"),
    "RestoreResult": ("ckpt.restore", "RestoreResult"),
    "prune": ("ckpt.image.prune", "prune"),
    "PruneReport": ("ckpt.image.prune", "PruneReport"),
    "tracking": ("ckpt.tracking", None),
}

if TYPE_CHECKING:
    from . import tracking
    from .dump import Dumper, DumpReport, dump
    from .image import Checkpoint, ImageDir, VmaRecord
    from .image.prune import PruneReport, prune
    from .restore import RestoreResult, restore


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The ckpt package's module type: its functions ``dump`` and ``restore`` share their names
    with the submodules ckpt.dump and ckpt.restore, and importing a submodule sets the package's
    attribute of its name to it (importlib._bootstrap ``_find_and_load_unlocked``), which made
    ``ckpt.restore(...)`` fail with "'module' object is not callable" once anything had run
    ``from ckpt.restore import ...`` first.  The function stays; the submodule is in sys.modules."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("dump", "restore") and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones included (``dir(ckpt)``, tab completion,
    and ``help(ckpt)``, which documents the names of ``__all__`` it finds there)."""
    # The public API and the module's dunders: not the helpers this file imports (sys, Any...).
    return sorted(set(__all__) | {"__version__"} | {n for n in globals() if n.startswith("__") and n.endswith("__")})


__all__ = ["AccessDenied", "Checkpoint", "CkptError", "CorruptImage", "DumpReport", "Dumper", "FreezeTimeout",
           "ImageDir", "ImageDirLocked", "ImageError", "Interrupted", "InterruptedAfterCommit",
           "KernelUnsupported", "KillRefused", "NoSuchProcess", "NotAnImageDir", "NotRestorable", "PruneReport",
           "RestoreResult", "StorageError", "TargetError", "TargetExited", "UntrustedImage", "UsageError",
           "VmaRecord", "__version__", "dump", "prune", "restore", "tracking"]

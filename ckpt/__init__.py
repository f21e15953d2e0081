"""ckpt: incremental checkpoints of live Linux processes.

The public API::

    import ckpt
    report = ckpt.dump(pid, "images/")                 # full, then incremental
    cp = ckpt.ImageDir("images/").checkpoints[-1]
    data = cp.read_memory(address, length)             # memory as it was at that checkpoint
    ckpt.restore("images/")                            # the process again, from the newest checkpoint

Names are loaded lazily so that importing ckpt (and ``ckpt --help``) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (AccessDenied, CkptError, CorruptImage, FreezeTimeout, ImageDirLocked, ImageError,
                     KernelUnsupported, NoSuchProcess, NotAnImageDir, TargetError, TargetExited)

__version__ = "0.1.0"

_LAZY = {
    "ImageDir": ("ckpt.image", "ImageDir"),
    "Checkpoint": ("ckpt.image", "Checkpoint"),
    "VmaRecord": ("ckpt.image", "VmaRecord"),
    "dump": ("ckpt.dump", "dump"),
    "Dumper": ("ckpt.dump", "Dumper"),
    "DumpReport": ("ckpt.dump", "DumpReport"),
    "restore": ("ckpt.restore", "restore"),
    "RestoreResult": ("ckpt.restore", "RestoreResult"),
    "tracking": ("ckpt.tracking", None),
}

if TYPE_CHECKING:
    from . import tracking
    from .dump import Dumper, DumpReport, dump
    from .image import Checkpoint, ImageDir, VmaRecord
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


__all__ = ["AccessDenied", "Checkpoint", "CkptError", "CorruptImage", "DumpReport", "Dumper", "FreezeTimeout",
           "ImageDir", "ImageDirLocked", "ImageError", "KernelUnsupported", "NoSuchProcess",
           "NotAnImageDir", "RestoreResult", "TargetError", "TargetExited", "VmaRecord", "dump", "restore",
           "tracking"]

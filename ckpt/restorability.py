"""Whether a checkpoint can be restored, decided from what it recorded.

The one home of these rules.  ``ckpt dump`` applies them inside the frozen
window before a ``--kill`` (a target ckpt could not bring back is thawed, not
killed) and reports them (``DumpReport.restorable`` / ``unrestorable``);
``ckpt inspect``, ``ckpt verify`` and :func:`ckpt.restore.check` apply them to
a stored checkpoint.  They read only the checkpoint's task state and VMA
records, so every machine gives the same answer.  What depends on the machine
that restores -- a mapped file still there and unchanged, the vDSO layout, a
free pid -- is checked by :mod:`ckpt.restore` when it restores.

A *reason* makes a checkpoint unrestorable: restore refuses it, ``dump --kill``
refuses to kill.  A *note* names something a restore gives back differently
without losing it silently: fds 0-2 become the restoring ckpt's own streams
(or the files it is given), see :func:`std_stream_notes`.  The rules over
open files and fds are each kind's, in :mod:`ckpt.files` (``files.reasons``,
``files.notes``); this module applies them with the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import files
from .tracker import DEVICE, FILE_PRIVATE, FILE_SHARED

_DELETED_SUFFIX = " (deleted)"


class VmaLike(Protocol):
    """The fields of a VMA record the rules read (:class:`ckpt.image.VmaRecord`)."""

    start: int
    end: int
    kind: str
    path: str


@dataclass(frozen=True)
class Verdict:
    """The rules' answer for one checkpoint."""

    reasons: tuple[str, ...] = ()   # each one alone makes the checkpoint unrestorable
    notes: tuple[str, ...] = ()     # what a restore gives back differently

    @property
    def restorable(self) -> bool:
        """True when nothing stands in the way of a restore (on a suitable machine)."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` keys: ``restorable``, ``unrestorable`` (the reasons), ``restore_notes``."""
        return {"restorable": self.restorable, "unrestorable": list(self.reasons),
                "restore_notes": list(self.notes)}


def assess(state: Mapping[str, Any], vmas: Iterable[VmaLike], *, kind: str = "full") -> Verdict:
    """Apply every rule to a checkpoint's task ``state`` and VMA records.

    ``kind`` is the checkpoint's kind: a ``pre`` dump holds memory only.
    """
    if kind == "pre":
        return Verdict(reasons=("it is a pre-dump (memory only); restore a later full or "
                                "incremental checkpoint",))
    if not state.get("threads"):
        return Verdict(reasons=("no task state was recorded (a damaged image?)",))
    try:
        return _assess(state, vmas)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        # An edited or damaged record: not restorable, and inspect/verify still answer.
        return Verdict(reasons=(f"the recorded task state is malformed ({type(err).__name__}: {err})",))


def _assess(state: Mapping[str, Any], vmas: Iterable[VmaLike]) -> Verdict:
    reasons = mapping_reasons(vmas)
    table = files.table(state)
    reasons += files.reasons(table)
    process = state.get("process", {})
    seccomp = process.get("creds", {}).get("seccomp", 0)
    if seccomp:
        # Without its filters the process would be allowed more than it was.
        mode = {1: "strict mode", 2: "a filter"}.get(seccomp, f"mode {seccomp}")
        reasons.append(f"the process runs under seccomp ({mode}), which ckpt cannot restore yet")
    children = process.get("children", [])
    if children:
        pid = state.get("target", {}).get("pid", process.get("pid", "?"))
        named = ", ".join(f"pid {c['pid']} ({c.get('comm', '?')})" for c in children)
        reasons.append(f"pid {pid} has children ({named}); ckpt restores one process, "
                       "not a process tree, yet")
    notes = files.notes(table)
    return Verdict(reasons=tuple(reasons), notes=tuple(notes))


def mapping_reasons(vmas: Iterable[VmaLike]) -> list[str]:
    """Mappings a restore cannot recreate: device memory, and file mappings whose
    file cannot be reopened by path (deleted, or not a file: an io_uring ring,
    a DRM buffer, ...).  One reason per object, naming each of its ranges."""
    found: dict[tuple[str, str], list[str]] = {}
    for vma in vmas:
        where = f"{vma.start:#x}-{vma.end:#x}"
        path = vma.path or "?"
        if vma.kind == DEVICE:
            found.setdefault(("device", path), []).append(where)
        elif vma.kind in (FILE_PRIVATE, FILE_SHARED):
            if path.endswith(_DELETED_SUFFIX):
                found.setdefault(("deleted", path), []).append(where)
            elif not path.startswith("/"):
                found.setdefault(("object", path), []).append(where)
    out = []
    for (what, path), where in found.items():
        at = ", ".join(where)
        if what == "device":
            out.append(f"the device mapping {path} at {at} cannot be restored")
        elif what == "deleted":
            out.append(f"the mapping at {at} is of a deleted file ({path}), which ckpt cannot reopen")
        else:
            out.append(f"the mapping of {path} at {at} is not a file ckpt can reopen")
    return out


def std_stream_notes(fds: files.FdTable | Sequence[Mapping[str, Any]],
                     given: Mapping[int, str | os.PathLike[str] | None] | None = None) -> list[str]:
    """One note per fd 0-2 a restore replaces (:func:`ckpt.files.std_stream_notes`):
    "fd 1 was a pipe (pipe:[7]); it is now ckpt's stdout (/dev/pts/0)".  ``fds`` is a
    checkpoint's fd table, or its version-1 fd records."""
    table = fds if isinstance(fds, files.FdTable) else files.from_v1(fds)
    return files.std_stream_notes(table, given)

"""The restore side: which open files the restore child opens, and putting them in place.

Before the fork, :func:`plan` picks the open files at fds >= 3 that their kind
can restore, in dependency order (:meth:`FileKind.depends`); :func:`check` and
:func:`preflight` let each kind refuse what this machine cannot give.  In the
child, :func:`install` opens (or creates) each open file once and ``dup2``\\ s
it to every fd number that shared it, each with its own close-on-exec flag:
fds that shared an offset and status flags share them again.  fds 0-2 are
ckpt's own streams or the files given (:mod:`ckpt.restore`); an open file found
only there is not opened.  What cannot be restored is not planned:
:mod:`ckpt.restorability` refuses it before the fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ImageError
from . import kind_named
from .base import STD_STREAMS, PlannedFile, RestoreContext, place
from .model import FdTable
from .rules import table_reasons


@dataclass(frozen=True)
class FdPlan:
    """The open files the restore child opens, dependencies first."""

    files: tuple[PlannedFile, ...]
    context: RestoreContext


def plan(table: FdTable, context: RestoreContext) -> FdPlan:
    """Plan the restore of ``table`` (``context``: of which checkpoint, on which boot, above
    which fd number the restore child keeps nothing).  Reads no file."""
    planned: dict[int, PlannedFile] = {}
    blocked = table_reasons(table)
    for file_id, entries in table.by_file().items():
        file = table.files[file_id]
        kept = [e for e in entries if e.fd not in STD_STREAMS]
        kind = kind_named(file.kind)
        if not kept or kind is None or blocked[file_id]:
            continue  # at 0-2 only, or refused by the rules (ckpt.restorability) before the fork
        planned[file_id] = PlannedFile(file_id, file, kind, tuple(e.fd for e in kept),
                                       tuple(e.cloexec for e in kept))
    context.records = {file_id: item.file for file_id, item in planned.items()}
    return FdPlan(tuple(_dependencies_first(planned)), context)


def _dependencies_first(planned: dict[int, PlannedFile]) -> list[PlannedFile]:
    order: list[PlannedFile] = []
    state: dict[int, str] = {}

    def visit(item: PlannedFile) -> None:
        if state.get(item.id) == "done":
            return
        if state.get(item.id) == "visiting":
            raise ImageError(f"{item.what} depends on itself through other open files")
        state[item.id] = "visiting"
        for dep in item.kind.depends(item.file):
            if dep not in planned:
                raise ImageError(f"{item.what} depends on open file {dep}, which is not restored")
            visit(planned[dep])
        state[item.id] = "done"
        order.append(item)

    for item in planned.values():
        visit(item)
    return order


def check(fd_plan: FdPlan) -> None:
    """What this machine must offer, before anything is created (no file is opened)."""
    for item in fd_plan.files:
        item.kind.check(item)


def preflight(fd_plan: FdPlan) -> None:
    """Try, before the fork and as the child will, what each kind's open will do (the
    caller has taken the child's filesystem identity)."""
    for item in fd_plan.files:
        item.kind.preflight(item, fd_plan.context)


def install(fd_plan: FdPlan) -> None:  # pragma: no cover - runs in the restore child
    """In the restore child: open each planned file once and place it at its fds.

    Every fd >= 3 is closed already; a new fd lands on the lowest free number,
    never on one already placed, and is closed once placed unless it is one of
    its own numbers -- so a number a later file needs is free when it is placed."""
    ctx = fd_plan.context
    for item in fd_plan.files:
        fd = item.kind.open(item, ctx)
        place(fd, item.numbers, item.cloexec)
        ctx.opened[item.id] = item.numbers[0]
    for step in ctx.finishing:     # what waits for every open file (RestoreContext.later); a step
        step()                     # may ask for another, which runs after those asked before it
    for key in list(ctx.parked):   # kept for an open file that never asked for it
        os.close(ctx.parked.pop(key))

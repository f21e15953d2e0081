"""Open file descriptions shared between the processes of a dumped tree.

A fork gives the child the parent's open file descriptions (the fd table is copied,
fs/file.c ``dup_fd``), so in a tree the same description is often held by a parent and its
children: a terminal or a log at fds 0-2, a listening socket handed to workers.  Which fds
of two processes share one is asked of the kernel, exactly: ``kcmp(KCMP_FILE)`` compares
the ``struct file`` behind them (kernel/kcmp.c), across processes as within one.  Only fds
of one inode can share a description, so kcmp runs only among those, sorted by its order
(as :func:`ckpt.files.dump.descriptions` does within a process).

A restore can give a child a description its parent holds when the child is forked
(``Task.inherited``: the child keeps the parent's, at its own fd number).  A description
held by two tasks neither of which inherited it from the other's line (two siblings whose
parent closed its copy, a file passed over a unix socket) needs it opened once in a common
ancestor and handed down: it is recorded in ``shared_with``, and the restore does that
(:mod:`ckpt.files.handdown`, which refuses by name the kinds it cannot hand down).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..image.schema import State
from .dump import kcmp_order

__all__ = ["Sharing", "sharing", "table_shared"]


@dataclass(frozen=True)
class Sharing:
    """How one task's fds share open file descriptions with the rest of its tree."""

    inherited: tuple[tuple[int, int], ...] = ()        # (fd, the parent's fd): the parent's description
    shared_with: tuple[tuple[int, int, int], ...] = ()  # (fd, pid, its fd): another task's, not inherited


def sharing(parents: Mapping[int, int], states: Mapping[int, State]) -> dict[int, Sharing]:
    """For every task of ``states`` (pid -> its captured state, the tasks frozen), how its fds
    share descriptions with the other tasks; ``parents`` maps each pid to its parent's."""
    holders: dict[tuple[int, int], list[tuple[int, int]]] = {}   # (dev, ino) -> [(pid, fd)]
    for pid, state in states.items():
        files = {f.id: f for f in state.files or ()}
        for fd in state.fds or ():
            f = files.get(fd.file)
            if f is not None:
                holders.setdefault((f.dev, f.ino), []).append((pid, fd.fd))
    inherited: dict[int, list[tuple[int, int]]] = {pid: [] for pid in states}
    shared: dict[int, list[tuple[int, int, int]]] = {pid: [] for pid in states}
    for same_inode in holders.values():
        if len({pid for pid, _ in same_inode}) < 2:
            continue
        for description in _descriptions(same_inode):
            by_pid: dict[int, list[int]] = {}
            for pid, fd in description:
                by_pid.setdefault(pid, []).append(fd)
            if len(by_pid) < 2:
                continue
            # Holders whose parent does not hold it open it themselves; one may (the
            # description's topmost holder), any other is shared outside the fork line.
            openers = [pid for pid in by_pid if parents.get(pid) not in by_pid]
            first = min(openers, key=lambda pid: _depth(pid, parents))
            for pid, fds in by_pid.items():
                parent = parents.get(pid)
                for fd in fds:
                    if parent in by_pid:
                        inherited[pid].append((fd, _parents_fd(fd, by_pid[parent])))
                    elif pid != first:
                        shared[pid].append((fd, first, min(by_pid[first])))
    return {pid: Sharing(tuple(sorted(inherited[pid])), tuple(sorted(shared[pid]))) for pid in states}


def table_shared(state: State) -> State:
    """The state of a task whose fd table is its parent's (``Task.shares`` CLONE_FILES), as
    a checkpoint stores it and a restore restores it: no open files of its own.  They are
    its parent's, recorded once there; the restore creates it with clone3(CLONE_FILES) into
    the table its parent installed (CRIU's criu/files.c ``shared_fdt_prepare``: one owner
    restores a shared table)."""
    return dataclasses.replace(state, fds=(), files=())


def _parents_fd(fd: int, theirs: Sequence[int]) -> int:
    """Which of the parent's fds ``theirs`` (one description) a child's ``fd`` is restored from:
    the lowest, but for an fd >= 3 the parent's lowest >= 3 when it has one -- a restore
    replaces the root's fds 0-2 with its own streams and reopens a description the root also
    had at fds >= 3 there (nginx's error log at the master's fds 2 and 3: a worker's fd 3
    is the master's fd 3, not /dev/null)."""
    above = [n for n in theirs if n > 2]
    return min(above) if fd > 2 and above else min(theirs)


def _descriptions(fds: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """``(pid, fd)`` pairs grouped by open file description (kcmp's order sorts one
    description into a run of neighbours)."""

    @functools.cache
    def compare(a: tuple[int, int], b: tuple[int, int]) -> int:
        return kcmp_order(a[0], a[1], b[0], b[1])

    ordered = sorted(fds, key=functools.cmp_to_key(compare))
    runs = [[ordered[0]]]
    for previous, item in zip(ordered, ordered[1:]):
        if compare(previous, item) == 0:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _depth(pid: int, parents: Mapping[int, int]) -> tuple[int, int]:
    """How far below the root of the tree ``pid`` is (then its pid: a total order)."""
    depth, seen = 0, pid
    while seen in parents and depth <= len(parents):
        seen = parents[seen]
        depth += 1
    return depth, pid

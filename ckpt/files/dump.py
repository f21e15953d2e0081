"""The dump side: the fd table and the open files of a frozen target.

Each fd is read from /proc (:func:`ckpt.procfs.read_open_files`: the
/proc/PID/fd link, fdinfo, the stat of the open file).  Which fds share one
open file description (``dup``, ``dup2``, ``F_DUPFD``, inherited over
``fork``) is asked of the kernel, exactly: ``kcmp(KCMP_FILE)`` compares the
``struct file`` behind two fds.  Only fds of one inode can share a
description, so kcmp runs only among those, sorting them by its order (a
total order: kernel/kcmp.c) -- O(n log n) calls for n fds of one inode, none
for an fd alone with its inode.  (Grouping by the fdinfo offset and flags as
well would save calls, but is not exact: a process outside the dump that
shares the description -- the target's parent, after a fork -- may move them
between two fdinfo reads.)  kcmp needs PTRACE_MODE_READ over the target, which
its tracer has.  Each description is then recorded once, by the kind that
claims it (:func:`ckpt.files.claim`), from its lowest fd.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import procfs, trust
from .._sys import pidfd as pidfd_sys
from .._sys.kcmp import kcmp_file
from ..errors import KernelUnsupported
from . import claim, fown, kind_named
from .base import Capture, FdIndex, Probe
from .model import from_state
from .objects import ObjectSet
from .survey import FreezeView

from ..image.schema import FILE_RECORDS, Fd, File

if TYPE_CHECKING:
    from ..image.schema import State


def capture(pid: int, objects: ObjectSet | None = None, view: FreezeView | None = None) -> dict[str, list[Any]]:
    """``{"files": [...], "fds": [...]}`` of frozen process ``pid``: every open file
    description once (the :class:`File` record of its kind, ckpt/image/schema.py
    ``FILE_RECORDS``), and the fd table (:class:`Fd`).  The file
    objects its memfds and deleted files are open files of go to ``objects`` (the dump's,
    which stores their content; a throwaway one when None).  ``view``: what the processes
    frozen together share, read once for all of them (ckpt/files/survey.py)."""
    files: list[File] = []
    fds: list[Fd] = []
    shared = Capture(pid, objects=objects if objects is not None else ObjectSet(pid), view=view)
    with fd_copies(pid) as getfd:
        table = FdIndex()
        probes = shared.probes
        probes += [Probe(pid, f, getfd, table, shared) for f in procfs.read_open_files(pid)]
        try:
            groups = descriptions(pid, probes)
            table.files.update((p.fd, p.file) for p in probes)
            table.ids.update((p.fd, file_id) for file_id, group in enumerate(groups, 1) for p in group)
            for file_id, group in enumerate(groups, 1):
                first = group[0]
                kind, name = claim(first)
                files.append(FILE_RECORDS[name].cls.of({**common_fields(first, file_id, name), **kind.dump(first)}))
                fds += [Fd(fd=p.fd, file=file_id, cloexec=bool(p.file.flags & os.O_CLOEXEC)) for p in group]
        finally:
            for fd in shared.own:
                os.close(fd)
    fds.sort(key=lambda entry: entry.fd)
    return {"files": files, "fds": fds}


def before_kill(pid: int, state: State) -> None:
    """The frozen target ``pid``, whose task ``state`` was just captured, is about to be
    killed: let each kind prepare its open files (:meth:`FileKind.before_kill`)."""
    table = from_state(state)
    with fd_copies(pid) as getfd:
        for file_id, entries in table.by_file().items():
            file = table.files[file_id]
            kind = kind_named(file.kind)
            if kind is not None and entries:
                kind.before_kill(file, functools.partial(getfd, entries[0].fd))


def common_fields(probe: Probe, file_id: int, kind: str) -> dict[str, Any]:
    """The fields every file record has (ckpt/image/schema.py ``_FILE_COMMON``).

    fdinfo's ``flags`` are the description's ``f_flags`` with O_CLOEXEC added when
    *this fd* has FD_CLOEXEC (fs/proc/fd.c ``seq_show``): the fd keeps that bit, the
    description does not.  Locks are per description too: fdinfo lists those whose
    ``struct file`` is this one (fs/locks.c ``__show_fd_locks``), under each of its fds."""
    f = probe.file
    return {
        "id": file_id, "kind": kind, "target": f.target, "flags": f.flags & ~os.O_CLOEXEC, "pos": f.pos,
        "mode": f.mode, "dev": f.dev, "ino": f.ino, "rdev": f.rdev,
        "mnt_id": trust.identity_record(probe.link).get("mnt_id"),
        "locks": [{"kind": lk.kind, "state": lk.state, "access": lk.access, "pid": lk.pid,
                   "start": lk.start, "end": lk.end} for lk in f.locks],
        "fown": fown.of(probe),   # its signal owner, whatever the kind (ckpt/files/fown.py)
    }


def descriptions(pid: int, probes: list[Probe]) -> list[list[Probe]]:
    """``probes`` grouped by open file description: each group by fd number, the groups
    by their lowest fd."""
    by_inode: dict[tuple[int, int], list[Probe]] = {}
    for probe in probes:
        by_inode.setdefault((probe.file.dev, probe.file.ino), []).append(probe)
    groups: list[list[Probe]] = []
    for same_inode in by_inode.values():
        if len(same_inode) == 1:
            groups.append(same_inode)
            continue

        known: dict[tuple[int, int], int] = {}

        def compare(a: Probe, b: Probe) -> int:
            if (a.fd, b.fd) not in known:
                known[a.fd, b.fd] = order = kcmp_order(pid, a.fd, pid, b.fd)
                known[b.fd, a.fd] = -order
            return known[a.fd, b.fd]

        # Sorted by kcmp's order, one description is a run of neighbours (the sort has
        # compared each pair of neighbours: the run check below costs no more calls);
        # the sort is stable, so each run keeps the fd order of read_open_files.
        ordered = sorted(same_inode, key=functools.cmp_to_key(compare))
        run = [ordered[0]]
        for previous, probe in zip(ordered, ordered[1:]):
            if compare(previous, probe) == 0:
                run.append(probe)
            else:
                groups.append(run)
                run = [probe]
        groups.append(run)
    groups.sort(key=lambda group: group[0].fd)
    return groups


def kcmp_order(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """:func:`ckpt._sys.kcmp.kcmp_file`, a kernel without kcmp refused by name."""
    try:
        return kcmp_file(pid1, fd1, pid2, fd2)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            raise KernelUnsupported("kcmp(2)", "CONFIG_KCMP: which fds share an open file cannot be told") \
                from None
        raise


@contextmanager
def fd_copies(pid: int) -> Iterator[Any]:
    """A ``getfd(fd)`` for the probes: this process's copy of the target's ``fd``, taken
    with ``pidfd_getfd`` the first time it is asked for (the pidfd too), all closed on exit."""
    copies: dict[int, int] = {}
    pidfd = -1

    def getfd(fd: int) -> int:
        nonlocal pidfd
        if fd not in copies:
            if pidfd < 0:
                pidfd = pidfd_sys.pidfd_open(pid)
            copies[fd] = pidfd_sys.pidfd_getfd(pidfd, fd)
        return copies[fd]

    try:
        yield getfd
    finally:
        for fd in [*copies.values(), *([pidfd] if pidfd >= 0 else [])]:
            os.close(fd)

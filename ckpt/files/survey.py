"""Who else holds a target's pipes and sockets: what every process has open, read once per freeze.

A pipe or a unix socket of a dumped task is restored only when ckpt knows every process
that holds it (ckpt/files/pipe.py, ckpt/files/unix_dump.py).  /proc has no index from an
open file to its holders, so ckpt reads the link of every fd of every process: over a
thousand ``readlink`` calls on a quiet machine, a few milliseconds.  The tasks of a tree
are frozen together, so one reading, and one sock_diag dump of the unix sockets, serve
every task of the dump (:class:`FreezeView`, made per frozen window) instead of one each.
Processes outside the tree run on and may open or close fds meanwhile, whenever the
reading is made: the dump records what it saw, as before.

ckpt's own fds are read again for each capture: among them are the copies that capture
took of the target's fds (``Capture.copies``, ``pidfd_getfd``), which are not holders,
while an fd the caller of the API holds of its own (the other end of a pipe to the
target) is one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import procfs
from .._sys import sockdiag

Holder = tuple[int, int]   # (pid, fd)


@dataclass
class FdSurvey:
    """The fd links of every process but ckpt itself, as read once."""

    links: dict[str, list[Holder]] = field(default_factory=dict)   # "pipe:[123]" -> [(pid, fd)]
    unscanned: set[int] = field(default_factory=set)   # pids whose fds ckpt may not read (EACCES)

    def holders(self, wanted: Callable[[str], bool], exclude: int) -> dict[str, list[Holder]]:
        """The fds on each link ``wanted`` says yes to, of processes other than ``exclude``
        (the target)."""
        out: dict[str, list[Holder]] = {}
        for link, fds in self.links.items():
            if wanted(link):
                found = [h for h in fds if h[0] != exclude]
                if found:
                    out[link] = found
        return out

    def unscanned_besides(self, pid: int) -> int:
        """How many processes other than ``pid`` ckpt could not look into."""
        return len(self.unscanned - {pid})


def _read_fds(pid: int, into: dict[str, list[Holder]], skip: set[int] = frozenset()) -> bool:   # type: ignore[assignment]
    """Add the fd links of ``pid`` (but the fds in ``skip``) to ``into``; False if ckpt
    may not read them."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except PermissionError:
        return False
    except OSError:
        return True   # exited meanwhile
    for name in names:
        fd = int(name)
        if fd in skip:
            continue
        try:
            into.setdefault(os.readlink(f"{fd_dir}/{name}"), []).append((pid, fd))
        except OSError:
            continue   # closed meanwhile
    return True


def take() -> FdSurvey:
    """Read the fd links of every process but this one."""
    survey = FdSurvey()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and not _read_fds(int(entry), survey.links):
            survey.unscanned.add(int(entry))
    return survey


def own_fds(skip: set[int]) -> dict[str, list[Holder]]:
    """This process's fd links, but the fds in ``skip`` (a capture's copies)."""
    links: dict[str, list[Holder]] = {}
    _read_fds(os.getpid(), links, skip)
    return links


class FreezeView:
    """What every task captured in one frozen window shares: the fds of every process
    and the unix sockets of the network namespace, each read on first use."""

    def __init__(self) -> None:
        self._fds: FdSurvey | None = None
        self._unix: dict[int, sockdiag.UnixSocket] | None = None

    def fds(self) -> FdSurvey:
        if self._fds is None:
            self._fds = take()
        return self._fds

    def unix_sockets(self) -> dict[int, sockdiag.UnixSocket]:
        if self._unix is None:
            self._unix = sockdiag.unix_sockets()
        return self._unix


def holders(view: FreezeView | None, target: int, copies: set[int], wanted: Callable[[str], bool]
            ) -> tuple[dict[str, list[Holder]], int]:
    """The fds other processes than ``target`` have on each link ``wanted`` says yes to
    (ckpt's own included, but its ``copies``), and how many processes ckpt could not look
    into.  ``view`` None: read now, for one capture."""
    survey = (view or FreezeView()).fds()
    found = survey.holders(wanted, exclude=target)
    for link, mine in own_fds(copies).items():
        if wanted(link):
            found.setdefault(link, []).extend(mine)
    return found, survey.unscanned_besides(target)


def named_holders(pids: Iterable[int]) -> list[list[Any]]:
    """``[[pid, comm], ...]`` by pid, as the records list holders ("?" for one gone)."""
    out: list[list[Any]] = []
    for pid in sorted(set(pids)):
        try:
            out.append([pid, procfs.read_comm(pid)])
        except OSError:
            out.append([pid, "?"])
    return out

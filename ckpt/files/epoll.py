"""epoll instances: every registration, with its events and data, made anew.

**Dump.**  An epoll's fdinfo has one line per registration (fs/eventpoll.c
``ep_show_fdinfo``, in the order of its red-black tree: by ``struct file``
address, then fd number)::

    tfd:        5 events: 80000019 data:     deadbeefcafe  pos:0 ino:40f sdev:10

``tfd`` is the fd number the file had when it was registered: a registration is
keyed by (file, fd number) and lives until that file's last reference goes
(``eventpoll_release``), not when that fd is closed.  So the number may since have
been closed, or reused for another file, while the file stays open at another
fd (``dup`` then ``close``), or at no fd of the process at all (open in another
process, in flight in an SCM_RIGHTS message, or mapped).  Every anonymous inode
(eventfd, epoll, timerfd, ...) is one inode, so the ``ino`` and ``sdev`` shown say
little; the file itself is found exactly with ``kcmp(KCMP_EPOLL_TFD)``, which
compares the file of the ``toff``-th registration under ``tfd`` with an fd of the
process (kernel/kcmp.c ``kcmp_epoll_target``): first the fd ``tfd`` itself, then
the other fds of that inode.  The record keeps, per registration, ``fd`` (the
number it is keyed by), ``file`` (the id of the open file it watches, nil when
that is open at no fd of the process: refused by name), ``events`` and ``data``.

**Restore.**  After its targets (:meth:`Epoll.depends`), ``epoll_create1`` and one
``EPOLL_CTL_ADD`` per registration, by the recorded fd number: when the target
is not at that number in the restored process, it is put there for the call
(whatever was there is put back after), so the registration has its key again
-- ``EPOLL_CTL_MOD``/``DEL`` by that number find it, by another do not.  Then the
restored instance's own fdinfo must list exactly the recorded registrations.

What cannot be given back as it was:

* A registration with ``EPOLLONESHOT`` that has fired is disabled: its events
  are its private bits alone (``ep_send_events``: ``events &= EP_PRIVATE_BITS``).
  ``epoll_ctl`` always adds EPOLLERR|EPOLLHUP (``do_epoll_ctl``), so the only way
  to disable one is to have it fire: it is registered first, for what its target
  is ready for now (``poll``), and reported once by ``epoll_wait`` on the new
  instance before any other registration exists.  A target ready for nothing
  leaves it armed for EPOLLERR|EPOLLHUP (a note says so).
* Which registrations are on the ready list is not shown.  ``EPOLL_CTL_ADD`` puts
  a registration whose target is ready on it, so an edge-triggered one whose
  edge was reported before the dump is reported once more (a note; EPOLLET
  users must take spurious events anyway).  Level-triggered ones are reported
  while their targets are ready, as before; ready ones come back in the order
  of the record, not of their events.
* ``EPOLLWAKEUP`` needs CAP_BLOCK_SUSPEND (and CONFIG_PM_SLEEP), without which
  the kernel drops it without a word (``ep_take_care_of_epollwakeup``): refused
  unless the images are root's (a restore grants no more than their owner has)
  and a registration this restore makes keeps it.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import itertools
import os
import re
import select
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import procfs
from .._sys import epoll as ep
from .._sys.kcmp import kcmp_epoll_tfd, kcmp_file
from ..errors import KernelUnsupported, NotRestorable, TargetError, UntrustedImage
from ..image.schema import EpollFile, EpollTarget
from .base import FileKind, PlannedFile, Probe, RestoreContext, Subject

# f_flags an epoll can have that a restore gives back: O_RDWR from epoll_create1, and what
# F_SETFL may add with no effect on an epoll, which has no read or write (fs/fcntl.c setfl;
# O_ASYNC does not stay on a file without fasync; O_NOATIME needs the inode's owner: refused).
_SETFL = os.O_APPEND | os.O_NONBLOCK
# Every event a poll can report (poll(2)); POLLNVAL is not one.
_POLL_ALL = (select.POLLIN | select.POLLPRI | select.POLLOUT | select.POLLRDHUP | select.POLLRDNORM
             | select.POLLRDBAND | select.POLLWRNORM | select.POLLWRBAND | select.POLLMSG)

_TFD_LINE = re.compile(r"(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*(-?\d+)"
                       r"\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)")


@dataclass(frozen=True)
class Registration:
    """One ``tfd:`` line of an epoll's fdinfo."""

    fd: int       # the fd number it is keyed by (the target's number when it was registered)
    events: int
    data: int
    ino: int
    dev: int      # st_dev encoding of the superblock's s_dev


def parse_registrations(text: str) -> list[Registration] | None:
    """The ``tfd`` values of an epoll's fdinfo (:class:`ckpt.procfs.FdInfo` ``extra``,
    one per line), in order; None if one of them is not understood."""
    out = []
    for line in text.split("\n") if text else ():
        m = _TFD_LINE.fullmatch(line.strip())
        if m is None:
            return None
        sdev = int(m.group(6), 16)
        # s_dev is the kernel's dev_t (include/linux/kdev_t.h: 12-bit major, 20-bit minor).
        out.append(Registration(int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16),
                                int(m.group(5), 16), os.makedev(sdev >> 20, sdev & 0xFFFFF)))
    return out


def disabled(events: int) -> bool:
    """A fired EPOLLONESHOT registration: nothing left but its private bits."""
    return not events & ~ep.EP_PRIVATE_BITS


class Epoll(FileKind):
    """Kind "epoll" (record ``file_epoll``)."""

    names = ("epoll",)

    # -- dump ------------------------------------------------------------------------------

    def claims(self, probe: Probe) -> str | None:
        f = probe.file
        if f.kind != "anon" or f.anon_type != "eventpoll":
            return None
        # Lines this ckpt does not understand leave it to UNSUPPORTED (refused by name).
        return "epoll" if parse_registrations(probe.fdinfo().extra.get("tfd", "")) is not None else None

    def dump(self, probe: Probe) -> dict[str, Any]:
        registrations = parse_registrations(probe.fdinfo().extra.get("tfd", ""))
        assert registrations is not None   # claims() parsed them
        targets = []
        under: dict[int, int] = {}   # fd number -> registrations under it so far (kcmp's toff)
        for reg in registrations:
            toff = under.get(reg.fd, 0)
            under[reg.fd] = toff + 1
            at = _locate(probe, reg, toff)
            targets.append({"fd": reg.fd, "file": None if at is None else probe.table.ids[at],
                            "events": reg.events, "data": reg.data, "ino": reg.ino, "dev": reg.dev})
        return {"targets": targets}

    # -- what a checkpoint says ------------------------------------------------------------

    def describe(self, file: EpollFile) -> str:
        targets = file.targets
        if not targets:
            return f"an epoll instance ({file.target}) watching nothing"
        numbers = tuple(sorted({t.fd for t in targets}))
        return (f"an epoll instance ({file.target}) with {len(targets)} registration"
                f"{'s' if len(targets) > 1 else ''} ({Subject(numbers)})")

    def depends(self, file: EpollFile) -> tuple[int, ...]:
        return tuple(dict.fromkeys(t.file for t in file.targets if t.file is not None))

    def reasons(self, file: EpollFile, subject: Subject) -> list[str]:
        out = []
        for t in file.targets:
            if t.file is None:
                out.append(f"{subject} {subject.verb('is', 'are')} an epoll instance watching a file that is open "
                           f"at no fd of the process (registered as fd {t.fd}, inode {t.ino} on device "
                           f"{os.major(t.dev)}:{os.minor(t.dev)}: kept open by another process, a message in "
                           "flight or a mapping), which ckpt cannot restore")
        flags = file.flags
        if flags & os.O_ACCMODE != os.O_RDWR or flags & ~(os.O_ACCMODE | _SETFL):
            from .rules import flags_text   # rules imports the registry, which imports this module
            out.append(f"{subject} {subject.verb('is', 'are')} an epoll instance with flags {flags_text(flags)}, "
                       "which ckpt cannot restore")
        return out

    def notes(self, file: EpollFile, subject: Subject) -> list[str]:
        out = []
        edge = [t.fd for t in file.targets if t.events & ep.EPOLLET and not disabled(t.events)]
        if edge:
            plural = len(edge) > 1
            out.append(f"{subject}: the edge-triggered registration{'s' if plural else ''} of "
                       f"{_numbers(sorted(edge))} {'are' if plural else 'is'} made anew: a target that is ready "
                       "is reported once by the next epoll_wait, even if that edge was reported before the dump")
        fired = [t.fd for t in file.targets if disabled(t.events)]
        if fired:
            out.append(f"{subject}: the EPOLLONESHOT registration{'s' if len(fired) > 1 else ''} of "
                       f"{_numbers(sorted(fired))} had fired; each is disabled again only if its target is ready for "
                       "something at restore, else it stays armed for EPOLLERR|EPOLLHUP (which epoll_ctl always "
                       "adds)")
        return out

    # -- restore ---------------------------------------------------------------------------

    def preflight(self, planned: PlannedFile, ctx: RestoreContext) -> None:
        wakeup = [t.fd for t in planned.file.targets if t.events & ep.EPOLLWAKEUP]
        if not wakeup:
            return
        what = f"{planned.what} registers {_numbers(wakeup)} with EPOLLWAKEUP, which needs CAP_BLOCK_SUSPEND"
        if not ctx.trusted:
            raise UntrustedImage(f"checkpoint {ctx.checkpoint}: {what}, and its images do not belong to root: a "
                                 "restore never grants more than the images' owner has")
        if not keeps_epollwakeup():
            raise NotRestorable(f"checkpoint {ctx.checkpoint}", [
                f"{what} (and a kernel with CONFIG_PM_SLEEP): here the kernel would drop the flag without a word"])

    def open(self, planned: PlannedFile, ctx: RestoreContext) -> int:
        f = planned.file
        targets = f.targets
        # Above every fd being placed and every number a registration is keyed by (lent to
        # its file below, when the file is not at that number).
        lowest = max([ctx.park_above, *(t.fd + 1 for t in targets)])
        try:
            epfd = _move(ep.epoll_create1(ep.EPOLL_CLOEXEC), lowest)
        except OSError as err:
            raise TargetError(f"checkpoint {ctx.checkpoint}: {planned.what}: cannot create it: "
                              f"{err.strerror or err}") from None
        fired = [i for i, t in enumerate(targets) if disabled(t.events)]
        expected = [t.events for t in targets]   # what its fdinfo must show after
        current = -1
        try:
            if f.flags & _SETFL:
                fcntl.fcntl(epfd, fcntl.F_SETFL, f.flags & _SETFL)
            for current in fired:
                ready = _ready(ctx.opened[targets[current].file])
                _register(epfd, targets[current], ctx, targets[current].events | ready)
                if not ready:   # it cannot fire: armed for what epoll_ctl adds
                    expected[current] |= ep.EPOLLERR | ep.EPOLLHUP
            if fired:
                # Alone in the new instance: each ready one is reported once, which disables it.
                ep.epoll_wait(epfd, len(fired), 0)
            for current, target in enumerate(targets):
                if current not in fired:
                    _register(epfd, target, ctx, target.events)
            current = -1
            _verify(epfd, planned, [(t.fd, events, t.data) for t, events in zip(targets, expected)])
        except OSError as err:
            os.close(epfd)
            where = f" fd {targets[current].fd}" if current >= 0 else ""
            raise TargetError(f"checkpoint {ctx.checkpoint}: {planned.what}: cannot register{where}: "
                              f"{err.strerror or err}") from None
        except BaseException:
            os.close(epfd)
            raise
        return epfd


@functools.cache
def keeps_epollwakeup() -> bool:
    """Whether a registration this process makes keeps EPOLLWAKEUP: the kernel drops it
    without CAP_BLOCK_SUSPEND or CONFIG_PM_SLEEP (``ep_take_care_of_epollwakeup``).  Tried
    on an epoll and eventfd of its own, closed after."""
    epfd = ep.epoll_create1(ep.EPOLL_CLOEXEC)
    try:
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            ep.epoll_ctl(epfd, ep.EPOLL_CTL_ADD, efd, ep.EPOLLIN | ep.EPOLLWAKEUP, 0)
            made = parse_registrations(procfs.read_fdinfo(os.getpid(), epfd).extra.get("tfd", "")) or []
            return any(r.events & ep.EPOLLWAKEUP for r in made)
        finally:
            os.close(efd)
    finally:
        os.close(epfd)


def _locate(probe: Probe, reg: Registration, toff: int) -> int | None:
    """The fd of the process at which the file of registration ``reg`` (the ``toff``-th
    under its number) is open, or None: the fd ``reg.fd`` first, then the others of its
    inode, one per open file."""
    table = probe.table
    tried: set[int] = set()   # ids of the open files tried: one fd of each is enough
    # The others only when the file is not at its number (lazily: a scan of every fd).
    others = (fd for fd, f in table.files.items() if fd != reg.fd and (f.dev, f.ino) == (reg.dev, reg.ino))
    for fd in itertools.chain([reg.fd] if reg.fd in table.files else [], others):
        file_id = table.ids.get(fd, -1 - fd)
        if file_id in tried:
            continue
        tried.add(file_id)
        try:
            if kcmp_epoll_tfd(probe.pid, fd, probe.pid, probe.fd, reg.fd, toff) == 0:
                return fd
        except OSError as err:
            if err.errno == errno.ENOSYS:
                raise KernelUnsupported("kcmp(2)", "CONFIG_KCMP: the files an epoll watches cannot be told") \
                    from None
            if err.errno == errno.EINVAL:
                raise KernelUnsupported("kcmp(KCMP_EPOLL_TFD)", "Linux 4.13: the files an epoll watches "
                                        "cannot be told") from None
            # ENOENT: another process sharing the instance removed the registration meanwhile.
    return None


def _numbers(numbers: Sequence[int]) -> str:
    return str(Subject(tuple(numbers)))


def _move(fd: int, lowest: int) -> int:
    """``fd`` moved to a number >= ``lowest`` (close-on-exec)."""
    if fd >= lowest:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    finally:
        os.close(fd)


def _ready(fd: int) -> int:
    """What ``fd`` is ready for now (poll(2), no wait), as epoll events (the poll and epoll
    bits are the same: include/uapi/asm-generic/poll.h, include/uapi/linux/eventpoll.h)."""
    poller = select.poll()
    poller.register(fd, _POLL_ALL)
    revents = 0
    for _, bits in poller.poll(0):
        revents |= bits
    return revents & (_POLL_ALL | select.POLLERR | select.POLLHUP)


def _register(epfd: int, target: EpollTarget, ctx: RestoreContext, events: int) -> None:
    """EPOLL_CTL_ADD of ``target``'s open file, keyed by the recorded fd number."""
    number, fd = target.fd, ctx.opened[target.file]
    if number == fd or _same_file(number, fd):
        ep.epoll_ctl(epfd, ep.EPOLL_CTL_ADD, number, events, target.data)
        return
    with _lent(number, fd):
        ep.epoll_ctl(epfd, ep.EPOLL_CTL_ADD, number, events, target.data)


def _same_file(number: int, fd: int) -> bool:
    """fd ``number`` of this process is the open file of ``fd`` (False: another, or none)."""
    me = os.getpid()
    try:
        return kcmp_file(me, number, me, fd) == 0
    except OSError as err:
        if err.errno != errno.EBADF:   # EBADF: nothing open at that number
            raise
        return False


class _lent:
    """Open file ``fd`` at fd ``number`` for the block; whatever was there (an fd placed
    already, one of ckpt's streams) is put back after, with its close-on-exec flag."""

    def __init__(self, number: int, fd: int) -> None:
        self.number, self.fd = number, fd
        self.saved: int | None = None
        self.inheritable = False

    def __enter__(self) -> None:
        try:
            self.inheritable = os.get_inheritable(self.number)
            self.saved = fcntl.fcntl(self.number, fcntl.F_DUPFD_CLOEXEC, 0)
        except OSError as err:
            if err.errno != errno.EBADF:
                raise
        os.dup2(self.fd, self.number, inheritable=False)

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.close(self.number)
        else:
            os.dup2(self.saved, self.number, inheritable=self.inheritable)
            os.close(self.saved)


def _verify(epfd: int, planned: PlannedFile, wanted: Iterable[tuple[int, int, int]]) -> None:
    """The new instance's fdinfo lists exactly ``wanted`` (fd number, events, data)."""
    registrations = parse_registrations(procfs.read_fdinfo(os.getpid(), epfd).extra.get("tfd", "")) or []
    have = sorted((r.fd, r.events, r.data) for r in registrations)
    want = sorted(wanted)
    if have != want:
        missing = [w for w in want if w not in have]
        extra = [h for h in have if h not in want]
        raise TargetError(f"{planned.what}: the restored instance's registrations differ from the recorded "
                          f"ones (recorded {_show(missing)}, made {_show(extra)})")


def _show(regs: Iterable[tuple[int, int, int]]) -> str:
    items = [f"fd {fd} {ep.event_names(events)} data {data:#x}" for fd, events, data in regs]
    return ", ".join(items) or "none"


EPOLL = Epoll()

"""``ckpt restore --lazy``: the process runs before its memory arrives.

The bulk of a process's memory -- its private anonymous mappings -- is not written by
the rebuild.  Instead (:meth:`LazyMemory.register`, a rebuild step run just before the
credentials are restored) a userfaultfd is created inside the stopped process, every
such mapping is registered with ``UFFDIO_REGISTER_MODE_MISSING``, and the fd is taken into
ckpt (``pidfd_getfd``) and closed in the process.  After the release a *page server*
(:class:`PageServer`, a process of its own that outlives ``ckpt restore -d``) answers the
process's missing-page faults with ``UFFDIO_COPY`` of the stored pages of the faulting
page's MiB (one call per run of stored pages, gathered from the frames: never per page)
and, in the background, copies everything else in the order the pages were last written:
4 MiB windows around the pages the newest checkpoint of the chain stored first (the
working set, as REAP and FaaSnap order it), then its parent's, each by address.  Pages the images
hold as zero (or never held) are not copied: a fault there gets ``UFFDIO_ZEROPAGE``, and
once the server is done and the uffd closed the kernel fills them with zeros itself
(fs/userfaultfd.c ``userfaultfd_release`` unregisters the ranges).

Why the uffd is created before the credentials: a userfaultfd that also takes faults
from kernel mode (a ``read()`` into a page not yet there; ``UFFD_USER_MODE_ONLY`` would
make that ``EFAULT``) needs CAP_SYS_PTRACE in the task calling userfaultfd(2)
(fs/userfaultfd.c ``userfaultfd_syscall_allowed``): the restore child still has it until
"restore credentials".  The ioctls act on the uffd's mm whoever issues them.

What stays eager: shared memory, file mappings, mlocked VMAs (``mlock`` would fault every
page before the server runs), VMAs with guard regions, droppable, wipe-on-fork and
grows-down (stack) VMAs, and the pages that hold a thread's rseq area (the kernel writes them on the way back
to user mode while the rebuild still runs, before any server could answer).

Failure of the server: it must never leave the process hanging nor reading zeros (when
the last reference to the uffd closes, missing pages become zero-fill).  A *watchdog*
(:func:`_watchdog`, forked by the server first) holds a duplicate of every uffd the
server serves, the process's pidfd and its stderr.  The server tells it "done" once every
page is resident; if the server's socket closes before that, the watchdog SIGKILLs the
process (and the processes it forked, which share its missing pages) and writes a
one-line message to the process's stderr saying why, then lets the uffds go.

The process may change its layout while the server runs: the uffd asks for the events
(``UFFD_FEATURE_EVENT_*``) that keep the server's picture right -- ``munmap`` and
``madvise(MADV_DONTNEED)`` drop pages to copy (a fault there then reads zeros, as it
would), ``mremap`` moves them, and ``fork`` hands the server the child's uffd, whose
missing pages it fills too.  While such an event is unread, copies fail with ``EAGAIN``
(``ctx->mmap_changing``), so no copy lands in a layout the server has not seen.

Write tracking: a VMA is registered with one uffd at a time, and the missing-page uffd
is the server's: a lazily restored process gets no tracking armed and its next dump is
full (the restore says so in its notes).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import select
import signal
import socket
import sys
from concurrent.futures import wait
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import procfs, ranges, workers
from ._sys import pidfd as pidfd_sys
from ._sys import uffd as uffd_sys
from ._sys.libc import SYS_close, SYS_userfaultfd
from .errors import CkptError, KernelUnsupported, NotRestorable
from .image import Checkpoint, VmaRecord
from .ranges import Range
from .tasktracking import take_target_fd
from .tracker import ANON

__all__ = ["LazyMemory", "refuse", "UNTRACKED"]

PAGE = 4096
FAULT_WINDOW = 1 << 20        # a fault copies the stored pages of its aligned MiB
BACKGROUND_CHUNK = 4 << 20    # the background fill checks for faults every 4 MiB
COPY_SLICE = 1 << 20          # at most this much per UFFDIO_COPY, so that two threads share a chunk
COPIERS = 2                   # threads issuing UFFDIO_COPY
MERGE_GAP = 8 * PAGE          # stored pieces closer than this are installed as one run (gap: zeros)
ZERO_RUN = 64 * PAGE          # a fault outside the stored pages gets up to this many zero pages
FEATURES = (uffd_sys.UFFD_FEATURE_EVENT_FORK | uffd_sys.UFFD_FEATURE_EVENT_REMAP
            | uffd_sys.UFFD_FEATURE_EVENT_REMOVE | uffd_sys.UFFD_FEATURE_EVENT_UNMAP)
# VmFlags that keep a private anonymous VMA eager (see the module docstring).  "wf": a child
# forked while the server runs gets a wiped copy, which it must not fill with the parent's pages.
_EAGER_FLAGS = ("lo", "lf", "gu", "dp", "gd", "wf")
UNTRACKED = ("restored lazily: its memory's userfaultfd belongs to the page server, so no write "
             "tracking was armed")
DEATH_MESSAGE = ("ckpt: killed: the page server of its lazy restore (pid {pid}) {why} before all of its "
                 "memory was restored\n")

Inject = Callable[..., int]   # Rebuilder.inject


def refuse(cp: Checkpoint) -> None:
    """Refuse by name, before anything is created, what a lazy restore cannot do yet."""
    if cp.tree:
        raise NotRestorable(f"checkpoint {cp.id}", ("it holds a process tree, and --lazy restores a single "
                                                     "process only; restore it without --lazy",))


def lazy_vma(vma: VmaRecord) -> bool:
    """Whether the pages of ``vma`` are left to the page server."""
    return (vma.kind == ANON and vma.perms[3] == "p" and vma.object is None
            and not any(flag in vma.flags for flag in _EAGER_FLAGS))


class LazyMemory:
    """The memory a lazy restore of ``cp`` into the child ``pid`` leaves to the page server."""

    def __init__(self, pid: int, cp: Checkpoint) -> None:
        self.pid = pid
        self.cp = cp
        vmas = [(v.start, v.end) for v in cp.vmas if lazy_vma(v)]
        rseq_pages = [(t.rseq.pointer & ~(PAGE - 1), -(-(t.rseq.pointer + t.rseq.size) // PAGE) * PAGE)
                      for t in cp.state.threads or () if t.rseq and t.rseq.pointer]
        # The ranges the rebuild does not write and the uffd registers.
        self.ranges: list[Range] = ranges.subtract(ranges.normalize(vmas), ranges.normalize(rseq_pages))
        self.uffd = -1

    def register(self, inject: Inject) -> None:
        """Create the uffd inside the stopped child (still root), register the lazy ranges,
        take it into ckpt and close it in the child (a rebuild step)."""
        if not self.ranges:
            return
        fd = inject(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK, what="userfaultfd")
        try:
            self.uffd = take_target_fd(self.pid, fd)
        finally:
            inject(SYS_close, fd, what="close the userfaultfd")
        try:
            granted = uffd_sys.api(self.uffd, FEATURES)
        except OSError as err:
            raise KernelUnsupported("userfaultfd events for a lazy restore", str(err)) from err
        if granted & FEATURES != FEATURES:
            raise KernelUnsupported("userfaultfd fork, remap, remove and unmap events")
        for start, end in self.ranges:   # adjacent VMAs in one call (mm/userfaultfd.c walks them)
            try:
                uffd_sys.register_missing(self.uffd, start, end - start)
            except OSError as err:
                raise CkptError(f"UFFDIO_REGISTER of {start:#x}-{end:#x}: {os.strerror(err.errno or 0)}") from err

    def close(self) -> None:
        """Release ckpt's copy of the uffd (the server has its own; after a failure, only once
        the process is killed: its missing pages would read zeros)."""
        if self.uffd >= 0:
            os.close(self.uffd)
            self.uffd = -1

    def start_server(self) -> int | None:
        """Fork the page server (detached: it outlives the restore) and its watchdog; return
        the server's pid, or None when nothing is lazy.  The process is released already:
        its faults wait on the uffd until the server answers."""
        if self.uffd < 0:
            return None
        plan = _Plan(self.cp)
        target_pidfd = pidfd_sys.pidfd_open(self.pid)
        try:
            stderr = take_target_fd(self.pid, 2)
        except OSError:
            stderr = -1
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            middle = os.fork()
            if middle == 0:  # pragma: no cover - the intermediate process: detach, fork, exit
                code = 1
                try:
                    # Nothing of the caller's (its pipes, sockets, locks, the signals an attached
                    # restore holds for its process: restore.hold_forwarded) is the server's.
                    _default_signals()
                    _quiet()
                    # What the caller's objects still hold is collected now, not later in the
                    # server, where closing their fds by number would hit reused numbers.
                    gc.collect()
                    gc.freeze()
                    _close_all_but({self.uffd, target_pidfd, stderr, report_w})
                    os.setsid()
                    server = os.fork()
                    if server == 0:
                        code = _server_main(self.cp, plan, self.ranges, self.uffd, target_pidfd, stderr,
                                            self.pid, report_w)
                    else:
                        code = 0
                finally:
                    os._exit(code)
            os.close(report_w)
            report_w = -1
            os.waitpid(middle, 0)
            line = os.read(report_r, 64).decode(errors="replace").strip()
        finally:
            os.close(report_r)
            if report_w >= 0:
                os.close(report_w)
            os.close(target_pidfd)
            if stderr >= 0:
                os.close(stderr)
        if not line.isdigit():
            # ckpt's uffd stays open until the caller has killed the process (no zero-fill meanwhile).
            raise CkptError("the page server of the lazy restore did not start")
        self.close()
        return int(line)


class _Plan:
    """Where the pages to copy come from: the checkpoint's chain, resolved a chunk at a time
    (``Checkpoint.resolve`` over a small range costs a bisection per link, so the server
    answers its first fault at once instead of resolving gigabytes first)."""

    def __init__(self, cp: Checkpoint) -> None:
        self.cp = cp
        self.links = {link.id: link for link in cp.chain()}
        # The background order: each checkpoint's stored ranges, the newest checkpoint first
        # (what the process wrote last, its working set); resolve() decides whose content each
        # page really has.
        self.order = [link.stored for link in reversed(cp.chain())]

    def runs(self, start: int, end: int) -> Iterator[tuple[int, int, list[tuple[int, bytes, int, int]]]]:
        """``(run start, run end, slices)`` covering the stored content of image range
        ``[start, end)``: stored pieces closer than :data:`MERGE_GAP` make one run (its gaps are
        zeros), so that scattered pages of several checkpoints are installed with one call;
        each slice is ``(address, frame, offset, length)``, read through the eager restore's own
        decode path (Checkpoint.iter_stored: crc32, zstd content checksum, lengths)."""
        run: list[tuple[int, bytes, int, int]] = []
        lo = hi = 0
        for piece in self.cp.resolve([(start, end)]):
            if piece.source != "data" or piece.checkpoint is None:
                continue
            if run and piece.start - hi > MERGE_GAP:
                yield lo, hi, run
                run = []
            if not run:
                lo = piece.start
            run.extend(self.links[piece.checkpoint].iter_stored(piece.start, piece.end))
            hi = piece.end
        if run:
            yield lo, hi, run


class _Gone(Exception):
    """The uffd's mm is gone (the process exited or exec'd)."""


class _Changing(Exception):
    """The mm is changing (an event is unread): read the events, then try again."""


@dataclass
class _Client:
    """One uffd the server fills: the restored process's, or a child's it forked."""

    fd: int
    todo: list[Range]                  # current addresses still to copy
    moved: list[tuple[int, int, int]] = field(default_factory=list)   # (start, end, shift): image = cur - shift
    cursor: list[int] = field(default_factory=list)   # per link of the order: next stored range to look at
    faults: list[int] = field(default_factory=list)   # fault addresses read, not answered yet

    def image_pieces(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(current start, current end, image start) over ``[start, end)``."""
        at = start
        for s, e, shift in self.moved:
            if e <= at or s >= end:
                continue
            if s > at:
                yield at, s, at
            lo, hi = max(s, at), min(e, end)
            yield lo, hi, lo - shift
            at = hi
        if at < end:
            yield at, end, at


class PageServer:
    """Fills the lazily restored memory (runs in its own process, see :meth:`LazyMemory.start_server`)."""

    def __init__(self, plan: _Plan, uffd: int, lazy: list[Range], watchdog: socket.socket | None) -> None:
        self.plan = plan
        self.clients = [_Client(uffd, list(lazy))]
        self.watchdog = watchdog
        self.pool = workers.pool(COPIERS, "ckpt-lazy")

    def run(self) -> None:
        """Answer faults and fill in the background until every client has all its pages."""
        while self.clients:
            self._answer_all()
            if not self.clients:
                break
            client = self.clients[0]
            try:
                chunk = self._next_chunk(client)
                if chunk is None:
                    self._drop(client)
                    continue
                for a, b in ranges.clip(client.todo, *chunk):
                    self._fill(client, a, b)
            except _Gone:
                self._drop(client)
            except _Changing:
                self._wait()

    def _drop(self, client: _Client) -> None:
        self.clients.remove(client)
        os.close(client.fd)

    def _wait(self) -> None:
        """An mm is changing: wait a little for its event (or a fault) to be queued."""
        select.select([c.fd for c in self.clients], [], [], 0.005)

    def _next_chunk(self, client: _Client) -> Range | None:
        """The next chunk to copy in the background: the :data:`BACKGROUND_CHUNK` from the first
        page still to do that the newest checkpoint stored, then its parent's, ... (windows
        holding what the process wrote last first: its working set); then the rest by address
        (pages a remap moved; pages no checkpoint stored are dropped, they are zeros); None when
        done."""
        order = self.plan.order
        if not client.cursor:
            client.cursor = [0] * len(order)
        for k, stored in enumerate(order):
            while client.cursor[k] < len(stored):
                s, e = stored[client.cursor[k]]
                pending = ranges.clip(client.todo, s, e)
                if pending:
                    return pending[0][0], pending[0][0] + BACKGROUND_CHUNK
                client.cursor[k] += 1
        # Every stored page at its own address is in: what is left unmoved holds zeros.
        client.todo = ranges.intersect(client.todo, ranges.normalize((s, e) for s, e, _ in client.moved))
        if not client.todo:
            return None
        a, _ = client.todo[0]
        return a, a + BACKGROUND_CHUNK

    # -- faults and events ------------------------------------------------------------

    def _answer_all(self) -> None:
        for client in list(self.clients):
            try:
                self._answer(client)
            except _Gone:
                self._drop(client)

    def _answer(self, client: _Client) -> None:
        """Read the client's messages in order; answer its faults (kept for later while its mm
        changes: a fault read is never lost)."""
        while True:
            msgs = uffd_sys.messages(client.fd)
            for event, a, b, c in msgs:
                if event == uffd_sys.UFFD_EVENT_PAGEFAULT:
                    client.faults.append(b & ~(PAGE - 1))
                elif event == uffd_sys.UFFD_EVENT_FORK:
                    self._forked(client, a & 0xFFFFFFFF)
                elif event == uffd_sys.UFFD_EVENT_REMAP:
                    self._remapped(client, a, b, c)
                elif event in (uffd_sys.UFFD_EVENT_REMOVE, uffd_sys.UFFD_EVENT_UNMAP):
                    client.todo = ranges.subtract(client.todo, [(a, b)])
            try:
                while client.faults:
                    self._fault(client, client.faults[0])
                    client.faults.pop(0)
            except _Changing:
                self._wait()
                continue
            if not msgs:
                return

    def _fault(self, client: _Client, address: int) -> None:
        window = address & ~(FAULT_WINDOW - 1)
        todo = ranges.clip(client.todo, window, window + FAULT_WINDOW)
        if ranges.covers(todo, address, address + PAGE):
            # The faulting page's run first, then the rest of its window.
            first = [(address, next(e for s, e in todo if s <= address < e))]
            for s, e in first + ranges.subtract(todo, first):
                self._fill(client, s, e)
        # A page none of the checkpoints stored (or dropped since): zeros, with the next few.
        after = [s for s, _ in ranges.clip(client.todo, address, address + ZERO_RUN)]
        end = min([address + ZERO_RUN, *after])
        self._zero(client.fd, address, max(end - address, PAGE))
        # A page present already (a copy raced with the fault) wakes nobody by itself.
        self._wake(client, address)

    @staticmethod
    def _wake(client: _Client, address: int) -> None:
        with contextlib.suppress(OSError):
            uffd_sys.wake(client.fd, address, PAGE)

    def _forked(self, parent: _Client, fd: int) -> None:
        """The process forked: its child's missing pages are the parent's (fork copied the page
        tables; copies since failed with EAGAIN until this event was read)."""
        child = _Client(fd, list(parent.todo), list(parent.moved))
        self.clients.append(child)
        if self.watchdog is not None:
            with contextlib.suppress(OSError):
                socket.send_fds(self.watchdog, [b"f"], [fd])

    def _remapped(self, client: _Client, old: int, new: int, length: int) -> None:
        """mremap moved ``[old, old+length)`` to ``new``: so do its pages to copy."""
        moving = ranges.clip(client.todo, old, old + length)
        shift = new - old
        pieces = list(client.image_pieces(old, old + length))
        client.todo = ranges.subtract(client.todo, [(old, old + length)])
        client.todo = ranges.union(client.todo, [(s + shift, e + shift) for s, e in moving])
        kept = [(a, b, sh) for s, e, sh in client.moved
                for a, b in ranges.subtract([(s, e)], [(new, new + length)])]
        added = [(s + shift, e + shift, s + shift - img) for s, e, img in pieces]
        client.moved = sorted(kept + [m for m in added if m[2] != 0])

    # -- copying ----------------------------------------------------------------------

    def _fill(self, client: _Client, start: int, end: int) -> None:
        """Copy the stored content of the current range ``[start, end)`` into the client (long
        runs of zero pages stay missing: a fault there gets a zero page, and once the uffd is
        gone the kernel fills them with zeros itself), on :data:`COPIERS` threads: most of the
        time is the kernel allocating and filling fresh pages, which overlaps on two CPUs."""
        jobs: list[tuple[int, int, int, object]] = []   # (dst, length, src address, buffer kept alive)
        for cur, cur_end, img in list(client.image_pieces(start, end)):
            shift = cur - img
            for lo, hi, run in self.plan.runs(img, img + (cur_end - cur)):
                if len(run) == 1:   # one slice of one frame: straight from it
                    _, frame, offset, _ = run[0]
                    base = ctypes.cast(ctypes.c_char_p(frame), ctypes.c_void_p).value or 0
                    buf: object = frame
                else:   # scattered pieces: gathered into one buffer, one call
                    gathered = bytearray(hi - lo)
                    for address, frame, offset, length in run:
                        gathered[address - lo : address - lo + length] = memoryview(frame)[offset : offset + length]
                    base, offset, buf = ctypes.addressof(ctypes.c_char.from_buffer(gathered)), 0, gathered
                for at in range(0, hi - lo, COPY_SLICE):
                    jobs.append((lo + shift + at, min(COPY_SLICE, hi - lo - at), base + offset + at, buf))
        if len(jobs) > 1:
            # Every copy ends before any error is acted on: none may land after the event that
            # made another fail (an MADV_DONTNEED read, then a copy into the zapped range).
            futures = [self.pool.submit(self._install, client.fd, d, n, src) for d, n, src, _ in jobs]
            wait(futures)
            for future in futures:
                future.result()
        else:
            for d, n, src, _ in jobs:
                self._install(client.fd, d, n, src)
        client.todo = ranges.subtract(client.todo, [(start, end)])

    @staticmethod
    def _zero(fd: int, dst: int, length: int) -> None:
        """UFFDIO_ZEROPAGE from the faulting page ``dst`` on, as far as the kernel lets in (a
        page present or a VMA boundary ends it); the faulting page alone if the run fails."""
        n, err = uffd_sys.zeropage(fd, dst, length)
        if err in (errno.ENOENT, errno.EINVAL) and n == 0 and length > PAGE:
            n, err = uffd_sys.zeropage(fd, dst, PAGE)
        if err == errno.EAGAIN and n == 0:
            raise _Changing()
        if err == errno.ESRCH:
            raise _Gone()

    def _install(self, fd: int, dst: int, length: int, src: int) -> int:
        """UFFDIO_COPY over ``[dst, dst+length)`` from ``src``, as much as the kernel lets in: pages
        present already are skipped (-EEXIST: a race with a fault), a range the layout no longer
        has in one VMA is halved (-ENOENT).  Returns bytes installed."""
        done = 0
        while done < length:
            left = length - done
            n, err = uffd_sys.copy(fd, dst + done, src + done, left)
            done += n
            if not err:
                break
            if err == errno.EAGAIN and n > 0:
                continue   # partial: go on from there
            if err == errno.EAGAIN:
                raise _Changing()
            if err == errno.ESRCH:
                raise _Gone()
            if err == errno.EEXIST:
                done += PAGE
                continue
            if err in (errno.ENOENT, errno.EINVAL) and left > PAGE:
                half = (left // 2) & ~(PAGE - 1)
                done += self._install(fd, dst + done, half, src + done)
                continue   # the second half on the next round
            if err in (errno.ENOENT, errno.EINVAL):
                done += PAGE   # no longer mapped (or not registered): nothing to fill there
                continue
            raise OSError(err, os.strerror(err))
        return done


def _server_main(cp: Checkpoint, plan: _Plan, lazy: list[Range], uffd: int, target_pidfd: int, stderr: int, pid: int,
                 report_w: int) -> int:  # pragma: no cover - runs in the page server
    """The page server process: fork the watchdog, report the server's pid, serve, say done."""
    from .image.frames import FrameCache
    cp.image_dir._frame_cache = FrameCache()   # the parent's read-ahead threads are not here
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    watchdog = os.fork()
    if watchdog == 0:
        code = 1
        try:
            mine.close()
            code = _watchdog(theirs, uffd, target_pidfd, stderr, pid, os.getppid())
        finally:
            os._exit(code)
    theirs.close()
    os.close(target_pidfd)
    if stderr >= 0:
        os.close(stderr)
    os.write(report_w, f"{os.getpid()}\n".encode())
    os.close(report_w)
    try:
        PageServer(plan, uffd, lazy, mine).run()
        mine.send(b"done")
    except BaseException as err:   # noqa: BLE001 - the watchdog kills the process and says why
        with contextlib.suppress(OSError):
            mine.send(b"error " + _why(err).encode(errors="replace")[:4000])
        return 1
    finally:
        mine.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(watchdog, 0)
    return 0


def _why(err: BaseException) -> str:
    """One line saying why the server failed (an image check names the checkpoint and frame)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, CkptError) else f"{type(err).__name__}: {text}"


def _default_signals() -> None:  # pragma: no cover - in the server
    """Default dispositions and an empty mask: a SIGTERM ends the server (and its watchdog
    then says so), whatever the forking ckpt had blocked or handled."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _quiet() -> None:  # pragma: no cover - in the server
    """Standard streams to /dev/null: the server must not hold the restore's output pipes open."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _close_all_but(keep: set[int]) -> None:  # pragma: no cover - in the server
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _watchdog(sock: socket.socket, uffd: int, target_pidfd: int, stderr: int, pid: int,
              server: int) -> int:  # pragma: no cover - runs in the watchdog
    """Hold a duplicate of every uffd the server serves until it says "done"; if its socket
    closes first, SIGKILL the process (and the processes it forked) and say why on its stderr."""
    held = [uffd]
    why = "died"
    try:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 4096, 8)
            except InterruptedError:
                continue
            held += fds
            if data == b"done":
                return 0
            if data.startswith(b"error "):
                why = "failed (" + data[6:].decode(errors="replace") + ")"
            elif not data:
                break
    except Exception as err:   # noqa: BLE001 - no longer able to watch: the process must not read zeros
        why = f"could not be watched ({_why(err)})"
    for victim in _descendants(pid):
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(OSError):
        pidfd_sys.pidfd_send_signal(target_pidfd, signal.SIGKILL)
    if stderr >= 0:
        with contextlib.suppress(OSError):
            os.write(stderr, DEATH_MESSAGE.format(pid=server, why=why).encode(errors="replace"))
    return 0


def _descendants(pid: int) -> list[int]:  # pragma: no cover - in the watchdog
    """Every live descendant of ``pid`` (procfs.read_children, level by level)."""
    out: list[int] = []
    frontier = [pid]
    while frontier:
        kids = []
        for parent in frontier:
            with contextlib.suppress(OSError):
                kids += procfs.read_children(parent)
        out += kids
        frontier = kids
    return out

"""Pruning an images directory: keep the newest restorable checkpoints, fold, remove the rest.

A checkpoint's memory is resolved through its chain (docs/FORMAT.md §4), so an old
checkpoint cannot just be deleted: a later one may still get pages from it.  A prune

1. chooses the checkpoints to keep: the ``keep`` newest restorable ones, those taken
   within ``keep_within`` seconds, and always the head and every checkpoint a tracking
   holder continues (the next dump of that process is its incremental child);
2. *folds* each kept checkpoint whose parent is not kept: into a copy of it goes what it
   resolves from the ancestors that go (their data extents and zero ranges, over its
   present pages), and its parent becomes its nearest kept ancestor, or none (an
   incremental then becomes a full checkpoint).  Its id, VMAs, present pages, task state
   and tracking record do not change, so every checkpoint resolves every page exactly as
   before, and the next ``ckpt dump`` continues incrementally from the head;
3. removes the checkpoints no kept one needs any more, newest first.

Atomicity (docs/FORMAT.md §8).  All of it under the images directory's writer lock.  A
folded checkpoint is written whole into a ``.staging-NNNNNN-*`` directory (ignored by
readers), synced, and swapped with the old one by ``renameat2(RENAME_EXCHANGE)``: at
every instant the name ``NNNNNN`` is either the old checkpoint or the new one, both
complete and resolving the same memory.  A removed checkpoint is first renamed to a
``.staging-*`` name (one atomic step: it disappears whole), then deleted; the newest go
first, so no checkpoint left ever names a missing parent.  A crash at any point leaves a
valid chain plus, perhaps, a staging directory that the next writer removes.

Frames are copied as they are (no decompression) when every page of the frame is still
needed and the codecs agree; the kept checkpoint's own ``pages.ckpt`` is copied whole
(``copy_file_range``), so its extents and file objects keep their frame numbers, or
hard-linked when nothing is added to it (a full checkpoint whose parent goes); only
frames of which a part is still needed are decompressed and their live pages compressed
again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import signal
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt import ranges
from ckpt.errors import ImageError, UsageError
from ckpt.image.checkpoint import Checkpoint
from ckpt.image.format import (
    FRAME_PAGES,
    META_NAME,
    PAGE_SIZE,
    PAGES_NAME,
    TASKS_DIR,
    encode_meta,
)
from ckpt.image.frames import _compress, decode_frame, read_stored_frame
from ckpt.image.fsutil import create_file, fsync_dir, make_dir, write_all
from ckpt.image.imagedir import STAGING_PREFIX, ImageDir, _tree_size, storage_error
from ckpt.ranges import Range
from ckpt.safepath import open_nofollow

__all__ = ["PrunePlan", "PruneReport", "Fold", "plan", "prune", "check_retention", "tracked_checkpoints"]

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total): the dump's

# Test hook: ``CKPT_PRUNE_CRASH=POINT[:N]`` SIGKILLs the prune at the N-th (default 1st)
# time it reaches POINT ("staged", "exchanged", "folded", "hidden", "removed"), so that the
# tests can show the chain is valid and restores the same at each of those instants.
_CRASH_ENV = "CKPT_PRUNE_CRASH"
_crash_counts: dict[str, int] = {}


def _crash_point(name: str) -> None:
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Fold:
    """One kept checkpoint made independent of the checkpoints that go."""

    id: int
    parent_before: int | None
    parent_after: int | None   # its nearest kept ancestor, or None: it becomes a root
    kind_after: str
    pages: int = 0             # data pages copied into it from the ancestors that go (all its tasks)
    zero_pages: int = 0        # zero pages recorded in it from them
    bytes_written: int = 0     # size of its new files (not those it shares with the old one)
    frames_copied: int = 0     # frames of the removed checkpoints copied as they were
    frames_compressed: int = 0  # frames made of the live pages of frames partly needed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PrunePlan:
    """What a prune keeps, folds and removes (ids, oldest first)."""

    kept: list[int]
    removed: list[int]
    folds: list[Fold]
    restorable: list[int]      # the restorable checkpoints retention chose from


@dataclass
class PruneReport:
    """What :func:`prune` did (or, with ``dry_run``, would do); ``to_dict`` is ``--json``."""

    images_dir: str
    dry_run: bool
    kept: list[int]
    removed: list[int]
    folds: list[Fold]
    bytes_before: int          # the checkpoints' files before
    bytes_after: int | None    # and after (None for a dry run)
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"images_dir": self.images_dir, "dry_run": self.dry_run, "kept": self.kept,
                "removed": self.removed, "folds": [f.to_dict() for f in self.folds],
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "seconds": round(self.seconds, 3), "notes": self.notes}


# -- choosing ------------------------------------------------------------------------

def plan(images: ImageDir, *, keep: int | None = None, keep_within: float | None = None,
         now: float | None = None, restorable: Callable[[Checkpoint], bool] | None = None,
         tracked: Iterable[int] = ()) -> PrunePlan:
    """Decide what a prune of ``images`` keeps: the ``keep`` newest restorable checkpoints
    and the restorable ones taken within ``keep_within`` seconds of ``now`` (either keeps a
    checkpoint), the head, and the ``tracked`` ones (a live process's next dump continues
    them: :func:`tracked_checkpoints`); which kept ones are folded, and which checkpoints go.

    Restorable: not a pre-dump, and nothing in it that ``ckpt.restorability`` refuses (an
    intact checkpoint that could not be restored is not worth keeping for its own sake);
    ``restorable`` replaces that judgement (tests of the image layer alone).
    """
    check_retention(keep, keep_within)
    if restorable is None:
        from ckpt.restorability import assess_checkpoint   # the rules import much: only here

        def restorable(cp: Checkpoint) -> bool:
            return cp.kind != "pre" and assess_checkpoint(cp).restorable
    now = time.time() if now is None else now
    cps = images.checkpoints
    if not cps:
        return PrunePlan([], [], [], [])
    candidates = [cp for cp in cps if restorable(cp)]
    kept: set[int] = {cps[-1].id}   # the head: the next dump continues it
    kept.update(i for i in tracked if any(cp.id == i for cp in cps))
    if keep is not None:
        kept.update(cp.id for cp in candidates[-keep:])
    if keep_within is not None:
        kept.update(cp.id for cp in candidates if now - cp.time <= keep_within)
    folds = []
    for cp in cps:
        if cp.id not in kept or cp.parent is None or cp.parent in kept:
            continue
        ancestor = next((link.id for link in reversed(cp.chain()[:-1]) if link.id in kept), None)
        kind = "full" if ancestor is None and cp.kind == "incremental" else cp.kind
        folds.append(Fold(cp.id, cp.parent, ancestor, kind))
    return PrunePlan(sorted(kept), [cp.id for cp in cps if cp.id not in kept], folds,
                     [cp.id for cp in candidates])


def tracked_checkpoints(images: ImageDir) -> set[int]:
    """The checkpoints of ``images`` that a live tracking holder continues (ckpt/tracking.py:
    its record names the images dir and the checkpoint its tracking is consistent with).
    The next dump of that process is an incremental child of it, so a prune keeps it."""
    from ckpt import tracking

    try:
        records = [t.record for t in tracking.list_tracked()]
    except OSError:   # no run directory we may read: no holder of ours
        return set()
    here = os.path.realpath(images.path)
    return {r.checkpoint_id for r in records
            if r.checkpoint_id is not None and r.images_dir and os.path.realpath(r.images_dir) == here}


# -- doing -----------------------------------------------------------------------------

def prune(images: ImageDir | str | os.PathLike[str], *, keep: int | None = None,
          keep_within: float | None = None, dry_run: bool = False, progress: Progress | None = None,
          now: float | None = None, restorable: Callable[[Checkpoint], bool] | None = None) -> PruneReport:
    """Prune the images directory ``images`` (see the module docstring and :func:`plan`).

    Takes the writer lock (``ImageDirLocked`` while a dump writes there) unless ``dry_run``,
    which only reports what would be done.  ``progress(phase, done, total)`` is called as
    the folded checkpoints are written (bytes); ``restorable``: see :func:`plan`.  Raises
    UsageError for a retention that keeps nothing, CorruptImage for a chain that does not
    resolve (nothing is changed then), StorageError when the disk fills (the chain is as it
    was, or folded so far: valid either way).
    """
    t0 = time.monotonic()
    if not isinstance(images, ImageDir):
        images = ImageDir(images)   # an images directory already (never adopt another one)
        if not dry_run:   # a writer's checks (the directory is the caller's, nobody else's), as a dump's
            images = ImageDir(images.path, create=True)
    if dry_run:
        return _report(images, plan(images, keep=keep, keep_within=keep_within, now=now,
                                    restorable=restorable, tracked=tracked_checkpoints(images)), True, t0)
    with images.lock():
        images.remove_stale_staging()
        the_plan = plan(images, keep=keep, keep_within=keep_within, now=now, restorable=restorable,
                        tracked=tracked_checkpoints(images))
        before = _size(images, the_plan.kept + the_plan.removed)
        done = []
        writer = _Writing(progress, _fold_total(images, the_plan.folds))
        for fold in the_plan.folds:
            done.append(_fold_checkpoint(images, fold, writer))
        for ckpt_id in reversed(the_plan.removed):   # newest first: no parent is ever missing
            _remove(images, ckpt_id)
        images._cache.clear()   # the Checkpoint objects of before name files that are gone
        the_plan.folds = done
        return _report(images, the_plan, False, t0, before)


def _report(images: ImageDir, p: PrunePlan, dry_run: bool, t0: float, before: int | None = None) -> PruneReport:
    folds = p.folds
    if dry_run:   # how much each fold would copy: a resolve per task, no data read
        folds = []
        for f in p.folds:
            counts = [_fold_pages(t, _task_parent(t, f.parent_after)) for t in images.checkpoint(f.id).tasks()]
            folds.append(dataclasses.replace(f, pages=sum(c[0] for c in counts), zero_pages=sum(c[1] for c in counts)))
    notes = []
    if p.kept and not p.restorable:
        notes.append("no checkpoint is restorable: only the newest (and any a tracking holder continues) is kept")
    return PruneReport(images_dir=str(images.path), dry_run=dry_run, kept=p.kept, removed=p.removed,
                       folds=folds, bytes_before=_size(images, p.kept + p.removed) if before is None else before,
                       bytes_after=None if dry_run else _size(images, p.kept),
                       seconds=time.monotonic() - t0, notes=notes)


def _size(images: ImageDir, ids: Iterable[int]) -> int:
    return sum(_tree_size(images.path / f"{i:06d}") for i in ids)


class _Writing:
    """Progress over every fold of one prune."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress("prune", min(self.done, self.total), self.total)


def _fold_total(images: ImageDir, folds: list[Fold]) -> int:
    """Bytes the folds will read: their own pages.ckpt, and the pages they take from others."""
    total = 0
    for fold in folds:
        for task in images.checkpoint(fold.id).tasks():
            pages, _ = _fold_pages(task, _task_parent(task, fold.parent_after))
            total += task.meta.pages_size + pages * PAGE_SIZE
    return total


def _fold_pages(cp: Checkpoint, parent: int | None) -> tuple[int, int]:
    """(data pages, zero pages) a fold of ``cp`` down to ``parent`` takes from other checkpoints."""
    data = zero = 0
    for piece in cp.resolve(cp.present, until=parent):
        if piece.checkpoint != cp.id and piece.source in ("data", "zero"):
            n = (piece.end - piece.start) // PAGE_SIZE
            data, zero = (data + n, zero) if piece.source == "data" else (data, zero + n)
    return data, zero


def _task_parent(task: Checkpoint, parent: int | None) -> int | None:
    """The parent a task's checkpoint keeps: the root's new parent when the task's chain
    goes through it (the task lived then), else none."""
    if parent is None or not task.is_task:
        return parent
    return parent if any(link.id == parent for link in task.chain()) else None


def _fold_checkpoint(images: ImageDir, fold: Fold, writer: _Writing) -> Fold:
    """Write the folded copy of checkpoint ``fold.id`` (its tasks too) and swap it in."""
    cp = images.checkpoint(fold.id)
    staging = images.path / f"{STAGING_PREFIX}{cp.id:06d}-{os.urandom(4).hex()}"
    pages = zeros = written = copied = compressed = 0
    try:
        try:
            make_dir(staging)
            for task in cp.tasks():
                dest = staging
                if task.is_task:
                    if not (staging / TASKS_DIR).is_dir():
                        make_dir(staging / TASKS_DIR)
                    dest = staging / TASKS_DIR / str(task.pid)
                    make_dir(dest)
                parent = _task_parent(task, fold.parent_after)
                if task.parent == parent:   # a task that needs nothing from the checkpoints that go
                    for name in (META_NAME, PAGES_NAME):
                        os.link(task.path / name, dest / name, follow_symlinks=False)
                    writer.advance(task.meta.pages_size)
                else:
                    p, z, c, n = _fold_task(task, parent, dest, writer)
                    pages, zeros, copied, compressed = pages + p, zeros + z, copied + c, compressed + n
                written += _new_bytes(dest)
                fsync_dir(dest)
            if (staging / TASKS_DIR).is_dir():
                fsync_dir(staging / TASKS_DIR)
            fsync_dir(staging)
        except OSError as err:
            raise storage_error(f"prune: cannot write the folded checkpoint {cp.id} in {staging}", err) from err
        _crash_point("staged")
        _exchange(images, staging.name, f"{cp.id:06d}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)   # the new copy, never swapped in
        raise
    # From here the folded checkpoint is the one: the staging name holds the old one.
    _crash_point("exchanged")
    images._cache.clear()   # cached Checkpoint objects (and their chains) are of the old files
    shutil.rmtree(staging, ignore_errors=True)   # what is left, the next writer removes
    _crash_point("folded")
    return dataclasses.replace(fold, pages=pages, zero_pages=zeros, bytes_written=written,
                               frames_copied=copied, frames_compressed=compressed)


def _new_bytes(dest: Path) -> int:
    """Bytes of the files written into ``dest`` (not those hard-linked from the old checkpoint)."""
    sizes = (os.lstat(dest / n) for n in (META_NAME, PAGES_NAME))
    return sum(st.st_size for st in sizes if st.st_nlink == 1)


def _exchange(images: ImageDir, staging: str, name: str) -> None:
    from ckpt._sys.fs import rename_exchange

    fd = os.open(images.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            rename_exchange(fd, staging, name)
            os.fsync(fd)
        except OSError as err:
            raise storage_error(f"prune: cannot swap {name} in {images.path}", err) from err
    finally:
        os.close(fd)


def _remove(images: ImageDir, ckpt_id: int) -> None:
    """Hide checkpoint ``ckpt_id`` under a staging name (one atomic rename), then delete it."""
    name = f"{ckpt_id:06d}"
    hidden = images.path / f"{STAGING_PREFIX}{name}-{os.urandom(4).hex()}"
    try:
        os.rename(images.path / name, hidden)
        fsync_dir(images.path)
    except OSError as err:
        raise storage_error(f"prune: cannot remove checkpoint {ckpt_id} of {images.path}", err) from err
    _crash_point("hidden")
    shutil.rmtree(hidden, ignore_errors=True)
    _crash_point("removed")


# -- folding one checkpoint's pages --------------------------------------------------

def _fold_task(cp: Checkpoint, parent: int | None, dest: Path, writer: _Writing) -> tuple[int, int, int, int]:
    """Write into ``dest`` the checkpoint ``cp`` (a root's or a task's) resolved down to
    ``parent``: its own frames first (so its extents and file objects keep their frame
    numbers), then the data it takes from the checkpoints between it and ``parent``.
    Return (data pages, zero pages) taken from them, and (frames copied, frames compressed)."""
    links = {link.id: link for link in cp.chain()}
    take: dict[int, list[Range]] = {}
    zero: list[Range] = list(cp.zero)
    stop: list[Range] = []   # resolved to backing before ``parent``: older checkpoints must not be read
    for piece in cp.resolve(cp.present, until=parent):
        if piece.source == "data" and piece.checkpoint != cp.id:
            assert piece.checkpoint is not None
            take.setdefault(piece.checkpoint, []).append((piece.start, piece.end))
        elif piece.source == "zero" and piece.checkpoint != cp.id:
            zero.append((piece.start, piece.end))
        elif piece.source == "backing" and parent is not None:
            stop.append((piece.start, piece.end))
    meta = cp.meta
    frames, new_extents, copied, compressed = meta.frames, meta.extents, 0, 0
    if not take:
        # Nothing to add to its pages (a full checkpoint, or only zero ranges taken): the same
        # pages.ckpt, hard-linked (checkpoint files are never written again once committed).
        os.link(cp.path / PAGES_NAME, dest / PAGES_NAME, follow_symlinks=False)
        writer.advance(meta.pages_size)
    else:
        out = _FrameOut(dest / PAGES_NAME, meta.codec, meta.level, array("Q", meta.frames))
        extents: list[tuple[int, int, int, int]] = [
            tuple(meta.extents[k:k + 4]) for k in range(0, len(meta.extents), 4)]   # type: ignore[misc]
        try:
            out.copy_file(cp.path / PAGES_NAME, meta.pages_size, depth=cp._depth)
            writer.advance(meta.pages_size)
            for link_id in sorted(take):
                extents += out.take(links[link_id], ranges.normalize(take[link_id]), writer)
            extents += out.flush()
            frames = out.finish()
        finally:
            out.close()
        extents.sort()
        new_extents = array("Q")
        for ext in extents:
            new_extents.extend(ext)
        copied, compressed = out.copied, out.compressed
    kind = "full" if parent is None and cp.kind == "incremental" else cp.kind
    taken = sum(ranges.total(r) for r in take.values()) // PAGE_SIZE
    zero_taken = (ranges.total(ranges.normalize(zero)) - ranges.total(cp.zero)) // PAGE_SIZE
    stats = dict(cp.stats, folded_pages=taken, folded_zero_pages=zero_taken)
    folded = dataclasses.replace(meta, parent=parent, kind=kind, frames=frames, extents=new_extents,
                                 zero=ranges.normalize(zero), whole=ranges.union(cp.whole, ranges.normalize(stop)),
                                 stats=stats)
    fd = create_file(dest / META_NAME)
    try:
        write_all(fd, encode_meta(folded))
        os.fsync(fd)
    finally:
        os.close(fd)
    return taken, zero_taken, copied, compressed


class _FrameOut:
    """The new ``pages.ckpt`` of a folded checkpoint: frames appended after its own.

    Frames are written strictly in order (their offsets follow each other); the ones made
    of live pages are compressed on two threads meanwhile (zstd releases the GIL), as the
    dump's FrameSink does, at most ``_IN_FLIGHT`` frames ahead."""

    _IN_FLIGHT = 4

    def __init__(self, path: Path, codec: str, level: int, frames: array) -> None:
        from .. import workers

        self.codec, self.level, self.frames = codec, level, frames
        self.fd = create_file(path)
        self.offset = 0
        self.copied = self.compressed = 0   # frames appended as they were / compressed here
        self._next = len(frames) // 4       # index of the next frame submitted
        self._queue: collections.deque[tuple[Future[tuple[bytes | bytearray, int]], int]] = collections.deque()
        self._pool = workers.pool(2, "ckpt-prune")
        self._pending = bytearray()      # live pages of partly needed frames, to compress again
        self._pending_ext: list[tuple[int, int, int, int]] = []

    def copy_file(self, path: Path, size: int, *, depth: int) -> None:
        """Write ``size`` bytes of ``path`` (the checkpoint's own pages.ckpt) first, in the kernel."""
        src = open_nofollow(path, os.O_RDONLY, depth=depth)
        try:
            done = 0
            while done < size:
                n = os.copy_file_range(src, self.fd, size - done, done)   # the output at its position
                if n == 0:
                    raise ImageError(f"{path}: shorter than its frames ({done} of {size} bytes)")
                done += n
        finally:
            os.close(src)
        self.offset = size

    def take(self, link: Checkpoint, want: list[Range], writer: _Writing) -> list[tuple[int, int, int, int]]:
        """Append the data of ``link`` over ``want`` (inside its stored ranges); return the
        new extents (vaddr, pages, frame, page)."""
        by_frame: dict[int, list[tuple[int, int, int]]] = {}
        for vaddr, npages, frame, page in _sub_extents(link.meta.extents, want):
            by_frame.setdefault(frame, []).append((vaddr, npages, page))
        extents: list[tuple[int, int, int, int]] = []
        meta = link.meta
        src = open_nofollow(link.path / PAGES_NAME, os.O_RDONLY, depth=link._depth)
        try:
            for frame in sorted(by_frame):
                parts = by_frame[frame]
                used = sum(n for _, n, _ in parts)
                raw_len = meta.frames[4 * frame + 2]
                stored = read_stored_frame(src, meta, frame)   # crc-checked
                if meta.codec == self.codec and used * PAGE_SIZE == raw_len:
                    # Every page of it is still needed: copy it as it is.
                    done: Future[tuple[bytes | bytearray, int]] = Future()
                    done.set_result((stored, meta.frames[4 * frame + 3]))
                    index = self._submit(done, raw_len)
                    self.copied += 1
                    extents += [(vaddr, n, index, page) for vaddr, n, page in parts]
                else:
                    raw = decode_frame(stored, meta, frame)
                    for vaddr, n, page in parts:
                        extents += self._stage(vaddr, memoryview(raw)[page * PAGE_SIZE:(page + n) * PAGE_SIZE])
                writer.advance(used * PAGE_SIZE)
        finally:
            os.close(src)
        return extents

    def _submit(self, future: Future[tuple[bytes | bytearray, int]], raw_len: int) -> int:
        while len(self._queue) >= self._IN_FLIGHT:
            self._write_oldest()
        self._queue.append((future, raw_len))
        self._next += 1
        return self._next - 1

    def _write_oldest(self) -> None:
        future, raw_len = self._queue.popleft()
        stored, crc = future.result()
        write_all(self.fd, stored)
        self.frames.extend((self.offset, len(stored), raw_len, crc))
        self.offset += len(stored)

    def _stage(self, vaddr: int, data: memoryview) -> list[tuple[int, int, int, int]]:
        """Queue pages to be compressed again; extents are returned as their frames are made."""
        out = []
        while data:
            room = FRAME_PAGES * PAGE_SIZE - len(self._pending)
            part = data[:room]
            self._pending_ext.append((vaddr, len(part) // PAGE_SIZE, -1, len(self._pending) // PAGE_SIZE))
            self._pending += part
            vaddr += len(part)
            data = data[room:]
            if len(self._pending) == FRAME_PAGES * PAGE_SIZE:
                out += self.flush()
        return out

    def flush(self) -> list[tuple[int, int, int, int]]:
        """Hand the queued pages to a compressing thread as one frame; return their extents."""
        if not self._pending:
            return []
        raw = self._pending
        index = self._submit(self._pool.submit(_compress, raw, self.codec, self.level), len(raw))
        self.compressed += 1
        out = [(vaddr, n, index, page) for vaddr, n, _, page in self._pending_ext]
        self._pending, self._pending_ext = bytearray(), []
        return out

    def finish(self) -> array:
        """Write every frame still queued (after :meth:`flush`), fsync; return the frame-array."""
        while self._queue:
            self._write_oldest()
        os.fsync(self.fd)
        return self.frames

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _sub_extents(extents: array, want: list[Range]) -> list[tuple[int, int, int, int]]:
    """The parts of extent-array ``extents`` over the ranges ``want`` (sorted, disjoint):
    (vaddr, pages, frame, page) each -- per extent, never per page."""
    from bisect import bisect_right

    starts = extents[0::4]
    out = []
    for lo, hi in want:
        k = max(0, bisect_right(starts, lo) - 1)
        while 4 * k < len(extents):
            vaddr, npages, frame, page = extents[4 * k:4 * k + 4]
            if vaddr >= hi:
                break
            end = vaddr + npages * PAGE_SIZE
            s, e = max(lo, vaddr), min(hi, end)
            if s < e:
                out.append((s, (e - s) // PAGE_SIZE, frame, page + (s - vaddr) // PAGE_SIZE))
            k += 1
    return out


def check_retention(keep: int | None, keep_within: float | None) -> None:
    """Refuse a retention that keeps nothing (the CLI's and the dump's check, before any work)."""
    if keep is None and keep_within is None:
        raise UsageError("prune needs --keep N or --keep-within DURATION (or both)")
    if keep is not None and keep < 1:
        raise UsageError(f"--keep {keep}: keep at least one checkpoint")
    if keep_within is not None and not keep_within > 0:
        raise UsageError(f"--keep-within {keep_within}: a positive duration")


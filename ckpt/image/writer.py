"""Writing one checkpoint: stage pages and metadata, then commit atomically.

A :class:`CheckpointWriter` owns a staging directory ``.staging-NNNNNN-<random>``
inside the images directory.  Pages go into ``pages.ckpt`` as they arrive
(compressed on worker threads); :meth:`CheckpointWriter.commit` writes
``meta.ckpt``, fsyncs both files and the staging directory, renames it to
``NNNNNN`` and fsyncs the images directory.  Until that rename nothing is
visible to readers, so a crash or an error at any point leaves the chain as it
was (DESIGN.md invariant 3); :meth:`CheckpointWriter.abort` (called when the
``with`` block raises or exits without committing) removes the staging dir.

The same page may be added several times (a pre-copy pass while the target
runs, then the final pass while it is frozen).  Every add is a numbered
*piece*; at commit a sweep over the pieces keeps, for each page, the last one,
so only the final location of a page is indexed.

Pages added between :meth:`CheckpointWriter.hold` and
:meth:`CheckpointWriter.end_hold` (an incremental dump's running round) stay
raw in memory, in *held frames*, up to a byte budget; at commit only their
pages no later add superseded are compressed and written, so a page copied
while the target ran and again while it was frozen is stored once, in its final
version.  Pages beyond the budget are written as they come (oldest held frame
first) and a superseded copy among them stays in the file as dead bytes.

A writer made with ``durable=False`` (``ckpt dump --no-fsync``) skips every fsync:
the commit is still a rename of a complete staging directory, so a crash of ckpt
leaves the chain as it was, but a power loss or a kernel crash may leave the newest
checkpoint with missing or zeroed bytes -- CRIU's guarantee (readers then refuse it
by its checksums: docs/FORMAT.md section 5).
"""

from __future__ import annotations

import heapq
import operator
import os
import shutil
import time as _time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ckpt import ranges
from ckpt.errors import ImageError, write_error
from ckpt.image.format import (
    CODEC_NONE,
    CODEC_ZSTD,
    FRAME_PAGES,
    META_NAME,
    TASKS_DIR,
    PAGE_SIZE,
    PAGES_NAME,
    Meta,
    VmaRecord,
    encode_meta,
)
from ckpt.image.frames import FrameSink
from ckpt.image.schema import State
from ckpt.image.fsutil import create_file, fsync_dir, make_dir, write_all
from ckpt.image.zeros import BytesLike, zero_page_runs
from ckpt.ranges import Range

if TYPE_CHECKING:
    from ckpt.image.checkpoint import Checkpoint
    from ckpt.image.imagedir import ImageDir

__all__ = ["CheckpointWriter", "WriterStats"]

_ZERO = -1  # frame index of a piece that records zero pages
_HELD = -2  # frame index _HELD - k: held frame k (see CheckpointWriter.hold)
_FRAME_BYTES = FRAME_PAGES * PAGE_SIZE

# A piece: (start, end, seq, frame index or _ZERO, page offset in frame).
_Piece = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What a writer has taken in so far (pages overridden by a later add are counted each time)."""

    pages_stored: int  # data pages added
    pages_zero: int  # zero pages added (detected in add_pages or given to add_zero_pages)
    bytes_raw: int  # page bytes handed to the compressor
    bytes_compressed: int  # bytes written to pages.ckpt so far


class CheckpointWriter:
    """Stages one checkpoint; use as a context manager and call :meth:`commit` inside it."""

    def __init__(
        self,
        image_dir: ImageDir,
        *,
        id: int,
        kind: str,
        parent: int | None,
        pid: int,
        compression_level: int,
        workers: int,
        staging: Path,
        tree_writer: CheckpointWriter | None = None,
        durable: bool = True,
    ) -> None:
        self.image_dir = image_dir
        # A task's writer stages into the tree writer's directory and becomes visible with its commit.
        self.tree_writer = tree_writer
        self._task_writers: dict[int, CheckpointWriter] = {}
        self._staged = False
        self._workers = workers
        self.durable = durable
        self.id = id
        self.kind = kind
        self.parent = parent
        self.pid = pid
        self.staging = staging
        self._level = compression_level
        self._codec = CODEC_NONE if compression_level == 0 else CODEC_ZSTD
        self._closed = False
        self._pieces: list[_Piece] = []
        self._object_pieces: dict[int, list[_Piece]] = {}   # file object id -> its pieces (file offsets)
        self._seq = 0
        self._frame = bytearray()
        self._pages_stored = 0
        self._pages_zero = 0
        self._hold_max = 0      # bytes of held frames kept in memory; 0: not holding
        self._held: list[bytearray | int] = []   # held frame k: its raw pages, or the frame it was written as
        self._held_bytes = 0    # raw bytes of the held frames still in memory
        self._held_first = 0    # the oldest held frame still in memory
        self._pages_dropped = 0  # held pages superseded by a later add, never written
        make_dir(staging)
        try:
            self._pages_path = staging / PAGES_NAME
            self._fd: int | None = create_file(self._pages_path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._sink = FrameSink(
            self._fd,
            codec=self._codec,
            level=compression_level,
            workers=workers,
            ckpt_id=id,
            path=self._pages_path,
            durable=durable,
            # O_DIRECT only where the bytes must reach the disk anyway (frames.py): not for
            # --no-fsync, whose writes may end in the page cache, as CRIU's do; nor for a
            # tree's tasks (one DirectWriter's buffers per task would be too much memory).
            direct=durable and tree_writer is None,
        )

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Leaving the block without a commit (exception or not) discards the
        # checkpoint: a half-written one must never become visible.
        self.abort()

    # -- adding pages ------------------------------------------------------

    @property
    def stats(self) -> WriterStats:
        """Counters so far."""
        return WriterStats(
            pages_stored=self._pages_stored,
            pages_zero=self._pages_zero,
            bytes_raw=self._sink.bytes_raw + len(self._frame),
            bytes_compressed=self._sink.bytes_compressed,
        )

    def add_pages(self, vaddr: int, data: BytesLike) -> None:
        """Add the contents of contiguous pages starting at ``vaddr``.

        ``data`` may be reused by the caller as soon as this returns (it is
        copied into frame buffers).  All-zero pages are recorded as zero pages
        instead of being stored.  A later add of the same page wins.
        """
        self._check_open()
        view = memoryview(data).cast("B")
        size = len(view)
        if vaddr % PAGE_SIZE or size % PAGE_SIZE or vaddr < 0:
            raise ValueError(f"add_pages({vaddr:#x}, {size} bytes): address and length must be page multiples")
        if not size:
            return
        self._seq += 1
        seq = self._seq
        pieces = self._pieces
        data_from = 0  # first page of the data run that ends at the next zero run
        for first, count in [*zero_page_runs(view, PAGE_SIZE), (size // PAGE_SIZE, 0)]:
            if first > data_from:
                self._store(view, vaddr, data_from, first, seq)
            if count:
                start = vaddr + first * PAGE_SIZE
                pieces.append((start, start + count * PAGE_SIZE, seq, _ZERO, 0))
                self._pages_zero += count
            data_from = first + count

    def add_ranges(self, rs: Sequence[Range], data: BytesLike) -> None:
        """Add the pages of ``rs`` (sorted, page-aligned), laid back to back in ``data``.

        The same as one :meth:`add_pages` per range, but zero pages are found
        in one pass over the whole buffer: one call per copy batch instead of
        one per range (an incremental dump has thousands of one-page ranges).
        """
        self._add_ranges(rs, data, self._pieces, "add_ranges")

    def add_object(self, obj_id: int, rs: Sequence[Range], data: BytesLike) -> None:
        """Add the content of file object ``obj_id`` (state["objects"]): the file ranges
        ``rs`` (sorted, page-aligned offsets), laid back to back in ``data``.

        Stored in the same frames as pages; indexed apart, by file offset, in the
        ``object_extents`` of the metadata.  All-zero pages are recorded as zero."""
        self._add_ranges(rs, data, self._object_pieces.setdefault(obj_id, []), "add_object")

    def _add_ranges(self, rs: Sequence[Range], data: BytesLike, pieces: list[_Piece], what: str) -> None:
        self._check_open()
        view = memoryview(data).cast("B")
        if sum(end - start for start, end in rs) != len(view):
            raise ValueError(f"{what}: {len(view)} bytes of data for {len(rs)} ranges of another size")
        if not rs:
            return
        self._seq += 1
        seq = self._seq
        zero_runs = zero_page_runs(view, PAGE_SIZE)
        zi = 0
        page = 0  # buffer page index where the current range starts
        for start, end in rs:
            if start % PAGE_SIZE or end % PAGE_SIZE:
                raise ValueError(f"{what}: [{start:#x}, {end:#x}) is not page-aligned")
            first, last = page, page + (end - start) // PAGE_SIZE
            base = start - first * PAGE_SIZE  # the address buffer page 0 would have
            p = first
            while p < last:
                while zi < len(zero_runs) and zero_runs[zi][0] + zero_runs[zi][1] <= p:
                    zi += 1
                if zi < len(zero_runs) and zero_runs[zi][0] < last:
                    zero_start = max(zero_runs[zi][0], p)
                    zero_end = min(zero_runs[zi][0] + zero_runs[zi][1], last)
                    if zero_start > p:
                        self._store(view, base, p, zero_start, seq, pieces)
                    pieces.append((base + zero_start * PAGE_SIZE, base + zero_end * PAGE_SIZE, seq, _ZERO, 0))
                    self._pages_zero += zero_end - zero_start
                    p = zero_end
                else:
                    self._store(view, base, p, last, seq, pieces)
                    p = last
            page = last

    def _store(self, view: memoryview, vaddr: int, first: int, end: int, seq: int,
               pieces: list[_Piece] | None = None) -> None:
        """Copy data pages [first, end) of ``view`` into frames, one piece per frame touched
        (into ``pieces``: the process's pages by default)."""
        self._pages_stored += end - first
        self._pack(view, vaddr, first, end, seq, self._pieces if pieces is None else pieces)

    def _pack(self, view: memoryview, vaddr: int, first: int, end: int, seq: int, pieces: list[_Piece]) -> None:
        while first < end:
            used = len(self._frame) // PAGE_SIZE
            take = min(FRAME_PAGES - used, end - first)
            self._frame += view[first * PAGE_SIZE : (first + take) * PAGE_SIZE]
            start = vaddr + first * PAGE_SIZE
            frame = _HELD - len(self._held) if self._hold_max else self._sink.nframes
            pieces.append((start, start + take * PAGE_SIZE, seq, frame, used))
            first += take
            if len(self._frame) >= _FRAME_BYTES:
                self._flush_frame()

    def _flush_frame(self) -> None:
        if not self._frame:
            return
        frame, self._frame = self._frame, bytearray()
        if not self._hold_max:
            self._sink.submit(frame)
            return
        self._held.append(frame)
        self._held_bytes += len(frame)
        # Over the budget: write the oldest held frames as they are (their superseded
        # pages, if any, become dead bytes).
        while self._held_bytes > self._hold_max:
            oldest = self._held[self._held_first]
            assert isinstance(oldest, bytearray)
            self._held_bytes -= len(oldest)
            self._held[self._held_first] = self._sink.submit(oldest)
            self._held_first += 1

    # -- holding pages back (an incremental dump's running round) -------------

    def hold(self, max_bytes: int) -> None:
        """Keep the pages added from now on raw in memory (at most ``max_bytes`` of them;
        older ones beyond are written) until :meth:`end_hold`; at commit, write only those
        no later add superseded.  For pages copied while the target runs that the frozen
        round may copy again: each page is then stored once, in its final version."""
        self._check_open()
        if max_bytes <= 0:
            return
        self._flush_frame()   # a frame mixes no held and written pages
        self._hold_max = max_bytes

    def end_hold(self) -> None:
        """Stop holding: pages added from now on are compressed and written as they come."""
        if self._hold_max:
            self._flush_frame()   # the partial frame is a held one
            self._hold_max = 0

    def _release_held(self, indexes: list[list[_Piece]]) -> list[list[_Piece]]:
        """Write the held pages that ``indexes`` (resolved pieces: the process's, then each
        file object's) still point to, packed into new frames; return the indexes pointing
        at the written frames."""
        out: list[list[_Piece]] = []
        live = 0
        for resolved in indexes:
            pieces: list[_Piece] = []
            for piece in resolved:
                start, end, seq, frame, page_off = piece
                if frame > _HELD:
                    pieces.append(piece)
                    continue
                held = self._held[_HELD - frame]
                if isinstance(held, int):   # written as it was (over the budget)
                    pieces.append((start, end, seq, held, page_off))
                    continue
                npages = (end - start) // PAGE_SIZE
                self._pack(memoryview(held), start - page_off * PAGE_SIZE, page_off, page_off + npages, seq, pieces)
                live += npages
            out.append(pieces)
        self._pages_dropped += self._held_bytes // PAGE_SIZE - live
        self._held, self._held_bytes, self._held_first = [], 0, 0
        return out

    def add_zero_pages(self, zero: list[Range]) -> None:
        """Record page-aligned ranges as all-zero in this checkpoint (a later add wins)."""
        self._check_open()
        zero = ranges.normalize(zero)
        if any(s % PAGE_SIZE or e % PAGE_SIZE for s, e in zero):
            raise ValueError("add_zero_pages: ranges must be page-aligned")
        self._seq += 1
        self._pieces.extend((s, e, self._seq, _ZERO, 0) for s, e in zero)
        self._pages_zero += ranges.total(zero) // PAGE_SIZE

    # -- commit / abort ----------------------------------------------------

    def task_writer(self, pid: int, *, kind: str = "full", parent: int | None = None) -> CheckpointWriter:
        """A writer for the checkpoint of task ``pid`` of the tree this checkpoint records
        (``tasks/PID/`` in this one's staging dir).  Call its :meth:`stage`; it becomes
        visible with this writer's :meth:`commit`, every task at once, or never."""
        self._check_open()
        if self.tree_writer is not None:
            raise ImageError(f"checkpoint {self.id}: the writer of task {self.pid} cannot hold tasks")
        if pid == self.pid or pid in self._task_writers:
            raise ImageError(f"checkpoint {self.id}: task {pid} has a writer already")
        tasks = self.staging / TASKS_DIR
        if not tasks.is_dir():
            make_dir(tasks)
        writer = CheckpointWriter(self.image_dir, id=self.id, kind=kind, parent=parent, pid=pid,
                                  compression_level=self._level, workers=self._workers,
                                  staging=tasks / str(pid), tree_writer=self, durable=self.durable)
        self._task_writers[pid] = writer
        return writer

    def drop_task(self, pid: int) -> None:
        """Discard the checkpoint of task ``pid`` (it left the tree before the checkpoint)."""
        task = self._task_writers.pop(pid, None)
        if task is not None:
            task.abort()

    def stage(self, *, vmas: list[VmaRecord], present: list[Range], whole: list[Range], state: State,
              time: float | None = None) -> None:
        """Write a task's metadata into the tree's staging dir (see :meth:`task_writer`)."""
        if self.tree_writer is None:
            raise ImageError(f"checkpoint {self.id}: stage() is for a task's writer; commit() this one")
        self._write_meta(vmas=vmas, present=present, whole=whole, state=state, time=time)
        self._staged = True
        self._close()

    def commit(
        self,
        *,
        vmas: list[VmaRecord],
        present: list[Range],
        whole: list[Range],
        state: State,
        time: float | None = None,
    ) -> Checkpoint:
        """Write the metadata and make the checkpoint visible atomically; return it.

        A tree's checkpoint commits only with every live task of ``state.tree`` staged."""
        if self.tree_writer is not None:
            raise ImageError(f"checkpoint {self.id}: the writer of task {self.pid} is staged, not committed")
        self._write_meta(vmas=vmas, present=present, whole=whole, state=state, time=time)  # checks the tree
        live = {t.pid for t in state.tree[1:] if t.state != "zombie"}
        staged = {pid for pid, w in self._task_writers.items() if w._staged}
        if live != staged:
            missing = sorted(live - staged) or sorted(staged - live)
            raise ImageError(f"checkpoint {self.id}: the tree and the staged tasks differ (pid {missing[0]})")
        final = self.image_dir.path / f"{self.id:06d}"
        try:
            if final.exists():
                raise ImageError(f"checkpoint {self.id} already exists in {self.image_dir.path}")
            os.rename(self.staging, final)
        except OSError as err:
            raise write_error(f"checkpoint {self.id}: commit failed", err) from err
        # From here the checkpoint is visible: never remove it.
        self._close()
        try:
            if self.durable:
                fsync_dir(self.image_dir.path)
        except OSError as err:
            raise write_error(f"checkpoint {self.id}: fsync of {self.image_dir.path} failed", err) from err
        return self.image_dir.checkpoint(self.id)

    def _write_meta(self, *, vmas: list[VmaRecord], present: list[Range], whole: list[Range], state: State,
                    time: float | None) -> None:
        """Finish pages.ckpt and write meta.ckpt into the staging dir, both synced (when durable)."""
        self._check_open()
        vma_list = sorted(vmas, key=operator.attrgetter("start"))
        present_r = _aligned(present, "present")
        whole_r = _aligned(whole, "whole")
        _check_vmas(vma_list, present_r)
        if not isinstance(state, State):
            raise TypeError(f"state must be a schema.State, not {type(state).__name__}")
        self.end_hold()
        obj_ids = list(self._object_pieces)
        indexes = [_resolve(self._pieces), *(_resolve(self._object_pieces[i]) for i in obj_ids)]
        if self._held:
            indexes = self._release_held(indexes)
        self._flush_frame()
        extents, zero = _index(indexes[0])
        objects = {obj_id: _index(resolved) for obj_id, resolved in zip(obj_ids, indexes[1:])}
        frames = self._sink.finish()
        meta = Meta(
            id=self.id,
            parent=self.parent,
            kind=self.kind,
            time=_time.time() if time is None else time,
            pid=self.pid,
            vmas=tuple(vma_list),
            present=present_r,
            whole=whole_r,
            zero=zero,
            frames=frames,
            extents=extents,
            codec=self._codec,
            level=self._level,
            state=state,
            stats={
                "pages_added": self._pages_stored,
                "zero_pages_added": self._pages_zero,
                "pages_dropped": self._pages_dropped,
                "bytes_raw": self._sink.bytes_raw,
                "bytes_compressed": self._sink.bytes_compressed,
            },
            objects=objects,
        )
        blob = encode_meta(meta)
        try:
            assert self._fd is not None
            os.close(self._fd)
            self._fd = None
            fd = create_file(self.staging / META_NAME)
            try:
                write_all(fd, blob)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self.durable:
                fsync_dir(self.staging)
                if self._task_writers:
                    fsync_dir(self.staging / TASKS_DIR)
        except OSError as err:
            raise write_error(f"checkpoint {self.id}: commit failed", err) from err

    def abort(self) -> None:
        """Discard the checkpoint: stop the workers and remove the staging dir; idempotent.
        A tree's writer discards its tasks with it."""
        for task in self._task_writers.values():
            task.abort()
        if self._closed:
            return
        self._close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _close(self) -> None:
        self._closed = True
        self._sink.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._pieces = []
        self._object_pieces = {}
        self._frame = bytearray()
        self._held, self._held_bytes, self._hold_max = [], 0, 0
        if self.tree_writer is None:
            self.image_dir._writer_closed(self)

    def _check_open(self) -> None:
        if self._closed:
            raise ImageError(f"checkpoint {self.id}: the writer was already committed or aborted")


def _aligned(rs: list[Range], what: str) -> list[Range]:
    out = ranges.normalize(rs)
    if any(s % PAGE_SIZE or e % PAGE_SIZE or s < 0 for s, e in out):
        raise ValueError(f"commit: {what} ranges must be page-aligned")
    return out


def _check_vmas(vmas: list[VmaRecord], present: list[Range]) -> None:
    """Refuse what verify() would reject: overlapping VMAs, present pages outside every VMA."""
    for v in vmas:
        if not isinstance(v, VmaRecord):
            raise TypeError(f"commit: vmas must be VmaRecord, not {type(v).__name__}")
    for a, b in zip(vmas, vmas[1:]):
        if a.end > b.start:
            raise ValueError(f"commit: VMAs at {a.start:#x} and {b.start:#x} overlap")
    stray = ranges.subtract(present, ranges.normalize((v.start, v.end) for v in vmas))
    if stray:
        raise ValueError(f"commit: present pages at {stray[0][0]:#x} lie in no VMA")


def _resolve(pieces: list[_Piece]) -> list[_Piece]:
    """The pieces that hold the final version of each page (the last add wins), by address."""
    pieces = sorted(pieces, key=operator.itemgetter(0))  # stable: equal starts keep add order
    # Overlaps are rare (pages copied again in a later round): only clusters of
    # overlapping pieces go through the sweep, the rest pass straight through.
    resolved: list[_Piece] = []
    cluster: list[_Piece] = []
    reach = -1
    for piece in pieces:
        if piece[0] >= reach and cluster:
            resolved.extend(cluster if len(cluster) == 1 else _last_wins(cluster))
            cluster = []
        cluster.append(piece)
        reach = max(reach, piece[1]) if len(cluster) > 1 else piece[1]
    resolved.extend(cluster if len(cluster) <= 1 else _last_wins(cluster))
    return resolved


def _index(pieces: list[_Piece]) -> tuple[array, list[Range]]:
    """Resolved pieces (:func:`_resolve`) as an extents array and the zero ranges."""
    extents = array("Q")
    zero: list[Range] = []
    for start, end, _, frame, page_off in pieces:
        if frame == _ZERO:
            zero.append((start, end))
            continue
        npages = (end - start) // PAGE_SIZE
        n = len(extents)
        # Merge with the previous extent when both vaddr and frame position continue.
        if (
            n
            and extents[n - 2] == frame
            and extents[n - 4] + extents[n - 3] * PAGE_SIZE == start
            and extents[n - 1] + extents[n - 3] == page_off
        ):
            extents[n - 3] += npages
        else:
            extents.extend((start, npages, frame, page_off))
    return extents, ranges.normalize(zero)


def _last_wins(pieces: list[_Piece]) -> list[_Piece]:
    """Sweep over piece boundaries keeping, on each segment, the piece added last.

    O(n log n) in the number of pieces (a heap of the pieces covering the sweep
    position, keyed by add order; ended pieces are dropped lazily).
    """
    bounds = sorted({p[0] for p in pieces} | {p[1] for p in pieces})
    out: list[_Piece] = []
    heap: list[tuple[int, int, int]] = []  # (-seq, end, index into pieces)
    i, n = 0, len(pieces)
    for x, next_x in zip(bounds, bounds[1:]):
        while i < n and pieces[i][0] <= x:
            heapq.heappush(heap, (-pieces[i][2], pieces[i][1], i))
            i += 1
        while heap and heap[0][1] <= x:
            heapq.heappop(heap)
        if not heap:
            continue
        start, _, seq, frame, page_off = pieces[heap[0][2]]
        if frame != _ZERO:
            page_off += (x - start) // PAGE_SIZE
        # Segments of one piece split by other boundaries are re-joined by the
        # extent merge in _index (and normalize() for zero ranges).
        out.append((x, next_x, seq, frame, page_off))
    return out

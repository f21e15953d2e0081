"""Reading one committed checkpoint: chain resolution, memory content, verification.

Resolution of page p at checkpoint i (docs/FORMAT.md, "Resolution"):

* p not in present(i) -> backing content;
* else for j = i, parent(i), ...: p stored in j (data extent or zero) -> that
  content; elif p not in present(j) or p in whole(j) -> backing;
* past the root -> backing.

Backing content is the file object a VMA of checkpoint i maps (a memfd, a
deleted file: stored whole in checkpoint i), else the file of a file-private or
file-shared VMA, and zeros for every other kind.  All of it is computed with
range algebra over the requested ranges, clipped to the request (bisect), so a
small read of a large image costs O(log n) per chain link, not O(n), and
nothing loops per page.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt import ranges, trust
from ckpt.errors import CorruptImage, ImageError
from ckpt.image import schema
from ckpt.image.format import (
    FILE_KINDS,
    META_NAME,
    PAGE_SIZE,
    PAGES_NAME,
    Meta,
    VmaList,
    VmaRecord,
    decode_meta,
    ranges_of_extents,
)
from ckpt.image.frames import decode_frame, read_stored_frame
from ckpt.image.fsutil import read_file
from ckpt.ranges import Range
from ckpt.safepath import open_nofollow

if TYPE_CHECKING:
    from ckpt.image.imagedir import ImageDir

__all__ = ["Checkpoint", "Resolved"]

_CHUNK = 1 << 20  # largest piece iter_memory yields for zero and file-backed content
_ZERO_VIEW = memoryview(bytes(_CHUNK))


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where the content of ``[start, end)`` comes from at a given checkpoint."""

    start: int
    end: int
    # "data" (stored pages), "zero" (stored as zero), "backing" (file or zeros per the VMA),
    # "parent" (left to checkpoint ``until`` and its chain: resolve(until=...) only)
    source: str
    checkpoint: int | None  # id of the checkpoint holding the data/zero record (or ``until``); None for backing


class Checkpoint:
    """One committed checkpoint of an images directory (obtain it from :class:`ImageDir`)."""

    def __init__(self, image_dir: ImageDir, meta: Meta, ident: object, *, path: Path | None = None,
                 task: bool = False) -> None:
        self.image_dir = image_dir
        self.path: Path = image_dir.path / f"{meta.id:06d}" if path is None else path
        # A task's checkpoint: one live descendant of the tree checkpoint ``id`` (``tasks/PID/``).
        self.is_task = task
        self._depth = 4 if task else 2  # path components never followed as symlinks (safepath)
        self.id: int = meta.id
        self.parent: int | None = meta.parent
        self.kind: str = meta.kind
        self.time: float = meta.time
        self.pid: int = meta.pid
        self.state: schema.State = meta.state
        self.stats: dict[str, Any] = meta.stats
        self.present: list[Range] = meta.present
        self.whole: list[Range] = meta.whole
        self.zero: list[Range] = meta.zero
        self.meta = meta
        self._ident = ident  # distinguishes a re-created checkpoint with the same id in caches
        extents = meta.extents
        self._ext_starts = extents[0::4]  # for bisect: extents are sorted by vaddr
        self._stored: list[Range] | None = None
        self._vmas: list[VmaRecord] | None = None
        self._vma_ranges_cache: list[Range] | None = meta.vma_ranges
        self._vma_starts_cache: list[int] | None = None
        self._chain: list[Checkpoint] | None = None
        self._pages_path = self.path / PAGES_NAME   # made once: _slices runs per stored extent

    # The VMA records are made on first use (ckpt/image/format.py VmaList): a restore
    # needs those of the checkpoint it restores, not its ancestors'.
    @property
    def vmas(self) -> list[VmaRecord]:
        """The process's mappings at this checkpoint, sorted by address."""
        if self._vmas is None:
            self._vmas = list(self.meta.vmas)
        return self._vmas

    def _release_vmas(self) -> None:
        """An ancestor of a chain: its VMA records are not wanted, only its pages (VmaList)."""
        if self._vmas is None and isinstance(self.meta.vmas, VmaList):
            self.meta.vmas.release()

    @property
    def vma_ranges(self) -> list[Range]:
        """The address ranges the VMAs cover, merged (do not modify)."""
        return self._vma_ranges

    @property
    def _vma_ranges(self) -> list[Range]:
        if self._vma_ranges_cache is None:
            self._vma_ranges_cache = ranges.normalize((v.start, v.end) for v in self.vmas)
        return self._vma_ranges_cache

    @property
    def _vma_starts(self) -> list[int]:
        if self._vma_starts_cache is None:
            self._vma_starts_cache = [v.start for v in self.vmas]
        return self._vma_starts_cache

    def __repr__(self) -> str:
        task = f" task {self.pid}" if self.is_task else ""
        return f"<Checkpoint {self.id}{task} {self.kind} parent={self.parent} in {self.image_dir.path}>"

    @property
    def _where(self) -> str:
        return f"checkpoint {self.id} task {self.pid}" if self.is_task else f"checkpoint {self.id}"

    # -- the tree ----------------------------------------------------------

    @property
    def tree(self) -> tuple[schema.Task, ...]:
        """Every task of the dumped tree, root first, parents before children; empty for
        the checkpoint of one process (and for a task's own checkpoint)."""
        return self.state.tree

    def task(self, pid: int) -> Checkpoint:
        """The checkpoint of live task ``pid`` of this tree checkpoint (this one for the root);
        ImageError for a pid the tree does not list alive or stopped."""
        if pid == self.pid and not self.is_task:
            return self
        entry = next((t for t in self.tree if t.pid == pid), None)
        if entry is None or self.is_task:
            raise ImageError(f"checkpoint {self.id} has no task {pid}")
        if entry.state == "zombie":
            raise ImageError(f"checkpoint {self.id}: task {pid} is a zombie, it has no checkpoint of its own")
        return self.image_dir.task_checkpoint(self.id, pid)

    def tasks(self) -> list[Checkpoint]:
        """The checkpoints of every live task of the tree, in the tree's order ([self] for one process)."""
        if not self.tree:
            return [self]
        return [self.task(t.pid) for t in self.tree if t.state != "zombie"]

    # -- sizes -------------------------------------------------------------

    @property
    def stored(self) -> list[Range]:
        """Ranges whose data is stored in this checkpoint (derived from the extents)."""
        if self._stored is None:
            self._stored = ranges_of_extents(self.meta.extents)
        return self._stored

    @property
    def pages_present(self) -> int:
        """Pages the process had at this checkpoint."""
        return ranges.total(self.present) // PAGE_SIZE

    @property
    def pages_stored(self) -> int:
        """Data pages indexed by this checkpoint (final locations only)."""
        return ranges.total(self.stored) // PAGE_SIZE

    @property
    def pages_zero(self) -> int:
        """Pages recorded as all-zero by this checkpoint."""
        return ranges.total(self.zero) // PAGE_SIZE

    @property
    def bytes_raw(self) -> int:
        """Uncompressed bytes in pages.ckpt (including pages a later add overrode)."""
        return sum(self.meta.frames[2::4])

    @property
    def bytes_compressed(self) -> int:
        """Size of pages.ckpt."""
        return self.meta.pages_size

    def summary(self) -> dict[str, Any]:
        """Return a one-level dict describing this checkpoint (for ``ckpt list`` and logs); the
        page and byte counts of a tree's checkpoint are those of all its tasks."""
        tasks = self.tasks()
        return {
            "id": self.id,
            "parent": self.parent,
            "kind": self.kind,
            "time": self.time,
            "pid": self.pid,
            "processes": max(1, len(self.tree)),
            "pages_present": sum(t.pages_present for t in tasks),
            "pages_stored": sum(t.pages_stored for t in tasks),
            "pages_zero": sum(t.pages_zero for t in tasks),
            "bytes_raw": sum(t.bytes_raw for t in tasks),
            "bytes_compressed": sum(t.bytes_compressed for t in tasks),
            "vmas": sum(len(t.vmas) for t in tasks),
            "frames": sum(t.meta.nframes for t in tasks),
        }

    # -- chain -------------------------------------------------------------

    def chain(self) -> list[Checkpoint]:
        """Return the checkpoints from the root to this one; CorruptImage if a parent is missing."""
        if self._chain is None:
            links = [self]
            while links[-1].parent is not None:
                child = links[-1]
                parent_id = child.parent
                assert parent_id is not None
                if parent_id >= child.id:  # decode_meta refuses this too; keep the walk finite
                    raise CorruptImage(f"{child._where}: parent {parent_id} is not older")
                try:
                    parent = self.image_dir.checkpoint(parent_id)
                    link = parent.task(self.pid) if self.is_task else parent
                    links.append(link)
                    if link.meta.vmas is not self.meta.vmas:   # shared (VmaCache): this one's are wanted
                        link._release_vmas()
                except CorruptImage:
                    raise
                except ImageError:
                    raise CorruptImage(
                        f"{child._where}: parent checkpoint {parent_id} does not exist in {self.image_dir.path}"
                        + (f" or holds no task {self.pid}" if self.is_task else "")
                    ) from None
            links.reverse()
            self._chain = links
        return list(self._chain)

    # -- resolution --------------------------------------------------------

    def resolve(self, request: Iterable[Range], *, until: int | None = None) -> list[Resolved]:
        """Return, sorted by address, where the content of each part of ``request`` comes from.

        With ``until`` (the id of a checkpoint of this one's chain), the walk stops before
        that checkpoint: what it would have resolved there or further comes back with source
        ``"parent"`` and checkpoint ``until`` (the prune folds a chain down to a kept ancestor,
        ckpt/image/prune.py).  Raises ImageError if part of the request lies in no VMA of this
        checkpoint.
        """
        req = ranges.normalize(request)
        if not req:
            return []
        self._check_mapped(req)
        out: list[Resolved] = []
        lo, hi = req[0][0], req[-1][1]
        unresolved = ranges.intersect(req, ranges.clip(self.present, lo, hi))
        backing = ranges.subtract(req, unresolved)
        for link in reversed(self.chain()):
            if not unresolved:
                break
            if link.id == until:
                out.extend(Resolved(s, e, "parent", until) for s, e in unresolved)
                unresolved = []
                break
            lo, hi = unresolved[0][0], unresolved[-1][1]
            data = ranges.intersect(unresolved, ranges.clip(link.stored, lo, hi))
            zero = ranges.intersect(unresolved, ranges.clip(link.zero, lo, hi))
            out.extend(Resolved(s, e, "data", link.id) for s, e in data)
            out.extend(Resolved(s, e, "zero", link.id) for s, e in zero)
            unresolved = ranges.subtract(unresolved, ranges.union(data, zero))
            if not unresolved:
                break
            # Absent at that checkpoint, or its VMA was dumped whole there:
            # older checkpoints must not be consulted.
            lo, hi = unresolved[0][0], unresolved[-1][1]
            stop = ranges.union(
                ranges.subtract(unresolved, ranges.clip(link.present, lo, hi)),
                ranges.intersect(unresolved, ranges.clip(link.whole, lo, hi)),
            )
            backing = ranges.union(backing, stop)
            unresolved = ranges.subtract(unresolved, stop)
        backing = ranges.union(backing, unresolved)  # past the root
        out.extend(Resolved(s, e, "backing", None) for s, e in backing)
        out.sort(key=lambda r: r.start)
        return out

    def _check_mapped(self, req: list[Range]) -> None:
        unmapped = ranges.subtract(req, self._vma_ranges)
        if unmapped:
            raise ImageError(f"address {unmapped[0][0]:#x} is not mapped at {self._where}")

    def read_memory(self, address: int, length: int) -> bytes:
        """Return ``length`` bytes of the process's memory at ``address`` as of this checkpoint."""
        if address < 0 or length < 0:
            raise ValueError(f"read_memory({address:#x}, {length}): negative address or length")
        out = bytearray(length)
        for addr, view in self.iter_memory([(address, address + length)]):
            out[addr - address : addr - address + len(view)] = view
        return bytes(out)

    def iter_memory(self, request: Iterable[Range]) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(address, content)`` covering ``request`` in address order, in chunks of up to 1 MiB.

        Frames are decompressed one at a time (through the image dir's small
        LRU), so memory stays bounded whatever the size of the request, as long
        as the caller does not hoard the views: each one keeps its 1 MiB frame
        alive (views of stored data are read-only slices of the frame).
        """
        files = _BackingFiles(self)
        links = {link.id: link for link in self.chain()}
        try:
            for piece in self.resolve(request):
                if piece.source == "data":
                    assert piece.checkpoint is not None
                    yield from links[piece.checkpoint]._data(piece.start, piece.end)
                elif piece.source == "zero":
                    yield from _zeros(piece.start, piece.end)
                else:
                    yield from self._backing(piece.start, piece.end, files)
        finally:
            files.close()

    def _data(self, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
        """Yield stored data of this checkpoint for ``[start, end)`` (entirely inside ``stored``)."""
        for address, frame, offset, length in self.iter_stored(start, end):
            yield address, memoryview(frame)[offset : offset + length]

    def iter_stored(self, start: int, end: int) -> Iterator[tuple[int, bytes, int, int]]:
        """Yield ``(address, frame, offset, length)``: the stored data of this checkpoint
        for ``[start, end)`` (which must lie inside ``stored``) as slices of
        decompressed frames — for callers that hand buffers to the kernel."""
        return self._slices(self.meta.extents, self._ext_starts, start, end)

    def _slices(self, ext: array, starts: Sequence[int], start: int, end: int
                ) -> Iterator[tuple[int, bytes, int, int]]:
        """``(key, frame, offset, length)`` of extent-array ``ext`` (keys: addresses, or the
        file offsets of an object) over ``[start, end)``; ``starts`` is ``ext[0::4]``."""
        k = max(0, bisect_right(starts, start) - 1)
        cache = self.image_dir._frame_cache
        pages_path = self._pages_path
        while 4 * k < len(ext):
            vaddr, npages, frame, page_off = ext[4 * k : 4 * k + 4]
            if vaddr >= end:
                break
            ext_end = vaddr + npages * PAGE_SIZE
            if ext_end > start:
                s, e = max(start, vaddr), min(end, ext_end)
                raw = cache.get(self._ident, self.meta, pages_path, frame)
                yield s, raw, page_off * PAGE_SIZE + (s - vaddr), e - s
            k += 1

    # -- file objects (state["objects"]: memfds, files deleted while open) -----------

    def object_stored(self, obj_id: int) -> Iterator[tuple[int, bytes, int, int]]:
        """``(file offset, frame, offset, length)``: the stored data of file object ``obj_id``
        (stored whole in this checkpoint: no other checkpoint is read); ImageError if this
        checkpoint holds no content for it."""
        ext, _ = self._object_index(obj_id)
        if not len(ext):
            return iter(())
        return self._slices(ext, ext[0::4], 0, ext[-4] + ext[-3] * PAGE_SIZE)

    def object_zero(self, obj_id: int) -> list[Range]:
        """The file ranges of object ``obj_id`` that are data, all zero (not stored)."""
        return self._object_index(obj_id)[1]

    def _object_index(self, obj_id: int) -> tuple[array, list[Range]]:
        try:
            return self.meta.objects[obj_id]
        except KeyError:
            raise ImageError(f"{self._where} holds no content for file object {obj_id}") from None

    def iter_object(self, obj_id: int, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(file offset, content)`` covering ``[start, end)`` of object ``obj_id``:
        its stored data, zeros elsewhere (holes, zero pages, past its end)."""
        ext, _ = self._object_index(obj_id)
        pos = start
        for offset, frame, off, length in self._slices(ext, ext[0::4], start, end):
            yield from _zeros(pos, offset)
            yield offset, memoryview(frame)[off : off + length]
            pos = offset + length
        yield from _zeros(pos, end)

    def _backing(self, start: int, end: int, files: _BackingFiles) -> Iterator[tuple[int, memoryview]]:
        """Yield backing content for ``[start, end)``, VMA by VMA."""
        k = max(0, bisect_right(self._vma_starts, start) - 1)
        while k < len(self.vmas) and self.vmas[k].start < end:
            vma = self.vmas[k]
            s, e = max(start, vma.start), min(end, vma.end)
            k += 1
            if s >= e:
                continue
            if vma.object is not None:
                shift = vma.start - vma.offset
                for offset, view in self.iter_object(vma.object, vma.offset + (s - vma.start),
                                                     vma.offset + (e - vma.start)):
                    yield offset + shift, view
            elif vma.kind in FILE_KINDS and vma.path:
                yield from files.read(vma, s, e)
            else:
                yield from _zeros(s, e)

    # -- verification ------------------------------------------------------

    def verify(self, on_frame: Callable[[int], None] | None = None) -> None:
        """Check this checkpoint completely; raise CorruptImage (naming it and the offset) on a failure.

        ``on_frame(n)`` is called with the stored size of each frame checked (its
        tree's tasks' too), for progress.

        Checks the meta crc and structure, every frame's crc32, zstd checksum
        and raw length, that extents lie inside frames, that the parent chain
        exists, and that every present page is mapped by a VMA and resolvable.
        """
        pages_path = self.path / PAGES_NAME
        try:
            # Re-read: the file, not the cache.  Neither the checkpoint directory
            # nor its files may be symlinks (see ImageDir.checkpoint).
            decode_meta(read_file(self.path / META_NAME, depth=self._depth), self.id)
            fd = open_nofollow(pages_path, os.O_RDONLY, depth=self._depth)
        except FileNotFoundError as err:
            raise CorruptImage(f"{self._where}: {err.filename or pages_path} is missing") from None
        except OSError as err:
            raise CorruptImage(f"{self._where}: {err.filename} {err.strerror}") from err
        try:
            size = os.fstat(fd).st_size
            if size != self.meta.pages_size:
                state = "truncated" if size < self.meta.pages_size else "has trailing bytes"
                raise CorruptImage(
                    f"{self._where}: {PAGES_NAME} {state} at offset {size} "
                    f"(its frames end at offset {self.meta.pages_size})"
                )
            for index in range(self.meta.nframes):
                try:
                    stored = read_stored_frame(fd, self.meta, index)
                    decode_frame(stored, self.meta, index)
                    if on_frame is not None:
                        on_frame(len(stored))
                except CorruptImage as err:
                    if not self.is_task:
                        raise
                    raise CorruptImage(f"task {self.pid} of {err}") from None   # the frame names the id only
        finally:
            os.close(fd)
        self.chain()
        for task in self.tasks()[1:]:
            task.verify(on_frame)
        stray = ranges.subtract(self.present, self._vma_ranges)
        if stray:
            raise CorruptImage(f"{self._where}: present page {stray[0][0]:#x} lies in no VMA")
        for piece in self.resolve(self.present):
            if piece.source != "backing":
                continue
            for vma in self._vmas_in(piece.start, piece.end):
                if vma.kind in FILE_KINDS and not vma.path and vma.object is None:
                    raise CorruptImage(
                        f"{self._where}: page {max(piece.start, vma.start):#x} is backed by "
                        f"a {vma.kind} VMA without a path"
                    )

    def _vmas_in(self, start: int, end: int) -> list[VmaRecord]:
        k = max(0, bisect_right(self._vma_starts, start) - 1)
        out = []
        while k < len(self.vmas) and self.vmas[k].start < end:
            if self.vmas[k].end > start:
                out.append(self.vmas[k])
            k += 1
        return out


def _zeros(start: int, end: int) -> Iterator[tuple[int, memoryview]]:
    for s in range(start, end, _CHUNK):
        yield s, _ZERO_VIEW[: min(_CHUNK, end - s)]


class _BackingFiles:
    """Files of file-backed VMAs opened during one iter_memory call, identity-checked once each.

    Each is opened as the dump saw it (ckpt/trust.py): no symlink followed, the
    opened file must have the recorded device and inode (and mount, on the same
    boot), and for images not owned by root it is opened with the filesystem
    identity of the images' owner — so that an edited image cannot make
    ``read_memory`` return the bytes of a file its owner may not read.
    """

    def __init__(self, ckpt: Checkpoint) -> None:
        self._ckpt = ckpt
        self._fds: dict[tuple[str, int, int], int] = {}
        self._principal: trust.Principal | None = None

    def _open(self, vma: VmaRecord) -> int:
        where = f"checkpoint {self._ckpt.id}: mapped file {vma.path}"
        expected = trust.vma_identity(vma)
        if expected is None:
            raise ImageError(f"{where} has no recorded identity (device and inode)")
        key = (vma.path, expected.dev, expected.ino)
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        if self._principal is None:
            self._principal = trust.checkpoint_principal(self._ckpt)
        process = self._ckpt.state.process
        same_boot = process is not None and process.boot_id == trust.boot_id()
        with trust.acting_as(self._principal.fs_identity()):
            fd = trust.open_verified(vma.path, os.O_RDONLY, expected, where, same_boot=same_boot)
        st = os.fstat(fd)
        if (vma.file_size is not None and st.st_size != vma.file_size) or (
            vma.file_mtime_ns is not None and st.st_mtime_ns != vma.file_mtime_ns
        ):
            os.close(fd)
            raise ImageError(
                f"{where} changed since the dump (size {vma.file_size} -> {st.st_size}, "
                f"mtime_ns {vma.file_mtime_ns} -> {st.st_mtime_ns})"
            )
        self._fds[key] = fd
        return fd

    def read(self, vma: VmaRecord, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
        """Yield the file content mapped at ``[start, end)``; zeros beyond end of file."""
        fd = self._open(vma)
        for s in range(start, end, _CHUNK):
            n = min(_CHUNK, end - s)
            data = os.pread(fd, n, vma.offset + (s - vma.start))
            if len(data) < n:
                data += bytes(n - len(data))
            yield s, memoryview(data)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

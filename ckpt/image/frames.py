"""Page-data frames: compressing them into ``pages.ckpt`` and reading them back.

A frame is up to FRAME_PAGES pages of raw data, stored as one independent zstd
frame (content size in the header, content checksum on) or, at compression
level 0, as the raw bytes themselves.  Either way the metadata records the
crc32 of the stored bytes, so a frame is checked before it is decompressed
(and zstd checks its own xxhash of the content after).

Writing: zstd releases the GIL, so frames are compressed on a
small thread pool while the caller keeps copying pages; at most ``2 * workers``
frames are in flight (about 4 MiB of raw + compressed data per worker) and they
are written strictly in submission order, so frame offsets are known when each
write happens.

Past its first DIRECT_AFTER bytes, a sink writes with ``O_DIRECT`` (:class:`DirectWriter`):
the stored frames are gathered into two aligned buffers that a writer thread
hands to the disk in turn, without passing through the page cache.  Measured on
this project's VM (a full dump of 1 GiB, half random, a quarter text, a quarter
zeros, alternated runs): buffered writes made the dump take 2.9-5.4 s with zstd-1
and 7-8 s uncompressed, O_DIRECT 1.0-1.8 s and 1.0-1.2 s.  A buffered write copies
every byte into page-cache pages freshly taken from the free lists, and on a VM
whose free memory goes back to the host each such page costs a fault in the host
(the profile shows 70 % of the dump in ``copy_folio_from_iter_atomic``); O_DIRECT
copies nothing in the guest and reuses the same two buffers.  It is for durable
sinks only: their bytes must reach the disk before the commit anyway (O_DIRECT
writes ran at 1.3-1.7 GB/s here, whatever the queue depth), whereas a sink that
is not durable (``ckpt dump --no-fsync``) need not wait for the disk at all and
leaves its pages to the kernel's writeback, as CRIU does (uncompressed, 1 GiB:
0.50-0.94 s buffered against 0.87-1.02 s O_DIRECT, alternated).  Small files (an
incremental's few pages) stay buffered: the buffers would cost more than they
save.  A file system that refuses O_DIRECT (EINVAL) gets buffered writes instead.

Buffered writes of a durable sink start the writeback of every WRITEBACK_BYTES
(``sync_file_range``), so the disk works while the dump goes on and the final
``fsync`` waits only for the last few.  A sink that is not durable never syncs.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import mmap
import os
import threading
import zlib
from array import array
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ckpt.errors import CorruptImage, write_error
from ckpt.image.format import CODEC_NONE, PAGES_NAME, Meta
from ckpt.image.fsutil import start_writeback, write_all
from ckpt.safepath import open_nofollow

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["FrameSink", "DirectWriter", "FrameCache", "read_stored_frame", "decode_frame"]

# Bytes written between two starts of writeback of a buffered sink.  Measured on this
# project's VM (512 MiB, write + fsync, 6 runs alternated): 0.18-0.26 s with a start every
# 8 MiB, 0.33-0.42 s with the fsync alone (which then writes it all).
WRITEBACK_BYTES = 8 << 20
# A sink writes its first DIRECT_AFTER bytes buffered, the rest with O_DIRECT (DirectWriter).
DIRECT_AFTER = 8 << 20

_local = threading.local()  # one ZstdCompressor per worker thread: they are not thread-safe


def _zstd() -> ModuleType:
    # Imported lazily: `ckpt --help` must not pay for the C extension.
    import zstandard

    return zstandard


def _compress(raw: bytearray, codec: str, level: int) -> tuple[bytes | bytearray, int]:
    """Return the stored form of one frame and its crc32 (runs on a worker thread)."""
    if codec == CODEC_NONE:
        stored: bytes | bytearray = raw
    else:
        compressor = getattr(_local, "compressor", None)
        if compressor is None or _local.level != level:
            zstd = _zstd()
            compressor = zstd.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
            _local.compressor, _local.level = compressor, level
        stored = compressor.compress(raw)
    return stored, zlib.crc32(stored)  # zlib releases the GIL on large buffers too


class DirectWriter:
    """Append bytes to a file with ``O_DIRECT`` from two aligned buffers, on a writer thread.

    :meth:`add` copies into the current buffer; a full one is handed to the writer thread
    and the other one is filled meanwhile (waiting first for its previous write).
    :meth:`finish` writes the last, partial buffer padded to :data:`ALIGN`, then cuts the
    file to its true length.  The file offset where this starts need not be aligned: the
    caller gives the bytes of its last partial block (``head``), which go first into the
    first buffer, and that block is written again, whole (open(2), "O_DIRECT": offsets, lengths and the buffer address
    must be multiples of the logical block size; 4096 covers every common device).  Should
    the file system refuse an O_DIRECT write after all (EINVAL), O_DIRECT is turned off on
    the fd and the same write made buffered.
    """

    ALIGN = 4096
    BUFFER = 4 << 20
    # Buffers, one being filled while the others are written.  Two: 8 MiB buffers or a
    # depth of 3-4 measured no faster here (1 GiB dumps, noise larger than any difference).
    DEPTH = 2

    def __init__(self, fd: int, offset: int, head: bytes) -> None:
        from ckpt import workers as worker_threads  # lazily, as FrameSink's pool

        self._fd = fd
        self._file_offset = offset - offset % self.ALIGN   # where the current buffer goes
        self._fill = offset % self.ALIGN
        if len(head) < self._fill:
            raise ValueError(f"DirectWriter at offset {offset}: {len(head)} bytes of its block given")
        head = head[len(head) - self._fill :]
        self._buffers = [mmap.mmap(-1, self.BUFFER) for _ in range(self.DEPTH)]
        self._views = [memoryview(b) for b in self._buffers]
        self._views[0][: self._fill] = head
        self._writes: list[Future[None] | None] = [None] * self.DEPTH
        self._current = 0
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        self._pool = worker_threads.pool(self.DEPTH - 1, "ckpt-write")

    @staticmethod
    def supported(fd: int) -> bool:
        """Whether ``fd``'s file system takes O_DIRECT at all (fcntl refuses it with EINVAL
        where ``a_ops->direct_IO`` is missing: fs/fcntl.c ``setfl``)."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:
            return False
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return True

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (copied: the caller may reuse it at once)."""
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), self.BUFFER - self._fill)
            self._views[self._current][self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self.BUFFER:
                self._ship(self.BUFFER)

    def _ship(self, length: int) -> None:
        """Hand the first ``length`` bytes of the current buffer to the writer thread; switch."""
        buffer = self._views[self._current][:length]
        self._writes[self._current] = self._pool.submit(_pwrite_direct, self._fd, buffer, self._file_offset)
        self._file_offset += length
        self._current = (self._current + 1) % self.DEPTH
        self._fill = 0
        self._wait(self._current)

    def _wait(self, index: int) -> None:
        write, self._writes[index] = self._writes[index], None
        if write is not None:
            write.result()

    def finish(self) -> None:
        """Write what is left and set the file's length to the bytes added."""
        end = self._file_offset + self._fill
        try:
            if self._fill:
                padded = -(-self._fill // self.ALIGN) * self.ALIGN
                self._views[self._current][self._fill : padded] = bytes(padded - self._fill)
                self._ship(padded)
        finally:
            self.close()
        os.ftruncate(self._fd, end)

    def close(self) -> None:
        """Wait for the writes under way (they read the buffers), then free the buffers; idempotent."""
        try:
            for index in range(len(self._writes)):
                self._wait(index)
        finally:
            if self._buffers:
                self._pool.shutdown(wait=True)
                for view in self._views:
                    view.release()
                for buffer in self._buffers:
                    try:
                        buffer.close()
                    except BufferError:
                        pass   # a slice handed to the writer thread is not freed yet: the GC will
                self._views, self._buffers = [], []


def _pwrite_direct(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` at ``offset`` (on the writer thread)."""
    with view:
        while view:
            try:
                n = os.pwrite(fd, view, offset)
            except OSError as err:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                if err.errno != errno.EINVAL or not flags & os.O_DIRECT:
                    raise
                # The file system's alignment is not ours after all: go on buffered.
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                continue
            view = view[n:]
            offset += n


class FrameSink:
    """Compress frames (in a thread pool) and append them, in order, to an open ``pages.ckpt``.

    Writes happen on the caller's thread, oldest frame first, whenever
    ``2 * workers`` frames are in flight (past DIRECT_AFTER bytes, with ``direct``, they
    are handed to a :class:`DirectWriter`).  (Writing from the workers instead, each
    waiting for the previous frame, measured no faster on a 2-CPU host; nor did 8 frames
    in flight per worker.)  ``direct=False`` keeps every write buffered.
    """

    def __init__(self, fd: int, *, codec: str, level: int, workers: int, ckpt_id: int, path: Path,
                 durable: bool = True, direct: bool = True) -> None:
        self._fd = fd
        self._durable = durable
        self._writeback_from = 0  # file offset where the next start of writeback begins
        self._direct: DirectWriter | None = None
        self._may_go_direct = direct
        self._tail = b""   # the last bytes written (up to DirectWriter.ALIGN), while buffered
        self._codec = codec
        self._level = level
        self._ckpt_id = ckpt_id
        self._path = path
        self._pool: ThreadPoolExecutor | None = None
        if workers:
            from ckpt import workers as worker_threads  # lazily: keeps `import ckpt.image` cheap

            self._pool = worker_threads.pool(workers, "ckpt-zstd")
        self._max_in_flight = max(1, 2 * workers)
        self._pending: collections.deque[tuple[Future[tuple[bytes | bytearray, int]], int]] = collections.deque()
        self.frames = array("Q")  # written frames: offset, stored length, raw length, crc32
        self.nframes = 0  # frames submitted (indices are assigned at submission)
        self.bytes_raw = 0
        self.bytes_compressed = 0  # written so far
        self._offset = 0

    def submit(self, raw: bytearray) -> int:
        """Queue one frame (the sink takes ownership of ``raw``) and return its index."""
        while len(self._pending) >= self._max_in_flight:
            self._write_oldest()
        if self._pool is None:
            from concurrent.futures import Future

            done: Future[tuple[bytes | bytearray, int]] = Future()
            done.set_result(_compress(raw, self._codec, self._level))
            self._pending.append((done, len(raw)))
        else:
            self._pending.append((self._pool.submit(_compress, raw, self._codec, self._level), len(raw)))
        self.bytes_raw += len(raw)
        self.nframes += 1
        return self.nframes - 1

    def _write_oldest(self) -> None:
        future, raw_len = self._pending.popleft()
        stored, crc = future.result()
        try:
            if self._direct is not None:
                self._direct.add(stored)
            else:
                write_all(self._fd, stored)
                self._after_buffered_write(stored)
        except OSError as err:
            raise write_error(f"checkpoint {self._ckpt_id}: writing {self._path} at offset {self._offset}",
                              err) from err
        self.frames.extend((self._offset, len(stored), raw_len, crc))
        self._offset += len(stored)
        self.bytes_compressed += len(stored)

    def _after_buffered_write(self, stored: bytes | bytearray) -> None:
        """Start writeback (durable), and switch to O_DIRECT past DIRECT_AFTER bytes."""
        end = self._offset + len(stored)
        if self._may_go_direct:
            align = DirectWriter.ALIGN
            self._tail = bytes(stored[-align:]) if len(stored) >= align else (self._tail + bytes(stored))[-align:]
        if self._durable and end - self._writeback_from >= WRITEBACK_BYTES:
            start_writeback(self._fd, self._writeback_from, end - self._writeback_from)
            self._writeback_from = end
        if self._may_go_direct and end >= DIRECT_AFTER:
            self._may_go_direct = False
            if DirectWriter.supported(self._fd):
                self._direct = DirectWriter(self._fd, end, self._tail)

    def finish(self) -> array:
        """Write every pending frame, fsync the file (when durable), and return the frames array."""
        while self._pending:
            self._write_oldest()
        if self._direct is not None:
            direct, self._direct = self._direct, None
            try:
                direct.finish()
            except OSError as err:
                raise write_error(f"checkpoint {self._ckpt_id}: writing {self._path}", err) from err
        if self._durable:
            try:
                os.fsync(self._fd)
            except OSError as err:
                raise write_error(f"checkpoint {self._ckpt_id}: fsync {self._path}", err) from err
        self.close()
        return self.frames

    def close(self) -> None:
        """Drop pending frames and stop the workers; idempotent."""
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._direct is not None:
            direct, self._direct = self._direct, None
            try:
                direct.close()
            except OSError:
                pass   # the checkpoint is being dropped: its write error no longer matters


def read_stored_frame(fd: int, meta: Meta, index: int) -> bytes:
    """Read frame ``index`` of ``meta``'s pages.ckpt from ``fd`` and check its crc32."""
    offset, stored_len, _, crc = meta.frames[4 * index : 4 * index + 4]
    stored = os.pread(fd, stored_len, offset)
    if len(stored) != stored_len:
        raise CorruptImage(
            f"checkpoint {meta.id}: {PAGES_NAME} truncated at offset {offset + len(stored)} "
            f"(frame {index} spans offsets {offset}..{offset + stored_len})"
        )
    if zlib.crc32(stored) != crc:
        raise CorruptImage(f"checkpoint {meta.id}: {PAGES_NAME} frame {index} at offset {offset}: crc32 mismatch")
    return stored


def decode_frame(stored: bytes, meta: Meta, index: int) -> bytes:
    """Decompress a crc-checked frame and check its length and zstd content checksum."""
    offset, _, raw_len, _ = meta.frames[4 * index : 4 * index + 4]
    if meta.codec == CODEC_NONE:
        raw = stored
    else:
        zstd = _zstd()
        try:
            params = zstd.get_frame_parameters(stored)
            if params.content_size != raw_len or not params.has_checksum:
                raise CorruptImage(
                    f"checkpoint {meta.id}: {PAGES_NAME} frame {index} at offset {offset}: zstd header "
                    f"says {params.content_size} bytes (checksum {params.has_checksum}), expected {raw_len}"
                )
            # One decompression context per thread: creating one per frame costs
            # more than decompressing an incompressible frame.
            decompressor = getattr(_local_zstd, "decompressor", None)
            if decompressor is None:
                decompressor = _local_zstd.decompressor = zstd.ZstdDecompressor()
            raw = decompressor.decompress(stored, max_output_size=raw_len)
        except zstd.ZstdError as err:
            raise CorruptImage(f"checkpoint {meta.id}: {PAGES_NAME} frame {index} at offset {offset}: {err}") from err
    if len(raw) != raw_len:
        raise CorruptImage(
            f"checkpoint {meta.id}: {PAGES_NAME} frame {index} at offset {offset}: "
            f"{len(raw)} bytes of pages, expected {raw_len}"
        )
    return raw


class FrameCache:
    """A small LRU of decompressed frames, so that reading a region frame by frame is linear.

    Reading is usually sequential (restore walks the address space, and a
    checkpoint's frames follow it): after two consecutive frames of one
    checkpoint, the next ``READ_AHEAD`` are read and decompressed on two worker
    threads while the caller consumes the current one (pread, crc32 and zstd
    all release the GIL).
    """

    READ_AHEAD = 4

    def __init__(self, capacity: int = 8) -> None:
        self._capacity = max(capacity, 2 * self.READ_AHEAD)
        self._frames: collections.OrderedDict[tuple[object, int], bytes] = collections.OrderedDict()
        self._pending: dict[tuple[object, int], Future[bytes]] = {}
        self._last: dict[object, int] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self, key: object, meta: Meta, pages_path: Path, index: int) -> bytes:
        """Return decompressed frame ``index`` of the checkpoint identified by ``key``."""
        with self._lock:
            raw = self._frames.get((key, index))
            if raw is not None:
                self._frames.move_to_end((key, index))
                return raw
            future = self._pending.pop((key, index), None)
            sequential = self._last.get(key) == index - 1
            self._last[key] = index
        raw = future.result() if future is not None else _load_frame(meta, pages_path, index)
        with self._lock:
            self._store((key, index), raw)
            if sequential:
                self._read_ahead(key, meta, pages_path, index)
        return raw

    def _store(self, slot: tuple[object, int], raw: bytes) -> None:
        self._frames[slot] = raw
        while len(self._frames) > self._capacity:
            self._frames.popitem(last=False)

    def _read_ahead(self, key: object, meta: Meta, pages_path: Path, index: int) -> None:
        if self._pool is None:
            from ckpt import workers as worker_threads

            self._pool = worker_threads.pool(2, "ckpt-read")
        for ahead in range(index + 1, min(index + 1 + self.READ_AHEAD, meta.nframes)):
            slot = (key, ahead)
            if slot not in self._frames and slot not in self._pending:
                self._pending[slot] = self._pool.submit(_load_frame, meta, pages_path, ahead)

    def close(self) -> None:
        """Stop the read-ahead workers (frames read so far stay cached)."""
        with self._lock:
            pool, self._pool = self._pool, None
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_local_zstd = threading.local()


def _load_frame(meta: Meta, pages_path: Path, index: int) -> bytes:
    """Read, check and decompress one frame (safe to run on a worker thread)."""
    try:
        fd = open_nofollow(pages_path, os.O_RDONLY, depth=2)  # NNNNNN/pages.ckpt: no symlink
    except FileNotFoundError:
        raise CorruptImage(f"checkpoint {meta.id}: {pages_path} is missing") from None
    except OSError as err:
        raise CorruptImage(f"checkpoint {meta.id}: {pages_path} {err.strerror}") from err
    try:
        return decode_frame(read_stored_frame(fd, meta, index), meta, index)
    finally:
        os.close(fd)

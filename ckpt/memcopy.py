"""Copy sets of target pages into local buffers, in batches.

Three ways to read a page, chosen per range by the caller (ckpt/tracker.py):

* ``process_vm_readv`` (1024 iovecs a call), the fast path.  It pins the pages
  it reads, which unshares anonymous pages that may be COW-shared (mm/gup.c
  ``gup_must_unshare``), so it is kept for pages known to be exclusive.
* ``/proc/PID/mem`` (one ``preadv`` per contiguous range): no pin, so nothing
  is unshared, and FOLL_FORCE reads PROT_NONE and read-only mappings alike
  (fs/proc/base.c ``mem_rw``).  Used for ``via_mem`` ranges and for anything
  process_vm_readv fails on.
* the shared object behind a shared mapping (ckpt/shmem.py), ``pread``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from . import ranges
from ._sys import vm
from .ranges import Range
from .shmem import SharedObject


@dataclass
class Chunk:
    """Copied pages: ``ranges`` laid back to back in ``data``."""

    ranges: list[Range]
    data: bytearray | memoryview

    def pieces(self) -> Iterator[tuple[int, memoryview]]:
        """``(address, bytes)`` for each range, as views into ``data``."""
        view = memoryview(self.data)
        pos = 0
        for start, end in self.ranges:
            yield start, view[pos : pos + end - start]
            pos += end - start


def split(rs: Sequence[Range], max_bytes: int) -> Iterator[list[Range]]:
    """Cut a range list into consecutive pieces of at most ``max_bytes`` each."""
    batch: list[Range] = []
    size = 0
    for start, end in rs:
        while start < end:
            take = min(end - start, max_bytes - size)
            batch.append((start, start + take))
            size += take
            start += take
            if size >= max_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


class MemoryReader:
    """Reads pages of one target; keep one per dump (it holds /proc/PID/mem open)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        # One buffer reused for every batch: fresh memory costs a page fault per
        # page (and more on this VM, whose freed memory returns to the host).
        self._buffer = bytearray()

    def close(self) -> None:
        if self.mem_fd >= 0:
            os.close(self.mem_fd)
            self.mem_fd = -1

    def reserve(self, nbytes: int) -> None:
        """Make the reused buffer at least ``nbytes`` long and touch every page of
        it now, so that a copy in the frozen window takes no page faults."""
        if len(self._buffer) < nbytes:
            self._buffer = bytearray(nbytes)  # zero-filled: every page written once

    def read(self, rs: list[Range], via_mem: Sequence[Range] = (),
             objects: Sequence[SharedObject] = ()) -> tuple[Chunk, list[Range]]:
        """Copy ``rs``; returns the chunk and the ranges that could not be read at all.

        Pages inside one of ``objects`` are read from that object, pages inside
        ``via_mem`` through /proc/PID/mem, the rest with process_vm_readv (see
        the module docstring).  Content of failed ranges in the chunk is
        undefined: callers drop them.  The chunk's data lives in a buffer the
        next ``read`` reuses: consume it first.
        """
        total = ranges.total(rs)
        if len(self._buffer) < total:
            self._buffer = bytearray(total)
        data = memoryview(self._buffer)[:total]
        offsets = []
        pos = 0
        for start, end in rs:
            offsets.append(pos)
            pos += end - start
        lost: list[Range] = []
        from_objects: list[Range] = []
        for obj in objects:
            for start, end in ranges.clip(rs, obj.start, obj.end):
                off = _offset_of(rs, offsets, start)
                try:
                    obj.read(start, end, data[off:off + end - start])
                except OSError:
                    lost.append((start, end))
                from_objects.append((start, end))
        slow = ranges.intersect(rs, ranges.normalize(via_mem)) if via_mem else []
        if from_objects:
            from_objects = ranges.normalize(from_objects)
            slow = ranges.subtract(slow, from_objects)
        fast = ranges.subtract(rs, ranges.union(slow, from_objects)) if slow or from_objects else rs
        failed: list[Range] = []
        if fast:
            # process_vm_readv writes ranges back to back, so a subset of rs needs
            # its own buffer positions: read it range-group by range-group.
            if fast is rs:
                failed = vm.read_ranges(self.pid, fast, data, 0)
            else:
                failed = self._read_subset(fast, rs, offsets, data)
        for start, end in ranges.union(slow, ranges.normalize(failed)):
            try:
                vm.read_mem(self.mem_fd, start, end, data, _offset_of(rs, offsets, start))
            except OSError:
                lost.append((start, end))
        return Chunk(rs, data), ranges.normalize(lost)

    def _read_subset(self, subset: list[Range], rs: list[Range], offsets: list[int],
                     data: memoryview) -> list[Range]:
        failed: list[Range] = []
        # Group consecutive subset ranges that are also consecutive in the buffer.
        group: list[Range] = []
        group_off = 0
        expected = -1
        for start, end in subset:
            off = _offset_of(rs, offsets, start)
            if group and off != expected:
                failed += vm.read_ranges(self.pid, group, data, group_off)
                group = []
            if not group:
                group_off = off
            group.append((start, end))
            expected = off + end - start
        if group:
            failed += vm.read_ranges(self.pid, group, data, group_off)
        return failed


def _offset_of(rs: list[Range], offsets: list[int], address: int) -> int:
    """Buffer offset of ``address`` in a chunk laid out from ``rs``."""
    i = bisect.bisect_right(rs, (address, 1 << 64)) - 1
    start, end = rs[i]
    assert start <= address < end, (hex(address), rs[i])
    return offsets[i] + address - start

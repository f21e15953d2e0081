"""The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (fs/proc/task_mmu.c, Linux 6.7+).

One call walks a virtual range under the mmap read lock, reports runs of pages
whose categories match, and with ``PM_SCAN_WP_MATCHING`` write-protects the
matched pages in the same walk: that is how ckpt collects "written since the
last checkpoint" and re-arms in one step.  Results are decoded from a flat
``array('Q')`` (three u64 per ``struct page_region``), far cheaper than a
ctypes struct array.
"""

from __future__ import annotations

import enum
import fcntl
import functools
import os
import struct
from array import array
from collections.abc import Iterator
from typing import Final


PAGEMAP_SCAN: Final = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)

PM_SCAN_WP_MATCHING: Final = 1 << 0
PM_SCAN_CHECK_WPASYNC: Final = 1 << 1


class PageCategory(enum.IntFlag):
    """``PAGE_IS_*`` categories of include/uapi/linux/fs.h."""

    WPALLOWED = 1 << 0
    WRITTEN = 1 << 1
    FILE = 1 << 2
    PRESENT = 1 << 3
    SWAPPED = 1 << 4
    PFNZERO = 1 << 5
    HUGE = 1 << 6
    SOFT_DIRTY = 1 << 7   # 6.8+
    GUARD = 1 << 8        # 6.15+


# struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len,
# max_pages, category_inverted, category_mask, category_anyof_mask, return_mask
_ARG = struct.Struct("=12Q")
assert _ARG.size == 96
PAGE_REGION_SIZE: Final = 24  # struct page_region { u64 start, end, categories; }

DEFAULT_VEC_LEN: Final = 8192


class PagemapScanner:
    """PAGEMAP_SCAN calls on one process's pagemap file, reusing one result vector."""

    def __init__(self, pid: int, vec_len: int = DEFAULT_VEC_LEN) -> None:
        # O_RDONLY suffices even for WP_MATCHING: the ioctl checks nothing
        # beyond the PTRACE_MODE_READ done at open (proc_mem_open).
        self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self.pid = pid
        self._vec = array("Q", bytes(vec_len * PAGE_REGION_SIZE))
        self._vec_len = vec_len
        self._vec_addr = self._vec.buffer_info()[0]
        self._used = 0   # leading slots of the vector a call may have written since it was cleared

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PagemapScanner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, start: int, end: int, *, flags: int = 0, mask: int = 0, anyof: int = 0,
             inverted: int = 0, return_mask: int = 0, max_pages: int = 0,
             vec: bool = True) -> tuple[int, int]:
        """One raw ioctl; returns (regions written into the vector, walk_end)."""
        buf = bytearray(_ARG.pack(96, flags, start, end, 0,
                                  self._vec_addr if vec else 0, self._vec_len if vec else 0,
                                  max_pages, inverted, mask, anyof, return_mask))
        if vec:
            self._used = self._vec_len   # until the call returns how many it wrote
        n = fcntl.ioctl(self.fd, PAGEMAP_SCAN, buf, True)
        if vec:
            self._used = n
        return n, _ARG.unpack_from(buf)[4]

    def _calls(self, start: int, end: int, **kwargs: int) -> Iterator[int]:
        """Issue the calls covering ``[start, end)``; yield the region count of each
        (the regions are in the vector until the next call).

        Follows ``walk_end`` with the 6.18 workaround from KERNEL-FACTS.md F:
        after a call that filled more than the kernel's 512-region bounce
        buffer, ``walk_end`` can be stale (behind regions already reported), so
        resume at ``max(walk_end, end of last region)`` and stop as soon as a
        call returns fewer regions than the vector holds.
        """
        vec = self._vec
        pos = start
        while pos < end:
            n, walk_end = self.call(pos, end, **kwargs)
            yield n
            if n < self._vec_len or walk_end >= end:
                return
            pos = max(walk_end, vec[3 * n - 2])

    def scan(self, start: int, end: int, *, flags: int = 0, mask: int = 0, anyof: int = 0,
             inverted: int = 0, return_mask: int = 0) -> Iterator[tuple[int, int, int]]:
        """Yield ``(start, end, categories)`` for every matching run in ``[start, end)``."""
        vec = self._vec
        for n in self._calls(start, end, flags=flags, mask=mask, anyof=anyof,
                             inverted=inverted, return_mask=return_mask):
            for i in range(0, 3 * n, 3):
                yield vec[i], vec[i + 1], vec[i + 2]

    def ranges(self, start: int, end: int, **kwargs: int) -> list[tuple[int, int]]:
        """Like :meth:`scan`, as a sorted list of ``(start, end)`` with touching runs merged.

        Decoded with slicing and zip (C speed): this runs in the frozen window
        over thousands of regions."""
        vec = self._vec
        out: list[tuple[int, int]] = []
        for n in self._calls(start, end, **kwargs):
            if not n:
                continue
            pairs = list(zip(vec[0 : 3 * n : 3], vec[1 : 3 * n : 3]))
            if out and out[-1][1] >= pairs[0][0]:
                out[-1] = (out[-1][0], max(out[-1][1], pairs[0][1]))
                del pairs[0]
            out.extend(pairs)
        # Runs with different categories can touch each other; merge those.  With
        # a single category returned, the kernel has merged every touching run
        # already (pagemap_scan_push_range), and the check is skipped.
        single = kwargs.get("return_mask", 0)
        if single & (single - 1) and any(out[i][1] == out[i + 1][0] for i in range(len(out) - 1)):
            merged: list[tuple[int, int]] = []
            for s, e in out:
                if merged and merged[-1][1] >= s:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], e))
                else:
                    merged.append((s, e))
            out = merged
        return out

    def collect_written(self, start: int, end: int, *, check_wpasync: bool = False) -> list[tuple[int, int]]:
        """Pages written since they were last armed, re-armed in the same walk.

        Uses only the kernel's fast-path masks (category_mask == return_mask ==
        WRITTEN, nothing else), the only combination that reports pages zapped
        by MADV_DONTNEED as written on every 6.x kernel (KERNEL-FACTS.md A,
        "6.18 bug").  ``check_wpasync`` makes the call fail with EPERM instead
        of silently skipping a VMA that is not registered.
        """
        flags = PM_SCAN_WP_MATCHING | (PM_SCAN_CHECK_WPASYNC if check_wpasync else 0)
        w = int(PageCategory.WRITTEN)
        return self.ranges(start, end, flags=flags, mask=w, return_mask=w)

    def written_until_unregistered(self, start: int, end: int) -> tuple[list[tuple[int, int]], bool]:
        """:meth:`collect_written` with ``check_wpasync``, keeping what the kernel reported
        before it met a VMA that is not registered: (written ranges, whether it stopped
        at such a VMA).  One call where the check and the scan took two.

        On EPERM every VMA before the unregistered one was walked and re-armed, and the
        regions found there are in the vector all the same: fs/proc/task_mmu.c
        do_pagemap_scan copies them out (pagemap_scan_flush_buffer) before it returns
        the walk's error, without their count.  So the vector is cleared before each
        call and, after an EPERM, read up to its first empty slot (a region's end is
        never 0).  Dropping those regions would lose the pages they name: re-armed, no
        later scan reports them.
        """
        w = int(PageCategory.WRITTEN)
        flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
        vec = self._vec
        out: list[tuple[int, int]] = []
        pos = start
        while pos < end:
            if self._used:
                vec[0 : 3 * self._used] = array("Q", bytes(24 * self._used))
                self._used = 0
            try:
                n, walk_end = self.call(pos, end, flags=flags, mask=w, return_mask=w)
            except PermissionError:
                ends = vec[1 : 3 * self._vec_len : 3]
                n = ends.index(0) if 0 in ends else self._vec_len
                _append_merged(out, list(zip(vec[0 : 3 * n : 3], vec[1 : 3 * n : 3])))
                return out, True
            _append_merged(out, list(zip(vec[0 : 3 * n : 3], vec[1 : 3 * n : 3])))
            if n < self._vec_len or walk_end >= end:
                break
            pos = max(walk_end, vec[3 * n - 2])
        return out, False

    def unregistered_in(self, start: int, end: int) -> bool:
        """Whether a VMA in ``[start, end)`` is not registered for async WP, in one call
        that walks no page table and changes nothing.

        The call asks for pages of VMAs *without* WPALLOWED (``inverted``), with
        CHECK_WPASYNC: fs/proc/task_mmu.c pagemap_scan_test_walk fails with EPERM at
        the first VMA that is not wp_allowed, and skips every other VMA as not
        interesting (pagemap_scan_is_interesting_vma) before its page tables.
        """
        wp = int(PageCategory.WPALLOWED)
        try:
            self.call(start, end, flags=PM_SCAN_CHECK_WPASYNC, mask=wp, inverted=wp, return_mask=wp)
        except PermissionError:
            return True
        return False

    def arm(self, start: int, end: int) -> None:
        """Write-protect every page of a registered range (WP_MATCHING with no vector:
        the kernel's first fast path protects all PTEs and installs markers)."""
        self.call(start, end, flags=PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                  mask=int(PageCategory.WRITTEN), return_mask=int(PageCategory.WRITTEN), vec=False)


def _append_merged(out: list[tuple[int, int]], pairs: list[tuple[int, int]]) -> None:
    """Append ascending ``pairs`` that start at or after ``out``'s last end, merging at the seam."""
    if out and pairs and out[-1][1] >= pairs[0][0]:
        out[-1] = (out[-1][0], max(out[-1][1], pairs[0][1]))
        del pairs[0]
    out.extend(pairs)


def probe() -> bool:
    """True when this kernel has PAGEMAP_SCAN (EINVAL/ENOTTY mean it does not)."""
    try:
        with PagemapScanner(os.getpid(), vec_len=1) as scanner:
            scanner.call(0, 0)
        return True
    except OSError:
        return False


@functools.cache
def guard_category() -> int:
    """``PAGE_IS_GUARD`` when this kernel's PAGEMAP_SCAN reports guard regions
    (Linux 6.15+), else 0 (older kernels refuse the unknown bit with EINVAL)."""
    try:
        with PagemapScanner(os.getpid(), vec_len=1) as scanner:
            scanner.call(0, 0, mask=int(PageCategory.GUARD), return_mask=int(PageCategory.GUARD))
        return int(PageCategory.GUARD)
    except OSError:
        return 0


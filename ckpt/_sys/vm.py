"""Copying another process's memory: process_vm_readv(2) in batches, /proc/PID/mem.

``process_vm_readv`` takes up to IOV_MAX (1024) remote iovecs per call and is
the fast path (10+ GB/s contiguous here).  It honours the target's page
protections, so non-readable mappings (PROT_NONE, write-only) are read through
/proc/PID/mem instead, whose accesses use FOLL_FORCE (fs/proc/base.c
``mem_rw``) — as CRIU does.
"""

from __future__ import annotations

import ctypes
import os
from array import array
from collections.abc import Sequence
from typing import Final

from .libc import address_of, libc

IOV_MAX: Final = 1024

_readv = libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                   ctypes.c_ulong, ctypes.c_ulong]
_writev = libc.process_vm_writev
_writev.restype = ctypes.c_ssize_t
_writev.argtypes = _readv.argtypes


def read_ranges(pid: int, ranges: Sequence[tuple[int, int]], buf: bytearray | memoryview,
                buf_offset: int = 0) -> list[tuple[int, int]]:
    """Copy the remote ``ranges`` back to back into ``buf`` starting at ``buf_offset``.

    Returns the sub-ranges that could not be read (empty on full success):
    ``process_vm_readv`` stops at the first remote iovec it cannot read, so the
    failing range is recorded and the batch resumes after it.  ``ESRCH`` (the
    target is gone) is raised.
    """
    base = address_of(buf) + buf_offset
    failed: list[tuple[int, int]] = []
    i = 0
    offset = 0
    n_ranges = len(ranges)
    while i < n_ranges:
        batch = ranges[i : i + IOV_MAX]
        remote = array("Q")
        total = 0
        for s, e in batch:
            remote.append(s)
            remote.append(e - s)
            total += e - s
        local = array("Q", (base + offset, total))
        got = _readv(pid, local.buffer_info()[0], 1, remote.buffer_info()[0], len(batch), 0)
        if got < 0:
            err = ctypes.get_errno()
            if err in (3,):  # ESRCH
                raise ProcessLookupError(err, os.strerror(err))
            got = 0
        if got == total:
            i += len(batch)
            offset += total
            continue
        # Partial: skip to the iovec that failed, record it, go on after it.
        done = 0
        for s, e in batch:
            if done + (e - s) > got:
                partial = got - done
                failed.append((s + partial, e))
                offset += e - s
                i += 1
                break
            done += e - s
            offset += e - s
            i += 1
    return failed


def read_mem(mem_fd: int, start: int, end: int, buf: bytearray | memoryview, buf_offset: int = 0) -> None:
    """Read ``[start, end)`` of the target through an open /proc/PID/mem fd."""
    view = memoryview(buf)[buf_offset : buf_offset + (end - start)]
    pos = 0
    while pos < len(view):
        n = os.preadv(mem_fd, [view[pos:]], start + pos)
        if n <= 0:
            raise OSError(5, f"short read of /proc/PID/mem at {start + pos:#x}")
        pos += n




def write_iovecs(pid: int, local: array, remote: array, count: int) -> int:
    """process_vm_writev with prepared flat ``array('Q')`` iovecs ([base, len] pairs).

    Returns the bytes written; it stops at the first remote iovec it cannot
    write (a read-only mapping), like process_vm_readv.
    """
    got = _writev(pid, local.buffer_info()[0], count, remote.buffer_info()[0], count, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return got

"""Copy-on-write pages a task still shares with its parent (issue 9 item 2; zdtm cow00/cow01).

After ``fork`` a child's private anonymous memory is its parent's: the same physical pages,
mapped read-only in both until one of them writes (mm/memory.c ``copy_present_pte`` /
``wp_page_copy``).  A tree restored task by task gives each its own copy: twice the memory,
and a program that checks (zdtm cow00/cow01 compare /proc/PID/pagemap frames) sees the
sharing gone.  CRIU keeps it (criu/mem.c ``prepare_mm_pid``/``vma_inherited``: a private VMA
the parent has at the same address is "premapped" by the parent before it forks, the child
inherits it and writes only the pages that differ, criu/pie/restorer.c).  ckpt does the same:

**Dump** (:func:`shared_with_parent`).  For each private anonymous VMA (or private mapping of
one file at one offset) a task has at the same ``[start, end)`` as its parent, the anonymous
pages both map to the same page frame (pagemap, which root reads with frames, ``PM_FILE``
clear: a private file mapping's written pages, not its page cache;
Documentation/admin-guide/mm/pagemap.rst) are the task's ``cow`` ranges (``state.cow``): its checkpoint leaves them out, the parent's holds them.  Compared
per VMA with a few whole-buffer operations (no per-page Python loop).  A page that was left
out at an earlier checkpoint or in this dump's running round and is no longer shared (one
side wrote it since) is read again from the task in the frozen window (:func:`lost`).

**Restore** (ckpt/treememory.py :func:`~ckpt.treememory.with_cow`): the parent maps each such
VMA at a temporary address and writes its own content of the pages its children share into
it *before* it creates them; each child inherits the mapping over fork, and each rebuild
moves it into place with ``mremap`` (the pages move, still shared) and writes only its own
other pages.  A private anonymous page written after fork is a new page, so what was shared
at the dump is shared again, and nothing more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from . import procfs, ranges
from .ranges import Range

PAGE = 4096
# pagemap entry (fs/proc/task_mmu.c pagemap_pte_to_pme): bits 0-54 the frame, 55 soft-dirty,
# 56 exclusively mapped, 57 uffd-wp, 61 file/shared, 62 swapped, 63 present.
_BYTE6_KEEP = bytes(b & 0x7F for b in range(256))         # drop bit 55 (soft-dirty)
_BYTE7_KEEP = bytes(b & 0xE0 for b in range(256))         # keep only bits 61, 62 and 63
_PRESENT = bytes(1 if b == 0x80 else 0 for b in range(256))   # present, anonymous, not swapped
_NONZERO = bytes([0] + [1] * 255)
_RUN = re.compile(rb"\x01+")


def private_anonymous(m: procfs.Mapping) -> bool:
    """A private anonymous VMA that fork copies page by page (not the heap, a stack, or a
    special area: their restore is not a plain mapping)."""
    return m.perms[3] == "p" and m.inode == 0 and m.path == "" and "dp" not in m.flags and "gd" not in m.flags


def private_file(m: procfs.Mapping) -> bool:
    """A private mapping of a file (its written pages are anonymous copies, COW-shared over
    fork as anonymous memory is; zdtm cow01 ``file_tcs``)."""
    return m.perms[3] == "p" and m.inode != 0 and m.path.startswith("/") and "gd" not in m.flags


def _same_mapping(m: procfs.Mapping) -> tuple[object, ...]:
    return (m.start, m.end, m.dev, m.inode, m.offset, m.path)


def candidates(child: Sequence[procfs.Mapping], parent: Sequence[procfs.Mapping]) -> list[Range]:
    """The VMAs both tasks have at the same address, private anonymous in both, or private
    mappings of the same file at the same offset."""
    theirs = {_same_mapping(m) for m in parent if private_anonymous(m) or private_file(m)}
    return [(m.start, m.end) for m in child
            if (private_anonymous(m) or private_file(m)) and _same_mapping(m) in theirs]


def _read_pagemap(fd: int, start: int, end: int) -> bytes:
    want = (end - start) // PAGE * 8
    data = os.pread(fd, want, start // PAGE * 8)
    if len(data) != want:
        raise OSError(f"short pagemap read at {start:#x}")
    return data


def same_frames(a: bytes, b: bytes) -> bytes:
    """One byte per page of two pagemap buffers: 1 where both map the same present page frame."""
    n = len(a) // 8
    if not n:
        return b""
    masked = []
    for buf in (a, b):
        m = bytearray(buf)
        m[6::8] = buf[6::8].translate(_BYTE6_KEEP)
        m[7::8] = buf[7::8].translate(_BYTE7_KEEP)
        masked.append(m)
    diff = (int.from_bytes(masked[0], "little") ^ int.from_bytes(masked[1], "little")).to_bytes(n * 8, "little")
    nonzero = diff.translate(_NONZERO)
    differ = 0
    for k in range(8):
        differ |= int.from_bytes(nonzero[k::8], "little")
    present = int.from_bytes(bytes(masked[0][7::8]).translate(_PRESENT), "little")
    ones = int.from_bytes(b"\x01" * n, "little")
    return (present & (differ ^ ones)).to_bytes(n, "little")


def shared_with_parent(pid: int, parent: int, exclude: Sequence[Range] = (),
                       maps: Callable[[int], Sequence[procfs.Mapping]] = procfs.read_maps,
                       within: Sequence[Range] | None = None) -> list[Range]:
    """The pages of ``pid``'s private anonymous memory that are the very pages of ``parent``
    at the same address (COW-shared since a fork).  ``exclude``: VMAs not to consider (the
    parent's own shared pages come from *its* parent: one level is restored).  ``maps``
    gives a task's VMAs (a caller comparing many children with one parent reads its maps once);
    ``within``: only these pages can be shared (those shared at the last checkpoint)."""
    spans = ranges.normalize(candidates(maps(pid), maps(parent)))
    if exclude:
        skip = ranges.normalize(exclude)
        spans = [(s, e) for s, e in spans if not ranges.intersect([(s, e)], skip)]
    if within is not None:
        spans = ranges.intersect(spans, ranges.normalize(within))
    if not spans:
        return []
    out: list[Range] = []
    mine = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        theirs = os.open(f"/proc/{parent}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for start, end in spans:
                same = same_frames(_read_pagemap(mine, start, end), _read_pagemap(theirs, start, end))
                out.extend((start + m.start() * PAGE, start + m.end() * PAGE) for m in _RUN.finditer(same))
        finally:
            os.close(theirs)
    finally:
        os.close(mine)
    return ranges.normalize(out)


def lost(skipped: Sequence[Range], now: Sequence[Range], present: Sequence[Range]) -> list[Range]:
    """Pages left out as shared earlier (``skipped``: at an earlier checkpoint of the chain or
    in this dump's running round) that are shared no more but still present: the task's own
    now, to be stored in this checkpoint."""
    return ranges.intersect(ranges.subtract(ranges.normalize(skipped), ranges.normalize(now)),
                            ranges.normalize(present))

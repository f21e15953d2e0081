"""The on-disk image format: the only code that knows bytes on disk.

An images directory holds a chain of checkpoints (docs/FORMAT.md is the
normative description, with the grammar, the resolution rule and what readers
must reject).  Modules:

* ``format``     constants, :class:`VmaRecord`, the ``meta.ckpt`` codec
* ``zeros``      :func:`zero_page_runs`, the all-zero page scan
* ``frames``     zstd frames: threaded compression on write, crc-checked reads, LRU
* ``writer``     :class:`CheckpointWriter`: staging, last-add-wins index, atomic commit
* ``checkpoint`` :class:`Checkpoint`: chain resolution, read_memory/iter_memory, verify
* ``imagedir``   :class:`ImageDir`: marker, lock, listing, staging cleanup

Typical writer use::

    images = ImageDir(path, create=True)
    with images.lock():
        images.remove_stale_staging()
        head = images.head
        with images.new_checkpoint(kind="incremental", parent=head.id, pid=pid) as w:
            w.add_pages(vaddr, buf)            # as many times as needed; last add wins
            w.add_zero_pages(gone_ranges)
            ckpt = w.commit(vmas=vmas, present=present, whole=whole, state=state)
"""

from ckpt.image.checkpoint import Checkpoint, Resolved
from ckpt.image.format import FORMAT_VERSION, FRAME_PAGES, PAGE_SIZE, VmaRecord
from ckpt.image.imagedir import ImageDir
from ckpt.image.writer import CheckpointWriter, WriterStats
from ckpt.image.zeros import zero_page_runs

__all__ = [
    "PAGE_SIZE",
    "FORMAT_VERSION",
    "FRAME_PAGES",
    "ImageDir",
    "Checkpoint",
    "CheckpointWriter",
    "Resolved",
    "VmaRecord",
    "WriterStats",
    "zero_page_runs",
]

"""Bytes on disk: constants, VMA records and the ``meta.ckpt`` codec.

docs/FORMAT.md is the normative description; this module implements it:

    meta.ckpt := header body
    header    := "CKPTMETA" version:u32le crc32(body):u32le len(body):u64le
    body      := msgpack map, described record by record in :mod:`ckpt.image.schema`

:func:`decode_meta` checks everything that can be checked without reading
``pages.ckpt``: every record against the schema (the task state included),
then the binary arrays (sortedness, extents inside frames, frames contiguous,
present pages inside the VMAs), so the rest of ckpt can trust a :class:`Meta`.
"""

from __future__ import annotations

import contextlib
import gc
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import msgpack

from ckpt import ranges
from ckpt.errors import CorruptImage, ImageError
from ckpt.image import schema
from ckpt.image.schema import (  # noqa: F401 - part of this module's interface
    CODEC_NONE,
    CODEC_ZSTD,
    FILE_KINDS,
    KINDS,
    PAGE_SIZE,
    VMA_KINDS,
    NewerVersion,
    SchemaError,
)
from ckpt.ranges import Range

__all__ = [
    "PAGE_SIZE",
    "FORMAT_VERSION",
    "FRAME_PAGES",
    "MARKER_NAME",
    "MARKER_MAGIC",
    "META_NAME",
    "PAGES_NAME",
    "TASKS_DIR",
    "META_MAGIC",
    "META_HEADER",
    "KINDS",
    "VMA_KINDS",
    "FILE_KINDS",
    "CODEC_ZSTD",
    "CODEC_NONE",
    "VmaRecord",
    "Meta",
    "encode_meta",
    "decode_meta",
    "ranges_of_extents",
    "u64_array",
    "MAX_FRAME_BYTES",
]

FORMAT_VERSION = 1
FRAME_PAGES = 256  # pages per frame: 1 MiB, the unit of compression and of random access
# A reader allocates raw_len bytes per frame: bound it so a corrupt length
# cannot ask for gigabytes.  Writers never exceed FRAME_PAGES pages.
MAX_FRAME_BYTES = 64 << 20

MARKER_NAME = "CKPT-IMAGES"
MARKER_MAGIC = "ckpt images directory"
META_NAME = "meta.ckpt"
PAGES_NAME = "pages.ckpt"
TASKS_DIR = "tasks"   # NNNNNN/tasks/PID/: the other live tasks of a checkpointed tree
META_MAGIC = b"CKPTMETA"
META_HEADER = struct.Struct("<8sIIQ")  # magic, format version, crc32(body), len(body)

_BIG_ENDIAN = sys.byteorder == "big"  # the format is little-endian (see ckpt.ranges)


def u64_array(data: bytes | bytearray | memoryview = b"") -> array:
    """Decode a little-endian u64 array (the encoding of ``frames`` and ``extents``)."""
    out = array("Q")
    out.frombytes(data)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


def _u64_bytes(values: array) -> bytes:
    if _BIG_ENDIAN:
        values = array("Q", values)
        values.byteswap()
    return values.tobytes()


# One mapping of the process at dump time: the record class of ckpt/image/schema.py
# (its one declaration), under the name the API has always given it.
VmaRecord = schema.Vma


class VmaList(Sequence[VmaRecord]):
    """The VMA records of a decoded ``meta.ckpt``: checked on open (:func:`decode_meta`),
    made into :class:`VmaRecord` objects on first use.

    A restore reads the VMAs of the checkpoint it restores only: its ancestors give
    their stored pages (a process with 20,000 mappings: 45 ms per checkpoint saved).
    :meth:`release` drops the decoded maps of a checkpoint whose VMAs are not wanted
    (a chain's ancestors): 40,000 objects the garbage collector would walk again and
    again; the body, checked already, is decoded again if they are wanted after all."""

    __slots__ = ("_maps", "_built", "_source", "_count")

    def __init__(self, maps: list[dict[str, Any]], source: bytes) -> None:
        self._maps: list[dict[str, Any]] | None = maps
        self._built: tuple[VmaRecord, ...] | None = None
        self._source: bytes | None = source   # the msgpack array (or body) they were decoded from
        self._count = len(maps)

    def release(self) -> None:
        """Drop the decoded maps until the records are wanted (nothing if they were made)."""
        if self._built is None:
            self._maps = None

    def _records(self) -> tuple[VmaRecord, ...]:
        if self._built is None:
            with _gc_paused():
                maps = self._maps
                if maps is None:   # released: the same bytes decode_meta checked
                    assert self._source is not None
                    maps = _unpackb(self._source)
                    if isinstance(maps, dict):   # the whole body (decoded without a VmaCache)
                        maps = maps["vmas"]
                self._built = schema.ListOf(schema.VMA, schema.MAX_VMAS).build(maps)
            self._maps = self._source = None
        return self._built

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> VmaRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[VmaRecord]: ...
    def __getitem__(self, index: int | slice) -> VmaRecord | Sequence[VmaRecord]:
        return self._records()[index]

    def __iter__(self) -> Iterator[VmaRecord]:
        return iter(self._records())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (VmaList, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None   # type: ignore[assignment]  # as a list's

    def __repr__(self) -> str:
        return f"VmaList({len(self)} records)"


class VmaCache:
    """Checked VMA records by the bytes they were decoded from, for the checkpoints of one
    images directory (:class:`ckpt.image.ImageDir`): a process's layout rarely changes
    between two checkpoints, and checkpoints whose ``vmas`` are byte for byte the same
    share one :class:`VmaList`, decoded and checked once (a chain of 5 checkpoints of a
    process with 20,000 mappings: 0.3 s).  Holds the last few layouts."""

    SIZE = 4

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[VmaList, list[Range], list[tuple[int, int]]]] = {}

    def get(self, raw: bytes) -> tuple[VmaList, list[Range], list[tuple[int, int]]] | None:
        """The VMA list, merged ranges and :func:`ckpt.image.schema.vma_objects` of ``raw``."""
        return self._entries.get(raw)

    def put(self, raw: bytes, entry: tuple[VmaList, list[Range], list[tuple[int, int]]]) -> None:
        if len(self._entries) >= self.SIZE:
            del self._entries[next(iter(self._entries))]
        self._entries[raw] = entry


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a ``meta.ckpt`` body is made or taken apart: its
    hundreds of thousands of new objects (20,000 VMA maps) would run the collector over
    everything alive again and again -- 40 % of the decode time -- and they hold no cycle."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True, slots=True)
class Meta:
    """The decoded content of one ``meta.ckpt``."""

    id: int
    parent: int | None
    kind: str
    time: float
    pid: int
    vmas: Sequence[VmaRecord]   # a tuple when written, a VmaList when read
    present: list[Range]
    whole: list[Range]
    zero: list[Range]
    frames: array  # u64 x4 per frame: offset, stored length, raw length, crc32(stored bytes)
    extents: array  # u64 x4 per extent: vaddr, npages, frame index, page offset in frame
    codec: str
    level: int
    state: schema.State
    stats: dict[str, Any]
    # Where the content of each file object of state["objects"] is: id -> (an extent-array
    # keyed by file offset, the all-zero ranges of its data).  Whole in every checkpoint.
    objects: dict[int, tuple[array, list[Range]]] = field(default_factory=dict)
    # The VMAs' ranges, merged (decode_meta has them; None: derive them from ``vmas``).
    vma_ranges: list[Range] | None = None

    @property
    def nframes(self) -> int:
        """Number of frames in ``pages.ckpt``."""
        return len(self.frames) // 4

    @property
    def pages_size(self) -> int:
        """Exact size ``pages.ckpt`` must have."""
        n = len(self.frames)
        return self.frames[n - 4] + self.frames[n - 3] if n else 0


def encode_meta(meta: Meta) -> bytes:
    """Serialize ``meta`` as header + msgpack body."""
    with _gc_paused():
        return _encode_meta(meta)


def _encode_meta(meta: Meta) -> bytes:
    body_map = {
        "id": meta.id,
        "parent": meta.parent,
        "kind": meta.kind,
        "time": float(meta.time),
        "pid": meta.pid,
        "vmas": [schema.VMA.wire(v, encode=True) for v in meta.vmas],
        "present": ranges.to_bytes(meta.present),
        "whole": ranges.to_bytes(meta.whole),
        "zero": ranges.to_bytes(meta.zero),
        "codec": meta.codec,
        "level": meta.level,
        "frames": _u64_bytes(meta.frames),
        "extents": _u64_bytes(meta.extents),
        "state": schema.TASK_STATE.wire(meta.state, encode=True),  # names that are not UTF-8 as bin
        "stats": meta.stats,
    }
    if meta.objects:
        body_map["object_extents"] = [
            {"id": obj_id, "extents": _u64_bytes(extents), "zero": ranges.to_bytes(zero)}
            for obj_id, (extents, zero) in sorted(meta.objects.items())]
    try:
        body = msgpack.packb(body_map, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise TypeError(f"checkpoint {meta.id}: metadata (state?) is not msgpack-serializable: {err}") from err
    # What readers would refuse is never written: a state the schema does not
    # accept fails the dump before its commit, not every later read.
    try:
        schema.check_meta(msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True))
    except SchemaError as err:
        raise SchemaError(f"{err.problem} (checkpoint {meta.id} was not written)", err.path) from None
    return META_HEADER.pack(META_MAGIC, FORMAT_VERSION, zlib.crc32(body), len(body)) + body


def decode_meta(data: bytes, ckpt_id: int, vma_cache: VmaCache | None = None) -> Meta:
    """Parse and validate a ``meta.ckpt``; raise CorruptImage/ImageError naming ``ckpt_id``.

    Every record is checked against :mod:`ckpt.image.schema` (the task state
    included), then the binary arrays are decoded and checked against each
    other, so that readers may use any field of the result without checks.
    With ``vma_cache``, VMA records byte for byte equal to ones checked already are
    taken from it, not decoded and checked again (:class:`VmaCache`).
    """
    where = f"checkpoint {ckpt_id}: {META_NAME}"
    hsize = META_HEADER.size
    if len(data) < hsize:
        raise CorruptImage(f"{where} truncated: {len(data)} bytes, the header alone needs {hsize}")
    magic, version, crc, body_len = META_HEADER.unpack_from(data)
    if magic != META_MAGIC:
        raise CorruptImage(f"{where}: bad magic {magic!r} at offset 0")
    if version > FORMAT_VERSION:
        raise ImageError(
            f"{where}: format version {version} is newer than this ckpt reads ({FORMAT_VERSION}); upgrade ckpt"
        )
    if version == 0:
        raise CorruptImage(f"{where}: format version 0 at offset 8")
    if len(data) - hsize != body_len:
        state = "truncated" if len(data) - hsize < body_len else "has trailing bytes"
        raise CorruptImage(
            f"{where} {state}: body at offset {hsize} is {len(data) - hsize} bytes, header says {body_len}"
        )
    body = memoryview(data)[hsize:]
    if zlib.crc32(body) != crc:
        raise CorruptImage(f"{where}: crc32 mismatch in the body at offset {hsize}")
    with _gc_paused():
        return _decode_body(body, ckpt_id, where, vma_cache)


def _decode_body(body: memoryview, ckpt_id: int, where: str, cache: VmaCache | None) -> Meta:
    try:
        m, raw = _unpack(body) if cache is not None else (_unpackb(body), None)
        cached = cache.get(raw) if cache is not None and raw is not None else None
        if raw is not None and cached is None:
            m["vmas"] = _unpackb(raw)
    except (ValueError, msgpack.UnpackException) as err:
        raise CorruptImage(f"{where}: undecodable msgpack body at offset {META_HEADER.size}: {err}") from err
    try:
        if cached is not None:
            vmas, vma_ranges, objects = cached
            schema.check_meta(m, vma_objects=objects)
            return _build_meta(m, ckpt_id, vmas, vma_ranges)
        schema.check_meta(m)
        vmas = VmaList(m["vmas"], raw if raw is not None else body)
        meta = _build_meta(m, ckpt_id, vmas, _merged(m["vmas"]))
        if cache is not None and raw is not None:
            assert meta.vma_ranges is not None
            cache.put(raw, (vmas, meta.vma_ranges, schema.vma_objects(m["vmas"])))
        return meta
    except NewerVersion as err:
        raise ImageError(f"{where}: {err}") from None
    except (ValueError, KeyError, TypeError) as err:
        # SchemaError is a ValueError; KeyError/TypeError would be a gap in the schema.
        detail = f"missing key {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
        raise CorruptImage(f"{where}: {detail}") from err


def _unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def _unpack(body: memoryview) -> tuple[Any, bytes | None]:
    """The body's top-level map, and the bytes of its ``vmas`` array left undecoded (in the
    map: None).  A body that is not such a map (its ``vmas`` bytes None) is decoded whole,
    as :func:`_unpackb` does, errors included."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True, max_buffer_size=max(1, len(body)))
    unpacker.feed(body)
    m: dict[Any, Any] = {}
    raw = None
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "vmas":
                start = unpacker.tell()
                unpacker.skip()
                raw = bytes(body[start : unpacker.tell()])
                m[key] = None
            else:
                m[key] = unpacker.unpack()
        whole = unpacker.tell() == len(body)
    except (ValueError, TypeError, msgpack.UnpackException):
        whole = False
    return (m, raw) if whole and raw is not None else (_unpackb(body), None)


def _build_meta(m: dict[str, Any], ckpt_id: int, vmas: VmaList, vma_ranges: list[Range]) -> Meta:
    """A Meta from a body that passed the schema: decode and cross-check the binary arrays
    (``vmas`` and ``vma_ranges``: its VMA records, and their ranges merged)."""
    if m["id"] != ckpt_id:
        raise ValueError(f"records id {m['id']}, but its directory names checkpoint {ckpt_id}")
    sets = {}
    for key in ("present", "whole", "zero"):
        try:
            sets[key] = ranges.from_bytes(m[key])
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
        if any(s % PAGE_SIZE or e % PAGE_SIZE for s, e in sets[key]):
            raise ValueError(f"{key}: ranges not page-aligned")
    # A process has no page where it maps nothing: a present set outside the
    # VMAs is absurd (and would make readers walk address space that is not there).
    stray = ranges.subtract(sets["present"], vma_ranges)
    if stray:
        raise ValueError(f"present: page {stray[0][0]:#x} lies in no VMA")
    frames = _decode_frames(m["frames"])
    extents = _decode_extents(m["extents"], frames)
    stored = ranges_of_extents(extents)
    overlap = ranges.intersect(stored, sets["zero"])
    if overlap:
        raise ValueError(f"page {overlap[0][0]:#x} is recorded both as data and as zero")
    objects = {}
    for record in m.get("object_extents", []):
        where = f"object_extents (object {record['id']})"
        try:
            obj_extents = _decode_extents(record["extents"], frames)
            obj_zero = ranges.from_bytes(record["zero"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if any(s % PAGE_SIZE or e % PAGE_SIZE for s, e in obj_zero):
            raise ValueError(f"{where}: zero ranges not page-aligned")
        both = ranges.intersect(ranges_of_extents(obj_extents), obj_zero)
        if both:
            raise ValueError(f"{where}: offset {both[0][0]:#x} is recorded both as data and as zero")
        objects[record["id"]] = (obj_extents, obj_zero)
    return Meta(
        id=m["id"],
        parent=m["parent"],
        kind=m["kind"],
        time=float(m["time"]),
        pid=m["pid"],
        vmas=vmas,
        present=sets["present"],
        whole=sets["whole"],
        zero=sets["zero"],
        frames=frames,
        extents=extents,
        codec=m["codec"],
        level=m["level"],
        state=schema.TASK_STATE.build(m["state"]),  # the record classes; bin names back to str
        stats=m.get("stats", {}),
        objects=objects,
        vma_ranges=vma_ranges,
    )


def _merged(vmas: list[dict[str, Any]]) -> list[Range]:
    """The ranges of VMA maps sorted and disjoint (the schema's rule), adjacent ones merged:
    :func:`ckpt.ranges.normalize` without its sort."""
    out: list[Range] = []
    last_end = -1
    for v in vmas:
        start, end = v["start"], v["end"]
        if start == last_end:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
        last_end = end
    return out


def _decode_frames(data: bytes) -> array:
    if len(data) % 32:
        raise ValueError(f"frames array of {len(data)} bytes is not a whole number of 4 x u64 records")
    frames = u64_array(data)
    expected_offset = 0
    for k in range(0, len(frames), 4):  # per frame (1 MiB each), not per page
        offset, stored_len, raw_len, crc = frames[k : k + 4]
        if offset != expected_offset:
            raise ValueError(f"frame {k // 4} starts at offset {offset}, expected {expected_offset}")
        if not 0 < raw_len <= MAX_FRAME_BYTES or raw_len % PAGE_SIZE:
            raise ValueError(f"frame {k // 4} at offset {offset}: raw length {raw_len}")
        if not 0 < stored_len <= MAX_FRAME_BYTES + (1 << 16) or crc >> 32:
            raise ValueError(f"frame {k // 4} at offset {offset}: stored length {stored_len}, crc {crc}")
        expected_offset += stored_len
    return frames


def _decode_extents(data: bytes, frames: array) -> array:
    if len(data) % 32:
        raise ValueError(f"extents array of {len(data)} bytes is not a whole number of 4 x u64 records")
    ext = u64_array(data)
    nframes = len(frames) // 4
    prev_end = 0
    for k in range(0, len(ext), 4):  # per extent (a run of pages), not per page
        vaddr, npages, frame, page_off = ext[k : k + 4]
        if vaddr % PAGE_SIZE or npages == 0 or vaddr < prev_end:
            raise ValueError(f"extent {k // 4} at {vaddr:#x} ({npages} pages) is empty, unaligned or not sorted")
        if frame >= nframes:
            raise ValueError(f"extent {k // 4} at {vaddr:#x} points to frame {frame}; there are {nframes}")
        raw_len = frames[4 * frame + 2]
        if (page_off + npages) * PAGE_SIZE > raw_len:
            raise ValueError(
                f"extent {k // 4} at {vaddr:#x} (pages {page_off}..{page_off + npages}) lies outside "
                f"frame {frame} at offset {frames[4 * frame]} ({raw_len // PAGE_SIZE} pages)"
            )
        prev_end = vaddr + npages * PAGE_SIZE
    return ext


def ranges_of_extents(extents: array) -> list[Range]:
    """Return the normalized data ranges an extents array indexes."""
    out: list[Range] = []
    # Extents are sorted and disjoint (checked by _decode_extents): only touching
    # neighbours need merging, no sort.
    for start, npages in zip(extents[0::4], extents[1::4]):
        end = start + npages * PAGE_SIZE
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out

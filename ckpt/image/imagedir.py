"""An images directory: the marker, the writer lock, the committed checkpoints.

    DIR/CKPT-IMAGES                      marker: magic line + format version
    DIR/.lock                            flock target of the one writer (holds its pid)
    DIR/NNNNNN/{meta.ckpt,pages.ckpt}    committed checkpoints, ids 1, 2, 3... in commit order
    DIR/.staging-NNNNNN-<random>/        a checkpoint being written; never read

DIR is 0700 and every file 0600 (process memory is secret); see fsutil.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from ckpt.errors import CorruptImage, ImageDirLocked, ImageError, NotAnImageDir
from ckpt.image.checkpoint import Checkpoint
from ckpt.image.format import (
    FORMAT_VERSION,
    KINDS,
    MARKER_MAGIC,
    MARKER_NAME,
    META_NAME,
    PAGES_NAME,
    decode_meta,
)
from ckpt.image.frames import FrameCache
from ckpt.image.fsutil import DIR_MODE, create_file, fsync_dir, make_dir, read_file, write_all
from ckpt.image.writer import CheckpointWriter

__all__ = ["ImageDir", "LOCK_NAME", "MIN_LEVEL", "MAX_LEVEL"]

LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"
MIN_LEVEL, MAX_LEVEL = -1, 19  # zstd levels accepted; 0 means "store raw"
_ID_RE = re.compile(r"[0-9]{6,}")
_VERSION_RE = re.compile(r"format-version ([0-9]{1,10})")  # ASCII digits only (str.isdigit takes "²")
_MARKER_MAX = 4096


class ImageDir:
    """A directory holding a chain of checkpoints."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        """Open the images directory at ``path``; with ``create``, make it (or adopt an empty dir).

        Raises NotAnImageDir for a file or a non-empty directory without the
        marker, ImageError if ``path`` does not exist and ``create`` is False.
        """
        self.path = Path(path)
        self._cache: dict[int, tuple[tuple[int, int, int], Checkpoint]] = {}
        self._frame_cache = FrameCache()
        self._lock_fd: int | None = None
        self._writer: CheckpointWriter | None = None
        try:
            self._open(create)
        except PermissionError as err:
            raise ImageError(f"{self.path}: permission denied") from err

    def __repr__(self) -> str:
        return f"ImageDir({str(self.path)!r})"

    def _open(self, create: bool) -> None:
        not_one = f"{self.path} is not a ckpt images directory"
        try:
            if not self.path.is_dir():
                if self.path.exists():
                    raise NotAnImageDir(f"{not_one} (not a directory)")
                if not create:
                    raise ImageError(f"{self.path} does not exist")
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):  # a concurrent creator
                    make_dir(self.path)
        except NotADirectoryError:
            raise NotAnImageDir(f"{not_one} (a parent is not a directory)") from None
        marker = self.path / MARKER_NAME
        if marker.exists():
            self._check_marker(marker)
            return
        if os.listdir(self.path) or not create:
            raise NotAnImageDir(f"{not_one} (no {MARKER_NAME})")
        os.chmod(self.path, DIR_MODE)  # adopting an empty dir: it will hold process memory
        tmp = self.path / f".{MARKER_NAME}.tmp-{os.urandom(4).hex()}"
        fd = create_file(tmp)
        try:
            write_all(fd, f"{MARKER_MAGIC}\nformat-version {FORMAT_VERSION}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, marker)
        fsync_dir(self.path)

    def _check_marker(self, marker: Path) -> None:
        """Refuse a marker ckpt did not write: NotAnImageDir without the magic line,
        CorruptImage for a malformed version line or version 0 (FORMAT.md §7),
        ImageError (not corruption) for a newer version.

        The marker is opened without following a symlink and without blocking,
        and only its first 4 KiB are read: a FIFO, a device or a huge file planted
        in its place must neither hang nor exhaust the reader.
        """
        not_one = f"{self.path} is not a ckpt images directory"
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise
        except OSError as err:
            raise NotAnImageDir(f"{not_one} ({MARKER_NAME}: {err.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotAnImageDir(f"{not_one} ({MARKER_NAME} is not a regular file)")
            head = os.read(fd, _MARKER_MAX)
        finally:
            os.close(fd)
        lines = head.decode("utf-8", "replace").splitlines()
        if not lines or lines[0] != MARKER_MAGIC:
            raise NotAnImageDir(f"{not_one} ({MARKER_NAME} has no magic line)")
        match = _VERSION_RE.fullmatch(lines[1]) if len(lines) > 1 else None
        if match is None:
            raise CorruptImage(f"{marker}: malformed format-version line")
        version = int(match[1])
        if version == 0:
            raise CorruptImage(f"{marker}: format version 0, which no ckpt writes")
        if version > FORMAT_VERSION:
            raise ImageError(
                f"{self.path} uses format version {version}, newer than this ckpt reads "
                f"({FORMAT_VERSION}); upgrade ckpt"
            )

    # -- reading -----------------------------------------------------------

    def _ids(self) -> list[int]:
        # Only canonical names: "0000001" is not checkpoint 1 (that is "000001").
        return sorted(
            int(name) for name in os.listdir(self.path) if _ID_RE.fullmatch(name) and name == f"{int(name):06d}"
        )

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """Committed checkpoints, oldest first (listed afresh on each access)."""
        return [self.checkpoint(i) for i in self._ids()]

    @property
    def head(self) -> Checkpoint | None:
        """The newest committed checkpoint, or None in an empty images dir."""
        ids = self._ids()
        return self.checkpoint(ids[-1]) if ids else None

    def checkpoint(self, id: int) -> Checkpoint:
        """Return committed checkpoint ``id``; ImageError if there is none, CorruptImage if unreadable."""
        ckpt_dir = self.path / f"{id:06d}"
        meta_path = ckpt_dir / META_NAME
        try:
            st = os.stat(meta_path)
        except FileNotFoundError:
            if ckpt_dir.is_dir():
                raise CorruptImage(f"checkpoint {id}: {meta_path} is missing") from None
            raise ImageError(f"no checkpoint {id} in {self.path}") from None
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(id)
        if cached is not None and cached[0] == ident:
            return cached[1]
        meta = decode_meta(read_file(meta_path), id)
        try:
            pages_size = os.stat(ckpt_dir / PAGES_NAME).st_size
        except FileNotFoundError:
            raise CorruptImage(f"checkpoint {id}: {ckpt_dir / PAGES_NAME} is missing") from None
        if pages_size != meta.pages_size:
            state = "truncated" if pages_size < meta.pages_size else "has trailing bytes"
            raise CorruptImage(
                f"checkpoint {id}: {PAGES_NAME} {state} at offset {pages_size} "
                f"(its frames end at offset {meta.pages_size})"
            )
        ckpt = Checkpoint(self, meta, (id, ident))
        self._cache[id] = (ident, ckpt)
        return ckpt

    def verify(self) -> list[str]:
        """Verify every checkpoint; return one report line each, raise CorruptImage on the first failure."""
        reports = []
        for ckpt in self.checkpoints:
            ckpt.verify()
            reports.append(
                f"checkpoint {ckpt.id} ({ckpt.kind}, parent {ckpt.parent}): ok, {ckpt.meta.nframes} frames, "
                f"{ckpt.pages_present} pages present, {ckpt.pages_stored} stored, {ckpt.pages_zero} zero"
            )
        return reports

    # -- writing -----------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[ImageDir]:
        """Hold the writer lock (flock on DIR/.lock) for the ``with`` block.

        Raises ImageDirLocked naming the holder's pid if another process (or
        another ImageDir object) holds it.  Leaving the block aborts a writer
        still open on this object.
        """
        if self._lock_fd is not None:
            raise ImageError(f"{self.path}: this ImageDir already holds the lock")
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ImageDirLocked(f"{self.path} is being written by another ckpt (pid {holder})") from None
            raise ImageError(f"{self.path}: cannot lock {LOCK_NAME}: {err.strerror}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        try:
            yield self
        finally:
            if self._writer is not None:
                self._writer.abort()  # a writer must not outlive the lock
            self._lock_fd = None
            os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock

    def new_checkpoint(
        self,
        *,
        kind: str,
        parent: int | None,
        pid: int,
        compression_level: int = 1,
        workers: int = 2,
    ) -> CheckpointWriter:
        """Start writing the next checkpoint; the caller must hold :meth:`lock` on this object.

        ``compression_level`` is a zstd level from -1 to 19 (1 by default; -1..3
        are the fast ones), or 0 to store frames uncompressed.  ``workers``
        threads compress (0: compress on the calling thread).
        """
        if self._lock_fd is None:
            raise ImageError(f"{self.path}: new_checkpoint() needs lock() held on this ImageDir")
        if self._writer is not None:
            raise ImageError(f"{self.path}: checkpoint {self._writer.id} is still being written")
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {KINDS}")
        if kind == "incremental" and parent is None:
            raise ValueError("an incremental checkpoint needs a parent")
        if not MIN_LEVEL <= compression_level <= MAX_LEVEL:
            raise ValueError(f"compression level {compression_level} is outside {MIN_LEVEL}..{MAX_LEVEL}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, not {workers}")
        ids = self._ids()
        if parent is not None:
            if parent not in ids:
                raise ImageError(f"parent checkpoint {parent} does not exist in {self.path}")
            self.checkpoint(parent)  # refuse a corrupt parent now rather than at restore
        new_id = (ids[-1] if ids else 0) + 1
        staging = self.path / f"{STAGING_PREFIX}{new_id:06d}-{os.urandom(4).hex()}"
        self._writer = CheckpointWriter(
            self,
            id=new_id,
            kind=kind,
            parent=parent,
            pid=pid,
            compression_level=compression_level,
            workers=workers,
            staging=staging,
        )
        return self._writer

    def _writer_closed(self, writer: CheckpointWriter) -> None:
        if self._writer is writer:
            self._writer = None

    def remove_stale_staging(self) -> int:
        """Remove staging dirs left by crashed writers; return how many.

        Takes the lock for the duration unless this object already holds it
        (then the staging dir of its own open writer is kept).  Raises
        ImageDirLocked while another process writes.
        """
        if self._lock_fd is None:
            with self.lock():
                return self._remove_staging()
        return self._remove_staging()

    def _remove_staging(self) -> int:
        keep = self._writer.staging.name if self._writer is not None else None
        removed = 0
        for name in os.listdir(self.path):
            if name.startswith(f".{MARKER_NAME}.tmp-"):  # a crashed marker creation
                os.unlink(self.path / name)
            if name.startswith(STAGING_PREFIX) and name != keep:
                shutil.rmtree(self.path / name)
                removed += 1
        return removed

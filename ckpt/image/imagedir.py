"""An images directory: the marker, the writer lock, the committed checkpoints.

    DIR/CKPT-IMAGES                      marker: magic line + format version
    DIR/.lock                            flock target of the one writer (holds its pid)
    DIR/NNNNNN/{meta.ckpt,pages.ckpt}    committed checkpoints, ids 1, 2, 3... in commit order
    DIR/NNNNNN/tasks/PID/{meta,pages}    in a checkpoint of a tree: each other live task's own
    DIR/.staging-NNNNNN-<random>/        a checkpoint being written; never read

DIR is 0700 and every file 0600 (process memory is secret); see fsutil.

Trust (ckpt/safepath.py): a writer (``create=True``, i.e. a dump) refuses a
directory that is a symlink, is not owned by the caller, is writable by group
or others, or has an ancestor someone else could change; it then works on the
resolved path.  Nothing in DIR is ever followed if it is a symlink, for readers
too: checkpoint directories must be real directories, and ``.lock``, the
marker, ``meta.ckpt`` and ``pages.ckpt`` are opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ckpt import log
from ckpt.errors import CkptError, CorruptImage, ImageDirLocked, ImageError, NotAnImageDir, StorageError
from ckpt.image.checkpoint import Checkpoint
from ckpt.image.format import (
    FORMAT_VERSION,
    KINDS,
    MARKER_MAGIC,
    MARKER_NAME,
    META_NAME,
    PAGES_NAME,
    TASKS_DIR,
    VmaCache,
    decode_meta,
)
from ckpt.image.frames import FrameCache
from ckpt.image.fsutil import DIR_MODE, FILE_MODE, create_file, fsync_dir, read_file, write_all
from ckpt.image.writer import CheckpointWriter
from ckpt.safepath import make_dirs, open_nofollow, unsafe_dir

__all__ = ["ImageDir", "LOCK_NAME", "MIN_LEVEL", "MAX_LEVEL", "StagingDir", "storage_error"]

LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"
_MARKER_TMP = f".{MARKER_NAME}.tmp-"
MIN_LEVEL, MAX_LEVEL = -1, 19  # zstd levels accepted; 0 means "store raw"
_ID_RE = re.compile(r"[0-9]{6,}")
_VERSION_RE = re.compile(r"format-version ([0-9]{1,10})")  # ASCII digits only (str.isdigit takes "²")
_MARKER_MAX = 4096


class ImageDir:
    """A directory holding a chain of checkpoints."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False, durable: bool = True) -> None:
        """Open the images directory at ``path``; with ``create``, make it (or adopt an empty dir).

        Raises NotAnImageDir for a file or a non-empty directory without the
        marker (a directory holding only what an interrupted first dump left is
        adopted), ImageError if ``path`` does not exist and ``create`` is False,
        or if a writer's directory is one someone else controls, StorageError
        when it cannot be created (read-only file system, disk full).  ``durable=False``
        creates the marker without fsync (``ckpt dump --no-fsync``).
        """
        self.path = Path(path)
        self._cache: dict[tuple[int, int | None], tuple[tuple[int, int, int], Checkpoint]] = {}
        self._frame_cache = FrameCache()
        self._vma_cache = VmaCache()   # VMA records checked once per layout (ckpt/image/format.py)
        self._lock_fd: int | None = None
        self._writer: CheckpointWriter | None = None
        try:
            self._open(create, durable)
        except PermissionError as err:
            raise ImageError(f"{self.path}: permission denied") from err
        except CkptError:
            raise
        except OSError as err:  # a symlink or a special file where a file of ours should be
            raise ImageError(f"{err.filename or self.path}: {err.strerror}") from err

    def __repr__(self) -> str:
        return f"ImageDir({str(self.path)!r})"

    def _open(self, create: bool, durable: bool) -> None:
        not_one = f"{self.path} is not a ckpt images directory"
        try:
            st: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            raise NotAnImageDir(f"{not_one} (a parent is not a directory)") from None
        if create:
            # A writer: the directory (and every ancestor) must be one nobody
            # else controls, so that nothing can redirect what is written there.
            if st is None:
                self._make_dirs()
            elif stat.S_ISLNK(st.st_mode):
                raise ImageError(f"{self.path} is a symbolic link: give the directory it points to")
            elif not stat.S_ISDIR(st.st_mode):
                raise NotAnImageDir(f"{not_one} (not a directory)")
            why = unsafe_dir(self.path)
            if why:
                raise ImageError(f"{self.path} {why}: refusing to write checkpoints there")
            # From here on the resolved path: every directory on it was just checked.
            self.path = Path(os.path.realpath(self.path))
        elif st is None:
            raise ImageError(f"{self.path} does not exist")
        elif not self.path.is_dir():  # readers may be given a symlink to the directory
            raise NotAnImageDir(f"{not_one} (not a directory)")
        marker = self.path / MARKER_NAME
        if os.path.lexists(marker):
            self._check_marker(marker)
            return
        # A directory holding only what an interrupted first dump leaves (a
        # marker being written, a lock) is adopted like an empty one.
        entries = os.listdir(self.path)
        leftovers = [n for n in entries if n.startswith(_MARKER_TMP)]
        if not create or set(entries) - set(leftovers) - {LOCK_NAME}:
            raise NotAnImageDir(f"{not_one} (no {MARKER_NAME})")
        for name in leftovers:
            with contextlib.suppress(FileNotFoundError):  # a concurrent creator took it
                os.unlink(self.path / name)
        self._chmod_dir()  # adopting an empty dir: it will hold process memory
        tmp = self.path / f"{_MARKER_TMP}{os.urandom(4).hex()}"
        try:
            fd = create_file(tmp)
            try:
                write_all(fd, f"{MARKER_MAGIC}\nformat-version {FORMAT_VERSION}\n".encode())
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(tmp, marker)
            except FileNotFoundError:
                # A concurrent first dump removed our file as a leftover; it wrote its own marker.
                if not os.path.lexists(marker):
                    raise
            if durable:
                fsync_dir(self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise storage_error(f"cannot create {marker}", err) from err

    def _make_dirs(self) -> None:
        """Create the images directory and its missing parents, each 0700."""
        try:
            make_dirs(self.path)
        except NotADirectoryError:
            raise NotAnImageDir(f"{self.path} is not a ckpt images directory (a parent is not a directory)") from None
        except PermissionError:
            raise
        except OSError as err:
            raise storage_error(f"cannot create {err.filename or self.path}", err) from err

    def _chmod_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)

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

    def ids(self) -> list[int]:
        """The ids of the committed checkpoints, oldest first, none of them loaded."""
        return self._ids()

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
        """Return committed checkpoint ``id``; ImageError if there is none, CorruptImage if unreadable.

        Neither the checkpoint directory nor its files may be symlinks (an
        image must never make a reader open a file outside it).
        """
        return self._load(id, None)

    def task_checkpoint(self, id: int, pid: int) -> Checkpoint:
        """The checkpoint of task ``pid`` of the tree checkpoint ``id`` recorded
        (``DIR/NNNNNN/tasks/PID/``); use :meth:`Checkpoint.task`, which checks the tree
        lists it."""
        return self._load(id, pid)

    def _load(self, id: int, task: int | None) -> Checkpoint:
        ckpt_dir = self.path / f"{id:06d}"
        depth = 2
        where = f"checkpoint {id}"
        if task is not None:
            ckpt_dir = ckpt_dir / TASKS_DIR / str(task)
            depth = 4   # none of NNNNNN, tasks, PID, the file is followed if a symlink
            where = f"checkpoint {id} task {task}"
        meta_path = ckpt_dir / META_NAME
        try:
            fd = open_nofollow(meta_path, os.O_RDONLY, depth=depth)
        except FileNotFoundError:
            if task is None and not os.path.lexists(ckpt_dir):
                raise ImageError(f"no checkpoint {id} in {self.path}") from None
            raise CorruptImage(f"{where}: {meta_path} is missing") from None
        except PermissionError as err:
            raise ImageError(f"{where}: {err.filename}: permission denied") from err
        except OSError as err:
            raise CorruptImage(f"{where}: {err.filename} {err.strerror}") from err
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            ident = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._cache.get((id, task))
            if cached is not None and cached[0] == ident:
                return cached[1]
            data = f.read()
        meta = decode_meta(data, id, self._vma_cache)
        if task is not None and (meta.pid != task or meta.state.tree):
            raise CorruptImage(f"{where}: {meta_path} is the checkpoint of pid {meta.pid}"
                               + (" with a tree of its own" if meta.pid == task else ""))
        try:
            pages_fd = open_nofollow(ckpt_dir / PAGES_NAME, os.O_RDONLY, depth=depth)
        except FileNotFoundError:
            raise CorruptImage(f"{where}: {ckpt_dir / PAGES_NAME} is missing") from None
        except OSError as err:
            raise CorruptImage(f"{where}: {err.filename} {err.strerror}") from err
        try:
            pages_size = os.fstat(pages_fd).st_size
        finally:
            os.close(pages_fd)
        if pages_size != meta.pages_size:
            state = "truncated" if pages_size < meta.pages_size else "has trailing bytes"
            raise CorruptImage(
                f"{where}: {PAGES_NAME} {state} at offset {pages_size} "
                f"(its frames end at offset {meta.pages_size})"
            )
        ckpt = Checkpoint(self, meta, (id, task, ident), path=ckpt_dir, task=task is not None)
        self._cache[(id, task)] = (ident, ckpt)
        return ckpt

    def verify(self, progress: Callable[[str, int, int], None] | None = None) -> list[str]:
        """Verify every checkpoint; return one report line each, raise CorruptImage on the first failure.

        ``progress("verify", done, total)`` follows the page data read (bytes stored), as
        ``ckpt.dump``'s callback."""
        reports = []
        checkpoints = self.checkpoints
        done = [0]
        on_frame: Callable[[int], None] | None = None
        if progress is not None:
            try:
                total = sum(task.meta.pages_size for cp in checkpoints for task in cp.tasks())
            except CkptError:   # a task that does not load: the verify below names it
                total = sum(cp.meta.pages_size for cp in checkpoints)

            def count(n: int) -> None:
                done[0] += n
                progress("verify", min(done[0], total), total)

            on_frame = count

        log.begin("verify", images=self.path)
        for ckpt in checkpoints:
            ckpt.verify(on_frame)
            log.mark(f"checkpoint {ckpt.id}", frames=ckpt.meta.nframes)
            reports.append(
                f"checkpoint {ckpt.id} ({ckpt.kind}, parent {ckpt.parent}): ok, {ckpt.meta.nframes} frames, "
                f"{ckpt.pages_present} pages present, {ckpt.pages_stored} stored, {ckpt.pages_zero} zero"
                + (f", {len(ckpt.meta.objects)} file objects" if ckpt.meta.objects else "")
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
        lock_path = self.path / LOCK_NAME
        try:
            # Never a symlink, a hard link or someone else's file: it is truncated below.
            fd = open_nofollow(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE, owner=os.geteuid())
        except OSError as err:
            raise storage_error(f"cannot open {lock_path}", err) from err
        try:
            os.fchmod(fd, FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ImageDirLocked(f"{self.path} is being written by another ckpt (pid {holder})") from None
            raise storage_error(f"cannot lock {lock_path}", err) from err
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            os.close(fd)  # releases the flock
            raise storage_error(f"cannot write {lock_path}", err) from err
        self._lock_fd = fd
        try:
            yield self
        finally:
            if self._writer is not None:
                self._writer.abort()  # a writer must not outlive the lock
            self._lock_fd = None
            with contextlib.suppress(OSError):
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
        durable: bool = True,
    ) -> CheckpointWriter:
        """Start writing the next checkpoint; the caller must hold :meth:`lock` on this object.

        ``compression_level`` is a zstd level from -1 to 19 (1 by default; -1..3
        are the fast ones), or 0 to store frames uncompressed.  ``workers``
        threads compress (0: compress on the calling thread).  ``durable=False`` skips
        every fsync of the commit (``ckpt dump --no-fsync``; :class:`CheckpointWriter`).
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
        try:
            self._writer = CheckpointWriter(
                self,
                id=new_id,
                kind=kind,
                parent=parent,
                pid=pid,
                compression_level=compression_level,
                workers=workers,
                staging=staging,
                durable=durable,
            )
        except OSError as err:  # a full or read-only disk: not the target's problem
            raise storage_error(f"cannot create {staging}", err) from err
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
            path = self.path / name
            if name.startswith(_MARKER_TMP):  # a crashed marker creation
                os.unlink(path)
            if name.startswith(STAGING_PREFIX) and name != keep:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)  # never follows symlinks inside (it works by fd)
                else:
                    os.unlink(path)
                removed += 1
        return removed

    def staging(self) -> list[StagingDir]:
        """Staging directories present now: left by interrupted dumps, or being written.

        Their size is what the next dump will free (it removes leftovers under
        the lock).  ``writer_pid`` names the ckpt holding the lock, if any
        (then the staging dir may be its checkpoint in progress).
        """
        names = [name for name in sorted(os.listdir(self.path)) if name.startswith(STAGING_PREFIX)]
        if not names:
            return []
        writer = self._lock_owner()
        return [StagingDir(name, _tree_size(self.path / name), writer) for name in names]

    def _lock_owner(self) -> int | None:
        """The pid holding the flock on DIR/.lock, from /proc/locks (fs/locks.c
        ``lock_get_status``: "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE ..."), or None.

        Reading /proc/locks takes no lock itself: probing with flock() would
        make a dump starting at that instant fail as "being written".
        """
        try:
            st = os.lstat(self.path / LOCK_NAME)
            with open("/proc/locks", encoding="ascii", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in lines:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
                return int(fields[4]) if fields[4].isdigit() else None
        return None


@dataclass(frozen=True)
class StagingDir:
    """A ``.staging-*`` directory: ``size`` bytes, and the pid of the ckpt writing now, if any."""

    name: str
    size: int
    writer_pid: int | None


def _tree_size(path: Path) -> int:
    """Bytes of the files under ``path``, symlinks not followed."""
    total = 0
    if os.path.islink(path):  # os.walk would list what it points to
        return 0
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
    except OSError:
        pass
    return total


def storage_error(what: str, err: OSError) -> CkptError:
    """``what`` failed with ``err``: a full or read-only disk is a StorageError, a
    permission problem or a planted symlink an ImageError (the message says which)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        return StorageError(f"{what}: {err.strerror}")
    detail = f"{err.filename} {err.strerror}" if err.errno in (errno.ELOOP, errno.EINVAL, errno.EPERM) \
        and err.filename else err.strerror
    return ImageError(f"{what}: {detail}")

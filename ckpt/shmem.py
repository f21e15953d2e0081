"""Shared memory, read from its object rather than from one mapper's page tables.

The content of a MAP_SHARED mapping of shmem (shared anonymous memory,
``/dev/zero``, a memfd, SysV shm, a file in /dev/shm) or of a deleted file
belongs to the object.  (A memfd and a deleted file are file objects the task
state keeps whole, :func:`object_type` tells them: ckpt/files/objects.py reads
them; the rest is read here.)  A page another process wrote is in the object but not
in the dumped process's page tables, so PAGEMAP_SCAN of that process does not
report it (KERNEL-FACTS.md H: a child's 4,000 pages were missing from its
parent's checkpoint).  So the object itself is read:

* ``open("/proc/PID/map_files/START-END")`` gives an fd of the mapped file
  (for shared anonymous memory, the shmem file ``shmem_zero_setup()`` created);
* ``lseek(SEEK_DATA)`` / ``lseek(SEEK_HOLE)`` over the file range the VMA maps
  (file offset = the maps offset column + (address - start)) give its populated
  extents: pages written by any process, swapped-out ones included
  (mm/filemap.c ``mapping_seek_hole_data``);
* ``pread`` copies them.  No process's page tables are touched, and holes are
  not allocated (a shmem read of a hole copies the zero page: mm/shmem.c
  ``shmem_file_read_iter`` with SGP_READ).

Opening a map_files link needs ptrace read access to the target
(fs/proc/base.c ``proc_map_files_lookup``: PTRACE_MODE_READ_FSCREDS) and
CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the initial user namespace
(``proc_map_files_get_link``: ``checkpoint_restore_ns_capable(&init_user_ns)``),
else EPERM.  The caller then falls back to the page tables and says so.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
from dataclasses import dataclass

from .procfs import Mapping
from .ranges import Range

PAGE = os.sysconf("SC_PAGE_SIZE")

# Why map_files could not be opened, for a dump note; keyed by errno.
_WHY = {
    errno.EPERM: "opening /proc/PID/map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE",
    errno.EACCES: "no ptrace read access to /proc/PID/map_files",
    errno.EINVAL: "the mapped object is not a regular file",
}


# Kernel-internal files that /proc shows as deleted: the shmem file of shared anonymous
# memory (mm/shmem.c shmem_zero_setup: "dev/zero"), of MAP_HUGETLB anonymous memory
# (mm/mmap.c ksys_mmap_pgoff: "anon_hugepage"), of SysV segments (ipc/shm.c newseg:
# "SYSV%08x"), an AIO ring (fs/aio.c aio_private_file: "[aio]"), memfd_secret areas
# (mm/secretmem.c: "secretmem").  None of them is a file a process deleted.
_INTERNAL = re.compile(r"/(dev/zero|anon_hugepage|\[aio\]|secretmem|SYSV[0-9a-f]{8}) \(deleted\)")
ANON_SHARED_PATH = "/dev/zero (deleted)"   # mm/shmem.c shmem_zero_setup: shared anonymous memory
MEMFD_PREFIX = "/memfd:"      # mm/memfd.c MFD_NAME_PREFIX, under the root of the internal mount
DELETED_SUFFIX = " (deleted)"  # fs/d_path.c d_path of an unlinked dentry


def object_type(path: str) -> str:
    """What a /proc/PID/fd link or maps path names when its content is a file object a
    checkpoint keeps (ckpt/files/objects.py): ``"memfd"`` (``/memfd:NAME (deleted)``),
    ``"ghost"`` (a file deleted while open: ``/dir/name (deleted)``), else ``""``.

    By name only; the dump checks the file itself (ckpt/files/objects.py: a ghost's
    directory must be on its filesystem, which no kernel-internal file's is)."""
    if not path.startswith("/") or not path.endswith(DELETED_SUFFIX) or _INTERNAL.fullmatch(path):
        return ""
    return "memfd" if path.startswith(MEMFD_PREFIX) else "ghost"


def anon_shared(path: str) -> bool:
    """The maps path of shared anonymous memory (``mmap(MAP_SHARED | MAP_ANONYMOUS)``): an
    object only its mappers can reach (no name to open), so the only one whose writes
    through page tables can all be tracked (ckpt/sharedincr.py).  Not SysV (``/SYSV...``),
    memfd, /dev/shm files, MAP_HUGETLB (``/anon_hugepage``)."""
    return path == ANON_SHARED_PATH


def why_unreadable(err: OSError) -> str:
    """A short reason, for a dump note, why a shared object could not be opened."""
    return _WHY.get(err.errno or 0, f"/proc/PID/map_files: {os.strerror(err.errno or 0)}")


@dataclass(frozen=True)
class SharedObject:
    """The object behind one shared VMA, open for reading.

    ``offset`` is the file offset mapped at ``start``.  The fd belongs to the
    :class:`SharedObjects` that opened it.
    """

    start: int
    end: int
    offset: int
    fd: int

    def extents(self) -> list[Range]:
        """The populated parts of the mapped file range, as page-aligned addresses.

        Two ``lseek`` calls per extent (:func:`file_extents`)."""
        shift = self.start - self.offset
        return [(s + shift, e + shift)
                for s, e in file_extents(self.fd, self.offset, self.offset + (self.end - self.start))]

    def read(self, start: int, end: int, out: memoryview) -> None:
        """Copy the object's content mapped at ``[start, end)`` into ``out``.

        Bytes past the end of the file (truncated meanwhile) read as zeros.
        """
        assert self.start <= start < end <= self.end, (hex(start), hex(end))
        pread_full(self.fd, self.offset + (start - self.start), out[:end - start])


def file_extents(fd: int, lo: int, hi: int) -> list[Range]:
    """The populated parts of ``[lo, hi)`` of the open file ``fd``, as page-aligned file
    offsets (an extent that ends inside a page takes the whole page).

    ``lseek(SEEK_DATA)`` then ``lseek(SEEK_HOLE)`` per extent (mm/filemap.c
    ``mapping_seek_hole_data`` for shmem: swapped-out pages are data); nothing beyond end
    of file is data (SEEK_DATA there fails with ENXIO).  A filesystem without holes
    (hugetlbfs: ``default_llseek``) gives the whole file.  Moves ``fd``'s offset: give it
    an open file description of your own."""
    out: list[Range] = []
    pos = lo
    while pos < hi:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data at or after pos
                break
            raise
        if data >= hi:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        s = data - data % PAGE
        e = min(hi, -(-hole // PAGE) * PAGE)
        if out and out[-1][1] >= s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
        pos = e
    return out


def pread_full(fd: int, where: int, out: memoryview) -> None:
    """Fill ``out`` with the bytes of ``fd`` from offset ``where``; past end of file, zeros."""
    pos, length = 0, len(out)
    while pos < length:
        n = os.preadv(fd, [out[pos:length]], where + pos)
        if n <= 0:
            out[pos:length] = bytes(length - pos)
            return
        pos += n


class SharedObjects:
    """The open shared objects of one target, kept across rounds.

    An fd is reused while its VMA is unchanged (same range, offset, device and
    inode): the open fd pins the inode, so no other object can show up with
    the same device and inode meanwhile.  This keeps the open() calls out of
    the frozen window.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._open: dict[tuple[int, int, int, str, int], SharedObject] = {}

    def get(self, m: Mapping) -> SharedObject:
        """The object behind VMA ``m``; OSError if it cannot be opened (see the module docstring)."""
        key = (m.start, m.end, m.offset, m.dev, m.inode)
        obj = self._open.get(key)
        if obj is not None:
            return obj
        # A magic link to the VMA's file, not a path: nothing here can be swapped
        # for a symlink, and the kernel looks the VMA up by its exact range.
        link = f"/proc/{self.pid}/map_files/{m.start:x}-{m.end:x}"
        major, _, minor = m.dev.partition(":")
        identity = (m.inode, os.makedev(int(major, 16), int(minor, 16)))
        # Only regular files (shmem, hugetlbfs, a deleted file) are opened: opening
        # a device node (a deleted one mapped shared) could have side effects.
        st = os.stat(link)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"the mapping at {m.start:#x} is not a regular file")
        fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_dev) != identity or not stat.S_ISREG(st.st_mode):
                # The VMA was replaced between reading maps and opening it.
                raise OSError(errno.ESTALE, f"the mapping at {m.start:#x} changed")
        except BaseException:
            os.close(fd)
            raise
        obj = SharedObject(m.start, m.end, m.offset, fd)
        self._open[key] = obj
        return obj

    def retain(self, maps: list[Mapping]) -> None:
        """Close the objects whose VMA is not in ``maps`` any more."""
        keep = {(m.start, m.end, m.offset, m.dev, m.inode) for m in maps}
        for key in [k for k in self._open if k not in keep]:
            os.close(self._open.pop(key).fd)

    def close(self) -> None:
        for obj in self._open.values():
            os.close(obj.fd)
        self._open.clear()


SHM_DIR = "/dev/shm/"
DELETED = " (deleted)"


def relinked(pid: int, maps: list[Mapping]) -> list[Mapping]:
    """``maps`` with each mapping of a deleted file in /dev/shm that still has a name there
    given that name.  glibc's ``sem_open`` creates ``/dev/shm/sem.XXXXXX``, maps it, links it
    to the semaphore's name and unlinks the first (nptl/sem_open.c), so its creator's maps
    say "(deleted)" of a file every other process opens by name (Python multiprocessing's
    locks with the spawn and forkserver start methods): a named /dev/shm file
    (ckpt/namedshm.py), not a ghost.  Found by device and inode among /dev/shm's entries (a
    flat directory), read only when such a mapping is there."""
    out: list[Mapping] = []
    names: dict[tuple[int, int], str] | None = None
    for m in maps:
        base = m.path[:-len(DELETED)] if m.path.endswith(DELETED) else ""
        if base.startswith(SHM_DIR) and "/" not in base[len(SHM_DIR):]:
            try:
                st = os.stat(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
            except OSError:   # EPERM without CAP_CHECKPOINT_RESTORE: stays a deleted file
                st = None
            if st is not None and st.st_nlink:
                if names is None:
                    names = _shm_names()
                name = names.get((st.st_dev, st.st_ino))
                if name is not None:
                    m = dataclasses.replace(m, path=name)
        out.append(m)
    return out


def _shm_names() -> dict[tuple[int, int], str]:
    """The regular files directly in /dev/shm, by device and inode."""
    found: dict[tuple[int, int], str] = {}
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return found
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.setdefault((st.st_dev, st.st_ino), SHM_DIR + entry.name)
    return found

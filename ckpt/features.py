"""Kernel feature probes, shared by ``ckpt check`` and the test suite.

Each probe runs in the calling process on throwaway objects (a uffd's
features latch at the first UFFDIO_API, so probing never reuses a real one).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
from dataclasses import dataclass

from ._sys import kcmp, pagemap, pidfd, uffd
from ._sys.libc import SYS_prctl, syscall

PR_SET_MM = 35
PR_SET_MM_MAP_SIZE = 15


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool
    required: bool
    detail: str


def _uffd_features() -> tuple[bool, int, str]:
    try:
        fd = uffd.create()
    except OSError as err:
        return False, 0, f"userfaultfd(UFFD_USER_MODE_ONLY): {os.strerror(err.errno or 0)}"
    try:
        return True, uffd.api(fd, 0), ""
    except OSError as err:
        return True, 0, f"UFFDIO_API: {os.strerror(err.errno or 0)}"
    finally:
        os.close(fd)


def _pidfd_getfd() -> tuple[bool, str]:
    try:
        pfd = pidfd.pidfd_open(os.getpid())
        try:
            os.close(pidfd.pidfd_getfd(pfd, pfd))  # duplicate the pidfd itself
        finally:
            os.close(pfd)
        return True, ""
    except OSError as err:
        return False, os.strerror(err.errno or 0)


def _kcmp() -> tuple[bool, str]:
    """kcmp(KCMP_FILE) tells a dup of an fd from the fd itself (ckpt/files/dump.py)."""
    try:
        fd = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
        try:
            copy = os.dup(fd)
            try:
                same = kcmp.kcmp_file(os.getpid(), fd, os.getpid(), copy) == 0
            finally:
                os.close(copy)
        finally:
            os.close(fd)
        return same, "" if same else "KCMP_FILE did not find a dup to be the same open file"
    except OSError as err:
        return False, f"{os.strerror(err.errno or 0)} (CONFIG_KCMP off?)"


def _prctl_mm_map() -> tuple[bool, str]:
    size = ctypes.c_uint(0)
    try:
        syscall(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP_SIZE, ctypes.addressof(size), 0, 0)
        return True, f"struct prctl_mm_map is {size.value} bytes"
    except OSError as err:
        return False, f"PR_SET_MM_MAP_SIZE: {os.strerror(err.errno or 0)} (CONFIG_CHECKPOINT_RESTORE off?)"


def _ptrace_scope() -> tuple[bool, str]:
    try:
        scope = int(open("/proc/sys/kernel/yama/ptrace_scope").read())
    except OSError:
        return True, "no Yama LSM"
    ok = scope == 0 or (scope in (1, 2) and os.geteuid() == 0)
    return ok, f"kernel.yama.ptrace_scope = {scope}"


@functools.cache
def zapped_pages_reported() -> bool:
    """Does PAGEMAP_SCAN's written-scan report pages dropped by MADV_DONTNEED?

    6.18.0 does not, for a whole zapped THP (a PMD hole) — fixed by 07b4377bdbe7
    and 40de8160ca7f (July 2026, Cc stable; KERNEL-FACTS.md A).  Probed on a
    private 4 MiB area of this process: fill it (as THPs where the kernel gives
    them), arm it, zap the first 2 MiB and one 4 KiB page of the rest, and check
    that the fast-path scan reports exactly those.  False on any error: the
    tracker then uses its slower, always-correct presence pass.
    """
    size, huge = 4 << 20, 2 << 20
    try:
        fd = uffd.create()
    except OSError:
        return False
    area = None
    try:
        uffd.api(fd, uffd.CKPT_FEATURES)
        area = mmap.mmap(-1, size + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        view = ctypes.c_char.from_buffer(area)
        base = ctypes.addressof(view)
        del view  # release the buffer export so the mapping can be closed
        start = (base + huge - 1) & ~(huge - 1)
        offset = start - base
        if hasattr(mmap, "MADV_HUGEPAGE"):
            area.madvise(mmap.MADV_HUGEPAGE, offset, size)
        area[offset : offset + size] = b"\x01" * size
        uffd.register_wp(fd, start, size)
        with pagemap.PagemapScanner(os.getpid(), vec_len=64) as scanner:
            scanner.arm(start, start + size)
            area.madvise(mmap.MADV_DONTNEED, offset, huge)
            area.madvise(mmap.MADV_DONTNEED, offset + huge + 4096, 4096)
            w = int(pagemap.PageCategory.WRITTEN)
            found = scanner.ranges(start, start + size, mask=w, return_mask=w)
        return found == [(start, start + huge), (start + huge + 4096, start + huge + 8192)]
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)
        if area is not None:
            area.close()


def probe_all() -> list[Feature]:
    """Every feature ckpt uses, whether this kernel (and this user) has it."""
    created, feats, why = _uffd_features()
    def has(bit: int) -> bool:
        return bool(feats & bit)
    getfd_ok, getfd_why = _pidfd_getfd()
    kcmp_ok, kcmp_why = _kcmp()
    mm_ok, mm_why = _prctl_mm_map()
    scope_ok, scope_why = _ptrace_scope()
    # VM_SOFTDIRTY shows as "sd" in smaps only when CONFIG_MEM_SOFT_DIRTY is built.
    with open("/proc/self/smaps") as f:
        soft_dirty = any(line.startswith("VmFlags:") and " sd" in line for line in f)
    return [
        Feature("userfaultfd", created, True, why or "userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)"),
        Feature("UFFD_FEATURE_WP_ASYNC", has(uffd.UFFD_FEATURE_WP_ASYNC), True,
                "asynchronous write-protect (Linux 6.7+)"),
        Feature("UFFD_FEATURE_WP_UNPOPULATED", has(uffd.UFFD_FEATURE_WP_UNPOPULATED), True,
                "markers on unpopulated pages (Linux 6.7+)"),
        Feature("UFFD_FEATURE_WP_HUGETLBFS_SHMEM", has(uffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM), False,
                "write-protect shmem/hugetlb (shared memory is stored whole without it)"),
        Feature("PAGEMAP_SCAN", pagemap.probe(), True, "ioctl on /proc/PID/pagemap (Linux 6.7+)"),
        Feature("pidfd_getfd", getfd_ok, True, getfd_why or "pidfd_open + pidfd_getfd (Linux 5.6+)"),
        Feature("ptrace", scope_ok, True, scope_why),
        Feature("kcmp", kcmp_ok, True, kcmp_why or "KCMP_FILE: which fds share an open file description"),
        Feature("PAGEMAP_SCAN reports zapped pages", zapped_pages_reported(), False,
                "MADV_DONTNEED'd pages read as written (6.18.y fixes); without it every "
                "frozen round runs a slower presence pass"),
        Feature("PR_SET_MM_MAP", mm_ok, False, mm_why + " (needed by restore)"),
        Feature("soft-dirty", soft_dirty, False, "not needed: ckpt uses uffd-wp instead"),
    ]

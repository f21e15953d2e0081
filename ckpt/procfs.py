"""Parsers and thin readers for the /proc files ckpt needs.

Two layers, in the manner of psutil's ``_pslinux.py``:

* ``parse_X(text_or_bytes)`` is pure: it turns the contents of one /proc file
  into frozen dataclasses (or plain tuples/dicts) and is table-tested on canned
  input.
* ``read_X(pid, ..., proc_root="/proc")`` reads the file and calls the parser.
  Readers raise plain :class:`OSError` (``FileNotFoundError`` when the process
  is gone, ``PermissionError`` when ptrace access is refused, ...); translating
  them into :mod:`ckpt.errors` is the job of the layer that knows the pid and
  the operation.  Nothing here swallows an error unless its docstring says so.

Text files are decoded as UTF-8 with ``surrogateescape`` so that paths and
comm names holding arbitrary bytes survive a round trip through
:func:`os.fsencode`.
"""

from __future__ import annotations

import os
import re
import resource
import stat as stat_mod
import struct
from dataclasses import dataclass, field

# The mnemonics printed on the smaps "VmFlags:" line, from show_smap_vma_flags()
# in fs/proc/task_mmu.c (one per VM_* bit; arch- and config-dependent ones only
# appear when the kernel was built with them).  Documentation/filesystems/proc.rst
# carries the same list.
VMFLAG_MEANINGS: dict[str, str] = {
    "rd": "VM_READ: readable",
    "wr": "VM_WRITE: writable",
    "ex": "VM_EXEC: executable",
    "sh": "VM_SHARED: shared (writes reach the backing object)",
    "mr": "VM_MAYREAD: may be made readable by mprotect",
    "mw": "VM_MAYWRITE: may be made writable by mprotect",
    "me": "VM_MAYEXEC: may be made executable by mprotect",
    "ms": "VM_MAYSHARE: mapped MAP_SHARED",
    "gd": "VM_GROWSDOWN: stack segment grows down",
    "pf": "VM_PFNMAP: pure PFN range, no struct page behind it",
    "gu": "VM_MAYBE_GUARD: may contain MADV_GUARD_INSTALL guard regions",
    "lo": "VM_LOCKED: pages are mlocked",
    "io": "VM_IO: memory-mapped I/O area",
    "sr": "VM_SEQ_READ: MADV_SEQUENTIAL readahead hint",
    "rr": "VM_RAND_READ: MADV_RANDOM readahead hint",
    "dc": "VM_DONTCOPY: not copied on fork (MADV_DONTFORK)",
    "de": "VM_DONTEXPAND: cannot be expanded by mremap",
    "lf": "VM_LOCKONFAULT: mlock2(MLOCK_ONFAULT), pages locked as they fault in",
    "ac": "VM_ACCOUNT: counted against overcommit",
    "nr": "VM_NORESERVE: no swap space reserved (MAP_NORESERVE)",
    "ht": "VM_HUGETLB: hugetlbfs mapping",
    "sf": "VM_SYNC: synchronous page faults (MAP_SYNC)",
    "nl": "VM_NONLINEAR: remap_file_pages mapping (removed in Linux 4.0)",
    "ar": "VM_ARCH_1: architecture-specific flag",
    "wf": "VM_WIPEONFORK: zero-filled in the child after fork (MADV_WIPEONFORK)",
    "dd": "VM_DONTDUMP: excluded from core dumps (MADV_DONTDUMP)",
    "bt": "VM_ARM64_BTI: arm64 branch target identification guarded page",
    "sd": "VM_SOFTDIRTY: soft-dirty flag set for the whole area",
    "mm": "VM_MIXEDMAP: mixed PFN and struct-page mapping",
    "hg": "VM_HUGEPAGE: MADV_HUGEPAGE advised",
    "nh": "VM_NOHUGEPAGE: MADV_NOHUGEPAGE advised",
    "mg": "VM_MERGEABLE: KSM may merge pages (MADV_MERGEABLE)",
    "um": "VM_UFFD_MISSING: userfaultfd registered for missing-page faults",
    "uw": "VM_UFFD_WP: userfaultfd registered for write-protect faults",
    "mt": "VM_MTE: arm64 memory tagging enabled",
    "ui": "VM_UFFD_MINOR: userfaultfd registered for minor faults",
    "ss": "VM_SHADOW_STACK: hardware shadow stack",
    "dp": "VM_DROPPABLE: contents may be dropped under memory pressure",
    "sl": "VM_SEALED: sealed by mseal(2)",
}

# Kernel-provided areas with no backing object that ckpt must not dump or
# recreate as ordinary memory: the kernel maps them itself at exec time.
# [heap] and [stack] are plain anonymous memory and are deliberately absent.
SPECIAL_AREAS: frozenset[str] = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"})

_DELETED_SUFFIX = " (deleted)"

# smaps "kB" lines kept on Mapping, mapped to the dataclass field name.
_SMAPS_COUNTERS: dict[str, str] = {
    "Rss": "rss",
    "Shared_Clean": "shared_clean",
    "Shared_Dirty": "shared_dirty",
    "Anonymous": "anonymous",
    "AnonHugePages": "anon_huge",
    "Swap": "swap",
    "FilePmdMapped": "file_pmd_mapped",
}
# A VMA header starts with the start address in lower-case hex ("%lx"); every
# smaps field name starts with an upper-case letter.  Dispatching on the first
# character lets the parser skip the ~20 uninteresting lines per VMA cheaply.
_HEADER_FIRST = frozenset("0123456789abcdef")
_WANTED_FIRST = frozenset(key[0] for key in _SMAPS_COUNTERS) | {"V"}


@dataclass(frozen=True, slots=True)
class Mapping:
    """One VMA from /proc/PID/maps or /proc/PID/smaps.

    ``path`` is printed by the kernel with seq_file_path(m, file, "\\n"), so a
    newline in a file name appears as the four characters ``\\012``; it is left
    as printed because a literal backslash is not escaped and the escape cannot
    be undone unambiguously.  The counters are in bytes and are 0 for maps.
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    flags: frozenset[str] = frozenset()
    rss: int = 0
    shared_clean: int = 0   # resident pages mapped by more than one process (smaps Shared_*)
    shared_dirty: int = 0
    anonymous: int = 0
    anon_huge: int = 0
    swap: int = 0
    file_pmd_mapped: int = 0

    @property
    def size(self) -> int:
        """Length of the area in bytes."""
        return self.end - self.start

    @property
    def readable(self) -> bool:
        """True if the area is mapped PROT_READ."""
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        """True if the area is mapped PROT_WRITE."""
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        """True if the area is mapped PROT_EXEC."""
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        """True for MAP_SHARED areas (VM_MAYSHARE, printed as 's')."""
        return self.perms[3] == "s"

    @property
    def deleted(self) -> bool:
        """True when the backing file was unlinked (d_path appends " (deleted)")."""
        return self.path.endswith(_DELETED_SUFFIX)

    @property
    def is_special(self) -> bool:
        """True for [vdso], [vvar], [vvar_vclock] and [vsyscall]."""
        return self.path in SPECIAL_AREAS


def _parse_map_header(line: str) -> tuple[int, int, str, int, str, int, str]:
    # show_vma_header_prefix() in fs/proc/task_mmu.c prints
    # "start-end perms offset major:minor inode " then pads to a column before
    # the name.  maxsplit=5 keeps spaces inside the name (and a trailing one).
    parts = line.split(None, 5)
    start, _, end = parts[0].partition("-")
    path = parts[5] if len(parts) > 5 else ""
    return (int(start, 16), int(end, 16), parts[1], int(parts[2], 16), parts[3],
            int(parts[4]), path)


def parse_maps(text: str) -> list[Mapping]:
    """Parse the contents of /proc/PID/maps into :class:`Mapping` objects."""
    return [Mapping(*_parse_map_header(line)) for line in text.split("\n") if line]


def parse_smaps(text: str) -> list[Mapping]:
    """Parse the contents of /proc/PID/smaps into :class:`Mapping` objects.

    Counters absent from the text (older kernels, or the per-VMA line missing)
    are 0; lines other than the ones kept on :class:`Mapping` are ignored.
    """
    result: list[Mapping] = []
    header: tuple[int, int, str, int, str, int, str] | None = None
    counters: dict[str, int] = {}
    vm_flags: frozenset[str] = frozenset()
    for line in text.split("\n"):
        first = line[:1]
        if first in _HEADER_FIRST:
            if header is not None:
                result.append(Mapping(*header, flags=vm_flags, **counters))
            header = _parse_map_header(line)
            counters = {}
            vm_flags = frozenset()
        elif first in _WANTED_FIRST:
            key, _, rest = line.partition(":")
            name = _SMAPS_COUNTERS.get(key)
            if name is not None:
                counters[name] = int(rest.split(None, 1)[0]) * 1024  # "   1544 kB"
            elif key == "VmFlags":
                vm_flags = frozenset(rest.split())
    if header is not None:
        result.append(Mapping(*header, flags=vm_flags, **counters))
    return result


@dataclass(frozen=True, slots=True)
class Status:
    """Selected fields of /proc/PID/status (task_state() etc. in fs/proc/array.c).

    Missing lines leave the default (0, empty, or None for ``umask``, which
    kernels before 4.7 do not print).
    """

    name: str = ""
    umask: int | None = None
    state: str = ""
    tgid: int = 0
    pid: int = 0
    ppid: int = 0
    tracer_pid: int = 0
    uids: tuple[int, int, int, int] = (0, 0, 0, 0)
    gids: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: tuple[int, ...] = ()
    threads: int = 0
    sig_pnd: int = 0
    shd_pnd: int = 0
    sig_blk: int = 0
    sig_ign: int = 0
    sig_cgt: int = 0
    cap_inh: int = 0
    cap_prm: int = 0
    cap_eff: int = 0
    cap_bnd: int = 0
    cap_amb: int = 0
    no_new_privs: int = 0
    seccomp: int = 0
    vm_lck: int = 0           # VmLck in bytes: mm->locked_vm (pages of VM_LOCKED VMAs)


_STATUS_INT: dict[str, str] = {
    "Tgid": "tgid", "Pid": "pid", "PPid": "ppid", "TracerPid": "tracer_pid",
    "Threads": "threads", "NoNewPrivs": "no_new_privs", "Seccomp": "seccomp",
}
_STATUS_HEX: dict[str, str] = {
    "SigPnd": "sig_pnd", "ShdPnd": "shd_pnd", "SigBlk": "sig_blk", "SigIgn": "sig_ign",
    "SigCgt": "sig_cgt", "CapInh": "cap_inh", "CapPrm": "cap_prm", "CapEff": "cap_eff",
    "CapBnd": "cap_bnd", "CapAmb": "cap_amb",
}
_STATUS_ESCAPE = re.compile(r"\\([n\\])")


def _unescape_status_name(name: str) -> str:
    # proc_task_name() in fs/proc/array.c escapes only "\n" and "\\" in Name:
    # (seq_escape_str(..., ESCAPE_SPACE | ESCAPE_SPECIAL, "\n\\")).
    if "\\" not in name:
        return name
    return _STATUS_ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else "\\", name)


def parse_status(text: str) -> Status:
    """Parse the contents of /proc/PID/status; unknown lines are ignored."""
    values: dict[str, object] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key in _STATUS_INT:
            values[_STATUS_INT[key]] = int(value)
        elif key in _STATUS_HEX:
            values[_STATUS_HEX[key]] = int(value, 16)
        elif key == "Name":
            # Only the tab after the colon separates; the name keeps its own spaces.
            raw = line[len("Name:"):]
            values["name"] = _unescape_status_name(raw[1:] if raw.startswith("\t") else raw)
        elif key == "Umask":
            values["umask"] = int(value, 8)
        elif key == "State":
            values["state"] = value[:1]
        elif key in ("Uid", "Gid"):
            ids = tuple(int(v) for v in value.split())
            values["uids" if key == "Uid" else "gids"] = ids
        elif key == "Groups":
            values["groups"] = tuple(int(v) for v in value.split())
        elif key == "VmLck":
            values["vm_lck"] = int(value.split()[0]) * 1024  # "16 kB"
    return Status(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Stat:
    """Selected fields of /proc/PID/stat (do_task_stat() in fs/proc/array.c).

    Comments give the 1-based field numbers of proc(5).  Fields 45-51 (since
    Linux 3.3) are printed as 0 unless the reader may ptrace the target; 45-52
    are absent on older kernels and then read as 0 here.
    """

    pid: int  # 1
    comm: str  # 2
    state: str  # 3
    ppid: int  # 4
    pgrp: int  # 5
    session: int  # 6
    tty_nr: int  # 7
    flags: int  # 9, PF_* bits
    num_threads: int  # 20
    start_time: int  # 22, clock ticks after boot
    vsize: int  # 23, bytes
    rss: int  # 24, pages
    start_code: int  # 26
    end_code: int  # 27
    start_stack: int  # 28
    exit_signal: int  # 38
    processor: int  # 39
    start_data: int = 0  # 45
    end_data: int = 0  # 46
    start_brk: int = 0  # 47
    arg_start: int = 0  # 48
    arg_end: int = 0  # 49
    env_start: int = 0  # 50
    env_end: int = 0  # 51
    exit_code: int = 0  # 52, since Linux 3.5


def parse_stat(text: str) -> Stat:
    """Parse the contents of /proc/PID/stat.

    comm is printed raw between parentheses and may itself contain spaces and
    parentheses, so it ends at the *last* ')' of the line.
    """
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    comm = text[open_paren + 1:close_paren]
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    rest = text[close_paren + 1:].split()
    nums = [0] + [int(word) for word in rest[1:]]

    def f(n: int) -> int:
        return nums[n - 3] if n - 3 < len(nums) else 0

    return Stat(
        pid=int(text[:open_paren]), comm=comm, state=rest[0], ppid=f(4), pgrp=f(5),
        session=f(6), tty_nr=f(7), flags=f(9), num_threads=f(20), start_time=f(22),
        vsize=f(23), rss=f(24), start_code=f(26), end_code=f(27), start_stack=f(28),
        exit_signal=f(38), processor=f(39), start_data=f(45), end_data=f(46),
        start_brk=f(47), arg_start=f(48), arg_end=f(49), env_start=f(50),
        env_end=f(51), exit_code=f(52),
    )


SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_THREAD_ID = 0, 1, 2, 4   # include/uapi/asm-generic/siginfo.h
_NOTIFY_NAMES = {"signal": SIGEV_SIGNAL, "none": SIGEV_NONE, "thread": SIGEV_THREAD}


@dataclass(frozen=True, slots=True)
class PosixTimer:
    """One POSIX timer of /proc/PID/timers (fs/proc/base.c ``show_timer``)."""

    id: int            # the timer_t timer_create() gave
    signal: int        # sigev_signo (SIGALRM for a timer created without a sigevent)
    sigval: int        # sigev_value, as the pointer the kernel prints (its id when created without one)
    notify: int        # sigev_notify: SIGEV_SIGNAL/NONE/THREAD, | SIGEV_THREAD_ID
    notify_pid: int    # the process (or with SIGEV_THREAD_ID, the thread) signalled
    clock: int         # the clockid it was created on (negative: a CPU-time or fd clock)


def parse_timers(text: str) -> list[PosixTimer]:
    """Parse /proc/PID/timers: blocks of "ID: %d", "signal: %d/%px", "notify: %s/%s.%d",
    "ClockID: %d" (the ``%px`` is the sigev_value, hex without 0x)."""
    out = []
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        fields[key] = value.strip()
        if key != "ClockID":
            continue
        signo, _, sigval = fields["signal"].partition("/")
        kind, _, target = fields["notify"].partition("/")
        scope, _, pid = target.partition(".")
        notify = _NOTIFY_NAMES[kind] | (SIGEV_THREAD_ID if scope == "tid" else 0)
        out.append(PosixTimer(int(fields["ID"]), int(signo), int(sigval, 16), notify, int(pid),
                              int(fields["ClockID"])))
        fields = {}
    return out


@dataclass(frozen=True, slots=True)
class FdInfo:
    """The contents of /proc/PID/fdinfo/FD (seq_show() in fs/proc/fd.c).

    ``extra`` holds every other "key: value" line with the value stripped
    (eventfd-count, tfd, inotify wd, lock, clockid, ...).  Keys that repeat,
    such as one "tfd" line per epoll target or one "lock" line per lock, have
    their values joined with "\\n" in file order.
    """

    pos: int
    flags: int
    mnt_id: int
    ino: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def parse_fdinfo(text: str) -> FdInfo:
    """Parse the contents of /proc/PID/fdinfo/FD; ``flags`` is read as octal."""
    pos = flags = mnt_id = 0
    ino: int | None = None
    extra: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "pos":
            pos = int(value)
        elif key == "flags":
            flags = int(value, 8)
        elif key == "mnt_id":
            mnt_id = int(value)
        elif key == "ino":
            ino = int(value)
        elif key in extra:
            extra[key] += "\n" + value
        else:
            extra[key] = value
    return FdInfo(pos=pos, flags=flags, mnt_id=mnt_id, ino=ino, extra=extra)


@dataclass(frozen=True, slots=True)
class FileLock:
    """One lock or lease, as a line of /proc/locks or an fdinfo "lock:" line prints it.

    Both come from lock_get_status() in fs/locks.c::

        ID: [-> ]KIND [STATE...] ACCESS PID MAJ:MIN:INO START END

    ``kind`` is "POSIX" (fcntl/lockf record locks), "OFDLCK" (open file
    description locks), "FLOCK", "LEASE", "DELEG" (an NFS delegation) or
    "ACCESS"/"UNKNOWN"; ``state`` the words between kind and access
    ("ADVISORY", "ACTIVE", "BREAKING", ...).  ``access`` is "READ", "WRITE" or
    "UNLCK" (a lease being broken).  ``pid`` is -1 for OFD locks, which no
    process owns.  ``end`` is inclusive, None for "EOF" (to the end of the
    file, whatever it grows to); leases and flocks print "0 EOF".  ``blocked``
    marks a request waiting for the lock above it (/proc/locks only, "->").
    A line too short to parse keeps its text in ``kind`` so that no lock is
    ever dropped.
    """

    kind: str
    state: str = ""
    access: str = ""
    pid: int = 0
    dev: str = ""
    ino: int = 0
    start: int = 0
    end: int | None = None
    blocked: bool = False


def _parse_lock_line(line: str) -> FileLock | None:
    words = line.split()
    if words and words[0] == "lock:":
        words = words[1:]  # an fdinfo line given whole
    if not words:
        return None
    if words[0].endswith(":") and words[0][:-1].isdigit():
        words = words[1:]  # the "ID:" counter
    blocked = bool(words) and words[0] == "->"
    if blocked:
        words = words[1:]
    if len(words) < 6:
        return FileLock(kind=" ".join(words) or "UNKNOWN", blocked=blocked)
    access, pid, devino, start, end = words[-5:]
    dev, _, ino = devino.rpartition(":")   # "%02x:%02x:%lu", or "<none>:0" without an inode
    try:
        return FileLock(kind=words[0], state=" ".join(words[1:-5]), access=access, pid=int(pid),
                        dev=dev, ino=int(ino), start=int(start), end=None if end == "EOF" else int(end),
                        blocked=blocked)
    except ValueError:
        return FileLock(kind=" ".join(words), blocked=blocked)


def parse_locks(text: str) -> list[FileLock]:
    """Parse /proc/locks, or the "lock:" lines of an fdinfo file, into :class:`FileLock`.

    On Linux 6.18 the fdinfo of an open file lists every lock and lease held
    through it by this process or on this open file description: show_fd_locks()
    in fs/locks.c walks the inode's flock, posix and lease lists and keeps the
    entries whose file is this one and whose owner is the process's files_struct
    (POSIX) or the open file itself (flock, OFD, leases).  A POSIX lock thus
    appears under the fd it was taken through.
    """
    out = []
    for line in text.split("\n"):
        lock = _parse_lock_line(line)
        if lock is not None:
            out.append(lock)
    return out


@dataclass(frozen=True, slots=True)
class OpenFile:
    """One open descriptor: its /proc/PID/fd link, fdinfo and the stat of the file.

    ``dev``/``ino``/``rdev``/``size``/``mtime_ns``/``mode`` are 0 when the
    stat failed.  Anonymous inodes have no file type bits in ``mode``.
    ``locks`` are the locks and leases held through it (its fdinfo "lock:" lines).
    """

    fd: int
    target: str
    flags: int
    pos: int
    kind: str
    anon_type: str
    deleted: bool
    dev: int
    ino: int
    rdev: int
    size: int
    mtime_ns: int
    mode: int
    locks: tuple[FileLock, ...] = ()


_ANON_PREFIX = "anon_inode:"


def _classify(target: str, mode: int) -> tuple[str, str]:
    # anon_inode_getfd() files have a bare 0600 i_mode (fs/anon_inodes.c), so
    # they are recognised by the link text; the name is "[eventfd]" for most but
    # bare for some ("anon_inode:inotify", "anon_inode:bpf-map").
    if target.startswith(_ANON_PREFIX):
        name = target[len(_ANON_PREFIX):]
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        return "anon", name
    if mode:
        for test, kind in ((stat_mod.S_ISREG, "regular"), (stat_mod.S_ISDIR, "directory"),
                           (stat_mod.S_ISCHR, "chardev"), (stat_mod.S_ISBLK, "blockdev"),
                           (stat_mod.S_ISFIFO, "fifo"), (stat_mod.S_ISSOCK, "socket")):
            if test(mode):
                return kind, ""
    if target.startswith("pipe:["):
        return "fifo", ""
    if target.startswith("socket:["):
        return "socket", ""
    return "other", ""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_text(path: str) -> str:
    return _read_bytes(path).decode("utf-8", "surrogateescape")


def _pid_path(proc_root: str, pid: int, name: str) -> str:
    return f"{proc_root}/{pid}/{name}"


# The last text of each maps file read, with its parse: a process with tens of thousands
# of mappings (JVMs, browsers) costs ~4 us per line to parse, and the layout rarely
# changes between two reads of one dump (the running round, the injector, the frozen
# round).  The kernel's read (fs/proc/task_mmu.c show_map) is paid every time; only an
# identical text reuses the parse.  Bounded: one entry per path, the oldest dropped.
_MAPS_CACHE: dict[str, tuple[bytes, list[Mapping]]] = {}
_MAPS_CACHE_ENTRIES = 16


def read_maps(pid: int, proc_root: str = "/proc") -> list[Mapping]:
    """Read and parse /proc/PID/maps (a new list; its Mapping objects are immutable and
    shared with earlier reads of the same text)."""
    path = _pid_path(proc_root, pid, "maps")
    data = _read_bytes(path)
    hit = _MAPS_CACHE.get(path)
    if hit is not None and hit[0] == data:
        return list(hit[1])
    maps = parse_maps(data.decode("utf-8", "surrogateescape"))
    _MAPS_CACHE.pop(path, None)
    if len(_MAPS_CACHE) >= _MAPS_CACHE_ENTRIES:
        del _MAPS_CACHE[next(iter(_MAPS_CACHE))]
    _MAPS_CACHE[path] = (data, maps)
    return list(maps)


def read_smaps(pid: int, proc_root: str = "/proc") -> list[Mapping]:
    """Read and parse /proc/PID/smaps."""
    return parse_smaps(_read_text(_pid_path(proc_root, pid, "smaps")))


def read_status(pid: int, proc_root: str = "/proc") -> Status:
    """Read and parse /proc/PID/status."""
    return parse_status(_read_text(_pid_path(proc_root, pid, "status")))


def read_stat(pid: int, proc_root: str = "/proc") -> Stat:
    """Read and parse /proc/PID/stat."""
    return parse_stat(_read_text(_pid_path(proc_root, pid, "stat")))


def start_time(pid: int, proc_root: str = "/proc") -> int:
    """Start time of PID in clock ticks after boot (stat field 22).

    A (pid, start_time) pair identifies a process across pid reuse.
    """
    return read_stat(pid, proc_root).start_time


def list_threads(pid: int, proc_root: str = "/proc") -> list[int]:
    """Sorted thread ids of PID, from /proc/PID/task."""
    return sorted(int(name) for name in os.listdir(_pid_path(proc_root, pid, "task")))


def read_children(pid: int, proc_root: str = "/proc") -> list[int]:
    """Sorted pids of the children of PID (of every thread of it).

    Each thread's /proc/PID/task/TID/children (children_seq_show() in
    fs/proc/array.c, CONFIG_PROC_CHILDREN) lists the processes whose parent is
    that very thread, so a child forked by a non-leader thread appears only
    there.  Without that file, every process of /proc whose stat ppid is PID
    (the parent's tgid) is one.
    """
    children: set[int] = set()
    for tid in list_threads(pid, proc_root):
        try:
            text = _read_text(_pid_path(proc_root, pid, f"task/{tid}/children"))
        except (FileNotFoundError, ProcessLookupError):   # ESRCH: exited between open and read
            if not os.path.exists(_pid_path(proc_root, pid, f"task/{tid}")):
                continue  # the thread exited meanwhile
            return _children_by_ppid(pid, proc_root)
        children.update(int(word) for word in text.split())
    return sorted(children)


def _children_by_ppid(pid: int, proc_root: str) -> list[int]:
    found = []
    for name in os.listdir(proc_root):
        if name.isdigit():
            try:
                if read_stat(int(name), proc_root).ppid == pid:
                    found.append(int(name))
            except (OSError, ValueError):
                continue  # exited meanwhile
    return sorted(found)


def list_fds(pid: int, proc_root: str = "/proc") -> list[int]:
    """Sorted open descriptor numbers of PID, from /proc/PID/fd."""
    return sorted(int(name) for name in os.listdir(_pid_path(proc_root, pid, "fd")))


def read_fdinfo(pid: int, fd: int, proc_root: str = "/proc") -> FdInfo:
    """Read and parse /proc/PID/fdinfo/FD."""
    return parse_fdinfo(_read_text(_pid_path(proc_root, pid, f"fdinfo/{fd}")))


def read_open_files(pid: int, proc_root: str = "/proc") -> list[OpenFile]:
    """Describe every open descriptor of PID, sorted by fd.

    A descriptor closed between the directory listing and its readlink or
    fdinfo read is skipped; if the process itself has gone the
    ``FileNotFoundError`` is raised.  A failing stat of the open file (dead
    network mount, ...) yields zeros rather than an error.
    """
    fd_dir = _pid_path(proc_root, pid, "fd")
    result: list[OpenFile] = []
    for fd in list_fds(pid, proc_root):
        link = f"{fd_dir}/{fd}"
        try:
            target = os.readlink(link)
            info = read_fdinfo(pid, fd, proc_root)
        except FileNotFoundError:
            # Either this fd was closed (skip it) or the process exited: the
            # stat of the fd directory tells them apart and raises for the latter.
            os.stat(fd_dir)
            continue
        try:
            st = os.stat(link)  # follows the magic link to the open file itself
            dev, ino, rdev, size = st.st_dev, st.st_ino, st.st_rdev, st.st_size
            mtime_ns, mode = st.st_mtime_ns, st.st_mode
        except OSError:
            dev = ino = rdev = size = mtime_ns = mode = 0
        kind, anon_type = _classify(target, mode)
        result.append(OpenFile(
            fd=fd, target=target, flags=info.flags, pos=info.pos, kind=kind,
            anon_type=anon_type, deleted=target.endswith(_DELETED_SUFFIX), dev=dev,
            ino=ino, rdev=rdev, size=size, mtime_ns=mtime_ns, mode=mode,
            locks=tuple(parse_locks(info.extra.get("lock", ""))),
        ))
    return result


# auxv is an array of (unsigned long a_type, unsigned long a_val) pairs ending
# with AT_NULL, copied raw from mm->saved_auxv (proc_pid_auxv() in fs/proc/base.c).
_AUXV_ENTRY = struct.Struct("@LL")
AT_NULL = 0


def parse_auxv(data: bytes) -> list[tuple[int, int]]:
    """Split raw /proc/PID/auxv into (type, value) pairs, stopping at AT_NULL."""
    pairs: list[tuple[int, int]] = []
    usable = len(data) - len(data) % _AUXV_ENTRY.size
    for a_type, a_val in _AUXV_ENTRY.iter_unpack(data[:usable]):
        if a_type == AT_NULL:
            break
        pairs.append((a_type, a_val))
    return pairs


def read_auxv(pid: int, proc_root: str = "/proc") -> bytes:
    """Raw bytes of /proc/PID/auxv, as the kernel gives them."""
    return _read_bytes(_pid_path(proc_root, pid, "auxv"))


# Row labels printed by proc_pid_limits() (lnames[] in fs/proc/base.c), in
# RLIMIT_* order, mapped to the names used by the resource module.
_LIMIT_NAMES: dict[str, str] = {
    "Max cpu time": "RLIMIT_CPU",
    "Max file size": "RLIMIT_FSIZE",
    "Max data size": "RLIMIT_DATA",
    "Max stack size": "RLIMIT_STACK",
    "Max core file size": "RLIMIT_CORE",
    "Max resident set": "RLIMIT_RSS",
    "Max processes": "RLIMIT_NPROC",
    "Max open files": "RLIMIT_NOFILE",
    "Max locked memory": "RLIMIT_MEMLOCK",
    "Max address space": "RLIMIT_AS",
    "Max file locks": "RLIMIT_LOCKS",
    "Max pending signals": "RLIMIT_SIGPENDING",
    "Max msgqueue size": "RLIMIT_MSGQUEUE",
    "Max nice priority": "RLIMIT_NICE",
    "Max realtime priority": "RLIMIT_RTPRIO",
    "Max realtime timeout": "RLIMIT_RTTIME",
}

# Resource numbers from include/uapi/asm-generic/resource.h (x86 and arm64 use
# the generic order, which is also the row order above).  Python's resource
# module has no RLIMIT_LOCKS, so a restorer needs this table for setrlimit.
RLIMIT_NUMBERS: dict[str, int] = {name: i for i, name in enumerate(_LIMIT_NAMES.values())}


def parse_limits(text: str) -> dict[str, tuple[int, int]]:
    """Parse /proc/PID/limits into {"RLIMIT_X": (soft, hard)}.

    "unlimited" becomes :data:`resource.RLIM_INFINITY`.
    """
    def value(word: str) -> int:
        return resource.RLIM_INFINITY if word == "unlimited" else int(word)

    limits: dict[str, tuple[int, int]] = {}
    for line in text.split("\n"):
        for label, name in _LIMIT_NAMES.items():
            # Labels are printed "%-25s " so the label is followed by a space.
            if line.startswith(label + " "):
                words = line[len(label):].split()
                limits[name] = (value(words[0]), value(words[1]))
                break
    return limits


def read_limits(pid: int, proc_root: str = "/proc") -> dict[str, tuple[int, int]]:
    """Read and parse /proc/PID/limits."""
    return parse_limits(_read_text(_pid_path(proc_root, pid, "limits")))


def read_comm(pid: int, tid: int | None = None, proc_root: str = "/proc") -> str:
    """The comm of PID (or of its thread TID), without the trailing newline."""
    name = "comm" if tid is None else f"task/{tid}/comm"
    text = _read_text(_pid_path(proc_root, pid, name))
    return text[:-1] if text.endswith("\n") else text


def read_cwd(pid: int, proc_root: str = "/proc") -> str:
    """The working directory of PID (readlink of /proc/PID/cwd)."""
    return os.readlink(_pid_path(proc_root, pid, "cwd"))


def read_exe(pid: int, proc_root: str = "/proc") -> str:
    """The executable of PID (readlink of /proc/PID/exe)."""
    return os.readlink(_pid_path(proc_root, pid, "exe"))


def read_root(pid: int, proc_root: str = "/proc") -> str:
    """The root directory of PID (readlink of /proc/PID/root)."""
    return os.readlink(_pid_path(proc_root, pid, "root"))


def read_personality(pid: int, proc_root: str = "/proc") -> int:
    """The personality(2) word of PID (/proc/PID/personality is "%08x")."""
    return int(_read_text(_pid_path(proc_root, pid, "personality")), 16)


def read_timers(pid: int, proc_root: str = "/proc") -> list[PosixTimer]:
    """The POSIX timers of PID (/proc/PID/timers, CONFIG_CHECKPOINT_RESTORE; [] without it)."""
    try:
        return parse_timers(_read_text(_pid_path(proc_root, pid, "timers")))
    except FileNotFoundError:
        if os.path.exists(_pid_path(proc_root, pid, "")):
            return []
        raise


def read_oom_score_adj(pid: int, proc_root: str = "/proc") -> int:
    """/proc/PID/oom_score_adj (-1000..1000, per process: signal->oom_score_adj)."""
    return int(_read_text(_pid_path(proc_root, pid, "oom_score_adj")))


def read_loginuid(pid: int, proc_root: str = "/proc") -> int | None:
    """/proc/PID/loginuid (4294967295: unset); None on kernels without CONFIG_AUDIT."""
    try:
        return int(_read_text(_pid_path(proc_root, pid, "loginuid")))
    except FileNotFoundError:
        if os.path.exists(_pid_path(proc_root, pid, "")):
            return None
        raise


def has_capability(cap: int) -> bool:
    """Whether this process has capability ``cap`` in its effective set."""
    return bool(read_status(os.getpid()).cap_eff >> cap & 1)


def read_coredump_filter(pid: int, proc_root: str = "/proc") -> int | None:
    """/proc/PID/coredump_filter (the MMF_DUMP_* bits of mm->flags, hex); None on kernels
    built without CONFIG_ELF_CORE."""
    try:
        return int(_read_text(_pid_path(proc_root, pid, "coredump_filter")), 16)
    except FileNotFoundError:
        if os.path.exists(_pid_path(proc_root, pid, "")):
            return None
        raise


def read_ksm_merge_any(pid: int, proc_root: str = "/proc") -> bool | None:
    """Whether PR_SET_MEMORY_MERGE made every mapping of PID mergeable (MMF_VM_MERGE_ANY):
    the ``ksm_merge_any`` line of /proc/PID/ksm_stat (fs/proc/base.c proc_pid_ksm_stat,
    Linux 6.9); None without CONFIG_KSM or on kernels that do not show it."""
    try:
        text = _read_text(_pid_path(proc_root, pid, "ksm_stat"))
    except FileNotFoundError:
        if os.path.exists(_pid_path(proc_root, pid, "")):
            return None
        raise
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "ksm_merge_any":
            return value.strip() == "yes"
    return None


def read_cmdline(pid: int, proc_root: str = "/proc") -> list[str]:
    """The argument vector of PID; [] for kernel threads and zombies.

    A process that rewrote its argument area may leave no trailing NUL; the
    last argument is then whatever follows the last NUL.
    """
    text = _read_text(_pid_path(proc_root, pid, "cmdline"))
    if not text:
        return []
    args = text.split("\0")
    if args[-1] == "":
        args.pop()
    return args


def page_size() -> int:
    """The system page size in bytes."""
    return os.sysconf("SC_PAGE_SIZE")

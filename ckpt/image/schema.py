"""The records of ``meta.ckpt`` described as data, and checked once when it is opened.

Images are data an attacker may have edited: the CRC of ``meta.ckpt`` is no
protection (anyone can recompute it).  Every field a reader uses is described
here with its type and its range; :func:`check_meta` refuses a body that breaks
one of them with a :class:`SchemaError` naming the field::

    state.threads[1].regs.rip is str 'x', expected u64

and :func:`ckpt.image.format.decode_meta` turns that into a ``CorruptImage``
naming the checkpoint.  Past it, readers (restore, dump, inspect) may index the
metadata without checks of their own: no ``KeyError``, no ``struct.error``, no
register that is not a u64, no signal number outside 1..64.

The vocabulary is small: :class:`Int`, :class:`Float`, :class:`Bool`,
:class:`Str`, :class:`Name`, :class:`Bin`, :class:`Siginfo`,
:class:`RangeBytes`, :class:`Nullable`, :class:`OneOf`, :class:`ListOf`,
:class:`Fixed`, :class:`MapOf`, :class:`Version`, :class:`AnyValue`,
:class:`Record` (a msgpack map with named fields and cross-field rules) and
:class:`Chosen` (one of several records, by a key of the map: the file record
of its kind, the task state of its version).
Names the kernel gives (paths, thread names) are stored as bin when they are
not UTF-8 and handed back to readers as str (:meth:`Type.build`).  There is one :class:`Record` per image record,
each documented in docs/FORMAT.md §2.

The records of ``state`` are declared once, as record classes (:func:`record`:
frozen dataclasses whose fields are :func:`spec` calls); ``cls.RECORD`` is
their :class:`Record`, and readers get instances (:meth:`Type.build`, after the
check), writers make them.  To add a field: one :func:`spec` line in its class
(one :class:`Field` line in a record without a class) and one row in the
document (``tests/test_badinput.py`` checks that every record and field is
documented, and that a real dump writes no key this module does not describe).

Unknown keys are accepted and ignored, at every level.  FORMAT.md §7 lets a
newer writer add an optional key without a new format version, and an older
reader must still read the image.  Ignoring is safe because no reader touches a
key that is not described here (so never one left unchecked); a change that an
older reader must not ignore (a new meaning, a field that must be restored)
changes the format version, or ``state.version``, which readers refuse when it
is newer than theirs.

Bounds come from the kernel where it has one (cited at each constant); the
others (how many VMAs, ranges, fds) are generous sanity limits, so that a
crafted ``meta.ckpt`` cannot make a reader loop or allocate without bound.
"""

from __future__ import annotations

import math
import operator
import os
import re
import socket
import struct
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, dataclass_transform

from ckpt import ranges

__all__ = [
    "PAGE_SIZE", "KINDS", "VMA_KINDS", "FILE_KINDS", "CODEC_ZSTD", "CODEC_NONE", "TASK_STATE_VERSION",
    "FILES_MODEL_VERSION", "MM_FLAGS_VERSION", "FILE_RECORDS", "TASK_STATE",
    "SchemaError", "NewerVersion", "Type", "Field", "Record", "Rec", "record", "spec",
    "State", "Thread", "Regs", "Rseq", "RobustList", "Sigaltstack", "InSyscall", "Sched", "Mm", "ExeStat",
    "Identity", "Sigaction", "Process", "Creds", "Child", "Itimers", "Itimer", "PosixTimer", "SeccompFilter",
    "Target", "Tracking", "Fd", "FdV1", "Object", "Vma", "at_restore",
    "Lock", "Fown", "File", "RegularFile", "ChardevFile", "UnsupportedFile", "EventfdFile", "SignalfdFile", "TimerfdFile",
    "InotifyFile", "InotifyWatch", "EpollFile", "EpollTarget", "PipeFile", "InetFile", "InetAddress",
    "TcpConnection", "MemfdFile", "UnixFile", "UnixMessage", "TtyFile",
    "META", "VMA", "STATE", "RECORDS", "check_meta", "undescribed",
]

PAGE_SIZE = 4096
KINDS = ("pre", "full", "incremental")
VMA_KINDS = ("anon", "file-private", "file-shared", "shmem", "special", "device")
FILE_KINDS = ("file-private", "file-shared")  # kinds whose backing content is a file
CODEC_ZSTD = "zstd"
CODEC_NONE = "none"  # compression level 0: frames stored raw, checked by crc32 only
# state["version"]: ckpt.taskstate writes this one.  3: timers, scheduling, timer slack,
# prctl flags, oom_score_adj and loginuid; 4: seccomp filters and mm flags (guard regions,
# mlockall, membarrier) -- each of which a reader of the version before would drop unseen;
# 5: file objects (memfds, deleted files); 6: parent-death signal, CPU affinity, I/O
# priority and credentials per thread, securebits, MDWE, KSM merge-any, coredump_filter,
# session, process group and controlling terminal.
TASK_STATE_VERSION = 6
FILES_MODEL_VERSION = 2  # the first with state["files"] (open files apart from the fd table)
MM_FLAGS_VERSION = 4     # the first with mm.guard, mm.mlockall and mm.membarrier

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
I32_MAX = (1 << 31) - 1
PATH_MAX = 4096            # include/uapi/linux/limits.h, the NUL included
NGROUPS_MAX = 65536        # include/uapi/linux/limits.h; setgroups() refuses more
PID_MAX_LIMIT = 1 << 22    # include/linux/threads.h (64-bit): no pid, and so no tid, above it
NSIG = 64                  # _NSIG, arch/x86/include/uapi/asm/signal.h: signals are 1..64
SIGKILL, SIGSTOP = 9, 19   # rt_sigaction() refuses both (kernel/signal.c do_sigaction)
SIGINFO_SIZE = 128         # SI_MAX_SIZE, include/uapi/asm-generic/siginfo.h
FPREGS_SIZE = 512          # struct user_i387_struct, arch/x86/include/asm/user_64.h
MAX_XSTATE = 1 << 16       # the NT_X86_XSTATE buffer ckpt reads (AMX makes ~11 KiB)
# mm->saved_auxv holds AT_VECTOR_SIZE longs (400 bytes on 6.18 x86-64) and
# PR_SET_MM_MAP refuses a longer vector (kernel/sys.c prctl_set_mm_map).
MAX_AUXV = 4096
MAX_COMM = 64              # TASK_COMM_LEN is 16; /proc/PID/comm of kernel workers is up to 64
MAX_FD = (1 << 31) - 1     # fd numbers are ints (fs/file.c sysctl_nr_open_max <= INT_MAX)
MAX_FDS = 1 << 22          # open fds per process: 4 x the NR_OPEN default of nr_open
MAX_VMAS = 1 << 22         # 64 x vm.max_map_count's default (DEFAULT_MAX_MAP_COUNT, 65530)
MAX_THREADS = PID_MAX_LIMIT
MAX_PENDING = 1 << 20      # queued siginfos per queue (RLIMIT_SIGPENDING bounds a real one)
MAX_TIMERS = 1 << 20       # POSIX timers per process (each holds an RLIMIT_SIGPENDING slot)
MAX_LOCKS = 1 << 20        # locks per open file (RLIMIT_LOCKS was enforced only by 2.4.0-2.4.24)
MAX_RANGES = 1 << 26       # ranges per range-array: 1 GiB of metadata each
MAX_TEXT = 1 << 24         # informational strings (cmdline words, reasons): 16 MiB
MAX_WORDS = 1 << 22        # informational lists (cmdline)
BPF_MAXINSNS = 4096        # include/uapi/linux/bpf_common.h: instructions of one classic BPF program
SOCK_FILTER_SIZE = 8       # struct sock_filter
# A thread's filters hold at most MAX_INSNS_PER_PATH (32768) instructions plus 4
# per filter (kernel/seccomp.c seccomp_attach_filter): at most 6553 filters per
# chain; the tree of every thread's chains is bounded generously above that.
MAX_SECCOMP_FILTERS = 1 << 20

# struct user_regs_struct (arch/x86/include/asm/user_64.h): the image's register
# record uses its field names (tests check they are ckpt._sys.ptrace.REG_NAMES).
REG_NAMES = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)


class SchemaError(ValueError):
    """A field of ``meta.ckpt`` breaks its schema; ``str()`` is ``"<field path> <problem>"``.

    Raised with the path relative to the value being checked; each enclosing
    record, array or map prefixes its part on the way up (:meth:`within`), so
    that nothing builds path strings while the values are good.
    """

    def __init__(self, problem: str, path: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path

    def within(self, part: str) -> SchemaError:
        """Prefix ``part`` (a key, or ``[i]``) to the path; return self, to re-raise."""
        self.path = part + self.path if not self.path or self.path[0] in "[ " else f"{part}.{self.path}"
        return self

    def __str__(self) -> str:
        return f"{self.path or 'the body'} {self.problem}"


class NewerVersion(SchemaError):
    """A version field is newer than this ckpt reads (not corruption: upgrade ckpt)."""


def _what(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.40}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# -- the vocabulary --------------------------------------------------------------------------


class Type:
    """A msgpack value's type and range.  ``check`` raises SchemaError; ``str()`` documents it."""

    def check(self, value: Any) -> None:
        raise NotImplementedError

    def all_valid(self, values: list[Any]) -> bool:
        """A fast verdict for a whole array of scalars: True if every value is valid
        (False: unknown, check one by one)."""
        return False

    def undescribed(self, value: Any, path: str) -> Iterator[str]:
        """Paths of the keys inside ``value`` that no record describes (ignored by readers)."""
        return iter(())

    def wire(self, value: Any, encode: bool) -> Any:
        """``value`` as stored (``encode``) or as readers get it: the same, except names
        that are not UTF-8 (see :class:`Name`); a value of the wrong type is left as it is."""
        return value

    # True when readers get the msgpack value as it is (:meth:`build` is the identity).
    plain: ClassVar[bool] = True

    def build(self, value: Any) -> Any:
        """The value readers get for a ``value`` that passed :meth:`check`: records as
        their classes (:func:`record`), arrays as tuples, names as str."""
        return value


@dataclass(frozen=True)
class Int(Type):
    """An integer in ``lo..hi`` (a bool is not one)."""

    lo: int
    hi: int
    name: str = ""

    def check(self, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"is {_what(value)}, expected {self}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(f"is {value}, outside {self}")

    def all_valid(self, values: list[Any]) -> bool:
        return all(type(v) is int for v in values) and (not values or self.lo <= min(values)
                                                        and max(values) <= self.hi)

    def __str__(self) -> str:
        return self.name or f"int {self.lo}..{self.hi}"


U32 = Int(0, U32_MAX, "u32")
U64 = Int(0, U64_MAX, "u64")
I32 = Int(-(1 << 31), (1 << 31) - 1, "i32")
I64 = Int(I64_MIN, I64_MAX, "i64")
PID = Int(1, PID_MAX_LIMIT - 1, f"pid 1..{PID_MAX_LIMIT - 1}")
SIGNAL = Int(1, NSIG, f"signal 1..{NSIG}")


@dataclass(frozen=True)
class Float(Type):
    """A number in ``lo..hi`` (msgpack float or int; not nan)."""

    lo: float
    hi: float

    def check(self, value: Any) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise SchemaError(f"is {_what(value)}, expected a finite number")
        if not self.lo <= value <= self.hi:
            raise SchemaError(f"is {value}, outside {self}")

    def __str__(self) -> str:
        return f"float {self.lo:g}..{self.hi:g}"


# Seconds since the epoch of a checkpoint: after 1970 and before the year 3058
# (time.localtime() overflows on some values a float can hold).
TIME = Float(0, 1 << 35)


@dataclass(frozen=True)
class Bool(Type):
    def check(self, value: Any) -> None:
        if not isinstance(value, bool):
            raise SchemaError(f"is {_what(value)}, expected bool")

    def __str__(self) -> str:
        return "bool"


@dataclass(frozen=True)
class Str(Type):
    """Text of at most ``max_len`` characters, without NUL (readers pass names to the
    kernel, which would cut them at the first NUL)."""

    max_len: int

    def check(self, value: Any) -> None:
        if not isinstance(value, str):
            raise SchemaError(f"is {_what(value)}, expected str")
        if len(value) > self.max_len:
            raise SchemaError(f"is a str of {len(value)} characters, longer than {self.max_len}")
        if "\0" in value:
            raise SchemaError(f"contains a NUL byte: {value!r:.60}")

    def all_valid(self, values: list[Any]) -> bool:
        # Each distinct text once (the same few flags and kinds in every VMA).
        if not all(type(v) is str for v in values):
            return False
        return all(len(v) <= self.max_len and "\0" not in v for v in set(values))

    def wire(self, value: Any, encode: bool) -> Any:
        # Text for people (a reason, a kind): bytes that are not UTF-8 (undecodable
        # /proc text, kept as surrogates) are stored as \udcXX escapes.
        if encode and isinstance(value, str) and not _utf8(value):
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value

    def __str__(self) -> str:
        return f"str (<= {self.max_len})"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Name(Type):
    """Bytes the kernel names something with (a path, a thread name, an argument).

    Stored as str when they are UTF-8, else as bin (msgpack str must be UTF-8);
    readers get str either way (bin decoded with surrogateescape, as Python's
    os functions do), so that the exact bytes go back to the kernel.  No NUL
    byte (the kernel would stop there; ``os.open`` raises), at most
    ``max_bytes`` bytes; may be empty.
    """

    max_bytes: int
    what: str = "name"

    def check(self, value: Any) -> None:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            raw = value.encode("utf-8", "surrogateescape")
        else:
            raise SchemaError(f"is {_what(value)}, expected {self}")
        if b"\0" in raw:
            raise SchemaError(f"contains a NUL byte: {value!r:.60}")
        if len(raw) > self.max_bytes:
            limit = f"PATH_MAX is {PATH_MAX}" if self.max_bytes == PATH_MAX - 1 else f"the limit is {self.max_bytes}"
            raise SchemaError(f"is a {self.what} of {len(raw)} bytes, {limit}")

    def wire(self, value: Any, encode: bool) -> Any:
        if encode and isinstance(value, str) and not _utf8(value):
            return os.fsencode(value)
        if not encode and isinstance(value, bytes):
            return os.fsdecode(value)
        return value

    def all_valid(self, values: list[Any]) -> bool:
        # Each distinct name once (a process maps few files, in many VMAs).
        if not all(type(v) is str for v in values):
            return False
        return all(len(v.encode("utf-8", "surrogateescape")) <= self.max_bytes and "\0" not in v
                   for v in set(values))

    plain: ClassVar[bool] = False

    def build(self, value: Any) -> Any:
        return os.fsdecode(value) if isinstance(value, bytes) else value

    def __str__(self) -> str:
        return f"{self.what} (str or bin, <= {self.max_bytes} bytes)"


PATH = Name(PATH_MAX - 1, "path")


@dataclass(frozen=True)
class Bin(Type):
    """Raw bytes, ``min_len..max_len`` long, a multiple of ``unit``."""

    min_len: int
    max_len: int
    unit: int = 1

    def check(self, value: Any) -> None:
        if not isinstance(value, bytes):
            raise SchemaError(f"is {_what(value)}, expected bin")
        if not self.min_len <= len(value) <= self.max_len or len(value) % self.unit:
            raise SchemaError(f"is {len(value)} bytes, expected {self}")

    def __str__(self) -> str:
        size = f"{self.min_len}" if self.min_len == self.max_len else f"{self.min_len}..{self.max_len}"
        unit = f", a multiple of {self.unit}" if self.unit > 1 else ""
        return f"bin ({size} bytes{unit})"


@dataclass(frozen=True)
class Siginfo(Type):
    """One queued signal: a 128-byte ``siginfo_t`` whose ``si_signo`` is 1..64."""

    def check(self, value: Any) -> None:
        Bin(SIGINFO_SIZE, SIGINFO_SIZE).check(value)
        signo = struct.unpack_from("<i", value)[0]
        if not 1 <= signo <= NSIG:
            raise SchemaError(f"is a siginfo for signal {signo}, outside 1..{NSIG}")

    def __str__(self) -> str:
        return f"siginfo (bin, {SIGINFO_SIZE} bytes)"


@dataclass(frozen=True)
class RangeBytes(Type):
    """A page-aligned range-array (FORMAT.md §2, "Binary arrays")."""

    def check(self, value: Any) -> None:
        Bin(0, MAX_RANGES * 16, 16).check(value)
        try:
            decoded = ranges.from_bytes(value)
        except ValueError as err:
            raise SchemaError(str(err)) from None
        if any(s % PAGE_SIZE or e % PAGE_SIZE for s, e in decoded):
            raise SchemaError("holds ranges that are not page-aligned")

    def __str__(self) -> str:
        return "bin (range-array)"


@dataclass(frozen=True)
class Nullable(Type):
    inner: Type

    def check(self, value: Any) -> None:
        if value is not None:
            self.inner.check(value)

    def all_valid(self, values: list[Any]) -> bool:
        return self.inner.all_valid([v for v in values if v is not None])

    def undescribed(self, value: Any, path: str) -> Iterator[str]:
        return self.inner.undescribed(value, path) if value is not None else iter(())

    def wire(self, value: Any, encode: bool) -> Any:
        return None if value is None else self.inner.wire(value, encode)

    @property
    def plain(self) -> bool:  # type: ignore[override]
        return self.inner.plain

    def build(self, value: Any) -> Any:
        return None if value is None else self.inner.build(value)

    def __str__(self) -> str:
        return f"{self.inner} or nil"


@dataclass(frozen=True)
class OneOf(Type):
    """One of a few str values."""

    values: tuple[str, ...]

    def check(self, value: Any) -> None:
        if value not in self.values or not isinstance(value, str):
            raise SchemaError(f"is {_what(value)}, expected one of {', '.join(self.values)}")

    def all_valid(self, values: list[Any]) -> bool:
        try:
            distinct = set(values)
        except TypeError:   # an array or map among them
            return False
        return all(type(v) is str for v in distinct) and distinct <= set(self.values)

    def __str__(self) -> str:
        return " | ".join(f'"{v}"' for v in self.values)


@dataclass(frozen=True)
class ListOf(Type):
    """An array of ``min_len..max_len`` items of one type."""

    item: Type
    max_len: int
    min_len: int = 0

    def check(self, value: Any) -> None:
        if not isinstance(value, list):
            raise SchemaError(f"is {_what(value)}, expected an array of {self.item}")
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(f"has {len(value)} items, expected {self.min_len}..{self.max_len}")
        if self.item.all_valid(value):
            return
        for i, item in enumerate(value):
            try:
                self.item.check(item)
            except SchemaError as err:
                raise err.within(f"[{i}]")

    def all_valid(self, values: list[Any]) -> bool:
        # An array of arrays of scalars (a VMA's flags): one flat column of their items.
        if not all(type(v) is list and self.min_len <= len(v) <= self.max_len for v in values):
            return False
        try:
            # VMAs share a few sets of flags.  Keyed with each item's type: 1, 1.0 and True
            # are equal in Python, and only the first of equal keys would reach the check.
            distinct = {tuple((type(x), x) for x in v) for v in values}
        except TypeError:   # items that are arrays or maps: one by one
            return self.item.all_valid([item for v in values for item in v])
        return self.item.all_valid([item for key in distinct for _, item in key])

    def undescribed(self, value: Any, path: str) -> Iterator[str]:
        for i, item in enumerate(value):
            yield from self.item.undescribed(item, f"{path}[{i}]")

    def wire(self, value: Any, encode: bool) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        item = self.item
        if encode and isinstance(item, Record) and len(value) > 64:
            fast = item.wire_records(value)   # a checkpoint's VMA records: by column
            if fast is not None:
                return fast
        return [item.wire(x, encode) for x in value]

    plain: ClassVar[bool] = False

    def build(self, value: Any) -> Any:
        item = self.item
        if item.plain:
            return tuple(value)
        if isinstance(item, Record) and item.cls is not None and item._all_plain is not None:  # type: ignore[attr-defined]
            # Records of plain fields (the fd table): made in this loop, without a call per item.
            cls, keys, build = item.cls, item._all_plain, item.build  # type: ignore[attr-defined]
            return tuple([cls(**v) if v.keys() <= keys else build(v) for v in value])
        build = item.build
        return tuple([build(v) for v in value])

    def __str__(self) -> str:
        return f"array of {self.item} (<= {self.max_len})"


@dataclass(frozen=True)
class Fixed(Type):
    """An array of exactly ``len(items)`` values, each of its own type (a tuple)."""

    items: tuple[Type, ...]

    def check(self, value: Any) -> None:
        if not isinstance(value, list) or len(value) != len(self.items):
            raise SchemaError(f"is {_what(value)}, expected {self}")
        for i, (item, kind) in enumerate(zip(value, self.items)):
            try:
                kind.check(item)
            except SchemaError as err:
                raise err.within(f"[{i}]")

    def wire(self, value: Any, encode: bool) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(self.items):
            return value
        return [kind.wire(item, encode) for item, kind in zip(value, self.items)]

    plain: ClassVar[bool] = False

    def build(self, value: Any) -> Any:
        return tuple([kind.build(item) for item, kind in zip(value, self.items)])

    def __str__(self) -> str:
        return f"[{', '.join(map(str, self.items))}]"


@dataclass(frozen=True)
class MapOf(Type):
    """A map of at most ``max_len`` entries, keys and values each of one type."""

    key: Type
    value: Type
    max_len: int

    def check(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise SchemaError(f"is {_what(value)}, expected a map")
        if len(value) > self.max_len:
            raise SchemaError(f"has {len(value)} entries, more than {self.max_len}")
        for k, v in value.items():
            try:
                self.key.check(k)
            except SchemaError as err:
                raise SchemaError(f"key {k!r:.40} {err.problem}") from None
            try:
                self.value.check(v)
            except SchemaError as err:
                raise err.within(f"[{k!r:.40}]")

    def undescribed(self, value: Any, path: str) -> Iterator[str]:
        for k, v in value.items():
            yield from self.value.undescribed(v, f"{path}[{k!r:.40}]")

    def wire(self, value: Any, encode: bool) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: self.value.wire(v, encode) for k, v in value.items()}

    @property
    def plain(self) -> bool:  # type: ignore[override]
        return self.value.plain

    def build(self, value: Any) -> Any:
        return value if self.value.plain else {k: self.value.build(v) for k, v in value.items()}

    def __str__(self) -> str:
        return f"map {self.key} -> {self.value}"


@dataclass(frozen=True)
class AnyValue(Type):
    """Anything msgpack can hold (informational fields no reader interprets)."""

    def check(self, value: Any) -> None:
        pass

    def __str__(self) -> str:
        return "any"


@dataclass(frozen=True)
class Version(Type):
    """A format version: ``1..current`` is read; newer raises :class:`NewerVersion`."""

    current: int

    def check(self, value: Any) -> None:
        Int(1, U32_MAX).check(value)
        if value > self.current:
            raise NewerVersion(f"is {value}, newer than this ckpt reads ({self.current}); upgrade ckpt")

    def __str__(self) -> str:
        return f"int 1..{self.current}"


Rule = Callable[[dict[Any, Any]], None]
_ABSENT = object()   # a key a record lacks (Record.all_valid)


@dataclass(frozen=True)
class Field:
    """One key of a record: its type, whether readers need it, and what it means."""

    type: Type
    doc: str = ""
    required: bool = True


@dataclass(frozen=True)
class Record(Type):
    """A msgpack map with str keys: named fields, then rules across them.

    Keys not in ``fields`` are ignored (see the module docstring).  A rule is
    ``rule(record)`` and raises SchemaError with a path relative to the record;
    it runs once every field has been checked, so it may index fields without
    guarding types.

    ``cls`` is the record class readers get (:func:`record` declares both at
    once); without one (the records of ``meta.ckpt`` outside ``state``) readers
    get the map.
    """

    name: str
    fields: dict[str, Field]
    rules: tuple[Rule, ...] = ()
    doc: str = ""
    cls: type | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        # The keys whose values readers get as msgpack gives them (no build call per value).
        plain = frozenset(k for k, f in self.fields.items() if f.type.plain)
        object.__setattr__(self, "_all_plain", plain if len(plain) == len(self.fields) else None)
        # The others, each with the build of its type (a file record has three: target, mnt_id, locks).
        object.__setattr__(self, "_builds", tuple((k, f.type.build) for k, f in self.fields.items()
                                                  if not f.type.plain))
        object.__setattr__(self, "_keys", frozenset(self.fields))

    plain: ClassVar[bool] = False

    def build(self, value: Any) -> Any:
        if self.cls is None:
            return self.wire(value, encode=False)
        if isinstance(value, Rec):
            return value   # made by a dump already (Rec.of): its nested records are built
        all_plain = self._all_plain  # type: ignore[attr-defined]
        if all_plain is not None and value.keys() <= all_plain:
            return self.cls(**value)   # the common case of small records (fd entries): no copy
        keys = self._keys  # type: ignore[attr-defined]
        out = dict(value) if value.keys() <= keys else {k: v for k, v in value.items() if k in keys}
        for key, build in self._builds:  # type: ignore[attr-defined]
            if key in out:
                out[key] = build(out[key])
        return self.cls(**out)

    def all_valid(self, values: list[Any]) -> bool:
        """An array of these records checked field by field, as columns (a checkpoint's
        20,000 VMA records: a tenth of the time of a check per record).  False when a
        field's type has no fast verdict or a value is wrong: :meth:`check` then walks
        the records one by one and names the first bad one."""
        if not values or not all(type(v) is dict for v in values):
            return not values
        keys = tuple(self.fields)
        try:   # every record has every key (what today's dumps write): the columns in one pass
            columns: Iterable[Sequence[Any]] = zip(*map(operator.itemgetter(*keys), values)) \
                if len(keys) > 1 else [[v[keys[0]] for v in values]]
        except KeyError:
            columns = ([v.get(key, _ABSENT) for v in values] for key in keys)
        for (key, spec), column in zip(self.fields.items(), columns):
            present = [x for x in column if x is not _ABSENT] if _ABSENT in column else column
            if spec.required and len(present) != len(column):
                return False
            if not spec.type.all_valid(present):   # type: ignore[arg-type]
                return False
        try:
            for rule in self.rules:
                bulk = getattr(rule, "bulk", None)
                if bulk is not None:
                    if not bulk(values):
                        return False
                else:
                    for v in values:
                        rule(v)
        except SchemaError:   # check() names the record
            return False
        return True

    def check(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise SchemaError(f"is {_what(value)}, expected a map ({self.name} record)")
        for key, spec in self.fields.items():
            if key in value:
                try:
                    spec.type.check(value[key])
                except SchemaError as err:
                    raise err.within(key)
            elif spec.required:
                raise SchemaError("is missing", key)
        for rule in self.rules:
            rule(value)

    def undescribed(self, value: Any, path: str) -> Iterator[str]:
        for key, item in value.items():
            spec = self.fields.get(key) if isinstance(key, str) else None
            if spec is None:
                yield _join(path, repr(key) if not isinstance(key, str) else key)
            else:
                yield from spec.type.undescribed(item, _join(path, key))

    def wire(self, value: Any, encode: bool) -> Any:
        if isinstance(value, Rec):
            # A field left at None that the type does not allow to be nil is one
            # not recorded: its key is left out (readers get None back).
            out = {}
            for key, spec in self.fields.items():
                item = getattr(value, key)
                if item is not None or isinstance(spec.type, Nullable):
                    out[key] = spec.type.wire(item, encode)
            return out
        if not isinstance(value, dict):
            return value
        return {key: self.fields[key].type.wire(item, encode) if key in self.fields else item
                for key, item in value.items()}

    def wire_records(self, values: Sequence[Any]) -> list[dict[str, Any]] | None:
        """:meth:`wire` (encode) of many instances of ``cls`` at once, for records whose
        fields are all stored as they are (numbers, kinds, UTF-8 texts and names, arrays
        of those: each distinct text looked at once); None when one is not (a name that
        is not UTF-8, a field left at None that is then left out): :meth:`wire` each."""
        keys = tuple(self.fields)
        if self.cls is None or len(keys) < 2 or not all(type(v) is self.cls for v in values):
            return None
        rows = list(map(operator.attrgetter(*keys), values))
        for spec, column in zip(self.fields.values(), zip(*rows)):
            kind = spec.type.inner if isinstance(spec.type, Nullable) else spec.type
            if kind is not spec.type:
                column = tuple(v for v in column if v is not None)
            elif None in column:
                return None
            if isinstance(kind, ListOf) and type(kind.item).wire is Type.wire:
                continue
            if isinstance(kind, ListOf) and isinstance(kind.item, Str):
                column = tuple({x for v in column for x in v})
                kind = kind.item
            if type(kind).wire is Type.wire:
                continue
            if not isinstance(kind, (Str, Name)) or not all(_utf8(v) for v in set(column) if isinstance(v, str)):
                return None
        return [dict(zip(keys, row)) for row in rows]

    def __str__(self) -> str:
        return f"{self.name} (map)"


# -- record classes: one declaration gives the schema record and the class readers get --------


def spec(type: Type, doc: str = "", *, default: Any = dataclasses.MISSING) -> Any:
    """One field of a record class (:func:`record`): its schema type, what it means (the
    row of docs/FORMAT.md), and, for a field images may lack, the value readers get then.
    A field without a default is required: an image without it is refused on open."""
    metadata = {"type": type, "doc": doc}
    if isinstance(default, dict):  # a map: one per record, not one shared by all
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def at_restore(doc: str) -> Any:
    """A field of a record class that no image holds: a restore sets it (with
    ``dataclasses.replace``) from what its user asked (``--shell-job`` makes a terminal
    the one ckpt runs in).  It is not in ``cls.RECORD``: never written, never read from
    an image (an image's key of that name is ignored as any unknown key is), False
    until the restore sets it, and not compared by ``==``."""
    return dataclasses.field(default=False, metadata={"at_restore": True, "doc": doc})


class Rec:
    """Base of the record classes (:func:`record`): frozen, keyword-only, one attribute per field."""

    __slots__ = ()
    RECORD: ClassVar[Record]   # the schema record, derived from the fields

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Any:
        """The record of ``fields``, a map as a dump collects them: a key the record does
        not declare is a ``TypeError`` (a field is added to the schema, not to a map), a
        nested map becomes its record and an array a tuple, as a reader would get them."""
        unknown = fields.keys() - cls.RECORD.fields.keys()
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
        return cls.RECORD.build(fields)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a map (one level: nested records stay records)."""
        return {key: getattr(self, key) for key in self.RECORD.fields}

    # One __repr__, __eq__ and __hash__ for every record class, rather than a copy of each
    # generated per class: making them costs a dataclass about a third of its import time.
    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, key) for key in self.RECORD.fields])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.RECORD.fields)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))


R = TypeVar("R", bound=type[Rec])


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(spec,))
def record(name: str, *rules: Rule, doc: str = "") -> Callable[[R], R]:
    """Declare a record of ``meta.ckpt`` as a class whose fields are :func:`spec` calls::

        @record("itimer", doc="getitimer(2), in microseconds")
        class Itimer(Rec):
            value_us: int = spec(U64, "time left (0: disarmed)")
            interval_us: int = spec(U64, "reload value (0: once)")

    The class becomes a frozen, keyword-only dataclass with slots (so no field can
    be written that it does not declare: ``TypeError`` at the dump that tries);
    ``cls.RECORD`` is its :class:`Record`, which checks an image's map on open
    (``rules`` run on the map, after its fields) and builds the instance readers get.
    """
    def wrap(cls: R) -> R:
        made = dataclasses.dataclass(frozen=True, kw_only=True, slots=True, repr=False, eq=False)(cls)
        fields = {}
        for f in dataclasses.fields(made):
            if f.metadata.get("at_restore"):
                continue   # set by a restore, never in an image (at_restore)
            if "type" not in f.metadata:
                raise TypeError(f"{made.__name__}.{f.name} is not declared with spec()")
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields[f.name] = Field(f.metadata["type"], f.metadata["doc"], required)
        made.RECORD = Record(name, fields, rules, doc, made)
        return made
    return wrap


# -- the records of `state` (ckpt.taskstate and ckpt.dump write them) -------------------------



@record("regs", doc="struct user_regs_struct of x86-64, by field name (fs_base/gs_base hold the TLS)")
class Regs(Rec):
    r15: int = spec(U64)
    r14: int = spec(U64)
    r13: int = spec(U64)
    r12: int = spec(U64)
    rbp: int = spec(U64)
    rbx: int = spec(U64)
    r11: int = spec(U64)
    r10: int = spec(U64)
    r9: int = spec(U64)
    r8: int = spec(U64)
    rax: int = spec(U64)
    rcx: int = spec(U64)
    rdx: int = spec(U64)
    rsi: int = spec(U64)
    rdi: int = spec(U64)
    orig_rax: int = spec(U64)
    rip: int = spec(U64)
    cs: int = spec(U64)
    eflags: int = spec(U64)
    rsp: int = spec(U64)
    ss: int = spec(U64)
    fs_base: int = spec(U64)
    gs_base: int = spec(U64)
    ds: int = spec(U64)
    es: int = spec(U64)
    fs: int = spec(U64)
    gs: int = spec(U64)


@record("rseq", doc="PTRACE_GET_RSEQ_CONFIGURATION")
class Rseq(Rec):
    pointer: int = spec(U64, "address of the registered struct rseq (0: none)")
    size: int = spec(U32, "its size")
    signature: int = spec(U32, "the abort signature")
    flags: int = spec(U32, "registration flags")


@record("robust_list")
class RobustList(Rec):
    head: int = spec(U64, "address of the robust-futex list head (0: none)")
    len: int = spec(U64, "its length, as get_robust_list() gives it")


@record("sigaltstack", doc="stack_t of sigaltstack(2)")
class Sigaltstack(Rec):
    sp: int = spec(U64)
    flags: int = spec(I32, "SS_DISABLE (2), SS_ONSTACK (1), SS_AUTODISARM")
    size: int = spec(U64)


@record("in_syscall", doc="informational: restore recomputes it from regs")
class InSyscall(Rec):
    nr: int = spec(Int(0, I64_MAX), "orig_rax: the syscall the thread was in")
    result: int = spec(I64, "rax as a signed value (-ERESTART* when interrupted)")


@record("sched", doc="sched_getattr(2) of the thread (runtime: a fair thread's slice; the three: SCHED_DEADLINE's)")
class Sched(Rec):
    policy: int = spec(Int(0, 7), "SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5, DEADLINE 6, EXT 7")
    flags: int = spec(U64, "sched_flags (SCHED_FLAG_RESET_ON_FORK 1)")
    nice: int = spec(Int(-20, 19), "getpriority(): kept under RT and deadline policies too")
    priority: int = spec(Int(0, 99), "sched_priority (RT policies)")
    runtime: int = spec(U64)
    deadline: int = spec(U64)
    period: int = spec(U64)
    util_min: int = spec(U32, "utilization clamp (CONFIG_UCLAMP_TASK; 0 without)", default=0)
    util_max: int = spec(U32, "utilization clamp (1024 by default; 0 without uclamp)", default=0)


def _fpregs_size(thread: dict[str, Any]) -> None:
    size = len(thread.get("fpregs", b""))
    if size not in (0, FPREGS_SIZE):
        raise SchemaError(f"is {size} bytes, expected 0 or {FPREGS_SIZE}", "fpregs")



SECCOMP_MODE = Int(0, 2, "int 0..2 (0 none, 1 strict, 2 filter)")
MAX_CPUS = 8192   # CONFIG_NR_CPUS at most (arch/x86/Kconfig NR_CPUS_RANGE_END)


@record("creds", doc="from /proc/PID/status")
class Creds(Rec):
    uids: tuple[int, int, int, int] = spec(Fixed((U32, U32, U32, U32)), "real, effective, saved, filesystem")
    gids: tuple[int, int, int, int] = spec(Fixed((U32, U32, U32, U32)), "real, effective, saved, filesystem")
    groups: tuple[int, ...] = spec(ListOf(U32, NGROUPS_MAX), "supplementary groups")
    cap_inh: int = spec(U64)
    cap_prm: int = spec(U64)
    cap_eff: int = spec(U64)
    cap_bnd: int = spec(U64)
    cap_amb: int = spec(U64, default=0)
    no_new_privs: int | None = spec(Int(0, 1), default=None)
    seccomp: int = spec(Int(0, 2), "0 none, 1 strict, 2 filter", default=0)


MAX_CGROUP_HIERARCHIES = 64   # v1 hierarchies: CGROUP_SUBSYS_COUNT controllers plus named ones
CGROUPS = ListOf(Fixed((Int(0, U32_MAX, "hierarchy id"), Str(MAX_TEXT), PATH)), MAX_CGROUP_HIERARCHIES)


@record("thread", _fpregs_size)
class Thread(Rec):
    tid: int = spec(PID, "thread id at dump time")
    regs: Regs = spec(Regs.RECORD)
    sigmask: int = spec(U64, "blocked signals, bit N-1 for signal N")
    clear_child_tid: int = spec(U64, "set_tid_address() value")
    robust_list: RobustList = spec(RobustList.RECORD)
    xstate: bytes = spec(Bin(0, MAX_XSTATE), "NT_X86_XSTATE regset (empty when the kernel has none)", default=b"")
    fpregs: bytes = spec(Bin(0, FPREGS_SIZE), f"NT_PRFPREG regset, 0 or {FPREGS_SIZE} bytes", default=b"")
    rseq: Rseq | None = spec(Nullable(Rseq.RECORD), "nil when the kernel cannot tell", default=None)
    sigaltstack: Sigaltstack | None = spec(Sigaltstack.RECORD, default=None)
    comm: str = spec(Name(MAX_COMM), "thread name", default="")
    in_syscall: InSyscall | None = spec(Nullable(InSyscall.RECORD), "nil when not in a syscall", default=None)
    pending: tuple[bytes, ...] = spec(ListOf(Siginfo(), MAX_PENDING), "signals queued to this thread", default=())
    sched: Sched | None = spec(Sched.RECORD, default=None)
    timer_slack_ns: int | None = spec(U64, "PR_GET_TIMERSLACK (0 for RT threads)", default=None)
    no_new_privs: int | None = spec(Int(0, 1), "this thread's no_new_privs (per thread since Linux 3.5)",
                                    default=None)
    seccomp_mode: int | None = spec(SECCOMP_MODE, "this thread's seccomp mode (absent: an older ckpt recorded "
                                    "the leader's only, creds.seccomp)", default=None)
    seccomp_filter: int | None = spec(Nullable(Int(0, MAX_SECCOMP_FILTERS - 1)),
                                      "index in process.seccomp_filters of its newest filter; nil without one "
                                      "(or when they could not be read)", default=None)
    pdeathsig: int = spec(Int(0, NSIG), "PR_GET_PDEATHSIG: the signal sent at the parent's death (0: none)",
                          default=0)
    cpu_affinity: tuple[int, ...] = spec(ListOf(Int(0, MAX_CPUS - 1), MAX_CPUS),
                                         "sched_getaffinity(2): the CPUs it may run on", default=())
    ioprio: int | None = spec(Nullable(Int(0, 0xFFFF)), "ioprio_get(IOPRIO_WHO_PROCESS, tid): class << 13 | level "
                              "(0: none set); nil when unknown", default=None)
    creds: Creds | None = spec(Nullable(Creds.RECORD), "this thread's credentials when they are not the process's "
                               "(the leader's); nil: the same", default=None)
    cgroups: tuple[tuple[int, str, str], ...] | None = spec(
        Nullable(CGROUPS), "/proc/PID/task/TID/cgroup when it is not the process's; nil: the same", default=None)


MNT_ID = Nullable(U64)  # statx STATX_MNT_ID_UNIQUE (Linux 6.8); nil when the kernel has none


@record("exe_stat", doc="stat of /proc/PID/exe at dump time; empty when it failed")
class ExeStat(Rec):
    dev: int | None = spec(U64, default=None)
    ino: int | None = spec(U64, default=None)
    size: int | None = spec(I64, default=None)
    mtime_ns: int | None = spec(I64, default=None)
    mnt_id: int | None = spec(MNT_ID, "unique mount id of the executable (same boot only)", default=None)


@record("identity", doc="the file a path led to at dump time (ckpt/trust.py); empty when it could not be read")
class Identity(Rec):
    dev: int | None = spec(U64, default=None)
    ino: int | None = spec(U64, default=None)
    mnt_id: int | None = spec(MNT_ID, "unique mount id (same boot only)", default=None)


@record("mm", doc="the fields of prctl(PR_SET_MM_MAP) (struct prctl_mm_map), /proc/PID/stat names, and what "
                  "else belongs to the address space")
class Mm(Rec):
    start_code: int = spec(U64)
    end_code: int = spec(U64)
    start_data: int = spec(U64)
    end_data: int = spec(U64)
    start_brk: int = spec(U64)
    brk: int = spec(U64)
    start_stack: int = spec(U64)
    arg_start: int = spec(U64)
    arg_end: int = spec(U64)
    env_start: int = spec(U64)
    env_end: int = spec(U64)
    auxv: bytes = spec(Bin(0, MAX_AUXV), "raw /proc/PID/auxv")
    exe: str | None = spec(PATH, "readlink of /proc/PID/exe", default=None)
    exe_stat: ExeStat | None = spec(ExeStat.RECORD, default=None)
    guard: bytes | None = spec(Nullable(RangeBytes()), "guard regions (MADV_GUARD_INSTALL); nil when the kernel "
                               "cannot report them (no PAGE_IS_GUARD)", default=None)
    mlockall: int | None = spec(Nullable(Int(0, 7)), "MCL_FUTURE (2) | MCL_ONFAULT (4) when mlockall() locks "
                                "every new mapping, 0 when not; nil when unknown", default=None)
    membarrier: int | None = spec(Nullable(U32), "MEMBARRIER_CMD_GET_REGISTRATIONS: the REGISTER_* commands the "
                                  "process ran; nil when unknown", default=None)
    membarrier_unreadable: str = spec(Str(MAX_TEXT), "why membarrier is nil", default="")


@record("sigaction", doc="struct kernel_sigaction")
class Sigaction(Rec):
    handler: int = spec(U64, "SIG_DFL 0, SIG_IGN 1, or the handler's address")
    flags: int = spec(U64, "SA_* flags")
    restorer: int = spec(U64)
    mask: int = spec(U64)


RLIMIT = Int(-1, U64_MAX, "rlim (-1: unlimited)")


@record("child", doc="a child of one of the threads (a restore makes one process: any child makes it unrestorable)")
class Child(Rec):
    pid: int = spec(PID)
    comm: str = spec(Name(MAX_COMM), '"?" when it exited meanwhile', default="?")


@record("itimer", doc="getitimer(2), in microseconds")
class Itimer(Rec):
    value_us: int = spec(U64, "time left (0: disarmed); CPU time for virtual and prof")
    interval_us: int = spec(U64, "reload value (0: once)")


@record("itimers")
class Itimers(Rec):
    real: Itimer = spec(Itimer.RECORD, "ITIMER_REAL (alarm)")
    virtual: Itimer = spec(Itimer.RECORD, "ITIMER_VIRTUAL")
    prof: Itimer = spec(Itimer.RECORD, "ITIMER_PROF")


SIGEV_THREAD_ID = 4


def _notify_value(timer: dict[str, Any]) -> None:
    if timer["notify"] not in (0, 1, 2, SIGEV_THREAD_ID):
        raise SchemaError(f"is {timer['notify']}, not SIGEV_SIGNAL 0, NONE 1, THREAD 2 or THREAD_ID 4", "notify")


@record("posix_timer", _notify_value, doc="a POSIX timer: /proc/PID/timers and timer_gettime(2)")
class PosixTimer(Rec):
    id: int = spec(Int(0, I32_MAX), "the timer_t")
    clock: int = spec(I32, "clockid (negative: a CPU-time clock, or a clock device)")
    notify: int = spec(Int(0, SIGEV_THREAD_ID), "sigev_notify")
    signal: int = spec(Int(0, NSIG), "sigev_signo")
    sigval: int = spec(U64, "sigev_value")
    notify_pid: int = spec(Int(0, PID_MAX_LIMIT - 1), "the process signalled, or the thread (SIGEV_THREAD_ID)")
    value_ns: int = spec(U64, "time left (0: disarmed), from timer_gettime(2)")
    interval_ns: int = spec(U64, "reload value (0: once)")


def _unique_timer_ids(process: dict[str, Any]) -> None:
    _unique(process.get("posix_timers", []), "id", "posix_timers", "POSIX timers")


@record("seccomp_filter", doc="one seccomp filter; threads whose chains share a filter share its entry")
class SeccompFilter(Rec):
    insns: bytes = spec(Bin(SOCK_FILTER_SIZE, BPF_MAXINSNS * SOCK_FILTER_SIZE, SOCK_FILTER_SIZE),
                        "the classic BPF program (struct sock_filter[]), as PTRACE_SECCOMP_GET_FILTER gives it")
    flags: int = spec(U32, "SECCOMP_FILTER_FLAG_LOG (2) from PTRACE_SECCOMP_GET_METADATA; other bits are refused")
    prev: int | None = spec(Nullable(Int(0, MAX_SECCOMP_FILTERS - 1)),
                            "index of the filter installed before it in the same threads (an earlier entry); nil "
                            "for the first")


@record("process", _unique_timer_ids)
class Process(Rec):
    cwd: str = spec(PATH, "readlink of /proc/PID/cwd")
    creds: Creds = spec(Creds.RECORD)
    pid: int | None = spec(PID, default=None)
    comm: str | None = spec(Name(MAX_COMM), default=None)
    cmdline: tuple[str, ...] = spec(ListOf(Name(MAX_TEXT, "word"), MAX_WORDS), "informational", default=())
    root: str | None = spec(PATH, "readlink of /proc/PID/root", default=None)
    cwd_id: Identity | None = spec(Identity.RECORD, "the directory cwd led to", default=None)
    root_id: Identity | None = spec(Identity.RECORD, "the directory root led to", default=None)
    boot_id: str | None = spec(Str(64), "/proc/sys/kernel/random/boot_id at dump time", default=None)
    dumpable: int | None = spec(Nullable(Int(0, 2)), "PR_GET_DUMPABLE; nil when not recorded", default=None)
    umask: int | None = spec(Nullable(Int(0, 0o777)), "nil on kernels that do not show it", default=None)
    personality: int = spec(U32, default=0)
    rlimits: dict[str, tuple[int, int]] = spec(MapOf(Str(64), Fixed((RLIMIT, RLIMIT)), 64),
                                               '"RLIMIT_NOFILE" -> [soft, hard]', default={})
    sig_pending_shared: int = spec(U64, "ShdPnd of /proc/PID/status", default=0)
    pending: tuple[bytes, ...] = spec(ListOf(Siginfo(), MAX_PENDING), "signals queued to the process", default=())
    children: tuple[Child, ...] = spec(ListOf(Child.RECORD, MAX_THREADS), "children of every thread", default=())
    itimers: Itimers | None = spec(Itimers.RECORD, default=None)
    posix_timers: tuple[PosixTimer, ...] = spec(ListOf(PosixTimer.RECORD, MAX_TIMERS), "every POSIX timer",
                                                default=())
    oom_score_adj: int | None = spec(Int(-1000, 1000), "/proc/PID/oom_score_adj", default=None)
    loginuid: int | None = spec(Nullable(U32), "/proc/PID/loginuid (4294967295: unset); nil without audit",
                                default=None)
    child_subreaper: int = spec(Int(0, 1), "PR_GET_CHILD_SUBREAPER", default=0)
    thp_disable: int | None = spec(Int(0, 3), "PR_GET_THP_DISABLE: 0, 1, or 3 (1 | PR_THP_DISABLE_EXCEPT_ADVISED)",
                                   default=None)
    seccomp_filters: tuple[SeccompFilter, ...] = spec(
        ListOf(SeccompFilter.RECORD, MAX_SECCOMP_FILTERS),
        "every thread's seccomp filters, as a tree (threads[].seccomp_filter)", default=())
    seccomp_unreadable: str = spec(Str(MAX_TEXT), "why the filters of a thread in filter mode were not read",
                                   default="")
    securebits: int = spec(U32, "PR_GET_SECUREBITS of the leader (SECBIT_* of include/uapi/linux/securebits.h)",
                           default=0)
    mdwe: int | None = spec(Nullable(U32), "PR_GET_MDWE: PR_MDWE_REFUSE_EXEC_GAIN 1 | PR_MDWE_NO_INHERIT 2; nil "
                            "when the kernel has no MDWE", default=None)
    ksm_merge_any: bool | None = spec(Nullable(Bool()), "PR_GET_MEMORY_MERGE (/proc/PID/ksm_stat ksm_merge_any); "
                                      "nil when unknown", default=None)
    coredump_filter: int | None = spec(Nullable(U32), "/proc/PID/coredump_filter; nil without CONFIG_ELF_CORE",
                                       default=None)
    session: int | None = spec(I32, "its session id (/proc/PID/stat field 6)", default=None)
    pgid: int | None = spec(I32, "its process group id (/proc/PID/stat field 5)", default=None)
    tty_nr: int | None = spec(U32, "its controlling terminal's device (/proc/PID/stat field 7); 0: none",
                              default=None)
    timens_own: bool | None = spec(Nullable(Bool()), "it runs in another time namespace than the dumping ckpt "
                                   "(/proc/PID/ns/time); nil: unknown", default=None)
    timens_children: bool | None = spec(Nullable(Bool()), "/proc/PID/ns/time_for_children is not its own time "
                                        "namespace (unshare CLONE_NEWTIME); nil: unknown", default=None)
    cgroups: tuple[tuple[int, str, str], ...] = spec(
        CGROUPS, "/proc/PID/cgroup: [hierarchy id, controllers (\"\" for v2), path] per hierarchy", default=())


REGS, RSEQ, ROBUST_LIST, SIGALTSTACK, IN_SYSCALL, SCHED = (
    Regs.RECORD, Rseq.RECORD, RobustList.RECORD, Sigaltstack.RECORD, InSyscall.RECORD, Sched.RECORD)
THREAD, EXE_STAT, IDENTITY, MM, SIGACTION, CREDS, CHILD = (
    Thread.RECORD, ExeStat.RECORD, Identity.RECORD, Mm.RECORD, Sigaction.RECORD, Creds.RECORD, Child.RECORD)
ITIMER, ITIMERS, POSIX_TIMER, SECCOMP_FILTER, PROCESS = (
    Itimer.RECORD, Itimers.RECORD, PosixTimer.RECORD, SeccompFilter.RECORD, Process.RECORD)


OFFSET = Int(0, I64_MAX, "file offset")  # loff_t, at most OFFSET_MAX (LLONG_MAX)


@record("lock", doc="a lock or lease held through an fd: an fdinfo 'lock:' line (fs/locks.c lock_get_status)")
class Lock(Rec):
    kind: str = spec(Str(MAX_TEXT), '"POSIX", "OFDLCK", "FLOCK", "LEASE", "DELEG", ... (an unparsed line whole)')
    state: str | None = spec(Str(256), '"ADVISORY", "ACTIVE", "BREAKING", ...', default=None)
    access: str | None = spec(Str(16), '"READ", "WRITE" or "UNLCK"', default=None)
    pid: int | None = spec(Int(-1, PID_MAX_LIMIT - 1), "owner; -1 for OFD locks", default=None)
    start: int = spec(OFFSET, default=0)
    end: int | None = spec(Nullable(OFFSET), "inclusive; nil for EOF", default=None)


LOCK = Lock.RECORD


@record("fown", doc="who gets an open file's I/O signals: F_SETOWN_EX, F_SETSIG (ckpt/files/fown.py)")
class Fown(Rec):
    type: str = spec(OneOf(("tid", "pid", "pgrp")), 'F_GETOWN_EX: "tid" (F_OWNER_TID, one thread), "pid" '
                     '(F_OWNER_PID, a process), "pgrp" (F_OWNER_PGRP, a process group)')
    id: int = spec(Int(0, PID_MAX_LIMIT - 1), "the owner's tid, pid or process group id (0: none, or it exited)")
    uid: int = spec(U32, "real uid of whoever set the owner (F_GETOWNER_UIDS): a signal reaches only an owner "
                    "this uid or euid may signal (fs/fcntl.c sigio_perm)")
    euid: int = spec(U32, "effective uid of whoever set the owner (F_GETOWNER_UIDS)")
    signal: int = spec(Int(0, NSIG, f"signal 0..{NSIG}"), "F_GETSIG: the signal sent in place of SIGIO (0: SIGIO)")


FOWN = Fown.RECORD

# -- open files (ckpt/files): the fd table and the open file descriptions it points at --------

FILE_ID = Int(1, MAX_FDS, f"file id 1..{MAX_FDS}")


@record("file", doc="an open file of a kind this ckpt does not know (a newer one wrote it): never restored")
class File(Rec):
    """An open file description: the fields every file record has, whatever its kind (what
    fdinfo and fstat give for any open file).  The record of each kind (``FILE_RECORDS``) is
    a subclass that adds the kind's own fields; a dump makes one with :meth:`Rec.of`."""

    id: int = spec(FILE_ID, "this open file's id; fds refer to it")
    kind: str = spec(Str(64), "which module of ckpt/files recorded it and restores it")
    target: str = spec(PATH, "readlink of /proc/PID/fd/N (for a regular file, its path)")
    flags: int = spec(U32, "f_flags: access mode and status flags (fdinfo, without O_CLOEXEC)")
    pos: int = spec(I64, "file position (fdinfo)")
    mode: int = spec(U32, "st_mode of the open file (0 if its stat failed)")
    dev: int = spec(U64, "stat of the open file (0 if it failed)")
    ino: int = spec(U64, "stat of the open file (0 if it failed)")
    rdev: int = spec(U64, "stat of the open file (0 if it failed)")
    mnt_id: int | None = spec(MNT_ID, "unique mount id of the open file (same boot only)", default=None)
    locks: tuple[Lock, ...] = spec(ListOf(LOCK, MAX_LOCKS), "locks and leases held through it", default=())
    fown: Fown | None = spec(Nullable(FOWN), "its signal owner and signal (O_ASYNC, SIGURG); nil: none set",
                             default=None)


FILE = File.RECORD


@record("file_regular", doc='kinds "regular" and "directory": reopened by path (ckpt/files/regular.py)')
class RegularFile(File):
    size: int = spec(I64, "st_size at dump time (informational)")
    mtime_ns: int = spec(I64, "st_mtime_ns at dump time (informational)")


@record("file_chardev", doc='kind "chardev": a character device reopened by path (ckpt/files/chardev.py)')
class ChardevFile(File):
    pass


@record("file_unsupported", doc='kind "unsupported": recorded so that restore refuses it by name '
                                '(ckpt/files/unsupported.py)')
class UnsupportedFile(File):
    type: str = spec(Str(64), '"regular", "directory", "chardev", "blockdev", "fifo", "socket", "anon", "other"')
    anon_type: str = spec(Str(256), 'the anon inode\'s name ("eventfd", ...; "" for others)')
    deleted: bool = spec(Bool(), "the file was unlinked")


@record("file_eventfd", doc='kind "eventfd": made anew with its count (ckpt/files/eventfd.py)')
class EventfdFile(File):
    count: int = spec(Int(0, U64_MAX - 1, "u64 0..2^64-2"), "the counter (eventfd_write refuses more)")
    semaphore: bool = spec(Bool(), "EFD_SEMAPHORE: a read takes 1, not the whole count")


@record("file_signalfd", doc='kind "signalfd": made anew with its mask (ckpt/files/signalfd.py)')
class SignalfdFile(File):
    sigmask: int = spec(U64, "the signals it reads, bit N-1 for signal N (fdinfo sigmask)")


NSEC_I64 = Int(0, I64_MAX, "ns 0..2^63-1")


@record("file_timerfd", doc='kind "timerfd": made anew, armed as it was (ckpt/files/timerfd.py)')
class TimerfdFile(File):
    clockid: int = spec(Int(0, 15, "clock id 0..15"), "its clock (fdinfo clockid; a restore accepts 0, 1, 7, 8, 9)")
    ticks: int = spec(U64, "expirations not read yet")
    settime_flags: int = spec(Int(0, 3, "0..3"), "TFD_TIMER_ABSTIME (1), TFD_TIMER_CANCEL_ON_SET (2)")
    value_ns: int = spec(NSEC_I64, "time left before the next expiration (0: disarmed, or a one-shot that expired)")
    interval_ns: int = spec(NSEC_I64, "the period (0: one-shot)")
    clock_ns: int = spec(I64, "its clock's reading right after value_ns was (absolute expiry: the sum)")


MAX_WATCHES = 1 << 22   # per instance: 4 x a generous fs.inotify.max_user_watches


def _watches_unique(record: dict[str, Any]) -> None:
    seen: set[int] = set()
    for i, watch in enumerate(record["watches"]):
        if watch["wd"] in seen:
            raise SchemaError(f"is {watch['wd']} again", f"watches[{i}].wd")
        seen.add(watch["wd"])


@record("inotify_watch", doc="one watch of an inotify instance")
class InotifyWatch(Rec):
    wd: int = spec(Int(1, (1 << 31) - 1, "watch descriptor 1..2^31-1"), "its number; unique in the instance")
    mask: int = spec(U32, "the mask it keeps: events, IN_ONESHOT, IN_EXCL_UNLINK (fdinfo mask)")
    dev: int = spec(U64, "st_dev of the watched inode")
    ino: int = spec(U64, "its st_ino")
    mnt_id: int | None = spec(MNT_ID, "the mount path led through (same boot only)")
    mode: int = spec(U32, "st_mode of the watched inode (0: unknown)")
    path: str | None = spec(Nullable(PATH), "a path that led to it without a symlink at dump; nil when none was found")
    unresolved: str = spec(Str(MAX_TEXT), "why no path was found ('' when path is set)")


INOTIFY_WATCH = InotifyWatch.RECORD


@record("file_inotify", _watches_unique,
        doc='kind "inotify": made anew, its watches added again by path (ckpt/files/inotify.py)')
class InotifyFile(File):
    watches: tuple[InotifyWatch, ...] = spec(ListOf(INOTIFY_WATCH, MAX_WATCHES), "every watch, by wd")
    queued: int = spec(Int(0, I64_MAX), "bytes of events queued and not read at dump (FIONREAD)")


MAX_EPOLL_TARGETS = MAX_FDS   # registrations per epoll instance (fs.epoll.max_user_watches bounds a real one)


def _one_registration_per_key(record: dict[str, Any]) -> None:
    """The kernel keys a registration by (file, fd number): one of each (fs/eventpoll.c ep_find)."""
    seen: set[tuple[int, Any]] = set()
    for i, target in enumerate(record["targets"]):
        key = (target["fd"], target["file"])
        if target["file"] is not None and key in seen:
            raise SchemaError(f"registers open file {target['file']} under fd {target['fd']} again", f"targets[{i}]")
        seen.add(key)


@record("epoll_target", doc="one registration of an epoll instance: an fdinfo 'tfd:' line "
                            "(fs/eventpoll.c ep_show_fdinfo)")
class EpollTarget(Rec):
    fd: int = spec(Int(0, MAX_FD), "the fd number the registration is keyed by: its file's when it was registered")
    file: int | None = spec(Nullable(FILE_ID), "the id of the open file it watches; nil: open at no fd of the "
                            "process")
    events: int = spec(U32, "the events mask (EPOLLIN, ..., EPOLLET, EPOLLONESHOT; private bits only once an "
                       "EPOLLONESHOT registration has fired)")
    data: int = spec(U64, "the epoll_data the process gave")
    ino: int = spec(U64, "inode of the watched file (fdinfo; informational)")
    dev: int = spec(U64, "st_dev of the watched file's filesystem (fdinfo sdev; informational)")


EPOLL_TARGET = EpollTarget.RECORD


@record("file_epoll", _one_registration_per_key,
        doc='kind "epoll": made anew, registrations after their files (ckpt/files/epoll.py)')
class EpollFile(File):
    targets: tuple[EpollTarget, ...] = spec(ListOf(EPOLL_TARGET, MAX_EPOLL_TARGETS),
                                            "its registrations, in fdinfo order")


PIPE_SIZE = Int(PAGE_SIZE, 1 << 31, "pipe size 4096..2^31")  # fs/pipe.c round_pipe_size: at most 2^31
HOLDERS = ListOf(Fixed((PID, Name(MAX_COMM))), MAX_THREADS)


def _pipe_data(record: dict[str, Any]) -> None:
    data, packets = record["data"], record["packets"]
    if data is not None and len(data) > record["pipe_size"]:
        raise SchemaError(f"is {len(data)} bytes, more than the pipe holds ({record['pipe_size']})", "data")
    if packets is not None and (data is None or sum(packets) != len(data)):
        raise SchemaError("do not add up to the length of data", "packets")


@record("file_pipe", _pipe_data, doc='kinds "pipe" and "fifo": remade, reopened by path for a FIFO '
                                      '(ckpt/files/pipe.py)')
class PipeFile(File):
    pipe_size: int = spec(PIPE_SIZE, "F_GETPIPE_SZ: how many bytes the pipe holds")
    uid: int = spec(U32, "owner of the pipe's inode (restored for an anonymous pipe)")
    gid: int = spec(U32, "group of the pipe's inode")
    data: bytes | None = spec(Nullable(Bin(0, 1 << 31)), "the bytes in the pipe, in the record of its lowest id; "
                              "nil in its other records and when the dump could not copy them")
    packets: tuple[int, ...] | None = spec(Nullable(ListOf(Int(1, PAGE_SIZE), (1 << 31) // PAGE_SIZE)),
                                           "lengths of the packets data holds (O_DIRECT writes); nil for a stream")
    holders: tuple[tuple[int, str], ...] = spec(HOLDERS, "[pid, comm] of other processes with an fd on the pipe")
    hidden: str = spec(OneOf(("", "read", "write")), "an end the process lacks, open elsewhere")
    unscanned: int = spec(U32, "processes whose fds the dump could not read")
    problem: str = spec(Str(MAX_TEXT), "why the dump could not record it exactly (\"\": none)")


U16 = Int(0, 0xFFFF, "u16")
AF_INET, AF_INET6 = 2, 10
MAX_SOCKOPTS = 256         # ckpt/files/sockopts.py reads about 110 options of a TCP/IPv6 socket
IP_OPTIONS_MAX = 40        # MAX_IPOPTLEN, include/net/inet_sock.h
INT_OPTIONS = MapOf(Str(32), I64, MAX_SOCKOPTS)
PAIR_OPTIONS = MapOf(Str(32), Fixed((I32, I32)), MAX_SOCKOPTS)
NAME_OPTIONS = MapOf(Str(32), Str(16), MAX_SOCKOPTS)
SOCK_FILTER = Nullable(Bin(0, BPF_MAXINSNS * 8, 8))


def _inet_address(address: dict[str, Any]) -> None:
    try:
        socket.inet_pton(AF_INET6 if ":" in address["addr"] else AF_INET, address["addr"])
    except OSError:
        raise SchemaError(f"is {address['addr']!r}, not an IPv4 or IPv6 address", "addr") from None


@record("inet_address", _inet_address, doc="a socket address (getsockname, getpeername)")
class InetAddress(Rec):
    addr: str = spec(Str(64), 'IPv4 ("127.0.0.1") or IPv6 ("::1") address, as inet_ntop writes it')
    port: int = spec(U16)
    flowinfo: int | None = spec(U32, "IPv6 only: sin6_flowinfo", default=None)
    scope_id: int | None = spec(U32, "IPv6 only: sin6_scope_id (an interface index for a link-local address)",
                                default=None)


INET_ADDRESS = InetAddress.RECORD


def _inet_families(file: dict[str, Any]) -> None:
    for key in ("local", "peer"):
        address = file[key]
        if address is not None and file["family"] in (AF_INET, AF_INET6) \
                and (":" in address["addr"]) != (file["family"] == AF_INET6):
            raise SchemaError(f"is {address['addr']!r}, not an address of family {file['family']}", key)


MAX_TCP_QUEUE = 1 << 30    # sk_rcvbuf and sk_sndbuf are ints the kernel doubles: below 2 GiB


@record("tcp_connection", doc="an ESTABLISHED TCP connection, read in TCP_REPAIR mode (ckpt/files/tcp_repair.py)")
class TcpConnection(Rec):
    rcv_nxt: int = spec(U32, "next sequence number expected from the peer (TCP_QUEUE_SEQ of the receive queue)")
    write_seq: int = spec(U32, "sequence number after the last byte written (TCP_QUEUE_SEQ of the send queue)")
    inq: bytes = spec(Bin(0, MAX_TCP_QUEUE), "bytes received, not yet read by the process")
    outq: bytes = spec(Bin(0, MAX_TCP_QUEUE), "bytes written, not yet acknowledged by the peer (from snd_una)")
    unsent: int = spec(U32, "how many of the last bytes of outq were never sent (SIOCOUTQNSD)")
    mss_clamp: int = spec(U32, "TCP_MAXSEG in repair mode")
    tcpi_options: int = spec(Int(0, 255), "tcpi_options: 1 timestamps, 2 SACK, 4 window scaling, ...")
    snd_wscale: int = spec(Int(0, 15), "tcpi_snd_wscale")
    rcv_wscale: int = spec(Int(0, 15), "tcpi_rcv_wscale")
    timestamp: int = spec(U32, "TCP_TIMESTAMP")
    window: tuple[int, int, int, int, int] = spec(Fixed((U32, U32, U32, U32, U32)), "TCP_REPAIR_WINDOW: snd_wl1, "
                                                  "snd_wnd, max_window, rcv_wnd, rcv_wup")


TCP_CONNECTION = TcpConnection.RECORD


def _tcp_unsent(file: dict[str, Any]) -> None:
    tcp = file.get("tcp")
    if tcp is not None and tcp["unsent"] > len(tcp["outq"]):
        raise SchemaError(f"is {tcp['unsent']}, more than the {len(tcp['outq'])} bytes of outq", "tcp.unsent")


@record("file_inet", _inet_families, _tcp_unsent,
        doc='kind "inet": a TCP or UDP socket on IPv4 or IPv6 (ckpt/files/inet.py)')
class InetFile(File):
    family: int = spec(U16, "SO_DOMAIN: AF_INET 2 or AF_INET6 10")
    sock_type: int = spec(U16, "SO_TYPE: SOCK_STREAM 1, SOCK_DGRAM 2, ...")
    protocol: int = spec(U16, "SO_PROTOCOL: IPPROTO_TCP 6, IPPROTO_UDP 17, ...")
    state: str = spec(Str(32), 'TCP state ("LISTEN", "CLOSE", "ESTABLISHED", ...); UDP: "ESTABLISHED" when '
                      'connected')
    local: InetAddress | None = spec(Nullable(INET_ADDRESS), "getsockname; port 0 when not bound")
    peer: InetAddress | None = spec(Nullable(INET_ADDRESS), "getpeername; nil when not connected")
    backlog: int = spec(U32, "listening TCP: the listen backlog (sk_max_ack_backlog)")
    accept_queue: int = spec(U32, "listening TCP: connections waiting to be accepted")
    segments: int = spec(U64, "TCP: segments sent and received (tcpi_segs_out + tcpi_segs_in)")
    rqueue: int = spec(U32, "bytes of receive buffer in use (SO_MEMINFO rmem_alloc)")
    wqueue: int = spec(U32, "bytes of send buffer in use (SO_MEMINFO wmem_alloc or wmem_queued)")
    shutdown: int = spec(Int(0, 3), "sk_shutdown: 1 receive, 2 send, 3 both (inet_diag, else poll)")
    error: bool = spec(Bool(), "a pending socket error (POLLERR)")
    uid: int = spec(U32, "owner of the socket inode (the creator's fsuid; sk_uid)")
    gid: int = spec(U32, "group of the socket inode")
    netns: int | None = spec(Nullable(U64), "inode of its network namespace; nil when unknown")
    options: dict[str, int] = spec(INT_OPTIONS, "integer socket options by name (timeouts in µs)")
    pair_options: dict[str, tuple[int, int]] = spec(PAIR_OPTIONS, "two-int socket options by name")
    name_options: dict[str, str] = spec(NAME_OPTIONS, "socket options that are names, by name")
    ip_options: bytes = spec(Bin(0, IP_OPTIONS_MAX), "IP_OPTIONS (IPv4 header options), empty for most")
    filter: bytes | None = spec(SOCK_FILTER, "classic BPF socket filter, 8 bytes per instruction; nil for an eBPF one")
    tcp: TcpConnection | None = spec(Nullable(TCP_CONNECTION), "ESTABLISHED TCP: the connection; nil when it could "
                                     "not be read", default=None)


# -- file objects (ckpt/files/objects.py): memfds and files deleted while open ----------------

MAX_OBJECTS = MAX_FDS + MAX_VMAS   # each is open at an fd or mapped
OBJECT_ID = Int(1, MAX_OBJECTS, f"object id 1..{MAX_OBJECTS}")
MEMFD_NAME_MAX = 249               # mm/memfd.c MFD_NAME_MAX_LEN: NAME_MAX - strlen("memfd:")
SEALS = Int(0, 0x3F, "F_SEAL_* bits (0..0x3f)")   # include/uapi/linux/fcntl.h: SEAL, SHRINK, GROW, WRITE,
                                                   # FUTURE_WRITE, EXEC


def _object_fields(record: dict[str, Any]) -> None:
    name = os.fsencode(record["name"])   # str, or bin when it is not UTF-8
    if record["type"] == "memfd" and len(name) > MEMFD_NAME_MAX:
        raise SchemaError(f"is longer than a memfd name may be ({MEMFD_NAME_MAX} bytes)", "name")
    if record["type"] == "ghost" and not name.startswith(b"/"):
        raise SchemaError("is not an absolute path", "name")
    if record["type"] != "memfd" and (record["seals"] or record["huge_page"]):
        raise SchemaError("are set on a file that is not a memfd", "seals")
    huge = record["huge_page"]
    if huge and (huge & (huge - 1) or huge <= PAGE_SIZE):
        raise SchemaError(f"is {huge}, not a power of two above the page size", "huge_page")


@record("object", _object_fields, doc="a file whose content the checkpoint keeps: a memfd, a file deleted while open")
class Object(Rec):
    id: int = spec(OBJECT_ID, "this object's id; file_memfd records and VMAs refer to it")
    type: str = spec(OneOf(("memfd", "ghost")), '"memfd" (memfd_create) or "ghost" (a file deleted while open)')
    name: str = spec(PATH, "a memfd's name (without \"memfd:\"), a ghost's path when it was unlinked")
    size: int = spec(OFFSET, "st_size")
    mode: int = spec(U32, "st_mode")
    uid: int = spec(U32, "st_uid")
    gid: int = spec(U32, "st_gid")
    atime_ns: int = spec(I64, "st_atime")
    mtime_ns: int = spec(I64, "st_mtime")
    dev: int = spec(U64, "st_dev at dump (informational: a restore makes a new file)")
    ino: int = spec(U64, "st_ino at dump (informational)")
    seals: int = spec(SEALS, "F_GET_SEALS of a memfd (0 for a ghost)")
    huge_page: int = spec(U64, "the huge page size of a hugetlbfs memfd (MFD_HUGETLB); 0 otherwise")
    dir: Identity | None = spec(Nullable(IDENTITY), "a ghost's directory at dump (the path's parent); nil for a "
                                "memfd")
    problem: str = spec(Str(MAX_TEXT), "why its content was not recorded (\"\": it was); a restore refuses it")
    stored_by: int = spec(Int(0, PID_MAX_LIMIT - 1), "0: this checkpoint keeps its content; else the pid of the "
                          "task of the same tree checkpoint whose record of it does (ckpt/files/handdown.py)",
                          default=0)


OBJECT = Object.RECORD


@record("file_memfd", doc='kinds "memfd" and "ghost": an open file of a file object the checkpoint keeps '
                          '(ckpt/files/memfd.py, ghost.py)')
class MemfdFile(File):
    object: int = spec(OBJECT_ID, "the id of its file object (state.objects)")
    problem: str = spec(Str(MAX_TEXT), "the object's problem, repeated (\"\": none)")


SUN_PATH = 108             # sizeof(sun_path), include/uapi/linux/un.h
MAX_UNIX_QUEUE = 1 << 31   # a queue is bounded by its senders' buffers, ints the kernel doubles


def _unix_name(record: dict[str, Any], key: str = "name") -> None:
    name = record[key]
    if name is not None and name[:1] != b"\0" and (b"\0" in name or len(name) > SUN_PATH - 1):
        raise SchemaError("is a path with a NUL byte or longer than sun_path holds", key)


def _unix_record(record: dict[str, Any]) -> None:
    _unix_name(record)
    _unix_name(record, "peer_name")
    if record["link"] in ("pair", "client", "server", "to") and record["peer_file"] is None:
        raise SchemaError(f"is nil for a link {record['link']!r}", "peer_file")
    if record["link"] in ("client", "server") and record["listener_file"] is None:
        raise SchemaError(f"is nil for a link {record['link']!r}", "listener_file")
    if sum(len(m["data"]) for m in record["queue"]) > MAX_UNIX_QUEUE:
        raise SchemaError(f"holds more than {MAX_UNIX_QUEUE} bytes", "queue")


@record("unix_message", doc="one message queued in a unix socket, read with MSG_PEEK (ckpt/files/unix.py)")
class UnixMessage(Rec):
    data: bytes = spec(Bin(0, MAX_UNIX_QUEUE), "the bytes of the message (of a stream: of a run from one writer)")
    sender: int | None = spec(Nullable(FILE_ID), "the open file that sends it again; nil: a new unbound socket (or "
                              "the temporary peer of a closed link)")
    sender_name: bytes | None = spec(Nullable(Bin(1, SUN_PATH)), "datagrams: the sender's name (msg_name); nil: "
                                     "unbound")
    creds: tuple[int, int] | None = spec(Nullable(Fixed((U32, U32))), "[uid, gid] of the SCM_CREDENTIALS it carries "
                                         "(the process's own pid); nil: none")


UNIX_MESSAGE = UnixMessage.RECORD
UNIX_CRED = Fixed((U32, U32, U32))   # struct ucred: pid, uid, gid


@record("file_unix", _unix_record, doc='kind "unix": a unix socket, remade with its name, peer and queue '
                                       '(ckpt/files/unix.py)')
class UnixFile(File):
    sock_type: str = spec(OneOf(("stream", "dgram", "seqpacket")), "SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET")
    state: str = spec(OneOf(("unconnected", "listening", "connected")), "unix_diag udiag_state: CLOSE, LISTEN, "
                      "ESTABLISHED")
    name: bytes | None = spec(Nullable(Bin(1, SUN_PATH)), "the name it is bound to: a path (without its NUL), or "
                              "an abstract name (starting with NUL); nil: unbound")
    vfs: tuple[int, int] | None = spec(Nullable(Fixed((U64, U64))), "[st_dev, st_ino] of the socket file a path "
                                       "name made")
    path: str = spec(OneOf(("", "present", "unlinked", "replaced")), "what the path name led to at the dump")
    file_owner: tuple[int, int, int] | None = spec(Nullable(Fixed((U32, U32, Int(0, 0o7777, "mode bits")))),
                                                   "[uid, gid, permission bits] of the socket file (path present)")
    dir: Identity | None = spec(Nullable(IDENTITY), "the directory holding the socket file")
    uid: int = spec(U32, "owner of the socket inode (the creator's fsuid)")
    gid: int = spec(U32, "group of the socket inode")
    netns: int | None = spec(Nullable(U64), "inode of its network namespace; nil when unknown")
    link: str = spec(OneOf(("none", "pair", "client", "server", "to", "closed", "outside")), "how it is connected")
    peer: int | None = spec(Nullable(U64), "its peer's inode (unix_diag); 0: a peer without a socket; nil: none")
    peer_file: int | None = spec(Nullable(FILE_ID), "the peer's open file when the process has it")
    peer_name: bytes | None = spec(Nullable(Bin(1, SUN_PATH)), "getpeername; nil for an unbound peer or none")
    listener_file: int | None = spec(Nullable(FILE_ID), "the listener of the process the connection was made "
                                     "through")
    reconnect: bool = spec(Bool(), "outside: its peer's name could be connected to again at the dump")
    backlog: int = spec(U32, "listening: the listen backlog (sk_max_ack_backlog)")
    pending: int = spec(U32, "listening: connections not yet accepted")
    shutdown: int = spec(Int(0, 3), "sk_shutdown: 1 receive, 2 send (unix_diag)")
    error: bool = spec(Bool(), "a pending socket error (POLLERR)")
    scm_fds: int = spec(U32, "fds in flight in its queue (fdinfo scm_fds)")
    oob: bool = spec(Bool(), "an out-of-band byte queued (MSG_OOB)")
    peercred: tuple[int, int, int] | None = spec(Nullable(UNIX_CRED), "SO_PEERCRED [pid, uid, gid]; nil when it "
                                                 "has none")
    peer_peercred: tuple[int, int, int] | None = spec(Nullable(UNIX_CRED), "the peer's SO_PEERCRED, when the "
                                                      "process has the peer")
    options: dict[str, int] = spec(INT_OPTIONS, "integer SOL_SOCKET options by name")
    pair_options: dict[str, tuple[int, int]] = spec(PAIR_OPTIONS, "two-int socket options by name")
    name_options: dict[str, str] = spec(NAME_OPTIONS, "socket options that are names, by name")
    filter: bytes | None = spec(SOCK_FILTER, "classic BPF socket filter, 8 bytes per instruction; nil for an eBPF one")
    queue: tuple[UnixMessage, ...] = spec(ListOf(UNIX_MESSAGE, MAX_UNIX_QUEUE), "the messages queued to it, in "
                                          "order")
    holders: tuple[tuple[int, str], ...] = spec(HOLDERS, "[pid, comm] of other processes with an fd on the socket")
    unscanned: int = spec(U32, "processes whose fds the dump could not read")
    problem: str = spec(Str(MAX_TEXT), "why the dump could not record it exactly (\"\": none)")
    # Set by restore --ext-unix-sk (ckpt/files/unix.py external), never read from an image.
    external: bool = at_restore("the user asked for this socket's outside peer to be connected to again")


TERMIOS2_SIZE = 44   # struct termios2 (include/uapi/asm-generic/termbits.h)
PTY_INDEX = Int(-1, (1 << 20) - 1, "pty index -1..2^20-1")   # NR_UNIX98_PTY_MAX is 1 << 20
OWNERSHIP = OneOf(("none", "process", "other"))


def _tty_record(record: dict[str, Any]) -> None:
    if record["tty"] != "master" and (record["locked"] or record["packet"] or record["hup"]):
        raise SchemaError("is set on a terminal that is not a pty master", "locked")
    if record["peer_file"] is not None and record["tty"] not in ("slave", "current"):
        raise SchemaError("is set on a terminal that is not a pty slave", "peer_file")


@record("file_tty", _tty_record, doc='kind "tty": a terminal; a pty pair of the process is made anew '
                                     '(ckpt/files/tty.py)')
class TtyFile(File):
    tty: str = spec(OneOf(("master", "slave", "current", "other")),
                    "a pty master, a pty slave /dev/pts/N, an fd of /dev/tty, another terminal")
    real: int = spec(U32, "TIOCGDEV: the terminal's device (for /dev/tty, the one it led to); 0 if unread")
    name: str = spec(PATH, "/dev/pts/N (a master: its slave's), /dev/tty1, ... for messages")
    index: int = spec(PTY_INDEX, "the pty's index (TIOCGPTN on a master); -1 for other terminals")
    termios: bytes | None = spec(Nullable(Bin(TERMIOS2_SIZE, TERMIOS2_SIZE)), "TCGETS2: struct termios2 as the "
                                 "kernel lays it out; a pty's is its slave's; nil if unread")
    winsize: tuple[int, int, int, int] | None = spec(Nullable(Fixed((U16, U16, U16, U16))),
                                                     "TIOCGWINSZ: rows, columns, x and y pixels")
    locked: bool = spec(Bool(), "master: TIOCGPTLCK, its slave may not be opened")
    packet: bool = spec(Bool(), "master: TIOCGPKT, packet mode")
    exclusive: bool = spec(Bool(), "TIOCGEXCL of this end")
    hup: bool = spec(Bool(), "master: POLLHUP, its slave was opened and closed again (TTY_OTHER_CLOSED)")
    inq: int = spec(U32, "FIONREAD: bytes waiting for this end's reader (canonical mode: whole lines)")
    peer_file: int | None = spec(Nullable(FILE_ID), "slave or /dev/tty of a pty: the open file of its master in the "
                                 "process; nil: the master is outside")
    holders: tuple[tuple[int, str], ...] = spec(HOLDERS, "[pid, comm] of other processes with an fd on the pty or "
                                                "with it as controlling terminal")
    session: str = spec(OWNERSHIP, "the pty's session (TIOCGSID on its master): none, led by the process, other")
    foreground: str = spec(OWNERSHIP, "its foreground group (TIOCGPGRP on its master): none, the process's, other")
    ctty: bool = spec(Bool(), "not a master: it is the process's controlling terminal (/proc/PID/stat tty_nr)")
    owner: tuple[int, int] | None = spec(Nullable(Fixed((U32, U32))), "a pty slave: uid and gid of /dev/pts/N "
                                         "(fstat), given back with mode; nil otherwise", default=None)
    problem: str = spec(Str(MAX_TEXT), "why the dump could not record it exactly (\"\": none)")
    # Set by restore --shell-job (ckpt/files/tty.py), never read from an image.
    shell_job: bool = at_restore("the user asked for this terminal to be the one ckpt restore runs in")


FILE_REGULAR, FILE_CHARDEV, FILE_UNSUPPORTED, FILE_EVENTFD, FILE_SIGNALFD, FILE_TIMERFD = (
    RegularFile.RECORD, ChardevFile.RECORD, UnsupportedFile.RECORD, EventfdFile.RECORD, SignalfdFile.RECORD,
    TimerfdFile.RECORD)
FILE_INOTIFY, FILE_EPOLL, FILE_PIPE, FILE_INET, FILE_MEMFD, FILE_UNIX, FILE_TTY = (
    InotifyFile.RECORD, EpollFile.RECORD, PipeFile.RECORD, InetFile.RECORD, MemfdFile.RECORD, UnixFile.RECORD,
    TtyFile.RECORD)


# The record of each kind (ckpt/files registers the modules; a kind added there adds its record here).
FILE_RECORDS = {"regular": FILE_REGULAR, "directory": FILE_REGULAR, "chardev": FILE_CHARDEV, "tty": FILE_TTY,
                "eventfd": FILE_EVENTFD, "signalfd": FILE_SIGNALFD, "timerfd": FILE_TIMERFD,
                "inotify": FILE_INOTIFY, "epoll": FILE_EPOLL, "pipe": FILE_PIPE, "fifo": FILE_PIPE, "inet": FILE_INET,
                "unix": FILE_UNIX, "memfd": FILE_MEMFD, "ghost": FILE_MEMFD, "unsupported": FILE_UNSUPPORTED}


class Chosen(Type):
    """A map checked as one of several records, chosen by a key of the map itself."""

    def record_for(self, value: Any) -> Record:
        raise NotImplementedError

    def check(self, value: Any) -> None:
        self.record_for(value).check(value)

    def undescribed(self, value: Any, path: str) -> Iterator[str]:
        return self.record_for(value).undescribed(value, path)

    def wire(self, value: Any, encode: bool) -> Any:
        return self.record_for(value).wire(value, encode)

    plain: ClassVar[bool] = False

    def build(self, value: Any) -> Any:
        record = self.record_for(value)
        return record.wire(value, encode=False) if record.cls is None else record.build(value)


@dataclass(frozen=True)
class ByKind(Chosen):
    """A file record, checked as the record of its ``kind`` (:data:`FILE_RECORDS`); a kind
    this ckpt does not know is checked as :data:`FILE` (its common fields), so that an image
    a newer ckpt wrote is still read, and refused at restore by the kind's name."""

    records: dict[str, Record]
    other: Record

    def record_for(self, value: Any) -> Record:
        if isinstance(value, Rec):
            return value.RECORD
        kind = value.get("kind") if isinstance(value, dict) else None
        return self.records.get(kind, self.other) if isinstance(kind, str) else self.other

    def __str__(self) -> str:
        return "file record (by kind)"


@record("fd", doc="one entry of the fd table")
class Fd(Rec):
    fd: int = spec(Int(0, MAX_FD), "the descriptor number")
    file: int = spec(FILE_ID, "the id of the open file it refers to (several fds may share one)")
    cloexec: bool = spec(Bool(), "FD_CLOEXEC: a flag of the fd, not of the open file")


@record("fd_v1", doc="state version 1: an fd and its open file in one record, each fd its own open file")
class FdV1(Rec):
    fd: int = spec(Int(0, MAX_FD))
    target: str = spec(PATH, "readlink of /proc/PID/fd/N")
    kind: str = spec(Str(64), '"regular", "directory", "chardev", "blockdev", "fifo", "socket", "anon", "other"')
    flags: int = spec(U32, "f_flags from fdinfo, O_CLOEXEC included when the fd had it")
    pos: int = spec(I64, "file position from fdinfo")
    mode: int = spec(U32, "st_mode of the open file (0 if stat failed)")
    supported: bool = spec(Bool(), "whether restore can reopen it")
    unsupported_reason: str = spec(Str(MAX_TEXT), "why not (empty when supported)")
    anon_type: str = spec(Str(256), default="")
    deleted: bool = spec(Bool(), default=False)
    is_regular: bool | None = spec(Bool(), default=None)
    dev: int = spec(U64, default=0)
    ino: int = spec(U64, default=0)
    rdev: int = spec(U64, default=0)
    size: int = spec(I64, default=0)
    mtime_ns: int = spec(I64, default=0)
    mnt_id: int | None = spec(MNT_ID, "unique mount id of the open file (same boot only)", default=None)
    locks: tuple[Lock, ...] = spec(ListOf(LOCK, MAX_LOCKS), "locks and leases held through it", default=())


FD, FD_V1 = Fd.RECORD, FdV1.RECORD

@record("target")
class Target(Rec):
    pid: int = spec(PID)
    start_time: int | None = spec(U64, "/proc/PID/stat field 22: the pid's identity across reuse", default=None)


def _task_state(task: dict[str, Any]) -> None:
    """A zombie has its wait status and a stopped task its signal; no other task has either."""
    zombie, stopped = task["state"] == "zombie", task["state"] == "stopped"
    if (task.get("exit_status") is not None) != zombie:
        raise SchemaError("is set for a task that is not a zombie" if not zombie else "is missing for a zombie",
                          "exit_status")
    if (task.get("stop_signal") is not None) != stopped:
        raise SchemaError("is set for a task that is not stopped" if not stopped else "is missing for a stopped task",
                          "stop_signal")
    for key in ("inherited", "shared_with"):
        if zombie and task.get(key):
            raise SchemaError("is not empty for a zombie (it has no open files)", key)


# What a task of a tree may share with its parent, by the clone flag that shares it (a restore
# creates the task with it: ckpt/pstree.py; ckpt/live/tree.py refuses any other sharing).
SHARED_WITH_PARENT = ("CLONE_FS", "CLONE_FILES")


@record("task", _task_state, doc="one process of a dumped tree (ckpt/live/tree.py); the root's checkpoint lists "
        "them all in state.tree")
class Task(Rec):
    pid: int = spec(PID, "its pid; a restore gives every task but the root this pid")
    ppid: int = spec(Int(0, PID_MAX_LIMIT - 1), "its parent's pid (the root's: its parent outside the tree)")
    pgid: int = spec(PID, "process group")
    sid: int = spec(Int(0, PID_MAX_LIMIT - 1), "session (0: a session outside the pid namespace)")
    state: str = spec(OneOf(("alive", "stopped", "zombie")), '"stopped": in group stop (SIGSTOP and kin)')
    exit_status: int | None = spec(Nullable(Int(0, 0xFFFF)), "a zombie's wait status (waitpid's status)",
                                   default=None)
    stop_signal: int | None = spec(Nullable(SIGNAL), "the signal that stopped a stopped task", default=None)
    start_time: int | None = spec(Nullable(U64), "/proc/PID/stat field 22", default=None)
    comm: str = spec(Name(MAX_COMM), "/proc/PID/comm", default="")
    inherited: tuple[tuple[int, int], ...] = spec(
        ListOf(Fixed((Int(0, MAX_FD), Int(0, MAX_FD))), MAX_FDS),
        "[fd, parent's fd]: fds whose open file description is the one its parent has at that fd "
        "(kcmp KCMP_FILE)", default=())
    shared_with: tuple[tuple[int, int, int], ...] = spec(
        ListOf(Fixed((Int(0, MAX_FD), PID, Int(0, MAX_FD))), MAX_FDS),
        "[fd, pid, its fd]: fds whose open file description another task holds, not through its parent "
        "(a restore opens it once in their common ancestor: ckpt/files/handdown.py)", default=())
    shares: tuple[str, ...] = spec(
        ListOf(OneOf(SHARED_WITH_PARENT), len(SHARED_WITH_PARENT)),
        "the clone flags of the kernel objects it shares with its parent (kcmp KCMP_FS, KCMP_FILES): "
        "a restore creates it with them (ckpt/pstree.py)", default=())


@record("shared_memory", doc="shared anonymous memory (a /dev/zero shmem object: mmap MAP_SHARED|MAP_ANONYMOUS) "
        "several tasks of a dumped tree map (ckpt/treememory.py)")
class SharedMemory(Rec):
    dev: str = spec(Str(32), 'the object\'s device, "00:01" as in /proc/PID/maps (its VMAs have it)')
    inode: int = spec(U64, "the object's inode as in /proc/PID/maps (its VMAs have it)")
    mappers: tuple[int, ...] = spec(ListOf(PID, PID_MAX_LIMIT, 2),
                                    "the tasks that map it, root first then tree order; each one's checkpoint "
                                    "stores the pages of the object offsets no earlier one maps")


@record("sysv_shm", doc="a System V shared memory segment the task has attached (ckpt/namedshm.py)")
class SysvShm(Rec):
    key: int = spec(I32, "its key (IPC_PRIVATE 0; a segment removed while attached has 0), /proc/sysvipc/shm")
    id: int = spec(Int(0, I32_MAX), "its shmid; its VMAs' inode (ipc/shm.c newseg)")
    mode: int = spec(Int(0, 0o7777), "shm_perm.mode: the permission bits, SHM_DEST (0o1000), SHM_LOCKED (0o2000)")
    size: int = spec(Int(1, U64_MAX), "shm_segsz, bytes")
    uid: int = spec(U32, "owner uid")
    gid: int = spec(U32, "owner gid")
    cuid: int = spec(U32, "creator uid")
    cgid: int = spec(U32, "creator gid")
    cpid: int = spec(Int(0, PID_MAX_LIMIT - 1), "the creator's pid (with ctime: tells this segment from another "
                     "that has its id)")
    ctime: int = spec(I64, "shm_ctime: creation or last IPC_SET, seconds")


@record("tracking")
class Tracking(Rec):
    version: int | None = spec(Int(1, U32_MAX), default=None)
    armed: bytes = spec(RangeBytes(), "ranges write-protected for the next dump", default=b"")
    untrackable: tuple[tuple[int, int, str], ...] = spec(ListOf(Fixed((U64, U64, Str(MAX_TEXT))), MAX_RANGES),
                                                         "[start, end, why]", default=())
    forks: int | None = spec(Nullable(U64), "the task's fork (and MADV_REMOVE) counter at this checkpoint "
                             "(ckpt/forkcount.py); nil without one", default=None)
    shared: tuple[tuple[str, int, int], ...] = spec(
        ListOf(Fixed((Str(32), U64, U64)), MAX_RANGES),
        "[dev, inode, inotify watch descriptor] of each shared anonymous object the task maps "
        "and watches for writes through a file descriptor (ckpt/sharedincr.py)", default=())


TARGET, TRACKING = Target.RECORD, Tracking.RECORD

# Written together by ckpt.taskstate.capture: all present, or none (a pre-dump).
TASK_KEYS = ("version", "threads", "mm", "sigactions", "process", "files", "fds")
TASK_KEYS_V1 = ("version", "threads", "mm", "sigactions", "process", "fds")  # as version 1 wrote them


def _whole(keys: tuple[str, ...]) -> Rule:
    def _whole_task_state(state: dict[str, Any]) -> None:
        present = [key for key in keys if key in state]
        if present and len(present) != len(keys):
            missing = next(key for key in keys if key not in state)
            raise SchemaError(f"is missing (the state has {present[0]!r}: it is task state)", missing)
    return _whole_task_state


def _unique(items: list[dict[str, Any]], key: str, where: str, what: str) -> None:
    seen: set[int] = set()
    for i, item in enumerate(items):
        if item[key] in seen:
            raise SchemaError(f"is {item[key]} again: two {what} with one number", f"{where}[{i}].{key}")
        seen.add(item[key])


def _unique_tids(state: dict[str, Any]) -> None:
    _unique(state.get("threads", []), "tid", "threads", "threads")


def _unique_fds(state: dict[str, Any]) -> None:
    _unique(state.get("fds", []), "fd", "fds", "fds")


def _fds_point_at_files(state: dict[str, Any]) -> None:
    """File ids are unique; every fd refers to a recorded file, and every file has an fd."""
    files = state.get("files", [])
    _unique(files, "id", "files", "open files")
    used = set()
    ids = {f["id"] for f in files}
    for i, fd in enumerate(state.get("fds", [])):
        if fd["file"] not in ids:
            raise SchemaError(f"is {fd['file']}, which no open file of state.files has", f"fds[{i}].file")
        used.add(fd["file"])
    for i, f in enumerate(files):
        if f["id"] not in used:
            raise SchemaError(f"is {f['id']}, which no fd refers to", f"files[{i}].id")


def _objects_known(state: dict[str, Any]) -> None:
    """Object ids are unique; every memfd and ghost open file refers to a recorded object."""
    objects = state.get("objects", [])
    _unique(objects, "id", "objects", "file objects")
    ids = {o["id"] for o in objects}
    for i, f in enumerate(state.get("files", [])):
        if f.get("kind") in ("memfd", "ghost") and f["object"] not in ids:
            raise SchemaError(f"is {f['object']}, which no object of state.objects has", f"files[{i}].object")


def _seccomp_tree(state: dict[str, Any]) -> None:
    """Each filter follows the one installed before it; each thread's newest filter exists."""
    nodes = state.get("process", {}).get("seccomp_filters", [])
    for i, node in enumerate(nodes):
        if node["prev"] is not None and node["prev"] >= i:
            raise SchemaError(f"is {node['prev']}, not an earlier filter", f"process.seccomp_filters[{i}].prev")
    for i, thread in enumerate(state.get("threads", [])):
        index = thread.get("seccomp_filter")
        if index is not None and index >= len(nodes):
            raise SchemaError(f"is {index}, but there are {len(nodes)} filters", f"threads[{i}].seccomp_filter")


def _tree_shape(state: dict[str, Any]) -> None:
    """A tree is the target and its descendants: the root first, each pid once, every other
    task's parent listed before it (the order a restore creates them in)."""
    tree = state.get("tree", [])
    if not tree:
        return
    target = state.get("target")
    if target is not None and tree[0]["pid"] != target["pid"]:
        raise SchemaError(f"is {tree[0]['pid']}, not the dumped process {target['pid']}", "tree[0].pid")
    if tree[0]["state"] == "zombie":
        raise SchemaError("is a zombie: the root of a dumped tree is alive", "tree[0].state")
    seen: dict[int, dict[str, Any]] = {}
    for i, task in enumerate(tree):
        if task["pid"] in seen:
            raise SchemaError(f"is {task['pid']} again: two tasks with one pid", f"tree[{i}].pid")
        if i:
            parent = seen.get(task["ppid"])
            if parent is None:
                raise SchemaError(f"is {task['ppid']}, which no earlier task of the tree has", f"tree[{i}].ppid")
            if parent["state"] == "zombie":
                raise SchemaError(f"is {task['ppid']}, a zombie: a zombie has no children", f"tree[{i}].ppid")
        seen[task["pid"]] = task


def _settable_signals(state: dict[str, Any]) -> None:
    for sig in state.get("sigactions", {}):
        if sig in (SIGKILL, SIGSTOP):
            raise SchemaError("is an action for SIGKILL or SIGSTOP", f"sigactions[{sig}]")


@record("state", _whole(TASK_KEYS), _unique_tids, _unique_fds, _fds_point_at_files, _objects_known,
        _settable_signals, _seccomp_tree, _tree_shape,
        doc="task state: complete in full and incremental checkpoints, target and tracking only in a pre-dump")
class State(Rec):
    """The ``state`` of a checkpoint.  The task state (version to fds) is all there or all
    None: a pre-dump records only ``target`` and ``tracking``."""

    version: int | None = spec(Version(TASK_STATE_VERSION), "task state version", default=None)
    threads: tuple[Thread, ...] | None = spec(ListOf(THREAD, MAX_THREADS, 1), "every thread, any order",
                                              default=None)
    mm: Mm | None = spec(MM, default=None)
    sigactions: dict[int, Sigaction] | None = spec(MapOf(SIGNAL, SIGACTION, NSIG),
                                                   "signal number -> action, for those not SIG_DFL", default=None)
    process: Process | None = spec(PROCESS, default=None)
    files: tuple[Any, ...] | None = spec(ListOf(ByKind(FILE_RECORDS, FILE), MAX_FDS),
                                         "every open file description, by id", default=None)
    fds: tuple[Fd, ...] | tuple[FdV1, ...] | None = spec(ListOf(FD, MAX_FDS), "the fd table: every open descriptor",
                                                         default=None)
    objects: tuple[Object, ...] = spec(ListOf(OBJECT, MAX_OBJECTS), "memfds and files deleted while open, each once",
                                    default=())
    target: Target | None = spec(TARGET, "the dumped process (every kind of checkpoint)", default=None)
    tracking: Tracking | None = spec(TRACKING, "how the dumper tracked writes (every kind of checkpoint)",
                                     default=None)
    tree: tuple[Task, ...] = spec(ListOf(Task.RECORD, MAX_THREADS), "the dumped tree, root first, parents before "
                                  "children (empty: one process); each live task's checkpoint is tasks/PID/",
                                  default=())
    shared_memory: tuple[SharedMemory, ...] = spec(ListOf(SharedMemory.RECORD, MAX_VMAS),
                                                   "shared anonymous memory several tasks of the tree map, each "
                                                   "stored once (root only)", default=())
    sysv_shm: tuple[SysvShm, ...] = spec(ListOf(SysvShm.RECORD, MAX_VMAS),
                                         "the System V shared memory segments the task has attached, each once "
                                         "(ckpt/namedshm.py)", default=())
    cow: bytes = spec(RangeBytes(), "private anonymous pages that are its parent's own page at the same address "
                      "(copy-on-write since a fork): not stored here, the parent's checkpoint holds them "
                      "(ckpt/cow.py; tree tasks but the root)", default=b"")


STATE = State.RECORD

# State versions before FILES_MODEL_VERSION: no "files", each fd record its own open file.
# Described in the `state` section of docs/FORMAT.md (the same record otherwise); readers
# get a State whose files are None and whose fds are FdV1 records.
STATE_V1 = Record("state_v1", {
    **{key: field for key, field in STATE.fields.items() if key != "files"},
    "version": Field(Int(1, FILES_MODEL_VERSION - 1), "task state version", False),
    "fds": Field(ListOf(FD_V1, MAX_FDS), "every open descriptor", False),
}, (_whole(TASK_KEYS_V1), _unique_tids, _unique_fds, _settable_signals), doc=STATE.doc, cls=State)


@dataclass(frozen=True)
class ByVersion(Chosen):
    """The task state, checked as the record of its ``version``: :data:`STATE_V1` before
    :data:`FILES_MODEL_VERSION`, :data:`STATE` otherwise (a pre-dump has no version)."""

    def record_for(self, value: Any) -> Record:
        version = value.get("version") if isinstance(value, dict) else getattr(value, "version", None)
        old = isinstance(version, int) and not isinstance(version, bool) and version < FILES_MODEL_VERSION
        return STATE_V1 if old else STATE

    def __str__(self) -> str:
        return "state (map)"


TASK_STATE = ByVersion()


# -- the top level and the VMA record ---------------------------------------------------------

_PERMS = re.compile(r"[r-][w-][x-][ps]")


def _vma_range(vma: dict[str, Any]) -> None:
    start, end = vma["start"], vma["end"]
    if not start < end or start % PAGE_SIZE or end % PAGE_SIZE:
        raise SchemaError(f"[{start:#x}, {end:#x}) is not a non-empty page-aligned range")
    if not _PERMS.fullmatch(vma["perms"]):
        raise SchemaError(f"is {vma['perms']!r}, expected four letters like 'rw-p'", "perms")


def _vma_ranges_valid(vmas: list[dict[str, Any]]) -> bool:
    """:func:`_vma_range` over every record at once (their fields are checked already)."""
    starts = [v["start"] for v in vmas]
    ends = [v["end"] for v in vmas]
    return (all(map(int.__lt__, starts, ends))
            and not any(a % PAGE_SIZE for a in starts) and not any(a % PAGE_SIZE for a in ends)
            and all(_PERMS.fullmatch(p) for p in {v["perms"] for v in vmas}))


_vma_range.bulk = _vma_ranges_valid   # type: ignore[attr-defined]  # Record.all_valid


def _object_mapping(vma: dict[str, Any]) -> None:
    if vma.get("object") is not None and vma["kind"] not in ("shmem", "file-private"):
        raise SchemaError(f"is set on a mapping of kind {vma['kind']} (only shmem and file-private ones map "
                          "file objects)", "object")


_object_mapping.bulk = lambda vmas: all(  # type: ignore[attr-defined]  # Record.all_valid
    v["kind"] in ("shmem", "file-private") for v in vmas if v.get("object") is not None)


@record("vma", _vma_range, _object_mapping, doc="one mapping of the process at dump time, as /proc/PID/maps "
                                                 "and smaps describe it")
class Vma(Rec):
    """A VMA record (``meta.vmas``): what the dump saw of one mapping, what restore maps again."""

    start: int = spec(U64)
    end: int = spec(U64)
    perms: str = spec(Str(4), '"rw-p" as in /proc/PID/maps')
    offset: int = spec(U64, "file offset of start")
    dev: str = spec(Str(32), '"fd:01" as in /proc/PID/maps')
    inode: int = spec(U64)
    path: str = spec(PATH, '"" for anonymous; bin when not UTF-8')
    flags: tuple[str, ...] = spec(ListOf(Str(8), 128), "smaps VmFlags mnemonics")
    kind: str = spec(OneOf(VMA_KINDS))
    file_size: int | None = spec(Nullable(I64), "identity of the backing file at dump time", default=None)
    file_mtime_ns: int | None = spec(Nullable(I64), default=None)
    # Identity of the file the path led to at dump time, recorded only when it was the
    # mapped file (nil: the maps dev/inode stand for it).
    file_dev: int | None = spec(Nullable(U64), "st_dev of the file the path led to, when it was the mapped one",
                                default=None)
    file_ino: int | None = spec(Nullable(U64), "its st_ino", default=None)
    file_mnt_id: int | None = spec(MNT_ID, "its unique mount id (same boot only)", default=None)
    object: int | None = spec(Nullable(OBJECT_ID), "the file object it maps (state.objects): its content is the "
                              "object's", default=None)

    def __post_init__(self) -> None:
        # The dump makes these (a reader's were checked by the rules above already): a
        # range or kind no reader accepts is the dump's bug, caught before it is written.
        if not (0 <= self.start < self.end) or self.start % PAGE_SIZE or self.end % PAGE_SIZE:
            raise ValueError(f"VMA [{self.start:#x}, {self.end:#x}) is not a non-empty page-aligned range")
        if self.kind not in VMA_KINDS:
            raise ValueError(f"VMA {self.start:#x}: unknown kind {self.kind!r} (expected one of {VMA_KINDS})")


VMA = Vma.RECORD

OBJECT_EXTENTS = Record("object_extents", {
    "id": Field(OBJECT_ID, "the object (state.objects) whose content this is"),
    "extents": Field(Bin(0, MAX_RANGES * 32, 32), "extent-array keyed by file offset"),
    "zero": Field(Bin(0, MAX_RANGES * 16, 16), "range-array of file offsets: data that is all zero"),
}, doc="where the content of one file object is in pages.ckpt")


def _parent_older(meta: dict[str, Any]) -> None:
    parent = meta["parent"]
    if parent is not None and parent >= meta["id"]:
        raise SchemaError(f"{parent} is not an older checkpoint than {meta['id']}", "parent")
    if meta["kind"] == "incremental" and parent is None:
        raise SchemaError("is nil in an incremental checkpoint", "parent")


def _vmas_sorted(meta: dict[str, Any]) -> None:
    vmas = meta["vmas"]
    if all(map(int.__le__, [v["end"] for v in vmas[:-1]], [v["start"] for v in vmas[1:]])):
        return
    for i in range(1, len(vmas)):
        if vmas[i - 1]["end"] > vmas[i]["start"]:
            raise SchemaError(f"at {vmas[i]['start']:#x} overlaps vmas[{i - 1}] or is not sorted", f"vmas[{i}]")


def vma_objects(vmas: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """``(index, object id)`` of the VMA records that map a file object."""
    return [(i, v["object"]) for i, v in enumerate(vmas) if v.get("object") is not None]


def _check_vma_objects(refs: list[tuple[int, int]], meta: dict[str, Any]) -> None:
    """Every object a VMA maps (``refs``, :func:`vma_objects`) is one of the state's."""
    objects = {o["id"] for o in meta["state"].get("objects", [])}
    for i, obj in refs:
        if obj not in objects:
            raise SchemaError(f"is {obj}, which no object of state.objects has", f"vmas[{i}].object")


def _vma_objects_recorded(meta: dict[str, Any]) -> None:
    """Every object a VMA maps is recorded."""
    _check_vma_objects(vma_objects(meta["vmas"]), meta)


def _objects_stored(meta: dict[str, Any]) -> None:
    """Every recorded object without a problem has its content, once, unless another task
    of the tree keeps it (``stored_by``); no content for an object the state does not have."""
    objects = {o["id"]: o for o in meta["state"].get("objects", [])}
    stored: set[int] = set()
    for i, record in enumerate(meta.get("object_extents", [])):
        if record["id"] not in objects or record["id"] in stored:
            raise SchemaError(f"is {record['id']}: no object of state.objects, or one stored twice",
                              f"object_extents[{i}].id")
        stored.add(record["id"])
    for obj_id, obj in objects.items():
        if obj.get("stored_by") and obj_id in stored:
            raise SchemaError(f"has content for object {obj_id}, which pid {obj['stored_by']} keeps",
                              "object_extents")
        if not obj["problem"] and not obj.get("stored_by") and obj_id not in stored:
            raise SchemaError(f"has no content for object {obj_id} ({obj['type']} {obj['name']!r})",
                              "object_extents")


def _state_of_pid(meta: dict[str, Any]) -> None:
    """The state describes the process ``pid`` names; its leader is one of its threads."""
    state, pid = meta["state"], meta["pid"]
    for key in ("target", "process"):
        if key in state and state[key].get("pid", pid) != pid:
            raise SchemaError(f"is {state[key]['pid']}, but the checkpoint is of pid {pid}", f"state.{key}.pid")
    threads = state.get("threads")
    if threads is not None and all(t["tid"] != pid for t in threads):
        raise SchemaError(f"has no thread {pid}, the leader of pid {pid}", "state.threads")


META = Record("meta", {
    "id": Field(Int(1, I64_MAX), "this checkpoint's id; equals its directory name"),
    "parent": Field(Nullable(Int(1, I64_MAX)), "id of the parent checkpoint"),
    "kind": Field(OneOf(KINDS)),
    "time": Field(TIME, "seconds since the epoch"),
    "pid": Field(PID, "pid of the dumped process"),
    "vmas": Field(ListOf(VMA, MAX_VMAS), "sorted by start, non-overlapping"),
    "present": Field(Bin(0, MAX_RANGES * 16, 16), "range-array"),
    "whole": Field(Bin(0, MAX_RANGES * 16, 16), "range-array"),
    "zero": Field(Bin(0, MAX_RANGES * 16, 16), "range-array"),
    "codec": Field(OneOf((CODEC_ZSTD, CODEC_NONE))),
    "level": Field(I32, "zstd level (informational)"),
    "frames": Field(Bin(0, MAX_RANGES * 32, 32), "frame-array"),
    "extents": Field(Bin(0, MAX_RANGES * 32, 32), "extent-array"),
    "state": Field(TASK_STATE),
    "stats": Field(MapOf(Str(256), AnyValue(), 1024), "informational counters", False),
    "object_extents": Field(ListOf(OBJECT_EXTENTS, MAX_OBJECTS), "the content of each file object", False),
}, (_parent_older, _vmas_sorted, _state_of_pid, _vma_objects_recorded, _objects_stored))
# The same without the VMA records, for a body whose records are byte for byte those of
# records checked already (:func:`check_meta` ``vma_objects``).
_META_BUT_VMAS = Record("meta", {**META.fields, "vmas": Field(AnyValue())},
                        (_parent_older, _state_of_pid, _objects_stored))

# Every record, for the documentation check.
RECORDS = (META, VMA, STATE, THREAD, REGS, RSEQ, ROBUST_LIST, SIGALTSTACK, IN_SYSCALL, SCHED, MM, EXE_STAT,
           SIGACTION, PROCESS, CREDS, CHILD, ITIMERS, ITIMER, POSIX_TIMER, FD, FILE, FILE_REGULAR,
           FILE_CHARDEV, FILE_EVENTFD, FILE_SIGNALFD, FILE_TIMERFD, FILE_INOTIFY, INOTIFY_WATCH,
           FILE_EPOLL, EPOLL_TARGET, FILE_PIPE, FILE_INET, INET_ADDRESS, TCP_CONNECTION, FILE_UNIX, UNIX_MESSAGE,
           FILE_MEMFD, FILE_UNSUPPORTED, FD_V1, SECCOMP_FILTER, LOCK, TARGET, TRACKING, OBJECT,
           OBJECT_EXTENTS)  # STATE_V1 is documented with STATE


def check_meta(body: Any, vma_objects: list[tuple[int, int]] | None = None) -> None:
    """Check a decoded ``meta.ckpt`` body against :data:`META`; raise SchemaError naming the field.

    ``vma_objects`` (:func:`vma_objects` of them) says its VMA records are the very bytes of
    records that passed this check already (another checkpoint's: a process's layout rarely
    changes between two of its checkpoints): they are not checked again, only what relates
    them to the rest of this body (the file objects they map are this state's)."""
    if vma_objects is None:
        META.check(body)
        return
    _META_BUT_VMAS.check(body)
    _check_vma_objects(vma_objects, body)


def undescribed(body: dict[str, Any]) -> list[str]:
    """Paths of the keys of a ``meta.ckpt`` body that no record describes (readers ignore them)."""
    return list(META.undescribed(body, ""))

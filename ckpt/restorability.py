"""Whether a checkpoint can be restored, decided from what it recorded.

The one home of these rules.  ``ckpt dump`` applies them inside the frozen
window before a ``--kill`` (a target ckpt could not bring back is thawed, not
killed) and reports them (``DumpReport.restorable`` / ``unrestorable``);
``ckpt inspect``, ``ckpt verify`` and :func:`ckpt.restore.check` apply them to
a stored checkpoint.  They read only the checkpoint's task state and VMA
records, so every machine gives the same answer.  What depends on the machine
that restores -- a mapped file still there and unchanged, the vDSO layout, a
free pid -- is checked by :mod:`ckpt.restore` when it restores.

A *reason* makes a checkpoint unrestorable: restore refuses it, ``dump --kill``
refuses to kill.  A *note* names something a restore gives back differently
without losing it silently: fds 0-2 become the restoring ckpt's own streams
(or the files it is given), see :func:`std_stream_notes`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import seccomp
from .tracker import DEVICE, FILE_PRIVATE, FILE_SHARED

# fd kinds a restore can reopen by path; every other kind is refused.
RESTORABLE_FD_KINDS = frozenset({"regular", "directory", "chardev"})
STD_STREAMS = (0, 1, 2)
_STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}
_DELETED_SUFFIX = " (deleted)"
# How /proc/PID/maps names the ring of an io_setup() context: a shared mapping
# of a file of the internal aio filesystem (fs/aio.c aio_private_file), which
# the kernel never links.  ckpt classifies it as shared memory, which it is
# not: the kernel keeps the context (its ctx id is the ring's address).
AIO_RING = "/[aio] (deleted)"
SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 1, 2          # include/uapi/linux/seccomp.h
CAP_IPC_LOCK = 14                                         # include/uapi/linux/capability.h


class VmaLike(Protocol):
    """The fields of a VMA record the rules read (:class:`ckpt.image.VmaRecord`)."""

    start: int
    end: int
    kind: str
    path: str


@dataclass(frozen=True)
class Verdict:
    """The rules' answer for one checkpoint."""

    reasons: tuple[str, ...] = ()   # each one alone makes the checkpoint unrestorable
    notes: tuple[str, ...] = ()     # what a restore gives back differently

    @property
    def restorable(self) -> bool:
        """True when nothing stands in the way of a restore (on a suitable machine)."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` keys: ``restorable``, ``unrestorable`` (the reasons), ``restore_notes``."""
        return {"restorable": self.restorable, "unrestorable": list(self.reasons),
                "restore_notes": list(self.notes)}


def assess(state: Mapping[str, Any], vmas: Iterable[VmaLike], *, kind: str = "full") -> Verdict:
    """Apply every rule to a checkpoint's task ``state`` and VMA records.

    ``kind`` is the checkpoint's kind: a ``pre`` dump holds memory only.
    """
    if kind == "pre":
        return Verdict(reasons=("it is a pre-dump (memory only); restore a later full or "
                                "incremental checkpoint",))
    if not state.get("threads"):
        return Verdict(reasons=("no task state was recorded (a damaged image?)",))
    try:
        return _assess(state, vmas)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        # An edited or damaged record: not restorable, and inspect/verify still answer.
        return Verdict(reasons=(f"the recorded task state is malformed ({type(err).__name__}: {err})",))


def _assess(state: Mapping[str, Any], vmas: Iterable[VmaLike]) -> Verdict:
    vmas = list(vmas)
    reasons = mapping_reasons(vmas)
    fds = state.get("fds", [])
    for fd in fds:
        reasons += fd_reasons(fd)
    process = state.get("process", {})
    reasons += seccomp_reasons(state)
    reasons += mm_reasons(state, vmas)
    children = process.get("children", [])
    if children:
        pid = state.get("target", {}).get("pid", process.get("pid", "?"))
        named = ", ".join(f"pid {c['pid']} ({c.get('comm', '?')})" for c in children)
        reasons.append(f"pid {pid} has children ({named}); ckpt restores one process, "
                       "not a process tree, yet")
    notes = []
    std = std_streams_summary(fds)
    if std:
        notes.append(f"fds 0-2 are not restored ({std}): a restore gives them its own standard "
                     "streams, or the files named by --stdin/--stdout/--stderr")
    return Verdict(reasons=tuple(reasons), notes=tuple(notes))


def seccomp_reasons(state: Mapping[str, Any]) -> list[str]:
    """Seccomp state a restore cannot give back (without its filters a thread would
    be allowed more than it was).

    Filters are per thread: each thread record has its mode and its newest
    filter (``ckpt.taskstate._capture_seccomp``).  A checkpoint of an older
    ckpt has the leader's mode only (``creds.seccomp``) and no filters."""
    threads = state.get("threads", [])
    process = state.get("process", {})
    if threads and "seccomp_mode" not in threads[0]:
        mode = process.get("creds", {}).get("seccomp", 0)
        if not mode:
            return []
        what = {1: "strict mode", 2: "a filter"}.get(mode, f"mode {mode}")
        return [f"the process runs under seccomp ({what}), whose filters this checkpoint does not hold "
                "(taken by an older ckpt)"]
    nodes = process.get("seccomp_filters", [])
    strict, unread, used = [], [], set()
    for t in threads:
        if t["seccomp_mode"] == SECCOMP_MODE_STRICT:
            strict.append(t["tid"])
        elif t["seccomp_mode"] == SECCOMP_MODE_FILTER:
            if t.get("seccomp_filter") is None:
                unread.append(t["tid"])
            index = t.get("seccomp_filter")
            while index is not None and index not in used:
                used.add(index)
                index = nodes[index]["prev"]
    out = []
    if strict:
        out.append(f"{_threads(strict)} in seccomp strict mode, which ckpt cannot restore")
    if unread:
        why = process.get("seccomp_unreadable") or "not recorded"
        out.append(f"{_threads(unread)} under seccomp filters the dump could not read ({why})")
    for index in sorted(used):
        problem = seccomp.filter_problem(nodes[index]["insns"], nodes[index]["flags"])
        if problem:
            holders = [t["tid"] for t in threads if index in seccomp.chain(nodes, t.get("seccomp_filter"))]
            out.append(f"a seccomp filter of {_threads(holders, runs=False)} {problem}")
    return out


def _threads(tids: Sequence[int], runs: bool = True) -> str:
    named = ", ".join(map(str, tids))
    verb = (" runs" if len(tids) == 1 else " run") if runs else ""
    return f"thread {named}{verb}" if len(tids) == 1 else f"threads {named}{verb}"


def mm_reasons(state: Mapping[str, Any], vmas: Iterable[VmaLike]) -> list[str]:
    """Address-space state a restore cannot give back: memory it could not lock
    again, guard regions or membarrier registrations the dump could not see.

    mlock is restored with the process's own credentials and RLIMIT_MEMLOCK
    (mm/mlock.c ``do_mlock``: locked pages beyond the limit need CAP_IPC_LOCK),
    so a checkpoint where the kernel would refuse is refused before anything
    is created.  Absent keys (a checkpoint of an older ckpt) are not judged."""
    mm = state.get("mm", {})
    process = state.get("process", {})
    out = []
    vmas = list(vmas)
    locked = sum(v.end - v.start for v in vmas if "lo" in getattr(v, "flags", ()))
    limit = process.get("rlimits", {}).get("RLIMIT_MEMLOCK", [-1, -1])[0]
    can_lock = process.get("creds", {}).get("cap_eff", 0) >> CAP_IPC_LOCK & 1
    if locked and 0 <= limit < locked and limit < 1 << 63 and not can_lock:
        out.append(f"{locked // 1024} KiB of its memory is locked (mlock), more than its RLIMIT_MEMLOCK "
                   f"({limit // 1024} KiB) lets a process without CAP_IPC_LOCK lock again")
    if "guard" in mm and mm["guard"] is None and any("gu" in getattr(v, "flags", ()) for v in vmas):
        out.append("it has guard regions (MADV_GUARD_INSTALL) that this kernel cannot report (no PAGE_IS_GUARD)")
    if "mlockall" in mm and mm["mlockall"] is None:
        out.append("whether mlockall(MCL_FUTURE) was in effect could not be told")
    if "membarrier" in mm and mm["membarrier"] is None:
        why = mm.get("membarrier_unreadable") or "unknown"
        out.append(f"its membarrier registrations could not be read ({why})")
    return out


def mapping_reasons(vmas: Iterable[VmaLike]) -> list[str]:
    """Mappings a restore cannot recreate: device memory, and file mappings whose
    file cannot be reopened by path (deleted, or not a file: an io_uring ring,
    a DRM buffer, ...).  One reason per object, naming each of its ranges."""
    found: dict[tuple[str, str], list[str]] = {}
    for vma in vmas:
        where = f"{vma.start:#x}-{vma.end:#x}"
        path = vma.path or "?"
        if path == AIO_RING:
            found.setdefault(("aio", path), []).append(where)
        elif vma.kind == DEVICE:
            found.setdefault(("device", path), []).append(where)
        elif vma.kind in (FILE_PRIVATE, FILE_SHARED):
            if path.endswith(_DELETED_SUFFIX):
                found.setdefault(("deleted", path), []).append(where)
            elif not path.startswith("/"):
                found.setdefault(("object", path), []).append(where)
    out = []
    for (what, path), where in found.items():
        at = ", ".join(where)
        if what == "aio":
            out.append(f"the mapping at {at} is the ring of an AIO context (io_setup), which ckpt cannot "
                       "restore yet")
        elif what == "device":
            out.append(f"the device mapping {path} at {at} cannot be restored")
        elif what == "deleted":
            out.append(f"the mapping at {at} is of a deleted file ({path}), which ckpt cannot reopen")
        else:
            out.append(f"the mapping of {path} at {at} is not a file ckpt can reopen")
    return out


def fd_reasons(fd: Mapping[str, Any]) -> list[str]:
    """Why one fd record cannot be restored ([] when it can).

    Locks and leases count on every fd: a restore reopens files but takes no
    lock, so another process could take it meanwhile (two sqlite writers).
    fds 0-2 are replaced, not reopened, so only their locks count here
    (the replacement is a note, see :func:`std_stream_notes`)."""
    num = fd["fd"]
    out = []
    if num not in STD_STREAMS:
        if fd.get("deleted"):
            out.append(f"fd {num} refers to a deleted file ({fd['target']})")
        elif fd["kind"] not in RESTORABLE_FD_KINDS:
            out.append(f"fd {num} is {describe_fd(fd)}, which ckpt cannot restore yet")
    for lock in fd.get("locks", []):
        out.append(f"fd {num} holds {describe_lock(lock, fd['target'])}, which ckpt cannot restore yet")
    return out


def describe_fd(fd: Mapping[str, Any]) -> str:
    """What an fd record points at, for a message ("a pipe (pipe:[123])", "the file /x")."""
    kind, target = fd["kind"], fd["target"]
    if kind == "fifo":
        return f"a pipe ({target})" if target.startswith("pipe:") else f"the FIFO {target}"
    if kind == "socket":
        return f"a socket ({target})"
    if kind == "anon":
        what = fd.get("anon_type") or "anonymous inode"
        return f"{_article(what)} {what} ({target})"
    if kind == "regular":
        return f"the file {target}"
    if kind == "directory":
        return f"the directory {target}"
    if kind == "chardev":
        return target
    return f"{_article(kind)} {kind} ({target})"


def describe_lock(lock: Mapping[str, Any], path: str) -> str:
    """"a POSIX write lock on PATH (bytes 0-EOF)", "a flock exclusive lock on PATH", "a read lease on PATH"."""
    kind, access = lock.get("kind", "UNKNOWN"), (lock.get("access") or "").lower()
    end = lock.get("end")
    span = f" (bytes {lock.get('start', 0)}-{'EOF' if end is None else end})"
    if kind == "POSIX":
        return f"a POSIX {access} lock on {path}{span}"
    if kind == "OFDLCK":
        return f"an OFD {access} lock on {path}{span}"
    if kind == "FLOCK":
        return f"a flock {'shared' if access == 'read' else 'exclusive'} lock on {path}"
    if kind == "LEASE":
        return f"a {access} lease on {path}"
    if kind == "DELEG":
        return f"a {access} delegation on {path}"
    return f"a lock of kind {kind} ({access or '?'}) on {path}"


def std_streams_summary(fds: Sequence[Mapping[str, Any]]) -> str:
    """"fd 0 is a pipe (pipe:[1]), fd 1 is /dev/null, fd 2 is closed" ('' without fds)."""
    by_num = {fd["fd"]: fd for fd in fds}
    parts = []
    for num in STD_STREAMS:
        fd = by_num.get(num)
        parts.append(f"fd {num} is {describe_fd(fd) if fd is not None else 'closed'}")
    return ", ".join(parts) if fds else ""


def std_stream_notes(fds: Sequence[Mapping[str, Any]],
                     given: Mapping[int, str | os.PathLike[str] | None] | None = None) -> list[str]:
    """One note per fd 0-2 a restore replaces: "fd 1 was a pipe (pipe:[7]); it is now
    ckpt's stdout (/dev/pts/0)".

    ``given`` maps a stream number to the file the restore gives it (None or
    absent: the restoring ckpt's own stream, which is what ``ckpt.restore``
    hands down).  No note when the process had the very same character device
    (the same terminal, /dev/null) or regular file (a log it appended to):
    nothing observable changes."""
    by_num = {fd["fd"]: fd for fd in fds}
    notes = []
    for num in STD_STREAMS:
        path = (given or {}).get(num)
        if path is not None:
            now, st = os.fspath(path), _stat(os.fspath(path))
        else:
            now, st = f"ckpt's {_STREAM_NAMES[num]} ({_own_stream(num)})", _fstat(num)
        old = by_num.get(num)
        if old is not None and st is not None and _same_stream(old, st):
            continue
        was = describe_fd(old) if old is not None else "closed"
        notes.append(f"fd {num} was {was}; it is now {now}")
    return notes


def _same_stream(old: Mapping[str, Any], st: os.stat_result) -> bool:
    """The recorded fd and the file now given are one terminal, device or file."""
    mode = old.get("mode", 0)
    if stat.S_ISCHR(mode) and stat.S_ISCHR(st.st_mode):
        return old.get("rdev") == st.st_rdev
    if stat.S_ISREG(mode) and stat.S_ISREG(st.st_mode):
        return (old.get("dev"), old.get("ino")) == (st.st_dev, st.st_ino)
    return False


def _own_stream(num: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{num}")
    except OSError:
        return "closed"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _fstat(num: int) -> os.stat_result | None:
    try:
        return os.fstat(num)
    except OSError:
        return None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeio" else "a"

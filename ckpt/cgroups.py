"""Cgroup membership: recorded at dump, given back by the restore child where it may be.

**Dump.**  /proc/PID/cgroup lists one line per hierarchy, ``ID:CONTROLLERS:PATH``
(kernel/cgroup/cgroup.c ``proc_cgroup_show``): cgroup v1 hierarchies by their
controllers (``memory``, ``name=systemd``), the v2 one as ``0::PATH``; the paths are
relative to the reader's cgroup namespace root.  The process's lines are recorded
(``Process.cgroups``), and a thread's own where they differ (``Thread.cgroups``:
v1 controllers and v2 threaded cgroups may place threads apart).

**Restore.**  The restore child starts in ``ckpt restore``'s cgroups.  For every
hierarchy whose recorded path differs from the child's own, it writes 0 (itself) to
``cgroup.procs`` of the recorded path under that hierarchy's mount
(/proc/self/mountinfo), each component opened with O_NOFOLLOW (never a symlink:
cgroupfs has none, so one is an attack), never creating a cgroup.  It does so after
taking the images' owner's filesystem identity for images that are not root's, so
the kernel applies its own rule -- the opener may write the destination's
cgroup.procs (and, on v2, the common ancestor's: cgroup_procs_write_permission,
which checks the opener's credentials).  A cgroup it cannot enter (gone, not
mounted, not permitted) refuses the restore by name.  Threads whose cgroups differ
from the process's are refused at dump (the rebuild clones them into the
process's).

**Limits.**  A cgroup namespace is not recreated (the paths are the dumper's
view); CRIU's ``--cgroup-root`` rewriting has no equivalent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import TargetError

Cgroup = tuple[int, str, str]   # hierarchy id, controllers ("" for v2), path


def read(pid: int, tid: int | None = None) -> tuple[Cgroup, ...]:
    """The cgroup lines of a process (or of its thread ``tid``); () when /proc has none."""
    path = f"/proc/{pid}/cgroup" if tid is None else f"/proc/{pid}/task/{tid}/cgroup"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ()
    out = []
    for line in text.splitlines():
        ident, _, rest = line.partition(":")
        controllers, _, where = rest.partition(":")
        out.append((int(ident), controllers, where))
    return tuple(out)


def describe(cg: Sequence[object]) -> str:
    """"memory:/zdtmtst", "cgroup2:/a/b" for messages."""
    return f"{cg[1] or 'cgroup2'}:{cg[2]}"


def thread_reasons(cgroups: Sequence[Sequence[object]], threads: Sequence[tuple[int, Sequence[Sequence[object]]]]
                   ) -> list[str]:
    """Threads whose recorded cgroups are not the process's: ``threads`` is (tid, its lines)."""
    mine = {tuple(c) for c in cgroups}
    out = []
    for tid, lines in threads:
        apart = [describe(c) for c in lines if tuple(c) not in mine]
        if apart:
            out.append(f"thread {tid} is in cgroups of its own ({', '.join(apart)}), which ckpt does not "
                       "restore per thread")
    return out


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount here."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                unescape = fields[4].encode().decode("unicode_escape")   # \040 for a space
                out.append((rfields[0], fields[3], unescape, set(rfields[2].split(","))))
    return out


def _directory(cg: Sequence[object]) -> tuple[str, str]:
    """The mount point and the path under it of the recorded cgroup ``cg``."""
    ident, controllers, path = int(cg[0]), str(cg[1]), str(cg[2])
    wanted = set(controllers.split(",")) if controllers else set()
    for fstype, root, point, options in _mounts():
        if (ident == 0 and fstype == "cgroup2") or (ident and fstype == "cgroup" and wanted <= options):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return point, path[len(root.rstrip("/")):]
    raise TargetError(f"cannot restore its cgroup {describe(cg)}: the hierarchy is not mounted here (or not "
                      "its root)")


def enter(recorded: Sequence[Sequence[object]]) -> list[str]:  # pragma: no cover - in the restore child
    """In the restore child (as the images' owner for images that are not root's): move
    itself into every recorded cgroup it is not in; ``TargetError`` naming the cgroup it
    cannot enter.  Returns notes (none so far)."""
    current = {(c[0], c[1]): c[2] for c in read(os.getpid())}
    for cg in recorded:
        key = (int(cg[0]), str(cg[1]))
        if key not in current:
            raise TargetError(f"cannot restore its cgroup {describe(cg)}: no such hierarchy here")
        if current[key] == cg[2]:
            continue
        point, under = _directory(cg)
        fd = os.open(point, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for name in [p for p in under.split("/") if p]:
                if name in (".", ".."):
                    raise TargetError(f"cannot restore its cgroup {describe(cg)}: a malformed path")
                step = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = step
            procs = os.open("cgroup.procs", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                os.write(procs, b"0")   # 0: the writer itself (cgroup_procs_write -> cgroup_procs_write_start)
            finally:
                os.close(procs)
        except OSError as err:
            raise TargetError(f"cannot restore its cgroup {describe(cg)}: {err.strerror}") from None
        finally:
            os.close(fd)
    return []

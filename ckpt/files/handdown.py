"""Open files shared between the tasks of a restored tree, made once and handed down (issue 9, stage 2).

A description a child got from its parent at fork is restored by the same fork
(``Task.inherited``, :func:`ckpt.files.inherit.from_parent`).  Two other sharings need
more, and both are restored as CRIU does it, by the lowest common ancestor (LCA) of the
tasks that hold them (criu/files.c, /work/issue9-research/trees.md section 2.2):

* one open file description held by tasks outside the fork line (``Task.shared_with``:
  two siblings whose parent closed its copy, an fd passed over a unix socket);
* one unix socket pair whose two ends are in different tasks (zdtm ``cow01``, nginx's
  master and worker channels: ``socketpair`` then ``fork``, each keeping one end): each
  task's dump recorded its end ``outside``, with its queue; the tree view joins the two
  (:func:`ckpt.files.unix.joined`), and the pair is one object of two descriptions, made
  once by ``socketpair`` in the owner, which also sends each end's recorded messages from
  the other and sets the options (its kind's later steps, run in :func:`open_owned`);
* one pipe or FIFO whose descriptions are in different tasks (a shell pipeline
  ``a | b``: the shell made the pipe, ``a`` holds the write end at fd 1, ``b`` the read end
  at fd 0, the shell closed both; zdtm ``pipe00``, ``pstree``).  The dump records each
  task's descriptions of it with the pipe's inode, and the bytes in it (ckpt/files/pipe.py:
  recorded whoever else holds it, and at fds 0-2 too); the tasks holding one are told
  apart by that inode.

**The plan** (:func:`plan`, before anything is created).  Each description is a set of
``(pid, file id)`` joined by the tree's ``inherited`` and ``shared_with`` pairs; a pipe
object is all the descriptions of one pipe inode.  An object held by two tasks or more
(not only through fork from one holder) becomes :class:`Handed` items, one per
description: its *owner* is the LCA of the tasks holding it (not counting those that
inherit it from a holding parent), its *takers* those tasks.  A taker's record becomes an
:class:`ckpt.files.inherit.InheritedFile` (kind "inherited"), placed from the handed-down fd
like one from ``--inherit-fd``; one at fds 0-2 replaces the stream.  The tree root's own
fds 0-2 stay the restore's streams, as for a single process; a file, directory or eventfd
another task has at fds 0-2 not from its parent (``sed > out`` in a shell pipeline) is an
item of its own, which that task opens itself.

**In the tasks** (the builder of :mod:`ckpt.pstree`).  The owner opens each of its items
(the kind's own ``open`` of the first taker's record, in a context of its own: a pipe is
made once with ``pipe2`` and filled once) at an fd above every fd number any task places,
after taking the restored process's filesystem identity and before its own open files
(:func:`open_owned`); it then creates its children, which inherit those fds by fork.  Each
task between the owner and a taker keeps the fd across its setup (:func:`keep`), each
taker takes a copy of it for its record (:func:`take`), and every one of them closes it
once its own children exist (:func:`release`): the owner closes what it does not hold
itself.  The fd numbers are in :attr:`HandDown.fds`, set in the owner and copied to its
children by fork with the rest of the builder's memory.

Refused by name (:func:`reasons`): a shared description of a kind that cannot be opened
apart from its task (sockets other than a pair's ends, epoll, ttys, memfds: their records
depend on other files of the task, or on objects the task makes), a pipe with an end held
outside the tree, a socket pair with an end only at the root's fds 0-2, and what the unix
kind refuses of each end (credentials of the other task on a queued message).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImageError
from ..image.schema import File, Object, PipeFile, State, UnixFile
from ..pstree import lowest_common_ancestor
from . import kind_named
from .base import STD_STREAMS, PlannedFile, RestoreContext
from .inherit import Given, InheritedFile
from .rules import describe
from .unix import across, joined

__all__ = ["HandDown", "Handed", "HandedObject", "plan", "plan_objects", "reasons", "tree_view", "open_owned",
           "take", "keep", "release", "is_handed", "objects_made_once", "make_objects", "fill_objects"]

# Kinds whose record is opened the same in any task (by path, pipe2, or from nothing).
HANDABLE = frozenset({"regular", "directory", "pipe", "fifo", "eventfd"})
_PIPES = ("pipe", "fifo")
_HANDED_KEY = "handed down by"
# The file ids of a socket pair's ends in their owner's own context (open_owned): apart
# from every task's (FILE_ID is a U32), each end naming the other as its peer and sender.
_PAIR_IDS = 1 << 33


def _handable(record: File) -> bool:
    """A record any task of the tree can open for the others: a file, directory, pipe, FIFO,
    eventfd, or one end of a unix socket pair whose other end another task holds."""
    return record.kind in HANDABLE or isinstance(record, UnixFile) and across(record)


def _pipe_key(f: File) -> tuple[Any, ...]:
    return ("pipe", f.ino) if f.kind == "pipe" else ("fifo", f.dev, f.ino)


def _ends(flags: int) -> set[str]:
    access = flags & os.O_ACCMODE
    return {"read"} if access == os.O_RDONLY else {"write"} if access == os.O_WRONLY else {"read", "write"}


# -- the tree's view of a pipe ----------------------------------------------------------------


def tree_view(tree: Sequence[Any], states: Mapping[int, State]) -> dict[int, State]:
    """Each task's state as the tree restores it: two unix sockets of different tasks
    connected to each other are a pair (:func:`ckpt.files.unix.joined`); a pipe another task of the tree holds
    is no longer "also open in" that task (``holders``), and an end it lacks that a task of
    the tree has is no longer hidden; other holders stay, and are refused as before.  A
    pipe handed over like that whose bytes no record holds (an older ckpt recorded none
    when another process held the pipe) gets a ``problem``, which refuses it."""
    pids = {t.pid for t in tree}
    states = joined(states)
    ends: dict[tuple[Any, ...], set[str]] = {}
    recorded: dict[tuple[Any, ...], bool] = {}
    for state in states.values():
        for f in state.files or ():
            if isinstance(f, InheritedFile):   # taken from another task: the pipe it was
                f = f.given.was
            if isinstance(f, PipeFile) and f.kind in _PIPES:
                key = _pipe_key(f)
                ends.setdefault(key, set()).update(_ends(f.flags))
                recorded[key] = recorded.get(key, False) or f.data is not None
    out = {}
    for pid, state in states.items():
        files = list(state.files or ())
        changed = False
        for i, f in enumerate(files):
            if not isinstance(f, PipeFile) or f.kind not in _PIPES:
                continue
            key = _pipe_key(f)
            holders = tuple(h for h in f.holders if h[0] not in pids)
            hidden = "" if f.hidden and f.hidden in ends[key] else f.hidden
            if (holders, hidden) == (tuple(f.holders), f.hidden):
                continue
            problem = f.problem
            if not recorded[key] and not problem:
                problem = "the bytes in it were not recorded (a checkpoint by an older ckpt)"
            files[i] = dataclasses.replace(f, holders=holders, hidden=hidden, problem=problem)
            changed = True
        out[pid] = dataclasses.replace(state, files=tuple(files)) if changed else state
    return out


# -- the plan -----------------------------------------------------------------------------------


Node = tuple[int, int]   # (pid, file id): one task's record of an open file description


@dataclass(frozen=True)
class Handed:
    """One open file description the tree makes once: opened by ``owner`` from ``record``
    (a taker's), handed down by fork to ``takers`` ((pid, file id, fds) each)."""

    key: int
    owner: int
    record: File
    source: int                                   # the pid whose record it is
    takers: tuple[tuple[int, int, tuple[int, ...]], ...]


@dataclass
class HandDown:
    """What the tree's tasks hand down (:func:`plan`); ``fds`` is filled in the tasks."""

    items: list[Handed] = field(default_factory=list)
    keepers: dict[int, set[int]] = field(default_factory=dict)   # pid -> keys it keeps for its children
    states: dict[int, State] = field(default_factory=dict)        # pid -> its state, takers' records replaced
    fds: dict[int, int] = field(default_factory=dict)             # key -> its fd in this task
    objects: list[HandedObject] = field(default_factory=list)     # file objects (plan_objects)

    def owned(self, pid: int) -> list[Handed]:
        return [h for h in self.items if h.owner == pid]

    def taken(self, pid: int) -> list[tuple[Handed, int, tuple[int, ...]]]:
        return [(h, file_id, fds) for h in self.items for p, file_id, fds in h.takers if p == pid]


def plan(tree: Sequence[Any], states: Mapping[int, State]) -> HandDown:
    """Which descriptions the tasks of ``tree`` (root first) share outside the fork line,
    who opens each and who takes it; ``states``: every live task's state (its tree view,
    :func:`tree_view`).  Refusals are :func:`reasons`' (this plans what it is given)."""
    out = HandDown(states=dict(states))
    objects = _objects(tree, states)
    parents = {t.pid: t.ppid for t in tree}
    key = 0
    for components in objects:
        holders = {pid for component in components for pid, _ in _takers(component, tree, states)}
        owner = lowest_common_ancestor(holders, parents)
        data = _pipe_data(states, components)
        firsts = list(_firsts(components, tree, states))
        pair_ids = {record.ino: _PAIR_IDS + key + i for i, (_, record) in enumerate(firsts)}
        for takers, record in firsts:
            source = takers[0][0]
            if isinstance(record, PipeFile):
                record, data = dataclasses.replace(record, data=data[0], packets=data[1]), (None, None)
            elif isinstance(record, UnixFile):
                record = _paired(record, pair_ids)
            item = Handed(key, owner, record, source,
                          tuple((pid, fid, _fds(states[pid], fid)) for pid, fid in takers))
            out.items.append(item)
            out.keepers.setdefault(owner, set()).add(key)   # it closes them once its children exist
            for pid, _ in takers:
                for up in _path(pid, owner, parents):
                    out.keepers.setdefault(up, set()).add(key)
            key += 1
    for item in out.items:
        for pid, file_id, _ in item.takers:
            out.states[pid] = _given(out.states[pid], file_id, item)
    return out


def reasons(tree: Sequence[Any], states: Mapping[int, State]) -> list[str]:
    """Why the tree's shared descriptions cannot be made once and handed down ([] when
    they can); ``states``: the tree view of every live task's state."""
    out = []
    for components in _objects(tree, states):
        firsts = list(_firsts(components, tree, states))
        if firsts and isinstance(firsts[0][1], UnixFile) and across(firsts[0][1]) and len(firsts) != 2:
            p, f = firsts[0][0][0]
            out.append(f"fd {_fds_text(states[p], f)} of pid {p} is {describe(firsts[0][1])}, whose other end is "
                       "only at fds 0-2 of the tree's root, which a restore replaces")
        for takers, record in firsts:
            who = ", ".join(f"fd {_fds_text(states[p], f)} of pid {p}" for p, f in takers)
            if not _handable(record):
                out.append(f"{who} {'is' if len(takers) == 1 else 'are'} one open file ({describe(record)}), "
                           f"held by several tasks of the tree not through their parents; ckpt can hand down "
                           f"only files, directories, pipes, FIFOs and eventfds")
        records = [_record(states[p], f) for component in components for p, f in component]
        pipes = [r for r in records if isinstance(r, PipeFile)]
        if pipes:
            have = set().union(*(_ends(r.flags) for r in pipes))
            lacking = {r.hidden for r in pipes if r.hidden and r.hidden not in have}
            for end in sorted(lacking):
                out.append(f"{describe(pipes[0])}, held by several tasks of the tree: its {end} end is open "
                           "outside the tree, which ckpt cannot restore")
    return list(dict.fromkeys(out))


def _objects(tree: Sequence[Any], states: Mapping[int, State]) -> list[list[list[Node]]]:
    """The objects the tree hands down: each a list of its descriptions (lists of nodes)."""
    uf: dict[Node, Node] = {}

    def find(n: Node) -> Node:
        while uf[n] != n:
            uf[n] = uf[uf[n]]
            n = uf[n]
        return n

    def union(a: Node | None, b: Node | None) -> None:
        if a is not None and b is not None and a in uf and b in uf:
            uf[find(a)] = find(b)

    by_fd = {pid: {e.fd: e.file for e in state.fds or ()} for pid, state in states.items()}
    for pid, state in states.items():
        for f in state.files or ():
            uf[(pid, f.id)] = (pid, f.id)

    def node(pid: int, fd: int) -> Node | None:
        file_id = by_fd.get(pid, {}).get(fd)
        return None if file_id is None else (pid, file_id)

    sideways: set[Node] = set()
    for t in tree:
        for fd, pfd in t.inherited:
            union(node(t.pid, fd), node(t.ppid, pfd))
        for fd, other, ofd in t.shared_with:
            a, b = node(t.pid, fd), node(other, ofd)
            union(a, b)
            sideways.update(n for n in (a, b) if n is not None)
    components: dict[Node, list[Node]] = {}
    for n in uf:
        components.setdefault(find(n), []).append(n)
    sideways_roots = {find(n) for n in sideways}
    pipes: dict[tuple[Any, ...], list[list[Node]]] = {}
    out: list[list[list[Node]]] = []
    for root, component in components.items():
        pid, file_id = component[0]
        record = _record(states[pid], file_id)
        if record.kind in _PIPES:
            pipes.setdefault(_pipe_key(record), []).append(component)
        elif isinstance(record, UnixFile) and across(record):   # its two ends: one object
            pipes.setdefault(("unix", frozenset((record.ino, record.peer))), []).append(component)
        elif root in sideways_roots or record.kind in HANDABLE and any(
                pid != tree[0].pid and set(_fds(states[pid], fid)) & set(STD_STREAMS)
                for pid, fid in _takers(component, tree, states)):
            # Shared sideways; or a non-root task's own file at fds 0-2 (``cmd > out`` in a
            # shell), which it opens itself rather than keep its parent's stream.
            out.append([component])
    for descriptions in pipes.values():
        holders = {pid for c in descriptions for pid, _ in _takers(c, tree, states)}
        if len(holders) > 1:
            out.append(descriptions)
    return out


def _firsts(components: list[list[Node]], tree: Sequence[Any],
            states: Mapping[int, State]) -> Iterator[tuple[list[Node], File]]:
    """Each description of an object that tasks take: its takers, and the first one's record."""
    for component in components:
        takers = _takers(component, tree, states)
        if takers:
            pid, file_id = takers[0]
            yield takers, _record(states[pid], file_id)


def _takers(component: list[Node], tree: Sequence[Any], states: Mapping[int, State]) -> list[Node]:
    """The nodes of a description that do not inherit it from their parent, the tree root's
    fds 0-2 left out (the restore's streams): lowest pid first."""
    inherited = {(t.pid, fd) for t in tree for fd, _ in t.inherited}
    root = tree[0].pid
    out = []
    for pid, file_id in component:
        fds = _fds(states[pid], file_id)
        if all((pid, fd) in inherited for fd in fds):
            continue
        if pid == root and all(fd in STD_STREAMS for fd in fds):
            continue
        out.append((pid, file_id))
    return sorted(out)


def _path(pid: int, owner: int, parents: Mapping[int, int]) -> list[int]:
    """The tasks from ``owner`` down to ``pid``'s parent (none when ``pid`` is the owner)."""
    out = []
    while pid != owner:
        pid = parents[pid]
        out.append(pid)
    return out


def _record(state: State, file_id: int) -> File:
    return next(f for f in state.files or () if f.id == file_id)


def _fds(state: State, file_id: int) -> tuple[int, ...]:
    return tuple(e.fd for e in state.fds or () if e.file == file_id)


def _fds_text(state: State, file_id: int) -> str:
    return ", ".join(str(fd) for fd in _fds(state, file_id))


def _pipe_data(states: Mapping[int, State], components: list[list[Node]]) -> tuple[bytes | None, Any]:
    """The bytes of a handed pipe (and its packets): the first record holding some, else
    an empty record's; written once, by its first description opened."""
    best: tuple[bytes | None, Any] = (None, None)
    for component in components:
        for pid, file_id in component:
            r = _record(states[pid], file_id)
            if isinstance(r, PipeFile) and r.data is not None:
                if r.data:
                    return r.data, r.packets
                best = (r.data, r.packets)
    return best


def _paired(record: UnixFile, ids: Mapping[int, int]) -> UnixFile:
    """One end of a socket pair as its owner makes it (:func:`open_owned`): its id and its
    peer's (the sender of its messages) those of the pair's two items, ``ids`` (inode -> id)."""
    peer = ids.get(record.peer or 0)
    queue = tuple(dataclasses.replace(m, sender=peer) for m in record.queue)
    return dataclasses.replace(record, id=ids[record.ino], peer_file=peer, queue=queue)


def _given(state: State, file_id: int, item: Handed) -> State:
    """``state`` with record ``file_id`` an InheritedFile of ``item`` (fd taken in the task)."""
    files = []
    for f in state.files or ():
        if f.id == file_id:
            common = {name: getattr(f, name) for name in File.RECORD.fields}
            f = InheritedFile(**{**common, "kind": "inherited"},
                              given=Given(-1, f"{_HANDED_KEY} pid {item.owner}", f))
        files.append(f)
    return dataclasses.replace(state, files=tuple(files))


def is_handed(file: File) -> bool:
    """An open file :func:`plan` hands down (its fd is taken by :func:`take`, not from ``given.fd``)."""
    return isinstance(file, InheritedFile) and file.given.fd < 0


# -- checks before the build ------------------------------------------------------------------


def preflight(item: Handed, ctx: RestoreContext) -> None:
    """Let ``item``'s kind check what it needs, as its owner will open it (``ctx``: the
    owner's; the caller acts as the owner's filesystem identity)."""
    planned = _planned(item)
    planned.kind.check(planned)
    planned.kind.preflight(planned, ctx)


def _planned(item: Handed) -> PlannedFile:
    kind = kind_named(item.record.kind)
    assert kind is not None
    numbers = next(fds for pid, _, fds in item.takers if pid == item.source)
    return PlannedFile(item.record.id, item.record, kind, numbers, tuple(False for _ in numbers))


# -- in the tasks ---------------------------------------------------------------------------------


def open_owned(hd: HandDown, pid: int, ctx: RestoreContext) -> None:  # pragma: no cover - in a task
    """In the owner ``pid``, before its own open files (its filesystem identity taken): open
    each item it owns, once, at an fd above every fd number placed (``ctx.park_above``),
    then take its own share of them (:func:`take`)."""
    own = dataclasses.replace(ctx, opened={}, records={}, parked={}, objects={}, objects_given=set(),
                              finishing=[])
    made: dict[int, int] = {}   # key -> fd
    try:
        for item in hd.owned(pid):
            planned = _planned(item)
            made[item.key] = fd = planned.kind.open(planned, own)
            own.opened[item.record.id] = fd
            own.records[item.record.id] = item.record
        for step in own.finishing:   # a socket pair's queues, options and checks (ckpt/files/unix_restore.py)
            step()
        for key, fd in made.items():
            hd.fds[key] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, ctx.park_above)
    finally:
        for fd in made.values():
            os.close(fd)
        for key in list(own.parked):   # what no description took (an end no task has)
            os.close(own.parked.pop(key))
    streams: dict[int, int] = {}
    take(hd, pid, ctx, streams, owned=True)
    for n, fd in streams.items():   # its fds 0-2 are in place already: replaced here
        os.dup2(fd, n)
        os.close(fd)


def take(hd: HandDown, pid: int, ctx: RestoreContext, streams: dict[int, int], *,  # pragma: no cover
         owned: bool = False) -> None:
    """In a taker ``pid``, the items it does not own (``owned``: those it owns, once open):
    a copy of each item's fd parked for its record, or put in ``streams`` for fds 0-2."""
    for item, file_id, fds in hd.taken(pid):
        if (item.owner == pid) != owned:
            continue
        fd = hd.fds[item.key]
        if any(n not in STD_STREAMS for n in fds) and ("inherit", file_id) not in ctx.parked:
            ctx.park(("inherit", file_id), os.dup(fd))
        for n in fds:
            if n in STD_STREAMS:
                if n in streams:
                    os.close(streams[n])
                streams[n] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, ctx.park_above)


def keep(hd: HandDown, pid: int) -> set[int]:
    """The handed fds task ``pid`` keeps across its setup, for its children."""
    return {hd.fds[k] for k in hd.keepers.get(pid, ()) if k in hd.fds}


def release(hd: HandDown, pid: int) -> None:  # pragma: no cover - in a task
    """Once ``pid``'s children exist: close the handed fds it kept for them."""
    for k in hd.keepers.get(pid, ()):
        fd = hd.fds.pop(k, None)
        if fd is not None:
            os.close(fd)



# -- file objects: memfds and deleted files several tasks hold or map --------------------------
#
# A memfd or a deleted file (multiprocessing's heap: an unlinked file in /dev/shm that the
# parent maps before it forks its workers; glibc's named semaphores, sem_open then
# sem_unlink) is one file that several tasks map or hold at their own fds.  Each task's
# record of it (``state.objects``, ckpt/files/objects.py) names it by device and inode;
# the dump keeps its content once (the first task's record, ``stored_by`` 0 -- the others
# name that task).  A restore makes it once, in the lowest common ancestor of the tasks
# that need a file of it (the *takers*: each maps it, or holds it at an fd of its own), with
# the keeper's record, before that ancestor creates its children; each taker puts a copy
# of it at its own object's fd number (ckpt.files.objects.create), from which its rebuild
# maps it and its open files reopen it, as for an object of its own.  ckpt fills the file
# once, through one taker, before any rebuild maps it (:func:`fill_objects`), and sets its
# times and seals once every task has mapped it.  The fds travel as the other items'
# do: :attr:`HandDown.fds`, :func:`keep`, :func:`release`.


@dataclass(frozen=True)
class HandedObject:
    """One file object the tree makes once: by ``owner`` from ``record`` (the keeper's,
    whose checkpoint holds its content: ``source``), handed down by fork to ``takers``
    ((pid, its object id) each)."""

    key: int
    owner: int
    record: Object
    source: int
    takers: tuple[tuple[int, int], ...]


def _object_key(record: Object) -> tuple[int, int]:
    return (record.dev, record.ino)


def _keepers(states: Mapping[int, State]) -> dict[tuple[int, int], tuple[int, Object]]:
    """Per file object (device, inode), the task whose record keeps its content and that
    record; ``ImageError`` when two records keep one, or a record names a keeper that does
    not keep it."""
    keeping: dict[tuple[int, int], tuple[int, Object]] = {}
    for pid, state in states.items():
        for o in state.objects:
            if not o.stored_by and not o.problem:
                if _object_key(o) in keeping:
                    raise ImageError(f"{_describe_object(o)} is kept by both pid {keeping[_object_key(o)][0]} "
                                     f"and pid {pid}")
                keeping[_object_key(o)] = (pid, o)
    for pid, state in states.items():
        for o in state.objects:
            if o.stored_by and keeping.get(_object_key(o), (0, None))[0] != o.stored_by:
                raise ImageError(f"pid {pid}: {_describe_object(o)} is said to be kept by pid {o.stored_by}, "
                                 "which keeps no such file")
    return keeping


def _describe_object(record: Object) -> str:
    from .objects import describe as describe_object   # objects imports this package's kinds

    return describe_object(record)


def objects_made_once(states: Sequence[State]) -> set[tuple[int, int]]:
    """The file objects (``(st_dev, st_ino)``) of a tree's tasks (``states``) that a restore
    makes once for all of them: one record keeps the content and every other names it
    (dump's ``stored_by``); the others are refused as shared memory (ckpt/restorability.py)."""
    by_pid = {}
    for state in states:
        pid = state.target.pid if state.target is not None else state.process.pid if state.process else 0
        by_pid[pid] = state
    try:
        keeping = _keepers(by_pid)
    except ImageError:
        return set()
    out = set(keeping)
    for state in states:
        out -= {_object_key(o) for o in state.objects if o.problem}
    return out


def plan_objects(hd: HandDown, tree: Sequence[Any], planned: Mapping[int, Any]) -> dict[int, Any]:
    """Add to ``hd`` the file objects several live tasks of ``tree`` make (``planned``: each
    one's :class:`ckpt.files.objects.ObjectPlan`), or that one makes from another task's
    record; return each task's plan with those marked ``handed``."""
    keeping = _keepers(hd.states)
    parents = {t.pid: t.ppid for t in tree}
    takers: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for pid, obj_plan in planned.items():
        for o in obj_plan.objects:
            takers.setdefault(_object_key(o.record), []).append((pid, o.id))
    key = max((h.key for h in hd.items), default=-1) + 1
    out = dict(planned)
    for object_key, who in takers.items():
        if len(who) < 2 and not any(_record_of(planned[p], i).stored_by for p, i in who):
            continue
        if object_key not in keeping:
            pid, obj_id = who[0]
            raise ImageError(f"pid {pid}: no task's checkpoint keeps {_describe_object(_record_of(planned[pid], obj_id))}")
        source, record = keeping[object_key]
        owner = lowest_common_ancestor({p for p, _ in who}, parents)
        hd.objects.append(HandedObject(key, owner, record, source, tuple(sorted(who))))
        hd.keepers.setdefault(owner, set()).add(key)
        for pid, obj_id in who:
            hd.keepers.setdefault(pid, set()).add(key)   # it takes it inside its setup (make_objects)
            for up in _path(pid, owner, parents):
                hd.keepers.setdefault(up, set()).add(key)
            out[pid] = dataclasses.replace(out[pid], handed=out[pid].handed | {obj_id})
        key += 1
    return out


def _record_of(obj_plan: Any, obj_id: int) -> Object:
    return next(o.record for o in obj_plan.objects if o.id == obj_id)


def preflight_object(item: HandedObject, same_boot: bool) -> None:
    """As ``item``'s owner will make it (the caller acts as the owner's filesystem identity):
    a deleted file's directory is the one the dump saw, and the owner may create in it."""
    from .objects import ObjectPlan, PlannedObject, preflight as preflight_objects

    preflight_objects(ObjectPlan((PlannedObject(item.record, 0, None),), same_boot=same_boot))


def make_objects(hd: HandDown, pid: int, ctx: RestoreContext,
                 same_boot: bool) -> tuple[dict[int, int], list[str]]:  # pragma: no cover - in a task
    """In task ``pid``, its filesystem identity taken, before it makes its own objects: make
    each object it owns once (an fd above every fd number placed, kept for its children);
    return, for each it takes, its object id -> that fd, and the notes.  Its open files of
    them reopen the file (``ctx.objects_given``): none gets the made file's own
    description, which another task's may be."""
    from .objects import make

    notes: list[str] = []
    for item in hd.objects:
        if item.owner == pid:
            fd, more = make(item.record, same_boot)
            notes += more
            hd.fds[item.key] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, ctx.park_above)
            os.close(fd)
    given = {}
    for item in hd.objects:
        for taker, obj_id in item.takers:
            if taker == pid:
                given[obj_id] = hd.fds[item.key]
                ctx.objects_given.add(obj_id)
    return given, notes


def fill_objects(hd: HandDown, pids: Mapping[int, int], planned: Mapping[int, Any],
                 checkpoints: Mapping[int, Any]) -> list[Any]:
    """Once the tree is built and seized, before any rebuild maps them: write each handed
    object's content, from its keeper's checkpoint, through its first taker's fd (``pids``:
    recorded -> now).  Returns the fillers, whose ``seal`` sets the times and seals once
    every task has mapped the objects (and which the caller closes)."""
    from .objects import Filler, ObjectPlan, PlannedObject

    fillers: list[Any] = []
    try:
        for item in hd.objects:
            pid, obj_id = item.takers[0]
            mine = next(o for o in planned[pid].objects if o.id == obj_id)
            filler = Filler(pids[pid], ObjectPlan((PlannedObject(item.record, mine.number, None),)),
                            checkpoints[item.source])
            fillers.append(filler)
            filler.fill()
    except BaseException:
        for filler in fillers:
            filler.close()
        raise
    return fillers

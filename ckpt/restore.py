"""``ckpt restore``: bring a checkpointed process back to life.

The order follows CRIU's restorer (KERNEL-FACTS.md D) as proven from Python in
KERNEL-FACTS.md G, with ptrace injection instead of a restorer blob:

1. *Checks* before anything is created: the checkpoint is restorable (not a
   ``pre``), its images ask for no more than their owner may have
   (:mod:`ckpt.trust`) and every file the child will open opens as it will
   (:func:`preflight`), every mapped file has the recorded size and mtime, no fd or mapping of an unsupported kind, the kernel's vDSO areas
   have the checkpoint's sizes, the pid is free (``--same-pid``).
2. *Fork* a child that dies with ckpt until it is traced, resets its signal
   handlers, closes every fd, takes the restored process's filesystem identity
   when the images are not root-trusted, and opens every file the process will
   have, each verified to be the file the dump saw (:func:`ckpt.trust.open_verified`):
   the saved open files, each once, at every fd number that shared it, with its
   flags and offset (:mod:`ckpt.files`; 0-2 are ckpt's own streams or the files
   given), the mapped files and the exe (at high numbers the rebuild maps and
   closes), cwd and root (chroot); then rlimits and umask,
   ``PTRACE_TRACEME`` and a stop.
3. *Rebuild* it by injected syscalls (:mod:`ckpt.rebuild`): trampoline page,
   rseq unregistered, vDSO moved, old layout unmapped, saved VMAs mapped, pages
   written (each from the newest checkpoint holding it, frame by frame),
   mm fields, sigactions, threads, per-thread kernel state, credentials.
4. *Release*: registers, xstate and sigmask of every thread, detach.

If any step fails, the half-built process is killed (``PTRACE_O_EXITKILL``
covers ckpt itself dying) and the error names the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import cgroups, files, log, namedshm, procfs, pstree, restorability, seccomp, treememory, trust
from .files import handdown, tty, unix
from .files.inherit import InheritedFile, from_parent
from .files.tree import table_shared
from ._sys import ptrace as pt
from ._sys.libc import SYS_rt_sigaction, address_of, syscall, tune_malloc
from .errors import CkptError, ImageError, NotRestorable, TargetError
from .image import Checkpoint, ImageDir, VmaRecord
from .image.schema import State, Task, Thread
from .lazy import UNTRACKED as LAZY_UNTRACKED, LazyMemory, refuse as refuse_lazy
from .tracker import FILE_PRIVATE, FILE_SHARED

# How ckpt traces the restore child and, inherited, the threads it clones: killed
# with ckpt, syscall stops told from signal stops (ckpt.live.inject_syscall).
TRACE_OPTIONS = pt.PTRACE_O_TRACECLONE | pt.PTRACE_O_EXITKILL | pt.PTRACE_O_TRACESYSGOOD

VDSO_AREAS = ("[vvar]", "[vvar_vclock]", "[vdso]")
_DELETED = " (deleted)"   # how /proc/PID/maps names an unlinked file
CHILD_FAILED = pstree.BUILD_FAILED   # exit status of a restore child that could not set itself up


@dataclass
class RestoreResult:
    """What a restore made: the new process, and (without ``detach``) how it ended."""

    pid: int
    checkpoint: int
    threads: int
    notes: list[str] = field(default_factory=list)
    exit_status: int | None = None  # waitpid status once it ended (detach=False)
    # recorded pid -> pid now, of every task restored (a tree's: every task, zombies too)
    pids: dict[int, int] = field(default_factory=dict)
    page_server: int | None = None   # pid of the page server of a lazy restore (ckpt/lazy.py)
    # detach=True with hold_signals=True: the signals held for the caller's own wait
    held_signals: HeldSignals | None = field(default=None, repr=False, compare=False)

    @property
    def exit_code(self) -> int | None:
        """The process's exit code as a shell reports it (128+N for signal N)."""
        if self.exit_status is None:
            return None
        if os.WIFSIGNALED(self.exit_status):
            return 128 + os.WTERMSIG(self.exit_status)
        return os.WEXITSTATUS(self.exit_status)

    def to_dict(self) -> dict[str, Any]:
        """The ``ckpt restore --json`` object: every key is an attribute of the same name
        (``pids`` with its keys as strings, as JSON has them)."""
        return {"pid": self.pid, "checkpoint": self.checkpoint, "threads": self.threads,
                "notes": self.notes, "exit_code": self.exit_code,
                "pids": {str(old): new for old, new in self.pids.items()}, "page_server": self.page_server}


def pick_checkpoint(images: ImageDir, checkpoint: int | None) -> Checkpoint:
    """The checkpoint to restore: the given one, or the newest restorable.

    Only the checkpoints looked at are loaded (newest first), not every one of the
    images directory: each costs its metadata's decode and check (a tenth of a second
    for a process with 20,000 mappings)."""
    if checkpoint is not None:
        cp = images.checkpoint(checkpoint)
        if cp.kind == "pre":
            raise ImageError(f"checkpoint {cp.id} is a pre-dump (memory only): it cannot be restored; "
                             "restore a later full or incremental checkpoint")
        return cp
    for cp_id in reversed(images.ids()):
        cp = images.checkpoint(cp_id)
        if cp.kind != "pre":
            return cp
    raise ImageError(f"{images.path} holds no restorable checkpoint (only pre-dumps, or none)")


def check(cp: Checkpoint, *, same_pid: bool = False,
          streams: Mapping[int, str | os.PathLike[str] | None] | None = None,
          state: State | None = None, shell_job: bool = False, own_pid: bool = True) -> list[str]:
    """Refuse, before creating anything, what this restore cannot reproduce.

    First the rules over what the checkpoint recorded (:mod:`ckpt.restorability`:
    fd kinds, locks, deleted files, device mappings, seccomp, children, ...),
    then what depends on this machine: mapped and open files still there, the
    vDSO layout, the pid.  ``streams`` names the files fds 0-2 get (None: ckpt's
    own); ``state`` is the task state to restore when it is not the checkpoint's
    own (the open files --inherit-fd takes from the caller: :func:`ckpt.files.inherit`);
    ``shell_job``: ``restore --shell-job`` was given; ``own_pid=False``: the pid is not this
    check's to look at (a tree's non-root task: :func:`ckpt.pstree.check_pids`).
    Returns notes about what will differ (a new pid, replaced fds 0-2)."""
    state = cp.state if state is None else state
    others = [(task.state, task.vmas) for task in cp.tasks()[1:]]   # a tree's other tasks
    verdict = restorability.assess_tree([(state, cp.vmas), *others], kind=cp.kind, shell_job=shell_job,
                                        tree_task=cp.is_task)
    if not verdict.restorable or verdict.shell_job:   # (none is left with shell_job)
        raise NotRestorable(f"checkpoint {cp.id}", verdict.reasons + verdict.shell_job)
    for vma in cp.vmas:
        if vma.kind in (FILE_PRIVATE, FILE_SHARED) and vma.object is None:   # objects: ckpt/files/objects.py
            _check_file(vma, cp.id)
    table = files.table(state)
    files.check(files.plan(table, files.RestoreContext(cp.id, same_boot=False)))
    _check_vdso(cp)
    _check_seccomp(cp)
    notes = files.std_stream_notes(table, streams)
    pid = state.target.pid if state.target is not None else cp.pid
    if own_pid and same_pid:
        if os.path.exists(f"/proc/{pid}"):
            raise TargetError(f"pid {pid} is in use; restore without --same-pid to get a new one")
    elif own_pid:
        notes.append(f"restored with a new pid (was {pid})")
    return notes


def _check_file(vma: VmaRecord, cp_id: int) -> None:
    path = vma.path
    try:
        st = os.stat(path)
    except OSError:
        raise ImageError(f"checkpoint {cp_id}: mapped file {path} is missing") from None
    if vma.file_size is None or vma.file_mtime_ns is None:
        return  # identity not recorded (file was replaced at dump time): nothing to compare
    if st.st_size != vma.file_size or st.st_mtime_ns != vma.file_mtime_ns:
        raise ImageError(f"checkpoint {cp_id}: mapped file {path} changed since the checkpoint "
                         f"(size {vma.file_size} -> {st.st_size}, mtime differs: "
                         f"{st.st_mtime_ns != vma.file_mtime_ns})")


def _check_seccomp(cp: Checkpoint) -> None:
    """Restoring seccomp filters needs CAP_SYS_ADMIN, and ckpt not under seccomp
    itself: the rest of the rebuild runs with PTRACE_O_SUSPEND_SECCOMP
    (kernel/ptrace.c ptrace_setoptions; see ckpt.rebuild.install_seccomp_filters)."""
    if not any(t.seccomp_filter is not None for t in cp.state.threads or ()):
        return
    why = seccomp.suspension_unavailable()
    if why:
        raise NotRestorable(f"checkpoint {cp.id}", (
            f"its threads have seccomp filters, and restoring them needs CAP_SYS_ADMIN in ckpt "
            f"(PTRACE_O_SUSPEND_SECCOMP) and ckpt not itself under seccomp: {why}",))


def vdso_layout(maps: list[Any]) -> dict[str, int]:
    """Sizes of the kernel-provided areas, by name."""
    return {m.path: m.end - m.start for m in maps if m.path in VDSO_AREAS}


def _check_vdso(cp: Checkpoint) -> None:
    """The vDSO areas the checkpoint has are this kernel's (same sizes); those it
    lacks, because the process had unmapped them, the rebuild unmaps too."""
    saved = vdso_layout(cp.vmas)
    ours = vdso_layout(procfs.read_maps(os.getpid()))
    if any(ours.get(name) != size for name, size in saved.items()):
        raise TargetError(f"the vDSO layout of this kernel ({_fmt(ours)}) differs from the "
                          f"checkpoint's ({_fmt(saved)}); restore on the kernel it was taken on")


def _fmt(layout: dict[str, int]) -> str:
    return ", ".join(f"{k} {v // 4096} pages" for k, v in layout.items()) or "none"


def restore(images_dir: str | os.PathLike[str], checkpoint: int | None = None, *, detach: bool = False,
            same_pid: bool = False, stdin: str | os.PathLike[str] | None = None,
            stdout: str | os.PathLike[str] | None = None,
            stderr: str | os.PathLike[str] | None = None,
            inherit_fds: Mapping[int, str] | None = None, tcp_established: bool = False,
            ext_unix_sk: bool = False, shell_job: bool = False, own_session: bool | None = None,
            progress: Callable[[str, int, int], None] | None = None, track: bool = True,
            lazy: bool = False, hold_signals: bool | None = None) -> RestoreResult:
    """Restore a checkpoint of ``images_dir`` into a new process.

    The new process is a child of the caller.  By default (as ``ckpt restore`` and
    ``criu restore``) this waits for it and fills ``exit_status``: a process that led
    neither its session nor its process group is in the caller's group, so that the
    terminal's Ctrl-C, Ctrl-Z and Ctrl-\\ reach it as any foreground command, and a
    signal sent to the caller with kill(2) is passed on once (:func:`wait_forwarding_signals`).
    ``detach=True`` returns as soon as it runs, in a session of its own unless it keeps the
    caller's terminal (``shell_job``); reap it with ``os.waitpid(result.pid, 0)`` when it
    ends (the ``ckpt restore --detach`` command simply exits and leaves it to init).
    ``own_session`` overrides that choice of session (None: as ``detach``).
    Standard streams default to the caller's own; give paths to redirect them
    (``ckpt restore --detach`` gives /dev/null).
    ``inherit_fds`` maps an fd of the caller to an open file of the checkpoint (its
    target, as ``ckpt inspect --fds`` shows it: ``{5: "pipe:[123]"}``), which the
    restored process gets in its place (``--inherit-fd``, :mod:`ckpt.files.inherit`):
    a pipe or FIFO whose other end was outside the process.

    Images not owned by root restore with at most their owner's identity, and
    every file is opened as the dump saw it (see :mod:`ckpt.trust`).
    ``tcp_established`` restores TCP connections too, with TCP_REPAIR (root's
    images, on the host they were dumped on, after ``dump --kill``:
    :mod:`ckpt.files.tcp_repair`); without it they are refused by name.
    ``ext_unix_sk`` connects unix sockets whose peer was outside the process to
    that peer's name again (``--ext-unix-sk``, :func:`ckpt.files.unix.external`);
    without it they are refused by name.
    ``shell_job`` lets a process whose controlling terminal was outside it (the terminal
    it was started from) be restored as a job of the caller's terminal (``--shell-job``,
    :mod:`ckpt.files.tty`): it stays in the caller's session and in this process's
    group; without it that is refused by name.
    ``progress(phase, done, total)`` is called as the memory is written (bytes), as
    ``ckpt.dump``'s is.
    The restored process keeps its chain: its next ``ckpt dump`` into ``images_dir`` is
    a child of the restored checkpoint, incremental when ``track`` (write tracking armed
    before the release, kept by a holder: :mod:`ckpt.restoretracking`), full otherwise.
    ``lazy``: the process runs before its private anonymous memory is written; a page server
    (``result.page_server``) fills it on demand and in the background (:mod:`ckpt.lazy`); no
    write tracking is armed then.
    ``hold_signals`` (default: ``not detach``): from the release on, SIGINT, SIGQUIT, SIGTERM
    and SIGHUP sent to the caller are the restored process's, held until
    :func:`wait_forwarding_signals` passes them on; with ``detach`` the caller that waits
    itself gets them in ``result.held_signals`` for that wait (and :func:`release_held` after).
    """
    tune_malloc()
    log.begin("restore", images=images_dir)
    own_session = detach if own_session is None else own_session
    images = ImageDir(images_dir)
    cp = pick_checkpoint(images, checkpoint)
    cp.chain()  # a broken chain is refused before anything is created
    # Whose images, and what they may ask for, before anything else looks at them.
    principal = trust.checkpoint_principal(cp)
    if lazy:
        refuse_lazy(cp)   # what --lazy cannot do yet, by name
        track = False
    if cp.tree:
        return _restore_tree(cp, principal, detach=detach, same_pid=same_pid, streams=(stdin, stdout, stderr),
                             inherit_fds=inherit_fds or {}, tcp_established=tcp_established,
                             ext_unix_sk=ext_unix_sk, shell_job=shell_job, own_session=own_session,
                             progress=progress, track=track, hold_signals=hold_signals)
    trust.check_identity(cp.state, principal, cp.id)
    state, given = files.inherit(cp.state, inherit_fds or {})
    if ext_unix_sk:
        state, external = unix.external(state)
        given += external
    if shell_job:
        state, terminal = tty.shell_job(state)
        given += terminal
    files.fown.check_identity(state, principal, cp.id)
    plan = plan_files(cp, principal, state, tcp_established=tcp_established)
    preflight(plan)
    notes = check(cp, same_pid=same_pid, streams={0: stdin, 1: stdout, 2: stderr}, state=state,
                  shell_job=shell_job) + given
    named = namedshm.NamedShm([cp], principal, plan.fs_identity, plan.same_boot, f"checkpoint {cp.id}")
    log.mark("plan", checkpoint=cp.id)
    # Imported before the fork: a signal during an import leaves no child.
    from .rebuild import Rebuilder
    from .restoretracking import RestoredTracking
    try:
        streams = _open_streams(stdin, stdout, stderr)
    except BaseException:
        named.undo()
        raise
    try:
        with files.handed_down(plan.fds) as inherited, tty.handed_down(plan.fds) as terminals:
            child, child_notes = _fork_child(cp, streams, same_pid, plan, keep=inherited | terminals, state=state,
                                             shell_job=shell_job, own_session=own_session)
    finally:
        for fd in streams.values():
            os.close(fd)
    armed = RestoredTracking(child, cp, untracked="" if track else
                             LAZY_UNTRACKED if lazy else "restored without write tracking")
    memory = LazyMemory(child, cp) if lazy else None
    held: HeldSignals | None = None   # the forwarded signals, held from the release on
    try:
        notes += child_notes
        log.mark("create", pid=child)
        named.prepare()   # SysV segments and /dev/shm files (ckpt/namedshm.py)
        rebuilder = Rebuilder(child, cp, plan, progress=progress, tracking=armed, lazy=memory)
        notes += rebuilder.run(release=False)
        named.done()
        _restore_owners([files.fown.Restored(_recorded_pid(cp), child, state, rebuilder.tids)],
                        {_recorded_pid(cp): child})
        held = hold_forwarded(detach if hold_signals is None else not hold_signals)
        rebuilder.detach()
        log.mark("release")
        server = memory.start_server() if memory is not None else None
        log.mark("start the page server", pid=server)
    except BaseException as err:
        armed.abandon()
        named.undo()
        _kill_and_reap(child)
        if memory is not None:
            memory.close()   # after the kill: a released process would read zeros
        release_held(held)
        if isinstance(err, CkptError):
            raise
        if isinstance(err, OSError):
            raise TargetError(f"restore failed: {err}") from err
        raise
    try:
        notes += armed.hand_over()
        result = RestoreResult(pid=child, checkpoint=cp.id, threads=len(cp.state.threads or ()), notes=notes,
                               pids={_recorded_pid(cp): child}, page_server=server)
        if not detach:
            result.exit_status = wait_forwarding_signals(child, shell_job=shell_job, held=held)
    except BaseException:
        release_held(held)
        raise
    return _held_for_caller(result, held, detach)


@dataclass
class _TaskPlan:
    """One live task of a tree to restore: its checkpoint, the state restored, its files."""

    task: Task
    cp: Checkpoint
    state: State
    files: FilePlan
    streams: dict[int, int]   # fds 0-2 it takes from another fd of its parent (fd -> parent's fd)


def _restore_tree(cp: Checkpoint, principal: trust.Principal, *, detach: bool, same_pid: bool,
                  streams: tuple[Any, Any, Any], inherit_fds: Mapping[int, str], tcp_established: bool,
                  ext_unix_sk: bool, shell_job: bool, own_session: bool = False,
                  progress: Callable[[str, int, int], None] | None = None, track: bool = True,
                  hold_signals: bool | None = None) -> RestoreResult:
    """Restore the process tree of checkpoint ``cp`` (``cp.tree``; :mod:`ckpt.pstree`).

    Every live task is checked and planned as a single process is (its own checkpoint,
    ``cp.task(pid)``), then the tree is built: the root forked by ckpt sets itself up as
    today's restore child does, each task creates its children with their recorded pids;
    fds a task shares with its parent come from the parent's fd (``Task.inherited``).
    Then ckpt seizes every live task, rebuilds each (:class:`ckpt.rebuild.Rebuilder`), and
    releases them all together, children first, stopped tasks into their group stop.
    --inherit-fd, --shell-job and the streams are the root's; the tasks inherit from it."""
    from .rebuild import Rebuilder
    from .restoretracking import RestoredTracking

    tree = cp.tree
    root = tree[0]
    pstree.check_shape(tree, f"checkpoint {cp.id}")
    plans: dict[int, _TaskPlan] = {}
    notes: list[str] = []
    given_streams = {0: streams[0], 1: streams[1], 2: streams[2]}
    hd = _hand_down(cp, tree)
    tables: dict[int, int] = {}   # recorded pid -> the task whose fd table it has (CLONE_FILES)
    for task in tree:
        if not pstree.live(task):
            continue
        task_cp = cp.task(task.pid)
        trust.check_identity(task_cp.state, principal, cp.id)
        state = hd.states[task.pid]
        given: list[str] = []
        tables[task.pid] = tables.get(task.ppid, task.ppid) if "CLONE_FILES" in task.shares else task.pid
        if task is root:
            state, given = files.inherit(state, inherit_fds)
        elif tables[task.pid] != task.pid:
            state = table_shared(state)
        else:
            state = from_parent(state, task.inherited)
        files.fown.check_identity(state, principal, cp.id)
        if ext_unix_sk:
            state, external = unix.external(state)
            given += external
        if shell_job and task is root:
            state, terminal = tty.shell_job(state)
            given += terminal
        plan = plan_files(task_cp, principal, state, tcp_established=tcp_established,
                          first=_first_number(plans, tables, task))
        preflight(plan)
        from_fd = {fd: parent_fd for fd, parent_fd in task.inherited if fd in (0, 1, 2)}
        handed_std = {n for _, _, fds in hd.taken(task.pid) for n in fds if n in (0, 1, 2)}
        task_notes = check(task_cp, same_pid=same_pid, streams=given_streams, state=state,
                           shell_job=shell_job and task is root, own_pid=task is root) + given
        if task is not root:   # its 0-2 that come from its parent follow the root's, noted there
            task_notes = [n for n in task_notes if not any(n.startswith(f"fd {fd} was ")
                                                           for fd in {*from_fd, *handed_std})]
        notes += task_notes if task is root else [f"{pstree.describe(task)}: {n}" for n in task_notes]
        plans[task.pid] = _TaskPlan(task, task_cp, state, plan,
                                    {fd: parent_fd for fd, parent_fd in from_fd.items()
                                     if fd != parent_fd and tables[task.pid] == task.pid})
    pstree.check_pids(tree)
    memory = treememory.plan(tree, cp.state.shared_memory, {pid: p.cp.vmas for pid, p in plans.items()},
                             f"checkpoint {cp.id}")
    memory = treememory.with_cow(memory, tree, {pid: p.cp for pid, p in plans.items()},   # ckpt/cow.py
                                 lambda pid, vma: plans[pid].files.fd_of(vma))
    _hand_down_objects(hd, tree, plans)   # memfds and deleted files several tasks hold: made once
    for item in hd.items:   # what each owner opens for the others, as it will
        with trust.acting_as(plans[item.owner].files.fs_identity):
            handdown.preflight(item, plans[item.owner].files.fds.context)
    # Every fd a task keeps across its setup (the builder's, the parked ones) is above every
    # fd number any task places.
    floor = max(p.files.top for p in plans.values())
    for p in plans.values():
        p.files.fds.context.park_above = floor
    root_plan = plans[root.pid]
    named = namedshm.NamedShm([p.cp for p in plans.values()], principal, root_plan.files.fs_identity,
                              root_plan.files.same_boot, f"checkpoint {cp.id}")
    opened = _open_streams(*streams)

    def setup(task: pstree.TaskRecord, keep: set[int]) -> list[str]:  # pragma: no cover - in a task
        p = plans[task.pid]
        ctx = p.files.fds.context
        def own() -> None:   # the open files it makes for its subtree (ckpt.files.handdown)
            handdown.open_owned(hd, task.pid, ctx)

        def own_objects() -> tuple[dict[int, int], list[str]]:   # and the file objects
            return handdown.make_objects(hd, task.pid, ctx, p.files.same_boot)

        if task is root:
            return _child_setup(p.state, opened, p.files, os.getppid(), keep=keep | handed, shell_job=shell_job,
                                finish=False, before_install=own, hand_objects=own_objects, own_session=own_session)
        for item in p.files.fds.files:   # the open files it shares with its parent, from the parent's fds
            if isinstance(item.file, InheritedFile) and not handdown.is_handed(item.file):
                ctx.park(("inherit", item.id), os.dup(item.file.given.fd))
        moved = {fd: fcntl.fcntl(parent_fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd, parent_fd in p.streams.items()}
        handdown.take(hd, task.pid, ctx, moved)
        return _child_setup(p.state, moved, p.files, os.getppid(),
                            keep=keep | set(ctx.parked.values()) | handdown.keep(hd, task.pid),
                            finish=False, before_install=own, hand_objects=own_objects,
                            own_table=tables[task.pid] == task.pid)

    def finish(task: pstree.TaskRecord) -> list[str]:  # pragma: no cover - in a task
        p = plans[task.pid]
        handdown.release(hd, task.pid)
        _child_finish(p.state, p.files, fs="CLONE_FS" not in task.shares)
        return []

    try:
        with files.handed_down(root_plan.files.fds) as inherited, tty.handed_down(root_plan.files.fds) as terminals:
            handed = inherited | terminals
            built = pstree.build(tree, setup=treememory.premapping(setup, memory), finish=finish, fd_floor=floor,
                                 same_pid=same_pid)
    except BaseException:
        named.undo()
        raise
    finally:
        for fd in opened.values():
            os.close(fd)
    for task in built.order:
        if task is not root:
            notes += [f"{pstree.describe(task)}: {n}" for n in built.notes.get(task.pid, ())]
        else:
            notes += built.notes.get(task.pid, [])
    log.mark("create the tree", tasks=len(built.pids))
    seized: list[int] = []
    fillers: list[Any] = []
    armed: dict[int, RestoredTracking] = {}   # recorded pid -> the tracking its rebuild arms
    held: HeldSignals | None = None   # the forwarded signals, held from the release on
    try:
        for task in built.order:
            if pstree.live(task):
                pstree.seize(built.pids[task.pid], TRACE_OPTIONS)
                seized.append(built.pids[task.pid])
        treememory.fill(memory, built.pids, {pid: p.cp for pid, p in plans.items()})
        named.prepare()   # SysV segments and /dev/shm files (ckpt/namedshm.py)
        fillers = handdown.fill_objects(hd, built.pids, {pid: p.files.objects for pid, p in plans.items()},
                                        {pid: p.cp for pid, p in plans.items()})
        rebuilt = []
        for task in built.order:
            if not pstree.live(task):
                continue
            p = plans[task.pid]
            armed[task.pid] = RestoredTracking(built.pids[task.pid], p.cp,
                                               untracked="" if track else "restored without write tracking")
            rebuilder = Rebuilder(built.pids[task.pid], p.cp, p.files, memory.placements(task.pid, p.cp.vmas),
                                  progress=progress, tracking=armed[task.pid])
            task_notes = rebuilder.run(release=False)
            notes += task_notes if task is root else [f"{pstree.describe(task)}: {n}" for n in task_notes]
            rebuilt.append((task, rebuilder))
        named.done()
        _seal(fillers)   # every task maps the handed objects now
        _restore_owners([files.fown.Restored(t.pid, built.pids[t.pid], plans[t.pid].state, r.tids)
                         for t, r in rebuilt], built.pids, tree)
        held = hold_forwarded(detach if hold_signals is None else not hold_signals)
        for task, rebuilder in reversed(rebuilt):   # children before their parents
            rebuilder.detach((task.stop_signal or 0) if task.state == "stopped" else 0)
        log.mark("release")
    except BaseException as err:
        for task_tracking in armed.values():
            task_tracking.abandon()
        named.undo()
        pstree.kill(built, seized)
        for filler in fillers:
            filler.close()
        release_held(held)
        if isinstance(err, CkptError):
            raise
        if isinstance(err, OSError):
            raise TargetError(f"restore failed: {err}") from err
        raise
    try:
        for task in built.order:
            if task.pid in armed:
                task_notes = armed[task.pid].hand_over()
                if task is root:
                    notes += task_notes
                elif armed[task.pid].why_not:
                    notes += [f"{pstree.describe(task)}: {n}" for n in task_notes]
        result = RestoreResult(pid=built.root, checkpoint=cp.id, threads=len(cp.state.threads or ()),
                               notes=notes, pids=built.pids)
        if not detach:
            result.exit_status = wait_forwarding_signals(built.root, shell_job=shell_job, held=held)
    except BaseException:
        release_held(held)
        raise
    return _held_for_caller(result, held, detach)


def _first_number(plans: Mapping[int, _TaskPlan], tables: Mapping[int, int], task: Task) -> int:
    """The first fd number ``task``'s mapped files, exe and objects may take: above those of
    every task planned before it with the same fd table (each rebuild closes its own by
    number, which in one table must not be another's)."""
    table = tables[task.pid]
    return max([p.files.top for pid, p in plans.items() if tables.get(pid) == table], default=0)


def _hand_down_objects(hd: handdown.HandDown, tree: tuple[Task, ...], plans: dict[int, _TaskPlan]) -> None:
    """The memfds and deleted files several tasks of the tree hold or map, made once by their
    common ancestor and handed down (:func:`ckpt.files.handdown.plan_objects`): each task's
    plan marks them, and the owner checks now that it may make them."""
    marked = handdown.plan_objects(hd, tree, {pid: p.files.objects for pid, p in plans.items()})
    for pid, p in plans.items():
        p.files = dataclasses.replace(p.files, objects=marked[pid])
    for item in hd.objects:
        owner = plans[item.owner].files
        with trust.acting_as(owner.fs_identity):
            handdown.preflight_object(item, owner.same_boot)


def _seal(fillers: list[Any]) -> None:
    """Times and seals of the objects the tree made once (each filler closes its copies)."""
    try:
        for filler in fillers:
            filler.seal()
    finally:
        for filler in fillers:
            filler.close()


def _recorded_pid(cp: Checkpoint) -> int:
    """The pid the checkpoint's (root) process had."""
    return cp.state.target.pid if cp.state.target is not None else cp.pid


def _restore_owners(tasks: list[files.fown.Restored], pids: Mapping[int, int], tree: tuple[Task, ...] = ()) -> None:
    """Once every task and thread exists, before any runs: the signal owner, signal and
    O_ASYNC of each open file, the owner's id mapped to the one it has now
    (:mod:`ckpt.files.fown`)."""
    files.fown.apply(files.fown.settings(tasks, pids, tree))


def _hand_down(cp: Checkpoint, tree: tuple[Task, ...]) -> handdown.HandDown:
    """What the tree's tasks share outside the fork line, made once by their common
    ancestor (:mod:`ckpt.files.handdown`), with every live task's state as it restores it."""
    states = {t.pid: _tree_children_restored(cp.task(t.pid), t, tree) for t in tree if pstree.live(t)}
    states = handdown.tree_view(tree, states)
    reasons = handdown.reasons(tree, states)
    if reasons:
        raise NotRestorable(f"checkpoint {cp.id}", reasons)
    return handdown.plan(tree, states)


def _tree_children_restored(cp: Checkpoint, task: Task, tree: tuple[Task, ...]) -> State:
    """``cp``'s state, without the children the tree restores (each task's checkpoint lists
    its children, which ckpt.restorability refuses for a single process); children the
    tree does not hold are refused by name."""
    state = cp.state
    proc = state.process
    if proc is None or not proc.children:
        return state
    ours = {t.pid for t in tree if t.ppid == task.pid}
    strays = [c for c in proc.children if c.pid not in ours]
    if strays:
        raise NotRestorable(f"checkpoint {cp.id}", [
            f"{pstree.describe(task)} has children the tree does not hold: "
            + ", ".join(f"pid {c.pid} ({c.comm})" for c in strays)])
    return dataclasses.replace(state, process=dataclasses.replace(proc, children=()))


def _open_streams(stdin: Any, stdout: Any, stderr: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    try:
        for num, path, flags in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                                 (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND)):
            if path is not None:
                out[num] = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as err:
        for fd in out.values():
            os.close(fd)
        raise CkptError(f"cannot open {err.filename}: {err.strerror}") from err
    return out


# -- the files the child opens ----------------------------------------------------------------


def map_open_flags(vma: VmaRecord) -> int:
    """How the file of a file VMA is opened for mapping it (read-write only for a
    shared mapping that is or may become writable)."""
    shared = vma.perms[3] == "s"
    return os.O_RDWR if shared and ("mw" in vma.flags or "w" in vma.perms) else os.O_RDONLY


@dataclass(frozen=True)
class FileOpen:
    """One file the restore child opens: by which path and flags, what it must be, where it goes."""

    path: str
    flags: int
    expected: trust.FileIdentity | None   # None: an old image without it (no symlinks still)
    what: str                             # names it in errors
    number: int | None = None             # its fd number in the child (None: a directory entered)


@dataclass(frozen=True)
class FilePlan:
    """Every file the restore child opens, and where the rebuild finds them.

    The child opens them all before it stops -- each verified to be the file
    the dump saw, and with the restored process's filesystem identity when
    the images are not root-trusted (``fs_identity``) -- so that no path is
    ever opened inside the rebuilt process by an injected ``openat``.  The
    saved fds are :mod:`ckpt.files`'s plan (``fds``); mapped files and the exe
    sit at fixed numbers above every saved fd; the rebuild maps them, then
    closes them.
    """

    fs_identity: trust.FsIdentity | None  # None: the restorer's own
    same_boot: bool                       # mount ids are comparable
    fds: files.FdPlan                     # the saved open files and their fd numbers
    objects: files.ObjectPlan             # the memfds and deleted files to make, mapped or open
    opens: list[FileOpen]                 # the mapped files
    mapped: dict[tuple[str, int, int, int], int]  # map_key(vma) -> fd number in the child
    exe: FileOpen | None                  # None: the exe link is not restored
    cwd: FileOpen
    root: FileOpen | None                 # None: the process was not chrooted
    top: int                              # first fd number above all of these

    @property
    def exe_fd(self) -> int | None:
        """Where the child put the exe, if it could."""
        return self.exe.number if self.exe is not None else None

    def fd_of(self, vma: VmaRecord) -> int:
        """The fd number, in the child, of the file of file VMA ``vma`` (or of the file object
        it maps)."""
        if vma.object is not None:
            return self.objects.fd_for(vma.object, map_open_flags(vma))
        try:
            return self.mapped[map_key(vma)]
        except KeyError:
            raise ImageError(f"mapped file {vma.path} at {vma.start:#x} was not opened") from None


def map_key(vma: VmaRecord) -> tuple[str, int, int, int]:
    """The open file a file VMA is mapped from: one per path, mode and identity."""
    ident = trust.vma_identity(vma)
    return (vma.path, map_open_flags(vma), ident.dev if ident else 0, ident.ino if ident else 0)


def plan_files(cp: Checkpoint, principal: trust.Principal, state: State | None = None, *,
               tcp_established: bool = False, first: int = 0) -> FilePlan:
    """Decide which files the child opens, as whom, and at which numbers (``state``: the
    task state to restore, when it is not the checkpoint's own; ``first``: the lowest
    number its mapped files may take)."""
    state = cp.state if state is None else state
    proc = state.process
    if proc is None:
        raise ImageError(f"checkpoint {cp.id} records no task state")
    opens = []
    table = files.table(state)
    number = max(table.top, first)
    mapped: dict[tuple[str, int, int, int], int] = {}
    for vma in cp.vmas:
        if vma.kind not in (FILE_PRIVATE, FILE_SHARED) and not namedshm.shm_file(vma) or vma.path.endswith(_DELETED) \
                or not vma.path.startswith("/"):
            continue  # not a file to reopen (deleted, or an object): check() refuses it by name
        expected = trust.vma_identity(vma)
        if expected is None:
            raise ImageError(f"checkpoint {cp.id}: mapped file {vma.path} has no recorded identity")
        key = map_key(vma)
        if key not in mapped:
            mapped[key] = number
            opens.append(FileOpen(vma.path, map_open_flags(vma), expected,
                                  f"checkpoint {cp.id}: mapped file {vma.path}", number))
            number += 1
    # The memfds and deleted files mapped or open at fds >= 3 (ckpt/files/objects.py); a shared
    # mapping without VM_MAYWRITE is mapped from an O_RDONLY fd of its object.
    wanted = files.objects.mapped_objects(cp.vmas) | {
        table.files[i].object for i, entries in table.by_file().items()
        if table.files[i].kind in ("memfd", "ghost") and any(e.fd > 2 for e in entries)}
    read_only = {v.object for v in cp.vmas if v.object is not None and v.perms[3] == "s"
                 and map_open_flags(v) == os.O_RDONLY}
    same_boot = proc.boot_id == trust.boot_id()
    objects, number = files.objects.plan(state, wanted, read_only, number, trusted=principal.trusted,
                                         same_boot=same_boot)
    exe = None
    mm = state.mm
    exe_id = trust.FileIdentity.from_record(mm.exe_stat) if mm is not None else None
    if mm is not None and mm.exe and exe_id is not None:
        exe = FileOpen(mm.exe, os.O_RDONLY, exe_id, f"executable {mm.exe}", number)
        number += 1
    directory = os.O_PATH | os.O_DIRECTORY
    cwd = FileOpen(proc.cwd, directory, trust.FileIdentity.from_record(proc.cwd_id),
                   f"working directory {proc.cwd}")
    root = None
    if trust.chrooted(proc):
        root_path = "/" if proc.root is None else proc.root
        root = FileOpen(root_path, directory, trust.FileIdentity.from_record(proc.root_id),
                        f"root directory {root_path}")
    fds = files.plan(table, files.RestoreContext(cp.id, same_boot, park_above=number, trusted=principal.trusted,
                                                 principal=principal, tcp_established=tcp_established,
                                                 creds=proc.creds))
    return FilePlan(fs_identity=trust.restore_fs_identity(proc.creds, principal), same_boot=same_boot,
                    fds=fds, objects=objects, opens=opens, mapped=mapped, exe=exe, cwd=cwd, root=root, top=number)


def open_planned(plan: FilePlan, item: FileOpen) -> int:
    """Open one planned file (:func:`ckpt.trust.open_verified`); the new fd."""
    return trust.open_verified(item.path, item.flags, item.expected, item.what, same_boot=plan.same_boot)


def preflight(plan: FilePlan) -> None:
    """Open and close every file the child will open, as it will, before anything exists:
    a refusal comes first, and no later check looks at a path the images' owner may not
    open.  (The child opens them again and checks again: this is no guarantee for later.)
    The saved fds are each kind's to try (:meth:`ckpt.files.FileKind.preflight`): device
    fds are left to the child, as opening a device can do something (a watchdog)."""
    with trust.acting_as(plan.fs_identity):
        files.objects.preflight(plan.objects)
        files.preflight(plan.fds)
        for item in [*plan.opens, plan.cwd, *([plan.root] if plan.root else [])]:
            os.close(open_planned(plan, item))


# -- the child --------------------------------------------------------------------------------


def _fork_child(cp: Checkpoint, streams: dict[int, int], same_pid: bool, plan: FilePlan,
                keep: set[int] | None = None, state: State | None = None,
                shell_job: bool = False, own_session: bool = False) -> tuple[int, list[str]]:
    """Fork the process-to-be; it sets up what is simplest from inside, then stops.
    ``keep``: fds of the caller it keeps (the ones --inherit-fd and --shell-job hand down);
    ``state``: the task state to restore, when it is not the checkpoint's own;
    ``shell_job``: ``restore --shell-job`` was given.

    Returns its pid and the notes it made."""
    state = cp.state if state is None else state
    saved_pid = state.target.pid if state.target is not None else cp.pid
    if same_pid:
        _set_next_pid(saved_pid)
    sys.stdout.flush()
    sys.stderr.flush()
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which becomes the target
        try:
            pstree.die_with_parent(parent)
            report_w = fcntl.fcntl(report_w, fcntl.F_DUPFD_CLOEXEC, plan.top)
            notes = _child_setup(state, streams, plan, parent, keep={report_w, *(keep or ())}, shell_job=shell_job,
                                 own_session=own_session)
            os.write(report_w, "".join(f"note\t{n}\n" for n in notes).encode(errors="replace"))
            os.close(report_w)
            pt.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
        except BaseException as err:  # noqa: BLE001 - reported to the parent, then exit
            with contextlib.suppress(OSError):
                name = type(err).__name__ if isinstance(err, CkptError) else ""
                os.write(report_w, f"error\t{name}\t{pstree.one_line(err)}\n".encode(errors="replace"))
        finally:
            os._exit(CHILD_FAILED)
    os.close(report_w)
    status: int | None = None   # the child's, once waited for
    try:
        if same_pid and pid != saved_pid:
            _kill_and_reap(pid)
            status = 0
            raise TargetError(f"pid {saved_pid} was taken meanwhile; could not restore with --same-pid")
        _, status = os.waitpid(pid, os.WUNTRACED)
        # Everything was written before the child stopped or exited; a copy of the
        # write end leaked into another fork must not make this read wait.
        os.set_blocking(report_r, False)
        lines = _read_report(report_r)
        if not os.WIFSTOPPED(status):
            raise _child_error(lines, status)
        pt.set_options(pid, TRACE_OPTIONS)
    except BaseException:
        # Interrupted (SIGTERM, Ctrl-C) or failed: no half-built child is left behind.
        if status is None or os.WIFSTOPPED(status):
            _kill_and_reap(pid)
        raise
    finally:
        os.close(report_r)
    return pid, [text for kind, _, text in lines if kind == "note"]


def _read_report(fd: int) -> list[tuple[str, str, str]]:
    """The child's report lines: ("note", "", text) or ("error", CkptError class name or "", text)."""
    out = []
    for line in pstree.read_all(fd).decode(errors="replace").splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "note":
            out.append(("note", "", rest))
        elif kind == "error":
            name, _, text = rest.partition("\t")
            out.append(("error", name, text))
    return out


def _child_error(lines: list[tuple[str, str, str]], status: int) -> CkptError:
    """The error a child that did not stop reported, as the CkptError it raised."""
    for kind, name, text in lines:
        if kind == "error":
            return pstree.reported_error(name, f"restore: {text}",
                                         f"the restore child could not set up its files and limits: {text}")
    return TargetError(f"the restore child could not set up its files and limits: status {status:#x}")


def _set_next_pid(pid: int) -> None:
    """Make the next fork get ``pid`` (/proc/sys/kernel/ns_last_pid, as CRIU's set_next_pid)."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
    except OSError as err:
        raise TargetError(f"--same-pid needs write access to ns_last_pid: {err.strerror}") from err


def _child_setup(state: State, streams: dict[int, int], plan: FilePlan, parent: int,
                 keep: set[int], shell_job: bool = False, finish: bool = True,
                 before_install: Callable[[], None] | None = None,
                 hand_objects: Callable[[], tuple[dict[int, int], list[str]]] | None = None,
                 own_table: bool = True, own_session: bool = False) -> list[str]:  # pragma: no cover
    """In the forked child: everything a process can do to itself by plain syscalls
    (``own_session``: a session of its own, :func:`ckpt.files.tty.settle`;
    ``finish=False``: all but :func:`_child_finish`; ``before_install``: run before its
    open files are opened, with its filesystem identity and cgroups taken; ``hand_objects``:
    before its memfds and deleted files, the ones a tree hands it, :mod:`ckpt.files.handdown`;
    ``own_table`` False: it shares its parent's fd table, whose fds it keeps as they are).

    Returns notes for the restore's result."""
    notes: list[str] = []
    for sig in range(1, 65):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        # Handlers inherited from Python point into memory about to be unmapped.
        with contextlib.suppress(OSError):
            syscall(SYS_rt_sigaction, sig, address_of(_SIG_DFL_ACTION), 0, 8)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    proc = state.process
    assert proc is not None   # plan_files refused a state without one
    # The standard streams: ours unless redirected; every other fd closed.
    keep = {0, 1, 2} | set(streams.values()) | keep
    for fd in _open_fds() if own_table else ():
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd is gone already
                os.close(fd)
    for num, fd in streams.items():
        os.dup2(fd, num)
        os.close(fd)
    notes += trust.restore_loginuid(proc, plan.fs_identity)   # only the process itself may, and before a chroot
    if plan.fs_identity is not None:
        # Untrusted images: the kernel checks every open below as the restored process.
        trust.take_fs_identity(*plan.fs_identity)
        pstree.die_with_parent(parent)  # the credential change cleared the parent-death signal
    # Its cgroups, as the images' owner for images that are not root's (the kernel checks
    # the opener of cgroup.procs), before it allocates anything a cgroup would account.
    notes += cgroups.enter(proc.cgroups)
    # The memfds and deleted files first: open files reopen them, the rebuild maps them.
    given, made = hand_objects() if hand_objects is not None else ({}, [])
    notes += made + files.objects.create(plan.objects, plan.fds.context.objects, given)
    if before_install is not None:
        before_install()
    files.install(plan.fds)   # each saved open file once, at every fd that shared it
    notes += tty.settle(state, plan.fds, shell_job, own_session)   # its controlling terminal, session and group
    notes += files.objects.finish(plan.objects)
    for item in plan.opens:     # the mapped files, above every saved fd
        assert item.number is not None
        _open_at(open_planned(plan, item), item.number)
    if plan.exe is not None:
        assert plan.exe.number is not None
        try:
            _open_at(open_planned(plan, plan.exe), plan.exe.number)
        except CkptError as err:
            notes.append(f"/proc/PID/exe not restored: {err}")
    if finish:
        _child_finish(state, plan)
    return notes


def _child_finish(state: State, plan: FilePlan, fs: bool = True) -> None:  # pragma: no cover - in the child
    """The last of the child's setup, which a tree's task does once it has created its
    children, as they must not inherit it: its cwd and root, rlimits (RLIMIT_NPROC,
    RLIMIT_NOFILE would constrain their creation) and umask.  ``fs`` False: the task shares
    its cwd, root and umask with its parent (created with CLONE_FS), which sets them in its
    own finish, after every child is created (a chroot here would be the parent's too,
    and its next children's opens would resolve in it)."""
    proc = state.process
    assert proc is not None
    if fs:
        _enter_directories(plan)
    for name, (soft, hard) in proc.rlimits.items():
        number = procfs.RLIMIT_NUMBERS.get(name)
        if number is None:
            continue
        try:
            resource.setrlimit(number, (soft, hard))
        except (OSError, ValueError) as err:
            raise TargetError(f"cannot restore {name} ({soft}, {hard}): {err}") from None
    if proc.umask is not None and fs:
        os.umask(proc.umask)


def _open_at(fd: int, number: int) -> None:  # pragma: no cover - runs in the child
    """Move ``fd`` to ``number``, close-on-exec (the rebuild closes these)."""
    if fd != number:
        os.dup2(fd, number, inheritable=False)
        os.close(fd)


def _enter_directories(plan: FilePlan) -> None:  # pragma: no cover - in the child
    """cwd, and the root directory of a chrooted process (after every other open:
    the recorded paths are the dumper's view, from outside the chroot)."""
    cwd = open_planned(plan, plan.cwd)
    try:
        if plan.root is not None:
            root = open_planned(plan, plan.root)
            try:
                os.fchdir(root)
                os.chroot(".")
            except OSError as err:
                raise TargetError(f"the process ran chrooted in {plan.root.path}; restoring its root needs "
                                  f"CAP_SYS_CHROOT: {err.strerror}") from None
            finally:
                os.close(root)
        os.fchdir(cwd)
    finally:
        os.close(cwd)


def _open_fds() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2)


# A zeroed struct kernel_sigaction (SIG_DFL, no flags, empty mask) for the child.
_SIG_DFL_ACTION = bytearray(32)


def _kill_and_reap(pid: int) -> None:
    """Kill a half-built child and reap it and its traced threads (only those:
    the caller of the Python API may have children of its own)."""
    try:
        tids = procfs.list_threads(pid)
    except OSError:
        tids = []
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    for tid in tids:
        if tid != pid:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(tid, pt.WALL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, pt.WALL)


# Signals an attached restore passes on to the restored process.
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
# si_code of a signal the kernel generated itself, as the terminal's line discipline does for
# ^C, ^\ and ^Z (drivers/tty/n_tty.c isig -> kill_pgrp(..., 1): SEND_SIG_PRIV;
# include/uapi/asm-generic/siginfo.h).  kill(2) gives SI_USER, sigqueue SI_QUEUE, tgkill SI_TKILL.
SI_KERNEL = 0x80


@dataclass
class HeldSignals:
    """The forwarded signals held from an attached restore's release until
    :func:`wait_forwarding_signals` takes over (:func:`hold_forwarded`)."""

    mask: set[signal.Signals]                     # the calling thread's mask before
    handlers: dict[int, Any] = field(default_factory=dict)   # the handlers before (main thread)
    caught: list[int] = field(default_factory=list)          # taken by a thread that did not block them


def hold_forwarded(detach: bool) -> HeldSignals | None:
    """Hold the signals an attached restore passes on, from just before the release: from
    then on they are the restored process's.  Blocked in the calling thread, they stay
    pending until :func:`wait_forwarding_signals` takes them (sigtimedwait) and passes them
    on; one another thread of ckpt takes meanwhile (its mask does not block them) is
    recorded by a handler and passed on there too.  Without this, one that arrived while
    write tracking was handed to its holder interrupted ckpt and left the process running
    on its own.  None for a detached restore, whose process is not ckpt's to signal."""
    if detach:
        return None
    held = HeldSignals(mask=signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED))
    if threading.current_thread() is threading.main_thread():
        held.handlers = {sig: signal.signal(sig, lambda signum, _frame: held.caught.append(signum))
                         for sig in FORWARDED}
    return held


def _held_for_caller(result: RestoreResult, held: HeldSignals | None, detach: bool) -> RestoreResult:
    """After an attached restore's wait, the signals are ckpt's again; a detached one that
    held them hands them to its caller, who waits itself (``ckpt restore`` without -d)."""
    if detach:
        result.held_signals = held
    else:
        release_held(held)
    return result


def release_held(held: HeldSignals | None) -> None:
    """Put back what :func:`hold_forwarded` changed (a signal still pending is then
    delivered: after a failed release, it interrupts ckpt as any other)."""
    if held is None:
        return
    for sig, handler in held.handlers.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, held.mask)
    for signum in held.caught:   # after a failure: as if it came now
        signal.raise_signal(signum)


def wait_forwarding_signals(pid: int, shell_job: bool = False, held: HeldSignals | None = None) -> int:
    """Wait for ``pid``, a child of the caller, passing SIGINT, SIGQUIT, SIGTERM and SIGHUP
    on to it once (as ``criu restore`` does); returns its wait status.

    A restored process in the caller's process group (one that led neither its session nor
    its group, or ``shell_job``) is in the caller's job: what the terminal sends to the
    foreground group (^C, ^\\: si_code SI_KERNEL) and the hangup a shell sends to the whole
    job (SIGHUP) reach it directly, so they are not passed on again -- and do not end the
    caller either, which waits on and returns the status the process ends with.  A signal
    sent to the caller with kill(2), sigqueue(3) or tgkill(2) is passed on.  A process in
    a group of its own gets every one of them from here.

    The signals are blocked in the calling thread and taken with sigtimedwait(2), which
    gives their si_code (Python's handlers do not); SIGCHLD too, to notice the end (a
    SIGCHLD of another child of the caller is taken as well: its own handler does not see
    it).  Another thread of the caller that does not block them may take one in the
    instant the calling thread is not waiting (kernel/signal.c complete_signal wakes any
    thread that wants it): on the main thread, handlers installed meanwhile pass it on
    then, without its si_code (a SIGINT, SIGQUIT or SIGHUP taken so is deemed the
    terminal's or the job's when the process shares the caller's group), within a second."""
    watched = {*FORWARDED, signal.SIGCHLD}
    ended = False

    def elsewhere(signum: int, _frame: object) -> None:
        if not ended and not _reached_it(pid, signum, None, shell_job):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, elsewhere) for sig in FORWARDED}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    if held is not None:   # taken since the release by a thread that did not block them
        caught, held.caught[:] = list(held.caught), []
        for signum in caught:
            elsewhere(signum, None)
    try:
        while True:
            # Blocked first, then checked: a SIGCHLD of an end after this check stays pending.
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended = True   # its pid may be another process's from now on: never signalled
                return status
            # A timeout lets Python run the handlers of a signal another thread took.
            info = signal.sigtimedwait(watched, 1.0)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if not _reached_it(pid, info.si_signo, info.si_code, shell_job):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, info.si_signo)
    finally:
        ended = True
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for sig, handler in handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _reached_it(pid: int, signo: int, si_code: int | None, shell_job: bool) -> bool:
    """Whether the signal ``signo`` the caller got reached the process ``pid`` directly: it is
    in the caller's process group, and the signal went to the whole group -- the terminal's
    (``si_code`` SI_KERNEL; None: unknown, deemed so for SIGINT and SIGQUIT), or a SIGHUP,
    which the kernel and shells send to a whole job."""
    try:
        same_group = shell_job or os.getpgid(pid) == os.getpgrp()
    except ProcessLookupError:
        return True   # gone: its end is reaped next
    if si_code is None:
        return same_group and signo in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
    return same_group and (si_code == SI_KERNEL or signo == signal.SIGHUP)


def iter_threads(cp: Checkpoint) -> Iterator[Thread]:
    """Saved threads, the leader (the process's own pid) first."""
    threads = cp.state.threads or ()
    leader = cp.state.target.pid if cp.state.target is not None else cp.pid
    yield from sorted(threads, key=lambda t: (t.tid != leader, t.tid))


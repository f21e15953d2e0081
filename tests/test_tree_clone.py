"""Kernel objects a child shares with its parent: CLONE_FS (one cwd, root and umask).

A C tree (tests/programs/clone_share.c) whose root made one child with clone(CLONE_FS)
and one without; ``dump --kill``, ``restore``, then the tree checks itself: the sharer
still shares its parent's fs_struct (kcmp KCMP_FS), its chdir() and umask() after the
restore are its parent's, and the other child's are its own.  Before, the dump refused
the tree by name (ckpt/live/tree.py SHARED_OBJECTS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt import procfs, restorability
from ckpt.image import ImageDir
from helpers import run_ckpt
from test_restore import Profile
from test_tree_files import Forked, dump_kill, forked, restore_and_pass  # noqa: F401  (a fixture)


@pytest.mark.timeout(300)
def test_a_child_sharing_its_parents_cwd_and_umask_still_shares_them(
        forked: Callable[..., Forked], programs: dict[str, Path], images_dir: Path, tmp_path: Path) -> None:
    """zdtm has CLONE_FS only between threads (static/clone_fs); this is between processes."""
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    dir_a.mkdir()
    dir_b.mkdir()
    target = forked([programs["clone_share"], "fs", str(dir_a), str(dir_b)])
    sharer, other = target.kids
    expected = Profile.of(target.pid)
    report = dump_kill(target, images_dir)
    assert report.get("unrestorable", []) == [], report
    tree = {t.pid: t for t in ImageDir(images_dir).checkpoint(report["id"]).tree}
    assert tree[sharer].shares == ("CLONE_FS",), tree[sharer]
    assert tree[other].shares == () and tree[target.pid].shares == (), tree
    # An image edited so that the sharer's umask is not its parent's is refused by name.
    cp = ImageDir(images_dir).checkpoint(report["id"])
    tasks = [(task.state, task.vmas) for task in cp.tasks()]
    assert restorability.shared_with_parent_reasons(cp.tree, tasks) == []
    edited = [(dataclasses.replace(s, process=dataclasses.replace(s.process, umask=0o022)), v)
              if s.target is not None and s.target.pid == sharer else (s, v) for s, v in tasks]
    [reason] = restorability.shared_with_parent_reasons(cp.tree, edited)
    assert f"pid {sharer} shares its cwd, root and umask" in reason and "(umask)" in reason, reason
    restore_and_pass(images_dir, tmp_path, expected)


@pytest.mark.timeout(300)
def test_children_sharing_their_parents_fd_table_still_share_it(
        forked: Callable[..., Forked], programs: dict[str, Path], images_dir: Path, tmp_path: Path) -> None:
    """zdtm static/fdt_shared's shape, made by clone(CLONE_FILES): two children of the root
    and a grandchild share the root's fd table, a child and a grandchild have their own.
    Restored, an fd the root opens is seen by every sharer and by no other, an fd a sharer
    closes is closed in the root, and one it opens is the root's."""
    shared = tmp_path / "shared.txt"
    shared.write_text("shared")
    target = forked([programs["clone_share"], "files", str(shared)])
    sharer, other, second = target.kids
    grandchildren = procfs.read_children(sharer)
    expected = Profile.of(target.pid)
    report = dump_kill(target, images_dir)
    assert report.get("unrestorable", []) == [], report
    tree = {t.pid: t for t in ImageDir(images_dir).checkpoint(report["id"]).tree}
    assert {pid: tree[pid].shares for pid in (target.pid, sharer, other, second)} == {
        target.pid: (), sharer: ("CLONE_FILES",), other: (), second: ("CLONE_FILES",)}, tree
    assert sorted(tree[pid].shares for pid in grandchildren) == [(), ("CLONE_FILES",)], tree
    restore_and_pass(images_dir, tmp_path, expected)


@pytest.mark.timeout(300)
def test_a_memfd_mapped_by_a_child_sharing_the_fd_table_is_refused_by_name(
        forked: Callable[..., Forked], programs: dict[str, Path], images_dir: Path) -> None:
    """The tree's hand-down of memfds and deleted files (ckpt/files/handdown.py) closes its
    fds in each task as in a table of its own: in a shared one that closed the parent's,
    and the restore failed with EBADF.  The dump says so by name, and does not kill."""
    target = forked([programs["clone_share"], "memfd"])
    [sharer] = target.kids
    result = run_ckpt("dump", "--pid", target.pid, "-D", images_dir, "--kill", "--json", timeout=150)
    assert result.returncode != 0
    assert f"pid {sharer} shares its parent's fd table (CLONE_FILES) and maps a memfd" in result.stderr, result.stderr
    assert "\n" not in result.stderr.strip()
    assert target.proc.poll() is None and procfs.read_stat(sharer).state != "Z"

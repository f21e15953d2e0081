"""The image of a process tree: each live task's checkpoint in tasks/PID/, committed with
the root's or not at all, and refused when an edit breaks the tree (docs/FORMAT.md)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.errors import CorruptImage, ImageError
from ckpt.image import PAGE_SIZE, ImageDir
from ckpt.image.format import META_NAME, decode_meta, encode_meta
from ckpt.image.schema import SchemaError, State, Target, Task

P = PAGE_SIZE
ROOT, CHILD, ZOMBIE = 4100, 4101, 4102
TREE = (
    Task(pid=ROOT, ppid=1, pgid=ROOT, sid=ROOT, state="alive", comm="root"),
    Task(pid=CHILD, ppid=ROOT, pgid=ROOT, sid=ROOT, state="stopped", stop_signal=19, inherited=((1, 1),)),
    Task(pid=ZOMBIE, ppid=ROOT, pgid=ROOT, sid=ROOT, state="zombie", exit_status=42 << 8),
)


@pytest.fixture
def images(tmp_path: Path) -> Iterator[ImageDir]:
    im = ImageDir(tmp_path / "images", create=True)
    with im.lock():
        yield im


def write_tree(im: ImageDir, tree: tuple[Task, ...] = TREE, *, stage: tuple[int, ...] = (CHILD,)) -> object:
    with im.new_checkpoint(kind="full", parent=None, pid=ROOT) as writer:
        for pid in stage:
            task = writer.task_writer(pid)
            task.add_pages(0x10000, bytes([pid & 0xFF]) * P)
            task.stage(vmas=[], present=[], whole=[], state=State(target=Target(pid=pid)))
        writer.add_pages(0x20000, b"r" * P)
        return writer.commit(vmas=[], present=[], whole=[], state=State(target=Target(pid=ROOT), tree=tree))


def test_a_tree_round_trips(images: ImageDir) -> None:
    cp = write_tree(images)
    again = ImageDir(images.path).checkpoint(1)
    assert again.tree == TREE
    assert again.task(ROOT) is again
    child = again.task(CHILD)
    assert (child.pid, child.id, child.is_task) == (CHILD, 1, True)
    assert child.path == images.path / "000001" / "tasks" / str(CHILD)
    assert [c.pid for c in again.tasks()] == [ROOT, CHILD]
    assert child.chain() == [child]
    with pytest.raises(ImageError, match="zombie"):
        again.task(ZOMBIE)
    with pytest.raises(ImageError, match="no task 999"):
        again.task(999)
    assert images.verify()
    assert cp is not None


def test_the_tree_commits_only_with_every_live_task_staged(images: ImageDir) -> None:
    with pytest.raises(ImageError, match=f"pid {CHILD}"):
        write_tree(images, stage=())
    assert images.checkpoints == []
    assert not any(name.startswith(".staging") for name in os.listdir(images.path))
    with pytest.raises(ImageError, match="pid 777"):
        write_tree(images, stage=(CHILD, 777))
    assert images.checkpoints == []


@pytest.mark.parametrize("tree, where", [
    ((TREE[1], TREE[0]), "tree[0].pid"),
    ((TREE[0], TREE[2], dataclasses.replace(TREE[1], ppid=ZOMBIE)), "tree[2].ppid"),
    ((TREE[0], TREE[1], TREE[1]), "tree[2].pid"),
    ((TREE[0], dataclasses.replace(TREE[1], ppid=5)), "tree[1].ppid"),
])
def test_a_tree_of_the_wrong_shape_is_refused(images: ImageDir, tree: tuple[Task, ...], where: str) -> None:
    with pytest.raises(SchemaError, match=where.replace("[", r"\[").replace("]", r"\]")):
        write_tree(images, tree, stage=tuple({t.pid for t in tree[1:] if t.state != "zombie"} - {ROOT}))


@pytest.mark.parametrize("fields", [
    dict(state="zombie"),                       # without its status
    dict(state="alive", exit_status=0),         # a status without being a zombie
    dict(state="stopped"),                      # without its signal
    dict(state="alive", stop_signal=19),
])
def test_a_task_record_that_contradicts_itself_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(SchemaError):
        Task.RECORD.check({"pid": 5, "ppid": 1, "pgid": 5, "sid": 5, **fields})


def test_a_task_checkpoint_of_another_pid_is_refused(images: ImageDir) -> None:
    write_tree(images)
    child_meta = images.path / "000001" / "tasks" / str(CHILD) / META_NAME
    meta = decode_meta(child_meta.read_bytes(), 1)
    child_meta.write_bytes(encode_meta(dataclasses.replace(meta, pid=ROOT, state=State(target=Target(pid=ROOT)))))
    with pytest.raises(CorruptImage, match=f"task {CHILD}: .* pid {ROOT}"):
        ImageDir(images.path).checkpoint(1).task(CHILD)


def test_a_symlinked_task_directory_is_never_followed(images: ImageDir, tmp_path: Path) -> None:
    write_tree(images)
    tasks = images.path / "000001" / "tasks"
    os.rename(tasks / str(CHILD), tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tasks / str(CHILD))
    with pytest.raises(CorruptImage, match=f"checkpoint 1 task {CHILD}"):
        ImageDir(images.path).checkpoint(1).task(CHILD)


def test_verify_reads_every_task(images: ImageDir) -> None:
    write_tree(images)
    pages = images.path / "000001" / "tasks" / str(CHILD) / "pages.ckpt"
    data = bytearray(pages.read_bytes())
    data[-1] ^= 0xFF
    pages.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match=f"task {CHILD} of checkpoint 1: pages.ckpt frame 0"):
        ImageDir(images.path).verify()

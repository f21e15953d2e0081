"""A process with thousands of mappings (issue 11 item 6, CRIU's zdtm maps06).

The frozen window of an incremental dump does no Python work per VMA when the layout
is unchanged (ckpt/tracker.py ``_Plan``, one written-scan per run of adjacent tracked
VMAs; ckpt/dump.py ``_plain_records``).  These tests check correctness, not timing:
an incremental dump of such a process stores exactly what was written, and restores
with the same content in every mapping; a VMA replaced between two dumps in the middle
of a run of tracked ones is found (the run's check call fails) and stored whole.

The restore maps them with a syscall loop in its trampoline (ckpt/syscallbatch.py):
it makes the calls in order and stops at the first that fails, naming it.  The VMA
records of every checkpoint of the chain are checked as columns (ckpt/image/schema.py
Record.all_valid) and made on first use: a bad record in the middle of thousands, in
an ancestor whose records the restore never makes, is still refused by its index.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt import tracking  # noqa: F401  (lets the spawn fixture stop holders at teardown)
from helpers import PAGE, read_target_memory, run_ckpt

pytestmark = pytest.mark.usefixtures("ckpt_kernel")

REGIONS = 4000   # one VMA each: anonymous read-write and read-only, alternating


def dump_json(*args: Any) -> dict[str, Any]:
    result = run_ckpt("dump", *args, "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def region_vmas(pid: int, base: int) -> list[tuple[int, int, str]]:
    """The VMAs of ``pid`` inside the target's regions: (start, end, perms)."""
    return vmas_between(pid, base, base + REGIONS * PAGE)


def vmas_between(pid: int, start: int, end: int) -> list[tuple[int, int, str]]:
    """The VMAs of ``pid`` that start in ``[start, end)``: (start, end, perms)."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            s, e = (int(x, 16) for x in span.split("-"))
            if start <= s < end:
                out.append((s, e, perms))
    return out


def wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        assert time.monotonic() < deadline, f"pid {pid} still there"
        time.sleep(0.05)


def test_many_mappings_incremental_dump_restores_same_content(
        spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path) -> None:
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    layout = region_vmas(target.pid, base)
    assert len(layout) == REGIONS, "the regions merged: the target does not test many mappings"

    full = dump_json("-t", target.pid, "-D", images_dir)
    assert full["kind"] == "full" and full["vmas"] >= REGIONS

    target.cmd("write 3 7")       # three pages, in regions spread over the whole range
    target.cmd("detach")          # fds 0-2 to /dev/null: a checkpoint a restore can take
    before = read_target_memory(target.pid, base, REGIONS * PAGE)
    incr = dump_json("-t", target.pid, "-D", images_dir, "--kill")
    assert incr["kind"] == "incremental" and incr["parent"] == full["id"], incr
    assert incr["killed"], incr
    # The three pages written, and no more than the target's own slack (stack, stdio).
    assert 3 <= incr["pages_stored"] <= 3 + 16, incr

    result = run_ckpt("restore", "-D", images_dir, "--detach", "--stdin", "/dev/null",
                      "--stdout", "/dev/null", "--stderr", "/dev/null", timeout=300)
    assert result.returncode == 0 and result.stdout.strip().isdigit(), result.stderr
    restored = int(result.stdout)
    try:
        assert region_vmas(restored, base) == layout
        after = read_target_memory(restored, base, REGIONS * PAGE)
        assert after == before, "the restored regions differ from the dumped ones"
        # Its write tracking was armed over the thousands of VMAs (ckpt/restoretracking.py, one
        # UFFDIO_REGISTER per run of them): its next dump is an incremental child storing nothing
        # of the regions (it has written none of them).
        again = dump_json("-t", restored, "-D", images_dir, "--leave-stopped")
        os.kill(restored, signal.SIGCONT)
        assert again["kind"] == "incremental" and again["parent"] == incr["id"], again
        assert again["pages_stored"] <= 16, again
        from ckpt.image import ImageDir
        stored = ImageDir(images_dir).checkpoint(again["id"]).stored
        assert not [r for r in stored if r[1] > base and r[0] < base + REGIONS * PAGE], stored
    finally:
        os.kill(restored, signal.SIGKILL)
        wait_gone(restored)


def test_vma_replaced_inside_a_run_is_stored_whole(
        spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path) -> None:
    """A region unmapped and mapped again between two dumps, identical in /proc/PID/maps
    but no longer registered: the run's check call fails and the VMA is stored whole
    (with a single written-scan over the run, its new content would be missed)."""
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    full = dump_json("-t", target.pid, "-D", images_dir)
    assert full["kind"] == "full"
    middle = REGIONS // 2 & ~1          # an even region: anonymous read-write
    target.cmd(f"remap {middle} 99")    # munmap + mmap at the same place, then a write
    incr = dump_json("-t", target.pid, "-D", images_dir, "--leave-stopped")
    try:
        assert incr["kind"] == "incremental", incr
        from ckpt.image import ImageDir
        cp = ImageDir(images_dir).checkpoint(incr["id"])
        address = base + middle * PAGE
        assert cp.read_memory(address, PAGE) == read_target_memory(target.pid, address, PAGE)
        assert read_target_memory(target.pid, address + 8, 8) == (99 * 1000003 + middle).to_bytes(8, "little")
    finally:
        os.kill(target.pid, signal.SIGCONT)


def test_pages_written_before_a_replaced_vma_of_the_run_are_stored(
        spawn: Callable[..., Any], programs: dict[str, Path], images_dir: Path) -> None:
    """The run's single checked written-scan stops with EPERM at the replaced VMA, after
    re-arming the VMAs before it: the pages written there are those the kernel reported
    before the error (ckpt/_sys/pagemap.py written_until_unregistered), and must be in
    the checkpoint, as must those written after the replaced VMA (the scan goes on)."""
    target = spawn([programs["many_maps"], str(REGIONS)])
    base = int(target.cmd("base"), 16)
    full = dump_json("-t", target.pid, "-D", images_dir)
    assert full["kind"] == "full"
    target.cmd("write 3 5")             # regions 0, 1332 and 2666 (read-write ones)
    middle = REGIONS // 2 & ~1          # 2000: between the second and third written region
    target.cmd(f"remap {middle} 77")
    incr = dump_json("-t", target.pid, "-D", images_dir, "--leave-stopped")
    try:
        assert incr["kind"] == "incremental", incr
        from ckpt.image import ImageDir
        cp = ImageDir(images_dir).checkpoint(incr["id"])
        for region, seed in ((0, 5), (1332, 5), (middle, 77), (2666, 5)):
            address = base + region * PAGE
            word = read_target_memory(target.pid, address + 8, 8)
            assert word == (seed * 1000003 + region).to_bytes(8, "little"), region
            assert cp.read_memory(address, PAGE) == read_target_memory(target.pid, address, PAGE), \
                f"region {region}: the checkpoint holds an older version of the page"
    finally:
        os.kill(target.pid, signal.SIGCONT)


# -- the syscall loop -------------------------------------------------------------------------

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x02, 0x10, 0x20
LOOP_CALLS = 2000   # more than one table of the trampoline's argument pages holds


def _stopped_child() -> int:
    """A forked child stopped under PTRACE_TRACEME in kill(SIGSTOP), as a restore child is."""
    from ckpt._sys import ptrace as pt

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            pt.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status
    pt.set_options(pid, pt.PTRACE_O_EXITKILL)
    return pid


def test_syscall_loop_makes_every_call_in_order_and_stops_at_the_first_error() -> None:
    from ckpt._sys import ptrace as pt
    from ckpt._sys.libc import SYS_madvise, SYS_mmap, SYS_munmap
    from ckpt.live import inject_syscall
    from ckpt.syscallbatch import SyscallBatch

    pid = _stopped_child()
    mem_fd = -1
    try:
        insn = pt.get_regs(pid).rip - 2   # the syscall instruction of its kill()

        def inject(nr: int, *args: int) -> int:
            value, _ = inject_syscall(pid, pt.get_regs(pid), insn, nr, *args, step=True)
            assert not -4096 < value < 0, os.strerror(-value)
            return value

        tramp = inject(SYS_mmap, 0, 16 * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0)
        area = inject(SYS_mmap, 0, LOOP_CALLS * PAGE, 0, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        batch = SyscallBatch(pid, mem_fd, tramp, tramp + PAGE, 15 * PAGE)
        for i in range(LOOP_CALLS):   # read-write and read-only in turn: one VMA each
            batch.add(SYS_mmap, area + i * PAGE, PAGE, PROT_READ | (0 if i % 2 else PROT_WRITE),
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0, what=f"mmap {i}", expect=area + i * PAGE)
        batch.flush()
        assert batch.calls == LOOP_CALLS and batch.runs == -(-LOOP_CALLS // batch.capacity) > 1
        layout = vmas_between(pid, area, area + LOOP_CALLS * PAGE)
        assert [(s - area) // PAGE for s, _, _ in layout] == list(range(LOOP_CALLS))
        assert [p[:2] for _, _, p in layout] == ["rw" if i % 2 == 0 else "r-" for i in range(LOOP_CALLS)]

        # The first failing call is named with its errno; the ones after it are not made.
        batch.add(SYS_madvise, area, PAGE, 4, what="madvise MADV_DONTNEED")
        batch.add(SYS_madvise, area, PAGE, 9999, what="madvise with no such advice")
        batch.add(SYS_munmap, area, LOOP_CALLS * PAGE, what="munmap everything")
        with pytest.raises(OSError, match="madvise with no such advice") as failed:
            batch.flush()
        assert failed.value.errno == errno.EINVAL
        assert len(vmas_between(pid, area, area + LOOP_CALLS * PAGE)) == LOOP_CALLS, "a call after the error ran"

        # A call that succeeds with another result than the one expected is refused too.
        batch.add(SYS_mmap, 0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, what="mmap anywhere",
                  expect=area)
        with pytest.raises(ValueError, match="mmap anywhere: returned"):
            batch.flush()
        # The child is still usable by ordinary injection afterwards.
        inject(SYS_munmap, area, LOOP_CALLS * PAGE)
        assert vmas_between(pid, area, area + LOOP_CALLS * PAGE) == []
    finally:
        if mem_fd >= 0:
            os.close(mem_fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# -- VMA records checked by column ------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_of_many_maps(tmp_path_factory: pytest.TempPathFactory, programs: dict[str, Path]) -> Path:
    """An images directory of a many_maps process: a full checkpoint and an incremental one."""
    from helpers import Target

    images = tmp_path_factory.mktemp("many-maps") / "images"
    target = Target([str(programs["many_maps"]), str(REGIONS)])
    try:
        target.wait_ready(60)
        assert dump_json("-t", target.pid, "-D", images)["kind"] == "full"
        target.cmd("write 3 5")
        target.cmd("detach")
        assert dump_json("-t", target.pid, "-D", images, "--kill")["kind"] == "incremental"
    finally:
        target.kill()
    return images


def _edit_vma(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        if value is _DELETE:
            del body["vmas"][MIDDLE][key]
        else:
            body["vmas"][MIDDLE][key] = value
    return edit


_DELETE = object()
MIDDLE = REGIONS // 2 + 1   # a record among thousands of valid ones


def _swap_middle(body: dict[str, Any]) -> None:
    vmas = body["vmas"]
    vmas[MIDDLE], vmas[MIDDLE + 1] = vmas[MIDDLE + 1], vmas[MIDDLE]


BAD_RECORDS = {
    "perms-not-letters": (_edit_vma("perms", "rwzp"), f"vmas[{MIDDLE}].perms"),
    "start-unaligned": (lambda b: b["vmas"][MIDDLE].__setitem__("start", b["vmas"][MIDDLE]["start"] + 1),
                        f"vmas[{MIDDLE}]"),
    "flag-too-long": (_edit_vma("flags", ["rd", "x" * 9]), f"vmas[{MIDDLE}].flags[1]"),
    "kind-missing": (_edit_vma("kind", _DELETE), f"vmas[{MIDDLE}].kind is missing"),
    "kind-a-number": (_edit_vma("kind", 3), f"vmas[{MIDDLE}].kind"),
    "inode-negative": (_edit_vma("inode", -1), f"vmas[{MIDDLE}].inode"),
    "path-with-a-nul": (_edit_vma("path", "/bin/sh\0x"), f"vmas[{MIDDLE}].path"),
    "object-on-anonymous-memory": (_edit_vma("object", 1), f"vmas[{MIDDLE}].object"),
    "not-sorted": (_swap_middle, f"vmas[{MIDDLE + 1}]"),
}


@pytest.mark.parametrize("odd", [5.0, True])
def test_the_column_check_of_lists_of_integers_sees_a_float_or_bool_equal_to_an_int(odd: object) -> None:
    """The column check of many records takes each distinct list of items once; 5, 5.0 and
    True == 1 are equal in Python, so the odd one must not hide behind an equal int that
    another record holds (a thread's ``groups`` is such a list)."""
    from ckpt.image import schema

    records = schema.ListOf(schema.Record("t", {"g": schema.Field(schema.ListOf(schema.U32, 8))}), 8)
    same = 1 if odd is True else 5
    records.check([{"g": [same]}, {"g": [same]}])
    with pytest.raises(schema.SchemaError, match=r"\[1\]\.g\[0\]"):
        records.check([{"g": [same]}, {"g": [odd]}])


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_bad_vma_record_among_thousands_in_an_ancestor_is_refused_by_index(
        case: str, chain_of_many_maps: Path, tmp_path: Path) -> None:
    from test_badinput import edit_meta

    from ckpt import errors
    from ckpt.image import ImageDir

    images = tmp_path / "images"
    shutil.copytree(chain_of_many_maps, images)
    edit, mention = BAD_RECORDS[case]
    edit_meta(images, 1, edit)    # the full checkpoint: the restore of checkpoint 2 reads its pages only
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        ImageDir(images).checkpoint(2).chain()
    result = run_ckpt("restore", "-D", images, "--detach", "--stdin", "/dev/null", "--stdout", "/dev/null",
                      "--stderr", "/dev/null", timeout=300)
    if result.returncode == 0 and result.stdout.strip().isdigit():
        os.kill(int(result.stdout), signal.SIGKILL)
    assert result.returncode == errors.CorruptImage.exit_code, result
    assert result.stderr.startswith("ckpt: checkpoint 1: meta.ckpt: ") and mention in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_records_an_ancestor_did_not_make_are_the_same_when_wanted(chain_of_many_maps: Path) -> None:
    from ckpt.image import ImageDir

    ancestor = ImageDir(chain_of_many_maps).checkpoint(2).chain()[0]   # its decoded records released
    alone = ImageDir(chain_of_many_maps).checkpoint(1)                 # made from its own load
    assert ancestor.id == alone.id == 1
    assert len(ancestor.vmas) == len(alone.vmas) >= REGIONS
    assert ancestor.vmas == alone.vmas
    assert ancestor.read_memory(ancestor.vmas[10].start, PAGE) == alone.read_memory(alone.vmas[10].start, PAGE)


def test_real_vma_records_pass_the_column_check(chain_of_many_maps: Path) -> None:
    """The fast verdict is the one taken for the records a dump writes (else every load
    would fall back to the check record by record), and it is not taken for a bad one."""
    import msgpack

    from ckpt.image import schema
    from ckpt.image.format import META_HEADER

    data = (chain_of_many_maps / "000001" / "meta.ckpt").read_bytes()
    vmas = msgpack.unpackb(data[META_HEADER.size:], raw=False, strict_map_key=False)["vmas"]
    assert len(vmas) >= REGIONS and schema.VMA.all_valid(vmas)
    for case in sorted(BAD_RECORDS):
        body = {"vmas": [dict(v) for v in vmas]}
        BAD_RECORDS[case][0](body)
        assert not (schema.VMA.all_valid(body["vmas"]) and case != "not-sorted"), case


def test_checkpoints_with_the_same_layout_share_records_checked_once(chain_of_many_maps: Path,
                                                                     tmp_path: Path) -> None:
    """Byte-identical VMA records are decoded and checked once per images directory
    (ckpt/image/format.py VmaCache); records that differ by one field are checked anew."""
    from test_badinput import edit_meta

    from ckpt import errors
    from ckpt.image import ImageDir

    images = ImageDir(chain_of_many_maps)
    full, incremental = images.checkpoint(1), images.checkpoint(2)
    assert incremental.meta.vmas is full.meta.vmas, "the same layout was decoded twice"
    assert incremental.vmas == full.vmas

    edited = tmp_path / "images"
    shutil.copytree(chain_of_many_maps, edited)
    edit, mention = BAD_RECORDS["perms-not-letters"]
    edit_meta(edited, 2, edit)
    images = ImageDir(edited)
    images.checkpoint(1)   # the good layout, in the cache first
    with pytest.raises(errors.CorruptImage, match=re.escape(mention)):
        images.checkpoint(2)


def test_vma_records_are_written_by_column_as_one_by_one(chain_of_many_maps: Path) -> None:
    """The column path of the encoder (Record.wire_records) stores what the record-by-record
    one does, and leaves to it the records it cannot store as they are."""
    import dataclasses

    import msgpack

    from ckpt.image import ImageDir, schema

    vmas = list(ImageDir(chain_of_many_maps).checkpoint(2).vmas)
    one_by_one = [schema.VMA.wire(v, encode=True) for v in vmas]
    by_column = schema.VMA.wire_records(vmas)
    assert by_column is not None
    assert msgpack.packb(by_column, use_bin_type=True) == msgpack.packb(one_by_one, use_bin_type=True)
    # A path that is not UTF-8 (stored as bin) is the record-by-record path's to store.
    odd = vmas[:100] + [dataclasses.replace(vmas[100], path="/tmp/\udcff")]
    assert schema.VMA.wire_records(odd) is None
    assert schema.ListOf(schema.VMA, 1 << 20).wire(odd, True)[-1]["path"] == b"/tmp/\xff"

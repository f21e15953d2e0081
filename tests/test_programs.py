"""The target programs themselves behave as the other tests assume (no ckpt involved)."""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    HUGE_PAGE,
    MIB,
    PAGE,
    MemTarget,
    TargetCommandError,
    anon_huge_bytes,
    fd_table,
    fnv1a64,
    live_mappings,
    proc_status_field,
    read_target_memory,
    require_feature,
    thread_ids,
)

ZERO_HASH_64K = fnv1a64(bytes(64 * 1024))


def mapping_at(pid: int, addr: int):
    return next((m for m in live_mappings(pid) if m.start <= addr < m.end), None)


def test_memtarget_sum_is_fnv1a_of_the_bytes(memtarget: MemTarget) -> None:
    addr = memtarget.map(MIB)
    memtarget.fill(addr, MIB, 7)
    first = memtarget.sum(addr, MIB)
    assert memtarget.sum(addr, MIB) == first
    part = read_target_memory(memtarget.pid, addr + 3 * PAGE, 64 * 1024)
    assert memtarget.sum(addr + 3 * PAGE, 64 * 1024) == fnv1a64(part)
    assert any(part), "fill wrote zeros"


def test_memtarget_fill_is_deterministic_and_set_changes_the_sum(memtarget: MemTarget) -> None:
    a = memtarget.map(MIB)
    b = memtarget.map(MIB)
    memtarget.fill(a, MIB, 7)
    memtarget.fill(b, MIB, 7)
    sum_a = memtarget.sum(a, MIB)
    assert memtarget.sum(b, MIB) == sum_a, "fill depends on the offset and seed only"
    memtarget.fill(b, MIB, 8)
    assert memtarget.sum(b, MIB) != sum_a

    memtarget.memset(a + 5 * PAGE + 17, 1, 0x5A)
    assert memtarget.sum(a, MIB) != sum_a
    assert read_target_memory(memtarget.pid, a + 5 * PAGE + 17, 1) == b"\x5a"
    memtarget.fill(a, MIB, 7)
    assert memtarget.sum(a, MIB) == sum_a


def test_memtarget_waits_in_read_between_commands(memtarget: MemTarget) -> None:
    memtarget.map(MIB)
    memtarget.wait_state("S")
    with open(f"/proc/{memtarget.pid}/syscall") as f:
        assert f.read().split()[0] == "0", "memtarget should be blocked in read(2) on stdin"


def test_memtarget_touch_and_dontneed_read_zeros(memtarget: MemTarget) -> None:
    addr = memtarget.map(MIB, thp="nohuge")
    memtarget.touch(addr, MIB)
    assert memtarget.sum(addr, 64 * 1024) == ZERO_HASH_64K
    memtarget.fill(addr, MIB, 3)
    assert memtarget.sum(addr, 64 * 1024) != ZERO_HASH_64K
    memtarget.dontneed(addr, 64 * 1024)
    assert memtarget.sum(addr, 64 * 1024) == ZERO_HASH_64K
    assert any(read_target_memory(memtarget.pid, addr + 64 * 1024, PAGE))


def test_memtarget_mremap_move_returns_a_new_address(memtarget: MemTarget) -> None:
    addr = memtarget.map(MIB)
    memtarget.fill(addr, MIB, 11)
    before = memtarget.sum(addr, MIB)
    moved = memtarget.mremap(addr, MIB, MIB, move=True)
    assert moved != addr
    assert memtarget.sum(moved, MIB) == before
    assert mapping_at(memtarget.pid, addr) is None

    grown = memtarget.mremap(moved, MIB, 2 * MIB)
    assert memtarget.sum(grown, MIB) == before
    assert memtarget.sum(grown + MIB, 64 * 1024) == ZERO_HASH_64K


def test_memtarget_unmap_and_mapfixed(memtarget: MemTarget) -> None:
    addr = memtarget.map(8 * PAGE)
    memtarget.fill(addr, 8 * PAGE, 5)
    memtarget.mapfixed(addr + 2 * PAGE, 2 * PAGE)
    assert read_target_memory(memtarget.pid, addr + 2 * PAGE, 2 * PAGE) == bytes(2 * PAGE)
    assert any(read_target_memory(memtarget.pid, addr + 4 * PAGE, PAGE))
    memtarget.unmap(addr, 8 * PAGE)
    assert mapping_at(memtarget.pid, addr) is None


def test_memtarget_protect(memtarget: MemTarget) -> None:
    addr = memtarget.map(4 * PAGE)
    memtarget.fill(addr, 4 * PAGE, 9)
    content = read_target_memory(memtarget.pid, addr, 4 * PAGE)
    for mode, perms in (("r", "r--p"), ("none", "---p"), ("rx", "r-xp"), ("rw", "rw-p")):
        memtarget.protect(addr, 4 * PAGE, mode)
        assert mapping_at(memtarget.pid, addr).perms == perms
        # /proc/PID/mem reads even PROT_NONE memory (FOLL_FORCE).
        assert read_target_memory(memtarget.pid, addr, 4 * PAGE) == content


def test_memtarget_file_mappings(memtarget: MemTarget, tmp_path: Path) -> None:
    content = random.Random(1).randbytes(16 * PAGE)
    path = tmp_path / "data.bin"
    path.write_bytes(content)

    private = memtarget.map(16 * PAGE, "file", path)
    assert mapping_at(memtarget.pid, private).path == str(path)
    assert mapping_at(memtarget.pid, private).perms == "rw-p"
    assert memtarget.sum(private, 4 * PAGE) == fnv1a64(content[: 4 * PAGE])
    memtarget.memset(private, PAGE, 0xEE)
    assert read_target_memory(memtarget.pid, private, PAGE) == b"\xee" * PAGE
    assert path.read_bytes() == content, "a private mapping must not write the file"

    shared = memtarget.map(16 * PAGE, "sharedfile", path)
    assert mapping_at(memtarget.pid, shared).perms == "rw-s"
    memtarget.memset(shared + PAGE, PAGE, 0x11)
    assert path.read_bytes()[PAGE: 2 * PAGE] == b"\x11" * PAGE

    anon_shared = memtarget.map(MIB, "shared")
    assert mapping_at(memtarget.pid, anon_shared).perms == "rw-s"


def test_memtarget_huge_mapping_is_aligned_and_thp_backed(memtarget: MemTarget, kernel_features) -> None:
    addr = memtarget.map(2 * HUGE_PAGE, thp="huge")
    assert addr % HUGE_PAGE == 0
    mapping = mapping_at(memtarget.pid, addr)
    assert mapping.start <= addr and addr + 2 * HUGE_PAGE <= mapping.end
    memtarget.fill(addr, 2 * HUGE_PAGE, 1)
    available, reason = kernel_features["THP"]
    require_feature("THP", available, reason)
    assert anon_huge_bytes(memtarget.pid, addr) >= HUGE_PAGE


def test_memtarget_openfile(memtarget: MemTarget, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"x" * 100)
    fd = memtarget.openfile(path, 42)
    assert fd_table(memtarget.pid)[fd] == str(path)
    with open(f"/proc/{memtarget.pid}/fdinfo/{fd}") as f:
        assert "pos:\t42" in f.read()


def test_memtarget_errors_and_exit(memtarget: MemTarget) -> None:
    with pytest.raises(TargetCommandError):
        memtarget.cmd("frobnicate 1 2")
    with pytest.raises(TargetCommandError):
        memtarget.cmd("map 4096 bogus")
    with pytest.raises(TargetCommandError):
        memtarget.cmd("map 4096 file /nonexistent/file")
    addr = memtarget.map(PAGE)  # still serving
    memtarget.memset(addr, PAGE, 1)
    assert memtarget.cmd("exit 3") == ""
    assert memtarget.proc.wait(timeout=10) == 3


def test_pyheap_checksum_is_stable_and_mutate_changes_it(spawn, programs) -> None:
    target = spawn([sys.executable, programs["pyheap"], "20", "thread"])
    assert int(proc_status_field(target.pid, "VmRSS").split()[0]) * 1024 >= 20_000_000
    assert len(thread_ids(target.pid)) == 2
    first = target.cmd("checksum")
    assert target.cmd("checksum") == first
    changed = int(target.cmd("mutate 1"))
    assert changed > 0
    second = target.cmd("checksum")
    assert second != first
    assert target.cmd("checksum") == second
    with pytest.raises(TargetCommandError):
        target.cmd("mutate lots")
    assert target.cmd("exit") == ""
    assert target.proc.wait(timeout=10) == 0


def test_mtwriter_prints_its_regions_and_writes_them(spawn, programs) -> None:
    target = spawn([programs["mtwriter"], "3", "2"])
    regions = [target.readline().split() for _ in range(3)]
    shared = target.readline().split()
    tids = set(thread_ids(target.pid))
    assert len(tids) == 4
    for word, tid, addr, length in regions:
        assert word == "region" and int(tid) in tids and int(tid) != target.pid
        assert int(length) == 2 * MIB
        assert mapping_at(target.pid, int(addr, 16)) is not None
    assert shared[0] == "shared"
    counters_addr = int(shared[1], 16)

    addr = int(regions[0][2], 16)
    before = read_target_memory(target.pid, addr, 2 * MIB)
    counters = read_target_memory(target.pid, counters_addr, 3 * 8)
    time.sleep(0.3)
    assert read_target_memory(target.pid, addr, 2 * MIB) != before
    later = read_target_memory(target.pid, counters_addr, 3 * 8)
    for i in range(3):
        assert int.from_bytes(later[i * 8:i * 8 + 8], "little") > int.from_bytes(counters[i * 8:i * 8 + 8], "little")


def seccomp_buffer_pattern(length: int) -> bytes:
    """The content seccomp_target keeps in its buffer: byte i is (i * 131 + 7) % 251."""
    period = bytes((i * 131 + 7) % 251 for i in range(251))
    return (period * (length // 251 + 1))[:length]


def test_seccomp_target_blocks_userfaultfd(spawn, programs) -> None:
    target = spawn([programs["seccomp_target"]])
    word, addr, length = target.readline().split()
    assert word == "buffer"
    assert proc_status_field(target.pid, "Seccomp") == "2"
    assert proc_status_field(target.pid, "NoNewPrivs") == "1"
    assert read_target_memory(target.pid, int(addr, 16), int(length)) == seccomp_buffer_pattern(int(length))
    assert target.readline(timeout=5).startswith("tick ")
    assert os.path.exists(f"/proc/{target.pid}")

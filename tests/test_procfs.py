"""Tests for ckpt.procfs: table tests on canned /proc text, property tests, and
live checks against the test process itself."""

from __future__ import annotations

import mmap
import os
import resource
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from ckpt import procfs
from ckpt.procfs import Mapping

# Captured from /proc/self/smaps on Linux 6.18 x86_64 (python with a file whose
# name has spaces mapped at offset 4096, and an unlinked file mapped shared).
# Trailing spaces on the anonymous header and the VmFlags lines are the kernel's.
SMAPS_EXCERPT = """\
564a816fa000-564a816fb000 r--p 00000000 fe:00 26723                      /root/.pyenv/versions/3.11.7/bin/python3.11
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   4 kB
Pss:                   4 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         4 kB
Private_Dirty:         0 kB
Referenced:            4 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr mw me 
564aa3e02000-564aa3f91000 rw-p 00000000 00:00 0                          [heap]
Size:               1596 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                1544 kB
Pss:                1544 kB
Pss_Dirty:          1544 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:      1544 kB
Referenced:         1544 kB
Anonymous:          1544 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr mr mw me ac 
7fdc04ac6000-7fdc04ac7000 rw-s 00000000 fe:00 2146462                    /tmp/tmpzwgbxpdf/gone.bin (deleted)
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   4 kB
Pss:                   4 kB
Pss_Dirty:             4 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         4 kB
Referenced:            4 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr sh mr mw me ms 
7fdc04ac7000-7fdc04ac8000 r--s 00001000 fe:00 2146461                    /tmp/tmpzwgbxpdf/my file with spaces.bin
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr me ms 
7fdc04acf000-7fdc04ad1000 rw-p 00000000 00:00 0 
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   8 kB
Pss_Dirty:             8 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         8 kB
Referenced:            8 kB
Anonymous:             8 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr mr mw me ac 
7fdc04ad1000-7fdc04ad5000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr pf io de dd 
7fdc04ad5000-7fdc04ad7000 r--p 00000000 00:00 0                          [vvar_vclock]
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr pf io de dd 
7fdc04ad7000-7fdc04ad9000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   4 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          4 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            4 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd ex mr mw me de 
7ffe79ee6000-7ffe79f07000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                  56 kB
Pss:                  56 kB
Pss_Dirty:            56 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:        56 kB
Referenced:           56 kB
Anonymous:            56 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr mr mw me gd ac 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: ex 
"""


def test_parse_smaps_real_excerpt() -> None:
    maps = procfs.parse_smaps(SMAPS_EXCERPT)
    assert [m.path for m in maps] == [
        "/root/.pyenv/versions/3.11.7/bin/python3.11",
        "[heap]",
        "/tmp/tmpzwgbxpdf/gone.bin (deleted)",
        "/tmp/tmpzwgbxpdf/my file with spaces.bin",
        "",
        "[vvar]",
        "[vvar_vclock]",
        "[vdso]",
        "[stack]",
        "[vsyscall]",
    ]
    exe, heap, gone, spaced, anon, vvar, vclock, vdso, stack, vsyscall = maps

    assert exe == Mapping(
        start=0x564A816FA000, end=0x564A816FB000, perms="r--p", offset=0, dev="fe:00",
        inode=26723, path="/root/.pyenv/versions/3.11.7/bin/python3.11",
        flags=frozenset({"rd", "mr", "mw", "me"}), rss=4096,
    )
    assert heap.rss == heap.anonymous == 1544 * 1024
    assert heap.size == 1596 * 1024
    assert heap.flags == {"rd", "wr", "mr", "mw", "me", "ac"}
    assert not heap.is_special and not stack.is_special
    assert "gd" in stack.flags and stack.writable and not stack.shared

    assert gone.deleted and gone.shared and gone.writable and gone.inode == 2146462
    assert gone.flags == {"rd", "wr", "sh", "mr", "mw", "me", "ms"}
    assert spaced.offset == 0x1000 and spaced.perms == "r--s" and not spaced.deleted
    assert spaced.shared and spaced.readable and not spaced.writable
    assert anon.path == "" and anon.inode == 0 and anon.dev == "00:00"

    for special in (vvar, vclock, vdso, vsyscall):
        assert special.is_special
    assert vvar.flags == {"rd", "mr", "pf", "io", "de", "dd"}
    assert vdso.executable and vdso.rss == 4096
    assert vsyscall.start == 0xFFFFFFFFFF600000 and vsyscall.perms == "--xp"
    assert vsyscall.flags == {"ex"}
    assert all(f in procfs.VMFLAG_MEANINGS for m in maps for f in m.flags)


def test_parse_maps_matches_smaps_headers() -> None:
    headers = "".join(line + "\n" for line in SMAPS_EXCERPT.split("\n")
                      if line and not line.split(" ", 1)[0].endswith(":"))
    from_maps = procfs.parse_maps(headers)
    from_smaps = procfs.parse_smaps(SMAPS_EXCERPT)
    assert len(from_maps) == 10
    for a, b in zip(from_maps, from_smaps):
        assert (a.start, a.end, a.perms, a.offset, a.dev, a.inode, a.path) == (
            b.start, b.end, b.perms, b.offset, b.dev, b.inode, b.path)
        assert a.flags == frozenset() and a.rss == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("7f0000000000-7f0000002000 rw-s 00000000 00:01 1034   /memfd:foo (deleted)",
         ("/memfd:foo (deleted)", True, False)),
        ("7f0000000000-7f0000002000 rw-s 00000000 00:01 4      /dev/zero (deleted)",
         ("/dev/zero (deleted)", True, False)),
        ("7f0000000000-7f0000002000 r--p 00000000 fd:01 99     /usr/lib/x.so",
         ("/usr/lib/x.so", False, False)),
        ("7f0000000000-7f0000002000 r--p 00000000 fd:01 99     /a  two  spaces ",
         ("/a  two  spaces ", False, False)),
        ("7f0000000000-7f0000002000 rw-p 00000000 00:00 0      [anon:python arena]",
         ("[anon:python arena]", False, False)),
        ("7f0000000000-7f0000002000 rw-p 00000000 00:00 0      [vvar_vclock]",
         ("[vvar_vclock]", False, True)),
        ("7f0000000000-7f0000002000 rw-p 00000000 00:00 0 ", ("", False, False)),
        ("7f0000000000-7f0000002000 rw-p 00000000 00:00 0", ("", False, False)),
    ],
)
def test_parse_maps_paths(line: str, expected: tuple[str, bool, bool]) -> None:
    (m,) = procfs.parse_maps(line + "\n")
    assert (m.path, m.deleted, m.is_special) == expected
    assert m.size == 0x2000


def test_parse_smaps_counters_and_uffd_flags() -> None:
    text = (
        "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n"
        "Size:               4096 kB\n"
        "Rss:                2048 kB\n"
        "Anonymous:          2048 kB\n"
        "AnonHugePages:      2048 kB\n"
        "FilePmdMapped:         0 kB\n"
        "Swap:                 12 kB\n"
        "VmFlags: rd wr mr mw me ac hg um uw \n"
        "7f0000400000-7f0000600000 r-xp 00001000 fd:01 7 /lib/libc.so.6\n"
        "FilePmdMapped:      2048 kB\n"
    )
    anon, lib = procfs.parse_smaps(text)
    assert (anon.rss, anon.anonymous, anon.anon_huge, anon.swap) == (
        2 << 20, 2 << 20, 2 << 20, 12 * 1024)
    assert {"hg", "um", "uw"} <= anon.flags
    assert lib.file_pmd_mapped == 2 << 20 and lib.flags == frozenset() and lib.rss == 0
    assert procfs.parse_smaps("") == []


def test_vmflag_meanings_cover_task_mmu_list() -> None:
    expected = ("rd wr ex sh mr mw me ms gd pf lo io sr rr dc de ac nr ht sf nl ar wf dd "
                "mm hg nh mg um uw ss sl dp bt gu lf sd mt ui").split()
    assert set(expected) <= procfs.VMFLAG_MEANINGS.keys()
    assert "VM_UFFD_WP" in procfs.VMFLAG_MEANINGS["uw"]
    assert "VM_UFFD_MISSING" in procfs.VMFLAG_MEANINGS["um"]
    assert "VM_DROPPABLE" in procfs.VMFLAG_MEANINGS["dp"]
    assert "VM_MAYWRITE" in procfs.VMFLAG_MEANINGS["mw"]
    assert "VM_GROWSDOWN" in procfs.VMFLAG_MEANINGS["gd"]


STATUS_TEXT = """\
Name:\tpython
Umask:\t0022
State:\tR (running)
Tgid:\t3420
Ngid:\t0
Pid:\t3420
PPid:\t3418
TracerPid:\t0
Uid:\t1000\t1001\t1002\t1003
Gid:\t100\t101\t102\t103
FDSize:\t256
Groups:\t4 24 27 
NStgid:\t3420
NSpid:\t3420
Kthread:\t0
VmPeak:\t   16600 kB
VmLck:\t      16 kB
Threads:\t3
SigQ:\t0/96364
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000100
SigBlk:\t0000000000010000
SigIgn:\t0000000001001000
SigCgt:\t0000000000000002
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
Speculation_Store_Bypass:\tthread vulnerable
Cpus_allowed_list:\t0-1
voluntary_ctxt_switches:\t14
"""


def test_parse_status() -> None:
    s = procfs.parse_status(STATUS_TEXT)
    assert s == procfs.Status(
        name="python", umask=0o022, state="R", tgid=3420, pid=3420, ppid=3418,
        tracer_pid=0, uids=(1000, 1001, 1002, 1003), gids=(100, 101, 102, 103),
        groups=(4, 24, 27), threads=3, sig_pnd=0, shd_pnd=0x100, sig_blk=0x10000,
        sig_ign=0x1001000, sig_cgt=2, cap_inh=0, cap_prm=0x1FFFEFFFFFF,
        cap_eff=0x1FFFEFFFFFF, cap_bnd=0x1FFFEFFFFFF, cap_amb=0, no_new_privs=1,
        seccomp=2, vm_lck=16 * 1024,
    )


def test_parse_status_tolerant() -> None:
    s = procfs.parse_status("Name:\tmy  prog\\\\x\\n\nState:\tZ (zombie)\nGroups:\t\nweird line\n")
    assert s.name == "my  prog\\x\n"
    assert s.state == "Z" and s.umask is None and s.groups == () and s.uids == (0, 0, 0, 0)


REAL_STAT = (
    "3420 (python) R 3418 3418 2073 0 -1 4194304 2855 6520 0 0 5 2 4 4 20 0 1 0 33823 "
    "16998400 3374 18446744073709551615 93943870361600 93943870361941 140727430799888 0 0 "
    "0 0 16781312 2 0 0 0 17 0 0 0 0 0 0 93943870373296 93943870373912 93944890253312 "
    "140727430801666 140727430801708 140727430801708 140727430803408 0\n"
)


def test_parse_stat_real_line() -> None:
    s = procfs.parse_stat(REAL_STAT)
    assert (s.pid, s.comm, s.state, s.ppid, s.pgrp, s.session, s.tty_nr) == (
        3420, "python", "R", 3418, 3418, 2073, 0)
    assert (s.flags, s.num_threads, s.start_time, s.vsize, s.rss) == (
        4194304, 1, 33823, 16998400, 3374)
    assert (s.start_code, s.end_code, s.start_stack) == (
        93943870361600, 93943870361941, 140727430799888)
    assert (s.exit_signal, s.processor) == (17, 0)
    assert (s.start_data, s.end_data, s.start_brk) == (
        93943870373296, 93943870373912, 93944890253312)
    assert (s.arg_start, s.arg_end, s.env_start, s.env_end, s.exit_code) == (
        140727430801666, 140727430801708, 140727430801708, 140727430803408, 0)


def test_parse_stat_tricky_comm() -> None:
    s = procfs.parse_stat(REAL_STAT.replace("(python)", "(a) (b c))"))
    assert s.comm == "a) (b c)" and s.state == "R" and s.start_time == 33823


def test_parse_stat_old_kernel_short_line() -> None:
    # Before Linux 3.5 the line stopped at field 44; later fields default to 0.
    short = " ".join(REAL_STAT.split()[:44])
    s = procfs.parse_stat(short)
    assert s.start_time == 33823 and s.start_data == 0 and s.exit_code == 0


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\0"),
               max_size=64))
def test_parse_stat_roundtrips_comm(comm: str) -> None:
    line = REAL_STAT.replace("(python)", f"({comm})")
    s = procfs.parse_stat(line)
    assert s.comm == comm
    assert (s.pid, s.state, s.start_time, s.exit_code) == (3420, "R", 33823, 0)


def test_parse_fdinfo_regular_file() -> None:
    info = procfs.parse_fdinfo("pos:\t5\nflags:\t02102001\nmnt_id:\t27\nino:\t2146547\n")
    assert info == procfs.FdInfo(pos=5, flags=0o2102001, mnt_id=27, ino=2146547, extra={})
    assert info.flags & os.O_APPEND and info.flags & os.O_WRONLY


def test_parse_fdinfo_eventfd_and_epoll() -> None:
    info = procfs.parse_fdinfo(
        "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"
        "eventfd-count:                3\neventfd-id: 1\neventfd-semaphore: 0\n"
    )
    assert (info.pos, info.flags, info.mnt_id, info.ino) == (0, 0o2000002, 17, 1038)
    assert info.extra == {"eventfd-count": "3", "eventfd-id": "1", "eventfd-semaphore": "0"}
    epoll = procfs.parse_fdinfo(
        "pos:\t0\nflags:\t02\nmnt_id:\t17\n"
        "tfd:        4 events:       19 data:                4  pos:0 ino:40e sdev:10\n"
        "tfd:        5 events:       19 data:                5  pos:0 ino:40f sdev:10\n"
    )
    assert epoll.ino is None
    assert epoll.extra["tfd"].split("\n") == [
        "4 events:       19 data:                4  pos:0 ino:40e sdev:10",
        "5 events:       19 data:                5  pos:0 ino:40f sdev:10",
    ]


LIMITS_TEXT = """\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             96364                96364                processes 
Max open files            20000                20000                files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       96364                96364                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
"""


def test_parse_limits() -> None:
    inf = resource.RLIM_INFINITY
    limits = procfs.parse_limits(LIMITS_TEXT)
    assert len(limits) == 16
    assert limits["RLIMIT_CPU"] == (inf, inf)
    assert limits["RLIMIT_STACK"] == (8388608, inf)
    assert limits["RLIMIT_CORE"] == (0, inf)
    assert limits["RLIMIT_NOFILE"] == (20000, 20000)
    assert limits["RLIMIT_NICE"] == (0, 0)
    assert limits["RLIMIT_RTPRIO"] == (0, 0)
    assert limits["RLIMIT_RTTIME"] == (inf, inf)
    # Python's resource module lacks RLIMIT_LOCKS; RLIMIT_NUMBERS supplies it.
    assert procfs.RLIMIT_NUMBERS["RLIMIT_LOCKS"] == 10
    for name in limits:
        assert getattr(resource, name, procfs.RLIMIT_NUMBERS[name]) == procfs.RLIMIT_NUMBERS[name]


def test_parse_auxv() -> None:
    data = struct.pack("@8Q", 33, 0x7FFF0000, 6, 4096, 0, 0, 99, 99)
    assert procfs.parse_auxv(data) == [(33, 0x7FFF0000), (6, 4096)]
    assert procfs.parse_auxv(b"") == []


@given(st.lists(st.tuples(st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1)),
                max_size=40))
def test_parse_auxv_roundtrips(pairs: list[tuple[int, int]]) -> None:
    data = b"".join(struct.pack("@QQ", a, b) for a, b in pairs) + struct.pack("@QQ", 0, 0)
    assert procfs.parse_auxv(data) == pairs


@pytest.mark.parametrize(
    ("target", "mode", "expected"),
    [
        ("/tmp/x", 0o100644, ("regular", "")),
        ("/tmp", 0o040755, ("directory", "")),
        ("/dev/null", 0o020666, ("chardev", "")),
        ("/dev/sda", 0o060660, ("blockdev", "")),
        ("pipe:[1234]", 0o010600, ("fifo", "")),
        ("socket:[55]", 0o140777, ("socket", "")),
        ("pipe:[1234]", 0, ("fifo", "")),
        ("anon_inode:[eventfd]", 0o600, ("anon", "eventfd")),
        ("anon_inode:inotify", 0o600, ("anon", "inotify")),
        ("anon_inode:[pidfd]", 0, ("anon", "pidfd")),
        ("net:[4026531840]", 0, ("other", "")),
    ],
)
def test_classify(target: str, mode: int, expected: tuple[str, str]) -> None:
    assert procfs._classify(target, mode) == expected


# --- live tests against this process -------------------------------------------------


def test_live_smaps_sees_mmapped_file(tmp_path: Path) -> None:
    page = procfs.page_size()
    path = tmp_path / "mapped file.bin"
    path.write_bytes(b"z" * (3 * page))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), page, prot=mmap.PROT_READ,
                                          offset=2 * page) as m:
        assert m[0] == ord("z")
        ino = os.stat(path).st_ino
        found = [v for v in procfs.read_smaps(os.getpid()) if v.path == str(path)]
        assert len(found) == 1
        vma = found[0]
        assert vma.offset == 2 * page and vma.size == page and vma.inode == ino
        assert "rd" in vma.flags and "wr" not in vma.flags
        assert vma.perms == "r--s" and vma.rss == page
        in_maps = [v for v in procfs.read_maps(os.getpid()) if v.path == str(path)]
        assert [(v.start, v.offset) for v in in_maps] == [(vma.start, vma.offset)]


# /proc/locks on Linux 6.18 with a lease, an OFD lock, a flock and two POSIX locks
# (lock_get_status() in fs/locks.c), and a request blocked behind the last one.
PROC_LOCKS = """\
1: LEASE  ACTIVE    READ 7465 fe:00:2155203 0 EOF
2: OFDLCK ADVISORY  WRITE -1 fe:00:2155202 0 EOF
3: FLOCK  ADVISORY  READ 7465 fe:00:2155201 0 EOF
4: POSIX  ADVISORY  READ 7465 fe:00:2155200 50 EOF
5: POSIX  ADVISORY  WRITE 7465 fe:00:2155200 5 14
5: -> POSIX  ADVISORY  WRITE 7470 fe:00:2155200 0 EOF
"""


@pytest.mark.parametrize("line,expected", [
    ("1: LEASE  ACTIVE    READ 7465 fe:00:2155203 0 EOF",
     procfs.FileLock("LEASE", "ACTIVE", "READ", 7465, "fe:00", 2155203, 0, None)),
    ("2: OFDLCK ADVISORY  WRITE -1 fe:00:2155202 0 EOF",
     procfs.FileLock("OFDLCK", "ADVISORY", "WRITE", -1, "fe:00", 2155202, 0, None)),
    ("3: FLOCK  ADVISORY  READ 7465 fe:00:2155201 0 EOF",
     procfs.FileLock("FLOCK", "ADVISORY", "READ", 7465, "fe:00", 2155201, 0, None)),
    ("5: POSIX  ADVISORY  WRITE 7465 fe:00:2155200 5 14",
     procfs.FileLock("POSIX", "ADVISORY", "WRITE", 7465, "fe:00", 2155200, 5, 14)),
    ("5: -> POSIX  ADVISORY  WRITE 7470 fe:00:2155200 0 EOF",
     procfs.FileLock("POSIX", "ADVISORY", "WRITE", 7470, "fe:00", 2155200, 0, None, blocked=True)),
    # a whole fdinfo line; a lease being broken; a lock whose file has no inode
    ("lock:\t1: LEASE  BREAKING  UNLCK 80 08:01:12 0 EOF",
     procfs.FileLock("LEASE", "BREAKING", "UNLCK", 80, "08:01", 12, 0, None)),
    ("1: POSIX  *NOINODE* WRITE 9 <none>:0 0 EOF",
     procfs.FileLock("POSIX", "*NOINODE*", "WRITE", 9, "<none>", 0, 0, None)),
    # never dropped: what cannot be parsed is kept as its text
    ("7: SOMETHING NEW", procfs.FileLock("SOMETHING NEW")),
    ("7: POSIX  ADVISORY  WRITE x fe:00:1 0 EOF", procfs.FileLock("POSIX ADVISORY WRITE x fe:00:1 0 EOF")),
])
def test_parse_lock_lines(line: str, expected: procfs.FileLock) -> None:
    assert procfs.parse_locks(line) == [expected]


def test_parse_locks_whole_file_and_fdinfo() -> None:
    locks = procfs.parse_locks(PROC_LOCKS)
    assert [(lk.kind, lk.access, lk.blocked) for lk in locks] == [
        ("LEASE", "READ", False), ("OFDLCK", "WRITE", False), ("FLOCK", "READ", False),
        ("POSIX", "READ", False), ("POSIX", "WRITE", False), ("POSIX", "WRITE", True)]
    assert procfs.parse_locks("") == []
    info = procfs.parse_fdinfo("pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t2155200\n"
                               "lock:\t1: POSIX  ADVISORY  WRITE 7465 fe:00:2155200 5 14\n"
                               "lock:\t2: POSIX  ADVISORY  READ 7465 fe:00:2155200 50 EOF\n")
    assert [(lk.start, lk.end) for lk in procfs.parse_locks(info.extra["lock"])] == [(5, 14), (50, None)]


def test_live_locks_in_fdinfo(tmp_path: Path) -> None:
    """Every kind of lock shows on the fd it was taken through (fs/locks.c show_fd_locks)."""
    import fcntl

    files = {name: tmp_path / name for name in ("posix", "flock", "ofd", "lease")}
    for path in files.values():
        path.write_bytes(b"x" * 200)
    fds = {name: os.open(path, os.O_RDONLY if name == "lease" else os.O_RDWR) for name, path in files.items()}
    try:
        fcntl.lockf(fds["posix"], fcntl.LOCK_EX, 50, 100)   # bytes 100-149
        fcntl.flock(fds["flock"], fcntl.LOCK_SH)
        fcntl.fcntl(fds["ofd"], fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        fcntl.fcntl(fds["lease"], fcntl.F_SETLEASE, fcntl.F_RDLCK)
        held = {f.fd: f.locks for f in procfs.read_open_files(os.getpid())}
        got = {name: [(lk.kind, lk.access, lk.start, lk.end, lk.ino) for lk in held[fd]]
               for name, fd in fds.items()}
        ino = {name: os.stat(path).st_ino for name, path in files.items()}
        assert got == {"posix": [("POSIX", "WRITE", 100, 149, ino["posix"])],
                       "flock": [("FLOCK", "READ", 0, None, ino["flock"])],
                       "ofd": [("OFDLCK", "WRITE", 0, None, ino["ofd"])],
                       "lease": [("LEASE", "READ", 0, None, ino["lease"])]}
        assert held[fds["ofd"]][0].pid == -1 and held[fds["posix"]][0].pid == os.getpid()
    finally:
        for fd in fds.values():
            os.close(fd)


def test_read_children(tmp_path: Path) -> None:
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in procfs.read_children(os.getpid())
        assert child.pid in procfs._children_by_ppid(os.getpid(), "/proc")  # the fallback finds it too
    finally:
        child.kill()
        child.wait()
    assert child.pid not in procfs.read_children(os.getpid())


def test_live_open_files(tmp_path: Path) -> None:
    path = tmp_path / "open.txt"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    r, w = os.pipe()
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        files = {f.fd: f for f in procfs.read_open_files(os.getpid())}
        reg = files[fd]
        assert reg.target == str(path) and reg.kind == "regular" and not reg.deleted
        assert reg.pos == 7 and reg.flags & os.O_APPEND
        assert reg.flags & os.O_ACCMODE == os.O_WRONLY
        assert reg.size == 10 and reg.ino == os.stat(path).st_ino
        assert files[r].kind == files[w].kind == "fifo"
        assert files[r].target.startswith("pipe:[") and files[r].ino == files[w].ino
        os.unlink(path)
        gone = {f.fd: f for f in procfs.read_open_files(os.getpid())}[fd]
        assert gone.deleted and gone.target == f"{path} (deleted)"
    finally:
        for x in (fd, r, w):
            os.close(x)


@pytest.mark.skipif(not hasattr(os, "eventfd"), reason="os.eventfd needs Python 3.10")
def test_live_eventfd() -> None:
    efd = os.eventfd(3)
    try:
        f = {f.fd: f for f in procfs.read_open_files(os.getpid())}[efd]
        assert (f.kind, f.anon_type, f.target) == ("anon", "eventfd", "anon_inode:[eventfd]")
        info = procfs.read_fdinfo(os.getpid(), efd)
        assert int(info.extra["eventfd-count"], 16) == 3  # printed "%16llx"
    finally:
        os.close(efd)


def test_live_missing_process_raises(tmp_path: Path) -> None:
    fake_root = str(tmp_path)
    with pytest.raises(FileNotFoundError):
        procfs.read_open_files(12345, proc_root=fake_root)
    with pytest.raises(FileNotFoundError):
        procfs.read_stat(12345, proc_root=fake_root)
    with pytest.raises(FileNotFoundError):
        procfs.list_threads(12345, proc_root=fake_root)


def test_proc_root_parameter(tmp_path: Path) -> None:
    d = tmp_path / "42"
    d.mkdir()
    (d / "stat").write_text(REAL_STAT)
    (d / "limits").write_text(LIMITS_TEXT)
    (d / "comm").write_text("sp ace\n")
    (d / "personality").write_text("00400000\n")
    (d / "cmdline").write_bytes(b"python\0-c\0\0x y\0")
    assert procfs.start_time(42, proc_root=str(tmp_path)) == 33823
    assert procfs.read_limits(42, str(tmp_path))["RLIMIT_STACK"][0] == 8388608
    assert procfs.read_comm(42, proc_root=str(tmp_path)) == "sp ace"
    assert procfs.read_personality(42, str(tmp_path)) == 0x400000
    assert procfs.read_cmdline(42, str(tmp_path)) == ["python", "-c", "", "x y"]


def test_open_files_skips_closed_fd(tmp_path: Path) -> None:
    # A fake /proc: fd 3 vanished between listdir and fdinfo (no fdinfo/3),
    # fd 5 is a regular file with its fdinfo.
    target = tmp_path / "data"
    target.write_bytes(b"abc")
    fd_dir = tmp_path / "42" / "fd"
    fd_dir.mkdir(parents=True)
    (tmp_path / "42" / "fdinfo").mkdir()
    (fd_dir / "3").symlink_to(tmp_path / "gone")
    (fd_dir / "5").symlink_to(target)
    (tmp_path / "42" / "fdinfo" / "5").write_text("pos:\t2\nflags:\t0100000\nmnt_id:\t1\n")
    (f,) = procfs.read_open_files(42, proc_root=str(tmp_path))
    assert (f.fd, f.target, f.pos, f.kind, f.size) == (5, str(target), 2, "regular", 3)
    assert procfs.list_fds(42, proc_root=str(tmp_path)) == [3, 5]


def test_live_threads_and_status() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="procfs-test")
    t.start()
    try:
        assert t.native_id in procfs.list_threads(os.getpid())
        assert procfs.read_comm(os.getpid(), t.native_id)  # a string, maybe truncated
        status = procfs.read_status(os.getpid())
        assert status.threads >= 2
    finally:
        stop.set()
        t.join()
    # status has a fourth (filesystem) id that getresuid() does not report.
    assert status.uids[:3] == os.getresuid() and status.uids[3] == os.geteuid()
    assert status.gids[:3] == os.getresgid() and status.gids[3] == os.getegid()
    assert status.pid == status.tgid == os.getpid() and status.ppid == os.getppid()
    assert status.state in "RSD"


def test_live_small_readers() -> None:
    pid = os.getpid()
    stat = procfs.read_stat(pid)
    assert stat.pid == pid and stat.ppid == os.getppid() and stat.start_time > 0
    assert procfs.start_time(pid) == stat.start_time
    assert procfs.read_cwd(pid) == os.getcwd()
    assert procfs.read_exe(pid) == os.path.realpath("/proc/self/exe")
    assert procfs.read_root(pid) == "/"
    assert procfs.read_comm(pid) == Path("/proc/self/comm").read_text().rstrip("\n")
    assert isinstance(procfs.read_personality(pid), int)
    raw = Path("/proc/self/cmdline").read_bytes().split(b"\0")[:-1]
    assert procfs.read_cmdline(pid) == [os.fsdecode(a) for a in raw]
    assert procfs.page_size() == mmap.PAGESIZE
    assert procfs.read_limits(pid)["RLIMIT_NOFILE"] == resource.getrlimit(
        resource.RLIMIT_NOFILE)
    auxv = procfs.parse_auxv(procfs.read_auxv(pid))
    assert dict(auxv)[6] == mmap.PAGESIZE  # AT_PAGESZ
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        assert fd in procfs.list_fds(pid)
        assert procfs.list_fds(pid) == sorted(procfs.list_fds(pid))
    finally:
        os.close(fd)

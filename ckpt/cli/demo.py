"""``ckpt demo``: the whole loop on a built-in workload, narrated."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from .common import human_bytes

# A process that knows nothing about ckpt: 128 MiB of data, a counter, and a
# write of a few scattered pages every 50 ms.  It prints the address of its
# counter so the demo can read it back out of each checkpoint.
WORKLOAD = r"""
import ctypes, random, sys, time
data = bytearray(128 << 20)
for i in range(0, len(data), 4096):
    data[i:i + 16] = (b"page %10d" % (i // 4096)).ljust(16)
counter = (ctypes.c_uint64 * 1)()
print(ctypes.addressof(counter), flush=True)
rng = random.Random(1)
while True:
    counter[0] += 1
    for _ in range(8):
        page = rng.randrange(len(data) // 4096)
        data[page * 4096 + 100] = counter[0] % 256
    time.sleep(0.05)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the checkpoint loop on a built-in workload, narrated",
                       description="Start a small workload, take a full and two incremental "
                                   "checkpoints, show the chain, verify it, and read the "
                                   "workload's counter out of every checkpoint with the Python API.")
    p.add_argument("-D", "--images-dir", metavar="DIR",
                   help="where to keep the images (default: a temporary directory, removed after)")
    p.set_defaults(run=run)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from ..dump import Dumper
    from ..image import ImageDir

    keep = args.images_dir is not None
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="ckpt-demo-")
    images_dir = args.images_dir or os.path.join(tmp.name, "images")  # type: ignore[union-attr]
    _say("starting a workload: 128 MiB of data, a counter, a few pages written every 50 ms")
    workload = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdout=subprocess.PIPE, text=True)
    try:
        assert workload.stdout is not None
        counter_address = int(workload.stdout.readline())
        print(f"workload pid {workload.pid}; its counter lives at {counter_address:#x}")
        with Dumper(workload.pid, images_dir) as dumper:
            for i in range(3):
                if i:
                    time.sleep(1.0)
                report = dumper.dump()
                cp = report.checkpoint
                _say(f"checkpoint {cp.id}: {report.kind}")
                print(f"{cp.pages_present} pages present, {cp.pages_stored} stored "
                      f"({human_bytes(cp.bytes_raw)} raw, {human_bytes(cp.bytes_compressed)} compressed); "
                      f"the workload was frozen for {report.frozen_seconds * 1e3:.1f} ms of "
                      f"{report.wall_seconds * 1e3:.0f} ms")
        _say(f"the chain in {images_dir} (ckpt inspect)")
        from . import inspect as inspect_cmd

        inspect_cmd.run(argparse.Namespace(images_dir=images_dir, json=False))
        _say("verifying every checksum and page (ckpt verify)")
        ImageDir(images_dir).verify()
        print("all checkpoints verified")
        _say("reading the counter out of each checkpoint with the Python API")
        print(">>> cp = ckpt.ImageDir(DIR).checkpoints[i]; cp.read_memory(address, 8)")
        for cp in ImageDir(images_dir).checkpoints:
            value = int.from_bytes(cp.read_memory(counter_address, 8), "little")
            print(f"checkpoint {cp.id} ({cp.kind}): counter = {value}")
    finally:
        workload.kill()
        workload.wait()
        if tmp is not None:
            tmp.cleanup()
    _say("done" + (f"; images kept in {images_dir}" if keep else ""))
    return 0

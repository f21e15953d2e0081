"""``ckpt demo``: the whole loop on a built-in workload, narrated."""

from __future__ import annotations

import argparse
import os
import sys

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
    if counter[0] % 10 == 0:
        print(f"workload: counter {counter[0]}", file=sys.stderr, flush=True)
    time.sleep(0.05)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the checkpoint loop on a built-in workload, narrated",
                       description="Start a small workload, take a full and two incremental "
                                   "checkpoints (the last one kills it), show the chain, verify it, "
                                   "read the workload's counter out of every checkpoint with the "
                                   "Python API, then restore it and show it carrying on.")
    p.add_argument("-D", "--images-dir", metavar="DIR",
                   help="where to keep the images (default: a temporary directory, removed after)")
    p.set_defaults(run=run)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile
    import time

    from ..dump import Dumper
    from ..image import ImageDir
    from ..restore import restore

    keep = args.images_dir is not None
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="ckpt-demo-")
    images_dir = args.images_dir or os.path.join(tmp.name, "images")  # type: ignore[union-attr]
    log = os.path.join(tmp.name if tmp else images_dir, "workload.log")
    restored_pid = None
    _say("starting a workload: 128 MiB of data, a counter, a few pages written every 50 ms")
    with open(log, "w") as log_file:
        workload = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdout=subprocess.PIPE,
                                    stderr=log_file, text=True)
    try:
        assert workload.stdout is not None
        counter_address = int(workload.stdout.readline())
        print(f"workload pid {workload.pid}; its counter lives at {counter_address:#x}")
        with Dumper(workload.pid, images_dir) as dumper:
            for i in range(3):
                time.sleep(1.0)
                last = i == 2
                report = dumper.dump(after="kill" if last else "run")
                cp = report.checkpoint
                _say(f"checkpoint {cp.id}: {report.kind}" + (", then the workload is killed" if last else ""))
                print(f"{cp.pages_present} pages present, {cp.pages_stored} stored "
                      f"({human_bytes(cp.bytes_raw)} raw, {human_bytes(cp.bytes_compressed)} compressed); "
                      f"the workload was frozen for {report.frozen_seconds * 1e3:.1f} ms of "
                      f"{report.wall_seconds * 1e3:.0f} ms")
        workload.wait()
        print(f"workload exit status: {workload.returncode} (killed)")
        _say(f"the chain in {images_dir} (ckpt inspect)")
        from . import inspect as inspect_cmd

        inspect_cmd.run(argparse.Namespace(images_dir=images_dir, images_dir_option=None, json=False, fds=False,
                                           checkpoint=None))
        _say("verifying every checksum and page (ckpt verify)")
        ImageDir(images_dir).verify()
        print("all checkpoints verified")
        _say("reading the counter out of each checkpoint with the Python API")
        print(">>> cp = ckpt.ImageDir(DIR).checkpoints[i]; cp.read_memory(address, 8)")
        final = 0
        for cp in ImageDir(images_dir).checkpoints:
            final = int.from_bytes(cp.read_memory(counter_address, 8), "little")
            print(f"checkpoint {cp.id} ({cp.kind}): counter = {final}")
        _say("restoring the last checkpoint (ckpt restore): the workload carries on")
        before = _log_lines(log)
        result = restore(images_dir, detach=True, stderr=log)
        restored_pid = result.pid
        print(f"restored as pid {result.pid} ({'; '.join(result.notes)})")
        time.sleep(1.5)
        for line in _log_lines(log)[len(before):][:4]:
            print(f"  {line}")
        print(f"(the counter was {final} when checkpoint {result.checkpoint} was taken)")
    finally:
        if workload.poll() is None:
            workload.kill()
            workload.wait()
        if restored_pid is not None:
            _stop(restored_pid)
        if tmp is not None:
            tmp.cleanup()
    _say("done" + (f"; images kept in {images_dir}" if keep else ""))
    return 0


def _log_lines(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def _stop(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass

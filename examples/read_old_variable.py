"""Look back in time: read a variable of a running process as it was at each checkpoint.

The target is a small Python program (started with ``python -c``; it knows
nothing about ckpt) holding one variable at a fixed address: a ctypes structure
``{uint64 value; char label[24]}``.  It prints that address, then changes the
variable each time it reads a line on stdin, reporting the new contents.
Driving the changes from here (rather than on a timer) makes the test exact:
between two changes the target sits in read() with the variable unchanged, so
the value it last reported is the value every checkpoint taken then must hold.

This script changes the variable a few times, takes a checkpoint at a few of
those moments (one :class:`ckpt.Dumper`: full, then incremental), keeps changing
it afterwards, then reads the variable's bytes out of every checkpoint with
``ckpt.ImageDir(dir).checkpoints[i].read_memory(address, size)`` and compares
them with what the target reported at that checkpoint's moment.

Run it as root, or as the user that owns the target (it is our own child here),
on Linux 6.7+::

    python examples/read_old_variable.py [--images-dir DIR]

Exit status 0 when every checkpoint holds the value reported at its moment.
"""

from __future__ import annotations

import argparse
import datetime
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import ckpt

# The variable's layout, shared by the target (ctypes) and the reader (struct):
# a little-endian uint64 and a NUL-padded 24-byte label, no padding between.
VARIABLE_FORMAT = "<Q24s"
VARIABLE_SIZE = struct.calcsize(VARIABLE_FORMAT)

# A ctypes structure lives in memory ctypes allocated once, so its address stays
# valid for the life of the process (unlike a Python int, which is replaced on
# every assignment).  Each change steps a 64-bit LCG, so values look arbitrary
# and a stale or misplaced read cannot match by luck.
TARGET_PROGRAM = r"""
import ctypes, sys

class Variable(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("label", ctypes.c_char * 24)]

variable = Variable(0, b"start")
print(ctypes.addressof(variable), flush=True)
for tick, _ in enumerate(sys.stdin, start=1):
    variable.value = (variable.value * 6364136223846793005 + 1442695040888963407) % (1 << 64)
    variable.label = f"tick {tick}".encode()
    print(variable.value, variable.label.decode(), flush=True)
"""

CHANGES_BETWEEN_CHECKPOINTS = 3   # the variable changes this often between two checkpoints
CHECKPOINTS = 4
PAUSE = 0.3                       # seconds between changes, so the checkpoints' times differ


@dataclass
class Moment:
    """What the target reported just before one checkpoint was taken."""

    checkpoint_id: int
    value: int
    label: str


class Target:
    """The target process, driven one change at a time over its stdin."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", TARGET_PROGRAM], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.address = int(self._read_line())

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the target (pid {self.pid}) exited unexpectedly")
        return line.strip()

    def change(self) -> tuple[int, str]:
        """Make the target change its variable; return the (value, label) it reports.

        Once the report is read, the target is back in read() and the variable
        stays as reported until the next change."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        value, label = self._read_line().split(" ", 1)
        return int(value), label

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def decode_variable(raw: bytes) -> tuple[int, str]:
    value, label = struct.unpack(VARIABLE_FORMAT, raw)
    return value, label.rstrip(b"\0").decode(errors="replace")


def take_checkpoints(target: Target, images_dir: str) -> list[Moment]:
    moments = []
    with ckpt.Dumper(target.pid, images_dir) as dumper:
        for _ in range(CHECKPOINTS):
            for _ in range(CHANGES_BETWEEN_CHECKPOINTS):
                value, label = target.change()
                time.sleep(PAUSE)
            # The target is idle in read() now: the checkpoint holds (value, label).
            report = dumper.dump()
            cp = report.checkpoint
            moments.append(Moment(cp.id, value, label))
            print(f"target reported value {value:>20} ({label:<7}) -> checkpoint {cp.id} ({report.kind})")
    return moments


def read_back(images_dir: str, address: int, moments: list[Moment]) -> bool:
    """Read the variable out of every checkpoint; compare with the reported values."""
    expected = {m.checkpoint_id: m for m in moments}
    checkpoints = ckpt.ImageDir(images_dir).checkpoints
    ok = len(checkpoints) == len(moments)
    if not ok:
        print(f"FAIL: {len(checkpoints)} checkpoints in {images_dir}, {len(moments)} taken")
    print(f"{'id':>3}  {'kind':<11}  {'time':<12}  {'value in checkpoint':>20}  {'label':<7}  match")
    for cp in checkpoints:
        value, label = decode_variable(cp.read_memory(address, VARIABLE_SIZE))
        moment = expected.get(cp.id)
        match = moment is not None and (value, label) == (moment.value, moment.label)
        ok = ok and match
        when = datetime.datetime.fromtimestamp(cp.time).strftime("%H:%M:%S.%f")[:-3]
        verdict = "yes" if match else ("NO, expected " + (f"{moment.value} ({moment.label})" if moment
                                                           else "no checkpoint with this id"))
        print(f"{cp.id:>3}  {cp.kind:<11}  {when:<12}  {value:>20}  {label:<7}  {verdict}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images-dir", metavar="DIR",
                        help="where to keep the checkpoints (default: a temporary directory, removed after)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="ckpt-old-variable-") as tmp:
        images_dir = args.images_dir or os.path.join(tmp, "images")
        target = Target()
        try:
            print(f"== target pid {target.pid}: its variable lives at {target.address:#x} "
                  f"({VARIABLE_SIZE} bytes); checkpoints go to {images_dir}")
            moments = take_checkpoints(target, images_dir)
            # Keep changing it: the checkpoints must hold the past, not the present.
            for _ in range(CHANGES_BETWEEN_CHECKPOINTS):
                value, label = target.change()
            print(f"== the variable has moved on since: now {value} ({label})")
        except ckpt.CkptError as err:
            print(f"FAIL: checkpoint failed: {err}")
            return 1
        finally:
            target.kill()  # reading checkpoints needs no live process

        print(f"== reading the variable out of each checkpoint (target pid {target.pid} is gone)")
        print(">>> ckpt.ImageDir(DIR).checkpoints[i].read_memory(address, size)")
        ok = read_back(images_dir, target.address, moments)

    print(f"== {'success' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``ckpt`` command: one module per sub-command, each with ``add_parser`` and ``run``.

``main(argv) -> int`` turns every :class:`ckpt.errors.CkptError` into one line
on stderr (``ckpt: ...``) and its exit code (an ``OSError`` nothing below
translated becomes one line and exit 1); SIGTERM is turned into an exception
so that every ``finally`` (thawing the target first) runs.
Heavy modules are imported by the sub-commands, so ``ckpt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import NoReturn

from . import check, demo, dump, inspect, prune, restore, track, verify

COMMANDS = (dump, restore, inspect, verify, prune, check, track, demo)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a pointer to --help), exit 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckpt",
        description="Incremental checkpoints of live Linux processes, tracked with userfaultfd "
                    "write-protection and PAGEMAP_SCAN.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 no such process, 4 permission denied, "
               "5 kernel feature missing, 6 target exited, 7 bad images, 8 images dir busy, "
               "9 target state unsupported (or checkpoint not restorable), 10 dump --kill refused "
               "(the checkpoint would not restore; the target was left running), 11 images not trusted "
               "for what they ask (a restore grants at most what their owner could have), 130 interrupted "
               "(a dump interrupted after its checkpoint was committed exits 0: the checkpoint was taken).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    from ..errors import Interrupted

    raise Interrupted("interrupted by SIGTERM; the target was released", "SIGTERM")


def main(argv: list[str] | None = None) -> int:
    """Run ``ckpt`` with ``argv``; return the exit code."""
    args = _parser().parse_args(argv)
    from ..errors import CkptError, Interrupted

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("ckpt: interrupted; the target was released", file=sys.stderr)
        return Interrupted.exit_code
    except CkptError as err:
        print(f"ckpt: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return 1
    except OSError as err:
        # Last resort for an environment error no layer below translated (say, a
        # file of an images directory replaced by a directory): one line, no traceback.
        where = f"{err.filename}: " if err.filename else ""
        print(f"ckpt: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)

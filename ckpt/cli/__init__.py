"""The ``ckpt`` command: one module per sub-command, each with ``add_parser`` and ``run``.

``main(argv) -> int`` turns every :class:`ckpt.errors.CkptError` into one line
on stderr (``ckpt: ...``) and its exit code (an ``OSError`` nothing below
translated becomes one line and exit 1); SIGTERM and SIGHUP are turned into an
exception so that every ``finally`` (thawing the target first) runs; the exit
code is then 128 + the signal number, as a shell reports a command a signal
ended (130 for Ctrl-C, 143 for SIGTERM).
Heavy modules are imported by the sub-commands, so ``ckpt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any, NoReturn

from . import check, demo, dump, inspect, prune, restore, track, verify

COMMANDS = (dump, restore, inspect, verify, prune, check, track, demo)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a pointer to --help), exit 2, and no
    abbreviated long options: ``--kil`` is a usage error, never ``--kill``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False   # sub-parsers are made by add_parser, with this class
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


EXIT_CODES = (
    "Exit codes: 0 ok, 1 error, 2 usage, 3 no such process, 4 permission denied, "
    "5 kernel feature missing, 6 target exited, 7 bad images, 8 images dir busy, "
    "9 target state unsupported (or checkpoint not restorable), 10 dump --kill refused "
    "(the checkpoint would not restore; the target was left running), 11 images not trusted "
    "for what they ask (a restore grants at most what their owner could have), 12 storage error "
    "writing images (disk full, quota, read-only file system, I/O error: nothing was committed, the "
    "target keeps running), 129/130/143 interrupted by SIGHUP/SIGINT/SIGTERM (128 + the signal, as "
    "a shell reports it; a dump interrupted after its checkpoint was committed exits 0: the checkpoint "
    "was taken; so does a 'dump --every' stopped after at least one checkpoint, which says how many). "
    "An attached 'ckpt restore' exits with the restored process's status.")


def _global_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """-v and --log-file, on the main parser and (dest ``sub_...``) on every sub-command's."""
    default = 0 if not prefix else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=default, dest=prefix + "verbose",
                        help="trace what the command does and how long each step takes, on stderr "
                             "(-vv: with details), as CRIU's -v")
    parser.add_argument("--log-file", metavar="FILE", dest=prefix + "log_file",
                        default=None if not prefix else argparse.SUPPRESS,
                        help="append the whole trace (as -vv) to FILE, created 0600 (as CRIU's -o); "
                             "refused if FILE is a symbolic link or another user's file")


def _sub_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (sub-commands, their sub-commands)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):   # aliases map to the same parser
                found.append(child)
                found.extend(_sub_parsers(child))
    return found


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="ckpt",
        description="Incremental checkpoints of live Linux processes, tracked with userfaultfd "
                    "write-protection and PAGEMAP_SCAN.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"ckpt {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    for child in _sub_parsers(parser):
        if not {"-v", "--verbose", "--log-file"} & set(child._option_string_actions):   # a command's own wins
            _global_options(child, "sub_")
    return parser


#: The signals that stop ckpt (the target released first), turned into :class:`Interrupted`
#: so that every ``finally`` runs; SIGINT is Python's KeyboardInterrupt.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


#: What an interrupted command says besides (a dump releases its target before it exits).
_AFTERMATH = {"dump": "; the target was released", "pre-dump": "; the target was released"}
_command: str | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    from ..errors import Interrupted

    name = signal.Signals(signum).name
    raise Interrupted(f"interrupted by {name}{_AFTERMATH.get(_command or '', '')}", name)


_on_sigterm = _on_signal   # the name tests and API users install for SIGTERM


def _configure_log(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """-v/--log-file given before or after the sub-command (once each)."""
    verbosity = args.verbose + getattr(args, "sub_verbose", 0)
    log_file = args.log_file
    sub_file = getattr(args, "sub_log_file", None)
    if log_file is not None and sub_file is not None and log_file != sub_file:
        parser.error(f"--log-file given twice: {log_file} and {sub_file}")
    log_file = log_file or sub_file
    if verbosity or log_file is not None:
        from .. import log

        log.configure(verbosity, log_file)


def _log_outcome(message: str) -> None:
    """Put the error line in the --log-file too, if there is one (ckpt.log loaded only then)."""
    log = sys.modules.get("ckpt.log")
    if log is not None and log.logger.handlers:
        log.outcome(message)


def main(argv: list[str] | None = None) -> int:
    """Run ``ckpt`` with ``argv``; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    from ..errors import CkptError, Interrupted

    global _command
    _command = args.command
    previous = {sig: signal.signal(sig, _on_signal) for sig in _STOP_SIGNALS}
    try:
        _configure_log(parser, args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"ckpt: interrupted{_AFTERMATH.get(args.command, '')}", file=sys.stderr)
        return Interrupted.exit_code
    except CkptError as err:
        print(f"ckpt: {err}", file=sys.stderr)
        _log_outcome(f"ckpt: {err} (exit {err.exit_code})")
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)

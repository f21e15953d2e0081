"""``ckpt dump`` and ``ckpt pre-dump``."""

from __future__ import annotations

import argparse
import sys
import time

from .common import TerminalProgress, human_bytes, parse_duration, print_json
from .prune import add_retention


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 2s, 500ms, 1m)") from None


def _level(text: str) -> int:
    from ..image.imagedir import MAX_LEVEL, MIN_LEVEL  # here, not at import: 'ckpt --help' stays fast

    try:
        level = int(text)
    except ValueError:
        level = None
    if level is None or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise argparse.ArgumentTypeError(f"{text!r} is not a level from {MIN_LEVEL} to {MAX_LEVEL} "
                                         "(0 = store uncompressed)")
    return level


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    """"1M", "512K", "4096": a number of bytes (K, M, G: powers of 1024)."""
    scale = _SIZE_UNITS.get(text[-1:].upper())
    digits = text[:-1] if scale else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1M, 512K, 0)")
    return int(digits) * (scale or 1)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dump", help="checkpoint a running process (full the first time, then incremental)",
        description="Checkpoint process PID into the images directory DIR. The first dump of a "
                    "process is full; ckpt then keeps tracking its writes (a small holder process "
                    "keeps the userfaultfd; see 'ckpt track'), so later dumps store only the pages "
                    "written since. The target keeps running unless --kill or --leave-stopped.")
    _common(p)
    after = p.add_mutually_exclusive_group()
    after.add_argument("--kill", action="store_true",
                       help="kill the target after the checkpoint (final dump); refused, and the target "
                            "left running (exit 10), when the checkpoint could not be restored")
    after.add_argument("--leave-stopped", action="store_true",
                       help="leave the target stopped (SIGSTOP) after the checkpoint; resume it with SIGCONT")
    after.add_argument("--leave-running", action="store_true",
                       help="leave the target running after the checkpoint: the default, accepted as CRIU's option")
    p.add_argument("--shell-job", action="store_true",
                   help="accepted as CRIU's option: ckpt dumps a process whose controlling terminal is outside it "
                        "(a shell job) anyway, and says that its restore needs 'ckpt restore --shell-job'")
    p.add_argument("--every", type=_duration, metavar="INTERVAL",
                   help="stay attached and take one checkpoint per INTERVAL (e.g. 2s, 500ms) until "
                        "Ctrl-C, SIGTERM, --count, or the target exits; stopped after a checkpoint it says how "
                        "many it took and exits 0; with --json, one compact JSON object per line per checkpoint "
                        "(JSON Lines)")
    p.add_argument("--count", type=_positive, metavar="N", help="with --every: stop after N checkpoints")
    p.add_argument("--no-track", action="store_true",
                   help="end write tracking with this command (no holder is left): the next dump is "
                        "full, and mappings the target creates afterwards merge with its others as "
                        "they would without ckpt (tracked ones do not; see the README's limits)")
    add_retention(p, " after each checkpoint (with --every: a long job in bounded space; see 'ckpt prune')")
    p.add_argument("--ghost-limit", type=_size, default=None, metavar="SIZE",
                   help="the most data (e.g. 1M, 512K) of a file deleted while open that the checkpoint "
                        "keeps, so that a restore can make it again (default 1M, as CRIU's); a larger one "
                        "makes the checkpoint unrestorable, by name")
    p.set_defaults(run=run, pre=False)

    p = sub.add_parser(
        "pre-dump", help="copy memory without freezing the target (not restorable alone)",
        description="Store the pages written since the last checkpoint while the target runs. "
                    "A pre-dump is never frozen, so it is not consistent and not restorable alone; "
                    "it makes the next 'ckpt dump' (and its frozen time) smaller.")
    _common(p)
    p.set_defaults(run=run, pre=True, kill=False, leave_stopped=False, every=None, count=None, no_track=False,
                   ghost_limit=None, keep=None, keep_within=None)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pid", "-t", type=int, required=True, help="the process to checkpoint")
    p.add_argument("-D", "--images-dir", required=True, metavar="DIR",
                   help="images directory (created 0700 if missing)")
    p.add_argument("--compress", type=_level, default=1, metavar="LEVEL",
                   help="zstd level for page data, -1 to 19; 0 = store uncompressed (default 1)")
    p.add_argument("--freeze-timeout", type=_duration, default=None, metavar="DURATION",
                   help="how long every thread gets to stop before the dump gives up and releases "
                        "the target (default 5s); a thread in uninterruptible sleep (a vfork parent, "
                        "a hung NFS or FUSE call) cannot stop")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not fsync the checkpoint: it is still atomic against a crash of ckpt (written, "
                        "then renamed), but a power loss or an operating-system crash may lose or corrupt the "
                        "newest checkpoints (a restore then refuses them by their checksums) -- CRIU's "
                        "guarantee, which never fsyncs its images")
    p.add_argument("--json", action="store_true", help="print a JSON summary of the checkpoint on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from ..dump import Dumper, check_options
    from ..errors import Interrupted, InterruptedAfterCommit, KillRefused, TargetExited, UsageError
    from ..files.ghost import DEFAULT_GHOST_LIMIT
    from ..live import DEFAULT_FREEZE_TIMEOUT

    if args.count is not None and args.every is None:
        raise UsageError("--count needs --every")
    after = "kill" if args.kill else "stop" if args.leave_stopped else "run"
    timeout = DEFAULT_FREEZE_TIMEOUT if args.freeze_timeout is None else args.freeze_timeout
    ghost_limit = DEFAULT_GHOST_LIMIT if args.ghost_limit is None else args.ghost_limit
    check_options(compression_level=args.compress, pre=args.pre, after=after, freeze_timeout=timeout,
                  ghost_limit=ghost_limit)
    progress = TerminalProgress(None if not args.quiet else False)
    taken: list[int] = []  # ids of the checkpoints this command took
    dumping = False
    try:
        with Dumper(args.pid, args.images_dir, compression_level=args.compress, progress=progress,
                    freeze_timeout=timeout, track=not args.no_track, ghost_limit=ghost_limit,
                    fsync=not args.no_fsync) as dumper:
            while True:
                last = args.every is not None and args.count is not None and len(taken) + 1 >= args.count
                dumping = True
                try:
                    report = dumper.dump(pre=args.pre, after=after if (args.every is None or last) else "run")
                except KillRefused as err:
                    progress.clear()
                    _report(err.report, args)  # the checkpoint was written: say what it holds, then fail
                    raise
                except TargetExited:
                    if taken and args.every is not None:
                        print(f"ckpt: target {args.pid} exited; {len(taken)} checkpoints taken", file=sys.stderr)
                        return 0
                    raise
                finally:
                    dumping = False
                    progress.clear()
                taken.append(report.checkpoint.id)
                try:
                    pruned = _prune(dumper.images, args, progress)
                except BaseException:
                    _report(report, args)   # the checkpoint was taken: say so, then why the prune failed
                    raise
                _report(report, args, pruned)
                if args.every is None or last:
                    return 0
                time.sleep(args.every)
    except InterruptedAfterCommit as err:
        # The checkpoint is complete: the dump did not fail (see docs: exit codes).
        _report(err.report, args)
        print(f"ckpt: {err}", file=sys.stderr)
        return 0
    except (KeyboardInterrupt, Interrupted) as err:
        if not taken:
            raise
        name = err.signal_name if isinstance(err, Interrupted) else "SIGINT"
        abandoned = "; the dump in progress was abandoned" if dumping else ""
        print(f"ckpt: stopped by {name}: {len(taken)} checkpoint{'s' if len(taken) > 1 else ''} taken, "
              f"the last is checkpoint {taken[-1]}{abandoned}", file=sys.stderr)
        return 0


def _prune(images, args: argparse.Namespace, progress: TerminalProgress):  # type: ignore[no-untyped-def]
    """--keep/--keep-within: prune after the checkpoint (ckpt/image/prune.py); the report or None."""
    if args.keep is None and args.keep_within is None:
        return None
    from ..image.prune import prune

    try:
        return prune(images, keep=args.keep, keep_within=args.keep_within, progress=progress)
    finally:
        progress.clear()


def _report(report, args: argparse.Namespace, pruned=None) -> None:  # type: ignore[no-untyped-def]
    if args.json:
        print_json(dict(report.to_dict(), **({"pruned": pruned.to_dict()} if pruned is not None else {})),
                   lines=args.every is not None)
        sys.stdout.flush()
        return
    if args.quiet:
        return
    cp = report.checkpoint
    sums = cp.summary()   # a tree's: every task's pages
    parent = f", parent {cp.parent}" if cp.parent is not None else ""
    others = len(cp.tree) - 1
    tree = f" and its {others} descendant{'s' if others > 1 else ''}" if others > 0 else ""
    print(f"checkpoint {cp.id} ({report.kind}{parent}) of pid {cp.pid}{tree} in {cp.image_dir.path}: "
          f"{sums['pages_present']} pages present, {sums['pages_stored']} stored "
          f"({human_bytes(sums['bytes_raw'])} -> {human_bytes(sums['bytes_compressed'])}), "
          f"frozen {report.frozen_seconds * 1e3:.1f} ms, total {report.wall_seconds * 1e3:.0f} ms")
    if report.restorable:
        print("  restorable: yes" + (f", with restore {' '.join(report.restorable_with)}"
                                     if report.restorable_with else ""))
    else:
        print("  restorable: no (" + "; ".join(report.unrestorable) + ")")
    for note in report.restore_notes:
        print(f"  on restore: {note}")
    for note in report.notes:
        print(f"  note: {note}")
    if pruned is not None and pruned.removed:
        print(f"  pruned: removed checkpoint{'s' if len(pruned.removed) > 1 else ''} "
              f"{', '.join(map(str, pruned.removed))}; kept {', '.join(map(str, pruned.kept))} "
              f"({human_bytes(pruned.bytes_after or 0)})")
    sys.stdout.flush()

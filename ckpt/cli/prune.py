"""``ckpt prune``: keep the newest restorable checkpoints, fold what they need, remove the rest."""

from __future__ import annotations

import argparse

from .common import TerminalProgress, human_bytes, parse_duration, print_json

_DAYS = {"d": 86400.0, "w": 7 * 86400.0}


def retention(text: str) -> float:
    """A --keep-within duration: '90s', '30m', '1h', '2d', '1w' (or what ``--every`` takes)."""
    try:
        if text[-1:] in _DAYS:
            value = float(text[:-1]) * _DAYS[text[-1]]
            if not 0 < value < 1e12:
                raise ValueError(text)
            return value
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30m, 1h, 2d, 1w)") from None


def keep_count(text: str) -> int:
    """A --keep count: a positive number."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of checkpoints")
    return int(text)


def add_retention(p: argparse.ArgumentParser, what: str) -> None:
    """The --keep and --keep-within options (``ckpt prune``'s, and ``ckpt dump``'s)."""
    p.add_argument("--keep", type=keep_count, metavar="N",
                   help=f"keep the N newest restorable checkpoints{what}")
    p.add_argument("--keep-within", type=retention, metavar="DURATION",
                   help="keep the restorable checkpoints taken within DURATION (30m, 1h, 2d, 1w) "
                        "of now; with --keep, a checkpoint either keeps is kept")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "prune", help="remove old checkpoints, folding what newer ones still need into them", allow_abbrev=False,
        description="Remove old checkpoints of DIR without re-dumping anything. The checkpoints "
                    "kept are the newest restorable ones (--keep N), those taken within a duration "
                    "(--keep-within), and always the newest (a running dump series continues it: the "
                    "next 'ckpt dump' stays incremental). A kept checkpoint whose parent goes gets "
                    "what it resolves from the removed ones folded into it (it becomes full when no "
                    "older checkpoint is kept), so every kept checkpoint restores exactly the memory it "
                    "did. Atomic: the images dir's writer lock is held, each folded checkpoint is "
                    "swapped in with renameat2(RENAME_EXCHANGE) and removed ones disappear by one "
                    "rename each, so ckpt killed at any instant leaves a valid chain (and perhaps a "
                    "staging directory, which the next dump or prune removes). Exit 8 while a dump "
                    "writes to DIR.")
    p.add_argument("images_dir", metavar="DIR", nargs="?", help="the images directory (or -D DIR)")
    p.add_argument("-D", "--images-dir", dest="images_dir_opt", metavar="DIR", help="the images directory")
    add_retention(p, "")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="say what would be kept, folded and removed; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..image.prune import check_retention, prune

    path = args.images_dir_opt or args.images_dir
    if args.images_dir_opt and args.images_dir and args.images_dir_opt != args.images_dir:
        raise UsageError(f"two images directories: {args.images_dir} and -D {args.images_dir_opt}")
    if path is None:
        raise UsageError("prune needs the images directory: ckpt prune -D DIR --keep N")
    check_retention(args.keep, args.keep_within)
    progress = TerminalProgress(None if not (args.quiet or args.json) else False)
    try:
        report = prune(path, keep=args.keep, keep_within=args.keep_within, dry_run=args.dry_run,
                       progress=progress)
    finally:
        progress.clear()
    if args.json:
        print_json(report.to_dict())
    elif not args.quiet:
        for line in describe(report):
            print(line)
    return 0


def describe(report) -> list[str]:  # type: ignore[no-untyped-def]
    """The text lines of a prune report (``ckpt prune``'s output, ``ckpt dump --keep``'s note)."""
    would = "would " if report.dry_run else ""
    ids = ", ".join(str(i) for i in report.removed) or "none"
    lines = [f"{report.images_dir}: {would}keep {_list(report.kept)}, {would}remove {ids}"]
    for fold in report.folds:
        after = f"parent {fold.parent_after}" if fold.parent_after is not None else "no parent"
        size = f", {human_bytes(fold.bytes_written)} written" if not report.dry_run else ""
        lines.append(f"  checkpoint {fold.id} {'would become' if would else 'is now'} {fold.kind_after} with "
                     f"{after} (was parent {fold.parent_before}): {_n(fold.pages, 'page')} and "
                     f"{_n(fold.zero_pages, 'zero page')} folded in from the checkpoints removed{size}")
    if report.bytes_after is not None:
        lines.append(f"  {human_bytes(report.bytes_before)} -> {human_bytes(report.bytes_after)} "
                     f"in {report.seconds:.1f} s")
    else:
        lines.append(f"  checkpoints take {human_bytes(report.bytes_before)} now")
    lines += [f"  note: {note}" for note in report.notes]
    return lines


def _list(ids: list[int]) -> str:
    return f"{len(ids)} checkpoint{'s' if len(ids) != 1 else ''} ({', '.join(str(i) for i in ids)})" \
        if ids else "nothing"


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"

"""``ckpt verify``: every checksum, every page resolvable."""

from __future__ import annotations

import argparse

from .common import TerminalProgress, add_images_dir, images_dir, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="check every checksum and that every page resolves",
                       description="Verify all checkpoints of DIR: metadata and frame checksums, "
                                   "the chain, and that every present page resolves. Exit 0 when "
                                   "all is well, 7 with a one-line error naming the checkpoint otherwise. "
                                   "Checkpoints that are intact but could not be restored are "
                                   "listed with the reasons (exit 0: the images are sound); what "
                                   "interrupted dumps left in DIR is mentioned (the next dump removes it).")
    add_images_dir(p)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--json", action="store_true",
                   help='print {"ok": true, "checkpoints": [...], "staging": [...]} as JSON')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..image import ImageDir
    from ..restorability import assess_checkpoint
    from .inspect import staging_lines, staging_rows

    path = images_dir(args)
    images = ImageDir(path)
    progress = TerminalProgress(None if not args.quiet else False)
    try:
        reports = images.verify(progress)
    finally:
        progress.clear()
    staging = staging_rows(images)
    checkpoints = images.checkpoints
    verdicts = {cp.id: assess_checkpoint(cp) for cp in checkpoints}
    # Intact is not the same as restorable: say which checkpoints restore would refuse.
    refused = [cp.id for cp in checkpoints if cp.kind != "pre" and not verdicts[cp.id].restorable]
    if args.json:
        print_json({"images_dir": str(images.path), "ok": True,
                    "checkpoints": [dict(cp.summary(), report=line, **verdicts[cp.id].to_dict())
                                    for cp, line in zip(checkpoints, reports)],
                    "staging": staging})
        return 0
    if not args.quiet:
        for line in reports:
            print(line)
        for cp_id in refused:
            print(f"checkpoint {cp_id}: intact but not restorable: " + "; ".join(verdicts[cp_id].reasons))
        for line in staging_lines(staging):
            print(line)
        print(f"{path}: OK" if not refused else
              f"{path}: OK (intact), but not restorable: checkpoint "
              + ", ".join(str(i) for i in refused))
    return 0

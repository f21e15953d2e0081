"""``ckpt verify``: every checksum, every page resolvable."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="check every checksum and that every page resolves",
                       description="Verify all checkpoints of DIR: metadata and frame checksums, "
                                   "the chain, and that every present page resolves. Exit 0 when "
                                   "all is well, 7 with a one-line error naming the checkpoint otherwise. "
                                   "Checkpoints that are intact but could not be restored are "
                                   "listed with the reasons (exit 0: the images are sound).")
    p.add_argument("images_dir", metavar="DIR")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..image import ImageDir
    from ..restorability import assess

    images = ImageDir(args.images_dir)
    reports = images.verify()
    if not args.quiet:
        for line in reports:
            print(line)
        # Intact is not the same as restorable: say which checkpoints restore would refuse.
        refused = []
        for cp in images.checkpoints:
            verdict = assess(cp.state, cp.vmas, kind=cp.kind)
            if not verdict.restorable and cp.kind != "pre":
                refused.append(str(cp.id))
                print(f"checkpoint {cp.id}: intact but not restorable: " + "; ".join(verdict.reasons))
        print(f"{args.images_dir}: OK" if not refused else
              f"{args.images_dir}: OK (intact), but not restorable: checkpoint {', '.join(refused)}")
    return 0

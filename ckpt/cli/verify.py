"""``ckpt verify``: every checksum, every page resolvable."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="check every checksum and that every page resolves",
                       description="Verify all checkpoints of DIR: metadata and frame checksums, "
                                   "the chain, and that every present page resolves. Exit 0 when "
                                   "all is well, 7 with a one-line error naming the checkpoint otherwise.")
    p.add_argument("images_dir", metavar="DIR")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..image import ImageDir

    reports = ImageDir(args.images_dir).verify()
    if not args.quiet:
        for line in reports:
            print(line)
        print(f"{args.images_dir}: OK")
    return 0

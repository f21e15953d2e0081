"""``ckpt inspect``: the checkpoints of an images directory, one row each."""

from __future__ import annotations

import argparse
import time

from .common import human_bytes, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="list the checkpoints of an images directory",
                       description="Show the chain of checkpoints in DIR, oldest first, and why any "
                                   "of them could not be restored.")
    p.add_argument("images_dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help='print {"checkpoints": [...]} as JSON')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..image import ImageDir
    from ..restorability import assess

    images = ImageDir(args.images_dir)
    rows = [cp.summary() | assess(cp.state, cp.vmas, kind=cp.kind).to_dict() for cp in images.checkpoints]
    if args.json:
        print_json({"images_dir": str(images.path), "checkpoints": rows})
        return 0
    if not rows:
        print(f"{images.path}: no checkpoints")
        return 0
    header = ("ID", "PARENT", "KIND", "TIME", "PID", "PRESENT", "STORED", "RAW", "COMPRESSED", "VMAS")
    table = [header]
    for r in rows:
        table.append((str(r["id"]), "-" if r["parent"] is None else str(r["parent"]), r["kind"],
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])), str(r["pid"]),
                      str(r["pages_present"]), str(r["pages_stored"]), human_bytes(r["bytes_raw"]),
                      human_bytes(r["bytes_compressed"]), str(r["vmas"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i not in (2, 3) else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    for r in rows:
        if not r["restorable"] and r["kind"] != "pre":
            print(f"checkpoint {r['id']} is not restorable: " + "; ".join(r["unrestorable"]))
    return 0

"""``ckpt inspect``: the checkpoints of an images directory, one row each."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import human_bytes, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="list the checkpoints of an images directory",
                       description="Show the chain of checkpoints in DIR, oldest first, why any of "
                                   "them could not be restored, and what interrupted dumps left there "
                                   "(removed by the next dump).")
    p.add_argument("images_dir", metavar="DIR")
    p.add_argument("--json", action="store_true",
                   help='print {"checkpoints": [...], "staging": [...]} as JSON')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..image import ImageDir
    from ..restorability import assess

    images = ImageDir(args.images_dir)
    rows = [cp.summary() | assess(cp.state, cp.vmas, kind=cp.kind).to_dict() for cp in images.checkpoints]
    staging = staging_rows(images)
    if args.json:
        print_json({"images_dir": str(images.path), "checkpoints": rows, "staging": staging})
        return 0
    if not rows:
        print(f"{images.path}: no checkpoints")
    else:
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
    for line in staging_lines(staging):
        print(line)
    for r in rows:
        if not r["restorable"] and r["kind"] != "pre":
            print(f"checkpoint {r['id']} is not restorable: " + "; ".join(r["unrestorable"]))
    return 0


def staging_rows(images: Any) -> list[dict[str, Any]]:
    """The staging directories of ``images`` as JSON rows (name, bytes, writer_pid, note)."""
    rows = []
    for s in images.staging():
        if s.writer_pid is not None:
            note = f"a checkpoint being written by ckpt pid {s.writer_pid}"
        else:
            note = "left by an interrupted dump; the next dump removes it"
        rows.append({"name": s.name, "bytes": s.size, "writer_pid": s.writer_pid, "note": note})
    return rows


def staging_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One ``note:`` line per staging directory."""
    return [f"note: {r['name']} ({human_bytes(r['bytes'])}): {r['note']}" for r in rows]

"""``ckpt inspect``: the checkpoints of an images directory, one row each; with
``--fds``, the fd table of one checkpoint as a restore sees it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import add_images_dir, human_bytes, images_dir, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="list the checkpoints of an images directory",
                       description="Show the chain of checkpoints in DIR, oldest first, why any of "
                                   "them could not be restored, and what interrupted dumps left there "
                                   "(removed by the next dump).")
    add_images_dir(p)
    p.add_argument("--json", action="store_true",
                   help='print {"checkpoints": [...], "staging": [...]} as JSON '
                        '(with --fds: {"checkpoint": ID, "fds": [...]})')
    p.add_argument("--fds", action="store_true",
                   help="show the fd table of a checkpoint as restore sees it: each fd, the open file it "
                        "refers to (fds that share one share its offset and flags), its kind, flags, offset, "
                        "close-on-exec, and whether restore brings it back or why not")
    p.add_argument("--checkpoint", type=int, metavar="ID",
                   help="with --fds: this checkpoint (default: the one restore picks, the newest that is "
                        "not a pre-dump)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..image import ImageDir
    from ..restorability import assess_checkpoint

    images = ImageDir(images_dir(args))
    if args.fds:
        return run_fds(images, args.checkpoint, args.json)
    if args.checkpoint is not None:
        raise UsageError("--checkpoint goes with --fds")
    rows = [cp.summary() | assess_checkpoint(cp).to_dict() | {"tree": tree_rows(cp)} for cp in images.checkpoints]
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
    for r in rows:
        if r["tree"]:
            print(f"checkpoint {r['id']}: a tree of {len(r['tree'])} processes: "
                  + ", ".join(f"{t['pid']} ({t['comm']}{'' if t['state'] == 'alive' else ', ' + t['state']})"
                              + (f" child of {t['ppid']}" if i else "") for i, t in enumerate(r["tree"])))
    for line in staging_lines(staging):
        print(line)
    for r in rows:
        if not r["restorable"] and r["kind"] != "pre":
            print(f"checkpoint {r['id']} is not restorable: " + "; ".join(r["unrestorable"]))
    return 0


def tree_rows(cp: Any) -> list[dict[str, Any]]:
    """The tasks of a tree checkpoint as JSON rows ([] for one process)."""
    return [{"pid": t.pid, "ppid": t.ppid, "pgid": t.pgid, "sid": t.sid, "state": t.state, "comm": t.comm,
             "exit_status": t.exit_status, "stop_signal": t.stop_signal} for t in cp.tree]


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


def run_fds(images: Any, checkpoint: int | None, as_json: bool) -> int:
    """``inspect --fds``: one row per fd (:func:`ckpt.files.rows`)."""
    from .. import files
    from ..restore import pick_checkpoint

    cp = pick_checkpoint(images, checkpoint)
    rows = files.rows(files.table(cp.state))
    if as_json:
        print_json({"images_dir": str(images.path), "checkpoint": cp.id, "pid": cp.pid, "fds": rows})
        return 0
    print(f"checkpoint {cp.id} (pid {cp.pid}): {len(rows)} fds, "
          f"{len({r['file'] for r in rows})} open files")
    header = ("FD", "FILE", "KIND", "FLAGS", "OFFSET", "CLOEXEC", "WHAT", "RESTORE")
    table = [header] + [(str(r["fd"]), str(r["file"]), r["kind"], r["flags_text"], str(r["offset"]),
                         "yes" if r["cloexec"] else "no", r["what"],
                         r["restore"] if r["restorable"] else "refused: " + "; ".join(r["reasons"]))
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.rjust(w) if i in (0, 1, 4) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]).rstrip())
    return 0

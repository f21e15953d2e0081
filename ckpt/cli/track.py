"""``ckpt track``: list and stop the processes whose writes ckpt keeps tracking."""

from __future__ import annotations

import argparse

from .common import print_json

STATES = {
    "consistent": "tracking",
    "dumping": "dump running",
    "incomplete": "incomplete",
    "orphan": "orphan",
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("track", help="list or stop the tracking ckpt keeps between dumps",
                       description="After a dump (and after a restore: the restored process "
                                   "continues its checkpoint's chain), a small holder process keeps the "
                                   "target's userfaultfd so that the next dump is incremental. A process "
                                   "is tracked for one images directory (IMAGES) at a time. It ends "
                                   "with the target. 'stop' ends it now (the kernel then disarms "
                                   "write-protection; the next dump will be full). States: "
                                   "'tracking' (consistent with CHECKPOINT), 'dump running', "
                                   "'incomplete' (the last dump did not finish: the next one is "
                                   "full), 'orphan' (a holder whose record was lost: the next dump "
                                   "adopts it).")
    tsub = p.add_subparsers(dest="track_command", metavar="ACTION", required=True)
    lp = tsub.add_parser("list", help="tracked processes")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(run=run_list)
    sp = tsub.add_parser("stop", help="stop tracking processes")
    sp.add_argument("pids", type=int, nargs="*", metavar="PID")
    sp.add_argument("--all", action="store_true", help="stop tracking every process")
    sp.set_defaults(run=run_stop)


def run_list(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict

    from .. import tracking

    tracked = tracking.list_tracked()
    if args.json:
        print_json({"tracked": [dict(asdict(t.record), state=t.state) for t in tracked]})
        return 0
    if not tracked:
        print("no process is tracked")
        return 0
    print(f"{'PID':>8}  {'HOLDER':>8}  {'STATE':12}  {'CHECKPOINT':>10}  {'SINCE':19}  IMAGES")
    for t in tracked:
        r = t.record
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.since))
        cp = "-" if r.checkpoint_id is None else str(r.checkpoint_id)
        print(f"{r.target_pid:>8}  {r.holder_pid:>8}  {STATES[t.state]:12}  {cp:>10}  {since}  "
              f"{r.images_dir or '-'}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from .. import tracking
    from ..errors import CkptError

    pids = sorted({t.record.target_pid for t in tracking.list_tracked()}) if args.all else args.pids
    if not pids:
        raise CkptError("nothing to stop: give PIDs or --all")
    missing = [pid for pid in pids if not tracking.stop(pid)]
    if missing:
        raise CkptError(f"not tracked: {', '.join(map(str, missing))}")
    return 0

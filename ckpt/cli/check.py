"""``ckpt check``: which kernel features ckpt needs and whether this kernel has them."""

from __future__ import annotations

import argparse

from .common import print_json

#: ``criu check --feature`` names whose check ckpt makes too, and ckpt's features for them.
CRIU_FEATURES = {
    "uffd": ("userfaultfd",),
    # CRIU's is soft-dirty; ckpt tracks written pages with uffd-wp and PAGEMAP_SCAN instead.
    "mem_dirty_track": ("UFFD_FEATURE_WP_ASYNC", "PAGEMAP_SCAN"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="probe the kernel features ckpt needs",
                       description="Probe each kernel feature ckpt uses. Exit 0 when every "
                                   "required one is there, 5 otherwise. With --feature, only the "
                                   "features named: exit 0 when each is there, 5 otherwise.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--feature", action="append", metavar="NAME",
                   help="check only this feature (repeatable; 'list' lists the names): a name 'ckpt check' "
                        "prints, or CRIU's name where ckpt makes the same check: "
                        + ", ".join(f"{criu} = {' + '.join(ours)}" for criu, ours in CRIU_FEATURES.items()))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os
    from dataclasses import asdict

    from ..features import probe_all

    from ..errors import UsageError

    features = probe_all()
    ok = all(f.available for f in features if f.required)
    if args.feature:
        names = {f.name.lower(): f.name for f in features}
        if "list" in args.feature:
            print("\n".join([f.name for f in features] + [f"{criu} (CRIU's name)" for criu in CRIU_FEATURES]))
            return 0
        wanted: list[str] = []
        for name in args.feature:
            if name in CRIU_FEATURES:
                wanted.extend(CRIU_FEATURES[name])
            elif name.lower() in names:
                wanted.append(names[name.lower()])
            else:
                raise UsageError(f"--feature {name}: no such feature ('ckpt check --feature list' names them)")
        features = [f for f in features if f.name in wanted]
        ok = all(f.available for f in features)
    if args.json:
        print_json({"kernel": os.uname().release, "ok": ok, "features": [asdict(f) for f in features]})
    else:
        print(f"kernel {os.uname().release}")
        for f in features:
            mark = "ok  " if f.available else ("MISSING" if f.required else "no  ")
            need = "required" if f.required else "optional"
            print(f"  {mark:7} {f.name:32} {need:8}  {f.detail}")
        if args.feature:
            print("supported" if ok else "not supported: " + ", ".join(f.name for f in features if not f.available))
        else:
            print("ckpt can run here" if ok else "ckpt cannot run here: a required feature is missing")
    return 0 if ok else 5

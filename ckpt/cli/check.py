"""``ckpt check``: which kernel features ckpt needs and whether this kernel has them."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict

from .common import print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="probe the kernel features ckpt needs",
                       description="Probe each kernel feature ckpt uses. Exit 0 when every "
                                   "required one is there, 5 otherwise.")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..features import probe_all

    features = probe_all()
    ok = all(f.available for f in features if f.required)
    if args.json:
        print_json({"kernel": os.uname().release, "ok": ok, "features": [asdict(f) for f in features]})
    else:
        print(f"kernel {os.uname().release}")
        for f in features:
            mark = "ok  " if f.available else ("MISSING" if f.required else "no  ")
            need = "required" if f.required else "optional"
            print(f"  {mark:7} {f.name:32} {need:8}  {f.detail}")
        print("ckpt can run here" if ok else "ckpt cannot run here: a required feature is missing")
    return 0 if ok else 5

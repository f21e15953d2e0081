"""postgres under a write load, checkpointed again and again (issue 9's "Done when").

    python3 tools/bench_postgres.py [--scale 10] [--clients 4] [--rate 400] [--rounds 5]
                                    [--interval 2] [--no-criu] [--json]

Starts postgres from Debian as a user would (tools/compare_programs.py ``start_postgres``:
initdb, a postmaster with its checkpointer, walwriter, autovacuum launcher... and
``shared_buffers`` of 128 MB in one shared anonymous mapping every backend maps), loads
``pgbench -i -s SCALE``, then runs ``pgbench -c CLIENTS -R RATE`` (TPC-B-like
transactions: updates, inserts, all over the unix socket) for the whole run.  Under that
load ckpt dumps the postmaster's tree once (full, tracked) and then every ``--interval``
seconds (incremental), ``--rounds`` times; CRIU 4.2 dumps the same tree the same number of
times (``criu dump -t PID --leave-running --ext-unix-sk``: full every time, its target
frozen for the whole dump, so its figure is the command's wall time).

Figures, ``median [min-max]`` over the rounds: frozen ms (ckpt's own figure) and bytes
stored (ckpt: zstd as written, also as a share of the full; CRIU: its image directory),
and the transactions pgbench completed.  Needs root, postgres and pgbench.  Imports ckpt
from this checkout, never from the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))

import ckpt  # noqa: E402
from benchlib import spread  # noqa: E402
from compare_programs import (Instance, kill_tree, postgres_ipc, psql,  # noqa: E402
                              remove_postgres_ipc, start_postgres)

CRIU = "/work/shared/criu/criu"


def pg_bin(name: str) -> str:
    return str(next(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")))


def pgbench(inst: Instance, *args: str, **popen: object) -> subprocess.Popen[str]:
    """pgbench as postgres over the unix socket of ``inst`` (no TCP connection to lock)."""
    sock = inst.dir / "pg" / "sock"
    return subprocess.Popen([pg_bin("pgbench"), "-h", str(sock), "-p", str(inst.port), "-U", "postgres",
                             *args, "postgres"], text=True, **popen)   # type: ignore[call-overload]


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s (10: 1,000,000 accounts, ~160 MB)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rate", type=int, default=400, help="transactions per second pgbench aims at")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds of load between two dumps")
    ap.add_argument("--no-criu", action="store_true", help="ckpt only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    use_criu = not a.no_criu and os.path.exists(CRIU)
    criu_error = ""
    out: dict[str, list[float]] = {k: [] for k in ("ckpt_inc_frozen_ms", "ckpt_inc_bytes", "criu_frozen_ms",
                                                  "criu_bytes")}
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        inst = Instance(dir=Path(tmp))
        load = None
        try:
            start_postgres(inst)
            subprocess.run([pg_bin("pgbench"), "-h", str(inst.dir / "pg" / "sock"), "-p", str(inst.port),
                            "-U", "postgres", "-i", "-q", "-s", str(a.scale), "postgres"],
                           check=True, capture_output=True, timeout=600)
            seconds = int(a.rounds * (a.interval + 3) + 60)
            load = pgbench(inst, "-c", str(a.clients), "-j", "1", "-R", str(a.rate), "-T", str(seconds),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            loaded = time.monotonic()
            time.sleep(a.interval)
            images = Path(tmp) / "ckpt"
            full = ckpt.dump(inst.pid, images)
            full_bytes = full.checkpoint.summary()["bytes_compressed"]
            processes = full.checkpoint.summary()["processes"]
            for rnd in range(a.rounds):
                time.sleep(a.interval)
                inc = ckpt.dump(inst.pid, images)
                out["ckpt_inc_frozen_ms"].append(inc.frozen_seconds * 1e3)
                out["ckpt_inc_bytes"].append(inc.checkpoint.summary()["bytes_compressed"])
                if use_criu:
                    criu_dir = Path(tmp) / f"criu-{rnd}"
                    criu_dir.mkdir()
                    t0 = time.monotonic()
                    run = subprocess.run([CRIU, "dump", "-t", str(inst.pid), "-D", str(criu_dir), "--leave-running",
                                          "--ext-unix-sk", "--tcp-established", "-o", "dump.log"],
                                         capture_output=True, timeout=300)
                    if run.returncode:
                        # Here CRIU cannot dump a process of another user: prlimit(2) of the
                        # postgres-owned postmaster needs CAP_SYS_RESOURCE, which this VM's
                        # root lacks ("Can't get rlimit 0").  Say so and go on without it.
                        log = (criu_dir / "dump.log").read_text(errors="replace").splitlines()
                        criu_error = next((line for line in log if line.startswith("Error")), f"exit {run.returncode}")
                        use_criu = False
                        continue
                    out["criu_frozen_ms"].append((time.monotonic() - t0) * 1e3)
                    out["criu_bytes"].append(tree_size(criu_dir))
                    shutil.rmtree(criu_dir)
            rows = int(psql(inst, "select count(*) from pgbench_history"))
            tps = rows / (time.monotonic() - loaded)
        finally:
            if load is not None and load.poll() is None:
                load.kill()
                load.wait()
            kill_tree(inst.pid)
            remove_postgres_ipc(inst.memo.get("ipc_before", postgres_ipc()))
    result = {"processes": processes, "scale": a.scale, "clients": a.clients, "rate": a.rate,
              "ckpt_full_frozen_ms": full.frozen_seconds * 1e3, "ckpt_full_bytes": full_bytes,
              "tps": tps, "history_rows": rows, "criu_error": criu_error, **out}
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    mib = 1 << 20
    share = [100 * b / full_bytes for b in out["ckpt_inc_bytes"]]
    print(f"postgres, {processes} processes, pgbench -s {a.scale} -c {a.clients} -R {a.rate}: "
          f"{tps:.0f} transactions/s during the dumps")
    print(f"ckpt full         frozen {full.frozen_seconds * 1e3:8.2f} ms  stored {full_bytes / mib:8.2f} MiB")
    print(f"ckpt incremental  frozen {spread(out['ckpt_inc_frozen_ms'])} ms  "
          f"stored {spread([b / mib for b in out['ckpt_inc_bytes']])} MiB = {spread(share)} % of the full")
    if criu_error:
        print(f"criu dump         failed: {criu_error}")
    elif use_criu:
        print(f"criu dump (full)  frozen {spread(out['criu_frozen_ms'])} ms  "
              f"stored {spread([b / mib for b in out['criu_bytes']])} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Measure ckpt against CRIU on CRIU's own zdtm static suite (host flavour).

A developer tool, not part of ckpt: stdlib only, run as root.

For every static test that CRIU's test/zdtm.py would run in the host flavour
(the same selection: executable files under static/, minus zdtm.desc's
exclusions, minus tests whose .desc has ``noauto``, another ``arch``, no ``h``
in ``flavor``, a ``feature`` that ``criu check --feature`` denies, or a
``.checkskip`` script that fails), and for each tool:

1. start the test as zdtm.py does: ``make -C static NAME.pid`` with the
   ZDTM_UID/GID/GROUPS environment (not for ``suid`` tests); the test
   daemonizes, writes its pidfile and waits for SIGTERM;
2. dump it: ``ckpt dump --pid PID -D DIR --kill`` or
   ``criu dump -t PID -D DIR --shell-job`` (plus the .desc ``opts``/``dopts``);
3. restore it: ``ckpt restore -D DIR --detach --same-pid`` with the test's
   outfile as fds 1 and 2 (ckpt replaces fds 0-2; the test had its outfile
   there), or ``criu restore -D DIR --shell-job -d``;
4. send SIGTERM to the restored process, wait for it to exit and read the
   last line of its outfile: ``PASS`` or not (zdtm.py's check).

Each run is classified:

- ``pass``            restored and the test's own check passed;
- ``refused_dump``    the dump failed (``reason``: its error line);
- ``refused_restore`` the restore failed (``reason``: its error line);
- ``failed``          restored, but the test FAILED its check: a silently
                      wrong restore, the worst outcome;
- ``crash``           a traceback or signal in the tool, or the restored
                      process died before it was asked to check;
- ``hang``            a step outlived its timeout;
- ``error``           the test could not be started (not the tool's fault).

Every run cleans up: processes of the test's session are killed, the images
directory and the test's files are removed, and what a killed test left
mounted (cgroup hierarchies) is detached. The tool is the child subreaper of
the tests, so that it reaps them (a zombie keeps the pid --same-pid needs).

``--compare-state`` also records what /proc shows of the test before the dump
and after the restore, and keeps the difference (``state_diff``): state a
restore changed that the test does not check.

Example::

    PYTHONPATH=/path/to/ckpt python3 tools/zdtm_compare.py /tmp/criu/test/zdtm \\
        --criu /work/shared/criu/criu --json results.json
"""
from __future__ import annotations

import argparse
import ast
import ctypes
import fnmatch
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# test/zdtm.desc of CRIU v4.2: files under zdtm/ that are not tests.
ZDTM_DESC_EXCLUDE = {"static/route_rules", "static/criu-rtc.so"}
# zdtm.py's defaults (test/zdtm.py, zdtm_test.start): the identity a
# non-suid test drops to, "numbers should match those in criu".
ZDTM_IDS = {"ZDTM_UID": "18943", "ZDTM_GID": "58467", "ZDTM_GROUPS": "27495 48244"}
# CRIU options of a .desc that have a ckpt restore equivalent.
CKPT_RESTORE_EQUIV = {"--tcp-established": "--tcp-established",
                      "--ext-unix-sk": "--ext-unix-sk"}


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def read_desc(static: Path, name: str) -> dict[str, Any]:
    """The test's .desc (a Python dict literal), or {} when it has none."""
    p = static / (name + ".desc")
    if not p.exists() or p.stat().st_size == 0:
        return {}
    text = p.read_text()
    try:
        return ast.literal_eval(text)
    except ValueError:
        # A few descs are expressions on the environment (mnt_ext_dev.desc:
        # os.getenv(...) and {...} or {'flags': 'noauto'}); zdtm.py eval()s them.
        return eval(text, {"__builtins__": {}, "os": os})  # noqa: S307 (CRIU's own file)


def flags(desc: dict[str, Any]) -> list[str]:
    return str(desc.get("flags", "")).split()


def select_tests(zdtm: Path, criu: str | None) -> tuple[list[str], dict[str, str]]:
    """zdtm.py's host-flavour list of static tests: (to run, {skipped: why})."""
    static = zdtm / "static"
    names = []
    for f in sorted(os.listdir(static)):
        st = os.lstat(static / f)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
            continue
        if f.endswith((".checkskip", ".hook")) or "static/" + f in ZDTM_DESC_EXCLUDE:
            continue
        names.append(f)
    arch = platform.machine()
    features: dict[str, bool] = {}
    run, skipped = [], {}
    for n in names:
        d = read_desc(static, n)
        if d.get("arch", arch) != arch:
            skipped[n] = "arch %s" % d["arch"]
            continue
        if "noauto" in flags(d):
            skipped[n] = "noauto (manual run only)"
            continue
        if "h" not in str(d.get("flavor", "h ns uns")).split():
            skipped[n] = "no host flavour (flavor: %s)" % d.get("flavor")
            continue
        missing = None
        for feat in str(d.get("feature", "")).split():
            if feat not in features:
                features[feat] = bool(criu) and subprocess.run(
                    [criu, "check", "--feature", feat], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, timeout=60).returncode == 0
            if not features[feat]:
                missing = feat
                break
        if missing:
            skipped[n] = "no %s feature (criu check)" % missing
            continue
        chk = static / (n + ".checkskip")
        if os.access(chk, os.X_OK):
            # zdtm.py runs it from test/ as zdtm/static/NAME.checkskip
            r = subprocess.run([str(chk)], cwd=zdtm.parent, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60)
            if r.returncode:
                skipped[n] = "checkskip failed"
                continue
        run.append(n)
    return run, skipped


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or re.fullmatch(p, name) for p in patterns)


# ---------------------------------------------------------------- processes

def proc_state(pid: int) -> str | None:
    """The /proc state letter of pid, None once it is gone."""
    try:
        data = Path("/proc/%d/stat" % pid).read_bytes()  # comm may be any bytes
    except OSError:
        return None
    return chr(data[data.rindex(b")") + 2])


def reap_all() -> None:
    """Reap every zombie child (we are the subreaper of the tests). Called
    only between commands, when no subprocess of ours is running."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def alive(pid: int) -> bool:
    reap_all()
    return proc_state(pid) not in (None, "Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def session_members(sid: int) -> list[int]:
    """Every live process whose session id is sid (a zdtm test calls setsid)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path("/proc/%s/stat" % d).read_bytes()  # comm may be any bytes
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].decode().split()
        if int(fields[3]) == sid and fields[0] not in "ZX":
            out.append(int(d))
    return out


def kill_test(pids: list[int]) -> None:
    """SIGKILL pids and every process of their sessions, and wait for them."""
    victims = set()
    for p in pids:
        if p > 1:
            victims.add(p)
            victims.update(session_members(p))
    victims.discard(os.getpid())
    for v in victims:
        try:
            os.kill(v, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for v in victims:
        wait_gone(v, 10)


def instances(binary: Path) -> list[int]:
    """Pids running binary (a test whose start timed out is not in our pidfile)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink("/proc/%s/exe" % d) == str(binary):
                    out.append(int(d))
            except OSError:
                pass
    return out


_STATUS_KEYS = ("Umask", "SigBlk", "SigIgn", "SigCgt", "ShdPnd", "SigPnd", "CapInh", "CapPrm",
                "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters", "Uid",
                "Gid", "Groups", "Cpus_allowed_list", "Speculation_Store_Bypass", "THP_enabled",
                "untag_mask", "x86_Thread_features", "VmLck", "Threads")
_NS = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children",
       "user", "uts")


def visible_state(pid: int) -> dict[str, Any]:
    """What /proc shows of pid, for a before/after comparison that finds what a
    restore changed and the test does not check (zdtm.py compares fds, maps and
    mounts, in its ns flavour only). Inode numbers of pipes, sockets and anon
    files are left out (a restore makes new ones); maps are merged as zdtm.py
    merges them (adjacent entries with the same protection)."""
    base = "/proc/%d/" % pid
    st: dict[str, Any] = {}

    def read(name: str) -> str:
        try:
            return Path(base + name).read_bytes().decode(errors="replace")
        except OSError as e:
            return "<%s>" % e.strerror

    stat_b = Path(base + "stat").read_bytes()
    f = stat_b[stat_b.rindex(b")") + 2:].decode().split()
    st["comm"] = read("comm").strip()
    st["session leader"] = int(f[3]) == pid
    st["process group leader"] = int(f[2]) == pid
    st["tty_nr"] = f[4]
    st["nice"], st["num_threads"] = f[16], f[17]
    st["rt_priority, policy"] = f[37:39]
    for ln in read("status").splitlines():
        k, _, v = ln.partition(":")
        if k in _STATUS_KEYS:
            st["status " + k] = " ".join(v.split())
    for ns in _NS:
        try:
            st["ns " + ns] = os.readlink(base + "ns/" + ns)
        except OSError as e:
            st["ns " + ns] = "<%s>" % e.strerror
    for link in ("cwd", "root", "exe"):
        try:
            st[link] = os.readlink(base + link)
        except OSError as e:
            st[link] = "<%s>" % e.strerror
    for name in ("limits", "cgroup", "oom_score_adj", "personality", "timerslack_ns",
                 "loginuid", "sessionid", "environ", "cmdline"):
        st[name] = read(name)
    fds = {}
    try:
        for fd in sorted(os.listdir(base + "fd"), key=int):
            try:
                target = os.readlink(base + "fd/" + fd)
                info = read("fdinfo/" + fd).splitlines()
            except OSError:
                continue
            target = re.sub(r"^(pipe|socket|anon_inode:\[?[a-z_]+\]?):?\[?\d*\]?$", r"\1", target)
            flags = next((x.split()[1] for x in info if x.startswith("flags:")), "")
            fds[fd] = "%s flags=%s" % (target, flags)
    except OSError:
        pass
    st["fds"] = fds
    maps: list[list[Any]] = []
    for ln in read("maps").splitlines():
        parts = ln.split(None, 5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5].strip() if len(parts) > 5 else ""
        if maps and maps[-1][1] == lo and maps[-1][2] == parts[1] and maps[-1][3] == path:
            maps[-1][1] = hi
        else:
            maps.append([lo, hi, parts[1], path])
    st["maps"] = ["%x-%x %s %s" % tuple(m) for m in maps]
    return st


def state_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """{key: [before, after]} of what differs (fds and maps: lost/appeared)."""
    out: dict[str, Any] = {}
    for k in old:
        a, b = old[k], new.get(k)
        if a == b:
            continue
        if k == "fds":
            out[k] = {fd: [a.get(fd), b.get(fd)] for fd in sorted(set(a) | set(b), key=int)
                      if a.get(fd) != b.get(fd)}
        elif k == "maps":
            out[k] = {"lost": sorted(set(a) - set(b)), "appeared": sorted(set(b) - set(a))}
        else:
            out[k] = [a, b]
    return out


def run_cmd(argv: list[str], timeout: float, **kw: Any) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr) of argv."""
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True, errors="replace", **kw)
    except subprocess.TimeoutExpired as e:
        def s(x: Any) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        return None, s(e.stdout), s(e.stderr)
    return r.returncode, r.stdout, r.stderr


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def criu_error(logfile: Path, fallback: str) -> str:
    """The first 'Error' line of a CRIU log (its cause), else the fallback."""
    try:
        for ln in logfile.read_text(errors="replace").splitlines():
            if "Error" in ln and "RLIMIT_NOFILE for self" not in ln:
                return re.sub(r"^\(\s*[\d.]+\)\s*", "", ln.strip())
    except OSError:
        pass
    return fallback


def failure(tool: str, step: str, rc: int, err: str, images: Path) -> dict[str, Any]:
    """How a failed dump or restore (``step``) is classified: ``refused_<step>`` with
    the tool's reason line (ckpt: its one-line error; CRIU: the first Error line of its
    log), or ``crash`` for a traceback or a death by signal."""
    if tool == "ckpt":
        crashed = "Traceback" in err or rc < 0
        out: dict[str, Any] = {"status": "crash" if crashed else "refused_" + step,
                               "reason": last_line(err) or "exit %d" % rc, "exit": rc}
        if crashed:
            out["detail"] = err[-3000:]
        return out
    return {"status": "crash" if rc < 0 else "refused_" + step, "exit": rc,
            "reason": criu_error(images / (step + ".log"), last_line(err) or "exit %d" % rc)}


# ---------------------------------------------------------------- one run

class Runner:
    """Runs one test under one tool; see the module docstring."""

    def __init__(self, zdtm: Path, ckpt: list[str], criu: str, timeout: float,
                 workdir: Path, as_root: bool, same_pid: bool = True,
                 compare_state: bool = False) -> None:
        self.compare_state = compare_state
        self.as_root = as_root
        self.same_pid = same_pid
        self.zdtm = zdtm
        self.static = zdtm / "static"
        self.ckpt = ckpt
        self.criu = criu
        self.timeout = timeout
        self.workdir = workdir

    def make(self, target: str, env: dict[str, str] | None, timeout: float) -> tuple[int | None, str]:
        rc, out, err = run_cmd(["make", "--no-print-directory", "-C", str(self.static), target],
                               timeout, env=env)
        return rc, (out + err)[-2000:]

    def umount_leftovers(self, name: str) -> None:
        """Detach what a killed test left mounted under static/NAME.test*
        (cgroup tests mount hierarchies there and unmount them only when
        they finish their check), so that its next run can start."""
        prefix = str(self.static / (name + ".test"))
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for ln in f:
                fields = ln.split()
                mp = fields[4].replace("\\040", " ")
                fstype = fields[fields.index("-") + 1]
                if mp == prefix or mp.startswith(prefix + "/") or mp.startswith(prefix + "."):
                    mounts.append((mp, fstype))
        for mp, fstype in sorted(mounts, key=lambda m: len(m[0]), reverse=True):
            if fstype in ("cgroup", "cgroup2"):
                # A cgroup outlives its mount: remove the test's groups (deepest
                # first; their processes are dead), or its next start finds them.
                for root, dirs, _ in os.walk(mp, topdown=False):
                    for d in dirs:
                        try:
                            os.rmdir(os.path.join(root, d))
                        except OSError:
                            pass
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)

    def outfile_text(self, name: str) -> str:
        """The test's outfile: renamed from .inprogress at exit by the
        process whose pid the test recorded (test_fini), else .inprogress."""
        for suffix in (".out", ".out.inprogress"):
            p = self.static / (name + suffix)
            if p.exists():
                return p.read_text(errors="replace")
        return ""

    def run(self, name: str, tool: str) -> dict[str, Any]:
        desc = read_desc(self.static, name)
        t0 = time.monotonic()
        res: dict[str, Any] = {"status": "error", "reason": ""}
        pids: list[int] = []
        images = Path(tempfile.mkdtemp(prefix="%s-%s-" % (tool, name), dir=self.workdir))
        try:
            self._run(name, tool, desc, images, res, pids)
        except Exception as e:  # the harness must go on; say what broke
            res.update(status="error", reason="harness: %r" % e)
        finally:
            kill_test(pids + instances(self.static / name))
            shutil.rmtree(images, ignore_errors=True)
            self.umount_leftovers(name)
            self.make(name + ".cleanout", None, 60)
        res["seconds"] = round(time.monotonic() - t0, 2)
        return res

    def _run(self, name: str, tool: str, desc: dict[str, Any], images: Path,
             res: dict[str, Any], pids: list[int]) -> None:
        tmo = max(self.timeout, float(desc.get("timeout", 30)))
        self.make(name + ".cleanout", None, 60)
        env = dict(os.environ, TMPDIR=os.environ.get("TMPDIR", "/tmp"))
        if "suid" not in flags(desc) and not self.as_root:
            env.update(ZDTM_IDS)
        rc, out = self.make(name + ".pid", env, tmo)
        pidfile = self.static / (name + ".pid")
        if rc != 0 or not pidfile.exists():
            res.update(status="error", reason="test did not start (make %s.pid: %s)"
                       % (name, "timeout" if rc is None else "exit %s" % rc),
                       detail=(out + self.outfile_text(name))[-1500:])
            return
        pid = int(pidfile.read_text().split()[0])
        pids.append(pid)
        before = None
        if self.compare_state:
            try:
                before = visible_state(pid)
            except OSError:
                before = None

        # --- dump
        opts = str(desc.get("opts", "")).split()
        if tool == "ckpt":
            argv = self.ckpt + ["dump", "--pid", str(pid), "-D", str(images), "--kill"]
        else:
            argv = [self.criu, "dump", "-t", str(pid), "-D", str(images), "--shell-job",
                    "-v4", "-o", "dump.log"] + opts + str(desc.get("dopts", "")).split()
        res["dump_cmd"] = shlex.join(argv)
        rc, out, err = run_cmd(argv, tmo * 2)
        if rc is None:
            res.update(status="hang", reason="dump did not end in %ds" % (tmo * 2))
            return
        if rc != 0:
            res.update(failure(tool, "dump", rc, err, images))
            return
        if not wait_gone(pid, 10):
            res["note"] = "the dumped process was still alive after the dump"
            kill_test([pid])
        # Its children too (CRIU kills the tree; the pids must be free again).
        end = time.monotonic() + 10
        while session_members(pid) and time.monotonic() < end:
            reap_all()
            time.sleep(0.05)
        reap_all()

        # --- restore
        out_inprog = str(self.static / (name + ".out.inprogress"))
        if tool == "ckpt":
            argv = self.ckpt + ["restore", "-D", str(images), "--detach"]
            argv += ["--same-pid"] if self.same_pid else []
            argv += ["--stdout", out_inprog, "--stderr", out_inprog]
            argv += [CKPT_RESTORE_EQUIV[o] for o in opts if o in CKPT_RESTORE_EQUIV]
        else:
            argv = [self.criu, "restore", "-D", str(images), "--shell-job", "-d", "-v4",
                    "-o", "restore.log", "--pidfile", str(images / "restored.pid")]
            argv += opts + str(desc.get("ropts", "")).split()
        res["restore_cmd"] = shlex.join(argv)
        rc, out, err = run_cmd(argv, tmo * 2)
        if rc is None:
            res.update(status="hang", reason="restore did not end in %ds" % (tmo * 2))
            pids.append(pid)
            return
        if rc != 0:
            res.update(failure(tool, "restore", rc, err, images))
            pids.append(pid)  # a half-restored tree, if any
            return
        if tool == "ckpt":
            nums = re.findall(r"\b(\d+)\b", out)
            newpid = int(nums[-1]) if nums else pid
            if err.strip():
                res["restore_stderr"] = err.strip()[-1000:]
        else:
            try:
                newpid = int((images / "restored.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                newpid = pid
        pids.append(newpid)
        res["restored_pid"] = newpid

        # --- check: SIGTERM, wait, read the outfile (zdtm.py zdtm_test.stop)
        time.sleep(0.2)
        if not alive(newpid):
            text = self.outfile_text(name)
            res.update(status="failed" if "FAIL" in text else "crash",
                       reason="the restored process died before SIGTERM",
                       outfile=text[-3000:])
            return
        if before is not None:
            try:
                diff = state_diff(before, visible_state(newpid))
            except OSError as e:
                diff = {"error": str(e)}
            if diff:
                res["state_diff"] = diff
        os.kill(newpid, signal.SIGTERM)
        if not wait_gone(newpid, tmo * 2):
            res.update(status="hang", reason="restored process did not exit %ds after SIGTERM"
                       % (tmo * 2), outfile=self.outfile_text(name)[-3000:])
            return
        text = self.outfile_text(name)
        last = text.strip().splitlines()[-1] if text.strip() else ""
        if "PASS" in last.split():
            res.update(status="pass", reason="")
        else:
            res.update(status="failed", reason=last or "(empty outfile)",
                       outfile=text[-3000:])


# ---------------------------------------------------------------- main

def summarize(results: dict[str, Any], tools: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {t: {} for t in tools}
    for r in results.values():
        for t in tools:
            if t in r:
                s = r[t]["status"]
                counts[t][s] = counts[t].get(s, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Statuses: pass, refused_dump, refused_restore, failed "
                                        "(restored but the test FAILED: silently wrong), crash, "
                                        "hang, error (the test did not start).")
    ap.add_argument("zdtm", type=Path, help="CRIU's built test/zdtm directory (with static/ and lib/)")
    ap.add_argument("--criu", default="/work/shared/criu/criu", help="the CRIU binary")
    ap.add_argument("--ckpt", default="%s -m ckpt" % shlex.quote(sys.executable),
                    help="command that runs ckpt (default: this python -m ckpt; "
                         "PYTHONPATH chooses the checkout, but -m puts the current "
                         "directory first: run from the checkout measured, or from "
                         "elsewhere)")
    ap.add_argument("--tools", default="ckpt,criu", help="comma-separated: ckpt, criu")
    ap.add_argument("--only", nargs="*", default=[], metavar="PAT",
                    help="run only tests matching a glob or regex (name without static/)")
    ap.add_argument("--exclude", nargs="*", default=[], metavar="PAT",
                    help="skip tests matching a glob or regex")
    ap.add_argument("--timeout", type=float, default=30,
                    help="per-step timeout in seconds (start; dump, restore and exit get twice "
                         "this; a .desc timeout raises it); default 30")
    ap.add_argument("--as-root", action="store_true",
                    help="start every test as root, as zdtm.py does only for 'suid' tests "
                         "(where CRIU lacks CAP_SYS_RESOURCE it cannot dump another uid's "
                         "process: prlimit() of it fails with EPERM)")
    ap.add_argument("--ckpt-new-pid", action="store_true",
                    help="restore with ckpt without --same-pid (the test then cannot rename its "
                         ".out.inprogress, which is read instead)")
    ap.add_argument("--compare-state", action="store_true",
                    help="also compare what /proc shows of the test before the dump and after "
                         "the restore (fds, maps, namespaces, session, credentials, signals, "
                         "limits...) and record what differs as state_diff")
    ap.add_argument("--json", type=Path, help="write results here (rewritten after every test)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the results already in --json and run only the tests not in it")
    ap.add_argument("--list", action="store_true", help="print the selection and exit")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp"),
                    help="where images directories are made (default /tmp)")
    a = ap.parse_args(argv)

    zdtm = a.zdtm.resolve()
    if not (zdtm / "static").is_dir():
        ap.error("%s has no static/ directory" % zdtm)
    if os.geteuid() != 0:
        ap.error("run as root (CRIU needs it; zdtm tests drop to uid %s)" % ZDTM_IDS["ZDTM_UID"])
    tools = [t for t in a.tools.split(",") if t]
    if set(tools) - {"ckpt", "criu"}:
        ap.error("--tools takes ckpt and/or criu")
    tests, skipped = select_tests(zdtm, a.criu)
    if a.only:
        tests = [t for t in tests if matches(t, a.only)]
    if a.exclude:
        tests = [t for t in tests if not matches(t, a.exclude)]
    if a.list:
        print("\n".join(tests))
        for n, why in sorted(skipped.items()):
            print("# skipped %s: %s" % (n, why))
        return 0

    if not a.as_root:
        # Tests that drop to ZDTM_UID write their files into static/ (zdtm.py's
        # __add_wperms). Not otherwise: ckpt rightly refuses to bind a unix
        # socket in a directory others may write to.
        st = os.stat(zdtm / "static")
        os.chmod(zdtm / "static", st.st_mode | 0o222)
    a.workdir.mkdir(parents=True, exist_ok=True)

    # A zdtm test daemonizes: its parent exits and it is re-parented to the
    # nearest subreaper or to pid 1. Become that subreaper, so that every test
    # and restored process is ours to reap: a zombie keeps its pid, which a
    # --same-pid restore needs free (and some sandboxes' pid 1 never reaps).
    PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0):
        ap.error("prctl(PR_SET_CHILD_SUBREAPER): errno %d" % ctypes.get_errno())
    runner = Runner(zdtm, shlex.split(a.ckpt), a.criu, a.timeout, a.workdir, a.as_root,
                    same_pid=not a.ckpt_new_pid, compare_state=a.compare_state)
    doc: dict[str, Any] = {
        "meta": {"zdtm": str(zdtm), "kernel": platform.release(), "tools": tools,
                 "ckpt": a.ckpt, "pythonpath": os.environ.get("PYTHONPATH", ""),
                 "criu": a.criu, "timeout": a.timeout, "as_root": a.as_root,
                 "ckpt_same_pid": not a.ckpt_new_pid, "compare_state": a.compare_state,
                 "argv": sys.argv,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "selected": len(tests), "finished": False},
        "skipped": skipped, "results": {}, "not_run": list(tests)}

    def save() -> None:
        if a.json:
            doc["counts"] = summarize(doc["results"], tools)
            tmp = a.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            tmp.replace(a.json)

    if a.resume and a.json and a.json.exists():
        old = json.loads(a.json.read_text())
        doc["results"] = {n: r for n, r in old.get("results", {}).items() if n in tests}
        doc["meta"]["started"] = old.get("meta", {}).get("started", doc["meta"]["started"])
        doc["meta"]["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tests = [t for t in tests if t not in doc["results"]]
        doc["not_run"] = list(tests)
    log("%d tests selected, %d skipped" % (len(tests), len(skipped)))
    save()
    try:
        for i, n in enumerate(tests, 1):
            desc = read_desc(zdtm / "static", n)
            entry: dict[str, Any] = {"flags": flags(desc), "opts": desc.get("opts", "")}
            for t in tools:
                entry[t] = runner.run(n, t)
            doc["results"][n] = entry
            doc["not_run"].remove(n)
            save()
            log("[%d/%d] %-32s %s" % (i, len(tests), n, "  ".join(
                "%s=%s%s" % (t, entry[t]["status"],
                             " (%s)" % entry[t]["reason"][:90] if entry[t]["reason"] else "")
                for t in tools)))
    except KeyboardInterrupt:  # keep what was measured
        log("interrupted")
    doc["meta"]["finished"] = not doc["not_run"]
    save()
    for t, c in summarize(doc["results"], tools).items():
        log("%s: %s" % (t, ", ".join("%s %d" % kv for kv in sorted(c.items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

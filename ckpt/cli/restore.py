"""``ckpt restore``: bring a checkpoint back to life."""

from __future__ import annotations

import argparse
import sys

from .common import TerminalProgress, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore", help="restore a process from a checkpoint",
        description="Recreate the process of a checkpoint in DIR: same memory at the same addresses, "
                    "registers, threads, signal state, files and credentials. By default ckpt waits for "
                    "it and exits with its exit status (128+N if killed by signal N), as criu restore: "
                    "a process that led neither its session nor its process group is in ckpt's "
                    "process group, the foreground job, so that the terminal's Ctrl-C, Ctrl-Z and Ctrl-\\ "
                    "reach it once, as any foreground command; one that led its own keeps a group or "
                    "session of its own, and ckpt passes the terminal's SIGINT and SIGQUIT on to it. "
                    "A SIGINT, SIGQUIT, SIGTERM or SIGHUP sent to ckpt with kill is passed on to it once "
                    "(a SIGHUP to the whole job reaches it directly). File descriptors 0, 1 and 2 of the "
                    "restored process "
                    "are ckpt's own standard streams unless --stdin/--stdout/--stderr name files; with "
                    "--detach they are /dev/null unless named, so that the process never holds the "
                    "caller's pipes. Other descriptors, mapped files, cwd and root are reopened by path, "
                    "each required to be the file the dump saw. Images not owned by root restore with "
                    "at most their owner's identity (see 'Trust' in the README).")
    p.add_argument("-D", "--images-dir", required=True, metavar="DIR")
    p.add_argument("--checkpoint", type=int, metavar="ID",
                   help="the checkpoint to restore (default: the newest restorable one)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="print the new pid and return at once (as criu restore -d); the process lives on "
                        "in a session of its own (unless --shell-job), with /dev/null as fds 0, 1 and 2 "
                        "unless --stdin/--stdout/--stderr name files")
    p.add_argument("--pidfile", metavar="FILE",
                   help="write the restored process's pid to FILE, a new file (mode 0600; refused if it "
                        "exists, as criu restore --pidfile), once it runs")
    p.add_argument("--same-pid", action="store_true",
                   help="restore with the original pid (fails if it is taken)")
    p.add_argument("--stdin", metavar="FILE", help="standard input of the restored process")
    p.add_argument("--stdout", metavar="FILE", help="standard output (appended to)")
    p.add_argument("--stderr", metavar="FILE", help="standard error (appended to)")
    p.add_argument("--inherit-fd", action="append", default=[], metavar="N:KEY",
                   help="give the restored process this command's fd N in place of its open file KEY, as "
                        "'ckpt inspect --fds' names it (pipe:[INODE], a FIFO's path): for a pipe or FIFO whose "
                        "other end was outside the process, which is refused otherwise (as CRIU's --inherit-fd "
                        "fd[N]:KEY). The process's status flags (O_NONBLOCK, ...) are set on it. Repeatable")
    p.add_argument("--tcp-established", action="store_true",
                   help="restore established TCP connections too, with TCP_REPAIR (as CRIU's option of that "
                        "name: root's images, on the host they were dumped on, after dump --kill; the peer must "
                        "send nothing meanwhile, or the kernel answers it with a reset)")
    p.add_argument("--ext-unix-sk", action="store_true",
                   help="connect unix sockets whose peer was outside the process to that peer's name again (a "
                        "listening server's path or abstract name, a datagram socket's such as /dev/log), which "
                        "is refused otherwise (as CRIU's --ext-unix-sk): a new connection, made as the socket's "
                        "owner; a socket with bytes queued from outside is refused still")
    p.add_argument("--shell-job", action="store_true",
                   help="restore a process whose controlling terminal was outside it (the terminal it was "
                        "started from), which is refused otherwise (as CRIU's --shell-job): it becomes a job of "
                        "the terminal of this command, in this command's session and process group; its "
                        "fds >= 3 of that terminal are new opens of this command's terminal, which gets the "
                        "process's terminal settings (termios)")
    p.add_argument("--lazy", action="store_true",
                   help="let the process run before its memory is restored: its private anonymous memory "
                        "arrives on demand (userfaultfd) and in the background, newest-written pages first, "
                        "from a page server that outlives this command (--json tells its pid) and exits once "
                        "every page is in; if the server dies first, the process is killed with a message on "
                        "its stderr. No write tracking: the next dump of the process is full")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout: with --detach once the process runs, else once it "
                        "has ended (with its exit_code; --pidfile gives the pid meanwhile)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..restore import restore

    streams = {"stdin": args.stdin, "stdout": args.stdout, "stderr": args.stderr}
    defaulted = []
    if args.detach:
        # A detached process outlives this command: it must not keep the caller's
        # stdout/stderr (a caller capturing them would wait for its end) nor stdin.
        for name, path in streams.items():
            if path is None:
                streams[name] = os.devnull
                defaulted.append(name)
    pidfile = PidFile(args.pidfile) if args.pidfile is not None else None
    try:
        # detach=True here: the wait below comes after the pid file and the messages.
        result = restore(args.images_dir, args.checkpoint, detach=True, same_pid=args.same_pid,
                         inherit_fds=inherit_fds(args.inherit_fd), tcp_established=args.tcp_established,
                         ext_unix_sk=args.ext_unix_sk, shell_job=args.shell_job, own_session=args.detach,
                         progress=TerminalProgress.until_done(), lazy=args.lazy,
                         hold_signals=not args.detach, **streams)
    except BaseException:
        if pidfile is not None:
            pidfile.discard()
        raise
    from ..restore import release_held, wait_forwarding_signals

    try:   # held signals go back to ckpt on every way out (restore's hold_signals)
        if pidfile is not None:
            pidfile.write(result.pid)
        if defaulted:
            result.notes.append(f"{', '.join(defaulted)} of the detached process: {os.devnull} "
                                "(--stdin/--stdout/--stderr name files)")
        if args.json and args.detach:
            print_json(result.to_dict())
        elif args.detach:
            print(result.pid)
        elif not args.json:
            print(f"ckpt: restored checkpoint {result.checkpoint} as pid {result.pid}", file=sys.stderr)
        for note in result.notes:
            print(f"ckpt: note: {note}", file=sys.stderr)
        sys.stdout.flush()
        if args.detach:
            return 0
        # The signals held since the release (restore's hold_signals) are passed on here.
        result.exit_status = wait_forwarding_signals(result.pid, shell_job=args.shell_job, held=result.held_signals)
        if args.json:
            print_json(result.to_dict())
        return result.exit_code or 0
    finally:
        release_held(result.held_signals)


class PidFile:
    """``--pidfile FILE``: created before the restore (O_EXCL, 0600, no symlink followed, as
    criu's write_pidfile), so that a taken name fails before any process is made; the pid
    is written once the process runs; removed if the restore fails."""

    def __init__(self, path: str) -> None:
        import os

        from ..errors import UsageError

        self.path = path
        try:
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                          0o600)
        except FileExistsError:
            raise UsageError(f"--pidfile {path}: the file exists (remove it first)") from None
        except OSError as err:
            raise UsageError(f"--pidfile {path}: {err.strerror}") from None

    def write(self, pid: int) -> None:
        import os

        assert self.fd is not None
        try:
            os.write(self.fd, f"{pid}\n".encode())
        finally:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        import contextlib
        import os

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def inherit_fds(values: list[str]) -> dict[int, str]:
    """``--inherit-fd N:KEY`` options as {N: KEY}; UsageError for a malformed one."""
    from ..errors import UsageError

    out: dict[int, str] = {}
    for value in values:
        number, sep, key = value.partition(":")
        if not sep or not key or not number.isdigit():
            raise UsageError(f"--inherit-fd {value}: expected N:KEY, an fd number and an open file "
                             "(pipe:[INODE], a FIFO's path)")
        if int(number) in out:
            raise UsageError(f"--inherit-fd: fd {number} is given twice")
        out[int(number)] = key
    return out

"""ckpt's worker threads, and why signals are never theirs.

ckpt handles SIGINT, SIGQUIT, SIGTERM and SIGHUP on its main thread: as an interruption
(ckpt/cli/__init__.py), or, once a restored process runs, by taking them with
sigtimedwait(2) and passing them on (ckpt/restore.py wait_forwarding_signals), which
needs them blocked and pending.  A signal sent to the process goes to any thread that does
not block it (kernel/signal.c complete_signal): a worker thread that took one would leave
Python only a flag for the main thread, without the si_code that tells a terminal's ^C
from a kill(2).  So every worker ckpt starts blocks them first (a thread inherits the
mask of the thread that creates it, but pools start theirs lazily, from whichever thread
submits first).
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MAIN_THREAD_SIGNALS", "block_main_thread_signals", "pool"]

#: The signals only ckpt's main thread takes (SIGCHLD: the restore's wait takes it too).
MAIN_THREAD_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)


def block_main_thread_signals() -> None:
    """Block :data:`MAIN_THREAD_SIGNALS` in the calling (worker) thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)


def pool(max_workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads leave the main thread's signals to it."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name,
                              initializer=block_main_thread_signals)

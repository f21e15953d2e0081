"""One thread issues every ptrace request of a session.

ptrace ties a tracee to the tracer *thread* (kernel/ptrace.c: ``child->parent =
current``), and only that thread may issue requests on it.  A thread that was
seized and interrupted but never reaches its stop (blocked uninterruptibly: a
vfork parent, a FUSE or NFS wait) cannot be detached either: PTRACE_DETACH needs
a stopped tracee.  What releases it is the tracer thread's exit
(kernel/exit.c ``exit_notify`` -> ``exit_ptrace`` -> ``__ptrace_unlink``, which
also clears the pending interrupt).  So a frozen-process session runs its
ptrace requests on a thread of its own, which simply ends when the session
does, and a caller of the Python API is never left as the tracer of a thread
that will stop later, when nobody is there to let it go.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .. import workers

T = TypeVar("T")

_STOP = object()


class TracerThread:
    """A thread that runs submitted calls one at a time; see the module docstring."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        workers.block_main_thread_signals()   # signals are the main thread's (ckpt/workers.py)
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, kwargs, done, result = job
            try:
                result.append((True, fn(*args, **kwargs)))
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                result.append((False, err))
            done.set()

    def on_tracer(self) -> bool:
        """True when called from the tracer thread itself."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the tracer thread and return its result (or raise its exception)."""
        if self.on_tracer():
            return fn(*args, **kwargs)
        if not self._thread.is_alive():
            raise RuntimeError("the tracer thread has ended")
        done = threading.Event()
        result: list[tuple[bool, Any]] = []
        self._jobs.put((fn, args, kwargs, done, result))
        done.wait()
        ok, value = result[0]
        if ok:
            return value
        raise value

    def stop(self) -> None:
        """End the thread (which releases whatever it still traces) and wait until it is
        gone from the kernel too: ``join`` returns when the thread's Python code is done,
        a moment before the kernel's exit_notify (and so exit_ptrace) has run for it."""
        if self._thread.is_alive() and not self.on_tracer():
            native = self._thread.native_id
            self._jobs.put(_STOP)
            self._thread.join()
            deadline = time.monotonic() + 2.0
            while os.path.exists(f"/proc/self/task/{native}") and time.monotonic() < deadline:
                time.sleep(0.0005)

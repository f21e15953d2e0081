"""pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2).

``pidfd_getfd`` duplicates a file descriptor out of another process; it needs
PTRACE_MODE_ATTACH_REALCREDS over that process (kernel/pid.c).  ckpt uses it
to take the userfaultfd it injected into the target, and later to take the
same uffd back from the holder process that keeps tracking alive.
"""

from __future__ import annotations

import select

from .libc import SYS_pidfd_getfd, SYS_pidfd_open, SYS_pidfd_send_signal, syscall


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (close-on-exec by default since 5.10)."""
    return syscall(SYS_pidfd_open, pid, 0)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate ``target_fd`` of the process behind ``pidfd`` into this process (O_CLOEXEC)."""
    return syscall(SYS_pidfd_getfd, pidfd, target_fd, 0)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    syscall(SYS_pidfd_send_signal, pidfd, sig, 0, 0)


def wait_exit(pidfd: int, timeout: float | None = None) -> bool:
    """Block until the process behind ``pidfd`` exits (pidfds poll readable then)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def is_alive(pidfd: int) -> bool:
    return not wait_exit(pidfd, 0)


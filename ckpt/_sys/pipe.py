"""Pipes: ``tee(2)`` and the byte count of a pipe (``FIONREAD``).

``tee`` (fs/splice.c ``do_tee``/``link_pipe``) gives a second pipe references to
the buffers of a first one, without consuming them: each buffer is copied whole
(its page, offset, length and flags -- ``PIPE_BUF_FLAG_PACKET`` included), so that
reading the second pipe shows exactly what a reader of the first would get, packet
boundaries included.  It needs a readable description of the first pipe and a
writable one of the second, and copies no more buffers than the second pipe has
free slots.  Python's ``os`` has ``splice`` but no ``tee``.

``FIONREAD`` on any description of a pipe, either end, is the number of bytes in
it (fs/pipe.c ``pipe_ioctl``: the sum of the lengths of its buffers).
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Final

from .libc import syscall

SYS_tee: Final = 276
SPLICE_F_NONBLOCK: Final = 0x02   # include/linux/splice.h: do not wait for buffers or room


def tee(fd_in: int, fd_out: int, length: int, flags: int = SPLICE_F_NONBLOCK) -> int:
    """``tee(fd_in, fd_out, length, flags)``: the number of bytes duplicated."""
    return syscall(SYS_tee, fd_in, fd_out, length, flags)


def bytes_in(fd: int) -> int:
    """The number of bytes in the pipe of ``fd`` (``ioctl(FIONREAD)``)."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return struct.unpack("<i", buf)[0]

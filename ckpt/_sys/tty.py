"""Terminal ioctls (include/uapi/asm-generic/ioctls.h, drivers/tty/tty_io.c, pty.c, n_tty.c).

Each function takes an fd of a terminal and raises ``OSError`` as the ioctl does.
What the kernel answers through a pty *master* fd is, for the settings, the
slave's: ``TCGETS2``/``TCSETS2`` and ``TIOCGWINSZ``/``TIOCSWINSZ`` act on the
pair's slave (tty_ioctl.c ``tty_mode_ioctl``, tty_io.c ``tty_pair_get_tty``),
and ``TIOCGSID``/``TIOCGPGRP`` through a master answer for the slave whatever
the caller's own terminal is -- through any other fd only when it is the
caller's controlling terminal (tty_jobctrl.c ``tiocgsid``, ``tiocgpgrp``).
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Final

TCGETS2: Final = 0x802C542A      # _IOR('T', 0x2A, struct termios2)
TCSETS2: Final = 0x402C542B      # _IOW('T', 0x2B, struct termios2)
TIOCGPTN: Final = 0x80045430     # _IOR('T', 0x30, unsigned int): a master's pty index
TIOCSPTLCK: Final = 0x40045431   # _IOW('T', 0x31, int): lock/unlock the slave
TIOCGDEV: Final = 0x80045432     # _IOR('T', 0x32, unsigned int): the real terminal's device
TIOCGPKT: Final = 0x80045438     # _IOR('T', 0x38, int)
TIOCGPTLCK: Final = 0x80045439   # _IOR('T', 0x39, int)
TIOCGEXCL: Final = 0x80045440    # _IOR('T', 0x40, int)
TIOCGPTPEER: Final = 0x5441      # _IO('T', 0x41): open the slave of a master (pty.c ptm_open_peer)
TIOCGSID: Final = 0x5429
TERMIOS2_SIZE: Final = 44        # struct termios2: 4 tcflag_t, c_line, c_cc[19], 2 speed_t
WINSIZE = struct.Struct("HHHH")  # struct winsize: ws_row, ws_col, ws_xpixel, ws_ypixel


def _get_int(fd: int, request: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, request, buf)
    return struct.unpack("i", buf)[0]


def _set_int(fd: int, request: int, value: int) -> None:
    fcntl.ioctl(fd, request, struct.pack("i", value))


def get_termios2(fd: int) -> bytes:
    """``TCGETS2``: the raw ``struct termios2`` (44 bytes)."""
    buf = bytearray(TERMIOS2_SIZE)
    fcntl.ioctl(fd, TCGETS2, buf)
    return bytes(buf)


def set_termios2(fd: int, raw: bytes) -> None:
    """``TCSETS2``: set a raw ``struct termios2`` at once (no draining: TCSETS2, not TCSETSW2)."""
    fcntl.ioctl(fd, TCSETS2, bytes(raw))


def get_winsize(fd: int) -> tuple[int, int, int, int]:
    """``TIOCGWINSZ``: (rows, columns, xpixel, ypixel)."""
    buf = bytearray(WINSIZE.size)
    fcntl.ioctl(fd, termios.TIOCGWINSZ, buf)
    return WINSIZE.unpack(buf)


def set_winsize(fd: int, size: tuple[int, int, int, int]) -> None:
    """``TIOCSWINSZ``."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, WINSIZE.pack(*size))


def pty_index(fd: int) -> int:
    """``TIOCGPTN`` of a pty master: the N of /dev/pts/N."""
    return _get_int(fd, TIOCGPTN)


def real_device(fd: int) -> int:
    """``TIOCGDEV``: the device number (new_encode_dev, as st_rdev and /proc/PID/stat tty_nr)
    of the terminal behind ``fd`` -- for an fd of /dev/tty, the terminal it led to."""
    return _get_int(fd, TIOCGDEV) & 0xFFFFFFFF


def locked(fd: int) -> bool:
    """``TIOCGPTLCK`` of a pty master: whether its slave may not be opened."""
    return bool(_get_int(fd, TIOCGPTLCK))


def set_locked(fd: int, value: bool) -> None:
    """``TIOCSPTLCK`` (unlockpt with 0)."""
    _set_int(fd, TIOCSPTLCK, int(value))


def packet_mode(fd: int) -> bool:
    """``TIOCGPKT`` of a pty master."""
    return bool(_get_int(fd, TIOCGPKT))


def set_packet_mode(fd: int, value: bool) -> None:
    """``TIOCPKT``."""
    _set_int(fd, termios.TIOCPKT, int(value))


def exclusive(fd: int) -> bool:
    """``TIOCGEXCL``: TTY_EXCLUSIVE of the tty of ``fd`` (no other open but by CAP_SYS_ADMIN)."""
    return bool(_get_int(fd, TIOCGEXCL))


def set_exclusive(fd: int, value: bool) -> None:
    """``TIOCEXCL`` / ``TIOCNXCL``."""
    fcntl.ioctl(fd, termios.TIOCEXCL if value else termios.TIOCNXCL)


def session(fd: int) -> int:
    """``TIOCGSID``: the session the terminal is the controlling terminal of (ENOTTY: none)."""
    return _get_int(fd, TIOCGSID)


def foreground(fd: int) -> int:
    """``TIOCGPGRP``: the terminal's foreground process group (0: none)."""
    return _get_int(fd, termios.TIOCGPGRP)


def queued(fd: int) -> int:
    """``FIONREAD``: bytes the reader of ``fd`` could read now -- in canonical mode whole
    lines only (n_tty.c ``n_tty_ioctl``: ``inq_canon``)."""
    return _get_int(fd, termios.FIONREAD)


def open_peer(master: int, flags: int) -> int:
    """``TIOCGPTPEER``: a new fd of the slave of pty master ``master``, opened with
    ``flags`` through the master's own devpts (no path lookup)."""
    return fcntl.ioctl(master, TIOCGPTPEER, flags)


def take_controlling(fd: int) -> None:
    """``TIOCSCTTY`` (arg 0): make the terminal the caller's controlling terminal; the
    caller must be a session leader without one (tty_jobctrl.c ``tiocsctty``)."""
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def drop_controlling(fd: int) -> None:
    """``TIOCNOTTY`` on the caller's controlling terminal: a process that leads no session
    only loses it (tty_jobctrl.c ``no_tty``: ``disassociate_ctty`` returns at once for it)."""
    fcntl.ioctl(fd, termios.TIOCNOTTY)

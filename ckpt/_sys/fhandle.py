"""open_by_handle_at(2): open a file by the handle a filesystem gives it (fs/fhandle.c).

inotify's fdinfo shows each watched inode as such a handle (``f_handle:``,
``fhandle-type:``; fs/notify/fdinfo.c ``show_mark_fhandle``), which is how a
dump finds the path of a watch.  ``mount_fd`` is any open file (not O_PATH) on
a mount of the handle's filesystem; decoding needs CAP_DAC_READ_SEARCH for an
arbitrary handle (``may_decode_fh``).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Final

from .libc import syscall

SYS_open_by_handle_at: Final = 304
_HEADER = struct.Struct("<Ii")    # struct file_handle: handle_bytes, handle_type, then f_handle[]


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """The open file the handle names on ``mount_fd``'s filesystem."""
    buf = ctypes.create_string_buffer(_HEADER.pack(len(handle), handle_type) + handle)
    return syscall(SYS_open_by_handle_at, mount_fd, ctypes.addressof(buf), flags)

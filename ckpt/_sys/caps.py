"""capget(2)/capset(2) on the calling thread: run a block with no effective capability.

Capability sets are per thread, and the raw ``capset`` changes only the caller
(kernel/capability.c, ``pid`` 0).  Clearing the effective set while keeping
the permitted one makes the kernel check a block as an unprivileged user's
(``ns_capable`` looks at the effective set, include/linux/cred.h), and the set
can be raised again afterwards from the permitted one.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Final

from .libc import SYS_capset, address_of, syscall

SYS_capget: Final = 125
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522   # include/uapi/linux/capability.h
_HEADER = struct.Struct("<Ii")                      # struct __user_cap_header_struct: version, pid
_DATA = struct.Struct("<IIIIII")                    # 2 x struct __user_cap_data_struct: eff, prm, inh


def _get() -> tuple[int, ...]:
    header = bytearray(_HEADER.pack(_LINUX_CAPABILITY_VERSION_3, 0))
    data = bytearray(_DATA.size)
    syscall(SYS_capget, address_of(header), address_of(data))
    return _DATA.unpack(data)


def _set(values: tuple[int, ...]) -> None:
    header = bytearray(_HEADER.pack(_LINUX_CAPABILITY_VERSION_3, 0))
    data = bytearray(_DATA.pack(*values))
    syscall(SYS_capset, address_of(header), address_of(data))


@contextlib.contextmanager
def without_effective_capabilities() -> Iterator[None]:
    """Run the block with this thread's effective capability set empty, then put it back."""
    before = _get()
    eff0, prm0, inh0, eff1, prm1, inh1 = before
    if not eff0 and not eff1:
        yield
        return
    _set((0, prm0, inh0, 0, prm1, inh1))
    try:
        yield
    finally:
        _set(before)

"""A live target under ptrace: freezing and thawing it (:mod:`.freeze`), or a whole
process tree (:mod:`.tree`), running syscalls inside it safely (:mod:`.inject`), from
one tracer thread (:mod:`.tracer`)."""

from .freeze import (DEFAULT_FREEZE_TIMEOUT, FreezeTimeout, FrozenProcess, FrozenThread, check_target,
                     wrap_process_errors)
from .inject import inject_syscall
from .tree import FrozenTree, TreeTask

__all__ = ["DEFAULT_FREEZE_TIMEOUT", "FreezeTimeout", "FrozenProcess", "FrozenThread", "FrozenTree",
           "TreeTask", "check_target", "inject_syscall", "wrap_process_errors"]

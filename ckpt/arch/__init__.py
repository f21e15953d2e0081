"""Architecture-specific facts: the syscall instruction, register layouts, the
syscall-restart rule, the injector's machine code, signal frames.

Only x86_64 exists today; :mod:`ckpt.arch.x86_64` is the one implementation.
"""

"""Kernel bindings: one module per interface, ctypes and ioctl only.

Nothing here knows about policy, files or images.  Every failing call raises
``OSError(errno, strerror)`` (so Python picks the subclass: ``PermissionError``,
``ProcessLookupError``...); the pid/operation context is added one layer up.
Struct and constant names follow the kernel headers; each struct's size is
asserted against the kernel ABI.
"""

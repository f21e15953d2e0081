"""Helpers shared by sub-commands: output formatting and progress on a terminal."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def print_json(data: Any, *, lines: bool = False) -> None:
    """``data`` as indented JSON on stdout; with ``lines``, as one compact line (JSON Lines),
    flushed, so that a reader of ``dump --every --json`` gets each checkpoint as it is taken."""
    import json  # here: 'ckpt --help' does not need it

    if lines:
        sys.stdout.write(json.dumps(data, separators=(",", ":"), default=_default) + "\n")
        sys.stdout.flush()
        return
    json.dump(data, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def add_images_dir(p: argparse.ArgumentParser) -> None:
    """DIR as a positional (as before) or as ``-D DIR`` (as every other sub-command takes it)."""
    p.add_argument("images_dir", metavar="DIR", nargs="?", help="the images directory (or -D DIR)")
    p.add_argument("-D", "--images-dir", dest="images_dir_option", metavar="DIR",
                   help="the images directory, as dump and restore take it")


def images_dir(args: argparse.Namespace) -> str:
    """The DIR of :func:`add_images_dir`; UsageError unless given once (or twice the same)."""
    from ..errors import UsageError

    positional, option = args.images_dir, args.images_dir_option
    if positional is None and option is None:
        raise UsageError("the images directory is missing: give DIR or -D DIR")
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two images directories: {positional} and -D {option}")
    return positional if positional is not None else option


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    """'<1s', '7s', '2m05s', '1h02m'."""
    if s < 0.5:
        return "<1s"
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class TerminalProgress:
    """A one-line progress display on stderr, only when stderr is a terminal:
    ``ckpt: copy 512.0 MiB / 1.0 GiB (50%), 410.3 MiB/s, 1s left``, redrawn in place
    (``\\r``) at most ten times a second and cleared by :meth:`clear`.

    It is the ``progress(phase, done, total)`` callback of ``ckpt.dump``,
    ``ckpt.restore``, ``ImageDir.verify`` and prune (``done``/``total`` in bytes).
    Rate and time left are measured from the first call of each phase."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False
        self._phase: str | None = None
        self._start = 0.0      # when the phase began
        self._start_done = 0   # and how much was done then

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if phase != self._phase:
            self._phase, self._start, self._start_done = phase, now, done
        elif now - self._last < 0.1 and done < total:
            return
        self._last = now
        pct = 100 * done / total if total else 100
        line = f"ckpt: {phase} {human_bytes(done)} / {human_bytes(total)} ({pct:3.0f}%)"
        elapsed = now - self._start
        if elapsed >= 0.2 and done > self._start_done:
            rate = (done - self._start_done) / elapsed
            line += f", {human_bytes(rate)}/s"
            if done < total:
                line += f", {human_seconds((total - done) / rate)} left"
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()
        self._shown = True
        if self.auto_clear and done >= total:
            self.clear()

    @classmethod
    def until_done(cls) -> "TerminalProgress":
        """A display that clears itself when a phase is complete (``done == total``): for a
        restore, whose process may write to the same terminal as soon as it is released."""
        bar = cls()
        bar.auto_clear = True
        return bar

    auto_clear = False

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False


def parse_duration(text: str) -> float:
    """'2s', '500ms', '1m', '0.5' (seconds) -> seconds; ValueError unless positive and finite."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            value = float(text[: -len(suffix)]) * units[suffix]
            break
    else:
        value = float(text)
    if not 0 < value < 1e9:  # also refuses nan and inf, which time.sleep() would not take
        raise ValueError(text)
    return value

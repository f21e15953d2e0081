"""Second (and third) users for the security tests, created by the tests themselves.

The security items of the trust issue are about what one user can do to another
through ckpt: a user who edits their own images and asks root to restore them,
a user who plants a symlink in a directory root writes to.  Those tests need
real, distinct uids.  :func:`ensure_user` creates a locked system account once
(``useradd --system``, no home, no login shell) and returns its ids; nothing is
removed afterwards, so repeated runs reuse the same accounts.

Skips (fails under CI, like a missing kernel feature) when not run as root:
only root can create users and run commands as them.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import strict_features

USER_PREFIX = "ckpttest"


@dataclass(frozen=True)
class User:
    """A test account: its name, uid and primary gid."""

    name: str
    uid: int
    gid: int

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user (uid, gid, no supplementary groups), capturing text output."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run([os.fspath(a) for a in argv], user=self.uid, group=self.gid,
                              extra_groups=[], **kwargs)

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` as this user (see :meth:`run`)."""
        return subprocess.Popen([os.fspath(a) for a in argv], user=self.uid, group=self.gid,
                                extra_groups=[], **kwargs)

    def owns(self, path: Path) -> None:
        """chown ``path`` to this user (and group)."""
        os.chown(path, self.uid, self.gid)


def require_root() -> None:
    """Skip unless root (fail under CI, whose machine runs the suite as root)."""
    if os.geteuid() == 0:
        return
    message = "needs root: creates users and runs commands as them"
    if strict_features():
        pytest.fail(message + " (CI runs as root)", pytrace=False)
    pytest.skip(message)


def ensure_user(suffix: str = "a") -> User:
    """The account ``ckpttest-SUFFIX``, created on first use."""
    require_root()
    name = f"{USER_PREFIX}-{suffix}"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, timeout=60)
        entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)

"""Fixtures for tests that run real target processes against the real kernel.

- ``programs``: the C targets of tests/programs compiled once per session
  (``cc -O1 -g -pthread``), plus the paths of the Python targets.
- ``spawn``: start a target and wait for its ``ready PID``; every target is
  killed and reaped at teardown, pass or fail, stopped or not.
- ``memtarget``: a started :class:`helpers.MemTarget`.
- ``images_dir``: a path for an images directory (not created).
- ``kernel_features`` / ``ckpt_kernel``: independent probes of what ckpt needs;
  ``ckpt_kernel`` skips (fails under CI) when a feature is missing.
- ``other_user`` / ``third_user``: real second and third accounts (tests/users.py).
- ``run_ckpt``, ``require_feature``, ``read_target_memory``,
  ``assert_image_matches``: the helpers of the same name, as fixtures.

``CKPT_RUN_DIR`` (where ckpt keeps its tracking registry) is set to a fresh
per-session directory before any test module is imported, and ckpt
subprocesses inherit it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# helpers.py sits beside this file; make it importable under any --import-mode.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
import users  # noqa: E402
from helpers import MemTarget, Target  # noqa: E402

PROGRAMS_DIR = Path(__file__).resolve().parent / "programs"
CFLAGS = ["-O1", "-g", "-pthread", "-Wall"]
_RUN_DIR_KEY = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module imports ckpt: ckpt's registry must not be shared
    # with other sessions (or with a real user's trackers).
    run_dir = tempfile.mkdtemp(prefix="ckpt-test-run-")
    os.environ["CKPT_RUN_DIR"] = run_dir
    config.stash[_RUN_DIR_KEY] = run_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    run_dir = config.stash.get(_RUN_DIR_KEY, None)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Name -> path: compiled binaries for tests/programs/*.c, scripts for *.py."""
    out_dir = tmp_path_factory.mktemp("programs")
    built: dict[str, Path] = {}
    for source in sorted(PROGRAMS_DIR.glob("*.c")):
        binary = out_dir / source.stem
        result = subprocess.run(
            ["cc", *CFLAGS, "-o", str(binary), str(source)],
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            pytest.fail(f"cannot compile {source.name}:\n{result.stderr}", pytrace=False)
        built[source.stem] = binary
    for script in sorted(PROGRAMS_DIR.glob("*.py")):
        built[script.stem] = script
    return built


def _release(target: Target) -> None:
    """Stop any ckpt tracking of ``target``, then kill and reap it."""
    try:
        tracking = sys.modules.get("ckpt.tracking")
        if tracking is not None and target.proc.returncode is None:
            errors = sys.modules["ckpt.errors"]
            try:
                tracking.stop(target.pid)
            except errors.CkptError:
                pass  # not tracked, or already gone
    finally:
        target.kill()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Target]]:
    """spawn(argv, cls=Target, ready_timeout=60) -> a started target that printed ``ready``."""
    targets: list[Target] = []

    def start(argv: Sequence[str | os.PathLike[str]], cls: type[Target] = Target,
              ready_timeout: float = 60) -> Target:
        target = cls(argv)
        targets.append(target)
        target.wait_ready(ready_timeout)
        return target

    try:
        yield start
    finally:
        errors = []
        for target in reversed(targets):
            try:
                _release(target)
            except Exception as err:  # keep releasing the others, report at the end
                errors.append(f"{target!r}: {err!r}")
        if errors:
            raise RuntimeError("cleaning up targets failed: " + "; ".join(errors))


@pytest.fixture
def memtarget(spawn: Callable[..., Target], programs: dict[str, Path]) -> MemTarget:
    target = spawn([programs["memtarget"]], cls=MemTarget)
    assert isinstance(target, MemTarget)
    return target


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """Where a test's images directory goes; ckpt creates it."""
    return tmp_path / "images"


@pytest.fixture(scope="session")
def kernel_features() -> dict[str, tuple[bool, str]]:
    return helpers.probe_kernel_features()


@pytest.fixture
def ckpt_kernel(kernel_features: dict[str, tuple[bool, str]]) -> None:
    """Skip (fail under CI) unless the kernel has what a successful dump needs."""
    for name in ("userfaultfd", "uffd-wp-async", "PAGEMAP_SCAN"):
        available, reason = kernel_features[name]
        helpers.require_feature(name, available, reason)


@pytest.fixture
def other_user() -> "users.User":
    """A second, unprivileged user created for the test (see tests/users.py); needs root."""
    return users.ensure_user("a")


@pytest.fixture
def third_user() -> "users.User":
    """A third user, distinct from :func:`other_user`."""
    return users.ensure_user("b")


@pytest.fixture
def run_ckpt() -> Callable[..., subprocess.CompletedProcess[str]]:
    return helpers.run_ckpt


@pytest.fixture
def require_feature() -> Callable[[str, bool, str], None]:
    return helpers.require_feature


@pytest.fixture
def read_target_memory() -> Callable[[int, int, int], bytes]:
    return helpers.read_target_memory


@pytest.fixture
def assert_image_matches() -> Callable[[object, int], None]:
    return helpers.assert_image_matches

"""Packaging: the sdist carries what its own tests need, the metadata is PEP 639's, and
the wheel ships ``py.typed``.

The sdist and the wheel are built the way ``python3 -m build`` builds them (the PEP 517
hooks of ``setuptools.build_meta``), offline, in a copy of the project's files so that the
checkout gets no ``*.egg-info``.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What the sdist's tests need besides the package: the targets they build and run, the
# tools and docs they check, the examples they run.
NEEDED_TREES = ("tests", "tests/programs", "tools", "docs", "examples")


def _project_files() -> list[str]:
    """The project's files: what git tracks, or (an unpacked sdist) what is there."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True)
        files = [f for f in out.stdout.decode().split("\0") if f]
        # Files added in this checkout but not yet committed (and not ignored) are the project's too.
        return [f for f in files if (ROOT / f).exists()]
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts
            and "bin" not in p.relative_to(ROOT).parts and not p.name.endswith(".pyc")
            and ".egg-info" not in str(p)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, (f"setuptools {setuptools.__version__}: the SPDX license form needs 77+ "
                         "(pip install -e '.[test]')")
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    for rel in _project_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    out = base / "dist"
    out.mkdir()
    # The hooks log on stdout (and rewrite sys.argv): the names they return go to a file.
    code = ("import sys\nfrom setuptools import build_meta as b\nout, names = sys.argv[1:3]\n"
            "built = [b.build_sdist(out), b.build_wheel(out)]\n"
            "open(names, 'w').write(' '.join(built))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(base / "names")], cwd=src, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist_name, wheel_name = (base / "names").read_text().split()
    return {"sdist": out / sdist_name, "wheel": out / wheel_name}


def _sdist_members(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    return {n[len(top) + 1:] for n in names if n.startswith(top + "/")}


def test_sdist_has_what_its_tests_need(built: dict[str, Path]) -> None:
    members = _sdist_members(built["sdist"])
    wanted = [f for f in _project_files()
              if f.split("/")[0] in {t.split("/")[0] for t in NEEDED_TREES} or "/" not in f]
    wanted = [f for f in wanted if f not in (".gitignore",)]
    missing = sorted(set(wanted) - members)
    assert not missing, f"the sdist lacks {missing[:20]}"
    for needed in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "ckpt/py.typed",
                   "tests/conftest.py", "tests/programs/memtarget.c", "tests/programs/zdtm_anon.h",
                   "tools/bench_target.c", "docs/FORMAT.md", "examples/README.md"):
        assert needed in members, needed
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]


def test_metadata_is_spdx_with_license_file(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = whl.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(meta_name))
        assert "ckpt/py.typed" in names
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    # PEP 639: with a license expression, no "License ::" classifier.
    classifiers = meta.get_all("Classifier") or []
    assert not [c for c in classifiers if c.startswith("License ::")]
    for wanted in ("Operating System :: POSIX :: Linux", "Programming Language :: Python :: 3.11",
                   "Topic :: System :: Recovery Tools", "Typing :: Typed"):
        assert wanted in classifiers
    assert meta["Requires-Python"] == ">=3.11"
    assert "x86_64" in meta["Summary"]


def test_license_and_changelog() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "ckpt authors" in text and "2026" in text
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "## [0.1.0]" in changelog
    import ckpt

    assert f"## [{ckpt.__version__}]" in changelog

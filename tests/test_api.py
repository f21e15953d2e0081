"""The Python API as a Python user meets it (issue 10 item 8): ``dir(ckpt)`` and
``help(ckpt)`` show it, ``import ckpt`` stays cheap, the package is typed (PEP 561), the
API and the CLI agree on defaults, and every ``--json`` key is an attribute of the result."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pydoc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ckpt
from helpers import REPO_ROOT, MemTarget, ckpt_env, run_ckpt

PUBLIC = ("dump", "Dumper", "restore", "ImageDir", "Checkpoint", "VmaRecord", "DumpReport", "RestoreResult",
          "CkptError", "NoSuchProcess", "AccessDenied", "KernelUnsupported", "TargetExited", "ImageError",
          "CorruptImage", "NotAnImageDir", "ImageDirLocked", "StorageError", "TargetError", "FreezeTimeout",
          "UsageError", "tracking", "__version__")


def _fresh(code: str) -> str:
    """Run ``code`` in a new interpreter with this checkout first; its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=ckpt_env(), cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dir_lists_the_public_api_without_importing_it() -> None:
    loaded = json.loads(_fresh(
        "import json, sys, ckpt\nnames = dir(ckpt)\n"
        "print(json.dumps([names, sorted(m for m in sys.modules if m.startswith('ckpt'))]))"))
    names, modules = loaded
    missing = [n for n in PUBLIC if n not in names]
    assert not missing, f"dir(ckpt) lacks {missing}"
    assert modules == ["ckpt", "ckpt.errors"], f"dir(ckpt) imported {modules}"
    assert set(ckpt.__all__) <= set(dir(ckpt))
    # Only the API: not the names the package imports for itself.
    assert not {"sys", "types", "Any", "TYPE_CHECKING", "annotations"} & set(dir(ckpt)), dir(ckpt)
    for name in ckpt.__all__:
        assert getattr(ckpt, name) is not None


def test_help_documents_the_api_with_types() -> None:
    text = pydoc.render_doc(ckpt, renderer=pydoc.plaintext)
    for wanted in ("class Dumper", "class ImageDir", "class Checkpoint", "class DumpReport", "class RestoreResult",
                   "class CkptError", "class ImageError", "dump(pid: 'int', images_dir:",
                   "restore(images_dir: 'str | os.PathLike[str]', checkpoint: 'int | None' = None, *, "
                   "detach: 'bool' = False", "-> 'DumpReport'", "-> 'RestoreResult'"):
        assert wanted in text, f"help(ckpt) lacks {wanted!r}"
    for name in ("dump", "restore", "Dumper", "ImageDir", "Checkpoint", "DumpReport", "RestoreResult"):
        assert inspect.getdoc(getattr(ckpt, name)), f"{name} has no docstring"
    assert inspect.signature(ckpt.dump).return_annotation == "DumpReport"


def test_package_is_typed() -> None:
    assert (Path(ckpt.__file__).parent / "py.typed").is_file()


def test_api_and_cli_agree_on_restore_defaults() -> None:
    """Both wait for the restored process (as criu restore); both detach on request."""
    from ckpt.cli import _parser as build_parser

    assert inspect.signature(ckpt.restore).parameters["detach"].default is False
    args = build_parser().parse_args(["restore", "-D", "x"])
    assert args.detach is False
    for flag in ("-d", "--detach"):
        assert build_parser().parse_args(["restore", "-D", "x", flag]).detach is True


@pytest.mark.timeout(120)
def test_json_keys_are_attributes(memtarget: MemTarget, images_dir: Path, tmp_path: Path) -> None:
    report = ckpt.dump(memtarget.pid, images_dir)
    as_json = report.to_dict()
    for key, value in as_json.items():
        assert getattr(report, key) == value, f"DumpReport.{key} != --json's {key}"
    cli = run_ckpt("dump", "--pid", memtarget.pid, "-D", images_dir, "--json")
    assert cli.returncode == 0, cli.stderr
    assert set(json.loads(cli.stdout)) == set(as_json)

    ckpt.dump(memtarget.pid, images_dir, after="kill")
    memtarget.kill()
    result = ckpt.restore(images_dir, detach=True, stdin=os.devnull, stdout=tmp_path / "out",
                          stderr=tmp_path / "err")
    try:
        restored = result.to_dict()
        for key, value in restored.items():
            attr = getattr(result, key)
            if key == "pids":
                attr = {str(k): v for k, v in attr.items()}
            assert attr == value, f"RestoreResult.{key} != --json's {key}"
        assert "exit_code" in restored and result.exit_code is None   # detached: not ended yet
    finally:
        os.kill(result.pid, 9)
        os.waitpid(result.pid, 0)

    # A prune's too (ckpt.prune is ckpt prune): every --json key is an attribute of that name.
    pruned = ckpt.prune(images_dir, keep=1)
    assert pruned.removed and pruned.folds, pruned
    for key, value in pruned.to_dict().items():
        attr = getattr(pruned, key)
        if key == "folds":
            attr = [fold.to_dict() for fold in attr]
        elif key == "seconds":
            attr = round(attr, 3)
        assert attr == value, f"PruneReport.{key} != --json's {key}"

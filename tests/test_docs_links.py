"""Every link and file the docs cite resolves inside the project.

Checked in README.md, CHANGELOG.md, docs/*.md and examples/README.md:
- relative Markdown links ``[text](target)`` and images: the target exists, relative to
  the page (an ``#anchor`` alone, ``http(s):`` and ``mailto:`` are not files);
- file names the text cites: a path under one of the project's top directories
  (``ckpt/trust.py``, ``tests/programs/*.c``; ``ckpt/trust.open_verified`` names a module's
  attribute), and any ``*.md`` page, exist relative to the page or the project's root.
  A path of another project is cited with its project's name first (CRIU's
  ``criu/seize.c``, the kernel's ``fs/proc/base.c``): those are not checked.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted({ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "examples" / "README.md",
                *(ROOT / "docs").glob("*.md")})
TOP_DIRS = ("ckpt", "tests", "tools", "docs", "examples")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
PROJECT_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./*-]*[\w*])" % "|".join(TOP_DIRS))
MD_PAGE = re.compile(r"(?<![\w/.-])([\w./-]*[\w-]+\.md)\b")


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _exists(page: Path, target: str, root: Path) -> bool:
    """``target`` names a file of the project: relative to the page or to the root, and
    inside the root (``../shared/DESIGN.md`` may exist beside a checkout: not the project's)."""
    for base in (page.parent, root):
        if any(_inside(Path(found), root) for found in glob.glob(str(base / target))):
            return True
    # A module and one of its names: ckpt/trust.open_verified, ckpt/restore.restore.
    head, dot, _ = target.rpartition(".")
    return bool(dot) and any((base / f"{head}.py").exists() and _inside(base / f"{head}.py", root)
                             for base in (page.parent, root))


def _broken(page: Path, root: Path = ROOT) -> list[str]:
    text = page.read_text()
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        if not ((page.parent / target).exists() and _inside(page.parent / target, root)):
            broken.append(f"link {match.group(1)}")
    # Command examples name the user's files (images/, out.log); links are checked above.
    prose = LINK.sub("", FENCE.sub("", text))
    for regex in (PROJECT_PATH, MD_PAGE):
        for match in regex.finditer(prose):
            target = match.group(1).rstrip(".")
            if not _exists(page, target, root):
                broken.append(f"file {target}")
    return sorted(set(broken))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_is_in_the_project(page: Path) -> None:
    assert page.exists()
    assert _broken(page) == [], f"{page.relative_to(ROOT)} cites what the project does not have"


def test_the_checker_finds_a_broken_link(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "DESIGN.md").write_text("beside the project, not in it\n")
    page = root / "docs" / "page.md"
    page.write_text("See [the brief](../../shared/DESIGN.md), `shared/KERNEL-FACTS.md`, "
                    "ckpt/nosuch.py, ../../shared/DESIGN.md and [ok](page.md).\n")
    assert _broken(page, root) == ["file ../../shared/DESIGN.md", "file ckpt/nosuch.py",
                                   "file shared/KERNEL-FACTS.md", "link ../../shared/DESIGN.md"]

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


def _exists(page: Path, target: str) -> bool:
    for base in (page.parent, ROOT):
        if glob.glob(str(base / target)):
            return True
    # A module and one of its names: ckpt/trust.open_verified, ckpt/restore.restore.
    head, dot, _ = target.rpartition(".")
    return bool(dot) and any((base / f"{head}.py").exists() for base in (page.parent, ROOT))


def _broken(page: Path) -> list[str]:
    text = page.read_text()
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        if not (page.parent / target).exists():
            broken.append(f"link {match.group(1)}")
    prose = FENCE.sub("", text)   # command examples name the user's files (images/, out.log)
    for regex in (PROJECT_PATH, MD_PAGE):
        for match in regex.finditer(prose):
            target = match.group(1).rstrip(".")
            if not _exists(page, target):
                broken.append(f"file {target}")
    return sorted(set(broken))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_is_in_the_project(page: Path) -> None:
    assert page.exists()
    assert _broken(page) == [], f"{page.relative_to(ROOT)} cites what the project does not have"


def test_the_checker_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("See [the brief](../shared/DESIGN.md), `shared/KERNEL-FACTS.md`, "
                    "ckpt/nosuch.py and [ok](page.md).\n")
    assert _broken(page) == ["file ckpt/nosuch.py", "file shared/KERNEL-FACTS.md", "link ../shared/DESIGN.md"]

"""Every relative link of every tracked Markdown file resolves inside the repository (anchors included), and no
code, test or document refers to documents outside it."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: ``[text](target)`` and ``![alt](target)``; the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
EXTERNAL = ("http://", "https://", "mailto:")


def tracked(*suffixes: str) -> list[Path]:
    """Files git tracks (or, outside a git checkout, the source tree's files) with one of ``suffixes``."""
    try:
        names = subprocess.run(
            ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
        ).stdout.split()
        paths = [REPO / name for name in names]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "results", "runs", "build"}
        paths = [p for p in REPO.rglob("*") if not skip & set(p.relative_to(REPO).parts)]
    return sorted(p for p in paths if p.suffix in suffixes and p.is_file())


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), flags=re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


MARKDOWN = tracked(".md")


def test_the_docs_are_tracked():
    names = {p.relative_to(REPO).as_posix() for p in MARKDOWN}
    assert {
        "docs/protocol.md",
        "docs/results.md",
        "docs/adding-a-method.md",
        "docs/methods/README.md",
    } <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.exists(), f"{target}: no such file"
        assert resolved.is_relative_to(REPO), f"{target}: outside the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{target}: no heading with anchor #{anchor}"


def test_slug_matches_github_for_the_headings_used_here():
    assert slug("2.3 Tiny components for tests and CPU runs") == "23-tiny-components-for-tests-and-cpu-runs"
    assert slug("7.1 Dice (the primary metric)") == "71-dice-the-primary-metric"
    assert slug("1.3 `abd_ct`: Synapse / BTCV multi-organ CT") == "13-abd_ct-synapse--btcv-multi-organ-ct"


#: Paths outside the repository that may be named: the real CHAOS data the tests and sweeps read when present.
OUTSIDE = re.compile(r"\.\./shared(?!/data/CHAOST2)|shared/(?:docs|reference)|(?<![/\w])methods\.md")


def test_nothing_refers_to_documents_outside_the_repository():
    offenders = []
    for path in tracked(".py", ".md", ".yaml", ".toml", ".cff"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE.search(line) and path != Path(__file__):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)

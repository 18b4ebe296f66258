"""docs/methods/ against the code: each specification's paper-recipe table equals the method's paper.yaml, every
learned method's README links its specification, and every ``docs/methods/<name>.md §N`` citation exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fsmis_bench.config import load_yaml, parse_yaml
from fsmis_bench.registry import METHODS, profile_path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "methods"
LEARNED = [name for name, entry in METHODS.items() if not entry.reference]


def recipe_rows(text: str) -> list[tuple[str, str, list[str]]]:
    """(item, value, profile keys) of the table headed ``| recipe item | value | `paper.yaml` key |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| recipe item | value |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        item, value, keys = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows.append((item, value.strip("`"), re.findall(r"`([^`]*)`", keys)))
    return rows


def lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("method", LEARNED)
def test_paper_recipe_table_is_the_paper_profile(method):
    config = load_yaml(profile_path(method, "paper"))
    rows = recipe_rows((DOCS / f"{method}.md").read_text(encoding="utf-8"))
    assert len(rows) >= 8
    for item, value, keys in rows:
        documented = parse_yaml(value)
        actual = [lookup(config, key) for key in keys]
        assert (actual if len(keys) > 1 else actual[0]) == documented, f"{method}: {item}"


@pytest.mark.parametrize("method", LEARNED)
def test_method_readme_links_its_specification(method):
    readme = (REPO / "fsmis_bench" / "methods" / method / "README.md").read_text(encoding="utf-8")
    assert f"](../../../docs/methods/{method}.md)" in readme
    assert f"[{method}.md]({method}.md)" in (DOCS / "README.md").read_text(encoding="utf-8")


def test_every_cited_method_section_exists():
    """``docs/methods/<name>.md §N`` in code, tests and Markdown name a numbered section of that document."""
    sections = {
        path.name: set(
            re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", path.read_text(encoding="utf-8"), flags=re.M)
        )
        for path in DOCS.glob("*.md")
    }
    files = [REPO / "README.md", *(p for d in ("fsmis_bench", "tests", "docs", "benchmark", "leaderboards")
                                   for p in (REPO / d).rglob("*") if p.suffix in {".py", ".md", ".yaml"})]  # fmt: skip
    cited = 0
    for path in files:
        for name, section in re.findall(
            r"docs/methods/(\w+\.md)`?\)? §(\d+(?:\.\d+)?)", path.read_text(encoding="utf-8")
        ):
            assert section in sections.get(name, set()), f"{path.relative_to(REPO)} cites {name} §{section}"
            cited += 1
    assert cited

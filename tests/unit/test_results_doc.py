"""docs/results.md against the code (store and leaderboard columns, variant keys), the leaderboard README's
links to it and to the published numbers, and the licence and citation files against pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fsmis_bench.leaderboard.aggregate import COLUMNS as LEADERBOARD_COLUMNS
from fsmis_bench.leaderboard.render import RESULTS_GUIDE, readme_head
from fsmis_bench.runner.jobs import VARIANT_KEYS
from fsmis_bench.runner.store import COLUMNS as STORE_COLUMNS
from fsmis_bench.runner.store import LATER_COLUMNS

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
LINK = re.compile(r"\]\(([^)#\s]+)\)")


def first_column(after: str) -> list[str]:
    """The backticked first cells of the first table after the heading or sentence ``after``."""
    lines = DOC.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| column |"))
    cells = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells.append(re.match(r"\| `([^`]+)` \|", line).group(1))
    return cells


def test_result_row_columns_are_the_store_columns():
    assert tuple(first_column("## A result row")) == STORE_COLUMNS
    for column in LATER_COLUMNS:
        row = next(line for line in DOC.splitlines() if line.startswith(f"| `{column}` |"))
        assert "empty" in row  # older stores read them as empty


def test_leaderboard_columns_are_the_aggregate_columns():
    assert tuple(first_column("## Leaderboard tables")) == LEADERBOARD_COLUMNS


def test_variant_example_has_the_variant_keys():
    example = DOC.split("## Protocol variants", 1)[1].split("```\n", 2)[1]
    assert [part.split("=")[0] for part in example.split()] == [*VARIANT_KEYS, "pseudolabels"]


def test_leaderboard_readme_links_resolve_from_any_output_folder(tmp_path):
    published = tmp_path / "published.csv"
    published.write_text("suite_method\n")
    for out in (tmp_path / "boards", tmp_path / "a" / "b" / "boards"):
        links = LINK.findall(readme_head(out, published))
        assert len(links) == 2
        targets = {(out / link).resolve() for link in links}
        assert targets == {published.resolve(), RESULTS_GUIDE.resolve()}


def test_committed_leaderboard_readmes_have_the_current_head():
    """The committed READMEs are generated; their preamble must be what the renderer writes today."""
    for readme in (REPO / "leaderboards").rglob("README.md"):
        head = readme_head(readme.parent, REPO / "leaderboards" / "published.csv")
        assert readme.read_text(encoding="utf-8").startswith(head), readme.relative_to(REPO)


def test_licence_and_citation_agree_with_the_package():
    pyproject = (REPO / "pyproject.toml").read_text(
        encoding="utf-8"
    )  # no tomllib: the package supports Python 3.10
    version = re.search(r'^version = "([^"]+)"', pyproject, flags=re.M).group(1)
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert 'license = { text = "Apache-2.0" }' in pyproject
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert (citation["version"], citation["license"]) == (version, "Apache-2.0")
    assert {"message", "title", "authors", "type"} <= set(citation)

"""``fsmis-bench leaderboard``: results store -> ``<out>/<dataset>_setting<S>_<K>shot.{csv,png}`` and
``<out>/README.md``, with the published counterparts of the reproduced methods beside them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fsmis_bench.leaderboard.aggregate import TABLE_KEYS, load_results, reproduced_entries, sort_entries
from fsmis_bench.leaderboard.plots import write_plot
from fsmis_bench.leaderboard.published import load_published, published_entries
from fsmis_bench.leaderboard.render import entry_groups, table_name, table_title, write_csv, write_readme


def build_leaderboards(
    results: str | Sequence[str], out: str, published: str, allow_mixed: bool = False
) -> list[Path]:
    """Write every table of the results in ``results`` (one store or several) into ``out``; returns the paths."""
    reproduced = reproduced_entries(load_results(results), allow_mixed)
    published_rows = load_published(published)
    if not published_rows:
        print(f"fsmis-bench: note: {published} not found, no published numbers joined", file=sys.stderr)
    out_dir = Path(out)
    tables = {}
    written = []
    for values in sorted({tuple(row[k] for k in TABLE_KEYS) for row in reproduced}):
        table = dict(zip(TABLE_KEYS, values))
        rows = [row for row in reproduced if tuple(row[k] for k in TABLE_KEYS) == values]
        methods = {row["suite_method"] for row in rows}
        rows = sort_entries(rows + published_entries(published_rows, table, methods))
        name, title = table_name(table), table_title(table)
        tables[name] = (title, rows)
        write_csv(out_dir / f"{name}.csv", rows)
        write_plot(out_dir / f"{name}.png", f"{title}: Dice per organ", entry_groups(rows))
        written += [out_dir / f"{name}.csv", out_dir / f"{name}.png"]
    write_readme(out_dir / "README.md", tables, Path(published))
    return [*written, out_dir / "README.md"]

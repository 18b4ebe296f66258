"""Published numbers beside the reproduced ones: ``leaderboards/published.csv``, the literature's numbers for the
suite's methods (with source, evidence level and protocol lineage), and the column ``suite_method`` naming the
fsmis-bench method each published row is the counterpart of.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fsmis_bench.errors import ConfigError

REQUIRED = {
    "suite_method",
    "method",
    "dataset",
    "setting",
    "shots",
    "organ",
    "dsc",
    "source",
    "evidence_level",
}
REQUIRED |= {"protocol_lineage"}


def load_published(path: str | Path) -> list[dict[str, str]]:
    """The published rows (an empty list when ``path`` does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = REQUIRED - set(rows[0] if rows else REQUIRED)
    if missing:
        raise ConfigError(f"{path}: missing column(s) {sorted(missing)}")
    return rows


def published_entries(
    published: list[dict[str, str]], table: dict[str, Any], methods: set[str]
) -> list[dict[str, Any]]:
    """Leaderboard rows for the published counterparts of ``methods`` in one table (its dataset,
    source_dataset, setting and shots). A published row whose setting is ``unspecified`` is shown in both
    settings' tables, labelled as such; the cross-domain track has no published counterparts.
    """
    if table["source_dataset"]:
        return []
    out = []
    for row in published:
        same = row["dataset"] == table["dataset"] and int(row["shots"]) == table["shots"]
        if row["suite_method"] not in methods or not same:
            continue
        if row["setting"] not in (table["setting"], "unspecified"):
            continue
        protocol = f"lineage={row['protocol_lineage']}"
        if row["setting"] == "unspecified":
            protocol += " setting=unspecified"
        out.append(
            {
                **table,
                "entry": "published",
                "method": row["method"],
                "suite_method": row["suite_method"],
                "protocol": protocol,
                "organ": row["organ"],
                "dice": float(row["dsc"]),
                "evidence_level": row["evidence_level"],
                "source": row["source"],
            }
        )
    return out

"""The table ``fsmis-bench run`` prints at its end: per-organ Dice and HD95 of the run, beside the reference
floors' Dice of the same fold when they ran into the same output folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fsmis_bench.registry import METHODS

FLOORS = tuple(name for name, entry in METHODS.items() if entry.reference)


def _cell(value: float | None, scale: float = 100.0) -> str:
    return "—" if value is None or math.isnan(value) else f"{scale * value:.2f}"


#: Summary fields that make two runs the same task (a floor of any profile and seed stands beside the run).
SAME_TASK = ("dataset", "source_dataset", "setting", "fold", "shots")


def floor_summaries(summary: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """The floors' summaries of the same task beside ``run_dir``, the same seed preferred."""
    found = {}
    for floor in FLOORS:
        if floor == summary["method"]:
            continue
        matches = []
        for path in sorted(run_dir.parent.glob(f"{floor}_*/summary.json")):
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a floor's unreadable summary only drops its column
            if all(other.get(key) == summary.get(key) for key in SAME_TASK):
                matches.append(other)
        if matches:
            found[floor] = next((m for m in matches if m["seed"] == summary["seed"]), matches[0])
    return found


def format_run_table(summary: dict[str, Any], run_dir: Path) -> str:
    """Rows per organ and the mean: the run's Dice % and HD95 mm, then each floor's Dice %."""
    floors = floor_summaries(summary, run_dir)
    header = ["organ", "Dice %", "HD95 mm", *(f"{name} Dice %" for name in floors)]
    rows = [header]
    for organ in summary["dice"]:
        hd95 = (summary.get("hd95") or {}).get(organ)
        row = [organ, _cell(summary["dice"][organ]), _cell(hd95, 1.0)]
        row += [_cell(floor["dice"].get(organ)) for floor in floors.values()]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

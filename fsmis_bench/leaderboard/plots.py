"""Per-organ Dice by method, one PNG per table: bars for reproduced (solid, ± std over folds), reference
(grey, dotted) and published (hatched, the colour of their reproduced counterpart) entries. Agg canvas, matplotlib's default style and no PNG metadata, so the
same rows give byte-identical files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.runner.store import write_atomic

HATCH = {"reproduced": "", "reference": "..", "published": "//"}


def write_plot(path: Path, title: str, entries: list[list[dict[str, Any]]]) -> None:
    """``entries``: the rows of each entry (one row per organ), in legend order."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    organs = (*ORGANS, "mean")
    width = 0.8 / max(len(entries), 1)
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(10, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        learned = list(
            dict.fromkeys(rows[0]["suite_method"] for rows in entries if rows[0]["entry"] != "reference")
        )
        floors = list(
            dict.fromkeys(rows[0]["suite_method"] for rows in entries if rows[0]["entry"] == "reference")
        )
        colors = {method: cycle[i % len(cycle)] for i, method in enumerate(learned)}
        colors |= {method: str(0.55 + 0.3 * i / max(len(floors), 1)) for i, method in enumerate(floors)}
        for i, rows in enumerate(entries):
            by_organ = {row["organ"]: row for row in rows}
            kind = rows[0]["entry"]
            x = [
                j + (i - (len(entries) - 1) / 2) * width
                for j, organ in enumerate(organs)
                if organ in by_organ
            ]
            dice = [by_organ[o]["dice"] for o in organs if o in by_organ]
            std = [by_organ[o].get("dice_std") or 0.0 for o in organs if o in by_organ]
            axes.bar(
                x,
                dice,
                width,
                yerr=None if kind == "published" else [s if s == s else 0.0 for s in std],  # NaN: one fold
                label=f"{rows[0]['method']} ({kind})",
                color=colors[rows[0]["suite_method"]],
                alpha=0.55 if kind == "published" else 1.0,
                hatch=HATCH[kind],
                edgecolor="black",
                linewidth=0.5,
                capsize=2,
            )
        axes.set_xticks(range(len(organs)), ["liver", "spleen", "kidney L", "kidney R", "Mean"])
        axes.set_ylim(0, 100)
        axes.set_ylabel("Dice (%)")
        axes.set_title(title)
        axes.grid(axis="y", linewidth=0.3)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    write_atomic(path, buffer.getvalue())

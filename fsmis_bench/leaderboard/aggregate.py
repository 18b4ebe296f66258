"""Leaderboard aggregation: result rows -> one entry per (method, protocol variant) of each
(dataset, source dataset, setting, shots) table, with the protocol's aggregation (``fsmis_bench.metrics.aggregate``).

Per seed: the NaN-skipping mean over folds per organ and the Mean of the four organs (``summarize_folds``),
and the sample standard deviation over folds of the per-fold values; then the average over seeds (seeds last,
protocol §7.1). Rows of different protocol variants are never pooled: they are different entries. Rows of one
entry with different fingerprints or profiles are refused unless ``allow_mixed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.errors import DataError, FsmisError
from fsmis_bench.metrics.aggregate import summarize_cases, summarize_folds
from fsmis_bench.runner.store import ResultsStore

TABLE_KEYS = ("dataset", "source_dataset", "setting", "shots")
ENTRY_KEYS = ("method", "protocol")
COLUMNS = (
    "dataset", "source_dataset", "setting", "shots", "entry", "method", "suite_method", "protocol", "organ", "dice", "dice_std",
    "hd95", "n_folds", "n_seeds", "n_cases", "profile", "budget", "job_minutes", "fingerprint", "evidence_level",
    "source",
)  # fmt: skip
#: Result columns read as numbers (a value that is not one is an error naming its row).
NUMBER_COLUMNS = {
    "fold": int,
    "shots": int,
    "seed": int,
    "valid_cases": int,
    "dice": float,
    "hd95": float,
    "seconds": float,
}
ENTRY_RANK = {"reproduced": 0, "reference": 0, "published": 1}
ORGAN_RANK = {organ: rank for rank, organ in enumerate((*ORGANS, "mean"))}


class MixedResultsError(FsmisError):
    """One leaderboard entry would pool results of different fingerprints or profiles."""


def load_results(results_dirs: str | Sequence[str]) -> pd.DataFrame:
    """The ``ok`` rows of one or several results stores (e.g. separate campaigns), typed."""
    rows = []
    for results_dir in [results_dirs] if isinstance(results_dirs, str) else results_dirs:
        store = ResultsStore(results_dir)
        ok = [row for row in store.rows() if row["status"] == "ok"]
        if not ok:
            raise FsmisError(
                f"{store.path}: no ok results (run `fsmis-bench sweep SPEC --results {results_dir}`)"
            )
        rows += [_typed(row, store.path) for row in ok]
    frame = pd.DataFrame(rows)  # setting stays a string: 1, 2 or cross
    frame["reference"] = frame["reference"] == "true"
    return frame


def _typed(row: dict[str, str], path: Path) -> dict[str, Any]:
    """The row with its number columns as numbers; a cell that is not one is a DataError naming it."""
    typed: dict[str, Any] = dict(row)
    for column, kind in NUMBER_COLUMNS.items():
        try:
            typed[column] = kind(row[column])
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise DataError(
                f"{path}: row of job {row['key']} ({row['organ']}): {column}={row[column]!r} is not {what}"
            ) from None
    return typed


def _check_uniform(rows: pd.DataFrame, where: str, allow_mixed: bool) -> None:
    for column in ("fingerprint", "profile"):
        values = sorted(rows[column].unique())
        if len(values) > 1 and not allow_mixed:
            detail = "; ".join(
                f"{value} (folds {sorted(set(rows.loc[rows[column] == value, 'fold']))})" for value in values
            )
            raise MixedResultsError(
                f"{where} mixes {column}s: {detail}. Rerun the stale jobs (fsmis-bench sweep SPEC --resume), "
                "keep the campaigns in separate --results folders, or pass --allow-mixed"
            )


def _entry_values(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """organ (and "mean") -> dice, dice_std, hd95, averaged over seeds."""
    per_seed = []
    for _, seed_rows in rows.groupby("seed"):
        folds = pd.DataFrame(
            [summarize_cases(fold_rows, "dice") for _, fold_rows in seed_rows.groupby("fold")]
        )
        per_seed.append(
            pd.DataFrame(
                {
                    "dice": summarize_folds(seed_rows, "dice"),
                    "dice_std": folds.std(ddof=1),
                    "hd95": summarize_folds(seed_rows, "hd95"),
                }
            )
        )
    return pd.concat(per_seed).groupby(level=0).mean().to_dict(orient="index")


def reproduced_entries(frame: pd.DataFrame, allow_mixed: bool = False) -> list[dict[str, Any]]:
    """One leaderboard row per (table, method, protocol variant, organ) of the reproduced results."""
    out = []
    for keys, rows in frame.groupby(list(TABLE_KEYS + ENTRY_KEYS), sort=True):
        dataset, source, setting, shots, method, protocol = keys
        data = f"{source} -> {dataset}" if source else dataset
        _check_uniform(rows, f"{method} on {data} setting {setting} {shots}-shot ({protocol})", allow_mixed)
        values = _entry_values(rows)
        common = {
            "dataset": dataset,
            "source_dataset": source,
            "setting": setting,
            "shots": shots,
            "entry": "reference" if rows["reference"].all() else "reproduced",
            "method": method,
            "suite_method": method,
            "protocol": protocol,
            "n_folds": rows["fold"].nunique(),
            "n_seeds": rows["seed"].nunique(),
            # the budget as spent: mean wall time of the entry's jobs (training and testing every model)
            "job_minutes": rows.drop_duplicates("key")["seconds"].mean() / 60,
            **{c: "+".join(sorted(rows[c].unique())) for c in ("profile", "budget", "fingerprint")},
        }
        for organ in (*ORGANS, "mean"):
            cases = (
                rows["valid_cases"] if organ == "mean" else rows.loc[rows["organ"] == organ, "valid_cases"]
            )
            v = values[organ]
            out.append(
                {
                    **common,
                    "organ": organ,
                    "dice": 100 * v["dice"],
                    "dice_std": 100 * v["dice_std"],
                    "hd95": v["hd95"],
                    "n_cases": int(cases.sum()),
                }
            )
    return out


def sort_entries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Learned methods first, each followed by its published counterparts, then the reference floors."""

    def order(row: dict[str, Any]) -> tuple:
        floor = row["entry"] == "reference"
        rank = (ENTRY_RANK[row["entry"]], row["method"], row["protocol"], ORGAN_RANK[row["organ"]])
        return (floor, row["suite_method"], *rank)

    return sorted(rows, key=order)

"""Aggregation of case rows (protocol §7.1): per volume -> per fold -> over folds -> Mean over organs."""

from __future__ import annotations

import math

import pandas as pd

from fsmis_bench.data.datasets import ORGANS


def summarize_cases(cases: pd.DataFrame, metric: str = "dice") -> dict[str, float]:
    """NaN-skipping mean over query volumes per organ, then the Mean of the four organ values.

    ``cases`` holds one fold's rows (columns ``organ`` and ``metric``). An organ with no valid case is NaN,
    and so is the Mean then: a missing organ must not silently raise or lower the Mean.
    """
    out: dict[str, float] = {}
    for organ in ORGANS:
        values = cases.loc[cases["organ"] == organ, metric].astype(float).dropna()
        out[organ] = float(values.mean()) if len(values) else math.nan
    organ_values = [out[o] for o in ORGANS]
    out["mean"] = math.nan if any(math.isnan(v) for v in organ_values) else sum(organ_values) / len(ORGANS)
    return out


def valid_counts(cases: pd.DataFrame, metric: str = "dice") -> dict[str, int]:
    """Number of non-NaN cases per organ, reported beside every NaN-skipping mean."""
    return {o: int(cases.loc[cases["organ"] == o, metric].notna().sum()) for o in ORGANS}


def summarize_folds(cases: pd.DataFrame, metric: str = "dice") -> dict[str, float]:
    """Per-fold summaries, then the mean over folds per organ and the Mean over organs.

    ``cases`` must have a ``fold`` column. With the alpnet folds (equal size) this equals the mean over all
    query volumes.
    """
    per_fold = pd.DataFrame([summarize_cases(group, metric) for _, group in cases.groupby("fold")])
    out = {o: float(per_fold[o].mean()) for o in ORGANS}
    organ_values = [out[o] for o in ORGANS]
    out["mean"] = math.nan if any(math.isnan(v) for v in organ_values) else sum(organ_values) / len(ORGANS)
    return out

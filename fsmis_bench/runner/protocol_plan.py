"""``fsmis-bench protocol``: the fold's scans and the setting's exclusion counts, as a plain dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsmis_bench.data.cache import SliceCache, default_cache_dir
from fsmis_bench.data.datasets import LABEL_GROUPS, get_dataset
from fsmis_bench.data.sources import locate_dataset
from fsmis_bench.protocol.settings import allowed_slices, excluded_labels
from fsmis_bench.protocol.splits import fold_plan


def protocol_plan(
    dataset: str,
    fold: int,
    setting: int,
    data_root: str | None = None,
    shots: int = 1,
    fold_scheme: str = "alpnet",
    support_index: int = -1,
    exclusion_rule: str = "group_any",
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Support / query / training ids and, per label group, the training slices kept after exclusion."""
    spec = get_dataset(dataset)
    plan = fold_plan(spec.scan_ids, fold, shots, fold_scheme, support_index)
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    layout_dir = locate_dataset(spec, data_root, cache_root)
    cache = SliceCache(spec, layout_dir, image_size=256, cache_dir=cache_root)
    scans = [cache.load(s) for s in plan.train_ids]
    groups: dict[str, Any] = {}
    for group in LABEL_GROUPS:
        excluded = excluded_labels(spec, setting, group, exclusion_rule)
        kept = sum(
            int(allowed_slices(s.class_slices, excluded, exclusion_rule, n_slices=s.depth).sum())
            for s in scans
        )
        groups[group] = {"excluded_labels": list(excluded), "kept_slices": kept}
    return {
        "dataset": spec.name,
        "fold": fold,
        "setting": setting,
        "shots": shots,
        "fold_scheme": fold_scheme,
        "exclusion_rule": exclusion_rule,
        "support_ids": list(plan.support_ids),
        "query_ids": list(plan.query_ids),
        "train_ids": list(plan.train_ids),
        "training_slices_total": sum(s.depth for s in scans),
        "groups": groups,
    }

"""``fsmis-bench protocol``: a fold's scans, the setting's exclusions and every EP1 test case (its chunks and the
support slice of each), read from the label volumes alone: nothing is written to the slice cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsmis_bench.data.cache import class_index, default_cache_dir
from fsmis_bench.data.datasets import LABEL_GROUPS, ORGANS, get_dataset
from fsmis_bench.data.sources import locate_dataset
from fsmis_bench.data.volumes import read_volume
from fsmis_bench.protocol.evaluation import plan_queries
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
    """Support / query / training ids, per label group the training slices kept after exclusion, and the EP1
    test cases: per (query scan, organ) the slab, its chunks and each chunk's support slices."""
    spec = get_dataset(dataset)
    plan = fold_plan(spec.scan_ids, fold, shots, fold_scheme, support_index)
    layout_dir = locate_dataset(spec, data_root, Path(cache_dir) if cache_dir else default_cache_dir())
    slices, depths = {}, {}
    for scan_id in sorted({*plan.train_ids, *plan.support_ids, *plan.query_ids}):
        label = read_volume(spec, layout_dir, scan_id).label
        slices[scan_id], depths[scan_id] = class_index(label)[0], label.shape[0]
    groups: dict[str, Any] = {}
    for group in LABEL_GROUPS:
        excluded = excluded_labels(spec, setting, group, exclusion_rule)
        kept = sum(
            int(allowed_slices(slices[s], excluded, exclusion_rule, n_slices=depths[s]).sum())
            for s in plan.train_ids
        )
        groups[group] = {"excluded_labels": list(excluded), "kept_slices": kept}
    organs = {o: spec.organ_label[o] for o in ORGANS}
    tasks, skipped = plan_queries(slices, plan.support_ids, plan.query_ids, organs, depths)
    cases = []
    for task in tasks:
        chunks = []
        for chunk, supports in enumerate(task.supports):
            members = [z for z, c in zip(task.slices, task.chunk_of_slice) if c == chunk]
            span = [members[0], members[-1]] if members else []
            chunks.append({"slices": span, "supports": [list(s) for s in supports]})
        cases.append({"scan_id": task.scan_id, "organ": task.organ, "chunks": chunks})
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
        "training_slices_total": sum(depths[s] for s in plan.train_ids),
        "groups": groups,
        "ep1_cases": cases,
        "skipped_cases": [{"scan_id": s, "organ": o, "reason": "organ absent"} for s, o in skipped],
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a few lines and a table of EP1 cases (chunk: first-last query slice <- support scan:slice)."""
    lines = [
        f"{plan['dataset']}, fold {plan['fold']}, setting {plan['setting']}, {plan['shots']} shot(s) "
        f"({plan['fold_scheme']} folds, exclusion rule {plan['exclusion_rule']})",
        f"support scans: {', '.join(map(str, plan['support_ids']))}   "
        f"query scans: {', '.join(map(str, plan['query_ids']))}",
        f"training scans ({len(plan['train_ids'])}): {', '.join(map(str, plan['train_ids']))}; "
        f"{plan['training_slices_total']} slices",
    ]
    for group, info in plan["groups"].items():
        excluded = ", ".join(map(str, info["excluded_labels"])) or "none"
        lines.append(
            f"  model for the {group} group: {info['kept_slices']} slices kept (labels excluded: {excluded})"
        )
    lines += ["", "EP1 test cases (chunk: query slices first-last <- support scan:slice)", ""]
    rows = [["scan", "organ", *(f"chunk {i + 1}" for i in range(3))]]
    for case in plan["ep1_cases"]:
        cells = [
            ("{}-{}".format(*c["slices"]) if c["slices"] else "none")
            + " <- "
            + " ".join(f"{s}:{z}" for s, z in c["supports"])
            for c in case["chunks"]
        ]
        rows.append([str(case["scan_id"]), case["organ"], *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"skipped: scan {c['scan_id']} {c['organ']} ({c['reason']})" for c in plan["skipped_cases"]]
    return "\n".join(lines)

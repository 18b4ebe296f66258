"""A run's prior stage: the model section pointed at the in-domain prior of the model being trained."""

from __future__ import annotations

import time
from typing import Any


def model_with_prior(
    request: Any, config: dict[str, Any], group: str | None, label: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model section pointed at this model's in-domain prior (trained now if its key is new)."""
    from fsmis_bench.prior import PriorConfig, prepare_prior, with_prior

    began = time.perf_counter()
    folder, record = prepare_prior(
        config["prior"],
        dataset=request.dataset,
        fold=request.fold,
        setting=request.setting,
        group=group,
        seed=request.seed,
        shots=request.shots,
        data_root=request.data_root,
        cache_dir=request.cache_dir,
        source_dataset=request.source_dataset,
        source_data_root=request.source_data_root,
        data_options=config.get("data"),
    )
    state = "trained" if record["trained_in_this_run"] else "reused"
    print(f"[{label}] prior {state} in {time.perf_counter() - began:.1f} s: {folder}", flush=True)
    target = PriorConfig.from_section(config["prior"]).target
    return with_prior(config["model"], target, folder), record

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
        config["prior"], group=group, data_options=config.get("data"), **request.task()
    )
    state = "trained" if record["trained_in_this_run"] else "reused"
    print(f"[{label}] prior {state} in {time.perf_counter() - began:.1f} s: {folder}", flush=True)
    target = PriorConfig.from_section(config["prior"]).target
    return with_prior(config["model"], target, folder), record

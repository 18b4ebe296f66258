"""The prior stage of a run: the profile's ``prior`` section, for the model being trained (fold, setting,
group), gives a cached prior folder, which is written into the method option the section names."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fsmis_bench.data.cache import default_cache_dir
from fsmis_bench.errors import ConfigError
from fsmis_bench.prior.config import PriorConfig
from fsmis_bench.prior.slices import collect_prior_slices
from fsmis_bench.prior.store import PriorKey, obtain_prior, summary_of


def prepare_prior(
    section: dict[str, Any],
    *,
    dataset: str,
    fold: int,
    setting: int,
    group: str | None,
    seed: int,
    cache_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    **where: Any,
) -> tuple[Path, dict[str, Any]]:
    """(prior folder, what the run records of it), training the prior first when its key is new. ``where``:
    the run's other task arguments (shots, data_root, source_dataset, source_data_root)."""
    cfg = PriorConfig.from_section(section)
    slices = collect_prior_slices(
        dataset, fold, setting, group, data_options, cache_dir=cache_dir, seed=seed, **where
    )
    key = PriorKey.of(slices, cfg, dataset, fold, setting, group, seed, where.get("source_dataset"))
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    folder, record, trained_now = obtain_prior(key, slices, cfg, cache)
    return folder, summary_of(folder, record, trained_now)


def with_prior(model_config: dict[str, Any], target: str, folder: Path) -> dict[str, Any]:
    """A copy of the ``model`` section with ``init_args.<target>`` (dotted) set to the prior's folder."""
    config = copy.deepcopy(model_config)
    node = config.setdefault("init_args", {})
    *parents, leaf = target.split(".")
    for name in parents:
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"prior.target {target!r}: model.init_args.{name} is not a mapping")
        node = child
    node[leaf] = str(folder)
    return config

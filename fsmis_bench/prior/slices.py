"""The unlabeled slices a prior may learn from: the protocol's training pool for one (dataset, fold, setting,
group), never a slice of the fold's support or query scans, and in setting 2 only the slices the group's
exclusion keeps. Labels decide that exclusion (as for every method's training) and are never a target.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fsmis_bench.datamodule import FewShotDataModule
from fsmis_bench.errors import ConfigError, DataError

#: Data options of a run's profile that change what the prior sees.
PRIOR_DATA_KEYS = (
    "image_size",
    "normalisation",
    "fold_scheme",
    "support_index",
    "exclusion_rule",
    "superpixel_compat",
)


@dataclass
class PriorSlices:
    """Training slices of one prior, in [0, 1], with their superpixels (label-free masks) and where they came from."""

    images: Tensor  # float32 [N, r, r]
    superpixels: np.ndarray  # int32 [N, r, r]
    labels: np.ndarray  # uint8 [N, r, r]: only for the codec's organ-mask round trip, never a training target
    organ_labels: dict[str, int]  # organ name -> label id in ``labels``
    slices: list[tuple[int, int]]  # (scan id, slice index) of each image
    held_out: list[int]  # the fold's support and query scans, which the prior never sees
    dataset: str  # where the slices come from (the source dataset on the cross-domain track)
    modality: str
    data_options: dict[str, Any] = field(default_factory=dict)  # the run's options that shape the slices

    def digest(self) -> str:
        payload = {"dataset": self.dataset, "options": self.data_options, "slices": self.slices}
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]

    def record(self) -> dict[str, Any]:
        scans = sorted({scan for scan, _ in self.slices})
        return {
            "dataset": self.dataset,
            "scans": scans,
            "n_slices": len(self.slices),
            "held_out": self.held_out,
        }


def collect_prior_slices(
    dataset: str,
    fold: int,
    setting: int = 1,
    group: str | None = None,
    data_options: dict[str, Any] | None = None,
    **where: Any,
) -> PriorSlices:
    """Every allowed training slice of the fold, from the same slice cache and normalisation as the run.
    ``where``: the data module's other task arguments (shots, data_root, cache_dir, source_dataset, ...)."""
    options = {k: v for k, v in (data_options or {}).items() if k in PRIOR_DATA_KEYS}
    module = FewShotDataModule(
        dataset=dataset,
        fold=fold,
        setting=setting,
        group=group,
        pseudolabels="superpix2d",
        **where,
        **options,
    )
    if module.resolved_normalisation != "volume_minmax":
        raise ConfigError(
            f"a prior needs data.normalisation volume_minmax (images in [0, 1], as Stable Diffusion's), "
            f"not {module.resolved_normalisation}"
        )
    module.setup()
    held_out = sorted(set(module.plan.support_ids) | set(module.plan.query_ids))
    images, superpixels, labels, slices = [], [], [], []
    for scan in module.training_scans():
        if (
            module.source_spec is None and scan.scan_id in held_out
        ):  # the fold plan guarantees it; checked anyway
            raise DataError(f"prior for fold {fold}: training scan {scan.scan_id} is a support or query scan")
        kept = np.flatnonzero(scan.allowed)
        images.append(scan.image[torch.from_numpy(kept)])
        superpixels.append(scan.superpixels[kept])  # type: ignore[index]
        labels.append(scan.label[kept])
        slices += [(scan.scan_id, int(z)) for z in kept]
    if not slices:
        raise DataError(f"prior for {dataset} fold {fold} setting {setting}: no training slice survives")
    spec = module.source_spec or module.spec
    return PriorSlices(
        images=torch.cat(images),
        superpixels=np.concatenate(superpixels),
        labels=np.concatenate(labels),
        organ_labels=dict(spec.organ_label),
        slices=slices,
        held_out=held_out,
        dataset=spec.name,
        modality=spec.modality,
        data_options={"normalisation": module.resolved_normalisation, **options},
    )

"""Settings 1 and 2: label groups, training-slice exclusion and training classes (protocol §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fsmis_bench.data.datasets import LABEL_GROUPS, ORGANS, DatasetSpec
from fsmis_bench.errors import ConfigError

EXCLUSION_RULES = ("group_any", "all_and", "all_any")
PSEUDOLABEL_SOURCES = ("superpix2d", "gt")


def model_groups(setting: int, pseudolabels: str, exclusion_rule: str = "group_any") -> list[str | None]:
    """The models trained per fold, each named by the organ group it tests (``None`` = all four organs).

    Self-supervised methods need one model in setting 1; setting 2 (group_any) needs one per group. A method
    trained on ground-truth labels must never see its test organs as a class, so it needs one model per
    group in setting 1 too (§4.4). The single-model qnet rules test all four organs with one model.
    """
    if setting not in (1, 2):
        raise ConfigError(f"--setting {setting}: must be 1 or 2")
    if exclusion_rule not in EXCLUSION_RULES:
        raise ConfigError(f"unknown exclusion_rule '{exclusion_rule}' (known: {', '.join(EXCLUSION_RULES)})")
    if pseudolabels not in PSEUDOLABEL_SOURCES:
        raise ConfigError(f"unknown pseudolabels '{pseudolabels}' (known: {', '.join(PSEUDOLABEL_SOURCES)})")
    if setting == 2 and exclusion_rule != "group_any":
        if pseudolabels == "gt":
            raise ConfigError(f"exclusion_rule {exclusion_rule} leaves no ground-truth training class")
        return [None]
    if setting == 1 and pseudolabels != "gt":
        return [None]
    return ["lower", "upper"]


def organs_of(group: str | None) -> tuple[str, ...]:
    """Organs tested by the model of ``group``."""
    return ORGANS if group is None else LABEL_GROUPS[group]


def excluded_labels(
    spec: DatasetSpec, setting: int, group: str | None, exclusion_rule: str
) -> tuple[int, ...]:
    """Label ids whose presence removes a training slice (empty in setting 1)."""
    if setting == 1:
        return ()
    if exclusion_rule == "group_any":
        if group is None:
            raise ConfigError("setting 2 with exclusion_rule group_any needs a tested group")
        return spec.group_labels(group)
    return tuple(spec.organ_label[o] for o in ORGANS)


def allowed_slices(
    slice_labels: Mapping[int, Sequence[int]] | np.ndarray,
    excluded: Sequence[int],
    rule: str,
    n_slices: int | None = None,
) -> np.ndarray:
    """Boolean mask over the slices of one scan that the training sampler may draw.

    ``slice_labels`` is the scan's class-slice index (label id -> slice indices with >= 1 pixel, §1.7), or a
    boolean (n_labels, n_slices) presence matrix aligned with ``excluded``. ``group_any``/``all_any`` drop a
    slice holding ANY excluded label; ``all_and`` reproduces the qnet-lineage bug and drops only slices
    holding ALL of them.
    """
    if isinstance(slice_labels, np.ndarray):
        presence = slice_labels.astype(bool)
    else:
        if n_slices is None:
            raise ValueError("n_slices is required with a class-slice index")
        presence = np.zeros((len(excluded), n_slices), dtype=bool)
        for row, label in enumerate(excluded):
            presence[row, list(slice_labels.get(int(label), []))] = True
    if len(excluded) == 0:
        return np.ones(presence.shape[1], dtype=bool)
    if rule in ("group_any", "all_any"):
        return ~presence.any(axis=0)
    if rule == "all_and":
        return ~presence.all(axis=0)
    raise ConfigError(f"unknown exclusion_rule '{rule}' (known: {', '.join(EXCLUSION_RULES)})")


def training_classes(spec: DatasetSpec, group: str | None) -> tuple[int, ...]:
    """Ground-truth classes a GT-trained model may use: every label of the dataset except the tested ones."""
    tested = {spec.organ_label[o] for o in organs_of(group)}
    return tuple(sorted(label for label in spec.label_names if label not in tested))

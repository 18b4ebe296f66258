"""Support control: does the support change the prediction?

A few-shot model should segment what the support mask points at. The control predicts every test case a second
time with the support mask mirrored left-right (same support image, same query): the mask then marks another
place, usually another structure. A model that follows its support loses Dice against the true organ; a model
that ignores it (it predicts the shapes it learnt in training, or follows a prompt) keeps the same Dice. The
control's Dice goes into ``cases.csv`` as ``dice_mirrored_support`` and into ``summary.json`` as a secondary
metric; the main number is never touched.

Turned on by the run config's ``evaluation`` section (``--set evaluation.support_control=mirror``); it doubles
the test time.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import lightning as L
import torch

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.errors import ConfigError
from fsmis_bench.metrics.overlap import confusion_counts, dice_from_counts

SUPPORT_CONTROLS = ("none", "mirror")
EVALUATION_KEYS = {"support_control"}
COLUMN = "dice_mirrored_support"


def support_control_of(config: dict[str, Any]) -> str:
    """The ``evaluation.support_control`` of a run config (``none`` when absent); ConfigError when invalid."""
    section = config.get("evaluation") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"evaluation: expected a mapping, got {section!r}")
    unknown = sorted(set(section) - EVALUATION_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown evaluation option(s) {unknown} (known: {', '.join(sorted(EVALUATION_KEYS))})"
        )
    control = str(section.get("support_control", "none"))
    if control not in SUPPORT_CONTROLS:
        raise ConfigError(
            f"evaluation.support_control={control!r}: expected one of {', '.join(SUPPORT_CONTROLS)}"
        )
    return control


def mirrored_support(batch: EpisodeBatch) -> EpisodeBatch:
    """The same episode with every support mask flipped left-right (images and queries unchanged)."""
    return replace(batch, support_masks=batch.support_masks.flip(-1))


class MirroredSupportControl(L.Callback):
    """After each test case, Dice of the prediction made from the mirrored support mask, per (scan, organ)."""

    def __init__(self) -> None:
        self.dice: dict[tuple[int, str], float] = {}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: EpisodeBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        with torch.no_grad():
            masks = pl_module.predict_masks(mirrored_support(batch)).cpu().numpy()
        counts = confusion_counts(masks, batch.meta["native_ref"])
        self.dice[(int(batch.meta["scan_id"]), batch.organ)] = dice_from_counts(*counts)

    def annotate(self, rows: list[dict[str, Any]]) -> None:
        """Add the control's Dice to the case rows of this model (NaN for a case it did not see)."""
        for row in rows:
            row[COLUMN] = self.dice.get((int(row["scan_id"]), row["organ"]), math.nan)

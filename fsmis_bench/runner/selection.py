"""Choose one value of a config key by training loss, reading no test scan.

With a ``selection`` section (``key``: a dotted config key, ``values``: two or more candidates, ``tail``: the
fraction of the last steps that is averaged, default 0.2) a run trains each model once per candidate value, from
the same seed (so each candidate is the model a run with that value alone trains), keeps the one whose mean
training loss over the last ``tail`` of its optimizer steps is lowest, and tests only that one. The choice is
made per model (per label group in setting 2). Why: a learning rate that suits one training pool can wreck a
fine-tuning on another (SD-FSMIS's setting-2 kidney model, its README), and the training loss is the one signal
a run may read. Every candidate's tail loss and the chosen value go into ``summary.json``; the rows carry the
deviation tag ``selected_by_train_loss(<key>)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from fsmis_bench.config import apply_overrides
from fsmis_bench.errors import ConfigError

SECTION = "selection"


@dataclass(frozen=True)
class Selection:
    """Which config key to choose and among which values."""

    key: str
    values: tuple[Any, ...]
    tail: float = 0.2

    @property
    def tag(self) -> str:
        return f"selected_by_train_loss({self.key})"

    def config_for(self, config: dict[str, Any], value: Any) -> dict[str, Any]:
        """``config`` with the key set to ``value`` and the selection section removed."""
        base = {k: v for k, v in config.items() if k != SECTION}
        return apply_overrides(base, [f"{self.key}={value!r}"])


def _lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"selection.key={key}: the profile has no such key ('{part}' is missing)")
        node = node[part]
    return node


def selection_of(config: dict[str, Any]) -> Selection | None:
    """The run's selection, validated (None without a ``selection`` section)."""
    section = config.get(SECTION)
    if not section:
        return None
    if not isinstance(section, dict) or set(section) - {"key", "values", "tail"}:
        raise ConfigError(f"selection: expected a mapping of key, values and tail, got {section!r}")
    key, values, tail = section.get("key"), section.get("values"), section.get("tail", 0.2)
    if not isinstance(key, str) or not key.startswith(("model.", "data.", "trainer.")):
        raise ConfigError(
            f"selection.key={key!r}: expected a dotted key of the model, data or trainer section"
        )
    _lookup(config, key)
    if not isinstance(values, list) or len(values) < 2 or len(set(map(repr, values))) != len(values):
        raise ConfigError(f"selection.values={values!r}: expected a list of two or more different values")
    if not isinstance(tail, int | float) or not 0 < tail <= 1:
        raise ConfigError(f"selection.tail={tail!r}: expected a fraction of the steps in (0, 1]")
    return Selection(key, tuple(values), float(tail))


class TrainLossTail(L.Callback):
    """The mean training loss (the value ``training_step`` returns) over the last ``tail`` of ``max_steps``."""

    def __init__(self, max_steps: int, tail: float) -> None:
        if not max_steps or max_steps < 1:
            raise ConfigError("selection needs trainer.max_steps (the tail is a fraction of the steps)")
        self.first_step = max_steps - max(1, math.ceil(tail * max_steps))
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and trainer.global_step > self.first_step:
            self.losses.append(float(loss.detach()))

    @property
    def value(self) -> float:
        if not self.losses:
            raise ConfigError(
                "selection: no training loss was recorded (does training_step return the loss?)"
            )
        return sum(self.losses) / len(self.losses)


def chosen(selection: Selection, tails: list[float]) -> int:
    """Index of the candidate with the lowest tail loss (the first on ties; NaN never wins)."""
    finite = [t if math.isfinite(t) else math.inf for t in tails]
    return finite.index(min(finite))


def selection_record(selection: Selection, tails: list[float], index: int) -> dict[str, Any]:
    """What summary.json records of one model's choice."""
    return {
        "key": selection.key,
        "tail": selection.tail,
        "candidates": [
            {"value": v, "train_loss_tail": round(t, 6)} for v, t in zip(selection.values, tails, strict=True)
        ],
        "chosen": selection.values[index],
    }

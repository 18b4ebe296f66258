"""Choose one optimisation setting by training loss, reading no test scan.

With a ``selection`` section (``key``: a dotted ``model.init_args`` key such as the learning rate, ``values``: two
or more candidates, ``tail``: the fraction of the last optimizer steps that is averaged, default 0.2) a run trains
each model once per candidate value, from the same seed (so each candidate is the model a run with that value
alone trains), keeps the one whose mean training loss over the last ``tail`` of its steps is lowest, and tests
only that one. The choice is made per model (per label group in setting 2). Why: a learning rate that suits one
training pool can wreck a fine-tuning on another (SD-FSMIS's setting-2 kidney model, its README), and the
training loss is the one signal a run may read. It compares like with like only where the loss and the training
data stay the same, hence model keys only, never the data or protocol; and a bigger model fits its training loss
better, so it is meant for optimisation settings. Every candidate's tail loss and the chosen value go into
``summary.json``; the rows carry the deviation tag ``selected_by_train_loss(<key>)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

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
        """A copy of ``config`` with the key set to ``value`` and the selection section removed."""
        out = copy.deepcopy({k: v for k, v in config.items() if k != SECTION})
        *parents, last = self.key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[last] = copy.deepcopy(value)
        return out


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
    if not isinstance(key, str) or not key.startswith("model.init_args."):
        raise ConfigError(
            f"selection.key={key!r}: expected a model.init_args key (an optimisation setting such as "
            "model.init_args.optimizer.lr); data and trainer keys would change what the loss is compared on"
        )
    _lookup(config, key)
    if not isinstance(values, list) or len(values) < 2 or len(set(map(repr, values))) != len(values):
        raise ConfigError(f"selection.values={values!r}: expected a list of two or more different values")
    if not isinstance(tail, int | float) or not 0 < tail <= 1:
        raise ConfigError(f"selection.tail={tail!r}: expected a fraction of the steps in (0, 1]")
    return Selection(key, tuple(values), float(tail))


class TrainLossTail(L.Callback):
    """The mean training loss (what ``training_step`` returns) over the last ``tail`` of the optimizer steps run.

    With gradient accumulation over A batches a step is A batches and Lightning hands back the loss divided by A,
    so each batch counts towards step ceil(batch / A) at A times the value handed back."""

    def __init__(self, tail: float) -> None:
        self.tail = tail
        self.batches = 0
        self.losses: list[tuple[int, float]] = []  # (optimizer step, loss)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.batches += 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            accumulate = int(trainer.accumulate_grad_batches)
            self.losses.append((math.ceil(self.batches / accumulate), float(loss.detach()) * accumulate))

    @property
    def value(self) -> float:
        if not self.losses:
            raise ConfigError(
                "selection: no training loss was recorded (does training_step return the loss?)"
            )
        last = self.losses[-1][0]
        first = last - max(1, math.ceil(self.tail * last))
        kept = [loss for step, loss in self.losses if step > first]
        return sum(kept) / len(kept)


def chosen(tails: list[float]) -> int:
    """Index of the candidate with the lowest tail loss (the first on ties; NaN never wins)."""
    finite = [t if math.isfinite(t) else math.inf for t in tails]
    return finite.index(min(finite))


def selection_record(selection: Selection, tails: list[float]) -> dict[str, Any]:
    """What summary.json records of one model's choice."""
    return {
        "key": selection.key,
        "tail": selection.tail,
        "candidates": [
            {"value": v, "train_loss_tail": round(t, 6)} for v, t in zip(selection.values, tails, strict=True)
        ],
        "chosen": selection.values[chosen(tails)],
    }

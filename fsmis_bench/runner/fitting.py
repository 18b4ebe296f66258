"""Fitting one model of a run: its data, its (prior-initialised) model, the Lightning Trainer with the run's
callbacks and determinism, and ``fit``; with a ``selection`` section, once per candidate value (selection.py)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from fsmis_bench.config import instantiate
from fsmis_bench.datamodule import FewShotDataModule
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.base import FewShotSegmenter
from fsmis_bench.runner.determinism import DeterminismPolicy
from fsmis_bench.runner.progress import progress_options
from fsmis_bench.runner.run_prior import model_with_prior
from fsmis_bench.runner.selection import TrainLossTail, chosen, selection_of, selection_record
from fsmis_bench.support_control import MirroredSupportControl, support_control_of

if TYPE_CHECKING:
    from fsmis_bench.runner.experiment import RunRequest


def loss_log_interval(max_steps: int | None) -> int:
    """Steps between logged training losses: about 50 points per fit, at least every 25 steps."""
    return min(25, max(1, int(max_steps or 0) // 50))


MATMUL_PRECISIONS = ("highest", "high", "medium")
#: Trainer-section keys that configure torch rather than the Lightning Trainer.
RUN_ONLY_TRAINER_KEYS = {"deterministic", "float32_matmul_precision"}


def matmul_precision(trainer_config: dict[str, Any]) -> str:
    """``trainer.float32_matmul_precision`` (torch's own names; default ``highest``): ``high`` lets CUDA fp32
    matrix products run in TF32, as the SD-FSMIS paper setup allows. CPU results do not change."""
    value = str(trainer_config.get("float32_matmul_precision", "highest"))
    if value not in MATMUL_PRECISIONS:
        raise ConfigError(
            f"trainer.float32_matmul_precision={value!r}: expected one of {', '.join(MATMUL_PRECISIONS)}"
        )
    return value


@dataclass
class FittedModel:
    """One trained model with its trainer (tested next, or dropped by a selection)."""

    model: FewShotSegmenter
    trainer: L.Trainer
    data: FewShotDataModule
    info: dict[str, Any]
    control: MirroredSupportControl | None
    loss_tail: TrainLossTail | None


def fit_once(
    request: RunRequest,
    config: dict[str, Any],
    group: str | None,
    run_dir: Path,
    policy: DeterminismPolicy,
    version: str,
    tail: float | None = None,
) -> FittedModel:
    L.seed_everything(request.seed, workers=True, verbose=False)
    data = FewShotDataModule(**request.task(), group=group, **(config.get("data") or {}))
    label = f"{request.method} fold {request.fold}" + (f" {group}" if group else "")
    prepared = time.perf_counter()
    data.setup()
    plan = data.plan
    print(
        f"[{label}] data ready in {time.perf_counter() - prepared:.1f} s: {request.dataset}, "
        f"{len(plan.train_ids)} training / {len(plan.support_ids)} support / {len(plan.query_ids)} query scans",
        flush=True,
    )
    info: dict[str, Any] = {"group": group or "all", "organs": list(data.organs)}
    model_config = config["model"]
    if config.get("prior"):
        model_config, info["prior"] = model_with_prior(request, config, group, label)
    model: FewShotSegmenter = instantiate(model_config)
    if not isinstance(model, FewShotSegmenter):
        raise ConfigError(f"{config['model']['class_path']} is not a FewShotSegmenter")
    trainer_config = config.get("trainer") or {}
    trainer_options = {k: v for k, v in trainer_config.items() if k not in RUN_ONLY_TRAINER_KEYS}
    control = MirroredSupportControl() if support_control_of(config) == "mirror" else None
    loss_tail = TrainLossTail(tail) if tail else None
    logger = TensorBoardLogger(str(run_dir), name="tensorboard", version=version, default_hp_metric=False)
    trainer = L.Trainer(
        accelerator=request.accelerator,
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=policy.deterministic,
        num_sanity_val_steps=0,
        inference_mode=not model.traits.test_time_training,
        **progress_options(label, extra_callbacks=[c for c in (control, loss_tail) if c]),
        **{"log_every_n_steps": loss_log_interval(trainer_options.get("max_steps")), **trainer_options},
    )
    policy.apply_env()
    if policy.device == "cuda":  # on CPU "high" may switch to bf16x3 kernels: CPU numbers stay exact
        info["float32_matmul_precision"] = matmul_precision(trainer_config)
        torch.set_float32_matmul_precision(info["float32_matmul_precision"])
    started = time.perf_counter()
    if model.traits.trainable:
        trainer.fit(model, datamodule=data)
        info["train_steps"] = int(trainer.global_step)
        info["final_loss"] = float(trainer.callback_metrics.get("train/loss", float("nan")))
        kept, total = data.kept_training_slices()
        info["training_slices_kept"], info["training_slices_total"] = kept, total
    info["train_seconds"] = round(time.perf_counter() - started, 2)
    return FittedModel(model, trainer, data, info, control, loss_tail)


def fit_model(
    request: RunRequest, config: dict[str, Any], group: str | None, run_dir: Path, policy: DeterminismPolicy
) -> FittedModel:
    """The model of ``group``: trained once, or once per candidate of the config's selection (selection.py),
    keeping the candidate of lowest training-loss tail."""
    version = group or "all"
    selection = selection_of(config)
    if selection is None:
        return fit_once(request, config, group, run_dir, policy, version)
    best, tails, seconds = None, [], 0.0
    for number, value in enumerate(selection.values):
        candidate = fit_once(
            request, selection.config_for(config, value), group, run_dir, policy, f"{version}-candidate{number}",
            selection.tail,
        )  # fmt: skip
        tails.append(candidate.loss_tail.value)
        seconds += candidate.info["train_seconds"]
        if chosen(tails) == number:
            best = candidate
        del candidate  # the others' models, optimizers and data go before the next candidate trains
        gc.collect()
    best.info["train_seconds"] = round(seconds, 2)  # every candidate's training
    best.info["selection"] = selection_record(selection, tails)
    return best

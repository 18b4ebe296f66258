"""One benchmark run: (method, dataset, setting, fold, shots, seed, profile) -> fit, test, write results.

The run directory appears only when the run has succeeded: everything is written into a hidden temporary
folder beside it and renamed at the end, so a failure never leaves a partial result behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from fsmis_bench.config import apply_overrides, config_hash, instantiate, load_yaml
from fsmis_bench.data.datasets import ORGANS, get_dataset
from fsmis_bench.datamodule import FewShotDataModule
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.base import FewShotSegmenter, MethodTraits
from fsmis_bench.metrics.aggregate import summarize_cases, valid_counts
from fsmis_bench.protocol.settings import model_groups
from fsmis_bench.protocol.splits import check_fold
from fsmis_bench.provenance import environment
from fsmis_bench.registry import get_method, profile_path
from fsmis_bench.runner.determinism import (
    DeterminismPolicy,
    check_accelerator,
    requested_determinism,
    resolve_determinism,
)
from fsmis_bench.runner.progress import progress_options
from fsmis_bench.runner.selection import TrainLossTail, chosen, selection_of, selection_record
from fsmis_bench.support_control import MirroredSupportControl, support_control_of

log = logging.getLogger(__name__)

#: Data options that a profile may set (the rest come from the run request).
PROFILE_DATA_KEYS = {
    "image_size", "batch_size", "pseudolabels", "augment", "fold_scheme", "support_index", "exclusion_rule",
    "eval_mode", "chunk_rule", "normalisation", "superpixel_compat", "min_gt_pixels", "num_workers", "prefetch",
}  # fmt: skip
TRAINER_KEYS = {
    "deterministic",  # true, false or warn; default per accelerator (determinism.py)
    "float32_matmul_precision",  # highest (torch's default), high (TF32 on CUDA) or medium
    "max_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "precision",
    "max_time",
    "log_every_n_steps",
    "limit_test_batches",  # checks only (make gpu-check): test the first N (query scan, organ) cases
}
CASE_COLUMNS = [
    "fold",
    "scan_id",
    "organ",
    "group",
    "tp",
    "fp",
    "fn",
    "n_ref",
    "n_pred",
    "dice",
    "hd95",
    "n_slices",
    "spacing",
]


@dataclass
class RunRequest:
    method: str
    fold: int
    dataset: str = "synthetic_mri"
    data_root: str | None = None
    setting: int = 1
    shots: int = 1
    profile: str = "cpu"
    seed: int = 0
    output: str = "runs"
    cache_dir: str | None = None
    overrides: list[str] = field(default_factory=list)
    accelerator: str = "auto"
    #: Cross-domain track: train on this dataset, test the fold of ``dataset`` (setting reported as "cross").
    source_dataset: str | None = None
    source_data_root: str | None = None
    #: A run folder's config.yaml whose resolved sections replace the profile (``run --config``).
    base_config: str | None = None

    @property
    def run_id(self) -> str:
        if self.source_dataset:
            data, setting = f"{self.source_dataset}-to-{self.dataset}", "cross"
        else:
            data, setting = self.dataset, f"s{self.setting}"
        return f"{self.method}_{data}_{setting}_f{self.fold}_k{self.shots}_seed{self.seed}_{self.profile}"


#: The training episodes the datamodule serves for each pseudolabel source (protocol §5.1, §5.3).
EPISODE_TYPES = {"superpix2d": "same_slice_two_augs", "gt": "gt_adjacent"}


def _run_traits(traits: MethodTraits, data_cfg: dict[str, Any]) -> dict[str, Any]:
    """The method's declared traits, with the training labels and episodes this run actually used."""
    pseudolabels = data_cfg.get("pseudolabels", traits.pseudolabels)
    episode_type = EPISODE_TYPES.get(pseudolabels, traits.episode_type) if traits.trainable else "none"
    return {**asdict(traits), "pseudolabels": pseudolabels, "episode_type": episode_type}


def resolve_config(request: RunRequest) -> dict[str, Any]:
    """The method's profile with overrides applied, validated against the known sections and keys."""
    get_dataset(request.dataset)  # raises ConfigError-compatible ValueError early
    check_fold(request.fold)
    if request.setting not in (1, 2):
        raise ConfigError(f"setting {request.setting!r}: expected 1 or 2")
    if not isinstance(request.shots, int) or request.shots < 1:
        raise ConfigError(f"shots {request.shots!r}: expected a whole number of support scans, at least 1")
    if request.source_dataset is not None:
        get_dataset(request.source_dataset)
        if request.source_dataset == request.dataset:
            raise ConfigError("--source-dataset must differ from --dataset (the cross-domain track)")
        if request.setting != 1:
            raise ConfigError("--source-dataset: the cross-domain track has no setting; drop --setting")
    base = (
        load_run_config(Path(request.base_config))
        if request.base_config
        else load_yaml(profile_path(request.method, request.profile))
    )
    config = apply_overrides(base, request.overrides)
    unknown = set(config) - {"model", "data", "trainer", "prior", "evaluation", "selection", "notes"}
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {sorted(unknown)} (known: model, data, trainer, prior, evaluation)"
        )
    for section, allowed in (("data", PROFILE_DATA_KEYS), ("trainer", TRAINER_KEYS)):
        bad = set(config.get(section) or {}) - allowed
        if bad:
            raise ConfigError(
                f"unknown {section} option(s) {sorted(bad)} (known: {', '.join(sorted(allowed))})"
            )
    requested_determinism(config.get("trainer") or {})
    matmul_precision(config.get("trainer") or {})
    support_control_of(config)
    selection_of(config)
    return config


def load_run_config(path: Path) -> dict[str, Any]:
    """The resolved sections (model, data, trainer) of a run folder's config.yaml."""
    document = load_yaml(path)
    if "model" not in document:
        raise ConfigError(f"{path}: not a run's config.yaml (no model section)")
    return {k: v for k, v in document.items() if k != "request"}


def run_config_document(request: RunRequest, config: dict[str, Any]) -> str:
    """What a run folder's config.yaml holds (and ``run --print-config`` prints): the request and the
    resolved configuration; ``run --config`` takes it back."""
    return yaml.safe_dump({"request": request.__dict__, **config}, sort_keys=False)


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


def fingerprint_payload(request: RunRequest, config: dict[str, Any]) -> dict[str, Any]:
    """What defines comparable results: everything but fold, seed and paths."""
    source = {"source_dataset": request.source_dataset} if request.source_dataset else {}
    return {
        **source,
        "method": request.method,
        "dataset": request.dataset,
        "setting": request.setting,
        "shots": request.shots,
        "profile": request.profile,
        "config": {k: v for k, v in config.items() if k != "notes"},
    }


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
    data = FewShotDataModule(
        dataset=request.dataset,
        data_root=request.data_root,
        fold=request.fold,
        setting=request.setting,
        shots=request.shots,
        group=group,
        seed=request.seed,
        cache_dir=request.cache_dir,
        source_dataset=request.source_dataset,
        source_data_root=request.source_data_root,
        **(config.get("data") or {}),
    )
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
        model_config, info["prior"] = _with_prior(request, config, group, label)
    model: FewShotSegmenter = instantiate(model_config)
    if not isinstance(model, FewShotSegmenter):
        raise ConfigError(f"{config['model']['class_path']} is not a FewShotSegmenter")
    trainer_config = config.get("trainer") or {}
    trainer_options = {k: v for k, v in trainer_config.items() if k not in RUN_ONLY_TRAINER_KEYS}
    control = MirroredSupportControl() if support_control_of(config) == "mirror" else None
    loss_tail = TrainLossTail(trainer_options.get("max_steps"), tail) if tail else None
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
    fits, tails = [], []
    for number, value in enumerate(selection.values):
        candidate = fit_once(
            request, selection.config_for(config, value), group, run_dir, policy, f"{version}-candidate{number}",
            selection.tail,
        )  # fmt: skip
        fits.append(candidate)
        tails.append(candidate.loss_tail.value)
    best = fits[chosen(selection, tails)]
    best.info["selection"] = selection_record(selection, tails, fits.index(best))
    best.info["train_seconds"] = round(sum(f.info["train_seconds"] for f in fits), 2)
    return best


def _train_and_test(
    request: RunRequest, config: dict[str, Any], group: str | None, run_dir: Path, policy: DeterminismPolicy
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    fitted = fit_model(request, config, group, run_dir, policy)
    model, data, info = fitted.model, fitted.data, fitted.info
    tested = time.perf_counter()
    fitted.trainer.test(model, datamodule=data, verbose=False)
    info["test_seconds"] = round(time.perf_counter() - tested, 2)
    info["skipped_cases"] = [
        {"scan_id": s, "organ": o, "reason": "organ absent from query"} for s, o in data.skipped
    ]
    info["protocol"] = data.describe()
    info["deviations"] = (
        model.deviations()
        + ([info["prior"]["tag"]] if "prior" in info else [])
        + ([selection_of(config).tag] if "selection" in info else [])
    )
    method_info = model.run_info()
    if method_info:
        info["method_info"] = method_info
    rows = [{"fold": request.fold, "group": group or "all", **r.as_row()} for r in model.case_results]
    if fitted.control is not None:
        fitted.control.annotate(rows)
    return rows, info


def _with_prior(
    request: RunRequest, config: dict[str, Any], group: str | None, label: str
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


def execute_run(request: RunRequest) -> Path:
    """Fit and test every model the setting needs; write summary.json, cases.csv, config.yaml, TensorBoard."""
    from fsmis_bench.runner.config_check import check_config

    entry = get_method(request.method)
    check_accelerator(request.accelerator)
    config = resolve_config(request)
    check_config(request.method, config)
    fingerprint = config_hash(fingerprint_payload(request, config))
    policy = resolve_determinism(request.accelerator, config)
    output = Path(request.output)
    final_dir = output / request.run_id
    tmp_dir = output / f".tmp-{request.run_id}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{output}: the output folder is an existing file")
    try:
        tmp_dir.mkdir(parents=True)
    except OSError as exc:  # not writable, read-only file system, a file on the way, ...
        raise ConfigError(f"{output}: cannot write into the output folder ({exc.strerror})") from None
    started = time.perf_counter()
    try:
        model_cls_traits = _traits_of(config)
        if model_cls_traits.test_time_training and support_control_of(config) != "none":
            raise ConfigError(
                f"evaluation.support_control: {request.method} fits weights on the support while testing, so a "
                "control predicted with those weights would not test the support; compare its "
                "dice_before_adaptation instead"
            )
        data_cfg = config.get("data") or {}
        groups = (
            model_groups(
                request.setting,
                data_cfg.get("pseudolabels", "superpix2d"),
                data_cfg.get("exclusion_rule", "group_any"),
            )
            if model_cls_traits.trainable and request.source_dataset is None
            else [None]  # untrained methods, and the cross-domain track's one model for all four organs
        )
        rows, models = [], []
        for group in groups:
            group_rows, info = _train_and_test(request, config, group, tmp_dir, policy)
            rows += group_rows
            models.append(info)
        extra = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in CASE_COLUMNS]
        cases = pd.DataFrame(rows, columns=CASE_COLUMNS + extra)
        cases["organ_order"] = cases["organ"].map({o: i for i, o in enumerate(ORGANS)})
        cases = cases.sort_values(["organ_order", "scan_id"]).drop(columns="organ_order")
        cases.to_csv(tmp_dir / "cases.csv", index=False, float_format="%.6f")
        (tmp_dir / "config.yaml").write_text(run_config_document(request, config), encoding="utf-8")
        summary = {
            "run_id": request.run_id,
            "method": request.method,
            "reference_method": entry.reference,
            "dataset": request.dataset,
            "setting": "cross" if request.source_dataset else request.setting,
            **({"source_dataset": request.source_dataset} if request.source_dataset else {}),
            "fold": request.fold,
            "shots": request.shots,
            "seed": request.seed,
            "profile": request.profile,
            "dice": summarize_cases(cases, "dice"),
            "hd95": summarize_cases(cases, "hd95"),
            "valid_cases": valid_counts(cases, "dice"),
            # method-specific case columns (e.g. ProGiDiff's best-of-P oracle): never the main number
            **({"secondary_metrics": {c: summarize_cases(cases, c) for c in extra}} if extra else {}),
            "status": "ok",
            "seconds": round(time.perf_counter() - started, 2),
            "budget": {
                **{
                    k: config.get("trainer", {}).get(k)
                    for k in ("max_steps", "max_time", "accumulate_grad_batches")
                },
                "batch_size": data_cfg.get("batch_size") if model_cls_traits.trainable else None,
                "models": len(models),
            },
            "traits": _run_traits(model_cls_traits, data_cfg),
            "determinism": policy.record(),
            "models": models,
            "provenance": environment(fingerprint),
        }
        (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
        _publish(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def _traits_of(config: dict[str, Any]):
    from fsmis_bench.config import import_class

    return import_class(config["model"]["class_path"]).traits


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by ``tmp_dir`` with renames only (an older result is removed last)."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".old-{final_dir.name}-{os.getpid()}")
        final_dir.rename(old)
    tmp_dir.rename(final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

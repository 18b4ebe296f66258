"""Determinism policy: exact on CPU, ``warn`` + a deterministic cuBLAS workspace on CUDA, ``trainer.deterministic``
overrides; recorded in summary.json and the store. And why CUDA cannot be strict: one training step of every
learned method, with the aten ops it runs checked against the ops torch documents as raising under
``torch.use_deterministic_algorithms(True)`` on CUDA (no GPU needed: the ops are the same on CPU)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fsmis_bench.cli import main
from fsmis_bench.config import instantiate
from fsmis_bench.datamodule import FewShotDataModule
from fsmis_bench.errors import ConfigError
from fsmis_bench.protocol.settings import model_groups
from fsmis_bench.runner.determinism import (
    CUBLAS_DETERMINISTIC,
    CUBLAS_ENV,
    DeterminismPolicy,
    resolve_determinism,
)
from fsmis_bench.runner.experiment import RunRequest, resolve_config
from fsmis_bench.runner.jobs import ok_rows
from fsmis_bench.runner.store import ResultsStore


@pytest.fixture(autouse=True)
def keep_torch_determinism():
    """A Trainer sets torch's process-wide deterministic mode; give the next test what this one found."""
    mode, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(mode, warn_only=warn_only)


# ---------------------------------------------------------------------------------------------- the policy
def test_cpu_is_exact_and_sets_no_environment():
    policy = resolve_determinism("cpu", {}, environ={})
    assert (policy.deterministic, policy.device, policy.source, policy.env) == (True, "cpu", "default", {})


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_cuda_warns_and_fixes_the_cublas_workspace(accelerator, monkeypatch):
    monkeypatch.setattr(
        "lightning.pytorch.accelerators.MPSAccelerator.is_available", staticmethod(lambda: False)
    )
    policy = resolve_determinism(accelerator, {"trainer": {"max_steps": 3}}, environ={})
    assert (policy.deterministic, policy.device) == ("warn", "cuda")
    assert policy.env == {CUBLAS_ENV: CUBLAS_DETERMINISTIC}


def test_auto_follows_the_device_lightning_would_pick(monkeypatch):
    accelerators = "lightning.pytorch.accelerators"
    monkeypatch.setattr(f"{accelerators}.MPSAccelerator.is_available", staticmethod(lambda: False))
    monkeypatch.setattr(f"{accelerators}.CUDAAccelerator.is_available", staticmethod(lambda: True))
    assert resolve_determinism("auto", {}, environ={}).deterministic == "warn"
    monkeypatch.setattr(f"{accelerators}.CUDAAccelerator.is_available", staticmethod(lambda: False))
    assert resolve_determinism("auto", {}, environ={}).deterministic is True


def test_a_users_cublas_value_is_kept_and_applied(monkeypatch):
    policy = resolve_determinism("cuda", {}, environ={CUBLAS_ENV: ":16:8"})
    assert policy.env == {CUBLAS_ENV: ":16:8"}
    monkeypatch.setenv(CUBLAS_ENV, CUBLAS_DETERMINISTIC)  # what Lightning writes when it builds the Trainer
    policy.apply_env()
    assert os.environ[CUBLAS_ENV] == ":16:8"


@pytest.mark.parametrize(
    ("value", "cpu", "cuda", "cublas"),
    [
        (True, True, True, True),
        (False, False, False, False),
        ("warn", "warn", "warn", True),
        ("WARN", "warn", "warn", True),
    ],
)
def test_trainer_deterministic_overrides_both_defaults(value, cpu, cuda, cublas):
    config = {"trainer": {"deterministic": value}}
    assert resolve_determinism("cpu", config, environ={}).deterministic == cpu
    policy = resolve_determinism("cuda", config, environ={})
    assert (policy.deterministic, policy.source, CUBLAS_ENV in policy.env) == (
        cuda,
        "trainer.deterministic",
        cublas,
    )


@pytest.mark.parametrize("value", ["maybe", 1, None, "strict"])
def test_a_bad_override_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"trainer\.deterministic=.*: expected true, false or warn"):
        resolve_determinism("cuda", {"trainer": {"deterministic": value}}, environ={})


def test_the_cli_refuses_a_bad_value_in_one_line(tmp_path, tiny_mri_root, capsys):
    args = [
        "run",
        "--method",
        "panet",
        "--fold",
        "0",
        "--profile",
        "smoke",
        "--data-root",
        str(tiny_mri_root),
    ]
    assert main([*args, "--output", str(tmp_path), "--set", "trainer.deterministic=sometimes"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "trainer.deterministic='sometimes'" in error
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("extra", "label"), [([], "true"), (["--set", "trainer.deterministic=false"], "false")]
)
def test_summary_and_store_row_record_the_choice(tmp_path, smoke_run_args, extra, label):
    args = smoke_run_args("copy_support")
    assert main([*args, *extra]) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["determinism"]["device"] == "cpu" and summary["determinism"]["env"] == {}
    assert str(summary["determinism"]["deterministic"]).lower() == label
    assert torch.are_deterministic_algorithms_enabled() is (label == "true")
    store = ResultsStore(tmp_path / "results")
    store.record("key", ok_rows("key", summary, run_dir))
    assert {row["determinism"] for row in store.rows()} == {label}


def test_the_run_keeps_a_users_cublas_value_over_lightnings(smoke_run_args, monkeypatch):
    """Lightning writes :4096:8 when it builds a deterministic Trainer; the run puts the policy's value back
    before fitting (a CPU run standing in for CUDA, whose policy carries the user's value)."""
    policy = DeterminismPolicy(True, "cuda", "default", {CUBLAS_ENV: ":16:8"})
    monkeypatch.setattr(
        "fsmis_bench.runner.experiment.resolve_determinism", lambda accelerator, config: policy
    )
    monkeypatch.setenv(CUBLAS_ENV, ":16:8")
    args = smoke_run_args("copy_support")
    assert main(args) == 0
    assert os.environ[CUBLAS_ENV] == ":16:8"


# ------------------------------------------------------------------- ops that raise on CUDA in strict mode
#: The aten ops behind the entries of ``torch.use_deterministic_algorithms``' list of operations that "throw a
#: RuntimeError when mode=True" on CUDA (torch 2.x docs), each with the documented condition where it has one
#: (None: always). Most raise only "when attempting to differentiate", i.e. in their backward op.
RAISING_ON_CUDA: dict[str, Callable[[tuple, dict, Any], bool] | None] = {
    "avg_pool3d_backward": None,  # AvgPool3d
    "_adaptive_avg_pool2d_backward": None,  # AdaptiveAvgPool2d
    "_adaptive_avg_pool3d_backward": None,  # AdaptiveAvgPool3d
    "adaptive_max_pool2d_backward": None,  # AdaptiveMaxPool2d
    "fractional_max_pool2d_backward": None,  # FractionalMaxPool2d
    "fractional_max_pool3d_backward": None,  # FractionalMaxPool3d
    "max_unpool2d": None,  # MaxUnpool1d, MaxUnpool2d
    "max_unpool3d": None,  # MaxUnpool3d
    "upsample_linear1d_backward": None,  # interpolate(mode="linear")
    "upsample_bilinear2d_backward": None,  # interpolate(mode="bilinear")
    "_upsample_bilinear2d_aa_backward": None,  # interpolate(mode="bilinear", antialias=True)
    "upsample_bicubic2d_backward": None,  # interpolate(mode="bicubic")
    "_upsample_bicubic2d_aa_backward": None,  # interpolate(mode="bicubic", antialias=True)
    "upsample_trilinear3d_backward": None,  # interpolate(mode="trilinear")
    "reflection_pad1d_backward": None,  # ReflectionPad1d
    "reflection_pad2d_backward": None,  # ReflectionPad2d
    "reflection_pad3d_backward": None,  # ReflectionPad3d
    "nll_loss_forward": None,  # NLLLoss (and cross_entropy) on class indices [N]
    "nll_loss2d_forward": None,  # NLLLoss (and cross_entropy) on class maps [N, H, W]
    "_ctc_loss_backward": None,  # CTCLoss
    "_embedding_bag_backward": None,  # EmbeddingBag (raises for mode="max" only; listed whole)
    "put": None,  # put_: accumulate=False everywhere, accumulate=True on CUDA
    "histc": None,
    "bincount": lambda args, kwargs, out: (
        kwargs.get("weights", args[1] if len(args) > 1 else None) is not None
    ),
    "median": lambda args, kwargs, out: isinstance(out, tuple),  # with indices output
    "grid_sampler_2d_backward": None,  # grid_sample
    "grid_sampler_3d_backward": None,
    "cumsum": lambda args, kwargs, out: out.is_floating_point() or out.is_complex(),
    "scatter_reduce": lambda args, kwargs, out: (
        kwargs.get("reduce", args[4] if len(args) > 4 else None) == "prod"
    ),
    "resize": lambda args, kwargs, out: args[0].is_quantized,
}


class RaisingOps(TorchDispatchMode):
    """Records the ops of ``RAISING_ON_CUDA`` run in this thread (forward and backward) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__.rstrip("_")  # in-place cumsum_, put_, resize_ included
        if name in RAISING_ON_CUDA and (
            RAISING_ON_CUDA[name] is None or RAISING_ON_CUDA[name](args, kwargs, out)
        ):
            self.found.add(name)
        return out


#: Training steps that reach every loss: ProGiDiff's first step pre-trains the mask codec, the second is diffusion.
STEPS = {"panet": 1, "alpnet": 1, "dpl": 1, "sd_fsmis": 1, "progidiff": 2}
#: What one training step of each method runs, on CPU as on CUDA (README.md, Reproducibility on GPU).
EXPECTED = {
    "panet": {"upsample_bilinear2d_backward", "nll_loss2d_forward"},
    "alpnet": {"upsample_bilinear2d_backward", "nll_loss2d_forward"},
    "dpl": {"upsample_bilinear2d_backward", "nll_loss2d_forward"},
    "sd_fsmis": set(),
    "progidiff": set(),
}


def training_ops(method: str, data_root: Path, cache: Path) -> set[str]:
    """The raising ops of ``STEPS[method]`` training steps (smoke profile, fold 0, the first model's group),
    including what the method does at fit start (SD-FSMIS' VAE pre-training). Batches are made by the data
    module's prefetch thread, so their CPU-side augmentation is not counted."""
    overrides = [f"trainer.max_steps={STEPS[method]}", "data.prefetch=1"]
    request = RunRequest(
        method, 0, data_root=str(data_root), cache_dir=str(cache), profile="smoke", overrides=overrides
    )
    config = resolve_config(request)
    data_cfg = dict(config["data"])
    group = model_groups(1, data_cfg["pseudolabels"], data_cfg.get("exclusion_rule", "group_any"))[0]
    torch.manual_seed(0)
    data = FewShotDataModule(data_root=str(data_root), fold=0, group=group, cache_dir=str(cache), **data_cfg)
    data.setup()
    model = instantiate(config["model"])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS[method],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with RaisingOps() as recorder:
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == STEPS[method]
    return recorder.found


@pytest.mark.parametrize("method", list(STEPS))
def test_cuda_policy_is_not_strict_for_a_method_whose_training_raises_there(method, tiny_mri_root, tmp_path):
    found = training_ops(method, tiny_mri_root, tmp_path / "cache")
    print(f"{method}: ops raising under strict CUDA determinism: {sorted(found) or 'none'}")
    config = resolve_config(RunRequest(method, 0, profile="smoke"))
    policy = resolve_determinism("gpu", config, environ={})
    assert not (found and policy.deterministic is True), (
        f"{method} runs {sorted(found)} in training, which raise under torch.use_deterministic_algorithms(True) on "
        f"CUDA, but its CUDA policy is deterministic=True"
    )
    assert found == EXPECTED[method], (
        f"{method}: found {sorted(found)}, README.md documents {sorted(EXPECTED[method])}"
    )


def test_the_recorder_sees_backward_ops_and_honours_conditions():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with RaisingOps() as recorder:
        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
        loss = torch.nn.functional.cross_entropy(up, torch.zeros(1, 8, 8, dtype=torch.long))
        loss.backward()
        torch.arange(5).cumsum(0)  # integer cumsum: deterministic on CUDA
        torch.bincount(torch.tensor([0, 1, 1]))  # no weights
    assert recorder.found == {"upsample_bilinear2d_backward", "nll_loss2d_forward"}

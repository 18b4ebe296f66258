"""``trainer.float32_matmul_precision``: validated with the config, applied on CUDA only (CPU numbers stay
exact), recorded per model in summary.json; the SD-FSMIS paper profile allows TF32 as its official setup does."""

from __future__ import annotations

import json

import pytest
import torch

from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.runner.determinism import DeterminismPolicy
from fsmis_bench.runner.experiment import RunRequest, resolve_config


@pytest.fixture(autouse=True)
def keep_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def run_copy_support(tmp_path, smoke_run_args, *extra: str) -> dict:
    assert main([*smoke_run_args("copy_support"), *extra]) == 0
    return json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())


def test_a_bad_value_is_a_config_error_naming_the_key_and_choices():
    request = RunRequest("panet", 0, profile="smoke", overrides=["trainer.float32_matmul_precision=tf32"])
    with pytest.raises(ConfigError, match=r"float32_matmul_precision='tf32'.*highest, high, medium"):
        resolve_config(request)


def test_only_the_sd_fsmis_paper_profile_allows_tf32():
    for method in ("panet", "alpnet", "dpl", "sd_fsmis", "progidiff"):
        trainer = resolve_config(RunRequest(method, 0, profile="paper"))["trainer"]
        expected = "high" if method == "sd_fsmis" else None
        assert trainer.get("float32_matmul_precision") == expected, method


def test_a_cpu_run_leaves_torch_at_highest(tmp_path, smoke_run_args):
    summary = run_copy_support(tmp_path, smoke_run_args, "--set", "trainer.float32_matmul_precision=medium")
    assert torch.get_float32_matmul_precision() == "highest"
    assert "float32_matmul_precision" not in summary["models"][0]


def test_a_cuda_run_applies_and_records_it(tmp_path, smoke_run_args, monkeypatch):
    """A CPU run standing in for CUDA: the policy says cuda, so the setting is applied before fitting."""
    policy = DeterminismPolicy("warn", "cuda", "default", {})
    monkeypatch.setattr("fsmis_bench.runner.experiment.resolve_determinism", lambda accelerator, cfg: policy)
    summary = run_copy_support(tmp_path, smoke_run_args, "--set", "trainer.float32_matmul_precision=high")
    assert torch.get_float32_matmul_precision() == "high"
    assert summary["models"][0]["float32_matmul_precision"] == "high"

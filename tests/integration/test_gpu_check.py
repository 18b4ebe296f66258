"""benchmark/gpu_check.py: the check's run configs build for every method, failures stay per method, the
report; the whole check at smoke sizes on CPU (slow)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from fsmis_bench.registry import METHODS
from fsmis_bench.runner.dry_run import build_on_meta, dry_run
from fsmis_bench.runner.experiment import RunRequest, resolve_config
from fsmis_bench.runner.jobs import Outcome, PlannedJob
from fsmis_bench.runner.paper_scale import PaperScalePlan
from fsmis_bench.runner.sweep_log import SweepLog

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmark" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_check"] = gpu_check
SPEC.loader.exec_module(gpu_check)


def check_config(method: str, device: str) -> tuple[RunRequest, dict]:
    scale = gpu_check.SCALES[device]
    overrides = gpu_check.method_overrides(method, scale, 20)
    request = RunRequest(method=method, fold=0, profile=scale.profile, overrides=overrides, accelerator="cpu")
    return request, resolve_config(request)


@pytest.mark.parametrize("method", list(METHODS))
def test_the_gpu_runs_build_full_size_without_weights(method):
    """The check's own config (no dry-run substitution) builds on the meta device: no weights needed."""
    request, config = check_config(method, "cuda")
    model = build_on_meta(config["model"], PaperScalePlan([], []))
    trainer = config["trainer"]
    assert (trainer["max_steps"], trainer["limit_test_batches"]) == (20, 1)
    parameters = sum(p.numel() for p in model.parameters())
    report = dry_run(request)
    assert report["parameters"] >= parameters  # ProGiDiff: CLIP's vocabulary in the dry run, a local one here
    if method == "sd_fsmis":
        assert (
            sum(p.numel() for p in model.net.unet.parameters()) == report["components"]["unet"]["parameters"]
        )
        assert report["components"]["unet"]["parameters"] > 859e6
    if method == "progidiff":
        assert config["model"]["init_args"]["adaptation"]["steps"] == 20
        assert 355e6 < sum(p.numel() for p in model.model.controlnet.parameters()) < 365e6
    if method in ("panet", "alpnet", "dpl"):
        assert 42e6 <= sum(p.numel() for p in model.encoder.parameters()) <= 44e6
    if METHODS[method].reference:
        assert parameters == 0


def test_the_cpu_scale_runs_the_smoke_profiles():
    _, config = check_config("sd_fsmis", "cpu")
    assert config["data"]["min_gt_pixels"] == 20 and config["model"]["init_args"]["pretrained_path"] is None
    smoke = resolve_config(RunRequest(method="sd_fsmis", fold=0, profile="smoke"))
    assert config["model"] == smoke["model"]


def test_a_failing_or_hanging_method_is_recorded_and_the_check_goes_on(tmp_path):
    (tmp_path / "logs").mkdir()
    scale = gpu_check.SCALES["cpu"]
    unknown = gpu_check.run_method("no_such_method", scale, 2, tmp_path, tmp_path, timeout=60)
    assert unknown["status"] == "failed" and "unknown method 'no_such_method'" in unknown["error"]
    started = time.monotonic()
    hanging = gpu_check.run_method("panet", scale, 2, tmp_path, tmp_path, timeout=1)
    assert time.monotonic() - started < 30
    assert hanging["status"] == "failed" and hanging["error"] == "timed out after 1 s"
    assert isinstance(hanging["log_tail"], list)


def test_sweep_log_lines_are_parsed_and_the_report_lists_errors(tmp_path):
    log = SweepLog(tmp_path / "sweep.log", total=2)
    for index, (key, status, slot) in enumerate([("a_job", "ok", "cuda:0"), ("b_job", "failed", "cuda:0#2")]):
        planned = PlannedJob(index + 1, None, "fp")  # type: ignore[arg-type]
        log.finish(planned, Outcome(key, status, 12.5, slot, "boom" if status == "failed" else ""))
    jobs = gpu_check.SWEEP_LINE.findall(log.path.read_text())
    assert [(event, key, slot) for event, key, _, slot in jobs] == [
        ("DONE", "a_job", "cuda:0"),
        ("FAILED", "b_job", "cuda:0#2"),
    ]
    report = {
        "profile": "paper",
        "steps": 20,
        "environment": {"device": "cuda", "gpu": "NVIDIA H200"},
        "wall_seconds": 300.0,
        "methods": [
            {
                "method": "panet",
                "status": "ok",
                "parameters": 43_016_320,
                "trainable": 43_016_320,
                "precision": "32-true",
                "steps_per_s": 12.5,
                "peak_gpu_gb": {"fit": 1.4, "test": 1.1},
                "memory_estimate_gb": 1.44,
                "models": [{"test_seconds": 0.8, "test_case": {"n_slices": 24}}],
                "wall_seconds": 30.0,
            },
            {
                "method": "dpl",
                "status": "failed",
                "error": "exit status 1",
                "log_tail": ["CUDA OOM"],
                "wall_seconds": 9,
            },
        ],
        "sweep": {"devices": "0,0", "status": "ok", "jobs": [], "wall_seconds": 40.0},
    }
    gpu_check.write_markdown(report, tmp_path / "gpu_check.md")
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| panet | ok | 43.02 | 43.02 | 32-true | 12.5 | 1.4 / 1.1 | 1.44 | 0.8 (24) | 30.0 |" in text
    assert "### dpl: exit status 1" in text and "CUDA OOM" in text


def test_the_whole_check_at_smoke_sizes_on_cpu(tmp_path):
    """`make gpu-check DEVICE=cpu` with 5 steps: every learned method (diffusion methods first), one test case
    each with its phase timings, and the two-slot sweep. In the default run, so the script cannot rot."""
    out = tmp_path / "out"
    args = ["--device", "cpu", "--steps", "5", "--out", str(out), "--work", str(tmp_path / "work")]
    assert gpu_check.main(args) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert [r["method"] for r in report["methods"]] == list(gpu_check.DEFAULT_ORDER)
    for result in report["methods"]:
        assert result["status"] == "ok", result
        assert all(m["test_case"]["n_slices"] > 0 for m in result["models"])
        assert result["steps_per_s"] > 0 and all(m["train_steps"] == 5 for m in result["models"])
        phases = [m["phase"] for m in result["phases"]]
        assert phases == ["fit", "test"] * len(result["models"]), phases
    assert report["sweep"]["status"] == "ok"
    assert sorted(j["slot"] for j in report["sweep"]["jobs"]) == ["cpu:0", "cpu:1"]
    assert "| sd_fsmis | ok |" in (out / "gpu_check.md").read_text()


def test_a_rerun_of_some_methods_without_the_sweep_is_not_a_sweep_failure(tmp_path):
    out = tmp_path / "out"
    args = ["--device", "cpu", "--methods", "copy_support", "--skip-sweep", "--out", str(out)]
    assert gpu_check.main([*args, "--work", str(tmp_path / "work")]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["sweep"]["status"] == "not run" and report["methods"][0]["status"] == "ok"
    assert "## Errors" not in (out / "gpu_check.md").read_text()

"""Regression guard: fixture building, the check's verdicts, and a deliberately broken forward pass caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fsmis_bench.cli import main
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.prototype.module import PrototypeSegmenter
from fsmis_bench.runner import regression
from fsmis_bench.runner.jobs import Job, run_job
from fsmis_bench.runner.spec import load_spec
from fsmis_bench.runner.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]


def _record(
    store: Path, seed: int, dice: dict[str, float], method: str = "alpnet", status: str = "ok"
) -> None:
    identity = {"method": method, "dataset": "synthetic_mri", "setting": 1, "fold": 0, "shots": 1}
    key = f"{method}_seed{seed}"
    if status != "ok":
        ResultsStore(store).record(key, [{"key": key, **identity, "seed": seed, "status": "failed"}])
        return
    rows = [
        {"key": key, **identity, "seed": seed, "profile": "ci", "status": "ok", "organ": o, "dice": d}
        for o, d in dice.items()
    ]
    ResultsStore(store).record(key, rows)


def test_tolerance_rule_clips_three_standard_deviations():
    assert regression.tolerance([0.5]) == regression.MIN_TOLERANCE
    assert regression.tolerance([0.50, 0.52, 0.54]) == pytest.approx(3 * 0.016330, abs=1e-5)
    assert regression.tolerance([0.0, 1.0]) == regression.MAX_TOLERANCE


def test_fixture_expects_the_check_seed_and_the_check_flags_drift_failures_and_gaps(tmp_path):
    seeds = tmp_path / "seeds"
    for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):
        _record(seeds, seed, {o: 0.6 + shift for o in ORGANS})
    fixture = regression.build_fixture(seeds, check_seed=0)
    case = "method=alpnet/dataset=synthetic_mri/setting=1/fold=0/shots=1/profile=ci"
    assert set(fixture["cases"]) == {case}
    assert fixture["cases"][case]["liver"]["expected"] == pytest.approx(0.6)
    assert fixture["cases"][case]["liver"]["tolerance"] == pytest.approx(3 * 0.008165, abs=1e-5)
    path = tmp_path / "fixture.json"
    regression.write_fixture(fixture, path)

    same = tmp_path / "same"
    _record(same, 0, {o: 0.6 + 0.02 for o in ORGANS})
    assert regression.check(same, path) == []

    drift = tmp_path / "drift"
    _record(drift, 0, {**{o: 0.6 for o in ORGANS}, "spleen": 0.5})
    problems = regression.check(drift, path)
    assert len(problems) == 1 and "spleen" in problems[0] and "0.5000" in problems[0]

    broken = tmp_path / "broken"
    _record(broken, 0, {}, status="failed")
    problems = regression.check(broken, path)
    assert any("failed" in p for p in problems) and any("no result for seed 0" in p for p in problems)


def test_fixture_refuses_failed_jobs_and_a_missing_check_seed(tmp_path):
    _record(tmp_path / "a", 1, {o: 0.5 for o in ORGANS})
    with pytest.raises(ConfigError, match="no result for seed 0"):
        regression.build_fixture(tmp_path / "a", check_seed=0)
    _record(tmp_path / "b", 0, {}, status="failed")
    with pytest.raises(ConfigError, match="failed jobs"):
        regression.build_fixture(tmp_path / "b")


def test_committed_fixture_covers_every_job_of_the_ci_sweep():
    spec = load_spec(REPO / "benchmark" / "sweeps" / "ci_regression.yaml")
    fixture = json.loads((REPO / "benchmark" / "baselines" / "ci_regression.json").read_text())
    expected = {
        regression.case_name({k: str(v) for k, v in j.identity().items() if v is not None}) for j in spec.jobs
    }
    assert set(fixture["cases"]) == expected
    assert all(set(organs) <= set(ORGANS) and organs for organs in fixture["cases"].values())


def test_a_broken_forward_pass_fails_the_check(tmp_path, tiny_mri_root, monkeypatch):
    """Baselines from a tiny ALPNet over two seeds; the same job with negated scores leaves the tolerance."""
    run = {
        "method": "alpnet",
        "dataset": "synthetic_mri",
        "fold": 0,
        "setting": 1,
        "shots": 1,
        "profile": "smoke",
        "data_root": str(tiny_mri_root),
        "cache_dir": str(tmp_path / "cache"),
        "overrides": ["trainer.max_steps=20"],
    }
    for seed in (0, 1):
        run_job(Job({**run, "seed": seed}), str(tmp_path / "seeds"))
    fixture = tmp_path / "fixture.json"
    assert (
        main(["regression", "update", "--results", str(tmp_path / "seeds"), "--fixture", str(fixture)]) == 0
    )
    assert main(["regression", "check", "--results", str(tmp_path / "seeds"), "--fixture", str(fixture)]) == 0

    intact = PrototypeSegmenter.foreground_scores

    def broken(self: PrototypeSegmenter, batch: object) -> torch.Tensor:
        return -intact(self, batch)  # foreground and background swapped

    monkeypatch.setattr(PrototypeSegmenter, "foreground_scores", broken)
    run_job(Job({**run, "seed": 0}), str(tmp_path / "broken"))
    assert (
        main(["regression", "check", "--results", str(tmp_path / "broken"), "--fixture", str(fixture)]) == 1
    )

"""Typed configuration check before anything runs: every shipped profile passes; a typo or a wrong type in
--set, in any section and at any depth, is one line naming the key, exit 2, no run folder; a sweep refuses a
bad job at planning time, before any job starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.registry import METHODS, PROFILES
from fsmis_bench.runner.config_check import check_config
from fsmis_bench.runner.experiment import RunRequest, resolve_config


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_shipped_profile_passes(method, profile):
    check_config(method, resolve_config(RunRequest(method, 0, profile=profile)))


BAD = [
    (
        "panet",
        "model.init_args.optimizer.lrr=0.1",
        "model.init_args.optimizer: unknown option(s) ['lrr'] for SGD",
    ),
    ("panet", "model.init_args.optimizer.lr=abc", "model.init_args.optimizer.lr: "),
    ("panet", "trainer.max_steps=abc", "trainer.max_steps: expected int, got abc"),
    ("alpnet", "data.image_size=abc", "data.image_size: expected int, got abc"),
    ("dpl", "model.init_args.nonsense=1", "model.init_args: unknown option(s) ['nonsense'] for DPL (known: "),
    ("panet", "model.init_args.encoder.widthz=3", "'widthz'"),
    ("sd_fsmis", "trainer.precision=33", "trainer.precision: "),
    ("progidiff", "model.init_args.adaptation.stepz=3", "stepz"),
    ("progidiff", "model.init_args.optimizer.name=adam", "unknown optimizer 'adam' (known: sgd, adamw)"),
]


@pytest.mark.parametrize(("method", "override", "message"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_override_is_one_line_naming_the_key(tmp_path, capsys, method, override, message):
    args = ["run", "--method", method, "--fold", "0", "--profile", "smoke", "--set", override]
    assert main([*args, "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsmis-bench: error: ") and message in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_the_class_path_is_checked_too():
    config = resolve_config(RunRequest("panet", 0, profile="smoke"))
    config["model"]["class_path"] = "fsmis_bench.methods.panet.NoSuchModel"
    with pytest.raises(ConfigError, match=r"class_path fsmis_bench.methods.panet.NoSuchModel: cannot import"):
        check_config("panet", config)


def write_spec(tmp_path: Path, run: dict) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "run": {"profile": "smoke", **run}}), encoding="utf-8")
    return spec


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"method": "panet", "fold": {"grid": [0, 7]}}, "fold 7: fold out of range"),
        (
            {"method": {"grid": ["panet", "alpnet"]}, "fold": 0, "overrides": {"trainer.max_stepz": 3}},
            "max_stepz",
        ),
        (
            {"method": "panet", "fold": 0, "overrides": {"model.init_args.optimizer.lr": "abc"}},
            "optimizer.lr",
        ),
    ],
    ids=["fold out of range", "typo in an override", "wrong type in an override"],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["--dry-run", "run"])
def test_a_sweep_refuses_a_bad_job_before_any_job_starts(tmp_path, capsys, run, message, dry_run):
    spec = write_spec(tmp_path, run)
    args = ["sweep", str(spec), "--results", str(tmp_path / "results"), *(["--dry-run"] if dry_run else [])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results" / "results.csv").exists()


def test_print_config_is_the_run_folders_config_and_config_reruns_it(tmp_path, tiny_mri_root, capsys):
    args = [
        "run",
        "--method",
        "panet",
        "--fold",
        "1",
        "--profile",
        "smoke",
        "--data-root",
        str(tiny_mri_root),
    ]
    args += ["--set", "trainer.max_steps=2", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "first").exists()
    assert main([*args, "--output", str(tmp_path / "first")]) == 0
    first = next((tmp_path / "first").iterdir())
    written = (first / "config.yaml").read_text(encoding="utf-8")
    assert printed.replace("output: runs", f"output: {tmp_path / 'first'}") == written
    again = ["run", "--config", str(first / "config.yaml"), "--output", str(tmp_path / "again")]
    assert main([*again, "--cache-dir", str(tmp_path / "cache")]) == 0
    rerun = tmp_path / "again" / first.name
    assert (rerun / "cases.csv").read_bytes() == (first / "cases.csv").read_bytes()
    resolved = yaml.safe_load((rerun / "config.yaml").read_text(encoding="utf-8"))
    assert {k: v for k, v in resolved.items() if k != "request"} == {
        k: v for k, v in yaml.safe_load(written).items() if k != "request"
    }


def test_config_refuses_a_file_that_is_not_a_run_config(tmp_path, capsys):
    bad = tmp_path / "profile.yaml"
    bad.write_text("model: {class_path: x}\n", encoding="utf-8")
    assert main(["run", "--config", str(bad)]) == 2
    assert "not a run's config.yaml" in capsys.readouterr().err


def test_a_gpu_accelerator_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lightning.pytorch.accelerators.CUDAAccelerator.is_available", lambda: False)
    args = ["run", "--method", "copy_support", "--fold", "0", "--profile", "smoke", "--accelerator", "gpu"]
    assert main([*args, "--output", str(tmp_path / "runs")]) == 2
    assert "--accelerator gpu: no CUDA GPU on this machine" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

"""Sweep specs: grid expansion, override flattening, stable job keys, and clear errors for bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.runner.jobs import Job
from fsmis_bench.runner.spec import expand_grid, load_spec, select_jobs

REPO = Path(__file__).resolve().parents[2]
SMOKE_SPEC = REPO / "benchmark" / "sweeps" / "smoke.yaml"


def _spec(tmp_path, run, **sections):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"run": run, **sections}))
    return path


def test_grid_axes_at_any_depth_expand_in_document_order():
    section = {
        "method": {"grid": ["a", "b"]},
        "fold": 0,
        "overrides": {"trainer": {"max_steps": {"grid": [1, 2]}}},
    }
    combos = expand_grid(section)
    assert [(c["method"], c["overrides"]["trainer"]["max_steps"]) for c in combos] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2),
    ]  # fmt: skip
    assert section["method"] == {"grid": ["a", "b"]}  # the spec itself is left untouched


def test_only_selects_part_of_a_campaign_under_the_same_keys(capsys):
    spec = load_spec(REPO / "benchmark" / "sweeps" / "chaos_cpu.yaml")
    part = select_jobs(spec, ["method=sd_fsmis,progidiff", "fold=0"])
    assert [job.key for job in part.jobs] == [
        f"{m}_abd_mri_s{s}_f0_k1_seed0_cpu" for s in (1, 2) for m in ("sd_fsmis", "progidiff")
    ]
    assert {job.key for job in part.jobs} <= {job.key for job in spec.jobs}
    assert len(select_jobs(spec, ["method=sd_fsmis, progidiff", "shots=1"]).jobs) == 20  # spaces; a default
    cross = load_spec(REPO / "benchmark" / "sweeps" / "cross_synthetic.yaml")
    assert len(select_jobs(cross, ["setting=1"]).jobs) == len(cross.jobs)  # absent from the spec: its default
    for bad, message in [("method", "expected NAME=VALUE"), ("colour=red", "unknown run option 'colour'"),
                         ("overrides=[]", "unknown run option 'overrides'"),
                         ("method=sd_fsmis,typo", "no job has method = typo \\(present: alpnet, ")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            select_jobs(spec, [bad])
    assert main(["sweep", str(SMOKE_SPEC), "--dry-run", "--only", "method=panet", "--only", "fold=1"]) == 0
    assert "1 jobs, 1 to run" in capsys.readouterr().out


def test_smoke_spec_is_two_methods_by_two_folds():
    spec = load_spec(SMOKE_SPEC)
    assert [job.key for job in spec.jobs] == [
        "panet_synthetic_mri_s1_f0_k1_seed0_smoke",
        "panet_synthetic_mri_s1_f1_k1_seed0_smoke",
        "copy_support_synthetic_mri_s1_f0_k1_seed0_smoke",
        "copy_support_synthetic_mri_s1_f1_k1_seed0_smoke",
    ]
    assert spec.devices == "cpu:2"


def test_overrides_nested_or_dotted_give_the_same_job(tmp_path):
    nested = load_spec(
        _spec(tmp_path, {"method": "panet", "fold": 0, "overrides": {"data": {"pseudolabels": "gt"}}})
    )
    dotted = load_spec(
        _spec(tmp_path, {"method": "panet", "fold": 0, "overrides": {"data.pseudolabels": "gt"}})
    )
    assert (
        nested.jobs[0].params["overrides"] == dotted.jobs[0].params["overrides"] == ['data.pseudolabels="gt"']
    )
    assert nested.jobs[0].key == dotted.jobs[0].key


def test_job_key_is_stable_and_ignores_placement():
    job = Job({"method": "alpnet", "fold": 2, "setting": 2, "seed": 1, "data_root": "/a", "cache_dir": "/c"})
    assert job.key == "alpnet_synthetic_mri_s2_f2_k1_seed1_cpu"
    assert Job({"method": "alpnet", "fold": 2, "setting": 2, "seed": 1, "data_root": "/b"}).key == job.key
    overridden = Job({"method": "alpnet", "fold": 0, "overrides": ["trainer.max_steps=5"]})
    assert overridden.key == "alpnet_synthetic_mri_s1_f0_k1_seed0_cpu_fd95ea2b"  # pinned: must not drift


def test_cross_domain_jobs_name_both_datasets():
    job = Job({"method": "alpnet", "fold": 0, "source_dataset": "synthetic_ct", "source_data_root": "/x"})
    assert job.key == "alpnet_synthetic_ct-to-synthetic_mri_cross_f0_k1_seed0_cpu"
    assert job.identity()["setting"] == "cross"


def test_request_writes_below_the_job_key(tmp_path):
    request = Job({"method": "panet", "fold": 1}).request(tmp_path, accelerator="cpu")
    assert request.output == str(tmp_path / "runs" / "panet_synthetic_mri_s1_f1_k1_seed0_cpu")
    assert request.accelerator == "cpu"


@pytest.mark.parametrize(
    ("run", "sections", "message"),
    [
        ({"method": "panet", "fold": 0, "epochs": 3}, {}, "unknown run option(s) ['epochs']"),
        ({"fold": 0}, {}, "run.method is required"),
        ({"method": "panet", "fold": "0"}, {}, "run.fold must be an integer"),
        ({"method": "panet", "fold": {"grid": []}}, {}, "grid must be a non-empty list"),
        ({"method": "panet", "fold": {"grid": [0, 0]}}, {}, "the same job more than once"),
        ({"method": "panet", "fold": 0}, {"slurm": {"gpus": 1}}, "invalid slurm section"),
        ({"method": "panet", "fold": 0}, {"cluster": {}}, "unknown section(s) ['cluster']"),
    ],
)
def test_bad_specs_are_clear_errors(tmp_path, run, sections, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        load_spec(_spec(tmp_path, run, **sections))


def test_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["sweep", str(SMOKE_SPEC), "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "panet_synthetic_mri_s1_f1_k1_seed0_smoke" in out
    assert "smoke: 4 jobs, 4 to run, 0 skipped; cpu:0, cpu:1" in out
    assert not (tmp_path / "results.csv").exists()


def test_cluster_example_is_a_valid_sweep(tmp_path, capsys):
    spec = REPO / "benchmark" / "sweeps" / "gpu_cluster_example.yaml"
    assert main(["sweep", str(spec), "--dry-run", "--backend", "slurm", "--results", str(tmp_path)]) == 0
    assert "60 jobs, 60 to run" in capsys.readouterr().out


def test_a_job_with_a_bad_config_stops_the_sweep_before_anything_runs(tmp_path, capsys):
    spec = _spec(tmp_path, {"method": "panet", "fold": 0, "overrides": {"data.imagesize": 64}})
    assert main(["sweep", str(spec), "--results", str(tmp_path / "r")]) == 2
    assert "unknown data option(s) ['imagesize']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_devices(tmp_path, capsys):
    assert main(["sweep", str(SMOKE_SPEC), "--devices", "gpu0", "--dry-run", "--results", str(tmp_path)]) == 2
    assert "--devices gpu0" in capsys.readouterr().err

"""Sweep fixtures: specs pointing at the tiny synthetic dataset, with one slice cache for the session."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep_cache")


@pytest.fixture()
def smoke_run_args(tmp_path: Path, tiny_mri_root: Path) -> Callable[[str], list[str]]:
    """``smoke_run_args(method)`` -> ``fsmis-bench run`` arguments: CPU, smoke profile, fold 0, the tiny dataset,
    output under ``tmp_path / "runs"`` and the slice cache in ``tmp_path``."""

    def args(method: str) -> list[str]:
        run = ["run", "--method", method, "--fold", "0", "--profile", "smoke", "--accelerator", "cpu"]
        paths = [
            "--data-root",
            str(tiny_mri_root),
            "--output",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path),
        ]
        return run + paths

    return args


def write_spec(folder: Path, data_root: Path, cache: Path, base: dict[str, Any], **sections: Any) -> Path:
    """``base`` with its jobs pointed at ``data_root`` and ``cache``, plus extra sections, saved in ``folder``."""
    spec = {**base, **sections}
    spec["run"] = {
        **base["run"],
        **sections.get("run", {}),
        "data_root": str(data_root),
        "cache_dir": str(cache),
    }
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture()
def tiny_spec(tmp_path: Path, tiny_mri_root: Path, sweep_cache: Path) -> Callable[..., Path]:
    """``tiny_spec(run={...}, name=..., **sections)`` -> a spec file on the tiny dataset (panet smoke by default)."""

    def make(run: dict[str, Any] | None = None, name: str = "tiny", **sections: Any) -> Path:
        base = {"name": name, "run": {"method": "panet", "fold": 0, "profile": "smoke", **(run or {})}}
        return write_spec(tmp_path, tiny_mri_root, sweep_cache, base, **sections)

    return make


@pytest.fixture(scope="session")
def smoke_spec(tmp_path_factory: pytest.TempPathFactory, tiny_mri_root: Path, sweep_cache: Path) -> Path:
    """benchmark/sweeps/smoke.yaml on the tiny dataset, run by the SLURM backend through the local executor."""
    base = yaml.safe_load((REPO / "benchmark" / "sweeps" / "smoke.yaml").read_text())
    slurm = {"cluster": "local", "gpus_per_job": 0, "cpus_per_job": 1, "time_min": 10}
    return write_spec(tmp_path_factory.mktemp("smoke_spec"), tiny_mri_root, sweep_cache, base, slurm=slurm)


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory, smoke_spec: Path) -> tuple[Path, int, str]:
    """(results folder, exit status, output) of the smoke sweep on 2 CPU slots, run once per session."""
    from fsmis_bench.cli import main

    results = tmp_path_factory.mktemp("smoke") / "results"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        status = main(["sweep", str(smoke_spec), "--devices", "cpu:2", "--results", str(results)])
    return results, status, capture.getvalue()

"""SLURM backend: the smoke sweep as one submitit job array, through submitit's local executor."""

from __future__ import annotations

import pytest

from fsmis_bench.cli import main
from fsmis_bench.runner.slurm import array_parameters, make_executor
from fsmis_bench.runner.spec import SlurmOptions
from fsmis_bench.runner.store import ResultsStore


def test_the_spec_sets_the_array_resources(tmp_path):
    options = SlurmOptions(
        partition="gpu",
        gpus_per_job=2,
        cpus_per_job=6,
        time_min=90,
        array_parallelism=3,
        setup=["module load x"],
    )
    assert array_parameters("demo", options) == {
        "name": "fsmis-demo",
        "timeout_min": 90,
        "gpus_per_node": 2,
        "cpus_per_task": 6,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 3,
        "slurm_setup": ["module load x"],
        "local_setup": ["module load x"],
    }
    # submitit validates every slurm_* name against its SlurmExecutor even when running locally
    executor = make_executor(tmp_path, "demo", SlurmOptions(**{**options.__dict__, "cluster": "local"}))
    assert executor.cluster == "local"


def test_smoke_sweep_through_submitit_matches_the_local_backend(smoke_spec, smoke_results, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["sweep", str(smoke_spec), "--backend", "slurm", "--results", str(results)]) == 0
    log = capsys.readouterr().out
    assert log.count("START ") == 4 and "on local job" in log and "4 ok, 0 failed" in log
    rows = {(r["key"], r["organ"]): r for r in ResultsStore(results).rows()}
    local = {(r["key"], r["organ"]): r for r in ResultsStore(smoke_results[0]).rows()}
    assert rows.keys() == local.keys() and len(rows) == 16
    for key, row in rows.items():  # same jobs, same numbers, whichever backend ran them
        assert row["status"] == "ok"
        assert float(row["dice"]) == pytest.approx(float(local[key]["dice"]), abs=1e-6)
        assert row["fingerprint"] == local[key]["fingerprint"]
    assert list((results / "submitit").iterdir())  # submitit's own pickles and logs

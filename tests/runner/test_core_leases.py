"""Local sweeps side by side pin different cores (core_leases.py), and jobs import the sweep's own package."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fsmis_bench.runner.core_leases import leased_slots
from fsmis_bench.runner.jobs import Job, PlannedJob
from fsmis_bench.runner.local import parse_devices, run_local
from fsmis_bench.runner.sweep_log import SweepLog


@pytest.fixture
def other_sweep(tmp_path):
    """Write the lease of another live sweep of this host (a sleeping process) on the given cores."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def lease(cores: list[int]) -> Path:
        path = tmp_path / f"{socket.gethostname()}-{process.pid}.json"
        owner = {"host": socket.gethostname(), "pid": process.pid, "sweep": "other", "cores": cores}
        path.write_text(json.dumps(owner))
        return path

    yield lease
    process.kill()
    process.wait()


def test_a_second_sweep_pins_the_cores_the_first_left_free(tmp_path, monkeypatch, other_sweep):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    other_sweep([0])
    with leased_slots("cpu:2x1", "mine", tmp_path) as (slots, shared):
        assert [s.cpus for s in slots] == [(1,), (2,)] and shared == []
        [mine] = tmp_path.glob(f"*-{os.getpid()}.json")
        assert json.loads(mine.read_text())["cores"] == [1, 2]
    assert not mine.exists()  # released when the sweep ends


def test_too_few_free_cores_are_shared_and_named(tmp_path, monkeypatch, other_sweep):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    other_sweep([0])
    with leased_slots("cpu:2x1", "mine", tmp_path) as (slots, shared):
        assert [s.cpus for s in slots] == [(1,), (0,)]  # the free core first
        assert len(shared) == 1 and "sweep other" in shared[0] and "[0]" in shared[0]


def test_the_lease_of_a_dead_sweep_is_ignored_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f"{socket.gethostname()}-{pid}.json"
    stale.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "sweep": "dead", "cores": [0]}))
    with leased_slots("cpu:1x1", "mine", tmp_path) as (slots, shared):
        assert [s.cpus for s in slots] == [(0,)] and shared == []
    assert not stale.exists()


def test_parse_devices_leaves_out_taken_cores_only_while_enough_remain(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert [s.cpus for s in parse_devices("cpu:2", taken={0, 1})] == [(2,), (3,)]
    assert [s.cpus for s in parse_devices("0,1", taken={0})] == [(1,), (2,)]
    assert [s.cpus for s in parse_devices("cpu:2x2", taken={0})] == [
        (1, 2),
        (3, 0),
    ]  # 3 free < 4: shared last
    assert [s.cpus for s in parse_devices("cpu:2x1", taken={0, 1, 2})] == [(3,), (0,)]


def test_a_job_imports_the_sweeps_package_not_one_in_the_working_directory(tmp_path, monkeypatch):
    """Started from another checkout's folder, the job used to run that checkout's code (``python -m`` puts the
    working directory first on sys.path)."""
    decoy = tmp_path / "other_checkout" / "fsmis_bench" / "runner"
    decoy.mkdir(parents=True)
    for init in (decoy / "__init__.py", decoy.parent / "__init__.py"):
        init.write_text("")
    (decoy / "jobs.py").write_text("print('DECOY CODE RAN'); raise SystemExit(3)")
    monkeypatch.chdir(decoy.parent.parent)
    results = tmp_path / "results"
    planned = PlannedJob(1, Job({"method": "no_such_method", "fold": 0}), "h@c")
    log = SweepLog(results / "logs" / "sweep.log", total=1)
    [outcome] = run_local([planned], results, log, parse_devices("cpu:1"))
    job_log = (results / "logs" / f"{planned.job.key}.log").read_text()
    assert outcome.status == "failed"
    assert "DECOY" not in job_log and "no_such_method" in job_log, job_log


def test_an_unwritable_lease_folder_runs_the_sweep_unleased_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    (tmp_path / "a_file").write_text("")
    with leased_slots("cpu:1x1", "mine", tmp_path / "a_file" / "leases") as (slots, shared):
        assert [s.cpus for s in slots] == [(0,)]
        assert len(shared) == 1 and shared[0].startswith("no core lease")

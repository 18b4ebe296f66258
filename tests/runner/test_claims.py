"""Job claims: two sweeps sharing one results folder never run the same job twice, and dead claims are taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fsmis_bench.runner.claims import JobClaims
from fsmis_bench.runner.jobs import Job, PlannedJob
from fsmis_bench.runner.local import parse_devices, run_local
from fsmis_bench.runner.store import ResultsStore
from fsmis_bench.runner.sweep_log import SweepLog


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_claim(results: Path, key: str, owner: dict) -> None:
    (results / "claims").mkdir(parents=True, exist_ok=True)
    (results / "claims" / f"{key}.json").write_text(json.dumps(owner))


def test_a_live_claim_blocks_and_a_released_or_dead_one_does_not(tmp_path):
    store = ResultsStore(tmp_path)
    first, second = JobClaims(store, resume=False), JobClaims(store, resume=False)
    assert first.acquire("a", "h@c") is None
    assert "claimed by the sweep" in second.acquire("a", "h@c")
    second.release("a")  # not its claim: left alone
    assert "claimed by the sweep" in second.acquire("a", "h@c")
    first.release("a")
    assert not first.path("a").exists()
    assert second.acquire("a", "h@c") is None

    write_claim(tmp_path, "b", {"host": socket.gethostname(), "pid": dead_pid(), "sweep": "x"})
    assert first.acquire("b", "h@c") is None  # its sweep died: taken over
    assert json.loads(first.path("b").read_text()) == first.owner
    write_claim(tmp_path, "c", {"host": "another-node", "pid": dead_pid(), "sweep": "x"})
    assert "another-node" in first.acquire("c", "h@c")  # liveness unknown: left to its owner
    (tmp_path / "claims" / "d.json").write_text("{not json")
    assert first.acquire("d", "h@c") is None


def test_under_resume_a_job_recorded_ok_after_planning_is_skipped(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", [{"key": "a", "status": "ok", "organ": "liver", "dice": 0.5, "fingerprint": "h@c"}])
    assert JobClaims(store, resume=True).acquire("a", "h@c").startswith("already ok")
    assert JobClaims(store, resume=True).acquire("a", "other@c") is None  # stale fingerprint: run again
    assert JobClaims(store, resume=False).acquire("a", "h@c") is not None  # claimed just above
    assert JobClaims(store, resume=False).acquire("b", "h@c") is None


def test_without_resume_a_job_another_sweep_finished_after_planning_is_skipped(tmp_path):
    """Two sweeps over one store started without --resume used to rerun each other's finished jobs once their
    claims were released; a job already ok when the sweep was planned still runs again (a deliberate rerun)."""
    store = ResultsStore(tmp_path)
    store.record("old", [{"key": "old", "status": "ok", "organ": "liver", "dice": 0.5, "fingerprint": "h@c"}])
    claims = JobClaims(store, resume=False)
    store.record("new", [{"key": "new", "status": "ok", "organ": "liver", "dice": 0.5, "fingerprint": "h@c"}])
    assert claims.acquire("new", "h@c").startswith("already ok")
    assert claims.acquire("old", "h@c") is None


@pytest.mark.parametrize("resume", [True, False])
def test_two_sweeps_over_the_same_jobs_run_each_job_once(tmp_path, monkeypatch, resume):
    """Two local sweeps planned at the same time over one store (the `taskset` set-up): every job runs once."""
    runs: list[str] = []

    def fake_job(command, **kwargs):
        job = Job(json.loads(command[command.index("--job") + 1]))
        runs.append(job.key)
        time.sleep(0.2)
        row = {"key": job.key, "status": "ok", "organ": "liver", "dice": 0.5, "fingerprint": "h@c"}
        ResultsStore(tmp_path).record(job.key, [row])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_job)
    planned = [
        PlannedJob(i + 1, Job({"method": "panet", "fold": fold}), "h@c") for i, fold in enumerate(range(5))
    ]
    outcomes: dict[str, list] = {}

    def sweep(name: str) -> None:
        log = SweepLog(tmp_path / "logs" / f"sweep-{name}.log", total=len(planned))
        outcomes[name] = run_local(planned, tmp_path, log, parse_devices("cpu:1"), resume=resume)

    threads = [threading.Thread(target=sweep, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(runs) == sorted(p.job.key for p in planned)
    statuses = [o.status for name in ("a", "b") for o in outcomes[name]]
    assert statuses.count("ok") == 5 and statuses.count("skipped") == 5
    assert not list((tmp_path / "claims").iterdir())  # every claim released
    assert (
        "SKIP"
        in (tmp_path / "logs" / "sweep-a.log").read_text() + (tmp_path / "logs" / "sweep-b.log").read_text()
    )

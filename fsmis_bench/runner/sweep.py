"""``fsmis-bench sweep``: expand a spec into jobs, skip what is already done, run the rest on a backend.

A job is skipped under ``--resume`` when the store holds an ``ok`` record for its key with the fingerprint
it would record now (same resolved config and code version); everything else, including failed, stale and
interrupted jobs, is run again and replaces its earlier record.
"""

from __future__ import annotations

import time
from pathlib import Path

from fsmis_bench.runner.core_leases import leased_slots
from fsmis_bench.runner.jobs import PlannedJob, planned_fingerprint
from fsmis_bench.runner.local import parse_devices, run_local
from fsmis_bench.runner.slurm import run_slurm
from fsmis_bench.runner.spec import SweepSpec, load_spec, select_jobs
from fsmis_bench.runner.store import ResultsStore
from fsmis_bench.runner.sweep_log import SweepLog


def plan(
    spec: SweepSpec, store: ResultsStore, resume: bool
) -> tuple[list[PlannedJob], list[tuple[str, str]]]:
    """(jobs to run, [(key, reason)] of every job with its plan status); validates every job's config first."""
    fingerprints = [planned_fingerprint(job) for job in spec.jobs]
    state = store.state()
    to_run: list[PlannedJob] = []
    status: list[tuple[str, str]] = []
    for job, fingerprint in zip(spec.jobs, fingerprints):
        recorded = state.get(job.key)
        if resume and recorded == ("ok", fingerprint):
            status.append((job.key, "skip (ok)"))
            continue
        if recorded is None:
            reason = "run"
        elif recorded[0] != "ok":
            reason = f"run ({recorded[0]} before)"
        else:
            reason = "run (stale fingerprint)" if recorded[1] != fingerprint else "run (again)"
        status.append((job.key, reason))
        to_run.append(PlannedJob(len(to_run) + 1, job, fingerprint))
    return to_run, status


def run_sweep(
    spec_path: str | Path,
    *,
    backend: str = "local",
    devices: str | None = None,
    resume: bool = False,
    dry_run: bool = False,
    results: str | None = None,
    only: list[str] | None = None,
) -> int:
    """Run a sweep (or the part selected by ``only``); returns 0 when every job ran ok or was skipped, else 1."""
    spec = load_spec(spec_path)
    if only:
        spec = select_jobs(spec, only)
    results_dir = Path(results or spec.results or "results")
    devices = devices or spec.devices or "cpu:1"
    slots = parse_devices(devices) if backend == "local" else []  # the plan; the run leases its cores
    store = ResultsStore(results_dir)
    planned, status = plan(spec, store, resume)
    skipped = len(spec.jobs) - len(planned)
    if dry_run:
        for key, reason in status:
            print(f"{reason:<24s}{key}")
        where = ", ".join(s.name for s in slots) if slots else f"slurm ({spec.slurm.partition or 'default'})"
        print(f"{spec.name}: {len(spec.jobs)} jobs, {len(planned)} to run, {skipped} skipped; {where}")
        return 0
    log = SweepLog(results_dir / "logs" / f"sweep-{spec.name}.log", total=len(planned))
    log.line(
        "SWEEP", f"{spec.name} ({spec.path}): {len(planned)} to run, {skipped} skipped, backend {backend}"
    )
    started = time.monotonic()
    if not planned:
        outcomes = []
    elif backend == "local":
        with leased_slots(devices, spec.name) as (slots, shared):
            for line in shared:
                log.line("WARN", f"{line}: jobs may share cores (start each sweep under its own taskset -c)")
            outcomes = run_local(planned, results_dir, log, slots, resume)
    else:
        outcomes = run_slurm(planned, results_dir, log, spec.name, spec.slurm)
    log.summary(outcomes, skipped, time.monotonic() - started)
    return 1 if any(o.status == "failed" for o in outcomes) else 0

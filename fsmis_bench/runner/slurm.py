"""SLURM backend: the sweep's jobs as one submitit job array (``map_array``), resources from the spec.

The submitting process waits for the array and logs DONE / FAILED lines as jobs end; each job records its own
rows in the results store (which must be on a filesystem shared with the compute nodes), and a failure is
recorded by the submitting process. ``slurm.cluster: local`` runs the same array through submitit's local
executor (all jobs at once on this machine), which is how the backend is tested.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from fsmis_bench.runner.jobs import Outcome, PlannedJob, failed_row, run_job
from fsmis_bench.runner.spec import SlurmOptions
from fsmis_bench.runner.store import ResultsStore
from fsmis_bench.runner.sweep_log import SweepLog, tail


def array_parameters(name: str, options: SlurmOptions) -> dict[str, Any]:
    """AutoExecutor parameters of the array: generic names, plus ``slurm_``/``local_``-prefixed ones."""
    parameters = {
        "name": f"fsmis-{name}",
        "timeout_min": options.time_min,
        "gpus_per_node": options.gpus_per_job,
        "cpus_per_task": options.cpus_per_job,
        "mem_gb": options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_array_parallelism": options.array_parallelism,
        "slurm_setup": options.setup or None,
        "slurm_additional_parameters": options.additional or None,
        "local_setup": options.setup or None,
    }
    return {key: value for key, value in parameters.items() if value is not None}


def make_executor(folder: Path, name: str, options: SlurmOptions) -> Any:
    """A submitit AutoExecutor with the spec's resources (unset options are left to the cluster's defaults)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.cluster)
    executor.update_parameters(**array_parameters(name, options))
    return executor


def run_slurm(
    planned: list[PlannedJob], results: Path, log: SweepLog, name: str, options: SlurmOptions
) -> list[Outcome]:
    """Submit the jobs as one array, then wait for all of them; returns one outcome per job."""
    import submitit

    executor = make_executor(results / "submitit", name, options)
    job_function = functools.partial(run_job, results=str(results), threads=options.cpus_per_job)
    submitted = time.monotonic()
    array = executor.map_array(job_function, [p.job for p in planned])
    by_id = {}
    for planned_job, scheduled in zip(planned, array):
        by_id[scheduled.job_id] = planned_job
        log.start(planned_job, f"{executor.cluster} job {scheduled.job_id} (logs {results / 'submitit'})")
    outcomes = {}
    for scheduled in submitit.helpers.as_completed(array, poll_frequency=2):
        planned_job = by_id[scheduled.job_id]
        key, seconds = planned_job.job.key, time.monotonic() - submitted
        where = f"{executor.cluster} job {scheduled.job_id}"
        exception = scheduled.exception()
        if exception is None:
            outcome = Outcome(key, "ok", seconds, where)
        else:
            error = tail(str(exception))
            ResultsStore(results).record(key, [failed_row(planned_job, error, seconds)])
            outcome = Outcome(key, "failed", seconds, where, error)
        log.finish(planned_job, outcome)
        outcomes[key] = outcome
    return [outcomes[p.job.key] for p in planned]

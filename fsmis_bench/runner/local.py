"""Local backend: one worker per device slot; every job is a subprocess pinned to its slot, with its own log.

``--devices 0,1`` gives one slot per GPU (``CUDA_VISIBLE_DEVICES`` set to that id), ``0,0`` two slots sharing
GPU 0; ``--devices cpu:N`` gives N CPU-only slots. Either way the CPU cores this process may use (its affinity
mask) are split into disjoint sets, one per slot: each job is pinned to its set and runs that many threads
(``OMP_NUM_THREADS`` and torch threads), so concurrent jobs do not oversubscribe the machine. ``cpu:NxT``
gives N slots of exactly T cores each, whatever the machine has: a job's numbers depend on its thread count
(float reductions), so a sweep whose Dice must be reproduced elsewhere (the CI regression) fixes it. Two
sweeps on one machine pin different cores: each takes a lease on the cores it pins (core_leases.py) and a later
one splits the cores no live sweep holds.

Every job imports the ``fsmis_bench`` this sweep runs, wherever it is started from (``JOB_PROGRAM``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

import fsmis_bench
from fsmis_bench.errors import ConfigError
from fsmis_bench.runner.claims import JobClaims
from fsmis_bench.runner.jobs import Outcome, PlannedJob, failed_row
from fsmis_bench.runner.store import ResultsStore
from fsmis_bench.runner.sweep_log import SweepLog, tail


@dataclass(frozen=True)
class Slot:
    """Where one job at a time runs: a GPU id, or a share of the CPU (``gpu`` None)."""

    name: str
    gpu: str | None
    cpus: tuple[int, ...]

    @property
    def threads(self) -> int:
        return len(self.cpus)

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {
            "CUDA_VISIBLE_DEVICES": self.gpu or "",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }


#: How a job starts: ``python -c JOB_PROGRAM <package root> <arguments>`` runs ``fsmis_bench.runner.jobs`` as
#: ``python -m`` would, but imports the package the sweep runs. ``python -m`` puts the working directory first on
#: ``sys.path``: a sweep of one checkout started from another checkout's folder (``PYTHONPATH=<worktree>``) ran the
#: other checkout's code in its jobs. The program drops the working directory and puts the sweep's package root
#: first unless it is already on the path (an installed wheel's site-packages, a PYTHONPATH entry).
JOB_PROGRAM = """
import runpy, sys
root = sys.argv.pop(1)
sys.path[:] = [path for path in sys.path if path]  # the working directory ('') out
if root not in sys.path:
    sys.path.insert(0, root)
runpy.run_module("fsmis_bench.runner.jobs", run_name="__main__", alter_sys=True)
"""


def job_command(results: Path, job_json: str, slot: Slot) -> list[str]:
    """The command line of one job on ``slot`` (see ``JOB_PROGRAM``)."""
    root = str(Path(fsmis_bench.__file__).resolve().parents[1])
    command = [sys.executable, "-c", JOB_PROGRAM, root, "--results", str(results), "--job", job_json]
    command += ["--cpus", ",".join(map(str, slot.cpus))]
    return command + (["--accelerator", "cpu"] if slot.gpu is None else [])


def available_cpus() -> list[int]:
    """The cores this process may run on (all cores where affinity masks do not exist)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def split_cpus(cpus: list[int], count: int, size: int | None = None) -> list[tuple[int, ...]]:
    """``count`` disjoint sets of ``size`` cores (default: equal shares; leftover cores unused); where the
    cores do not suffice, slots share them round-robin."""
    size = size or max(1, len(cpus) // count)
    return [tuple(cpus[(i * size + j) % len(cpus)] for j in range(size)) for i in range(count)]


def parse_devices(text: str, taken: set[int] | None = None) -> list[Slot]:
    """``"0,1"`` -> GPU slots 0 and 1 (``"0,0"``: two slots on GPU 0); ``"cpu:2"`` (or ``"cpu"``) -> two (one)
    CPU slots; ``"cpu:2x1"`` -> two CPU slots of one core each. The cores in ``taken`` (another sweep's) are
    left out while enough others remain."""
    text = text.strip()
    size = None
    if text == "cpu" or text.startswith("cpu:"):
        count, by, threads = (text.partition(":")[2] or "1").partition("x")
        numbers = [count, threads] if by else [count]
        if not all(n.isdigit() and int(n) >= 1 for n in numbers):
            raise ConfigError(f"--devices {text}: expected cpu:N or cpu:NxT with N, T >= 1")
        slots = [(f"cpu:{i}", None) for i in range(int(count))]
        size = int(threads) if by else None
    else:
        ids = [part.strip() for part in text.split(",")]
        if not all(part.isdigit() for part in ids):
            raise ConfigError(
                f"--devices {text}: expected GPU ids like 0,1 (0,0: two slots on GPU 0) or cpu:2"
            )
        # a repeated id is one more slot on that GPU (jobs that share it): cuda:0, cuda:0#2, ...
        slots = [
            (f"cuda:{gpu}" + (f"#{ids[:i].count(gpu) + 1}" if gpu in ids[:i] else ""), gpu)
            for i, gpu in enumerate(ids)
        ]
    cpus = available_cpus()
    free = [core for core in cpus if core not in (taken or set())]
    if len(free) < len(slots) * (size or 1):  # too few: the free ones first, then shared ones
        free += [core for core in cpus if core not in free]
    cpu_sets = split_cpus(free, len(slots), size)
    return [Slot(name, gpu, cpus) for (name, gpu), cpus in zip(slots, cpu_sets, strict=True)]


def _run_one(
    planned: PlannedJob, results: Path, log: SweepLog, free: Queue[Slot], claims: JobClaims
) -> Outcome:
    slot = free.get()
    try:
        busy = claims.acquire(planned.job.key, planned.fingerprint)
        if busy:
            outcome = Outcome(planned.job.key, "skipped", 0.0, slot.name, busy)
            log.finish(planned, outcome)
            return outcome
        try:
            return _run_subprocess(planned, results, log, slot)
        finally:
            claims.release(planned.job.key)
    finally:
        free.put(slot)


def _run_subprocess(planned: PlannedJob, results: Path, log: SweepLog, slot: Slot) -> Outcome:
    """Run the job in a subprocess on ``slot``; record a failed row if it did not record its own."""
    job = planned.job
    log_path = results / "logs" / f"{job.key}.log"
    command = job_command(results, job.to_json(), slot)
    log.start(planned, f"{slot.name} (log {log_path})")
    started = time.monotonic()
    with log_path.open("w") as handle:
        code = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **slot.env()}
        ).returncode
    seconds = time.monotonic() - started
    rows = [r for r in ResultsStore(results).rows() if r["key"] == job.key and r["status"] == "ok"]
    if code == 0 and rows:
        mean = sum(float(r["dice"]) for r in rows) / len(rows)
        outcome = Outcome(job.key, "ok", seconds, slot.name)
        log.finish(planned, outcome, f"mean Dice {100 * mean:.2f}")
        return outcome
    error = tail(log_path.read_text(errors="replace")) or f"exit status {code}"
    if code == 0:
        error = f"exited 0 without recording a result: {error}"
    ResultsStore(results).record(job.key, [failed_row(planned, error, seconds)])
    outcome = Outcome(job.key, "failed", seconds, slot.name, error)
    log.finish(planned, outcome)
    return outcome


def run_local(
    planned: list[PlannedJob], results: Path, log: SweepLog, slots: list[Slot], resume: bool = False
) -> list[Outcome]:
    """Run the jobs on the slots, at most one per slot at a time; a failed job does not stop the others.

    Each job is claimed first (claims.py): one another live sweep runs, or (``resume``) that became ok since
    the plan, is skipped.
    """
    (results / "logs").mkdir(parents=True, exist_ok=True)
    claims = JobClaims(ResultsStore(results), resume)
    free: Queue[Slot] = Queue()
    for slot in slots:
        free.put(slot)
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(_run_one, p, results, log, free, claims) for p in planned]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:  # Ctrl-C also reached the running jobs; start no new ones
            pool.shutdown(wait=False, cancel_futures=True)
            raise

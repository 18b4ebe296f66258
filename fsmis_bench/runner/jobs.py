"""Sweep jobs: one ``fsmis-bench run`` under a stable key, and the job function that every backend executes.

``python -m fsmis_bench.runner.jobs --results DIR --job JSON`` is the entry point of the local backend's
subprocesses (started as ``local.JOB_PROGRAM``, which fixes the import path); the SLURM backend pickles
:func:`run_job` itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fsmis_bench.config import config_hash
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.provenance import code_version, environment_id
from fsmis_bench.runner.experiment import RunRequest, execute_run, fingerprint_payload, resolve_config
from fsmis_bench.runner.store import ResultsStore

#: Readable part of a job key (and the identity columns of its store rows).
KEY_FIELDS = ("method", "dataset", "source_dataset", "setting", "fold", "shots", "seed", "profile")
#: Where and how a job runs, not what it computes: left out of the key.
PLACEMENT_FIELDS = ("data_root", "source_data_root", "cache_dir", "output", "accelerator")
#: Protocol options that make a variant (protocol §7.3); numbers of different variants are never pooled.
VARIANT_KEYS = ("fold_scheme", "support_index", "exclusion_rule", "eval_mode", "chunk_rule", "normalisation")


def fingerprint(config_digest: str, code: str) -> str:
    """What makes two results comparable: the resolved config (minus fold and seed) and the code version."""
    return f"{config_digest}@{code}"


@dataclass
class Job:
    """The ``RunRequest`` options of one job (everything but its output folder)."""

    params: dict[str, Any]

    @cached_property
    def key(self) -> str:
        """``method_dataset_sS_fF_kK_seedN_profile`` (``method_source-to-dataset_cross_...`` for the cross-domain
        track), plus a hash of any other non-default option (the overrides)."""
        request = RunRequest(**self.params)
        default = RunRequest(method=request.method, fold=request.fold)
        key = request.run_id
        extra = {
            f.name: getattr(request, f.name)
            for f in dataclasses.fields(RunRequest)
            if f.name not in KEY_FIELDS + PLACEMENT_FIELDS
            and getattr(request, f.name) != getattr(default, f.name)
        }
        return f"{key}_{config_hash(extra)[:8]}" if extra else key

    def request(self, results: str | Path, accelerator: str | None = None) -> RunRequest:
        """The run request, writing into ``<results>/runs/<key>/``."""
        placement = {"output": str(Path(results) / "runs" / self.key)}
        if accelerator:
            placement["accelerator"] = accelerator
        return RunRequest(**{**self.params, **placement})

    def identity(self) -> dict[str, Any]:
        """The identity columns of the job's store rows (setting "cross" on the cross-domain track)."""
        request = RunRequest(**self.params)
        identity = {name: getattr(request, name, None) for name in KEY_FIELDS}
        if identity["source_dataset"]:
            identity["setting"] = "cross"
        return identity

    def to_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)


@dataclass(frozen=True)
class PlannedJob:
    index: int  # 1-based position in the sweep, for log lines
    job: Job
    fingerprint: str


@dataclass(frozen=True)
class Outcome:
    key: str
    status: str  # "ok", "failed" or "skipped" (another sweep ran or runs it)
    seconds: float
    where: str  # device slot or scheduler job id
    error: str = ""


def planned_fingerprint(job: Job) -> str:
    """The fingerprint the job will record, computed without running it (raises ConfigError on a bad job)."""
    from fsmis_bench.runner.config_check import check_config

    request = job.request(".")
    config = resolve_config(request)
    check_config(request.method, config)
    return fingerprint(config_hash(fingerprint_payload(request, config)), code_version())


def protocol_variant(summary: dict[str, Any]) -> str:
    """The protocol variant string of a run: fold scheme, support index, rules, pseudolabel source, normalisation,
    and the method's named deviations from its paper, if any."""
    protocol = summary["models"][0]["protocol"]
    parts = [f"{key}={protocol[key]}" for key in VARIANT_KEYS]
    deviations = summary["models"][0].get("deviations") or []
    tail = [f"deviations={','.join(deviations)}"] if deviations else []
    return " ".join([*parts, f"pseudolabels={summary['traits']['pseudolabels']}", *tail])


def _budget(summary: dict[str, Any]) -> str:
    budget = {k: v for k, v in (summary.get("budget") or {}).items() if v is not None}
    return " ".join(f"{k}={v}" for k, v in sorted(budget.items())) or "none"


def ok_rows(key: str, summary: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """One store row per organ of a finished run."""
    provenance = summary["provenance"]
    common = {
        "key": key,
        "status": "ok",
        **{name: summary.get(name) for name in KEY_FIELDS},
        "reference": bool(summary.get("reference_method")),
        "protocol": protocol_variant(summary),
        "budget": _budget(summary),
        "fingerprint": fingerprint(provenance["config_hash"], provenance["code_version"]),
        # empty (unknown) for a summary written before environments were fingerprinted
        "environment": environment_id(env) if (env := provenance.get("environment_fingerprint")) else "",
        # true, false or warn (the Trainer's deterministic); empty for a summary written before it was recorded
        "determinism": (summary.get("determinism") or {}).get("deterministic"),
        "seconds": float(summary["seconds"]),
        "run_dir": str(run_dir),
    }
    return [
        {
            **common,
            "organ": organ,
            "dice": float(summary["dice"][organ]),
            "hd95": float(summary["hd95"][organ]),
            "valid_cases": int(summary["valid_cases"][organ]),
        }
        for organ in ORGANS
    ]


def failed_row(planned: PlannedJob, error: str, seconds: float) -> dict[str, Any]:
    """The single store row of a failed attempt."""
    return {
        "key": planned.job.key,
        **planned.job.identity(),
        "status": "failed",
        "fingerprint": planned.fingerprint,
        "seconds": seconds,
        "error": error,
    }


def run_job(job: Job, results: str, accelerator: str | None = None, threads: int | None = None) -> str:
    """Run ``job`` and record its rows in ``results``; returns the key. An exception propagates to the caller."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = execute_run(job.request(results, accelerator))
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    ResultsStore(results).record(job.key, ok_rows(job.key, summary, run_dir))
    return job.key


def pin_to_cpus(cpus: set[int]) -> None:
    """Restrict every thread of this process to ``cpus`` (imports have already started some); threads started
    later (OpenMP, torch) inherit the mask. No-op where affinity masks do not exist."""
    if not hasattr(os, "sched_setaffinity"):
        return
    tasks = Path("/proc/self/task")
    for thread_id in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
        os.sched_setaffinity(thread_id, cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsmis_bench.runner.jobs", description=run_job.__doc__)
    parser.add_argument("--results", required=True, help="results folder (store, runs)")
    parser.add_argument("--job", required=True, help="the job's run options, as JSON")
    parser.add_argument("--accelerator", default=None)
    parser.add_argument("--cpus", default=None, help="cores to pin the job to, e.g. 0,1; one thread per core")
    args = parser.parse_args(argv)
    threads = None
    if args.cpus:
        cpus = {int(part) for part in args.cpus.split(",")}
        pin_to_cpus(cpus)
        threads = len(cpus)
    key = run_job(Job(json.loads(args.job)), args.results, args.accelerator, threads)
    print(f"recorded {key} in {Path(args.results) / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

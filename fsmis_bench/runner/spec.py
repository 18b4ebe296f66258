"""Sweep specs: a YAML file whose ``run`` section holds ``fsmis-bench run`` options, any of them a grid axis.

A value written ``{grid: [a, b]}`` is an axis (anomalib's ``.grid`` convention); the jobs are the cartesian
product of all axes, first axis outermost, in the order they appear in the file. ``overrides`` is a mapping
of profile keys (nested or dotted) whose leaves become ``--set KEY.PATH=VALUE`` strings; grids may sit at any
depth inside it. The ``local`` and ``slurm`` sections configure the two backends.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsmis_bench.config import load_yaml, parse_yaml
from fsmis_bench.errors import ConfigError
from fsmis_bench.runner.experiment import RunRequest
from fsmis_bench.runner.jobs import Job

#: RunRequest fields a sweep may set (``output`` is chosen by the sweep: one folder per job key).
RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunRequest) if f.name != "output"}
TOP_LEVEL = {"name", "description", "results", "run", "local", "slurm"}


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of every job of the array (submitit's AutoExecutor parameters)."""

    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    array_parallelism: int = 16
    cluster: str | None = (
        None  # None: slurm when sbatch exists, else local; "local" forces the local executor
    )
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, ...)
    additional: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH options (account, qos, ...)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    jobs: list[Job]
    results: str | None = None
    devices: str | None = None  # default of --devices for the local backend
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


def _is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid"}


def _axes(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], list[Any]]]:
    """Every ``{grid: [...]}`` below ``node``, as (key path, values), in document order."""
    if _is_grid(node):
        values = node["grid"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"run.{'.'.join(path)}: grid must be a non-empty list")
        return [(path, values)]
    if isinstance(node, dict):
        return [axis for key, child in node.items() for axis in _axes(child, (*path, str(key)))]
    return []


def _assign(node: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def expand_grid(section: dict[str, Any]) -> list[dict[str, Any]]:
    """All combinations of the grid axes of ``section`` (a copy per combination)."""
    axes = _axes(section)
    combos = []
    for values in itertools.product(*(axis_values for _, axis_values in axes)):
        combo = copy.deepcopy(section)
        for (path, _), value in zip(axes, values):
            _assign(combo, path, value)
        combos.append(combo)
    return combos


def _flatten(overrides: Any, prefix: str = "") -> list[str]:
    """``{trainer: {max_steps: 2}}`` or ``{trainer.max_steps: 2}`` -> ``["trainer.max_steps=2"]`` (sorted)."""
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"run.overrides{'.' + prefix if prefix else ''}: expected a mapping of profile keys"
        )
    out = []
    for key, value in overrides.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        out += (
            _flatten(value, dotted)
            if isinstance(value, dict) and value
            else [f"{dotted}={json.dumps(value)}"]
        )
    return sorted(out)


def _job(params: dict[str, Any], where: str) -> Job:
    unknown = set(params) - set(RUN_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown run option(s) {sorted(unknown)} (known: {', '.join(RUN_FIELDS)})"
        )
    for name in ("method", "fold"):
        if name not in params:
            raise ConfigError(f"{where}: run.{name} is required")
    params = dict(params)
    params["overrides"] = _flatten(params.get("overrides") or {})
    for name, value in params.items():
        if RUN_FIELDS[name].type in (int, "int") and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{where}: run.{name} must be an integer, got {value!r}")
    return Job(params)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and expand a sweep spec; every job is checked for unknown options and duplicate keys."""
    path = Path(path)
    raw = load_yaml(path)
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {sorted(unknown)} (known: {', '.join(sorted(TOP_LEVEL))})"
        )
    if not isinstance(raw.get("run"), dict):
        raise ConfigError(f"{path}: a 'run' mapping of fsmis-bench run options is required")
    jobs = [_job(params, str(path)) for params in expand_grid(raw["run"])]
    keys = [job.key for job in jobs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"{path}: the grid yields the same job more than once: {', '.join(duplicates)}")
    try:
        slurm = SlurmOptions(**(raw.get("slurm") or {}))
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(SlurmOptions))
        raise ConfigError(f"{path}: invalid slurm section ({exc}; known: {known})") from None
    local = raw.get("local") or {}
    if set(local) - {"devices"}:
        raise ConfigError(f"{path}: the local section knows only 'devices'")
    return SweepSpec(
        name=str(raw.get("name") or path.stem),
        path=path,
        jobs=jobs,
        results=raw.get("results"),
        devices=local.get("devices"),
        slurm=slurm,
    )


def select_jobs(spec: SweepSpec, only: list[str]) -> SweepSpec:
    """The spec restricted to jobs whose run options match every ``NAME=V1,V2`` filter (``--only``).

    Lets part of a campaign be rerun, e.g. the methods whose code changed, from another checkout, under the same
    job keys and results store.
    """
    jobs = spec.jobs
    for item in only:
        name, sep, raw = item.partition("=")
        if not sep or not raw:
            raise ConfigError(f"--only {item}: expected NAME=VALUE[,VALUE...]")
        if name not in RUN_FIELDS or name == "overrides":
            known = ", ".join(f for f in RUN_FIELDS if f != "overrides")
            raise ConfigError(f"--only {item}: unknown run option '{name}' (known: {known})")
        wanted = {parse_yaml(value.strip()) for value in raw.split(",")}
        values = [getattr(job.request("."), name) for job in jobs]  # the spec's value, else the run default
        missing = wanted - set(values)
        if missing:
            present = ", ".join(sorted({str(v) for v in values}))
            raise ConfigError(
                f"{spec.path}: --only {item}: no job has {name} = {', '.join(map(str, missing))} "
                f"(present: {present})"
            )
        jobs = [job for job, value in zip(jobs, values) if value in wanted]
    return dataclasses.replace(spec, jobs=jobs)

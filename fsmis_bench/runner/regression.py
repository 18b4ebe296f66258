"""Regression checks: per-organ Dice of a sweep against a committed fixture.

``fsmis-bench regression check`` compares the ``ok`` rows of a results store with the fixture and fails
(exit 1) when a value leaves its tolerance, a job is missing or failed. The tolerance depends on where the
results ran:

* exact mode: in the environment the fixture records (the same environment fingerprint, see
  ``fsmis_bench.provenance``: library releases, torch build, CPU and instruction set, threads). A CPU run is
  then repeated bit for bit, so every value must equal the fixture within ``EXACT_TOLERANCE`` (half a Dice
  point), and every value that moved at all is listed;
* fallback: another, a mixed or an unknown environment, which acts like another seed: the tolerance comes from
  the spread over seeds (below), and the report's first line says so and which fingerprint fields differ.

``fsmis-bench regression update`` rewrites the fixture from a sweep run with several seeds (every method, or
only the named ones, keeping the others): the expected value is the seed the check runs with, the tolerance
comes from the spread over seeds (the rule is stored in the fixture), the environment is that of the check
seed's jobs. ``fsmis-bench regression stamp`` adopts a new environment from one seed run whose every value
equals the fixture within the exact tolerance, without rerunning the seeds.

The spread is pooled per method over all its cases and organs (with 3 seeds, one value's standard deviation
rests on 2 degrees of freedom and is often near zero by chance; pooled over 2 datasets x 2 settings x 4 organs it
rests on 32). A rerun in a perturbed environment (other library releases or CPU kernels act like another seed)
differs from the expected seed by about sqrt(2) x that spread, so the tolerance is 3 x sqrt(2) x the pooled
standard deviation, clipped so that a deterministic method still has a little room and a noisy one stays guarded.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.errors import ConfigError
from fsmis_bench.provenance import environment_id
from fsmis_bench.runner.store import ResultsStore, write_atomic

#: Tolerance = clip(SPREAD_FACTOR × √2 × pooled standard deviation over seeds, MIN_TOLERANCE, MAX_TOLERANCE).
SPREAD_FACTOR = 3.0
MIN_TOLERANCE = 0.02
MAX_TOLERANCE = 0.15
#: Exact mode: the most a value may move in the fixture's own environment (Dice in 0-1: half a point).
EXACT_TOLERANCE = 0.005
#: A value moved when it differs in the sixth decimal, the precision of the store and the fixture.
MOVED = 5e-7
IDENTITY = ("method", "dataset", "source_dataset", "setting", "fold", "shots", "profile")

Job = tuple[str, int]  # (case, seed)


@dataclass(frozen=True)
class Deviation:
    case: str
    organ: str
    expected: float
    observed: float
    tolerance: float

    @property
    def delta(self) -> float:
        return self.observed - self.expected

    @property
    def outside(self) -> bool:
        return math.isnan(self.observed) or abs(self.delta) > self.tolerance + 1e-9  # 1e-9: float noise

    def __str__(self) -> str:
        return (
            f"{self.case} {self.organ}: Dice {self.observed:.6f} vs expected {self.expected:.6f} "
            f"± {self.tolerance:.4f} (Δ {self.delta:+.6f})"
        )


def case_name(row: dict[str, str]) -> str:
    """A job's identity without its seed: the unit the fixture is keyed by."""
    return "/".join(f"{k}={row[k]}" for k in IDENTITY if row.get(k))


def case_fields(case: str) -> dict[str, str]:
    """The identity fields of a case name (the inverse of ``case_name``)."""
    return dict(part.split("=", 1) for part in case.split("/"))


@dataclass
class Observed:
    """A results store's ok rows by job (Dice per organ, environment id, run folder) and its failed jobs."""

    dice: dict[Job, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    environment: dict[Job, str] = field(default_factory=dict)
    run_dir: dict[Job, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    results: Path = Path(".")

    @classmethod
    def read(cls, results: str | Path, methods: Collection[str] | None = None) -> Observed:
        """The rows of ``results`` (of the named methods only, if given)."""
        observed = cls(results=Path(results))
        for row in ResultsStore(results).rows():
            if methods is not None and row["method"] not in methods:
                continue
            if row["status"] != "ok":
                observed.failed.append(row["key"])
            elif row["organ"] in ORGANS:
                job = (case_name(row), int(row["seed"]))
                observed.dice[job][row["organ"]] = float(row["dice"])
                observed.environment[job] = row["environment"]  # empty in stores older than fingerprints
                observed.run_dir[job] = row["run_dir"]
        return observed

    def environment_of(self, jobs: Iterable[Job]) -> tuple[dict[str, Any] | None, str]:
        """``{"id", "fingerprint"}`` of the one environment all ``jobs`` ran in, or None and why not."""
        jobs = list(jobs)
        ids = {self.environment[job] for job in jobs}
        if not ids:
            return None, "no results to take an environment from"
        if "" in ids:
            return None, "the results carry no environment fingerprint (rows written before fingerprints)"
        if len(ids) > 1:
            return None, f"the results ran in {len(ids)} environments ({', '.join(sorted(ids))})"
        (env_id,) = ids
        return {"id": env_id, "fingerprint": self._fingerprint(env_id, jobs)}, ""

    def _fingerprint(self, env_id: str, jobs: list[Job]) -> dict[str, Any] | None:
        """The full fingerprint, from a run folder's summary.json (None where the run folders are gone)."""
        for job in jobs:
            summary = self._run_folder(job) / "summary.json"
            if self.run_dir[job] and summary.is_file():
                provenance = json.loads(summary.read_text(encoding="utf-8"))["provenance"]
                fingerprint = provenance.get("environment_fingerprint")
                if fingerprint and environment_id(fingerprint) == env_id:
                    return fingerprint
        return None

    def _run_folder(self, job: Job) -> Path:
        """The job's run folder. A sweep records it as it was given (relative to the folder it ran from), so
        from elsewhere it is found under the store's own ``runs/`` by its name."""
        recorded = Path(self.run_dir[job])
        if recorded.is_dir() or recorded.is_absolute():
            return recorded
        return self.results / "runs" / recorded.name


def environment_difference(recorded: dict[str, Any], observed: dict[str, Any]) -> str:
    """Which fingerprint fields of the results' environment differ from the fixture's, with both values."""
    ids = f"environment {observed['id']} is not the fixture's {recorded['id']}"
    old, new = recorded.get("fingerprint"), observed.get("fingerprint")
    if old is None or new is None:
        return f"{ids} (fields unknown: no fingerprint in the {'fixture' if old is None else 'run folders'})"
    fields = [
        f"{k} {old.get(k, '-')} -> {new.get(k, '-')}" for k in {**old, **new} if old.get(k) != new.get(k)
    ]
    return f"{ids}: {'; '.join(fields)}"


def pooled_std(groups: list[list[float]]) -> float:
    """Standard deviation pooled over groups of repeated measurements (each group: one value over seeds)."""
    repeated = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in repeated)
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in repeated) / dof) if dof else 0.0


def tolerance(spread: float) -> float:
    """How far a rerun may land from the expected seed's value, given the method's pooled seed spread."""
    return min(MAX_TOLERANCE, max(MIN_TOLERANCE, SPREAD_FACTOR * math.sqrt(2) * spread))


def build_fixture(
    results: str | Path, check_seed: int = 0, methods: Collection[str] | None = None
) -> dict[str, Any]:
    """Expected Dice (seed ``check_seed``) and tolerances (spread over all seeds) per case and organ, of every
    method in ``results`` or only of ``methods``, and the environment the check seed's jobs ran in (None when
    unknown or mixed: the check then always falls back to the tolerances)."""
    observed = Observed.read(results, methods)
    if observed.failed:
        raise ConfigError(f"{results}: cannot build baselines, failed jobs {observed.failed}")
    absent = set(methods or ()) - {case_fields(case)["method"] for case, _ in observed.dice}
    if absent:
        raise ConfigError(f"{results}: no results for method(s) {sorted(absent)}")
    by_case: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for (case, seed), organs in observed.dice.items():
        by_case[case][seed] = organs
    samples: dict[str, dict[str, list[float]]] = {}  # case -> organ -> Dice over seeds
    for case, seeds in sorted(by_case.items()):
        if check_seed not in seeds:
            raise ConfigError(f"{results}: {case} has no result for seed {check_seed}")
        samples[case] = {
            organ: [seeds[s][organ] for s in sorted(seeds) if not math.isnan(seeds[s].get(organ, math.nan))]
            for organ in ORGANS
            if not math.isnan(seeds[check_seed].get(organ, math.nan))
        }
    groups_by_method: dict[str, list[list[float]]] = defaultdict(list)
    for case, organs in samples.items():
        groups_by_method[case_fields(case)["method"]].extend(organs.values())
    spread = {method: pooled_std(groups) for method, groups in sorted(groups_by_method.items())}
    cases = {
        case: {
            organ: {
                "expected": round(by_case[case][check_seed][organ], 6),
                "tolerance": round(tolerance(spread[case_fields(case)["method"]]), 6),
                "seed_values": [round(v, 4) for v in values],
            }
            for organ, values in organs.items()
        }
        for case, organs in samples.items()
    }
    environment, _ = observed.environment_of(job for job in observed.dice if job[1] == check_seed)
    return {
        "check_seed": check_seed,
        "seeds": sorted({seed for seeds in by_case.values() for seed in seeds}),
        "tolerance_rule": (
            f"clip({SPREAD_FACTOR} x sqrt(2) x the method's seed std pooled over its cases and organs, "
            f"{MIN_TOLERANCE}, {MAX_TOLERANCE})"
        ),
        "seed_std": {method: round(value, 6) for method, value in spread.items()},
        "cases": cases,
        "environment": environment,
    }


def refresh(
    fixture: dict[str, Any], results: str | Path, check_seed: int, methods: Collection[str]
) -> dict[str, Any]:
    """``fixture`` with the cases of ``methods`` rebuilt from ``results`` and every other case kept. The new
    values must come from the same seeds and, where the fixture records an environment, from that environment
    (otherwise exact mode would compare the kept methods with values of another one)."""
    fresh = build_fixture(results, check_seed, methods)
    for key in ("check_seed", "seeds", "tolerance_rule"):
        if fresh[key] != fixture[key]:
            raise ConfigError(
                f"{results}: {key} {fresh[key]} differs from the fixture's {fixture[key]}; update it whole"
            )
    recorded, environment = fixture.get("environment"), fresh["environment"]
    if recorded and (environment is None or environment["id"] != recorded["id"]):
        why = environment_difference(recorded, environment) if environment else "unknown or mixed environment"
        raise ConfigError(
            f"{results}: {why}; rerun {', '.join(methods)} in the fixture's environment or update it whole"
        )
    method_of = {case: case_fields(case)["method"] for case in {**fixture["cases"], **fresh["cases"]}}
    for method in methods:
        old = {case for case in fixture["cases"] if method_of[case] == method}
        new = {case for case in fresh["cases"] if method_of[case] == method}
        if old and old != new:
            raise ConfigError(
                f"{results}: {method} cases differ from the fixture's (missing {sorted(old - new)}, "
                f"new {sorted(new - old)}); a partial refresh replaces a method's cases one for one"
            )
    kept = {case: organs for case, organs in fixture["cases"].items() if method_of[case] not in methods}
    return {
        **fixture,
        "seed_std": dict(sorted({**fixture["seed_std"], **fresh["seed_std"]}.items())),
        "cases": dict(sorted({**kept, **fresh["cases"]}.items())),
    }


def load_fixture(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the regression fixture ({exc})") from exc


def write_fixture(fixture: dict[str, Any], path: str | Path) -> None:
    write_atomic(Path(path), (json.dumps(fixture, indent=1, sort_keys=True) + "\n").encode())


@dataclass
class Verdict:
    """The check of one results store against the fixture."""

    exact: bool
    why: str  # the report's first line: the mode and the reason for it
    problems: list[str]
    moved: list[Deviation]  # exact mode: values that moved but stayed within the tolerance
    checked: int  # values in the fixture
    largest: float | None  # largest |observed - expected| over the values present

    def lines(self) -> list[str]:
        largest = (
            f"largest |Δ| {self.largest:.4f} = {100 * self.largest:.2f} Dice points"
            if self.largest is not None
            else "no value present"
        )
        if self.problems:
            lines = [
                f"regression: {len(self.problems)} problem(s) over {self.checked} checked values, {largest}"
            ]
            lines += [f"  {problem}" for problem in self.problems]
        else:
            lines = [f"regression: all {self.checked} values within tolerance, {largest}"]
        if self.moved:
            lines.append(f"regression: {len(self.moved)} value(s) moved within the exact tolerance")
            lines += [f"  {deviation}" for deviation in self.moved]
        return [self.why, *lines]


def _compare_values(observed: Observed, fixture: dict[str, Any], exact: bool) -> Verdict:
    """Every fixture value against the check seed's results, with the exact or the per-value tolerance."""
    seed = fixture["check_seed"]
    problems = [f"job {key} failed" for key in observed.failed]
    deviations = []
    for case, organs in fixture["cases"].items():
        values = observed.dice.get((case, seed))
        if values is None:
            problems.append(f"{case}: no result for seed {seed}")
            continue
        for organ, entry in organs.items():
            limit = EXACT_TOLERANCE if exact else entry["tolerance"]
            deviations.append(Deviation(case, organ, entry["expected"], values.get(organ, math.nan), limit))
    return Verdict(
        exact=exact,
        why="",
        problems=problems + [str(d) for d in deviations if d.outside],
        moved=[d for d in deviations if exact and not d.outside and abs(d.delta) >= MOVED],
        checked=sum(len(organs) for organs in fixture["cases"].values()),
        largest=max((abs(d.delta) for d in deviations if not math.isnan(d.delta)), default=None),
    )


def _check_seed_environment(observed: Observed, fixture: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    seed = fixture["check_seed"]
    return observed.environment_of((case, seed) for case in fixture["cases"] if (case, seed) in observed.dice)


def compare(results: str | Path, fixture: dict[str, Any]) -> Verdict:
    """Exact mode when the results ran in the fixture's environment, else the seed-spread tolerances."""
    observed = Observed.read(results)
    environment, why = _check_seed_environment(observed, fixture)
    recorded = fixture.get("environment")
    exact = recorded is not None and environment is not None and environment["id"] == recorded["id"]
    verdict = _compare_values(observed, fixture, exact)
    if exact:
        verdict.why = (
            f"regression: exact mode, the results ran in the fixture's environment {recorded['id']}: every "
            f"value must equal the fixture within {EXACT_TOLERANCE} ({100 * EXACT_TOLERANCE:g} Dice points)"
        )
        return verdict
    if recorded is None:
        why = "the fixture records no environment (regression update or stamp records one)"
    elif environment is not None:
        why = environment_difference(recorded, environment)
    verdict.why = f"regression: fell back to the seed-spread tolerances: {why}"
    return verdict


def report(results: str | Path, fixture_path: str | Path) -> int:
    """Print the check's verdict; 0 when every value is within tolerance."""
    verdict = compare(results, load_fixture(fixture_path))
    print("\n".join(verdict.lines()))
    return 1 if verdict.problems else 0


def stamp(results: str | Path, fixture_path: str | Path) -> int:
    """Record in the fixture the environment of a complete check-seed run in ``results`` whose every value
    equals the fixture within the exact tolerance and whose rows share one environment; else print why not."""
    fixture = load_fixture(fixture_path)
    observed = Observed.read(results)
    environment, why = _check_seed_environment(observed, fixture)
    verdict = _compare_values(observed, fixture, exact=True)
    if environment is None:
        verdict.problems.insert(0, f"no single environment to record: {why}")
    if verdict.problems:
        verdict.why = (
            f"regression stamp: refused, {fixture_path} unchanged: the seed-{fixture['check_seed']} run must "
            f"equal the fixture within {EXACT_TOLERANCE} in one environment"
        )
        print("\n".join(verdict.lines()))
        return 1
    write_fixture({**fixture, "environment": environment}, fixture_path)
    verdict.why = f"{fixture_path}: environment {environment['id']} recorded"
    print("\n".join(verdict.lines()))
    return 0


def update(
    results: str | Path, fixture_path: str | Path, check_seed: int, methods: Collection[str] | None
) -> int:
    """Rewrite the fixture from the seeds in ``results``: whole, or only the cases of ``methods``."""
    if methods:
        fixture = refresh(load_fixture(fixture_path), results, check_seed, methods)
    else:
        fixture = build_fixture(results, check_seed)
    write_fixture(fixture, fixture_path)
    environment = fixture.get("environment")
    scope = f"{', '.join(methods)} refreshed, " if methods else ""
    print(
        f"{fixture_path}: {scope}{len(fixture['cases'])} cases from seeds {fixture['seeds']}, "
        + (f"environment {environment['id']}" if environment else "no environment recorded: checks fall back")
    )
    return 0

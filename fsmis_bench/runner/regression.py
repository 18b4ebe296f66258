"""Regression checks: per-organ Dice of a sweep against a committed fixture with per-value tolerances.

``fsmis-bench regression check`` compares the ``ok`` rows of a results store with the fixture and fails
(exit 1) when a value leaves its tolerance, a job is missing or failed. ``fsmis-bench regression update``
rewrites the fixture from a sweep run with several seeds: the expected value is the seed the check runs
with, the tolerance comes from the spread over seeds (the rule is stored in the fixture).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.errors import ConfigError
from fsmis_bench.runner.store import ResultsStore, write_atomic

#: Tolerance = clip(SPREAD_FACTOR × √2 × pooled standard deviation over seeds, MIN_TOLERANCE, MAX_TOLERANCE).
SPREAD_FACTOR = 3.0
MIN_TOLERANCE = 0.02
MAX_TOLERANCE = 0.15
IDENTITY = ("method", "dataset", "source_dataset", "setting", "fold", "shots", "profile")


@dataclass(frozen=True)
class Deviation:
    case: str
    organ: str
    expected: float
    observed: float
    tolerance: float

    def __str__(self) -> str:
        return (
            f"{self.case} {self.organ}: Dice {self.observed:.4f} vs expected {self.expected:.4f} "
            f"± {self.tolerance:.4f}"
        )


def case_name(row: dict[str, str]) -> str:
    """A job's identity without its seed: the unit the fixture is keyed by."""
    return "/".join(f"{k}={row[k]}" for k in IDENTITY if row.get(k))


def case_fields(case: str) -> dict[str, str]:
    """The identity fields of a case name (the inverse of ``case_name``)."""
    return dict(part.split("=", 1) for part in case.split("/"))


def _dice_by_case(store: ResultsStore) -> tuple[dict[tuple[str, int], dict[str, float]], list[str]]:
    """{(case, seed): {organ: dice}} of ok rows, and the keys of failed jobs."""
    values: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    failed = []
    for row in store.rows():
        if row["status"] != "ok":
            failed.append(row["key"])
            continue
        if row["organ"] in ORGANS:
            values[(case_name(row), int(row["seed"]))][row["organ"]] = float(row["dice"])
    return values, failed


def pooled_std(groups: list[list[float]]) -> float:
    """Standard deviation pooled over groups of repeated measurements (each group: one value over seeds)."""
    repeated = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in repeated)
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in repeated) / dof) if dof else 0.0


def tolerance(spread: float) -> float:
    """How far a rerun may land from the expected seed's value, given the method's pooled seed spread."""
    return min(MAX_TOLERANCE, max(MIN_TOLERANCE, SPREAD_FACTOR * math.sqrt(2) * spread))


def build_fixture(results: str | Path, check_seed: int = 0) -> dict[str, Any]:
    """Expected Dice (seed ``check_seed``) and tolerances (spread over all seeds) per case and organ."""
    values, failed = _dice_by_case(ResultsStore(results))
    if failed:
        raise ConfigError(f"{results}: cannot build baselines, failed jobs {failed}")
    by_case: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for (case, seed), organs in values.items():
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
    return {
        "check_seed": check_seed,
        "seeds": sorted({seed for seeds in by_case.values() for seed in seeds}),
        "tolerance_rule": (
            f"clip({SPREAD_FACTOR} x sqrt(2) x the method's seed std pooled over its cases and organs, "
            f"{MIN_TOLERANCE}, {MAX_TOLERANCE})"
        ),
        "seed_std": {method: round(value, 6) for method, value in spread.items()},
        "cases": cases,
    }


def write_fixture(fixture: dict[str, Any], path: str | Path) -> None:
    write_atomic(Path(path), (json.dumps(fixture, indent=1, sort_keys=True) + "\n").encode())


def check(results: str | Path, fixture_path: str | Path) -> list[str]:
    """Problems found (empty when everything is within tolerance)."""
    return _check(results, json.loads(Path(fixture_path).read_text(encoding="utf-8")))


def _check(results: str | Path, fixture: dict[str, Any]) -> list[str]:
    values, failed = _dice_by_case(ResultsStore(results))
    problems = [f"job {key} failed" for key in failed]
    seed = fixture["check_seed"]
    for case, organs in fixture["cases"].items():
        observed = values.get((case, seed))
        if observed is None:
            problems.append(f"{case}: no result for seed {seed}")
            continue
        for organ, entry in organs.items():
            value = observed.get(organ, math.nan)
            if math.isnan(value) or abs(value - entry["expected"]) > entry["tolerance"]:
                problems.append(str(Deviation(case, organ, entry["expected"], value, entry["tolerance"])))
    return problems


def report(results: str | Path, fixture_path: str | Path) -> int:
    """Print the check's verdict; 0 when every value is within tolerance."""
    fixture = json.loads(Path(fixture_path).read_text(encoding="utf-8"))
    problems = _check(results, fixture)
    n_values = sum(len(organs) for organs in fixture["cases"].values())
    if problems:
        print(f"regression: {len(problems)} problem(s) over {n_values} checked values")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"regression: all {n_values} values within tolerance")
    return 0

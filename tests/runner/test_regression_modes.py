"""Regression guard and environment: exact mode in the fixture's environment, the fallback and its first line,
``regression stamp`` and the partial ``regression update --methods``, on synthetic result stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsmis_bench.cli import main
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.provenance import environment_id
from fsmis_bench.runner import regression
from fsmis_bench.runner.store import ResultsStore

#: Two environments that differ in one library release, and one that differs in the thread count.
HOME = {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6", "cpu_model": "EPYC", "torch_threads": 1}
NUMPY = {**HOME, "numpy": "2.4.7"}
THREADS = {**HOME, "torch_threads": 2}
DATASETS = ("synthetic_mri", "synthetic_ct")
#: Per-seed Dice: ALPNet's seeds scatter (its spread tolerance is wide), the copy floor's do not.
ALPNET = {0: 0.60, 1: 0.70, 2: 0.50}
FLOOR = 0.40


def case(method: str, dataset: str = "synthetic_mri") -> str:
    return f"method={method}/dataset={dataset}/setting=1/fold=0/shots=1/profile=ci"


def record(
    store: Path,
    seed: int,
    dice: dict[str, float],
    method: str = "alpnet",
    dataset: str = "synthetic_mri",
    environment: dict | None = HOME,
) -> None:
    """One ok job of ``method`` in ``store``; ``environment=None`` writes a row of a store older than
    fingerprints (empty ``environment``, no run folder)."""
    key = f"{method}_{dataset}_seed{seed}"
    identity = {"method": method, "dataset": dataset, "setting": 1, "fold": 0, "shots": 1, "profile": "ci"}
    extra = {}
    if environment is not None:
        run_dir = store / "runs" / key
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = {"provenance": {"environment_fingerprint": environment}}
        (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        extra = {"environment": environment_id(environment), "run_dir": str(run_dir)}
    rows = [
        {"key": key, **identity, "seed": seed, "status": "ok", "organ": o, "dice": d, **extra}
        for o, d in dice.items()
    ]
    ResultsStore(store).record(key, rows)


def sweep(
    store: Path,
    seeds: tuple[int, ...] = (0,),
    environment: dict | None = HOME,
    shift: dict[tuple[str, str, str], float] | None = None,
    alpnet: dict[int, float] = ALPNET,
    methods: tuple[str, ...] = ("alpnet", "copy_support"),
) -> Path:
    """ALPNet and the copy floor on both datasets; ``shift`` moves single values: (method, dataset, organ)."""
    shift = shift or {}
    for seed in seeds:
        for dataset in DATASETS:
            for method in methods:
                base = alpnet[seed] if method == "alpnet" else FLOOR
                dice = {o: base + shift.get((method, dataset, o), 0.0) for o in ORGANS}
                record(store, seed, dice, method, dataset, environment)
    return store


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    status = main(["regression", *args])
    return status, capsys.readouterr().out.splitlines()


@pytest.fixture()
def fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The fixture of a three-seed sweep in environment HOME, written by ``regression update``."""
    path = tmp_path / "fixture.json"
    seeds = sweep(tmp_path / "seeds", seeds=(0, 1, 2))
    assert cli(capsys, "update", "--results", str(seeds), "--fixture", str(path))[0] == 0
    return path


def test_update_records_the_check_seeds_environment(fixture):
    recorded = regression.load_fixture(fixture)["environment"]
    assert recorded == {"id": environment_id(HOME), "fingerprint": HOME}


def test_exact_mode_fails_a_two_point_drift_that_the_spread_tolerance_passes(tmp_path, fixture, capsys):
    """The same +2-point drift of one learned method's organ: caught in the fixture's environment, passed by
    the seed-spread tolerance (13 points for this ALPNet) elsewhere, with the fallback said first."""
    entry = regression.load_fixture(fixture)["cases"][case("alpnet")]["spleen"]
    assert entry["tolerance"] > 0.1  # the spread tolerance cannot see 2 points
    drift = {("alpnet", "synthetic_mri", "spleen"): 0.02}

    here = sweep(tmp_path / "here", shift=drift)
    status, out = cli(capsys, "check", "--results", str(here), "--fixture", str(fixture))
    assert status == 1
    assert out[0].startswith("regression: exact mode") and environment_id(HOME) in out[0]
    assert out[1].startswith("regression: 1 problem(s) over 16 checked values, largest |Δ| 0.0200 = 2.00")
    assert f"{case('alpnet')} spleen: Dice 0.620000 vs expected 0.600000 ± 0.0050" in out[2]

    elsewhere = sweep(tmp_path / "elsewhere", environment=NUMPY, shift=drift)
    status, out = cli(capsys, "check", "--results", str(elsewhere), "--fixture", str(fixture))
    assert status == 0
    assert out[0] == (
        f"regression: fell back to the seed-spread tolerances: environment {environment_id(NUMPY)} is not "
        f"the fixture's {environment_id(HOME)}: numpy 2.4.6 -> 2.4.7"
    )
    assert out[1].startswith("regression: all 16 values within tolerance, largest |Δ| 0.0200")


def test_exact_mode_lists_every_value_that_moved_within_half_a_point(tmp_path, fixture, capsys):
    moves = {("alpnet", "synthetic_ct", "liver"): 0.003, ("copy_support", "synthetic_mri", "spleen"): -1e-6}
    status, out = cli(
        capsys, "check", "--results", str(sweep(tmp_path / "r", shift=moves)), "--fixture", str(fixture)
    )
    assert status == 0
    assert out[1] == "regression: all 16 values within tolerance, largest |Δ| 0.0030 = 0.30 Dice points"
    assert out[2] == "regression: 2 value(s) moved within the exact tolerance"
    assert len(out) == 5
    assert f"{case('alpnet', 'synthetic_ct')} liver" in out[3] and "(Δ +0.003000)" in out[3]
    assert f"{case('copy_support')} spleen" in out[4] and "(Δ -0.000001)" in out[4]

    status, out = cli(capsys, "check", "--results", str(sweep(tmp_path / "same")), "--fixture", str(fixture))
    assert status == 0 and out[1:] == [
        "regression: all 16 values within tolerance, largest |Δ| 0.0000 = 0.00 Dice points"
    ]


@pytest.mark.parametrize(
    ("results_env", "fixture_env", "why"),
    [
        (HOME, None, "the fixture records no environment"),
        (None, HOME, "the results carry no environment fingerprint"),
        ("mixed", HOME, "the results ran in 2 environments"),
        (THREADS, HOME, "torch_threads 1 -> 2"),
    ],
)
def test_the_fallback_says_so_and_why_in_its_first_line(tmp_path, capsys, results_env, fixture_env, why):
    """Fixture without an environment (the committed one before its regeneration), a store older than
    fingerprints, results from two environments, another thread count: spread tolerances, reason first."""
    seeds = sweep(tmp_path / "seeds", seeds=(0, 1, 2), environment=fixture_env)
    path = tmp_path / "fixture.json"
    regression.write_fixture(regression.build_fixture(seeds), path)
    results = tmp_path / "results"
    if results_env == "mixed":
        sweep(results, methods=("alpnet",))
        sweep(results, environment=NUMPY, methods=("copy_support",))
    else:
        sweep(results, environment=results_env, shift={("alpnet", "synthetic_mri", "liver"): 0.02})
    status, out = cli(capsys, "check", "--results", str(results), "--fixture", str(path))
    assert status == 0
    assert out[0].startswith("regression: fell back to the seed-spread tolerances: ") and why in out[0]


def test_stamp_adopts_an_environment_whose_run_equals_the_fixture(tmp_path, capsys):
    """A fixture from a store older than fingerprints; a seed-0 run elsewhere that equals it within half a
    point is stamped, and the check then runs in exact mode."""
    path = tmp_path / "fixture.json"
    regression.write_fixture(regression.build_fixture(sweep(tmp_path / "old", (0, 1, 2), None)), path)
    before = regression.load_fixture(path)
    assert before["environment"] is None

    run = sweep(tmp_path / "run", environment=NUMPY, shift={("alpnet", "synthetic_mri", "liver"): 0.004})
    status, out = cli(capsys, "stamp", "--results", str(run), "--fixture", str(path))
    assert status == 0 and out[0] == f"{path}: environment {environment_id(NUMPY)} recorded"
    assert "moved within the exact tolerance" in out[2]
    after = regression.load_fixture(path)
    assert after == {**before, "environment": {"id": environment_id(NUMPY), "fingerprint": NUMPY}}
    assert cli(capsys, "check", "--results", str(run), "--fixture", str(path))[1][0].startswith(
        "regression: exact mode"
    )


@pytest.mark.parametrize(
    ("make_run", "why"),
    [
        (lambda d: sweep(d, shift={("alpnet", "synthetic_ct", "spleen"): 0.01}), "synthetic_ct/setting=1"),
        (lambda d: sweep(d, methods=("alpnet",)), "method=copy_support/dataset=synthetic_mri/setting=1/"),
        (lambda d: sweep(d, environment=None), "no single environment to record: the results carry no"),
        (
            lambda d: (sweep(d, methods=("alpnet",)), sweep(d, environment=NUMPY, methods=("copy_support",))),
            "no single environment to record: the results ran in 2 environments",
        ),
    ],
    ids=["a value moved a point", "incomplete run", "store older than fingerprints", "two environments"],
)
def test_stamp_refuses_and_leaves_the_fixture_alone(tmp_path, fixture, capsys, make_run, why):
    before = fixture.read_bytes()
    make_run(tmp_path / "run")
    status, out = cli(capsys, "stamp", "--results", str(tmp_path / "run"), "--fixture", str(fixture))
    assert status == 1 and out[0].startswith(f"regression stamp: refused, {fixture} unchanged")
    assert any(why in line for line in out[1:]), out
    assert fixture.read_bytes() == before


def test_partial_update_replaces_only_the_named_methods(tmp_path, fixture, capsys):
    """ALPNet rerun with other values (the copy floor too, in the same folder): only ALPNet's entries and
    seed spread change; the floor's entries and the environment are kept."""
    before = regression.load_fixture(fixture)
    rerun = sweep(tmp_path / "rerun", (0, 1, 2), alpnet={0: 0.8, 1: 0.81, 2: 0.79})
    record(rerun, 0, {o: 0.1 for o in ORGANS}, "copy_support", "synthetic_mri")  # not to be taken
    args = ("update", "--results", str(rerun), "--check-seed", "0", "--methods", "alpnet")
    status, out = cli(capsys, *args, "--fixture", str(fixture))
    assert status == 0 and out == [
        f"{fixture}: alpnet refreshed, 4 cases from seeds [0, 1, 2], environment {environment_id(HOME)}"
    ]
    after = regression.load_fixture(fixture)
    fresh = regression.build_fixture(rerun, methods=["alpnet"])
    assert after["cases"] == {
        **{c: v for c, v in before["cases"].items() if c.startswith("method=copy_support")},
        **fresh["cases"],
    }
    assert after["cases"][case("alpnet")]["liver"]["expected"] == 0.8
    assert after["seed_std"] == {"alpnet": fresh["seed_std"]["alpnet"], "copy_support": 0.0}
    assert after["environment"] == before["environment"]


@pytest.mark.parametrize(
    ("make_rerun", "methods", "why"),
    [
        (
            lambda d: sweep(d, (0, 1, 2), NUMPY),
            ["alpnet"],
            "numpy 2.4.6 -> 2.4.7; rerun alpnet in the fixture",
        ),
        (lambda d: sweep(d, (0, 1, 2), None), ["alpnet"], "unknown or mixed environment"),
        (lambda d: sweep(d, (0, 1)), ["alpnet"], "seeds [0, 1] differs from the fixture's [0, 1, 2]"),
        (lambda d: sweep(d, (0, 1, 2)), ["dpl"], "no results for method(s) ['dpl']"),
        (
            lambda d: [record(d, s, {o: 0.5 for o in ORGANS}) for s in (0, 1, 2)],
            ["alpnet"],
            "alpnet cases differ from the fixture's (missing ['method=alpnet/dataset=synthetic_ct",
        ),
    ],
    ids=["other environment", "unknown environment", "other seeds", "method absent", "fewer cases"],
)
def test_partial_update_refuses_what_would_mix_the_fixture(
    tmp_path, fixture, capsys, make_rerun, methods, why
):
    before = fixture.read_bytes()
    make_rerun(tmp_path / "rerun")
    args = ["update", "--results", str(tmp_path / "rerun"), "--methods", *methods, "--fixture", str(fixture)]
    capsys.readouterr()
    assert main(["regression", *args]) == 2
    assert why in capsys.readouterr().err
    assert fixture.read_bytes() == before


def test_stamp_finds_the_fingerprint_from_another_folder(tmp_path, capsys, monkeypatch):
    """A sweep run from its checkout records relative run folders; stamping from another folder still reads
    the full fingerprint from the store's runs/."""
    path = tmp_path / "fixture.json"
    monkeypatch.chdir(tmp_path)
    regression.write_fixture(regression.build_fixture(sweep(Path("old"), (0, 1, 2), None)), path)
    sweep(Path("checkout") / "run", environment=NUMPY)  # rows hold checkout/run/runs/<key>
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    status, _ = cli(capsys, "stamp", "--results", str(tmp_path / "checkout" / "run"), "--fixture", str(path))
    assert status == 0
    assert regression.load_fixture(path)["environment"]["fingerprint"] == NUMPY

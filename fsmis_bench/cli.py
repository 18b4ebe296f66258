"""``fsmis-bench`` command line: thin parsing, one function per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence

from fsmis_bench.errors import ConfigError, FsmisError


def _run(args: argparse.Namespace) -> int:
    _check_run_names(args)
    from fsmis_bench.runner.experiment import RunRequest, execute_run

    if not args.verbose:
        _quiet_lightning()

    request = RunRequest(
        method=args.method,
        fold=args.fold,
        dataset=args.dataset,
        data_root=args.data_root,
        setting=args.setting,
        shots=args.shots,
        profile=args.profile,
        seed=args.seed,
        output=args.output,
        cache_dir=args.cache_dir,
        overrides=args.set or [],
        accelerator=args.accelerator,
        source_dataset=args.source_dataset,
        source_data_root=args.source_data_root,
    )
    if args.dry_run:
        from fsmis_bench.runner.dry_run import dry_run, format_dry_run

        report = dry_run(request)
        print(json.dumps(report, indent=2) if args.json else format_dry_run(report))
        return 0
    if args.json:
        raise ConfigError("--json goes with --dry-run (a run prints its result folder)")
    run_dir = execute_run(request)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    dice = summary["dice"]
    organs = "  ".join(f"{k}={_pct(v)}" for k, v in dice.items())
    print(f"{run_dir}: Dice % {organs}  ({summary['seconds']:.0f} s)")
    for name, values in summary.get("secondary_metrics", {}).items():
        print(f"  {name} % " + "  ".join(f"{k}={_pct(v)}" for k, v in values.items()))
    return 0


def _check_run_names(args: argparse.Namespace) -> None:
    """Method, dataset, profile and fold, checked from torch-free modules: a typo is answered at once."""
    from fsmis_bench.data.datasets import get_dataset
    from fsmis_bench.protocol.splits import check_fold
    from fsmis_bench.registry import check_profile, get_method

    get_method(args.method)
    for name in filter(None, (args.dataset, args.source_dataset)):
        get_dataset(name)
    check_profile(args.profile)
    check_fold(args.fold)


def _pct(value: float | None) -> str:
    return "nan" if value is None or value != value else f"{100 * value:.2f}"


def _list(args: argparse.Namespace) -> int:
    from fsmis_bench.data.datasets import DATASETS
    from fsmis_bench.registry import METHODS, PROFILES

    print("methods:")
    for entry in METHODS.values():
        print(f"  {entry.name:14s} {entry.summary}")
    print("datasets:")
    for spec in DATASETS.values():
        print(f"  {spec.name:14s} {spec.description}")
    print("profiles:")
    print(
        "  "
        + ", ".join(PROFILES)
        + "  (smoke: seconds; cpu: minutes on 2 cores; paper: the paper's recipe, GPU)"
    )
    return 0


def _protocol(args: argparse.Namespace) -> int:
    from fsmis_bench.runner.protocol_plan import protocol_plan

    plan = protocol_plan(
        dataset=args.dataset,
        data_root=args.data_root,
        fold=args.fold,
        setting=args.setting,
        shots=args.shots,
        fold_scheme=args.fold_scheme,
        support_index=args.support_index,
        exclusion_rule=args.exclusion_rule,
        cache_dir=args.cache_dir,
    )
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        for key, value in plan.items():
            print(f"{key}: {value}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fsmis_bench.data.prepare import PREPARERS

    layout_dir = PREPARERS[args.dataset](Path(args.raw), Path(args.out), superpixels=not args.no_pseudolabels)
    print(
        f"{args.dataset}: prepared in {layout_dir}  (use --dataset {args.dataset} --data-root {layout_dir})"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from fsmis_bench.runner.sweep import run_sweep

    return run_sweep(
        args.spec,
        backend=args.backend,
        devices=args.devices,
        resume=args.resume,
        dry_run=args.dry_run,
        results=args.results,
        only=args.only,
    )


def _leaderboard(args: argparse.Namespace) -> int:
    from fsmis_bench.leaderboard.build import build_leaderboards

    for path in build_leaderboards(args.results, args.out, args.published, allow_mixed=args.allow_mixed):
        print(path)
    return 0


def _regression(args: argparse.Namespace) -> int:
    from fsmis_bench.runner import regression

    if args.action == "check":
        return regression.report(args.results, args.fixture)
    if args.action == "stamp":
        return regression.stamp(args.results, args.fixture)
    return regression.update(args.results, args.fixture, args.check_seed, args.methods)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsmis-bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="fit and test one method on one fold")
    run.add_argument("--method", required=True)
    run.add_argument("--fold", type=int, required=True)
    run.add_argument("--dataset", default="synthetic_mri")
    run.add_argument("--data-root", default=None, help="folder holding image_<id>.nii.gz / label_<id>.nii.gz")
    run.add_argument("--setting", type=int, default=1, choices=(1, 2))
    run.add_argument("--shots", type=int, default=1)
    run.add_argument("--profile", default="cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--output", default="runs")
    run.add_argument("--cache-dir", default=None, help="slice cache (default $FSMIS_BENCH_CACHE or ~/.cache)")
    run.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    run.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a profile value")
    run.add_argument(
        "--source-dataset", default=None, help="cross-domain track: train on this dataset, test --dataset"
    )
    run.add_argument(
        "--source-data-root", default=None, help="folder of the source dataset (like --data-root)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="build the models on the meta device and print parameters, weights and a memory estimate",
    )
    run.add_argument("--json", action="store_true", help="with --dry-run: the report as JSON")
    run.set_defaults(func=_run)

    lst = sub.add_parser("list", help="methods, datasets and profiles")
    lst.set_defaults(func=_list)

    proto = sub.add_parser("protocol", help="print the fold / setting plan of a dataset")
    proto.add_argument("--dataset", default="synthetic_mri")
    proto.add_argument("--data-root", default=None)
    proto.add_argument("--fold", type=int, required=True)
    proto.add_argument("--setting", type=int, default=1, choices=(1, 2))
    proto.add_argument("--shots", type=int, default=1)
    proto.add_argument("--fold-scheme", default="alpnet")
    proto.add_argument("--support-index", type=int, default=-1)
    proto.add_argument("--exclusion-rule", default="group_any")
    proto.add_argument("--cache-dir", default=None)
    proto.add_argument("--json", action="store_true")
    proto.set_defaults(func=_protocol)

    prep = sub.add_parser("prepare", help="official downloads -> the preprocessed layout of the literature")
    prep.add_argument("dataset", choices=("abd_ct", "abd_mri"))
    prep.add_argument(
        "--raw", required=True, help="abd_ct: folder holding RawData/Training; abd_mri: CHAOS Train_Sets"
    )
    prep.add_argument("--out", required=True, help="output root; the layout folder is created below it")
    prep.add_argument("--no-pseudolabels", action="store_true", help="skip superpixels and supervoxels")
    prep.set_defaults(func=_prepare)

    sweep = sub.add_parser("sweep", help="run a grid of jobs on local devices or SLURM, with resume")
    sweep.add_argument("spec", help="sweep YAML, e.g. benchmark/sweeps/smoke.yaml")
    sweep.add_argument(
        "--devices",
        default=None,
        help="local slots: GPU ids '0,1', CPU slots 'cpu:2', or 'cpu:2x1' (2 slots of exactly 1 core)",
    )
    sweep.add_argument("--backend", choices=("local", "slurm"), default="local")
    sweep.add_argument("--resume", action="store_true", help="skip jobs already ok with the same fingerprint")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan (job keys) and exit")
    sweep.add_argument("--results", default=None, help="results folder (default: the spec's, else results)")
    sweep.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="run only the jobs whose run option NAME is one of the values (repeatable), e.g. method=dpl",
    )
    sweep.set_defaults(func=_sweep)

    board = sub.add_parser("leaderboard", help="aggregate sweep results into leaderboard tables and plots")
    board.add_argument(
        "--results", nargs="+", default=["results"], help="results folder(s) holding results.csv"
    )
    board.add_argument("--out", default="leaderboards")
    board.add_argument("--published", default="leaderboards/published.csv", help="published numbers to join")
    board.add_argument(
        "--allow-mixed", action="store_true", help="pool rows of different fingerprints/profiles"
    )
    board.set_defaults(func=_leaderboard)

    regress = sub.add_parser("regression", help="compare sweep Dice with a committed baseline fixture")
    actions = regress.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check", help="compare: exact in the fixture's environment, else within the seed-spread tolerances"
    )
    update = actions.add_parser("update", help="rewrite the fixture (or some methods' entries) from seeds")
    update.add_argument("--check-seed", type=int, default=0, help="the seed `check` runs with")
    update.add_argument(
        "--methods", nargs="+", default=None, help="replace only these methods' entries, keep the others"
    )
    stamp = actions.add_parser(
        "stamp", help="record the environment of a check-seed run that equals the fixture (no reruns)"
    )
    for action in (check, update, stamp):
        action.add_argument("--results", required=True, help="results folder of the regression sweep")
        action.add_argument("--fixture", default="benchmark/baselines/ci_regression.json")
    regress.set_defaults(func=_regression)
    return parser


def _quiet_lightning() -> None:
    """Lightning sets its loggers to INFO when imported; lower them (call after the import)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if not args.verbose:
        warnings.filterwarnings("ignore")
    try:
        return args.func(args)
    except FsmisError as exc:
        print(f"fsmis-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

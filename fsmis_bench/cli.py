"""``fsmis-bench`` command line: thin parsing, one function per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fsmis_bench.errors import ConfigError, FsmisError

if TYPE_CHECKING:
    from fsmis_bench.runner.experiment import RunRequest


def _run(args: argparse.Namespace) -> int:
    _check_run_names(args)
    from fsmis_bench.runner.experiment import execute_run

    if not args.verbose:
        _quiet_lightning()

    request = _run_request(args)
    if args.print_config:
        from fsmis_bench.runner.config_check import check_config
        from fsmis_bench.runner.experiment import resolve_config, run_config_document

        config = resolve_config(request)
        check_config(request.method, config)
        print(run_config_document(request, config), end="")
        return 0
    if args.dry_run:
        from fsmis_bench.runner.dry_run import dry_run, format_dry_run

        report = dry_run(request)
        print(json.dumps(report, indent=2) if args.json else format_dry_run(report))
        return 0
    if args.json:
        raise ConfigError("--json goes with --dry-run (a run prints its result folder)")
    from fsmis_bench.runner.run_table import format_run_table

    run_dir = execute_run(request)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    print(f"\n{format_run_table(summary, run_dir)}\n")
    organs = "  ".join(f"{k}={_pct(v)}" for k, v in summary["dice"].items())
    print(f"{run_dir}: Dice % {organs}  ({summary['seconds']:.0f} s)")
    for name, values in summary.get("secondary_metrics", {}).items():
        print(f"  {name} % " + "  ".join(f"{k}={_pct(v)}" for k, v in values.items()))
    return 0


def _run_request(args: argparse.Namespace) -> RunRequest:
    """The run request of the command line; with ``--config`` the earlier run's request, where only the
    machine-specific options (data root, cache, output, accelerator) and extra ``--set`` come from here."""
    from fsmis_bench.runner.experiment import RunRequest

    machine = {
        "data_root": args.data_root,
        "cache_dir": args.cache_dir,
        "output": args.output,
        "accelerator": args.accelerator,
    }
    if args.config:
        from pathlib import Path

        from fsmis_bench.config import load_yaml

        earlier = dict(load_yaml(Path(args.config)).get("request") or {})
        known = set(RunRequest.__dataclass_fields__)
        if not earlier or set(earlier) - known:
            raise ConfigError(f"{args.config}: not a run's config.yaml (no request section of a run)")
        earlier.update(overrides=args.set or [], base_config=args.config)
        return RunRequest(**{**earlier, **{k: v for k, v in machine.items() if v is not None}})
    return RunRequest(
        method=args.method,
        fold=args.fold,
        dataset=args.dataset,
        setting=args.setting,
        shots=args.shots,
        profile=args.profile,
        seed=args.seed,
        overrides=args.set or [],
        source_dataset=args.source_dataset,
        source_data_root=args.source_data_root,
        **{k: v for k, v in machine.items() if v is not None},
    )


def _check_run_names(args: argparse.Namespace) -> None:
    """Method, dataset, profile and fold, checked from torch-free modules: a typo is answered at once."""
    from fsmis_bench.data.datasets import get_dataset
    from fsmis_bench.protocol.splits import check_fold
    from fsmis_bench.registry import check_profile, get_method

    if args.config:
        return  # the earlier run's names; resolve_config checks them
    if args.method is None:
        raise ConfigError("run: --method is required (or --config with a run folder's config.yaml)")
    get_method(args.method)
    for name in filter(None, (args.dataset, args.source_dataset)):
        get_dataset(name)
    check_profile(args.profile, args.method)
    if args.fold is None:
        if not args.dry_run:
            raise ConfigError("run: --fold is required (0..4); only --dry-run takes fold 0 by default")
        args.fold = 0
    check_fold(args.fold)


def _pct(value: float | None) -> str:
    return "nan" if value is None or value != value else f"{100 * value:.2f}"


def _list(args: argparse.Namespace) -> int:
    from fsmis_bench.cli_parser import DEFAULT_DATASET, DEFAULT_PROFILE
    from fsmis_bench.data.datasets import DATASETS
    from fsmis_bench.registry import METHODS, PROFILES, method_profiles

    def mark(name: str, default: str) -> str:
        return f"{name} *" if name == default else name

    print("methods (reference floors learn nothing):")
    for entry in METHODS.values():
        print(f"  {entry.name:14s} {entry.summary}")
    print("datasets (* the default):")
    for spec in DATASETS.values():
        print(f"  {mark(spec.name, DEFAULT_DATASET):16s} {spec.description}")
    print("profiles (* the default):")
    print(
        "  "
        + ", ".join(mark(p, DEFAULT_PROFILE) for p in PROFILES)
        + "  (smoke: seconds; ci: the regression sweep; cpu: minutes on 2 cores; paper: the paper's recipe, GPU)"
    )
    own = {name: method_profiles(name)[len(PROFILES) :] for name in METHODS}
    for name, extra in own.items():
        if extra:
            print(f"  {name}: also {', '.join(extra)}")
    return 0


def _protocol(args: argparse.Namespace) -> int:
    from fsmis_bench.runner.protocol_plan import format_plan, protocol_plan

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
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fsmis_bench.data.prepare import PREPARERS

    layout_dir = PREPARERS[args.dataset](Path(args.raw), Path(args.out), superpixels=not args.no_pseudolabels)
    print(
        f"{args.dataset}: prepared in {layout_dir}  (use --dataset {args.dataset} --data-root {layout_dir})"
    )
    return 0


def _prior(args: argparse.Namespace) -> int:
    from fsmis_bench.data.datasets import LABEL_GROUPS
    from fsmis_bench.runner.experiment import resolve_config
    from fsmis_bench.runner.run_prior import model_with_prior

    request = _run_request(args)
    config = resolve_config(request)
    if not config.get("prior"):
        raise ConfigError(f"profile {args.profile} of {args.method} has no prior section (the cpu profiles of "
                          "sd_fsmis and progidiff have one)")  # fmt: skip
    if args.setting == 2 and args.group not in LABEL_GROUPS:
        raise ConfigError(f"setting 2: --group must be one of {', '.join(LABEL_GROUPS)} (the tested group)")
    _, record = model_with_prior(request, config, args.group, "prior")
    state = "trained" if record["trained_in_this_run"] else "cached"
    print(f"{record['folder']}  ({state}; {record['cpu_minutes']:.1f} CPU-minutes to train)")
    print(json.dumps({k: record[k] for k in ("key", "vae", "unet")}, indent=2))
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
    from fsmis_bench.cli_parser import build_parser as build

    handlers = {
        "run": _run,
        "list": _list,
        "protocol": _protocol,
        "prepare": _prepare,
        "prior": _prior,
        "sweep": _sweep,
        "leaderboard": _leaderboard,
        "regression": _regression,
    }
    return build(handlers)


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

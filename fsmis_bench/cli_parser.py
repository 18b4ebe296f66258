"""The ``fsmis-bench`` argument tree: every option with its help and default, the valid names listed, examples.

Built from torch-free modules only (the registries and the fold count), so ``--help`` and a typo are answered
in well under a second.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fsmis_bench import __version__
from fsmis_bench.data.datasets import DATASETS
from fsmis_bench.protocol.splits import N_FOLDS
from fsmis_bench.registry import METHODS, PROFILES

#: What ``run`` uses when an option is not given (``list`` marks these).
DEFAULT_DATASET = "synthetic_mri"
DEFAULT_PROFILE = "cpu"

RUN_EXAMPLES = """examples:
  fsmis-bench run --method alpnet --fold 0                       # synthetic MRI, cpu profile, minutes
  fsmis-bench run --method sd_fsmis --fold 2 --setting 2 --dataset abd_mri \\
      --data-root /data/CHAOST2/chaos_MR_T2_normalized --set trainer.max_steps=500
  fsmis-bench run --method progidiff --profile paper --dry-run --json   # sizes and memory, no weights needed
"""
SWEEP_EXAMPLES = """examples:
  fsmis-bench sweep benchmark/sweeps/smoke.yaml --devices cpu:2x1
  fsmis-bench sweep benchmark/sweeps/chaos_cpu.yaml --only method=panet --devices 0,1 --resume
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where there is one to show); descriptions and examples keep their
    line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def _names(names: object) -> str:
    return ", ".join(str(n) for n in names)  # type: ignore[union-attr]


def build_parser(handlers: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The parser of every subcommand; ``handlers`` maps a subcommand (``regression`` for its actions) to the
    function that runs it."""
    parser = argparse.ArgumentParser(
        prog="fsmis-bench",
        description="Few-shot medical image segmentation benchmark: one protocol for ABD-CT and ABD-MRI.",
        epilog="`fsmis-bench COMMAND --help` describes each command.\n\n" + RUN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fsmis-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub, handlers["run"])
    lst = sub.add_parser(
        "list", help="methods, datasets and profiles (defaults marked)", formatter_class=HelpFormatter
    )
    lst.set_defaults(func=handlers["list"])
    _add_protocol(sub, handlers["protocol"])
    _add_prepare(sub, handlers["prepare"])
    _add_prior(sub, handlers["prior"])
    _add_sweep(sub, handlers["sweep"])
    _add_leaderboard(sub, handlers["leaderboard"])
    _add_regression(sub, handlers["regression"])
    return parser


def _add_run(sub: argparse._SubParsersAction, handler: Callable) -> None:
    run = sub.add_parser(
        "run",
        help="fit and test one method on one fold",
        description="Fit one method on one fold's training scans and test it on the fold's query scans (EP1); "
        "writes a run folder (summary.json, cases.csv, config.yaml, TensorBoard logs).",
        epilog=RUN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    run.add_argument("--method", default=None, metavar="NAME", help=f"one of: {_names(METHODS)} (required)")
    run.add_argument(
        "--fold", type=int, default=None, help=f"0..{N_FOLDS - 1}; required except with --dry-run (then 0)"
    )
    _add_task_options(run)
    run.add_argument(
        "--profile", default=DEFAULT_PROFILE, metavar="NAME",
        help=f"one of: {_names(PROFILES)} (smoke: seconds; ci: the regression sweep; cpu: minutes; paper: GPU)",
    )  # fmt: skip
    run.add_argument("--seed", type=int, default=0, help="fixes the run: data order, augmentation, init")
    run.add_argument("--output", default=None, help="folder that receives the run folder (default: runs)")
    run.add_argument(
        "--accelerator", default=None, help="Lightning accelerator: auto, cpu, gpu, cuda, mps (default: auto)"
    )
    run.add_argument(
        "--set", action="append", metavar="KEY.PATH=VALUE",
        help="override a profile value, e.g. trainer.max_steps=500 or model.init_args.optimizer.lr=1e-4",
    )  # fmt: skip
    run.add_argument(
        "--source-dataset", default=None, help="cross-domain track: train on this dataset, test --dataset"
    )
    run.add_argument(
        "--source-data-root", default=None, help="folder of the source dataset (like --data-root)"
    )
    run.add_argument(
        "--dry-run", action="store_true",
        help="build the models on the meta device and print parameters, weights and a memory estimate",
    )  # fmt: skip
    run.add_argument("--json", action="store_true", help="with --dry-run: the report as JSON")
    run.add_argument(
        "--print-config", action="store_true",
        help="print the resolved configuration (what the run folder's config.yaml will hold) and exit",
    )  # fmt: skip
    run.add_argument(
        "--config", default=None, metavar="FILE",
        help="rerun from a run folder's config.yaml: its request and resolved sections; here only --data-root, "
        "--cache-dir, --output, --accelerator and extra --set",
    )  # fmt: skip
    run.set_defaults(func=handler)


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    """Dataset, data root, setting, shots and slice cache: what ``run`` and ``protocol`` both take."""
    parser.add_argument(
        "--dataset", default=DEFAULT_DATASET, metavar="NAME", help=f"one of: {_names(DATASETS)}"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder of image_<id>.nii.gz / label_<id>.nii.gz (synthetic: generated)",
    )
    parser.add_argument(
        "--setting",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: slices of the tested group removed from training",
    )
    parser.add_argument("--shots", type=int, default=1, help="support scans per episode (k-shot)")
    parser.add_argument(
        "--cache-dir", default=None, help="slice cache (default: $FSMIS_BENCH_CACHE or ~/.cache)"
    )


def _add_protocol(sub: argparse._SubParsersAction, handler: Callable) -> None:
    proto = sub.add_parser(
        "protocol",
        help="print the fold / setting plan of a dataset",
        description="Support, query and training scans of a fold, the setting's exclusions, and each query "
        "scan's EP1 chunks and support slices per organ.",
        formatter_class=HelpFormatter,
    )
    proto.add_argument("--fold", type=int, required=True, help=f"0..{N_FOLDS - 1}")
    _add_task_options(proto)
    proto.add_argument("--fold-scheme", default="alpnet", help="alpnet or qnet_sets")
    proto.add_argument(
        "--support-index", type=int, default=-1,
        help="qnet_sets only: position of the support scan in the next fold's set (-1: the last)",
    )  # fmt: skip
    proto.add_argument(
        "--exclusion-rule", default="group_any", help="group_any, all_any or all_and (setting 2)"
    )
    proto.add_argument("--json", action="store_true", help="the plan as JSON")
    proto.set_defaults(func=handler)


def _add_prior(sub: argparse._SubParsersAction, handler: Callable) -> None:
    prior = sub.add_parser(
        "prior",
        help="train (or find cached) the in-domain diffusion prior of a profile",
        description="Train the latent-diffusion prior that a profile's prior section describes (the cpu profiles "
        "of sd_fsmis and progidiff) on one fold's unlabeled training slices, save it as a Stable Diffusion "
        "folder with sample and reconstruction grids, and print where it is. A run with the same key reuses it.",
        epilog="example: fsmis-bench prior --method sd_fsmis --fold 0 --setting 2 --group lower",
        formatter_class=HelpFormatter,
    )
    prior.add_argument("--method", required=True, metavar="NAME", help="whose profile's prior section to use")
    prior.add_argument("--fold", type=int, required=True, help=f"0..{N_FOLDS - 1}")
    prior.add_argument("--group", default=None, help="setting 2: the tested group (lower or upper)")
    _add_task_options(prior)
    prior.add_argument(
        "--profile", default=DEFAULT_PROFILE, metavar="NAME", help="a profile with a prior section"
    )
    prior.add_argument("--seed", type=int, default=0, help="the seed of the runs that will use it")
    prior.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a profile value")
    prior.add_argument("--source-dataset", default=None, help="cross-domain track: the dataset trained on")
    prior.add_argument("--source-data-root", default=None, help="folder of the source dataset")
    prior.set_defaults(func=handler, config=None, output=None, accelerator=None)  # run options it shares


def _add_prepare(sub: argparse._SubParsersAction, handler: Callable) -> None:
    prep = sub.add_parser(
        "prepare",
        help="official downloads -> the preprocessed layout of the literature",
        formatter_class=HelpFormatter,
    )
    prep.add_argument("dataset", choices=("abd_ct", "abd_mri"), help="which official release")
    prep.add_argument(
        "--raw", required=True, help="abd_ct: folder holding RawData/Training; abd_mri: CHAOS Train_Sets"
    )
    prep.add_argument("--out", required=True, help="output root; the layout folder is created below it")
    prep.add_argument("--no-pseudolabels", action="store_true", help="skip superpixels and supervoxels")
    prep.set_defaults(func=handler)


def _add_sweep(sub: argparse._SubParsersAction, handler: Callable) -> None:
    sweep = sub.add_parser(
        "sweep",
        help="run a grid of jobs on local devices or SLURM, with resume",
        description="Run every job of a sweep YAML (grids over run options), one per device slot, and append "
        "each job's rows to <results>/results.csv atomically; a crashed job is recorded as failed.",
        epilog=SWEEP_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    sweep.add_argument("spec", help="sweep YAML, e.g. benchmark/sweeps/smoke.yaml")
    sweep.add_argument(
        "--devices", default=None,
        help="local slots: GPU ids '0,1' ('0,0': two slots on GPU 0), CPU slots 'cpu:2', or 'cpu:2x1' (2 slots of "
        "exactly 1 core); default: the spec's devices, else cpu:1",
    )  # fmt: skip
    sweep.add_argument(
        "--backend", choices=("local", "slurm"), default="local", help="slurm: through submitit"
    )
    sweep.add_argument("--resume", action="store_true", help="skip jobs already ok with the same fingerprint")
    sweep.add_argument(
        "--dry-run", action="store_true", help="validate every job and print the plan, run nothing"
    )
    sweep.add_argument("--results", default=None, help="results folder (default: the spec's, else results)")
    sweep.add_argument(
        "--only", action="append", default=[], metavar="NAME=V1,V2",
        help="run only the jobs whose run option NAME is one of the values (repeatable), e.g. method=dpl",
    )  # fmt: skip
    sweep.set_defaults(func=handler)


def _add_leaderboard(sub: argparse._SubParsersAction, handler: Callable) -> None:
    board = sub.add_parser(
        "leaderboard",
        help="aggregate sweep results into leaderboard tables and plots",
        formatter_class=HelpFormatter,
    )
    board.add_argument(
        "--results", nargs="+", default=["results"], help="results folder(s) holding results.csv"
    )
    board.add_argument(
        "--out", default="leaderboards", help="folder for the CSV and Markdown tables and plots"
    )
    board.add_argument("--published", default="leaderboards/published.csv", help="published numbers to join")
    board.add_argument(
        "--allow-mixed", action="store_true", help="pool rows of different fingerprints/profiles"
    )
    board.set_defaults(func=handler)


def _add_regression(sub: argparse._SubParsersAction, handler: Callable) -> None:
    regress = sub.add_parser(
        "regression",
        help="compare sweep Dice with a committed baseline fixture",
        formatter_class=HelpFormatter,
    )
    actions = regress.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="compare: exact in the fixture's environment, else within the seed-spread tolerances",
        formatter_class=HelpFormatter,
    )
    update = actions.add_parser(
        "update",
        help="rewrite the fixture (or some methods' entries) from seeds",
        formatter_class=HelpFormatter,
    )
    update.add_argument("--check-seed", type=int, default=0, help="the seed `check` runs with")
    update.add_argument(
        "--methods", nargs="+", default=None, help="replace only these methods' entries, keep the others"
    )
    stamp = actions.add_parser(
        "stamp",
        help="record the environment of a check-seed run that equals the fixture (no reruns)",
        formatter_class=HelpFormatter,
    )
    for action in (check, update, stamp):
        action.add_argument("--results", required=True, help="results folder of the regression sweep")
        action.add_argument(
            "--fixture",
            default="benchmark/baselines/ci_regression.json",
            help="the committed expected values",
        )
    regress.set_defaults(func=handler)

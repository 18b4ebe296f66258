"""GPU readiness check (``make gpu-check``): every method's paper profile at full size on one device, in minutes.

Per method, in its own subprocess (a failure, a timeout or an out-of-memory stops that method only): the
``paper`` profile with the full-size architectures of ``fsmis_bench/methods/sd_architectures`` randomly
initialised (``allow_random_init``; no weights needed), synthetic volumes at the paper resolution (256 px),
``--steps`` training steps and the first EP1 test case (one query scan and organ: its three chunks), run by
``fsmis_bench.runner.experiment.execute_run`` under the run's own determinism policy and the precision the
profile states. ProGiDiff's test-time LoRA gets the same step budget. Measured: steady steps/s (after the
first optimizer step), peak GPU memory of training and of testing, test-case seconds; beside them the dry-run
estimate of the same run. Then one ``fsmis-bench sweep --devices 0,0`` of two smoke jobs (two slots sharing
the GPU). Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` (default ``$OUT``, else gpu_check).

``--device cpu`` runs the same check at smoke sizes (smoke profiles, 64-px volumes, a ``cpu:2x1`` sweep):
the test suite runs it, so the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GB = 1e9
OK = ("ok", "not run")  # statuses that are not failures (the sweep is "not run" under --skip-sweep)
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Scale:
    profile: str
    in_plane: int  # synthetic volume size (the paper resolution is 256)
    n_slices: int | None  # None: the generator's anatomy-driven depth (about 30 slices)
    full_size: bool  # build the pretrained architectures full size, randomly initialised
    accelerator: str
    sweep_devices: str
    overrides: tuple[str, ...] = ()  # for every run of this scale


SCALES = {
    "cuda": Scale("paper", 256, None, True, "gpu", "0,0"),
    # 64-px phantoms have kidneys of a few hundred pixels: GT episodes need a lower area floor
    "cpu": Scale("smoke", 64, 16, False, "cpu", "cpu:2x1", ("data.min_gt_pixels=20",)),
}
#: Test-time training budgets that scale with the check's step count (method -> override key).
TEST_TIME_STEPS = {"progidiff": "model.init_args.adaptation.steps"}
#: Diagnostics the check leaves out to fit its deadline (they add no code path): ProGiDiff's second sampling pass
#: with the adapter off, which fills only the dice_before_adaptation column (half of its test time on an H200).
CHECK_ONLY = {"progidiff": ("model.init_args.adaptation.report_unadapted=false",)}
#: Default order: the diffusion methods first (the largest and the likeliest to fail), then the ResNet-101 ones.
#: The reference floors (no model, no training) are left out unless named with --methods.
DEFAULT_ORDER = ("progidiff", "sd_fsmis", "dpl", "panet", "alpnet")
SWEEP_METHODS = ("panet", "sd_fsmis")  # a prototype and a diffusion method, smoke profile, fold 0
SWEEP_RESERVE_S = 90.0  # of the check's deadline, kept for the sweep


def method_overrides(method: str, scale: Scale, steps: int) -> list[str]:
    """The check's ``--set`` values: full-size random init (GPU), the step budget, one test case."""
    from fsmis_bench.runner.experiment import RunRequest, resolve_config
    from fsmis_bench.runner.paper_scale import plan_for

    sets = []
    if scale.full_size:
        config = resolve_config(RunRequest(method=method, fold=0, profile=scale.profile))
        sets += plan_for(method, config, use_folders=False).overrides
    sets += [*scale.overrides, f"trainer.max_steps={steps}", "trainer.limit_test_batches=1"]
    if method in TEST_TIME_STEPS:
        sets.append(f"{TEST_TIME_STEPS[method]}={steps}")
    return [*sets, *CHECK_ONLY.get(method, ())]


# ---------------------------------------------------------------------- worker (one method, one process)
def instrument(cuda: bool, peaks: dict[str, int], clocks: list[Any], phases: list[dict]) -> None:
    """Wrap ``Trainer.fit`` / ``test``: peak GPU memory and seconds per phase (logged as each ends, so a
    method stopped at its timeout still shows where the time went), and a step clock callback during fit."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), int(trainer.global_step)))

    def measured(original: Any, phase: str) -> Any:
        def run(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            if phase == "fit":
                clocks.append(StepClock())
                trainer.callbacks.append(clocks[-1])
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            try:
                return original(trainer, *args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.synchronize()
                    peaks[phase] = max(peaks.get(phase, 0), torch.cuda.max_memory_allocated())
                phases.append({"phase": phase, "seconds": round(time.perf_counter() - began, 2)})
                if cuda:
                    phases[-1]["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / GB, 2)
                print(f"[gpu-check] {json.dumps(phases[-1])}", flush=True)

        return run

    L.Trainer.fit = measured(L.Trainer.fit, "fit")
    L.Trainer.test = measured(L.Trainer.test, "test")


def steady_rate(marks: list[tuple[float, int]]) -> float | None:
    """Optimizer steps per second after the first step (which pays for lazy initialisation)."""
    after = [(t, step) for t, step in marks if step >= 1]
    if len(after) < 2 or after[-1][1] == after[0][1]:
        return None
    return (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])


def worker(request_file: Path, result_file: Path) -> int:
    """Dry-run estimate, then the run; the result file is rewritten after each part."""
    import pandas as pd
    import torch

    from fsmis_bench.runner.dry_run import dry_run
    from fsmis_bench.runner.experiment import RunRequest, execute_run

    request = RunRequest(**json.loads(request_file.read_text(encoding="utf-8")))
    cuda = request.accelerator == "gpu"
    result: dict[str, Any] = {"method": request.method, "overrides": request.overrides}
    report = dry_run(request)
    result.update(
        {k: report[k] for k in ("precision", "batch_size", "image_size", "parameters", "trainable")}
    )
    result["memory_estimate_gb"] = report["memory_estimate_gb"]
    result["components"] = {n: c["parameters"] for n, c in report["components"].items()}
    result_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
    peaks: dict[str, int] = {}
    clocks: list[Any] = []
    result["phases"] = []
    instrument(cuda, peaks, clocks, result["phases"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    run_dir = execute_run(request)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    cases = pd.read_csv(run_dir / "cases.csv")
    rates = [r for r in (steady_rate(c.marks) for c in clocks) if r is not None]
    models = []
    for model in summary["models"]:
        tested = cases[cases["group"] == model["group"]].head(1)
        case = json.loads(tested[["scan_id", "organ", "n_slices"]].to_json(orient="records"))[:1] or [None]
        keys = ("group", "train_steps", "train_seconds", "test_seconds")
        models.append({**{k: model.get(k) for k in keys}, "test_case": case[0]})
    result.update(
        {
            "status": "ok",
            "determinism": summary["determinism"],
            "models": models,
            "steps_per_s": round(sum(rates) / len(rates), 3) if rates else None,
            "peak_gpu_gb": {k: round(v / GB, 2) for k, v in peaks.items()} if cuda else None,
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 2) if cuda else None,
            "peak_host_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 2),
        }
    )
    result_file.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------- orchestrator
def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]


def run_method(method: str, scale: Scale, steps: int, work: Path, data_root: Path, timeout: float) -> dict:
    """One method in its own process; a failure or timeout becomes its ``error`` with the log's last lines."""
    from fsmis_bench.registry import get_method

    started = time.monotonic()
    request_file, result_file = work / f"{method}.request.json", work / f"{method}.result.json"
    log = work / "logs" / f"{method}.log"
    try:
        get_method(method)
        request = {
            "method": method,
            "fold": 0,
            "dataset": "synthetic_mri",
            "data_root": str(data_root),
            "profile": scale.profile,
            "output": str(work / "runs"),
            "cache_dir": str(work / "cache"),
            "overrides": method_overrides(method, scale, steps),
            "accelerator": scale.accelerator,
        }
        request_file.write_text(json.dumps(request, indent=2), encoding="utf-8")
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(request_file)]
        with log.open("w") as handle:
            code = subprocess.run(
                [*command, "--result", str(result_file)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        error = None if code == 0 else f"exit status {code}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
    except Exception as exc:  # a bad profile or override: this method fails, the check goes on
        error = f"{type(exc).__name__}: {exc}"
    result = (
        json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else {"method": method}
    )
    if error and log.exists():
        marks = PHASE_LINE.findall(log.read_text(errors="replace"))
        result["phases"] = [json.loads(mark) for mark in marks]
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    if error:
        result.update(status="failed", error=error, log_tail=log_tail(log))
    return result


PHASE_LINE = re.compile(r"^\[gpu-check\] (\{.*\})$", re.MULTILINE)
SWEEP_LINE = re.compile(r"(DONE|FAILED)\s+\[\d+/\d+\] (\S+) \(([\d.]+) s on (\S+)\)")


def run_sweep(scale: Scale, methods: list[str], work: Path, data_root: Path, timeout: float) -> dict:
    """``fsmis-bench sweep`` of two smoke jobs on two slots (``0,0``: both on GPU 0)."""
    import yaml

    run = {
        "method": {"grid": methods},
        "dataset": "synthetic_mri",
        "data_root": str(data_root),
        "cache_dir": str(work / "cache"),
        "fold": 0,
        "profile": "smoke",
        "overrides": {
            key: yaml.safe_load(value) for key, value in (o.split("=", 1) for o in scale.overrides)
        },
    }
    spec = {"name": "gpu_check", "run": run}
    spec_file, log = work / "sweep.yaml", work / "logs" / "sweep.log"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "fsmis_bench.cli", "sweep", str(spec_file)]
    command += ["--devices", scale.sweep_devices, "--results", str(work / "sweep")]
    started = time.monotonic()
    try:
        with log.open("w") as handle:
            code = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        error = None if code == 0 else f"exit status {code}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
    jobs = [
        {"job": key, "status": "ok" if event == "DONE" else "failed", "seconds": float(s), "slot": slot}
        for event, key, s, slot in SWEEP_LINE.findall(log.read_text(errors="replace") if log.exists() else "")
    ]
    result = {
        "devices": scale.sweep_devices,
        "jobs": jobs,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if error or len(jobs) != len(methods) or any(j["status"] != "ok" for j in jobs):
        result.update(status="failed", error=error or "not every job ran ok", log_tail=log_tail(log))
    else:
        result["status"] = "ok"
    return result


def environment(device: str) -> dict[str, Any]:
    import torch

    info = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / GB, 1))
    return info


def write_markdown(report: dict, path: Path) -> None:
    def cell(value: Any) -> str:
        return "—" if value is None else str(value)

    lines = [
        f"# GPU check ({report['environment'].get('gpu', report['environment']['device'])})",
        "",
        f"Profile `{report['profile']}`, {report['steps']} training steps, the first EP1 test case; "
        f"environment {json.dumps(report['environment'])}; {report['wall_seconds']:.0f} s in all.",
        "Peak GPU memory is torch's max allocated (training / testing), the estimate is `--dry-run`'s training "
        'estimate of the same run (README, "Dry run and GPU check").',
        "",
        "| method | status | parameters (M) | trainable (M) | precision | steps/s | peak GPU GB train / test "
        "| estimate GB | test case s (slices), per model | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["methods"]:
        peaks = r.get("peak_gpu_gb") or {}
        tests = "; ".join(
            f"{m['test_seconds']} ({(m['test_case'] or {}).get('n_slices')})" for m in r.get("models", [])
        )
        lines.append(
            f"| {r['method']} | {r.get('status', 'failed')} | {cell(_m(r.get('parameters')))} | "
            f"{cell(_m(r.get('trainable')))} | {cell(r.get('precision'))} | {cell(r.get('steps_per_s'))} | "
            f"{cell(peaks.get('fit'))} / {cell(peaks.get('test'))} | {cell(r.get('memory_estimate_gb'))} | "
            f"{tests or '—'} | {r['wall_seconds']} |"
        )
    lines += ["", "Phases (seconds, peak GPU GB when on CUDA), in the order they ran:", ""]
    for r in report["methods"]:
        marks = [
            f"{m['phase']} {m['seconds']}" + (f" ({m['peak_gpu_gb']})" if "peak_gpu_gb" in m else "")
            for m in r.get("phases", [])
        ]
        lines.append(f"- {r['method']}: {', '.join(marks) or '—'}")
    sweep = report["sweep"]
    lines += [
        "",
        f"## Sweep `--devices {sweep['devices']}`: {sweep['status']} ({sweep['wall_seconds']} s)",
        "",
    ]
    lines += [f"- {j['job']}: {j['status']}, {j['seconds']:.1f} s on {j['slot']}" for j in sweep["jobs"]]
    failures = [r for r in [*report["methods"], {"method": "sweep", **sweep}] if r["status"] not in OK]
    if failures:
        lines += ["", "## Errors"]
        for r in failures:
            lines += ["", f"### {r['method']}: {r.get('error')}", "", "```", *r.get("log_tail", []), "```"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _m(count: int | None) -> float | None:
    return None if count is None else round(count / 1e6, 2)


def check(args: argparse.Namespace) -> int:
    from fsmis_bench.data.datasets import SYNTHETIC_MRI
    from fsmis_bench.data.synthetic import write_synthetic_dataset
    from fsmis_bench.registry import METHODS

    def left() -> float:
        return args.deadline - (time.monotonic() - started)

    started = time.monotonic()
    scale, out = SCALES[args.device], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fsmis-gpu-check-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data_root = write_synthetic_dataset(
        SYNTHETIC_MRI, work / "data", seed=0, in_plane=scale.in_plane, n_slices=scale.n_slices
    )
    methods: list[dict] = []
    report = {
        "profile": scale.profile,
        "scale": asdict(scale),
        "steps": args.steps,
        "environment": environment(args.device),
        "methods": methods,
        "sweep": {"devices": scale.sweep_devices, "status": "not run", "jobs": [], "wall_seconds": 0},
    }

    def write_report() -> None:
        """Rewritten after every part, so a check killed at the lease's end still leaves its findings."""
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        text = json.dumps(report, indent=2, default=str) + "\n"
        (out / "gpu_check.json").write_text(text, encoding="utf-8")
        write_markdown(report, out / "gpu_check.md")

    learned = [m for m in DEFAULT_ORDER if m in METHODS] + [
        m for m, entry in METHODS.items() if m not in DEFAULT_ORDER and not entry.reference
    ]
    for method in args.methods or learned:
        timeout = min(args.method_timeout, left() - (0 if args.skip_sweep else SWEEP_RESERVE_S))
        if timeout < 10:
            methods.append(
                {"method": method, "status": "skipped", "error": "the check's deadline", "wall_seconds": 0}
            )
        else:
            methods.append(run_method(method, scale, args.steps, work, data_root, timeout))
        print(f"{method}: {methods[-1]['status']} ({methods[-1]['wall_seconds']} s)", flush=True)
        write_report()
    if not args.skip_sweep:
        timeout = max(min(args.method_timeout, left()), 10.0)
        report["sweep"] = run_sweep(scale, args.sweep_methods, work, data_root, timeout)
        print(f"sweep --devices {scale.sweep_devices}: {report['sweep']['status']}", flush=True)
    write_report()
    if not args.work and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    parts = [*methods, *([] if args.skip_sweep else [report["sweep"]])]
    return 0 if all(r.get("status") == "ok" for r in parts) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=tuple(SCALES), default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check", help="folder for the report")
    parser.add_argument(
        "--methods", nargs="+", default=None, help="default: every learned method, diffusion methods first"
    )
    parser.add_argument("--steps", type=int, default=20, help="training (and test-time training) steps")
    parser.add_argument(
        "--method-timeout", type=float, default=240.0, help="seconds per method and for the sweep"
    )
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole check")
    parser.add_argument("--sweep-methods", nargs=2, default=list(SWEEP_METHODS), help="the two sweep jobs")
    parser.add_argument("--skip-sweep", action="store_true", help="methods only (a rerun of some methods)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.result)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())

"""Performance harness (``make bench``): where the time goes, per method, at its ``cpu`` profile.

Each method is measured in its own subprocess (so peak resident memory is per method) on synthetic_mri
fold 0. Every figure is a ratio measured within one run or a machine-independent count:

* training throughput (episodes/s), FLOPs per training step (``torch.utils.flop_counter``) and the achieved
  FLOP rate as a fraction of this machine's fp32 matrix-multiply peak, measured in the same process;
* the share of a training step spent waiting for the next batch;
* EP1 evaluation throughput (query slices/s) of the batched test loop vs a one-slice-at-a-time loop;
* peak resident memory;
* the project's Dice / HD95 against MONAI's on the same volumes (identical values, time ratio).

Writes ``benchmark/results/perf.json`` and ``benchmark/results/perf.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prior_perf import measure_prior_steps, render_prior  # benchmark/ is the script's folder

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_METHODS = ("panet", "alpnet", "dpl", "sd_fsmis", "progidiff")


def matmul_peak_flops(size: int = 1024, repeats: int = 20) -> float:
    """Best fp32 GEMM rate (FLOP/s) over a few trials: the machine's practical compute ceiling."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def _build(method: str, cache_dir: str) -> tuple[Any, Any, dict[str, Any]]:
    from fsmis_bench.config import instantiate
    from fsmis_bench.datamodule import FewShotDataModule
    from fsmis_bench.protocol.settings import model_groups
    from fsmis_bench.runner.experiment import RunRequest, resolve_config

    request = RunRequest(method=method, fold=0, profile="cpu", cache_dir=cache_dir)
    config = resolve_config(request)
    data_cfg = dict(config.get("data") or {})
    group = model_groups(1, data_cfg.get("pseudolabels", "superpix2d"))[0]
    data = FewShotDataModule(fold=0, setting=1, group=group, cache_dir=cache_dir, **data_cfg)
    data.setup()
    model_config = config["model"]
    if config.get("prior"):  # the cpu profiles of the diffusion methods: their prior, trained once and cached
        from fsmis_bench.runner.run_prior import model_with_prior

        model_config, _ = model_with_prior(request, config, group, f"bench {method}")
    model = instantiate(model_config)
    return model, data, config


def _attach_trainer(model: Any, data: Any, max_steps: int) -> None:
    """Just enough of a Trainer (and its datamodule) for configure_optimizers and the fit-start hooks."""
    import lightning as L

    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.strategy.connect(model)
    trainer._data_connector.attach_datamodule(model, datamodule=data)
    model.trainer = trainer


def measure_training(model: Any, data: Any, steps: int) -> dict[str, float]:
    """Episodes/s, FLOPs per step, data-wait share over ``steps`` optimiser steps after a warm-up."""
    from torch.utils.flop_counter import FlopCounterMode

    _attach_trainer(model, data, steps + 2)
    model.on_fit_start()
    optimizers = model.configure_optimizers()
    optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
    model.train()
    stream = iter(data.train_dataloader())

    def step(batch: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_losses(batch)["loss"]
        loss.backward()
        optimizer.step()

    step(next(stream))  # warm-up (allocations, lazy inits)
    with FlopCounterMode(display=False) as counter:
        step(next(stream))
    flops = counter.get_total_flops()
    wait = compute = 0.0
    batch_size = 0
    for _ in range(steps):
        started = time.perf_counter()
        batch = next(stream)
        fetched = time.perf_counter()
        step(batch)
        done = time.perf_counter()
        wait, compute = wait + fetched - started, compute + done - fetched
        batch_size = batch.n_queries
    total = wait + compute
    return {
        "episodes_per_s": steps * batch_size / total,
        "flops_per_step": float(flops),
        "achieved_flops_per_s": flops * steps / compute,
        "data_wait_share": wait / total,
        "step_seconds": total / steps,
        "batch_size": batch_size,
    }


def _single_query(batch: Any, index: int) -> Any:
    from dataclasses import replace

    keep = slice(index, index + 1)
    meta = {**batch.meta, "native_ref": batch.meta["native_ref"][keep], "slices": batch.meta["slices"][keep]}
    return replace(
        batch,
        query_images=batch.query_images[keep],
        query_masks=batch.query_masks[keep],
        query_episode=batch.query_episode[keep],
        meta=meta,
    )


def measure_evaluation(model: Any, data: Any, max_tasks: int) -> dict[str, float]:
    """Query slices/s of the batched EP1 loop and of a one-slice-at-a-time loop over the same tasks."""
    import torch

    model.eval()
    batches = [data.task_batch(task) for task in data.tasks[:max_tasks]]
    n_slices = sum(b.n_queries for b in batches)
    with torch.inference_mode():
        model.foreground_scores(batches[0])  # warm-up
        started = time.perf_counter()
        for batch in batches:
            model.predict_masks(batch)
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for batch in batches:
            for i in range(batch.n_queries):
                model.predict_masks(_single_query(batch, i))
        looped = time.perf_counter() - started
    return {
        "eval_slices": n_slices,
        "eval_batched_slices_per_s": n_slices / batched,
        "eval_looped_slices_per_s": n_slices / looped,
        "eval_batched_over_looped": looped / batched,
    }


def measure_metrics(data: Any, repeats: int = 3) -> dict[str, Any]:
    """Project Dice/HD95 vs MONAI's on every (query volume, organ) of fold 0, with a fake prediction."""
    import numpy as np
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from scipy import ndimage

    from fsmis_bench.metrics import score_volume

    cases = []
    for task in data.tasks:
        ref = data.scans[task.scan_id].native_label[list(task.slices)] == task.label
        pred = ndimage.binary_dilation(np.roll(ref, 3, axis=2), iterations=1)  # a plausible imperfect mask
        cases.append((task, pred, ref, data.scans[task.scan_id]))

    def ours() -> list[tuple[float, float]]:
        return [
            (r.dice, r.hd95)
            for r in (
                score_volume(t.scan_id, t.organ, p, g, s.spacing, s.native_shape) for t, p, g, s in cases
            )
        ]

    def monai() -> list[tuple[float, float]]:
        out = []
        for _, p, g, s in cases:
            pt = torch.from_numpy(np.stack([~p, p]))[None]
            gt = torch.from_numpy(np.stack([~g, g]))[None]
            dice = float(compute_dice(pt, gt, include_background=False))
            hd = float(
                compute_hausdorff_distance(
                    pt, gt, include_background=False, percentile=95, spacing=list(s.spacing)
                )
            )
            out.append((dice, hd))
        return out

    timings = {}
    values = {}
    for name, fn in (("project", ours), ("monai", monai)):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            values[name] = fn()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    ours_v, monai_v = np.asarray(values["project"]), np.asarray(values["monai"])
    return {
        "metric_cases": len(cases),
        "metrics_max_abs_difference": float(np.abs(ours_v - monai_v).max()),
        "metrics_identical": bool(np.allclose(ours_v, monai_v, rtol=1e-6, atol=1e-6)),
        "metrics_seconds_project": timings["project"],
        "metrics_seconds_monai": timings["monai"],
        "metrics_speed_ratio_monai_over_project": timings["monai"] / timings["project"],
    }


def measure_method(method: str, cache_dir: str, steps: int, max_tasks: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model, data, config = _build(method, cache_dir)
    out: dict[str, Any] = {"method": method, "threads": torch.get_num_threads()}
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["image_size"] = config.get("data", {}).get("image_size")
    if model.traits.trainable:
        # the peak is the mean of two measurements around the timed steps: the machine's load drifts
        before = matmul_peak_flops()
        out.update(measure_training(model, data, steps))
        out["matmul_peak_flops_per_s"] = peak = (before + matmul_peak_flops()) / 2
        out["flop_utilisation"] = out["achieved_flops_per_s"] / peak
    out.update(measure_evaluation(model, data, max_tasks))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _unet_step(unet: Any, x: Any, t: Any, context: Any) -> None:
    unet(x, t, encoder_hidden_states=context).sample.square().mean().backward()


def unet_width_scaling(
    widths: tuple[int, ...] = (16, 64, 160), latent: int = 32, steps: int = 3
) -> list[dict]:
    """FLOP utilisation of one diffusers UNet training step (forward + backward) as the channel width grows.

    The cpu profiles' UNets are 16-64 channels wide: their convolutions and norms move more bytes than they
    compute, so they sit far below the matmul peak. This shows the same class approaching it as it widens
    (SD-1.5 is 320 wide), i.e. what bounds the figure at the cpu profile."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for width in widths:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=latent,
            in_channels=4,
            out_channels=4,
            block_out_channels=(width, 2 * width, 2 * width),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        inputs = (torch.randn(8, 4, latent, latent), torch.ones(8), torch.randn(8, 1, 64))
        peak = matmul_peak_flops()  # next to the measurement: the machine's load changes over a run
        _unet_step(unet, *inputs)
        with FlopCounterMode(display=False) as counter:
            _unet_step(unet, *inputs)
        started = time.perf_counter()
        for _ in range(steps):
            _unet_step(unet, *inputs)
        seconds = (time.perf_counter() - started) / steps
        flops = counter.get_total_flops()
        rows.append(
            {
                "width": width,
                "flops_per_step": flops,
                "seconds": seconds,
                "flop_utilisation": flops / seconds / peak,
            }
        )
    return rows


def render_markdown(results: dict[str, Any]) -> str:
    rows = [
        "| method | episodes/s | GFLOP/step | FLOP util. | data wait | EP1 batched slices/s | looped slices/s | batched/looped | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["methods"]:
        if "error" in r:
            rows.append(f"| {r['method']} | error: {r['error']} |||||||| ")
            continue
        train = r.get("episodes_per_s")
        rows.append(
            "| {m} | {eps} | {gf} | {util} | {wait} | {b:.1f} | {l:.1f} | {ratio:.1f}x | {rss:.0f} |".format(
                m=r["method"],
                eps=f"{train:.1f}" if train else "-",
                gf=f"{r['flops_per_step'] / 1e9:.2f}" if train else "-",
                util=f"{100 * r['flop_utilisation']:.1f} %" if train else "-",
                wait=f"{100 * r['data_wait_share']:.1f} %" if train else "-",
                b=r["eval_batched_slices_per_s"],
                l=r["eval_looped_slices_per_s"],
                ratio=r["eval_batched_over_looped"],
                rss=r["peak_rss_mb"],
            )
        )
    m = results["metrics"]
    rows += [
        "",
        f"Matrix-multiply peak (fp32, {results['threads']} threads): {results['matmul_peak_gflops']:.1f} GFLOP/s.",
        "",
        f"Metrics on {m['metric_cases']} (query volume, organ) cases of synthetic_mri fold 0: identical to MONAI: "
        f"{m['metrics_identical']} (max |difference| {m['metrics_max_abs_difference']:.2e}); time project "
        f"{m['metrics_seconds_project']:.2f} s vs MONAI {m['metrics_seconds_monai']:.2f} s "
        f"(MONAI / project = {m['metrics_speed_ratio_monai_over_project']:.2f}).",
    ]
    scaling = results.get("unet_width_scaling")
    if scaling:
        rows += [
            "",
            "FLOP utilisation of one diffusers UNet training step (batch 8, 32×32 latents) against channel width "
            "(the cpu profiles use 16-64; SD-1.5 uses 320):",
            "",
            "| base width | GFLOP/step | s/step | FLOP util. |",
            "|---|---|---|---|",
            *(
                f"| {r['width']} | {r['flops_per_step'] / 1e9:.2f} | {r['seconds']:.3f} | "
                f"{100 * r['flop_utilisation']:.1f} % |"
                for r in scaling
            ),
        ]
    if results.get("prior"):
        rows += render_prior(results["prior"])
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    parser.add_argument("--eval-tasks", type=int, default=4, help="(query volume, organ) tasks timed")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one method
    args = parser.parse_args(argv)
    from fsmis_bench.data.cache import default_cache_dir

    cache_dir = args.cache_dir or str(default_cache_dir())
    if args.one:
        print(json.dumps(measure_method(args.one, cache_dir, args.steps, args.eval_tasks)))
        return 0
    from fsmis_bench.registry import METHODS

    methods = [m for m in args.methods.split(",") if m in METHODS]
    results: dict[str, Any] = {"methods": []}
    for method in methods:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--one", method, "--steps", str(args.steps), "--eval-tasks", str(args.eval_tasks),
             "--cache-dir", cache_dir],
            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        if proc.returncode != 0:
            results["methods"].append({"method": method, "error": proc.stderr.strip().splitlines()[-1][:200]})
        else:
            results["methods"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{method}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    import torch

    _, data, _ = _build(methods[0], cache_dir)
    results["metrics"] = measure_metrics(data)
    results["threads"] = torch.get_num_threads()
    results["matmul_peak_gflops"] = matmul_peak_flops() / 1e9
    results["unet_width_scaling"] = unet_width_scaling()
    results["prior"] = measure_prior_steps(matmul_peak_flops)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    (out / "perf.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

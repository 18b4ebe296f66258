"""Throughput and FLOP use of the in-domain prior's two training steps (``make bench``, ``perf.py``).

One VAE step (images + as many masks, encode, sample, decode, backward, AdamW) and one UNet step (noised
latents, prompt context, epsilon loss, backward, AdamW) at the prior's default sizes and batches, timed after a
warm-up and counted with ``torch.utils.flop_counter``; utilisation is against the fp32 matrix-multiply peak
measured right beside it. Inputs are random tensors: the FLOPs and the time of a step do not depend on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def _timed(step: Callable[[], None], steps: int, peak: float) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    flops = counter.get_total_flops()
    return {
        "steps_per_s": 1 / seconds,
        "gflops_per_step": flops / 1e9,
        "flop_utilisation": flops / seconds / peak,
    }


def measure_prior_steps(
    peak_flops: Callable[[], float], steps: int = 5, image_size: int = 64
) -> dict[str, Any]:
    """VAE and UNet step figures of the default ``PriorConfig`` (the ``cpu`` profiles' prior)."""
    import torch
    import torch.nn.functional as F

    from fsmis_bench.prior.builder import build_components, prompt_embedding
    from fsmis_bench.prior.config import PriorConfig

    torch.manual_seed(0)
    cfg = PriorConfig()
    parts = build_components(cfg, image_size)
    vae, unet = parts["vae"].train(), parts["unet"].train()
    images = torch.rand(2 * cfg.vae_batch, 3, image_size, image_size) * 2 - 1
    vae_optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)

    def vae_step() -> None:
        posterior = vae.encode(images).latent_dist
        loss = (
            F.mse_loss(vae.decode(posterior.sample()).sample, images) + cfg.kl_weight * posterior.kl().mean()
        )
        vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        vae_optimizer.step()

    grid = image_size // 2 ** (len(cfg.vae["block_out_channels"]) - 1)
    latents = torch.randn(cfg.unet_batch, cfg.vae["latent_channels"], grid, grid)
    context = prompt_embedding(parts["text_encoder"], parts["tokenizer"], "an abdominal mri slice")
    context = context.expand(cfg.unet_batch, -1, -1)
    timesteps = torch.randint(0, cfg.num_train_timesteps, (cfg.unet_batch,))
    unet_optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr)

    def unet_step() -> None:
        noise = torch.randn_like(latents)
        loss = F.mse_loss(unet(latents + noise, timesteps, encoder_hidden_states=context).sample, noise)
        unet_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        unet_optimizer.step()

    result = {}
    for name, step, count in (("vae", vae_step, cfg.vae_steps), ("unet", unet_step, cfg.unet_steps)):
        peak = peak_flops()  # beside each measurement: the machine's load drifts
        figures = _timed(step, steps, peak)
        result[name] = {**figures, "batch": cfg.vae_batch * 2 if name == "vae" else cfg.unet_batch,
                        "profile_steps": count, "profile_minutes": count / figures["steps_per_s"] / 60}  # fmt: skip
    result["minutes_per_prior"] = result["vae"]["profile_minutes"] + result["unet"]["profile_minutes"]
    return result


def render_prior(figures: dict[str, Any]) -> list[str]:
    rows = [
        "",
        "In-domain prior (`cpu` profiles of SD-FSMIS and ProGiDiff; default sizes, one training step of each stage):",
        "",
        "| stage | batch | steps/s | GFLOP/step | FLOP util. | profile steps | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("vae", "unet"):
        r = figures[name]
        rows.append(
            f"| {name} | {r['batch']} | {r['steps_per_s']:.2f} | {r['gflops_per_step']:.2f} | "
            f"{100 * r['flop_utilisation']:.1f} % | {r['profile_steps']} | {r['profile_minutes']:.1f} |"
        )
    rows.append(
        f"\nTraining one prior: about {figures['minutes_per_prior']:.1f} minutes at this thread count."
    )
    return rows

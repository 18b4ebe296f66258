"""Training the prior's two stages: the autoencoder on slices and label-free masks, then the UNet as a latent
diffusion model on the slices' latents, conditioned on one modality prompt through the CLIP text encoder.

Recipe (measured on CHAOS fold 0 with the SD-FSMIS ``cpu`` sizes, one core): the VAE learns images and masks
in {-1, +1} (60 % one or two superpixels of a training slice, 40 % random ellipses; no label is read) with
MSE + 1e-6 KL and its posterior log-variance started at -10 so that samples are nearly the mean, as for SD's
VAE; its ``scaling_factor`` becomes 1 / std of the image latents, as SD's 0.18215 was chosen. The UNet learns
epsilon (or v) prediction under SD's DDPM schedule (1000 steps, scaled-linear betas 0.00085 to 0.012) on the
cached image latents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor

from fsmis_bench.methods.sd_fsmis.vae_pretraining import mask_images, set_logvar, to_signed
from fsmis_bench.prior.config import PriorConfig
from fsmis_bench.prior.slices import PriorSlices

log = logging.getLogger(__name__)
LOG_EVERY = 25
#: Step -> scalars, for TensorBoard.
Logger = Callable[[str, int, dict[str, float]], None]


def ellipse_masks(n: int, size: int, rng: np.random.Generator) -> Tensor:
    """``n`` filled ellipses of random centre, axes (4 to 40 % of the side) and angle: [n, size, size]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = rng.uniform(0.2, 0.8, size=(n, 2)) * size
    axes = rng.uniform(0.04, 0.4, size=(n, 2)) * size
    angle = rng.uniform(0, np.pi, size=n)
    dy, dx = yy[None] - centre[:, 0, None, None], xx[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    inside = (u / axes[:, 1, None, None]) ** 2 + (v / axes[:, 0, None, None]) ** 2 <= 1.0
    return torch.from_numpy(inside)


def superpixel_masks(slices: PriorSlices, picks: np.ndarray, rng: np.random.Generator) -> Tensor:
    """One or two superpixels of each picked slice (background id 0 excluded), as binary masks."""
    masks = []
    for index in picks:
        labels = slices.superpixels[index]
        ids = np.unique(labels)
        ids = ids[ids > 0]
        chosen = (
            rng.choice(ids, size=min(len(ids), int(rng.integers(1, 3))), replace=False) if len(ids) else []
        )
        masks.append(torch.from_numpy(np.isin(labels, chosen)))
    return torch.stack(masks)


def label_free_masks(slices: PriorSlices, n: int, fraction: float, rng: np.random.Generator) -> Tensor:
    n_superpixel = round(n * fraction)
    size = slices.images.shape[-1]
    picks = rng.integers(len(slices.slices), size=n_superpixel)
    parts = [superpixel_masks(slices, picks, rng), ellipse_masks(n - n_superpixel, size, rng)]
    return torch.cat([p for p in parts if len(p)]).float()


def as_vae_input(images: Tensor) -> Tensor:
    """[N, r, r] slices in [0, 1] -> [N, 3, r, r] in [-1, 1], as SD-FSMIS and ProGiDiff encode them."""
    return to_signed(images).unsqueeze(1).expand(-1, 3, -1, -1)


def train_autoencoder(
    vae: AutoencoderKL, slices: PriorSlices, cfg: PriorConfig, rng: np.random.Generator, logger: Logger
) -> dict[str, Any]:
    vae.train().requires_grad_(True)
    set_logvar(vae, cfg.logvar_init)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    began = time.perf_counter()
    for step in range(cfg.vae_steps):
        picks = rng.integers(len(slices.slices), size=cfg.vae_batch)
        masks = label_free_masks(slices, cfg.vae_batch, cfg.superpixel_mask_fraction, rng)
        inputs = torch.cat([as_vae_input(slices.images[torch.from_numpy(picks)]), mask_images(masks)])
        posterior = vae.encode(inputs).latent_dist
        recon = vae.decode(posterior.sample()).sample
        image_mse = F.mse_loss(recon[: cfg.vae_batch], inputs[: cfg.vae_batch])
        mask_mse = F.mse_loss(recon[cfg.vae_batch :], inputs[cfg.vae_batch :])
        loss = image_mse + mask_mse + cfg.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % LOG_EVERY == 0 or step == cfg.vae_steps - 1:
            logger("vae", step, {"image_mse": image_mse.item(), "mask_mse": mask_mse.item()})
    seconds = time.perf_counter() - began
    vae.eval().requires_grad_(False)
    latents = encode_latents(vae, slices.images[:: max(1, len(slices.slices) // 256)], scale=1.0)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-6)))
    return {
        "steps": cfg.vae_steps,
        "seconds": round(seconds, 1),
        "steps_per_s": round(cfg.vae_steps / seconds, 3),
        "final_image_mse": round(image_mse.item(), 5),
        "final_mask_mse": round(mask_mse.item(), 5),
        "scaling_factor": round(float(vae.config.scaling_factor), 5),
    }


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: Tensor, scale: float | None = None, batch: int = 64) -> Tensor:
    """Posterior means of ``images`` [N, r, r] times the VAE's scaling factor (or ``scale``)."""
    factor = vae.config.scaling_factor if scale is None else scale
    parts = [
        vae.encode(as_vae_input(images[i : i + batch])).latent_dist.mean for i in range(0, len(images), batch)
    ]
    return torch.cat(parts) * factor


@torch.no_grad()
def mask_round_trip_dice(vae: AutoencoderKL, slices: PriorSlices, per_organ: int = 64) -> dict[str, float]:
    """Dice (%) of organ masks after encode -> decode (decoded mean over channels > 0): the codec check the
    methods rely on, on real organ shapes of the training slices (diagnostic; no training uses it)."""
    scores = {}
    for organ, label in slices.organ_labels.items():
        present = np.flatnonzero((slices.labels == label).any(axis=(1, 2)))[:per_organ]
        if not len(present):
            continue
        masks = torch.from_numpy(slices.labels[present] == label)
        decoded = vae.decode(vae.encode(mask_images(masks)).latent_dist.mean).sample.mean(1) > 0
        overlap = (decoded & masks).sum().item()
        scores[organ] = round(200.0 * overlap / max(decoded.sum().item() + masks.sum().item(), 1), 2)
    return scores


def diffusion_target(scheduler: DDPMScheduler, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def denoising_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: Tensor,
    context: Tensor,
    generator: torch.Generator,
) -> Tensor:
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=context.expand(len(latents), -1, -1)).sample
    return F.mse_loss(prediction, diffusion_target(scheduler, latents, noise, timesteps))


def held_out_loss(
    unet: UNet2DConditionModel, scheduler: DDPMScheduler, latents: Tensor, context: Tensor, seed: int
) -> float:
    """The denoising loss on fixed slices, noise and timesteps: comparable before and after training."""
    with torch.no_grad():
        return denoising_loss(unet, scheduler, latents, context, torch.Generator().manual_seed(seed)).item()


def train_latent_diffusion(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: Tensor,
    validation: Tensor,
    context: Tensor,
    cfg: PriorConfig,
    generator: torch.Generator,
    logger: Logger,
) -> dict[str, Any]:
    """``latents`` [N, 4, h, w] (scaled) train the UNet; ``validation`` latents are never trained on."""
    before = held_out_loss(unet, scheduler, validation, context, seed=1)
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    recent: list[float] = []
    began = time.perf_counter()
    for step in range(cfg.unet_steps):
        picks = torch.randint(0, len(latents), (cfg.unet_batch,), generator=generator)
        loss = denoising_loss(unet, scheduler, latents[picks], context, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = [*recent[-19:], loss.item()]
        if step % LOG_EVERY == 0 or step == cfg.unet_steps - 1:
            logger("unet", step, {"loss": loss.item()})
    seconds = time.perf_counter() - began
    unet.eval().requires_grad_(False)
    return {
        "steps": cfg.unet_steps,
        "seconds": round(seconds, 1),
        "steps_per_s": round(cfg.unet_steps / seconds, 3),
        "final_loss": round(float(np.mean(recent)), 5),
        "validation_loss_before": round(before, 5),
        "validation_loss_after": round(held_out_loss(unet, scheduler, validation, context, seed=1), 5),
        "validation_slices": len(validation),
    }

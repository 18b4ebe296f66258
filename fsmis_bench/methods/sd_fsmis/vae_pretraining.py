"""In-run VAE pre-training for randomly initialised VAEs (CPU profiles only; our design choice).

SD-FSMIS decodes the predicted mask latent with the frozen SD VAE. A randomly initialised VAE is no mask
codec, so a run without pretrained weights first trains the small VAE for a few hundred steps to reconstruct
the training episodes' slices and masks (both mapped to [-1, 1], three channels, exactly as SD-FSMIS encodes
them), then freezes it and sets ``scaling_factor`` to 1 / std of the latents, as SD did for its 0.18215.
Only training-scan slices and training-class masks are seen, so no test information leaks in.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch, as_three_channels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VaePretraining:
    steps: int = 300
    lr: float = 1e-3
    kl_weight: float = 1e-6
    mask_weight: float = 1.0  # weight of the mask reconstruction term relative to the image term
    crop: int | None = 64  # train on one random square crop per step (cheaper; needs a convolutional VAE)
    #: Start the posterior log-variance at this constant so that ``latent_dist.sample()`` is nearly the mean, as
    #: for SD's VAE; a freshly initialised VAE has std ~ 1 and would drown the regression targets in noise.
    logvar_init: float | None = -10.0
    rescale: bool = True  # set scaling_factor = 1 / std of the posterior means after training


def to_signed(images: Tensor) -> Tensor:
    """[0, 1] images -> [-1, 1]."""
    return images * 2 - 1


def mask_images(masks: Tensor) -> Tensor:
    """{0, 1} masks [..., H, W] -> {-1, +1} three-channel images [..., 3, H, W]."""
    return as_three_channels(masks.float() * 2 - 1)


def episode_tensors(batch: EpisodeBatch, device: torch.device) -> tuple[Tensor, Tensor]:
    """The query slices and masks of a training batch as [-1, 1] three-channel images (the supports are
    adjacent slices of the same classes, so they add cost rather than variety)."""
    return to_signed(batch.query_images.to(device)), mask_images(batch.query_masks.to(device))


def set_logvar(vae: AutoencoderKL, value: float) -> None:
    """Make the posterior log-variance a constant: zero its weights, set its bias (second half of the moments)."""
    conv = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    latent = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[latent:].zero_()
        conv.bias[latent:].fill_(value)


def random_crop(images: Tensor, size: int | None) -> Tensor:
    """One random ``size`` x ``size`` window shared by the whole stack (global RNG, seeded by the run)."""
    height, width = images.shape[-2:]
    if size is None or size >= min(height, width):
        return images
    top = int(torch.randint(0, height - size + 1, ()))
    left = int(torch.randint(0, width - size + 1, ()))
    return images[..., top : top + size, left : left + size]


def pretrain_vae(
    vae: AutoencoderKL, batches: Iterable[EpisodeBatch], cfg: VaePretraining, device: torch.device
) -> dict[str, float]:
    """Train ``vae`` in place on reconstruction of slices and masks; returns what is recorded with results."""
    vae.train().requires_grad_(True)
    if cfg.logvar_init is not None:
        set_logvar(vae, cfg.logvar_init)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    image_loss = mask_loss = torch.zeros(())
    for step, batch in enumerate(itertools.islice(batches, cfg.steps)):
        inputs = random_crop(torch.cat(episode_tensors(batch, device)), cfg.crop)
        posterior = vae.encode(inputs).latent_dist
        recon = vae.decode(posterior.sample()).sample
        half = len(inputs) // 2
        image_loss = F.mse_loss(recon[:half], inputs[:half])
        mask_loss = F.mse_loss(recon[half:], inputs[half:])
        loss = image_loss + cfg.mask_weight * mask_loss + cfg.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log.info("vae pre-training step %d: image mse %.4f, mask mse %.4f", step, image_loss, mask_loss)
    vae.eval().requires_grad_(False)
    record = {**asdict(cfg), "final_image_mse": image_loss.item(), "final_mask_mse": mask_loss.item()}
    if cfg.rescale:
        with torch.no_grad():
            images, masks = episode_tensors(next(iter(batches)), device)
            latents = vae.encode(torch.cat([images, masks])).latent_dist.mode()
        vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-6)))
    record["scaling_factor"] = float(vae.config.scaling_factor)
    return record

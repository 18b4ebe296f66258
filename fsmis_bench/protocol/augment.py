"""Batched training augmentation on torch tensors (protocol §5.4): affine + elastic in one resampling, gamma.

Pixel-valued parameters (translation, elastic α and σ) are defined at ``reference_size`` = 256 and scaled to
the working resolution, so a 128-pixel run sees the same physical deformation as a 256-pixel run.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 5.0
    translation_px: float = 5.0
    shear_deg: float = 5.0
    scale_min: float = 0.9
    scale_max: float = 1.2
    elastic_alpha: float = 10.0
    elastic_sigma: float = 5.0
    gamma_min: float = 0.5
    gamma_max: float = 1.5
    reference_size: int = 256
    #: "both": every transform on both copies independently (alpnet); "one": each transform family on
    #: either the support or the query with probability 0.5 (qnet lineage, SD-FSMIS).
    sides: str = "both"
    #: Seed of a displacement field reused for every elastic draw (SD-FSMIS official quirk); None = fresh.
    elastic_fixed_seed: int | None = None


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=16)
def _smoothing_matrix(size: int, sigma: float) -> Tensor:
    """[size, size] banded Toeplitz matrix M with (x @ M)[j] = sum_i x[i] k[i - j]: a 1-D Gaussian filter with
    zero padding as one matrix product (much faster than a long depthwise convolution on CPU)."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    offsets = torch.arange(size).view(-1, 1) - torch.arange(size).view(1, -1)
    inside = offsets.abs() <= radius
    return torch.where(inside, kernel[(offsets + radius).clamp(0, len(kernel) - 1)], torch.zeros(()))


def smooth_noise(shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> Tensor:
    """U(-1, 1) noise of shape [B, C, h, w] smoothed by a separable Gaussian (zero padding, like scipy's
    ``gaussian_filter(mode='constant')`` in the reference elastic transform)."""
    noise = torch.rand(shape, generator=generator) * 2 - 1
    rows, cols = _smoothing_matrix(shape[-2], sigma), _smoothing_matrix(shape[-1], sigma)
    return rows.T @ (noise @ cols)


def affine_matrices(n: int, size: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """[n, 2, 3] sampling matrices in normalised coordinates: rotation, shear, isotropic scale, translation."""
    rotation = torch.deg2rad(_uniform(n, -cfg.rotation_deg, cfg.rotation_deg, generator))
    shear = torch.deg2rad(_uniform(n, -cfg.shear_deg, cfg.shear_deg, generator))
    scale = _uniform(n, cfg.scale_min, cfg.scale_max, generator)
    translation = _uniform(2 * n, -cfg.translation_px, cfg.translation_px, generator).view(n, 2)
    translation = translation * (size / cfg.reference_size) * 2 / size  # pixels -> normalised units
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.zeros(n, 2, 2)
    shr[:, 0, 0] = 1
    shr[:, 1, 1] = 1
    shr[:, 0, 1] = torch.tan(shear)
    linear = rot @ shr / scale.view(n, 1, 1)  # sampling at coords / scale zooms in by `scale`
    return torch.cat([linear, translation.unsqueeze(-1)], dim=-1)


def elastic_displacement(n: int, size: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """[n, h, w, 2] displacement in normalised units: smoothed noise × α, with α and σ scaled to ``size``."""
    factor = size / cfg.reference_size
    sigma, alpha = cfg.elastic_sigma * factor, cfg.elastic_alpha * factor
    if cfg.elastic_fixed_seed is not None:
        fixed = torch.Generator().manual_seed(cfg.elastic_fixed_seed)
        field = smooth_noise((1, 2, size, size), sigma, fixed).expand(n, -1, -1, -1)
    else:
        field = smooth_noise((n, 2, size, size), sigma, generator)
    return (field * alpha * 2 / size).permute(0, 2, 3, 1)


def gamma_transform(images: Tensor, gammas: Tensor) -> Tensor:
    """x -> min + (max - min) · ((x - min) / (max - min)) ** γ, per sample over its own min–max range."""
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (images.dim() - 1))
    high = flat.max(dim=1).values.view(-1, *[1] * (images.dim() - 1))
    span = (high - low).clamp_min(1e-8)
    unit = ((images - low) / span).clamp(0, 1)
    return low + span * unit ** gammas.view(-1, *[1] * (images.dim() - 1))


def augment_pair(
    images: Tensor, masks: Tensor, cfg: AugmentConfig, generator: torch.Generator, apply: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Augment a batch of grey slices [B, h, w] and their masks [B, h, w] (any integer-valued map).

    Affine and elastic act through one ``grid_sample`` (image bicubic with border padding, mask nearest);
    gamma follows. ``apply`` is a [B, 3] boolean matrix choosing, per sample, which of (affine, elastic,
    gamma) to apply; by default all three.
    """
    if not cfg.enabled:
        return images, masks
    n, size = images.shape[0], images.shape[-1]
    if apply is None:
        apply = torch.ones(n, 3, dtype=torch.bool)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    theta = torch.where(apply[:, 0].view(n, 1, 1), affine_matrices(n, size, cfg, generator), identity)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    grid = grid + elastic_displacement(n, size, cfg, generator) * apply[:, 1].view(n, 1, 1, 1)
    warped = F.grid_sample(images[:, None], grid, mode="bicubic", padding_mode="border", align_corners=False)[
        :, 0
    ]
    warped_masks = F.grid_sample(
        masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )[:, 0]
    gammas = torch.where(apply[:, 2], _uniform(n, cfg.gamma_min, cfg.gamma_max, generator), torch.ones(n))
    return gamma_transform(warped, gammas), warped_masks.to(masks.dtype)


def augment_episode_pair(
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Augment the support and query copies of a batch of episodes according to ``cfg.sides``."""
    n = support[0].shape[0]
    if cfg.sides == "both":
        return augment_pair(*support, cfg, generator), augment_pair(*query, cfg, generator)
    if cfg.sides != "one":
        raise ValueError(f"augmentation sides must be 'both' or 'one', got '{cfg.sides}'")
    # Each transform family is applied with probability 0.5 to either the support or the query (never both);
    # affine and elastic travel together as in the lineage.
    geometric_on_support = torch.rand(n, generator=generator) < 0.5
    gamma_on_support = torch.rand(n, generator=generator) < 0.5
    support_apply = torch.stack([geometric_on_support, geometric_on_support, gamma_on_support], 1)
    both = torch.cat([support[0], query[0]]), torch.cat([support[1], query[1]])
    out_images, out_masks = augment_pair(*both, cfg, generator, torch.cat([support_apply, ~support_apply]))
    return (out_images[:n], out_masks[:n]), (out_images[n:], out_masks[n:])

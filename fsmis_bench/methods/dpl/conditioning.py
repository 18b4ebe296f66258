"""Spatial-aware condition of the reverse process: support-mask geometry and prototype feature statistics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.prototype.prototypes import masked_average

INJECTIONS = ("add", "film")
GEOMETRY = ("centroid_x", "centroid_y", "spread_x", "spread_y", "area", "log_bbox_aspect")


@dataclass(frozen=True)
class ConditioningConfig:
    """Which statistics make up c and how the denoiser receives them (``enabled: false``: unconditional)."""

    enabled: bool = True
    injection: str = "add"  # "add": embedding added to the time embedding; "film": scale/shift hidden layers
    geometry: bool = True  # the six GEOMETRY values of the support mask
    feature_stats: bool = True  # channel mean and std of the foreground features, projected down
    dispersion: bool = False  # mean cosine distance of the foreground features to p0
    stats_dim: int = 32  # width of the projected feature statistics

    def __post_init__(self) -> None:
        if self.injection not in INJECTIONS:
            raise ConfigError(f"conditioning.injection '{self.injection}' unknown (known: add, film)")
        if self.enabled and not (self.geometry or self.feature_stats or self.dispersion):
            raise ConfigError("conditioning has no statistic left; use conditioning.enabled=false instead")


def _extent(flags: Tensor) -> Tensor:
    """Length of the span between the first and last True along the last axis, in cells (>= 1)."""
    n = flags.shape[-1]
    index = torch.arange(n, device=flags.device)
    first = torch.where(flags, index, n).amin(dim=-1)
    last = torch.where(flags, index, -1).amax(dim=-1)
    return (last - first + 1).clamp_min(1).float()


def mask_geometry(masks: Tensor) -> Tensor:
    """Soft masks [E, K, h, w] -> [E, 6] GEOMETRY, averaged over shots; all zeros for an empty mask.

    Coordinates are pixel centres in [0, 1]; centroid and spread are the mask-weighted mean and standard
    deviation; the bounding box covers the pixels above half the mask's maximum; its aspect is log(height/width).
    """
    _, _, h, w = masks.shape
    m = masks.float()
    total = m.sum(dim=(-2, -1))
    denom = total.clamp_min(1e-6)
    ys = (torch.arange(h, device=m.device) + 0.5) / h
    xs = (torch.arange(w, device=m.device) + 0.5) / w
    rows, cols = m.sum(dim=-1), m.sum(dim=-2)
    cy, cx = (rows * ys).sum(-1) / denom, (cols * xs).sum(-1) / denom
    sy = ((rows * (ys - cy[..., None]) ** 2).sum(-1) / denom).clamp_min(0).sqrt()
    sx = ((cols * (xs - cx[..., None]) ** 2).sum(-1) / denom).clamp_min(0).sqrt()
    inside = m > 0.5 * m.amax(dim=(-2, -1), keepdim=True)
    aspect = torch.log((_extent(inside.any(dim=-1)) / h) / (_extent(inside.any(dim=-2)) / w))
    geometry = torch.stack([cx, cy, sx, sy, total / (h * w), aspect], dim=-1)
    return torch.where(total[..., None] > 0, geometry, torch.zeros_like(geometry)).mean(dim=1)


def feature_statistics(features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Foreground channel mean and std [E, C] (scale-free: divided by the mean's RMS) and the cosine
    dispersion [E, 1] of the foreground features around their mean (= p0); features [E, K, C, h, w]."""
    mean = masked_average(features, masks)
    centred = features - mean[:, None, :, None, None]
    std = (masked_average(centred**2, masks) + 1e-6).sqrt()
    scale = (mean.pow(2).mean(dim=-1, keepdim=True) + 1e-12).sqrt()  # no NaN gradient for an empty mask
    cosine = F.cosine_similarity(features, mean[:, None, :, None, None].expand_as(features), dim=2, eps=1e-6)
    dispersion = (masks * (1 - cosine)).sum(dim=(1, 2, 3)) / masks.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    return mean / scale, std / scale, dispersion[:, None]


class SpatialCondition(nn.Module):
    """c = [proj(mean ‖ std), geometry, dispersion] -> MLP -> an embedding of the denoiser's width."""

    def __init__(self, feature_dim: int, embed_dim: int, config: ConditioningConfig) -> None:
        super().__init__()
        self.config = config
        width = len(GEOMETRY) * config.geometry + config.dispersion
        self.stats_proj = None
        if config.feature_stats:
            self.stats_proj = nn.Linear(2 * feature_dim, config.stats_dim)
            width += config.stats_dim
        self.mlp = nn.Sequential(nn.Linear(width, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, features: Tensor, masks: Tensor) -> Tensor:
        """Support features [E, K, C, h, w] and soft masks [E, K, h, w] -> condition embedding [E, D]."""
        parts = []
        mean, std, dispersion = feature_statistics(features, masks)
        if self.stats_proj is not None:
            parts.append(self.stats_proj(torch.cat([mean, std], dim=-1)))
        if self.config.geometry:
            parts.append(mask_geometry(masks).to(features.dtype))
        if self.config.dispersion:
            parts.append(dispersion)
        return self.mlp(torch.cat(parts, dim=-1))

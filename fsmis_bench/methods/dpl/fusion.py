"""Conservative fusion of the original prototype with its diffusion variants (docs/methods/dpl.md §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError


@dataclass(frozen=True)
class FusionConfig:
    alpha: float = 0.8  # weight of the original prototype p0 (1: variants ignored)
    learn_alpha: bool = False  # learn α = sigmoid(logit), initialised at ``alpha``
    gate: bool = False  # weight variants by their cosine to p0 and drop those below ``gate_threshold``
    gate_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"fusion.alpha={self.alpha} must lie in [0, 1]")
        if self.learn_alpha and not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"fusion.learn_alpha needs 0 < alpha < 1 (got {self.alpha})")


class ConservativeFusion(nn.Module):
    """p̂ = α·p0 + (1 − α)·v̄, v̄ the mean of the K variants (gated: their cosine-weighted mean over the kept ones;
    p̂ = p0 when the gate keeps none).

    Fidelity bound: ‖p̂ − p0‖ = (1 − α)·‖v̄ − p0‖. When every variant has norm ‖p0‖ (the "l2" diffusion space)
    this is at most 2(1 − α)·‖p0‖, and at most (1 − α)·√(2(1 − τ))·‖p0‖ with the gate at threshold τ ≥ 0,
    whatever the denoiser produces.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.alpha_logit = None
        if config.learn_alpha:
            self.alpha_logit = nn.Parameter(torch.tensor(math.log(config.alpha / (1 - config.alpha))))

    @property
    def alpha(self) -> Tensor | float:
        return self.config.alpha if self.alpha_logit is None else torch.sigmoid(self.alpha_logit)

    def variant_weights(self, p0: Tensor, variants: Tensor) -> Tensor:
        """[E, K] weights of the variants [E, K, C] of p0 [E, C]."""
        if not self.config.gate:
            return torch.ones(variants.shape[:2], dtype=variants.dtype, device=variants.device)
        cosine = F.cosine_similarity(variants, p0[:, None].expand_as(variants), dim=-1, eps=1e-6)
        return torch.where(
            cosine >= self.config.gate_threshold, cosine.clamp_min(0), torch.zeros_like(cosine)
        )

    def forward(self, p0: Tensor, variants: Tensor) -> Tensor:
        weights = self.variant_weights(p0, variants)
        total = weights.sum(dim=1, keepdim=True)
        mean = (weights[..., None] * variants).sum(dim=1) / total.clamp_min(1e-12)
        alpha = self.alpha
        return torch.where(total > 0, alpha * p0 + (1 - alpha) * mean, p0)

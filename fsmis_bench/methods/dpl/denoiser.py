"""The noise predictor ε_θ(x_t, t, c) over prototype vectors: an MLP (default) or a 2-layer transformer."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError

KINDS = ("mlp", "transformer")


@dataclass(frozen=True)
class DenoiserConfig:
    kind: str = "mlp"
    hidden: int = 512  # MLP width, or the transformer's feed-forward width
    layers: int = 2  # hidden layers of the MLP, or transformer layers
    embed_dim: int = 256  # time / condition embedding and transformer token width
    heads: int = 4  # transformer attention heads

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"denoiser.kind '{self.kind}' unknown (known: {', '.join(KINDS)})")
        if self.layers < 1:
            raise ConfigError(f"denoiser.layers={self.layers} must be >= 1")


def time_embedding(dim: int) -> nn.Module:
    """Sinusoidal embedding of the scheduler index followed by diffusers' two-layer SiLU MLP."""
    return nn.Sequential(
        Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0), TimestepEmbedding(dim, dim)
    )


class MLPDenoiser(nn.Module):
    """ε̂ = MLP([x_t ‖ emb]). ``injection`` "add": emb = time + condition embedding; "film": emb = time only and
    the condition scales and shifts every hidden layer, h ← h·(1 + γ) + β; ``None``: unconditional."""

    def __init__(self, dim: int, config: DenoiserConfig, injection: str | None) -> None:
        super().__init__()
        self.time = time_embedding(config.embed_dim)
        widths = [dim + config.embed_dim] + [config.hidden] * config.layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.out = nn.Linear(config.hidden, dim)
        self.injection = injection
        self.film = (
            nn.Linear(config.embed_dim, 2 * config.hidden * config.layers) if injection == "film" else None
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        emb = self.time(t).to(x.dtype)
        if cond is not None and self.injection == "add":
            emb = emb + cond
        film = self.film(cond).chunk(2 * len(self.hidden), dim=-1) if self.film is not None else None
        h = torch.cat([x, emb], dim=-1)
        for i, layer in enumerate(self.hidden):
            h = F.silu(layer(h))
            if film is not None:
                h = h * (1 + film[2 * i]) + film[2 * i + 1]
        return self.out(h)


class TransformerDenoiser(nn.Module):
    """Tokens {x_t, t, c} (c absent when unconditional) through a pre-norm transformer encoder; ε̂ is read
    from the x_t token."""

    def __init__(self, dim: int, config: DenoiserConfig) -> None:
        super().__init__()
        self.time = time_embedding(config.embed_dim)
        self.inp = nn.Linear(dim, config.embed_dim)
        layer = nn.TransformerEncoderLayer(
            config.embed_dim, config.heads, config.hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(config.embed_dim), nn.Linear(config.embed_dim, dim))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        tokens = [self.inp(x), self.time(t).to(x.dtype)] + ([] if cond is None else [cond])
        return self.out(self.encoder(torch.stack(tokens, dim=1))[:, 0])


def build_denoiser(dim: int, config: DenoiserConfig, injection: str | None) -> nn.Module:
    """The configured denoiser over ``dim``-dimensional prototypes; ``injection`` None when unconditional."""
    if config.kind == "mlp":
        return MLPDenoiser(dim, config, injection)
    if injection == "film":
        raise ConfigError(
            "conditioning.injection=film needs denoiser.kind=mlp (the transformer takes c as a token)"
        )
    return TransformerDenoiser(dim, config)

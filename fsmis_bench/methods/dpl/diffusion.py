"""A DDPM over prototype vectors: partial forward noising to t* and a deterministic DDIM reverse
(docs/methods/dpl.md §3).

Step indices follow the DDPM paper: t ∈ {1..T}, t = 0 is the clean prototype. diffusers' schedulers index the
same steps from 0, so paper step t is scheduler index t − 1 (ᾱ of index t − 1 = ∏_{s ≤ t} (1 − β_s)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError

NORMALISATIONS = ("l2", "layernorm")


@dataclass(frozen=True)
class DiffusionConfig:
    """Prototype diffusion (``enabled: false`` is the no-diffusion ablation: exactly the SSL-ALPNet prototypes)."""

    enabled: bool = True
    num_train_timesteps: int = 50  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    t_star: int = 12  # start of the reverse, paper step; round(0.25·T) (allowed range 0.2–0.3·T)
    num_inference_steps: int = 5  # DDIM steps from t* to 0 (S)
    num_variants: int = 8  # K
    normalisation: str = "l2"  # space the DDPM acts in: "l2" (direction at unit RMS) or "layernorm"

    def __post_init__(self) -> None:
        if not 1 <= self.t_star <= self.num_train_timesteps:
            raise ConfigError(f"diffusion.t_star={self.t_star} must lie in 1..{self.num_train_timesteps} (T)")
        if not 1 <= self.num_inference_steps <= self.t_star:
            raise ConfigError(
                f"diffusion.num_inference_steps={self.num_inference_steps} must lie in 1..t_star={self.t_star}"
            )
        if self.num_variants < 1:
            raise ConfigError(f"diffusion.num_variants={self.num_variants} must be >= 1")
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(
                f"diffusion.normalisation '{self.normalisation}' unknown (known: {', '.join(NORMALISATIONS)})"
            )

    def reverse_path(self) -> list[int]:
        """Scheduler indices visited by the reverse, t* → 0 in S near-even steps; −1 stands for the clean step."""
        s, t = self.num_inference_steps, self.t_star
        return [math.floor(t * (1 - i / s) + 0.5) - 1 for i in range(s + 1)]


class PrototypeDiffusion(nn.Module):
    """Turns prototypes into K variants (SDEdit in prototype space) and trains the denoiser ε_θ(x_t, t, c).

    The β schedule, ᾱ and forward noising come from diffusers' ``DDPMScheduler``. The reverse is DDIM with η = 0
    (DDIM eq. 12) over that scheduler's ᾱ: ``DDIMScheduler.step`` cannot express it, because it fixes the step
    to T // N over the whole schedule, so a partial reverse from an arbitrary t* in S steps is out of its reach
    (where its stride does fit, the two agree: tests/methods/test_dpl.py).
    """

    def __init__(self, config: DiffusionConfig, denoiser: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.denoiser = denoiser
        self.scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_schedule=config.beta_schedule,
            clip_sample=False,
        )
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)
        self.path = config.reverse_path()

    # ------------------------------------------------------------------ prototype space <-> diffusion space
    def normalise(self, p0: Tensor) -> Tensor:
        """[..., C] prototypes -> the space the DDPM acts in, at the unit per-coordinate scale its β assume.

        "l2": the direction p0 / ‖p0‖ times √C (a plain unit vector would be drowned by the noise: at t* its
        per-coordinate std √(1 − ᾱ) ≈ 0.17 is twice a unit vector's 1/√C for C = 128). "layernorm": the
        coordinates standardised to mean 0, variance 1.
        """
        c = p0.shape[-1]
        if self.config.normalisation == "l2":
            return F.normalize(p0, dim=-1, eps=1e-6) * math.sqrt(c)
        return F.layer_norm(p0, (c,))

    def denormalise(self, x: Tensor, p0: Tensor) -> Tensor:
        """Variants [E, K, C] back to the space of their p0 [E, C] (l2: p0's norm; layernorm: its mean and std).

        With "l2" every variant has exactly ‖p0‖, which is what bounds the fusion's deviation (fusion.py).
        """
        if self.config.normalisation == "l2":
            return F.normalize(x, dim=-1, eps=1e-6) * p0.norm(dim=-1)[:, None, None]
        mean = p0.mean(dim=-1)[:, None, None]
        std = (p0.var(dim=-1, unbiased=False) + 1e-5).sqrt()[:, None, None]
        return x * std + mean

    # ------------------------------------------------------------------ forward-reverse enhancement
    def enhance(
        self, x0: Tensor, cond: Tensor | None, generator: list[torch.Generator] | None = None
    ) -> Tensor:
        """K variants of each normalised prototype: noise x0 [E, C] to t*, DDIM back to 0 -> [E, K, C].

        ``cond`` [E, D] is the condition embedding; ``generator`` one generator per episode (else the global
        RNG). Differentiable with respect to x0, cond and the denoiser.
        """
        e, c = x0.shape
        k = self.config.num_variants
        noise = randn_tensor((e, k, c), generator=generator, device=x0.device, dtype=x0.dtype)
        x0 = x0[:, None].expand(e, k, c).reshape(e * k, c)
        cond = None if cond is None else cond.repeat_interleave(k, dim=0)
        start = torch.full((e * k,), self.path[0], dtype=torch.long, device=x0.device)
        x = self.scheduler.add_noise(x0, noise.reshape(e * k, c), start)
        for t, t_prev in itertools.pairwise(self.path):
            eps = self.denoiser(x, torch.full_like(start, t), cond)
            x = self.ddim_step(x, eps, t, t_prev)
        return x.reshape(e, k, c)

    def ddim_step(self, x: Tensor, eps: Tensor, t: int, t_prev: int) -> Tensor:
        """Deterministic DDIM update (η = 0) from scheduler index t to t_prev (−1: clean, ᾱ = 1)."""
        a_t = self.alphas_cumprod[t].to(x.dtype)
        a_prev = self.alphas_cumprod[t_prev].to(x.dtype) if t_prev >= 0 else torch.ones_like(a_t)
        x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps

    # ------------------------------------------------------------------ training
    def loss(self, x0: Tensor, cond: Tensor | None) -> Tensor:
        """L_ε = ‖ε − ε_θ(x_t, t, c)‖² at one uniformly drawn t ∈ {1..T} per prototype (global RNG)."""
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return F.mse_loss(self.denoiser(self.scheduler.add_noise(x0, noise, t), t, cond), noise)

"""SD-FSMIS network (docs/methods/sd_fsmis.md §2, §7): frozen VAE, surgered UNet with the support bank, VTCT
and QE.

One deterministic step: with the DDIM config β_start = β_end = 1 every ᾱ_t is 0, so the v-prediction DDIM
estimate is x̂0 = √ᾱ·x_t − √(1−ᾱ)·v = −v. The UNet sees the clean query latent (no noise); training regresses
its output onto −z_mask(query) with an MSE; inference decodes −output with the VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.sd_fsmis.attention import install_bank
from fsmis_bench.methods.sd_fsmis.query_enhancement import prototype_map
from fsmis_bench.methods.sd_fsmis.unet import SupportQueryUNet
from fsmis_bench.methods.sd_fsmis.vae_pretraining import mask_images, to_signed
from fsmis_bench.methods.sd_fsmis.vtct import VisualTextualTranslator

#: The official scheduler (``scheduler_1.0_1.0/scheduler_config.json``): DDIM with β ≡ 1 and v-prediction.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 1.0,
    "beta_end": 1.0,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def one_step_x0(velocity: Tensor) -> Tensor:
    """x̂0 of the degenerate scheduler (ᾱ = 0): −v."""
    return -velocity


@dataclass
class EncodedEpisodes:
    """UNet inputs of one batch: support [E·K, 2C, h, w], query [N, 2C, h, w], context [E, 1, D]."""

    support: Tensor
    query: Tensor
    context: Tensor
    shots: int
    query_episode: Tensor


class SDFSMISNet(nn.Module):
    """Support pass (writes the bank) then query pass (reads it); returns the UNet output v per query."""

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: SupportQueryUNet,
        vtct: VisualTextualTranslator,
        scheduler_config: dict[str, Any] | None = None,
        timestep: int = 1,
        use_qe: bool = True,
        qe_threshold: float = 0.7,
        qe_topk_ratio: float = 0.1875,
        bank_positions: str = "none",
    ) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.unet = unet
        self.bank = install_bank(unet, bank_positions)
        self.vtct = vtct
        self.scheduler = DDIMScheduler.from_config({**SCHEDULER_CONFIG, **(scheduler_config or {})})
        alpha_bar = float(self.scheduler.alphas_cumprod[timestep])
        if alpha_bar != 0.0:
            raise ConfigError(f"sd_fsmis: the scheduler gives alpha_bar(t={timestep}) = {alpha_bar}, not 0")
        self.timestep = timestep
        self.use_qe, self.qe_threshold, self.qe_topk_ratio = use_qe, qe_threshold, qe_topk_ratio

    def train(self, mode: bool = True) -> SDFSMISNet:
        super().train(mode)
        self.vae.eval()  # frozen
        return self

    # ------------------------------------------------------------------ VAE
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode(self, images: Tensor, sample: bool, generator: torch.Generator | None = None) -> Tensor:
        """[-1, 1] images [B, 3, H, W] -> scaled latents; posterior sample (training) or mean (inference)."""
        with torch.no_grad():
            posterior = self.vae.encode(images).latent_dist
            latents = posterior.sample(generator) if sample else posterior.mode()
        return latents * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        with torch.no_grad():
            return self.vae.decode(latents / self.scaling_factor).sample

    def mask_latents(self, masks: Tensor, sample: bool, generator: torch.Generator | None = None) -> Tensor:
        """{0, 1} masks [B, H, W] -> latents of the {-1, +1} three-channel mask images."""
        return self.encode(mask_images(masks), sample, generator)

    # ------------------------------------------------------------------ episodes
    def encode_episodes(
        self,
        support_images: Tensor,
        support_masks: Tensor,
        query_images: Tensor,
        query_episode: Tensor,
        sample: bool,
        generator: torch.Generator | None = None,
    ) -> EncodedEpisodes:
        """Images in [0, 1]: support [E, K, 3, H, W] with masks [E, K, H, W], query [N, 3, H, W]."""
        episodes, shots = support_images.shape[:2]
        flat_images = support_images.flatten(0, 1)
        z_support = self.encode(to_signed(flat_images), sample, generator)
        z_support_mask = self.mask_latents(support_masks.flatten(0, 1), sample, generator)
        z_query = self.encode(to_signed(query_images), sample, generator)
        if self.use_qe:
            proto = prototype_map(
                z_support.view(episodes, shots, *z_support.shape[1:]),
                support_masks,
                z_query,
                query_episode,
                self.qe_threshold,
                self.qe_topk_ratio,
            )
        else:  # ablation (docs/methods/sd_fsmis.md §12 #11): zeros in place of the prototype map
            proto = torch.zeros_like(z_query)
        return EncodedEpisodes(
            support=torch.cat([z_support, z_support_mask], dim=1),
            query=torch.cat([z_query, proto], dim=1),
            context=self.vtct(support_images, support_masks),
            shots=shots,
            query_episode=query_episode,
        )

    def velocity(self, encoded: EncodedEpisodes, query_batch: int | None = None) -> Tensor:
        """UNet output v [N, C, h, w]: one support pass, then the query pass (in chunks of ``query_batch``)."""
        context = encoded.context
        n = encoded.query.shape[0]
        step = query_batch or n
        try:
            self.bank.grid = tuple(encoded.query.shape[-2:])
            self.bank.write(encoded.shots)
            support_context = context.repeat_interleave(encoded.shots, dim=0)
            self.unet(encoded.support, self._t(encoded.support), support_context, branch="support")
            outputs = []
            for start in range(0, n, step):
                episode = encoded.query_episode[start : start + step]
                query = encoded.query[start : start + step]
                self.bank.read(episode)
                outputs.append(self.unet(query, self._t(query), context[episode], branch="query").sample)
        finally:
            self.bank.clear()
        return torch.cat(outputs)

    def _t(self, like: Tensor) -> Tensor:
        return torch.full((like.shape[0],), self.timestep, dtype=torch.long, device=like.device)

    def predict_masks(self, encoded: EncodedEpisodes, query_batch: int | None = None) -> Tensor:
        """Decoded x̂0 = −v as [0, 1] three-channel images, truncated to 8 bits like the reference's uint8 trip."""
        decoded = self.decode(one_step_x0(self.velocity(encoded, query_batch))).clamp(-1, 1)
        return torch.floor((decoded + 1) * 127.5) / 255.0

"""ProGiDiff network (docs/methods/progidiff.md §3): a frozen text-to-image LDM steered by a ControlNet.

The ControlNet is copied from the frozen UNet (``ControlNetModel.from_unet``); its hint embedding, designed for
sparse edge maps, is replaced by a dense image encoder (option a): the frozen VAE latent of the slice through
three trainable convolutions, the last zero-initialised, added to the ControlNet's ``conv_in`` output at latent
resolution. The prompt names the organ; the generated latent is the VAE latent of the organ's {-1, +1} mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.progidiff.components import Backbone

PROMPT_TEMPLATE = "a segmentation mask of the {organ}"
#: Organ names as words in a prompt; any other label name has its underscores replaced by spaces.
PROMPT_NAMES = {"kidney_left": "left kidney", "kidney_right": "right kidney"}
#: SD-1.5 training noise schedule (docs/methods/progidiff.md §3).
NOISE_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "clip_sample": False,
}
#: DDIM with "trailing" spacing, so that few steps start from pure noise (docs/methods/README.md §2.4).
SAMPLER: dict[str, Any] = {"timestep_spacing": "trailing", "set_alpha_to_one": True, "steps_offset": 0}


HINT_KINDS = ("vae_latent", "pixel_stem")


class HintEncoder(nn.Module):
    """Dense image encoder replacing ControlNet's hint embedding: three convolutions to the width of conv_in.

    ``vae_latent`` (option a): input = the frozen VAE latent of the slice, 3×3 convolutions at latent resolution.
    ``pixel_stem`` (a from-scratch stand-in for option b): input = the slice in [-1, 1]; the second convolution
    patchifies by the VAE factor, so the output lands at latent resolution too. The last convolution starts at
    zero, so at initialisation the ControlNet sees its ``conv_in`` output only.
    """

    def __init__(
        self, kind: str, latent_channels: int, widths: Sequence[int], out_channels: int, factor: int
    ) -> None:
        super().__init__()
        if kind not in HINT_KINDS or len(widths) != 2:
            raise ConfigError(
                f"hint_encoder: kind in {HINT_KINDS} and two widths expected, got {kind} {widths}"
            )
        self.kind = kind
        stem = kind == "pixel_stem"
        self.conv1 = nn.Conv2d(3 if stem else latent_channels, widths[0], 3, padding=1)
        self.conv2 = (
            nn.Conv2d(widths[0], widths[1], factor, stride=factor)
            if stem
            else nn.Conv2d(widths[0], widths[1], 3, padding=1)
        )
        self.conv_out = nn.Conv2d(widths[1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hint: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.conv2(F.silu(self.conv1(hint)))))


def prompt_for(organ: str, template: str = PROMPT_TEMPLATE) -> str:
    return template.format(organ=PROMPT_NAMES.get(organ, organ.replace("_", " ")))


class ProGiDiffModel(nn.Module):
    """Frozen UNet / VAE / text encoder, trainable ControlNet + hint encoder; training loss and sampling."""

    def __init__(
        self,
        backbone: Backbone,
        hint_kind: str = "vae_latent",
        hint_widths: Sequence[int] = (64, 128),
        noise_scheduler: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
        prompt_template: str = PROMPT_TEMPLATE,
        conditioning_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = backbone.unet, backbone.vae, backbone.text_encoder
        self.tokenizer = backbone.tokenizer
        for frozen in (self.unet, self.vae, self.text_encoder):
            frozen.requires_grad_(False)
        self.controlnet = ControlNetModel.from_unet(
            self.unet, conditioning_embedding_out_channels=(int(hint_widths[0]),)
        )
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.controlnet.controlnet_cond_embedding = HintEncoder(
            hint_kind,
            self.vae.config.latent_channels,
            hint_widths,
            self.unet.config.block_out_channels[0],
            self.vae_factor,
        )
        self.noise_scheduler = DDPMScheduler(**{**NOISE_SCHEDULER, **(noise_scheduler or {})})
        self.sampler = DDIMScheduler.from_config(
            self.noise_scheduler.config, **{**SAMPLER, **(sampler or {})}
        )
        self.prompt_template = prompt_template
        self.conditioning_scale = conditioning_scale
        self.register_buffer("latent_scale", torch.tensor(float(self.vae.config.scaling_factor)))
        self._prompt_cache: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ conditioning and codec
    def prompt_embeddings(self, organs: Sequence[str]) -> Tensor:
        """Frozen CLIP hidden states [B, tokens, width] of each organ's prompt (cached per organ)."""
        device = self.latent_scale.device
        cache = self._prompt_cache
        missing = [o for o in dict.fromkeys(organs) if o not in cache or cache[o].device != device]
        if missing:
            prompts = [prompt_for(o, self.prompt_template) for o in missing]
            length = self.tokenizer.model_max_length
            for prompt in prompts:
                if len(self.tokenizer(prompt).input_ids) > length:
                    raise ConfigError(f"prompt '{prompt}' is longer than the tokenizer's {length} tokens")
            ids = self.tokenizer(
                prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids.to(device)
            with torch.no_grad():
                hidden = self.text_encoder(ids).last_hidden_state
            cache.update(zip(missing, hidden, strict=True))
        return torch.stack([cache[o] for o in organs])

    def image_latents(self, images: Tensor) -> Tensor:
        """Scaled VAE posterior means of slices [B, 3, h, w] in [0, 1] (the method's min-max input)."""
        with torch.no_grad():
            return self.vae.encode(images.clamp(0, 1) * 2 - 1).latent_dist.mode() * self.latent_scale

    def hint_input(self, images: Tensor) -> Tensor:
        """What the hint encoder reads: the slice's VAE latent (option a) or the slice in [-1, 1]."""
        if self.controlnet.controlnet_cond_embedding.kind == "vae_latent":
            return self.image_latents(images)
        return images.clamp(0, 1) * 2 - 1

    def mask_latents(self, masks: Tensor) -> Tensor:
        """Scaled VAE posterior means of masks [B, h, w] in {0, 1}, mapped to {-1, +1} on 3 channels."""
        with torch.no_grad():
            return self.vae.encode(mask_image(masks)).latent_dist.mode() * self.latent_scale

    def decode_scores(self, latents: Tensor) -> Tensor:
        """Decoded mask intensity [B, h, w] (channel mean): foreground where > 0."""
        return self.vae.decode(latents / self.latent_scale).sample.mean(dim=1)

    def codec_losses(
        self, images: Tensor, masks: Tensor, kl_weight: float, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """VAE reconstruction of {-1, +1} masks plus a small KL term (in-run codec pre-training); slices are
        reconstructed too when the hint encoder reads their VAE latents."""
        inputs = mask_image(masks)
        if self.controlnet.controlnet_cond_embedding.kind == "vae_latent":
            inputs = torch.cat([inputs, images.clamp(0, 1) * 2 - 1])
        posterior = self.vae.encode(inputs).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        rec = F.mse_loss(reconstruction, inputs)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        mask_std = posterior.mean[: masks.shape[0]].detach().std()
        return {"loss": rec + kl_weight * kl, "codec_rec": rec, "codec_kl": kl, "mask_latent_std": mask_std}

    # ------------------------------------------------------------------ denoising
    def predict(self, noisy: Tensor, timesteps: Tensor, text: Tensor, hint: Tensor) -> Tensor:
        """UNet output with the ControlNet residuals added to its skip connections and mid block."""
        down, mid = self.controlnet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            controlnet_cond=hint,
            conditioning_scale=self.conditioning_scale,
            return_dict=False,
        )
        return self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]

    def diffusion_loss(
        self, images: Tensor, masks: Tensor, organs: Sequence[str], generator: torch.Generator | None = None
    ) -> Tensor:
        """MSE between the prediction and its target (ε by default) at a uniformly drawn training timestep."""
        hint, clean = self.hint_input(images), self.mask_latents(masks)
        device = clean.device
        noise = torch.randn(clean.shape, generator=generator, device=device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (clean.shape[0],), generator=generator, device=device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        prediction = self.predict(noisy, timesteps, self.prompt_embeddings(organs), hint)
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "sample":
            target = clean
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            raise ConfigError(
                f"noise_scheduler.prediction_type '{kind}' (known: epsilon, sample, v_prediction)"
            )
        return F.mse_loss(prediction.float(), target.float())

    @torch.no_grad()
    def sample(
        self,
        images: Tensor,
        organs: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        batch_size: int = 64,
    ) -> Tensor:
        """One DDIM trajectory (η = 0) per seed and slice: decoded proposal scores [P, B, h, w].

        Proposal p starts from noise drawn with ``torch.Generator(device).manual_seed(seeds[p])``; the
        trajectories of all proposals run together in chunks of ``batch_size``.
        """
        device = self.latent_scale.device
        n = images.shape[0]
        hint, text = self.hint_input(images), self.prompt_embeddings(organs)
        size = images.shape[-2] // self.vae_factor, images.shape[-1] // self.vae_factor
        shape = (n, self.vae.config.latent_channels, *size)
        latents = torch.cat(
            [
                torch.randn(shape, generator=torch.Generator(device).manual_seed(int(s)), device=device)
                for s in seeds
            ]
        )
        latents = latents * self.sampler.init_noise_sigma
        hint, text = hint.repeat(len(seeds), 1, 1, 1), text.repeat(len(seeds), 1, 1)
        self.sampler.set_timesteps(steps, device=device)
        for t in self.sampler.timesteps:
            output = torch.cat(
                [
                    self.predict(x, t.expand(x.shape[0]), c, h)
                    for x, c, h in zip(
                        latents.split(batch_size), text.split(batch_size), hint.split(batch_size), strict=True
                    )
                ]
            )
            latents = self.sampler.step(output, t, latents).prev_sample
        scores = torch.cat([self.decode_scores(chunk) for chunk in latents.split(batch_size)])
        return scores.reshape(len(seeds), n, *scores.shape[-2:])

    def segment_organs(
        self, images: Tensor, organs: Sequence[str], seeds: Sequence[int], steps: int
    ) -> tuple[Tensor, Tensor]:
        """Multi-organ output by prompting: label map [B, h, w] (0 = background, i + 1 = organs[i]) and the
        soft-vote scores [O, B, h, w] it was resolved from (overlaps go to the highest decoded intensity)."""
        scores = torch.stack(
            [self.sample(images, [o] * images.shape[0], seeds, steps).mean(0) for o in organs]
        )
        return resolve_overlaps(scores), scores


def mask_image(masks: Tensor) -> Tensor:
    """{0, 1} masks [B, h, w] -> {-1, +1} three-channel images [B, 3, h, w] (the generation target)."""
    return (masks.float() * 2 - 1)[:, None].expand(-1, 3, -1, -1)


def resolve_overlaps(scores: Tensor) -> Tensor:
    """Per-organ scores [O, ...] -> label map: the organ of highest score where it is > 0, else 0."""
    best, index = scores.max(dim=0)
    return torch.where(best > 0, index + 1, torch.zeros_like(index))

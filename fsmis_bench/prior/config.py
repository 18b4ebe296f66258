"""What an in-domain latent-diffusion prior is made of and how it is trained (a profile's ``prior`` section).

The prior stands in for Stable Diffusion 1.5 where its weights cannot be had: the same component classes
(``AutoencoderKL``, ``UNet2DConditionModel``, ``CLIPTextModel`` + ``CLIPTokenizer``, ``DDPMScheduler``),
small, trained without labels on the training slices the protocol allows. Sizes default to the SD-FSMIS ``cpu``
architecture (64-px slices, 2x VAE downsampling to SD's 32x32 latent grid at this scale).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fsmis_bench.errors import ConfigError

DEFAULT_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "mid_block_add_attention": False,
}
DEFAULT_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [16, 32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
DEFAULT_TEXT: dict[str, Any] = {"intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2}
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class PriorConfig:
    """Architecture and training budget of one prior; every field is part of its cache key."""

    #: the method option that receives the prior's folder, e.g. ``pretrained_path`` or ``backbone.pretrained_path``
    target: str = "pretrained_path"
    vae: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_VAE))
    unet: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_UNET))
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TEXT))
    #: "{modality}" becomes ct or mri: the prompt the UNet is trained with (SD's text path, one prompt)
    prompt: str = "an abdominal {modality} slice"
    max_prompt_tokens: int = 77  # as SD's CLIP; ProGiDiff's organ prompts, spelled letter by letter, need ~40
    # autoencoder: image + label-free mask reconstruction
    vae_steps: int = 160
    vae_batch: int = 16  # images; as many masks again
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    logvar_init: float = -10.0
    superpixel_mask_fraction: float = 0.6  # the rest are random ellipses
    # latent diffusion
    unet_steps: int = 520
    unet_batch: int = 32
    unet_lr: float = 2e-3
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # what is saved beside the weights to look at
    preview_count: int = 8
    preview_inference_steps: int = 25

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"prior.prediction_type {self.prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}"
            )
        for name in ("vae_steps", "unet_steps", "vae_batch", "unet_batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"prior.{name} {getattr(self, name)!r}: expected at least 1")
        if not 0.0 <= self.superpixel_mask_fraction <= 1.0:
            raise ConfigError("prior.superpixel_mask_fraction: expected a fraction in [0, 1]")

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> PriorConfig:
        """The profile's ``prior`` mapping; the component sizes given there update the defaults."""
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown prior option(s) {unknown} (known: {', '.join(sorted(known))})")
        for name, default in (("vae", DEFAULT_VAE), ("unet", DEFAULT_UNET), ("text_encoder", DEFAULT_TEXT)):
            section[name] = {**default, **(section.get(name) or {})}
        return cls(**section)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

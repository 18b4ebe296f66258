"""Known-good tiny diffusers configurations (docs/methods/README.md §2.3), shared by the diffusion methods and
their tests.

Profiles and tests override them key by key; they build in milliseconds and exercise every code path of the
full-size classes (cross-attention, down/up blocks, group norms)."""

from __future__ import annotations

from typing import Any

TINY_UNET: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "layers_per_block": 1,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 8,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 2,
}

"""Visual-to-Textual Condition Translator (VTCT, docs/methods/sd_fsmis.md §5).

A frozen DINOv2 encodes the support slices; its patch tokens are averaged under the support mask (resized on
the uncropped grid, as the official code does), averaged over shots and mapped by an MLP to ONE token that
replaces the CLIP text tokens in every cross-attention. All widths come from the configs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Dinov2Model

#: ImageNet normalisation of the DINOv2 image processor.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The processor resizes the shortest edge to 256 and centre-crops 224: the resize edge is crop × 256 / 224.
RESIZE_OVER_CROP = 256 / 224


def build_mlp(input_dim: int, output_dim: int, hidden_dim: int, num_hidden_layers: int = 2) -> nn.Sequential:
    """Linear-LayerNorm-GELU in, ``num_hidden_layers`` × the same at the hidden width, Linear out."""
    layers: list[nn.Module] = [nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, output_dim))
    return nn.Sequential(*layers)


def masked_average(features: Tensor, masks: Tensor, eps: float = 1e-6) -> Tensor:
    """Σ(F·M) / (ΣM + eps) per sample: features [S, D, g, g], binary masks [S, g, g] -> [S, D]."""
    masks = masks.unsqueeze(1)
    return (features * masks).sum(dim=(2, 3)) / (masks.sum(dim=(2, 3)) + eps)


class VisualTextualTranslator(nn.Module):
    """Support images [E, K, 3, H, W] in [0, 1] and masks [E, K, H, W] -> one context token per episode."""

    def __init__(
        self,
        encoder: Dinov2Model,
        output_dim: int,
        hidden_dim: int | None = None,
        num_hidden_layers: int = 2,
        enabled: bool = True,
        crop_size: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        width = encoder.config.hidden_size
        self.mlp = (
            build_mlp(width, output_dim, hidden_dim or 2 * width, num_hidden_layers) if enabled else None
        )
        # ablation `enabled: false` (docs/methods/sd_fsmis.md §12 #11): a learned constant token
        self.constant = None if enabled else nn.Parameter(torch.zeros(output_dim))
        # The processor's centre crop (224 for facebook/dinov2-base), not the model config's image_size, which
        # sizes the position-embedding table (518 there) and would give a 37x37 patch grid instead of 16x16.
        self.crop = int(crop_size or encoder.config.image_size)
        self.patch = int(encoder.config.patch_size)
        if self.crop % self.patch:
            raise ValueError(f"DINOv2 crop_size {self.crop} is not a multiple of its patch size {self.patch}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VisualTextualTranslator:
        super().train(mode)
        self.encoder.eval()  # frozen, always in evaluation mode
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        """The DINOv2 image processor in torch: shortest edge -> crop·256/224 (bicubic), centre crop, ImageNet."""
        height, width = images.shape[-2:]
        edge = round(self.crop * RESIZE_OVER_CROP)
        if min(height, width) != edge:
            scale = edge / min(height, width)
            size = (round(height * scale), round(width * scale))
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
            height, width = size
        top, left = (height - self.crop) // 2, (width - self.crop) // 2
        images = images[..., top : top + self.crop, left : left + self.crop]
        return (images - self.mean) / self.std

    @torch.no_grad()
    def patch_features(self, images: Tensor) -> Tensor:
        """[S, 3, H, W] in [0, 1] -> patch tokens [S, D, g, g] (CLS dropped)."""
        tokens = self.encoder(pixel_values=self.preprocess(images)).last_hidden_state[:, 1:]
        grid = self.crop // self.patch
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)

    def pooled(self, images: Tensor, masks: Tensor) -> Tensor:
        """Masked average of the patch tokens per support slice: [S, 3, H, W], [S, H, W] -> [S, D].

        The mask is resized bilinearly on the uncropped grid and thresholded at 0.5 (docs/methods/sd_fsmis.md
        §12 #9).
        """
        features = self.patch_features(images)
        grid = features.shape[-1]
        small = F.interpolate(masks[:, None].float(), size=(grid, grid), mode="bilinear", align_corners=False)
        return masked_average(features, (small[:, 0] > 0.5).float())

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        """Support images [E, K, 3, H, W] in [0, 1], masks [E, K, H, W] -> context [E, 1, output_dim]."""
        episodes, shots = images.shape[:2]
        if self.constant is not None:
            return self.constant.expand(episodes, 1, -1)
        pooled = self.pooled(images.flatten(0, 1), masks.flatten(0, 1))
        pooled = pooled.view(episodes, shots, -1).mean(dim=1)
        return self.mlp(pooled).unsqueeze(1)

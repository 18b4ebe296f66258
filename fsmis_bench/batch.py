"""The one batch format every method consumes, for training episodes and EP1 test chunks alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class EpisodeBatch:
    """E episodes (support sets) and N query slices, each query pointing at its episode.

    Training: E = N = batch size, ``query_episode = arange(N)``. Testing: one (query scan, organ) per batch,
    E = number of chunks (3), N = scored slices of the query, ``query_episode`` = chunk of each slice.
    Images are the grey slice replicated to three channels (an expanded view, no copy).
    """

    support_images: Tensor  # [E, K, 3, h, w] float32
    support_masks: Tensor  # [E, K, h, w] float32 in {0, 1}
    query_images: Tensor  # [N, 3, h, w] float32
    query_masks: Tensor  # [N, h, w] float32 in {0, 1} (at test: model-resolution GT, for logging only)
    query_episode: Tensor  # [N] int64, index into E
    organ: str  # organ name at test time; "superpixel" or a label name during training
    meta: dict[str, Any] = field(default_factory=dict)  # ids and native-resolution arrays (numpy, not moved)

    @property
    def n_episodes(self) -> int:
        return int(self.support_images.shape[0])

    @property
    def n_queries(self) -> int:
        return int(self.query_images.shape[0])

    @property
    def shots(self) -> int:
        return int(self.support_images.shape[1])

    def support_for_queries(self) -> tuple[Tensor, Tensor]:
        """Support images and masks gathered per query slice: [N, K, 3, h, w] and [N, K, h, w]."""
        return self.support_images[self.query_episode], self.support_masks[self.query_episode]


def as_three_channels(grey: Tensor) -> Tensor:
    """[..., h, w] grey slices -> [..., 3, h, w] by expanding a channel axis (ImageNet-style backbones)."""
    return grey.unsqueeze(-3).expand(*grey.shape[:-2], 3, *grey.shape[-2:])


def episode_range(n: int, device: torch.device | None = None) -> Tensor:
    return torch.arange(n, dtype=torch.long, device=device)

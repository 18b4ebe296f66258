"""IntensityThreshold: foreground = query pixels inside the support organ's intensity band."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.methods.base import FewShotSegmenter, MethodTraits


class IntensityThreshold(FewShotSegmenter):
    """Per chunk, the [low, high] percentiles of the support foreground intensities define the band.

    Shows how far plain intensity gets on a dataset; a method that does not beat it clearly has learned
    nothing about shape or context.
    """

    traits: ClassVar[MethodTraits] = MethodTraits(trainable=False, pseudolabels="none", episode_type="none")

    def __init__(self, low_percentile: float = 5.0, high_percentile: float = 95.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.low, self.high = low_percentile / 100.0, high_percentile / 100.0

    def foreground_scores(self, batch: EpisodeBatch) -> Tensor:
        bands = []
        for episode in range(batch.n_episodes):
            values = batch.support_images[episode, :, 0][batch.support_masks[episode] > 0.5]
            bands.append(
                torch.quantile(values.float(), torch.tensor([self.low, self.high], device=values.device))
            )
        band = torch.stack(bands)[batch.query_episode]  # [N, 2]
        grey = batch.query_images[:, 0]
        return torch.minimum(grey - band[:, :1, None], band[:, 1:, None] - grey)

"""CopySupport: the EP1 protocol's give-away, measured (the support mask copied onto each query slice)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.methods.base import FewShotSegmenter, MethodTraits


class CopySupport(FewShotSegmenter):
    """Foreground wherever the majority of the chunk's support masks is foreground."""

    traits: ClassVar[MethodTraits] = MethodTraits(trainable=False, pseudolabels="none", episode_type="none")

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()

    def foreground_scores(self, batch: EpisodeBatch) -> Tensor:
        _, masks = batch.support_for_queries()
        return masks.mean(dim=1) - 0.5

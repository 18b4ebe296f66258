"""PrototypeSegmenter: the LightningModule of PANet, SSL-ALPNet and DPL (docs/methods/panet.md, alpnet.md,
dpl.md)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.methods.base import FewShotSegmenter
from fsmis_bench.methods.prototype.encoder import FeatureEncoder
from fsmis_bench.methods.prototype.prototypes import PrototypeHead, PrototypeSet, resize_masks


class PrototypeSegmenter(FewShotSegmenter):
    """Encoder + prototype head; loss = weighted query cross-entropy + PANet prototype alignment.

    Subclasses may transform the prototypes between pooling and scoring (``refine_prototypes``) and add
    loss terms (``extra_losses``); DPL uses both.
    """

    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        align_loss: bool = True,
        background_weight: float = 0.05,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        log_images_every: int = 500,
    ) -> None:
        super().__init__(optimizer, lr_schedule, log_images_every)
        self.save_hyperparameters()
        self.encoder = FeatureEncoder(**(encoder or {}))
        self.head = PrototypeHead(**(head or {}))
        self.align_loss = align_loss
        self.register_buffer("class_weights", torch.tensor([background_weight, 1.0]), persistent=False)

    # ------------------------------------------------------------------ hooks for extensions
    def refine_prototypes(
        self, protos: PrototypeSet, features: Tensor, masks: Tensor, batch: EpisodeBatch | None
    ) -> tuple[PrototypeSet, dict[str, Tensor]]:
        """Identity here; returns the prototypes to score with and any auxiliary losses."""
        return protos, {}

    # ------------------------------------------------------------------ core
    def encode(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor]:
        """Support features [E, K, C, h, w] and query features [N, C, h, w] from one encoder pass."""
        e, k = batch.n_episodes, batch.shots
        images = torch.cat(
            [batch.support_images.reshape(e * k, *batch.support_images.shape[2:]), batch.query_images]
        )
        features = self.encoder(images)
        support = features[: e * k].reshape(e, k, *features.shape[1:])
        return support, features[e * k :]

    def segment(self, batch: EpisodeBatch) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Feature-resolution scores [N, 2, h, w], the query and support features, auxiliary losses."""
        support, query = self.encode(batch)
        masks = resize_masks(batch.support_masks, support.shape[-2:])
        protos = self.head.prototypes(support, masks, self.training)
        protos, aux = self.refine_prototypes(protos, support, masks, batch)
        return self.head.score(query, protos, batch.query_episode), query, support, aux

    def training_losses(self, batch: EpisodeBatch) -> dict[str, Tensor]:
        scores, query, support, aux = self.segment(batch)
        size = batch.query_masks.shape[-2:]
        logits = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        losses = {"query_ce": F.cross_entropy(logits, batch.query_masks.long(), weight=self.class_weights)}
        if self.align_loss:
            losses["align"] = self.alignment_loss(logits, query, support, batch)
        losses.update(aux)
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses

    def alignment_loss(self, logits: Tensor, query: Tensor, support: Tensor, batch: EpisodeBatch) -> Tensor:
        """PANet's prototype alignment: prototypes from the predicted query mask segment the supports."""
        n, k = query.shape[0], support.shape[1]
        predicted = (logits.argmax(dim=1) == 1).float()
        query_masks = resize_masks(predicted, query.shape[-2:])[:, None]
        protos = self.head.prototypes(query[:, None], query_masks, training=True)
        episodes_of_query = batch.query_episode
        support_feats = support[episodes_of_query].reshape(n * k, *support.shape[2:])
        owner = torch.arange(n, device=query.device).repeat_interleave(k)
        scores = self.head.score(support_feats, protos, owner)
        targets = batch.support_masks[episodes_of_query].reshape(n * k, *batch.support_masks.shape[-2:])
        support_logits = F.interpolate(scores, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(support_logits, targets.long())

    def foreground_scores(self, batch: EpisodeBatch) -> Tensor:
        scores, _, _, _ = self.segment(batch)
        return scores[:, 1] - scores[:, 0]

    def run_info(self) -> dict[str, Any]:
        """Where the ResNet-101 weights came from (pretrained path or random init); nothing for the tiny CNN."""
        return {"encoder_weights": self.encoder.weights} if self.encoder.weights else {}

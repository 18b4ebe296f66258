"""Prototype pooling and cosine scoring of PANet and SSL-ALPNet, vectorised over episodes and queries.

Shapes: support features [E, K, C, h, w] with soft masks [E, K, h, w] at feature resolution; query features
[N, C, h, w], each query pointing at its episode through ``query_episode`` [N].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

#: Cosine similarities are multiplied by 20 before the soft maximum (both references).
SIMILARITY_SCALE = 20.0


@dataclass
class PrototypeSet:
    """Per episode: background and foreground prototypes, with validity flags for the local ones."""

    background: Tensor  # [E, Pb, C]
    background_valid: Tensor  # [E, Pb] bool
    foreground_local: Tensor  # [E, Pf, C]
    foreground_local_valid: Tensor  # [E, Pf] bool
    foreground_global: Tensor  # [E, C] masked average over the foreground of all shots

    def with_foreground_global(self, prototype: Tensor) -> PrototypeSet:
        """The same set with the global foreground prototype replaced (DPL's fused prototype)."""
        return replace(self, foreground_global=prototype)


def masked_average(features: Tensor, masks: Tensor) -> Tensor:
    """Masked average pooling over shots and pixels: [E, K, C, h, w], [E, K, h, w] -> [E, C]."""
    weighted = (features * masks.unsqueeze(2)).sum(dim=(1, 3, 4))
    return weighted / (masks.sum(dim=(1, 2, 3)).unsqueeze(1) + 1e-5)


def local_prototypes(features: Tensor, masks: Tensor, window: int, threshold: float) -> tuple[Tensor, Tensor]:
    """Average-pool features and mask with a ``window``; a pooled vector is a prototype of the class when
    the pooled mask fraction exceeds ``threshold``. Returns [E, K·G, C] and validity [E, K·G]."""
    e, k, c, h, w = features.shape
    pooled = F.avg_pool2d(features.reshape(e * k, c, h, w), window)
    pooled_mask = F.avg_pool2d(masks.reshape(e * k, 1, h, w), window)
    protos = pooled.reshape(e, k, c, -1).permute(0, 1, 3, 2).reshape(e, -1, c)
    valid = pooled_mask.reshape(e, -1) > threshold
    return protos, valid


def soft_max_similarity(query: Tensor, prototypes: Tensor, valid: Tensor) -> Tensor:
    """Class score per pixel: softmax-weighted sum of scaled cosine similarities to the class's prototypes.

    query [N, C, h, w], prototypes [N, P, C], valid [N, P] -> [N, h, w]. Every row needs >= 1 valid prototype.
    A validity mask of any other shape is refused: broadcasting an empty prototype axis would score 0.
    """
    if valid.shape != prototypes.shape[:2]:
        raise ValueError(
            f"prototype validity mask has shape {tuple(valid.shape)}, expected {tuple(prototypes.shape[:2])} "
            "(one flag per prototype)"
        )
    q = F.normalize(query, dim=1, eps=1e-4)
    p = F.normalize(prototypes, dim=-1, eps=1e-4)
    sims = torch.einsum("nchw,npc->nphw", q, p) * SIMILARITY_SCALE
    mask = valid[:, :, None, None]
    weights = torch.softmax(sims.masked_fill(~mask, float("-inf")), dim=1)
    return (weights * sims.masked_fill(~mask, 0.0)).sum(dim=1)


class PrototypeHead:
    """Builds prototypes from supports and scores queries; ``mode`` 'alp' (SSL-ALPNet) or 'global' (PANet).

    ALP (docs/methods/alpnet.md §1): background = local prototypes only; foreground = local + global when some
    window of ``check_window`` is >= ``threshold`` foreground, else the global prototype alone. Local windows
    are ``train_window`` in training and ``test_window`` at test (reference: 4 and 2 on a 32×32 map). PANet:
    one global prototype per class. An episode without any qualifying background window falls back to the
    global background prototype (our design choice; the reference would fail).
    """

    def __init__(
        self,
        mode: str = "alp",
        train_window: int = 4,
        test_window: int = 2,
        threshold: float = 0.95,
        check_window: int = 4,
    ) -> None:
        if mode not in ("alp", "global"):
            raise ValueError(f"prototype mode must be 'alp' or 'global', got '{mode}'")
        self.mode = mode
        self.train_window, self.test_window = train_window, test_window
        self.threshold, self.check_window = threshold, check_window

    def prototypes(self, features: Tensor, fg_masks: Tensor, training: bool) -> PrototypeSet:
        bg_masks = 1.0 - fg_masks
        fg_global = masked_average(features, fg_masks)
        bg_global = masked_average(features, bg_masks)
        e, c = fg_global.shape
        if self.mode == "global":
            empty = torch.zeros(e, 0, c, dtype=features.dtype, device=features.device)
            no = torch.zeros(e, 0, dtype=torch.bool, device=features.device)
            return PrototypeSet(
                bg_global[:, None],
                torch.ones(e, 1, dtype=torch.bool, device=features.device),
                empty,
                no,
                fg_global,
            )
        window = self.train_window if training else self.test_window
        bg_local, bg_valid = local_prototypes(features, bg_masks, window, self.threshold)
        fg_local, fg_valid = local_prototypes(features, fg_masks, window, self.threshold)
        e_, k, h, w = fg_masks.shape
        coarse = F.avg_pool2d(fg_masks.reshape(e_ * k, 1, h, w), self.check_window).reshape(e, -1)
        use_local = coarse.amax(dim=1) >= self.threshold
        fg_valid = fg_valid & use_local[:, None]
        # Fallback: the global background prototype where no background window qualifies.
        no_bg = ~bg_valid.any(dim=1)
        background = torch.cat([bg_local, bg_global[:, None]], dim=1)
        background_valid = torch.cat([bg_valid, no_bg[:, None]], dim=1)
        return PrototypeSet(background, background_valid, fg_local, fg_valid, fg_global)

    @staticmethod
    def score(query: Tensor, protos: PrototypeSet, query_episode: Tensor) -> Tensor:
        """Background and foreground scores [N, 2, h, w] of each query against its episode's prototypes."""
        bg = soft_max_similarity(
            query, protos.background[query_episode], protos.background_valid[query_episode]
        )
        fg_protos = torch.cat([protos.foreground_local, protos.foreground_global[:, None]], dim=1)
        global_valid = torch.ones(
            protos.foreground_global.shape[0], 1, dtype=torch.bool, device=protos.foreground_global.device
        )
        fg_valid = torch.cat([protos.foreground_local_valid, global_valid], dim=1)
        fg = soft_max_similarity(query, fg_protos[query_episode], fg_valid[query_episode])
        return torch.stack([bg, fg], dim=1)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [..., H, W] masks to feature size (soft fractions; reference: no antialiasing)."""
    shape = masks.shape
    flat = masks.reshape(-1, 1, *shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*shape[:-2], *size)

"""Query Enhancement (QE, docs/methods/sd_fsmis.md §6) in VAE latent space, vectorised over episodes and query
slices.

Support prototypes (masked averages of the support image latents, averaged over shots) give each query latent
pixel a foreground probability (softmax over the cosine similarities to the background and foreground
prototypes); the mean query latent over the confident foreground pixels (P_fg > 0.7, or the top-k pixels when
none is confident) is the query prototype, broadcast and concatenated to the query latent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def support_prototypes(latents: Tensor, masks: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Foreground and background prototypes per episode, [E, C] each.

    latents [E, K, C, h, w]; masks [E, K, H, W] resized bilinearly (align_corners=True) to the latent grid.
    """
    episodes, shots, _, height, width = latents.shape
    soft = F.interpolate(
        masks.flatten(0, 1)[:, None].float(), size=(height, width), mode="bilinear", align_corners=True
    ).view(episodes, shots, 1, height, width)
    fg = (latents * soft).sum(dim=(3, 4)) / (soft.sum(dim=(3, 4)) + eps)
    bg = (latents * (1 - soft)).sum(dim=(3, 4)) / ((1 - soft).sum(dim=(3, 4)) + eps)
    return fg.mean(dim=1), bg.mean(dim=1)


def foreground_probability(latents: Tensor, fg: Tensor, bg: Tensor) -> Tensor:
    """P_fg per query latent pixel: softmax over (cos to bg, cos to fg), no temperature. [N, h·w]."""
    flat = latents.flatten(2)  # [N, C, h·w]
    cos_fg = F.cosine_similarity(flat, fg[:, :, None], dim=1)
    cos_bg = F.cosine_similarity(flat, bg[:, :, None], dim=1)
    return torch.stack([cos_bg, cos_fg], dim=1).softmax(dim=1)[:, 1]


def query_prototype(
    latents: Tensor, fg: Tensor, bg: Tensor, threshold: float = 0.7, topk_ratio: float = 0.1875
) -> Tensor:
    """Mean query latent over its confident foreground pixels, [N, C].

    latents [N, C, h, w]; fg, bg [N, C] (each query's episode prototypes). Pixels with P_fg > threshold are
    used; a query without any uses its top-k pixels, k = int(latent width × topk_ratio) (6 at width 32).
    """
    prob = foreground_probability(latents, fg, bg)
    confident = prob > threshold
    k = max(1, int(latents.shape[-1] * topk_ratio))
    top = torch.zeros_like(confident).scatter_(1, prob.topk(k, dim=1).indices, True)
    selected = torch.where(confident.any(dim=1, keepdim=True), confident, top).to(latents.dtype)
    flat = latents.flatten(2)
    return (flat * selected[:, None]).sum(dim=2) / selected.sum(dim=1, keepdim=True)


def prototype_map(
    support_latents: Tensor,
    support_masks: Tensor,
    query_latents: Tensor,
    query_episode: Tensor,
    threshold: float = 0.7,
    topk_ratio: float = 0.1875,
) -> Tensor:
    """The query prototype of each query slice broadcast to its latent grid, [N, C, h, w]."""
    fg, bg = support_prototypes(support_latents, support_masks)
    proto = query_prototype(query_latents, fg[query_episode], bg[query_episode], threshold, topk_ratio)
    return proto[:, :, None, None].expand_as(query_latents)

"""Reference parity of the prototype scoring heads (PANet, SSL-ALPNet) on random inputs.

Each reference below is written out from the papers and the original code (PANet: Wang et al. ICCV 2019;
SSL-ALPNet: Ouyang et al. ECCV 2020, ``MultiProtoAsConv``) with plain loops over shots, windows and
prototypes, without the suite's helpers, and compared logit by logit with ``PrototypeHead`` to 1e-4.

K shots: both original codes pool a global prototype per shot (PANet averages them; ALPNet's foreground uses
them one by one). The suite pools one global prototype over all shots (docs/methods/alpnet.md §5, identical for
one shot). PANet's K-shot test therefore gives every shot the same mask area, where the two coincide, and a
separate test pins the suite's documented rule on unequal areas.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fsmis_bench.methods.prototype.prototypes import PrototypeHead, soft_max_similarity

SCALE = 20.0  # cosine × 20 in both references
NORM_EPS = 1e-4  # ALPNet's safe_norm floor (PANet's cosine_similarity eps is smaller; moot on these inputs)
POOL_EPS = 1e-5  # the masked-average denominators of both references
THRESHOLD = 0.95
CHANNELS, SIZE = 8, 16
TOLERANCE = 1e-4


# ---------------------------------------------------------------------- references
def scaled_cosine(query: Tensor, proto: Tensor) -> Tensor:
    """cos(query[:, y, x], proto) × 20 for a query map [C, h, w] and a prototype [C] -> [h, w]."""
    query_norm = query.norm(dim=0).clamp_min(NORM_EPS)
    proto_norm = proto.norm().clamp_min(NORM_EPS)
    return (query * proto[:, None, None]).sum(dim=0) / (query_norm * proto_norm) * SCALE


def soft_maximum(query: Tensor, protos: list[Tensor]) -> Tensor:
    """ALPNet's class score: the softmax-weighted sum of the scaled cosines to the class's prototypes."""
    sims = torch.stack([scaled_cosine(query, p) for p in protos])
    return (torch.softmax(sims, dim=0) * sims).sum(dim=0)


def shot_mean(feature: Tensor, mask: Tensor) -> Tensor:
    """Masked average pooling of one shot: [C, h, w], [h, w] -> [C]."""
    return (feature * mask).sum(dim=(1, 2)) / (mask.sum() + POOL_EPS)


def pooled_mean(features: Tensor, masks: Tensor) -> Tensor:
    """One masked average over every pixel of every shot: [K, C, h, w], [K, h, w] -> [C]."""
    total = sum((features[k] * masks[k]).sum(dim=(1, 2)) for k in range(len(masks)))
    return total / (masks.sum() + POOL_EPS)


def panet_reference(features: Tensor, masks: Tensor, queries: Tensor, query_episode: Tensor) -> Tensor:
    """PANet: per shot masked averages over foreground and background, averaged over the shots; each class
    scores cosine × 20 against its one prototype. Returns [N, 2, h, w] (background, foreground)."""
    rows = []
    for n, e in enumerate(query_episode.tolist()):
        shots = range(features.shape[1])
        fg = sum(shot_mean(features[e, k], masks[e, k]) for k in shots) / len(shots)
        bg = sum(shot_mean(features[e, k], 1 - masks[e, k]) for k in shots) / len(shots)
        rows.append(torch.stack([scaled_cosine(queries[n], bg), scaled_cosine(queries[n], fg)]))
    return torch.stack(rows)


def windows(feature: Tensor, mask: Tensor, size: int) -> list[tuple[Tensor, float]]:
    """(mean feature, mask fraction) of every non-overlapping size×size window of one shot."""
    h, w = mask.shape
    return [
        (
            feature[:, i : i + size, j : j + size].mean(dim=(1, 2)),
            float(mask[i : i + size, j : j + size].mean()),
        )
        for i in range(0, h, size)
        for j in range(0, w, size)
    ]


def alp_prototypes(
    features: Tensor, masks: Tensor, training: bool
) -> tuple[list[Tensor], list[Tensor], dict[str, bool]]:
    """SSL-ALPNet's prototypes of one episode ([K, C, h, w], [K, h, w]): background and foreground lists.

    Local prototypes: windows of 4 (training) or 2 (test) whose class fraction exceeds 0.95. Background: local
    only; the suite falls back to the global background prototype when none qualifies. Foreground: local plus
    global when some 4×4 window of a shot is >= 0.95 foreground ("gridconv+"), else the global alone ("mask").
    """
    window = 4 if training else 2
    shots = range(len(masks))
    bg = [p for k in shots for p, frac in windows(features[k], 1 - masks[k], window) if frac > THRESHOLD]
    bg_fallback = not bg
    if bg_fallback:
        bg = [pooled_mean(features, 1 - masks)]
    fg_global = pooled_mean(features, masks)
    use_local = any(frac >= THRESHOLD for k in shots for _, frac in windows(features[k], masks[k], 4))
    fg_local = [p for k in shots for p, frac in windows(features[k], masks[k], window) if frac > THRESHOLD]
    fg = [*fg_local, fg_global] if use_local else [fg_global]
    info = {"bg_fallback": bg_fallback, "use_local": use_local, "fg_local_windows": bool(fg_local)}
    return bg, fg, info


def alp_reference(
    features: Tensor, masks: Tensor, queries: Tensor, query_episode: Tensor, training: bool
) -> Tensor:
    """SSL-ALPNet's [N, 2, h, w] scores: the soft maximum over each class's prototypes of the query's episode."""
    rows = []
    for n, e in enumerate(query_episode.tolist()):
        bg, fg, _ = alp_prototypes(features[e], masks[e], training)
        rows.append(torch.stack([soft_maximum(queries[n], bg), soft_maximum(queries[n], fg)]))
    return torch.stack(rows)


# ---------------------------------------------------------------------- inputs
def box_mask(g: torch.Generator, box: tuple[int, int, int, int], jitter: float = 0.04) -> Tensor:
    """A soft [SIZE, SIZE] mask: ~1 inside the box, ~0 outside, each pixel off by up to ``jitter``."""
    y0, y1, x0, x1 = box
    hard = torch.zeros(SIZE, SIZE)
    hard[y0:y1, x0:x1] = 1
    noise = jitter * torch.rand(SIZE, SIZE, generator=g)
    return hard * (1 - noise) + (1 - hard) * noise


def head_scores(
    mode: str, features: Tensor, masks: Tensor, queries: Tensor, episode: Tensor, training: bool
) -> Tensor:
    head = PrototypeHead(mode=mode)
    return head.score(queries, head.prototypes(features, masks, training), episode)


def assert_parity(ours: Tensor, reference: Tensor) -> None:
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------------- PANet
def panet_inputs(shots: int, equal_areas: bool, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two episodes, three queries. ``equal_areas``: every shot's mask is a pixel permutation of the first
    (same foreground and background mass), where per-shot averaging and pooling over shots agree."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, shots, CHANNELS, SIZE, SIZE, generator=g)
    boxes = [(2, 9, 3, 12), (5, 15, 1, 8), (0, 4, 6, 10)]
    masks = torch.stack(
        [torch.stack([box_mask(g, boxes[(e + k) % 3]) for k in range(shots)]) for e in range(2)]
    )
    if equal_areas:
        for e in range(2):
            for k in range(1, shots):
                perm = torch.randperm(SIZE * SIZE, generator=g)
                masks[e, k] = masks[e, 0].flatten()[perm].view(SIZE, SIZE)
    queries = torch.randn(3, CHANNELS, SIZE, SIZE, generator=g)
    return features, masks, queries, torch.tensor([0, 1, 1])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shots", [1, 3])
def test_panet_scores_match_the_paper_formula(shots, training):
    features, masks, queries, episode = panet_inputs(shots, equal_areas=True)
    ours = head_scores("global", features, masks, queries, episode, training)
    reference = panet_reference(features, masks, queries, episode)
    assert_parity(ours, reference)
    assert reference[:, 1].abs().max() > 1.0  # the foreground logit is informative, not 0


@pytest.mark.parametrize("training", [True, False])
def test_panet_k_shot_prototype_pools_over_all_shots_as_documented(training):
    features, masks, queries, episode = panet_inputs(3, equal_areas=False, seed=1)
    ours = head_scores("global", features, masks, queries, episode, training)
    rows = []
    for n, e in enumerate(episode.tolist()):
        bg, fg = pooled_mean(features[e], 1 - masks[e]), pooled_mean(features[e], masks[e])
        rows.append(torch.stack([scaled_cosine(queries[n], bg), scaled_cosine(queries[n], fg)]))
    assert_parity(ours, torch.stack(rows))
    # The inputs tell the two K-shot rules apart (unequal mask areas across the shots).
    assert (ours - panet_reference(features, masks, queries, episode)).abs().max() > 1e-2


# ---------------------------------------------------------------------- SSL-ALPNet
def alp_inputs(shots: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Three episodes, four queries: a large organ, an organ too small for any 4×4 window (3×3 box), and a
    mid-sized one; shot k shifts the box by k pixels."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(3, shots, CHANNELS, SIZE, SIZE, generator=g)
    boxes = [(1, 12, 2, 14), (6, 9, 6, 9), (3, 10, 4, 13)]
    masks = torch.stack(
        [
            torch.stack([box_mask(g, (y0 + k, y1 + k, x0 + k, x1 + k)) for k in range(shots)])
            for y0, y1, x0, x1 in boxes
        ]
    )
    queries = torch.randn(4, CHANNELS, SIZE, SIZE, generator=g)
    return features, masks, queries, torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shots", [1, 3])
def test_alp_scores_match_the_reference(shots, training):
    features, masks, queries, episode = alp_inputs(shots)
    ours = head_scores("alp", features, masks, queries, episode, training)
    assert_parity(ours, alp_reference(features, masks, queries, episode, training))
    # The episodes cover both foreground branches and real local background prototypes.
    infos = [alp_prototypes(features[e], masks[e], training)[2] for e in range(3)]
    assert [info["use_local"] for info in infos] == [True, False, True]
    assert not any(info["bg_fallback"] for info in infos)


def test_alp_small_foreground_falls_back_to_the_global_prototype():
    """A 3×3 organ: at the test window some 2×2 window is foreground, but no 4×4 one, so the foreground is
    the global prototype alone ("mask" mode): its score is the plain cosine × 20."""
    features, masks, queries, _ = alp_inputs(1)
    features, masks = features[1:2], masks[1:2]
    episode = torch.zeros(2, dtype=torch.long)
    info = alp_prototypes(features[0], masks[0], training=False)[2]
    assert info["fg_local_windows"] and not info["use_local"]
    ours = head_scores("alp", features, masks, queries[:2], episode, training=False)
    fg_global = shot_mean(features[0, 0], masks[0, 0])
    expected = torch.stack([scaled_cosine(q, fg_global) for q in queries[:2]])
    torch.testing.assert_close(ours[:, 1], expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("training", [True, False])
def test_alp_without_background_window_uses_the_global_background_prototype(training):
    """The suite's design choice: foreground everywhere but one column leaves no window that is > 0.95
    background, and the background score becomes cosine × 20 to the global background prototype."""
    g = torch.Generator().manual_seed(3)
    features = torch.randn(1, 1, CHANNELS, SIZE, SIZE, generator=g)
    masks = box_mask(g, (0, SIZE, 1, SIZE))[None, None]
    queries = torch.randn(2, CHANNELS, SIZE, SIZE, generator=g)
    episode = torch.zeros(2, dtype=torch.long)
    head = PrototypeHead(mode="alp")
    protos = head.prototypes(features, masks, training)
    assert protos.background_valid[0].tolist() == [False] * (protos.background_valid.shape[1] - 1) + [True]
    ours = head.score(queries, protos, episode)
    bg_global = shot_mean(features[0, 0], 1 - masks[0, 0])
    expected = torch.stack([scaled_cosine(q, bg_global) for q in queries])
    torch.testing.assert_close(ours[:, 0], expected, atol=TOLERANCE, rtol=0)
    assert alp_prototypes(features[0], masks[0], training)[2]["bg_fallback"]
    assert_parity(ours, alp_reference(features, masks, queries, episode, training))


# ---------------------------------------------------------------------- the soft maximum itself
def test_soft_max_similarity_ignores_invalid_prototypes():
    g = torch.Generator().manual_seed(4)
    queries = torch.randn(2, CHANNELS, SIZE, SIZE, generator=g)
    protos = torch.randn(2, 3, CHANNELS, generator=g)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    ours = soft_max_similarity(queries, protos, valid)
    for n in range(2):
        kept = [protos[n, p] for p in range(3) if valid[n, p]]
        torch.testing.assert_close(ours[n], soft_maximum(queries[n], kept), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("width", [0, 1])
def test_soft_max_similarity_refuses_a_validity_mask_of_the_wrong_shape(width):
    """An [E, 0] mask once broadcast to an empty prototype axis and scored 0 everywhere (PANet's foreground)."""
    queries, protos = torch.randn(2, CHANNELS, 4, 4), torch.randn(2, 3, CHANNELS)
    with pytest.raises(ValueError, match="validity mask has shape"):
        soft_max_similarity(queries, protos, torch.ones(2, width, dtype=torch.bool))

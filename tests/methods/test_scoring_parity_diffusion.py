"""Reference parity of the diffusion methods' prototype formulas: DPL's enhancement and conservative fusion,
SD-FSMIS's query enhancement.

Each formula is written out from its specification (docs/methods/dpl.md §3, docs/methods/sd_fsmis.md §6) with
plain loops, without the suite's helpers, and compared with the production modules to 1e-4 on seeded random
inputs. The SD-FSMIS reference keeps the official pipeline's structure: one query slice at a time.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fsmis_bench.methods.dpl import DPL
from fsmis_bench.methods.dpl.fusion import ConservativeFusion, FusionConfig
from fsmis_bench.methods.sd_fsmis.lightning_module import SDFSMIS
from fsmis_bench.methods.sd_fsmis.query_enhancement import prototype_map
from fsmis_bench.methods.tiny_diffusers import TINY_UNET, TINY_VAE

TOLERANCE = 1e-4
TINY_DINOV2 = {
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "image_size": 14,
    "patch_size": 7,
}


def cosine(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ---------------------------------------------------------------------- DPL: conservative fusion
def fusion_reference(p0: Tensor, variants: Tensor, alpha: float, gate: float | None = None) -> Tensor:
    """p̂ = α·p0 + (1 − α)·v̄ per episode, v̄ the mean of the K variants; with a gate at τ, v̄ is the mean of
    the variants whose cosine to p0 is >= τ, weighted by that cosine, and p̂ = p0 when none is kept."""
    fused = []
    for e in range(p0.shape[0]):
        total, weight = torch.zeros_like(p0[e]), 0.0
        for k in range(variants.shape[1]):
            w = 1.0 if gate is None else cosine(variants[e, k], p0[e])
            if gate is not None and w < gate:
                continue
            total, weight = total + w * variants[e, k], weight + w
        fused.append(p0[e] if weight == 0 else alpha * p0[e] + (1 - alpha) * total / weight)
    return torch.stack(fused)


def fusion_inputs(seed: int = 0) -> tuple[Tensor, Tensor]:
    """p0 [4, 16] and 8 variants each, spread from close to p0 to opposite it."""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(4, 16, generator=g)
    spread = torch.linspace(0.1, 3.0, 8)[None, :, None]
    variants = p0[:, None] + spread * p0.norm(dim=-1)[:, None, None] * torch.randn(4, 8, 16, generator=g) / 4
    variants[3] = -variants[3]  # an episode whose variants all point away from p0
    return p0, variants


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_fusion_matches_the_formula(alpha):
    p0, variants = fusion_inputs()
    ours = ConservativeFusion(FusionConfig(alpha=alpha))(p0, variants)
    torch.testing.assert_close(ours, fusion_reference(p0, variants, alpha), atol=TOLERANCE, rtol=0)


def test_learned_alpha_starts_at_its_value_and_is_the_sigmoid_of_its_logit():
    p0, variants = fusion_inputs(1)
    fusion = ConservativeFusion(FusionConfig(alpha=0.8, learn_alpha=True))
    with torch.no_grad():
        torch.testing.assert_close(
            fusion(p0, variants), fusion_reference(p0, variants, 0.8), atol=TOLERANCE, rtol=0
        )
        fusion.alpha_logit.fill_(-0.4)
        alpha = 1 / (1 + math.exp(0.4))
        torch.testing.assert_close(
            fusion(p0, variants), fusion_reference(p0, variants, alpha), atol=TOLERANCE, rtol=0
        )


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9])
def test_gated_fusion_matches_the_formula(threshold):
    p0, variants = fusion_inputs(2)
    kept = [sum(cosine(variants[e, k], p0[e]) >= threshold for k in range(8)) for e in range(4)]
    assert kept[3] == 0 and any(0 < n < 8 for n in kept)  # a fully dropped episode, and a partial gate
    ours = ConservativeFusion(FusionConfig(alpha=0.8, gate=True, gate_threshold=threshold))(p0, variants)
    torch.testing.assert_close(ours, fusion_reference(p0, variants, 0.8, threshold), atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------------- DPL: enhancement in the module
T, BETA_START, BETA_END = 50, 1e-4, 0.02  # the DDPM of the specification
T_STAR, STEPS, VARIANTS, ALPHA = 12, 5, 8, 0.8  # t* = round(0.25·T), 5 DDIM steps, K = 8, α = 0.8


def sdedit_reference(model: DPL, p0: Tensor, cond: Tensor, seeds: list[int]) -> tuple[Tensor, Tensor]:
    """Fused prototypes [E, C] and variants [E, K, C] of p0, written out from the specification.

    p0 is mapped to √C·p0/‖p0‖, noised to t* with K noises (episode e's noise drawn from a generator seeded
    ``seeds[e]``), denoised by DDIM (η = 0) through t* = 12 → 10 → 7 → 5 → 2 → 0, mapped back to p0's norm
    and fused. The denoiser sees the 0-based index t − 1 of paper step t (the scheduler's convention).
    """
    betas = torch.linspace(BETA_START, BETA_END, T, dtype=torch.float64)
    alpha_bar = {t: float(torch.prod(1 - betas[:t])) for t in range(T + 1)}  # ᾱ_0 = 1
    path = [round(T_STAR * (1 - i / STEPS) + 1e-9) for i in range(STEPS + 1)]
    assert path == [12, 10, 7, 5, 2, 0]
    c = p0.shape[1]
    fused, all_variants = [], []
    for e, seed in enumerate(seeds):
        x0 = p0[e] / p0[e].norm() * math.sqrt(c)
        noise = torch.randn(1, VARIANTS, c, generator=torch.Generator().manual_seed(seed))[0]
        variants = []
        for k in range(VARIANTS):
            a = alpha_bar[T_STAR]
            x = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise[k]
            for t, t_prev in itertools.pairwise(path):
                eps = model.diffusion.denoiser(x[None], torch.tensor([t - 1]), cond[e : e + 1])[0]
                a_t, a_prev = alpha_bar[t], alpha_bar[t_prev]
                x0_hat = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
                x = math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * eps
            variants.append(x / x.norm() * p0[e].norm())
        variants = torch.stack(variants)
        all_variants.append(variants)
        fused.append(ALPHA * p0[e] + (1 - ALPHA) * variants.mean(dim=0))
    return torch.stack(fused), torch.stack(all_variants)


@torch.no_grad()
def test_dpl_enhancement_and_fusion_match_the_specification(monkeypatch):
    torch.manual_seed(0)
    model = DPL(
        encoder={"kind": "tiny", "feature_dim": 16, "width": 8, "output_stride": 4, "depth": 2},
        denoiser={"hidden": 32, "embed_dim": 16},
    ).eval()
    for p in model.diffusion.denoiser.time.parameters():
        p.mul_(4)  # at its initialisation ε_θ hardly depends on t; this makes a wrong time index visible
    g = torch.Generator().manual_seed(5)
    features = torch.randn(3, 1, 16, 8, 8, generator=g)
    masks = torch.zeros(3, 1, 8, 8)
    for e, (y, x) in enumerate([(1, 2), (3, 0), (2, 4)]):
        masks[e, 0, y : y + 4, x : x + 4] = 1
    p0 = torch.stack(
        [(features[e, 0] * masks[e, 0]).sum((1, 2)) / (masks[e, 0].sum() + 1e-5) for e in range(3)]
    )
    seeds = [11, 12, 13]
    fused, variants = model.enhance(p0, features, masks, [torch.Generator().manual_seed(s) for s in seeds])
    ref_fused, ref_variants = sdedit_reference(model, p0, model.condition(features, masks), seeds)
    torch.testing.assert_close(variants, ref_variants, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(fused, ref_fused, atol=TOLERANCE, rtol=0)
    # The fused prototype replaces p0 in the foreground set; nothing else changes.
    protos = model.head.prototypes(features, masks, training=False)
    torch.testing.assert_close(protos.foreground_global, p0, atol=TOLERANCE, rtol=0)
    monkeypatch.setattr(
        model, "noise_generators", lambda batch: [torch.Generator().manual_seed(s) for s in seeds]
    )
    refined, aux = model.refine_prototypes(protos, features, masks, None)
    assert aux == {}
    torch.testing.assert_close(refined.foreground_global, ref_fused, atol=TOLERANCE, rtol=0)
    for field in ("background", "background_valid", "foreground_local", "foreground_local_valid"):
        assert getattr(refined, field) is getattr(protos, field)


# ---------------------------------------------------------------------- SD-FSMIS: query enhancement
def qe_reference(
    support_latents: Tensor,
    support_masks: Tensor,
    query_latents: Tensor,
    query_episode: Tensor,
    threshold: float = 0.7,
    ratio: float = 0.1875,
) -> tuple[Tensor, list[bool]]:
    """The 8-channel conv_in inputs [N, 2C, h, w] of the queries, one query slice at a time, and whether each
    query had a confident foreground pixel.

    Per shot, the support mask resized bilinearly (align_corners) to the latent grid weights the support
    latent: p_fg = Σ z·M / ΣM and p_bg = Σ z·(1 − M) / Σ(1 − M), averaged over the shots. Each query pixel
    gets P_fg = softmax(cos to p_bg, cos to p_fg)[1]; the query prototype is the mean latent over the pixels
    with P_fg > 0.7, else over the top-k pixels, k = int(width · 0.1875). Output: [query latent ‖ prototype].
    """
    c, h, w = query_latents.shape[1:]
    rows, confident = [], []
    for n, e in enumerate(query_episode.tolist()):
        fg, bg = torch.zeros(c), torch.zeros(c)
        shots = support_latents.shape[1]
        for k in range(shots):
            m = F.interpolate(
                support_masks[e, k][None, None], size=(h, w), mode="bilinear", align_corners=True
            )[0, 0]
            z = support_latents[e, k]
            fg += (z * m).sum(dim=(1, 2)) / m.sum() / shots
            bg += (z * (1 - m)).sum(dim=(1, 2)) / (1 - m).sum() / shots
        pixels = query_latents[n].reshape(c, -1).T  # [h·w, C]
        probs = []
        for v in pixels:
            s_bg, s_fg = cosine(v, bg), cosine(v, fg)
            probs.append(math.exp(s_fg) / (math.exp(s_fg) + math.exp(s_bg)))
        probs = torch.tensor(probs)
        chosen = [i for i, p in enumerate(probs.tolist()) if p > threshold]
        confident.append(bool(chosen))
        if not chosen:
            chosen = probs.topk(int(w * ratio)).indices.tolist()
        proto = pixels[chosen].mean(dim=0)
        rows.append(torch.cat([query_latents[n], proto[:, None, None].expand(c, h, w)]))
    return torch.stack(rows), confident


def structured_latents(g: torch.Generator, masks: Tensor, size: int) -> Tensor:
    """Support latents [E, K, 4, size, size] that lean to channel 0 inside the mask and to channel 1 outside."""
    inside = F.interpolate(masks.flatten(0, 1)[:, None], size=(size, size), mode="nearest").view(
        *masks.shape[:2], 1, size, size
    )
    base = torch.randn(*masks.shape[:2], 4, size, size, generator=g)
    lean = torch.zeros(4, 1, 1)
    lean[0], lean[1] = 2.0, -2.0
    return base + lean * inside - lean * (1 - inside)


def box_masks(episodes: int, shots: int, size: int) -> Tensor:
    masks = torch.zeros(episodes, shots, size, size)
    for e in range(episodes):
        for k in range(shots):
            a, b = size // 8 + 2 * k + e, size // 2 + size // 8 + e
            masks[e, k, a:b, a + 1 : b + 3] = 1
    return masks


@pytest.mark.parametrize("shots", [1, 3])
def test_query_enhancement_matches_the_specification(shots):
    g = torch.Generator().manual_seed(shots)
    masks = box_masks(2, shots, 64)
    support = structured_latents(g, masks, 32)
    queries = torch.randn(3, 4, 32, 32, generator=g)
    queries[2] = -queries[2].abs() * torch.tensor([1.0, -1.0, 0.1, 0.1])[:, None, None]  # leans to p_bg
    episode = torch.tensor([0, 1, 1])
    reference, confident = qe_reference(support, masks, queries, episode)
    assert confident == [True, True, False]  # the top-k fallback is exercised (k = 6 at width 32)
    ours = torch.cat([queries, prototype_map(support, masks, queries, episode)], dim=1)
    torch.testing.assert_close(ours, reference, atol=TOLERANCE, rtol=0)


@torch.no_grad()
def test_sd_fsmis_conv_in_query_input_is_the_query_latent_then_its_prototype():
    """Through the network's episode encoding (tiny random VAE, 16-pixel images, 8×8 latents, k = 1)."""
    torch.manual_seed(0)
    module = SDFSMIS(
        pretrained_path=None,
        dinov2_path=None,
        allow_random_init=True,
        vae_config=TINY_VAE,
        unet_config=TINY_UNET,
        dinov2_config=TINY_DINOV2,
    ).eval()
    net = module.net
    g = torch.Generator().manual_seed(1)
    support_images = torch.rand(2, 2, 3, 16, 16, generator=g)
    masks = box_masks(2, 2, 16)
    query_images = torch.rand(3, 3, 16, 16, generator=g)
    episode = torch.tensor([1, 0, 1])
    encoded = net.encode_episodes(support_images, masks, query_images, episode, sample=False)
    z_support = net.encode(support_images.flatten(0, 1) * 2 - 1, sample=False).view(2, 2, 4, 8, 8)
    z_query = net.encode(query_images * 2 - 1, sample=False)
    reference, _ = qe_reference(z_support, masks, z_query, episode)
    torch.testing.assert_close(encoded.query, reference, atol=TOLERANCE, rtol=0)

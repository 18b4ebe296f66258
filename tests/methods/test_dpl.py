"""DPL: exact reduction to SSL-ALPNet, fusion fidelity, seeded variants, conditioning, DDIM, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from fsmis_bench.batch import EpisodeBatch, as_three_channels
from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.alpnet import ALPNet
from fsmis_bench.methods.dpl import DPL
from fsmis_bench.methods.dpl.conditioning import ConditioningConfig, SpatialCondition, mask_geometry
from fsmis_bench.methods.dpl.denoiser import DenoiserConfig, MLPDenoiser, build_denoiser
from fsmis_bench.methods.dpl.diffusion import DiffusionConfig, PrototypeDiffusion
from fsmis_bench.methods.dpl.fusion import ConservativeFusion, FusionConfig
from fsmis_bench.methods.prototype.prototypes import resize_masks

ENCODER = {"kind": "tiny", "feature_dim": 16, "width": 8, "output_stride": 4, "depth": 2}
DENOISER = {"hidden": 32, "embed_dim": 16}
SUPPORTS = (((8, 10),), ((8, 20),), ((8, 30),))


def make_dpl(**overrides) -> DPL:
    torch.manual_seed(0)
    return DPL(encoder=ENCODER, denoiser=DENOISER, **overrides)


def chunk_batch() -> EpisodeBatch:
    """A test batch like the EP1 loop's: one query scan and organ, three chunks of two query slices each."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 1, 64, 64)
    for j in range(3):
        masks[j, 0, 12 + 8 * j : 36 + 8 * j, 16:44] = 1
    return EpisodeBatch(
        support_images=as_three_channels(torch.randn(3, 1, 64, 64, generator=g)),
        support_masks=masks,
        query_images=as_three_channels(torch.randn(6, 64, 64, generator=g)),
        query_masks=masks[:, 0].repeat_interleave(2, dim=0),
        query_episode=torch.tensor([0, 0, 1, 1, 2, 2]),
        organ="liver",
        meta={"scan_id": 3, "support": SUPPORTS},
    )


def chunk(batch: EpisodeBatch, j: int) -> EpisodeBatch:
    """Chunk j of ``batch`` alone, as a looped evaluation would pass it."""
    rows = batch.query_episode == j
    return EpisodeBatch(
        batch.support_images[j : j + 1],
        batch.support_masks[j : j + 1],
        batch.query_images[rows],
        batch.query_masks[rows],
        torch.zeros(int(rows.sum()), dtype=torch.long),
        batch.organ,
        {**batch.meta, "support": batch.meta["support"][j : j + 1]},
    )


def support_prototypes(model: DPL, batch: EpisodeBatch):
    support, _ = model.encode(batch)
    masks = resize_masks(batch.support_masks, support.shape[-2:])
    return support, masks, model.head.prototypes(support, masks, model.training)


@torch.no_grad()
@pytest.mark.parametrize("overrides", [{"diffusion": {"enabled": False}}, {"fusion": {"alpha": 1.0}}])
def test_no_diffusion_and_alpha_one_are_exactly_alpnet(overrides):
    torch.manual_seed(1)
    alpnet = ALPNet(encoder=ENCODER).eval()
    model = make_dpl(**overrides)
    missing, unexpected = model.load_state_dict(alpnet.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("diffusion.", "condition.")) for k in missing)
    if "diffusion" in overrides:
        assert not missing  # no extra modules at all
    model.eval()
    batch = chunk_batch()
    support, masks, protos = support_prototypes(model, batch)
    refined, aux = model.refine_prototypes(protos, support, masks, batch)
    assert aux == {}
    for field in ("background", "background_valid", "foreground_local", "foreground_local_valid"):
        assert getattr(refined, field) is getattr(protos, field)
    assert torch.equal(refined.foreground_global, protos.foreground_global)
    assert torch.equal(model.foreground_scores(batch), alpnet.foreground_scores(batch))


def test_fusion_stays_within_its_fidelity_bound():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 16, generator=g)
    # Variants on p0's sphere, from almost p0 to its antipode (the worst case of the bound).
    directions = torch.randn(5, 8, 16, generator=g)
    directions[:, 0] = -p0
    directions[:, 1] = p0 + 0.01 * directions[:, 1]
    variants = F.normalize(directions, dim=-1) * p0.norm(dim=-1)[:, None, None]
    cosine = F.cosine_similarity(variants, p0[:, None].expand_as(variants), dim=-1)
    for alpha in (0.0, 0.5, 0.8, 1.0):
        fused = ConservativeFusion(FusionConfig(alpha=alpha))(p0, variants)
        deviation = (fused - p0).norm(dim=-1)
        assert torch.allclose(deviation, (1 - alpha) * (variants.mean(dim=1) - p0).norm(dim=-1), atol=1e-5)
        assert torch.all(deviation <= 2 * (1 - alpha) * p0.norm(dim=-1) + 1e-5)
    tau = 0.5
    gated = ConservativeFusion(FusionConfig(alpha=0.8, gate=True, gate_threshold=tau))
    weights = gated.variant_weights(p0, variants)
    assert torch.equal(weights > 0, cosine >= tau) and torch.all(weights[:, 0] == 0)
    deviation = (gated(p0, variants) - p0).norm(dim=-1)
    assert torch.all(deviation <= 0.2 * math.sqrt(2 * (1 - tau)) * p0.norm(dim=-1) + 1e-5)
    # A gate that keeps no variant leaves p0 untouched.
    strict = ConservativeFusion(FusionConfig(alpha=0.8, gate=True, gate_threshold=1.5))
    assert torch.equal(strict(p0, variants), p0)


@torch.no_grad()
def test_variants_differ_and_keep_the_norm_of_p0():
    model = make_dpl().eval()
    batch = chunk_batch()
    support, masks, protos = support_prototypes(model, batch)
    p0 = protos.foreground_global
    fused, variants = model.enhance(p0, support, masks, model.noise_generators(batch))
    assert variants.shape == (3, 8, 16)
    gaps = torch.cdist(variants, variants) + torch.eye(8) * 1e9
    assert torch.all(gaps > 1e-3 * p0.norm(dim=-1)[:, None, None])
    assert torch.allclose(variants.norm(dim=-1), p0.norm(dim=-1)[:, None].expand(3, 8), rtol=1e-5)
    assert torch.all((fused - p0).norm(dim=-1) <= 2 * 0.2 * p0.norm(dim=-1))
    assert not torch.equal(fused, p0)


@torch.no_grad()
def test_seeded_variants_are_reproducible_and_independent_of_batching():
    model = make_dpl(noise_seed=7).eval()
    batch = chunk_batch()
    support, masks, protos = support_prototypes(model, batch)
    p0 = protos.foreground_global
    first = model.enhance(p0, support, masks, model.noise_generators(batch))[1]
    again = model.enhance(p0, support, masks, model.noise_generators(batch))[1]
    assert torch.equal(first, again)
    model.noise_seed = 8
    assert not torch.equal(first, model.enhance(p0, support, masks, model.noise_generators(batch))[1])
    model.noise_seed = 7
    batched = model.noise_generators(batch)
    for j in range(3):
        (alone,) = model.noise_generators(chunk(batch, j))
        assert torch.equal(torch.randn(4, generator=alone), torch.randn(4, generator=batched[j]))
    looped = torch.cat([model.foreground_scores(chunk(batch, j)) for j in range(3)])
    assert torch.allclose(looped, model.foreground_scores(batch), atol=1e-5)
    assert model.train().noise_generators(batch) is None  # training noise: the run-seeded global RNG


@pytest.mark.parametrize(("kind", "injection"), [("mlp", "add"), ("mlp", "film"), ("transformer", "add")])
def test_conditioning_changes_the_denoiser_output(kind, injection):
    torch.manual_seed(0)
    denoiser = build_denoiser(16, DenoiserConfig(kind=kind, **DENOISER), injection).eval()
    x, t = torch.randn(4, 16), torch.tensor([0, 5, 11, 49])
    cond, other = torch.randn(2, 4, 16)
    with torch.no_grad():
        out = denoiser(x, t, cond)
        assert not torch.allclose(out, denoiser(x, t, other))
        assert not torch.allclose(out, denoiser(x, t.flip(0), cond))


def test_condition_follows_the_mask_geometry():
    masks = torch.zeros(2, 1, 16, 32)
    masks[0, 0, 4:8, 0:16] = 1  # 4 rows x 16 columns, upper left
    masks[1, 0, 8:16, 24:28] = 1  # 8 rows x 4 columns, lower right
    geometry = mask_geometry(masks)
    assert torch.allclose(geometry[0, :2], torch.tensor([0.25, 0.375]))
    assert torch.allclose(geometry[1, :2], torch.tensor([0.8125, 0.75]))
    assert torch.allclose(geometry[:, 4], torch.tensor([64 / 512, 32 / 512]))
    assert torch.allclose(
        geometry[:, 5], torch.log(torch.tensor([(4 / 16) / (16 / 32), (8 / 16) / (4 / 32)]))
    )
    assert torch.equal(mask_geometry(torch.zeros(1, 1, 8, 8)), torch.zeros(1, 6))
    torch.manual_seed(0)
    condition = SpatialCondition(8, 16, ConditioningConfig(feature_stats=False))
    features = torch.randn(1, 1, 8, 16, 32).expand(2, -1, -1, -1, -1)
    embedding = condition(features, masks)
    assert not torch.allclose(embedding[0], embedding[1])


def test_reverse_matches_diffusers_ddim_where_its_stride_fits():
    """t* = 10 in 5 steps is DDIMScheduler's 25-step grid (stride 2, steps_offset 1) from index 9 down."""
    torch.manual_seed(0)
    denoiser = MLPDenoiser(8, DenoiserConfig(hidden=16, embed_dim=8), None)
    diffusion = PrototypeDiffusion(
        DiffusionConfig(t_star=10, num_inference_steps=5, num_variants=2), denoiser
    )
    x0 = torch.randn(3, 8)
    with torch.no_grad():
        ours = diffusion.enhance(x0, None, [torch.Generator().manual_seed(i) for i in range(3)])
        ddim = DDIMScheduler(
            num_train_timesteps=50, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
            clip_sample=False, set_alpha_to_one=True, steps_offset=1,
        )  # fmt: skip
        ddim.set_timesteps(25)
        steps = [int(t) for t in ddim.timesteps if t <= 9]
        assert steps == [9, 7, 5, 3, 1] == diffusion.path[:-1]
        noise = torch.stack([torch.randn(2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)])
        x = ddim.add_noise(x0[:, None].expand(3, 2, 8).reshape(6, 8), noise.reshape(6, 8), torch.tensor(9))
        for t in steps:
            x = ddim.step(denoiser(x, torch.full((6,), t), None), t, x).prev_sample
    assert torch.allclose(ours.reshape(6, 8), x, atol=1e-5)


def test_diffusion_loss_trains_denoiser_and_alpha_but_not_the_encoder():
    model = make_dpl(fusion={"alpha": 0.8, "learn_alpha": True}).train()
    batch = chunk_batch()
    losses = model.training_losses(batch)
    assert {"query_ce", "align", "diffusion_eps", "loss"} <= set(losses)
    losses["loss"].backward()
    assert model.fusion.alpha_logit.grad is not None
    model.zero_grad()
    support, masks, protos = support_prototypes(model, batch)
    model.denoising_loss(protos.foreground_global, support, masks).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.diffusion.denoiser.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"diffusion": {"steps": 5}}, "model.init_args.diffusion"),
        ({"diffusion": {"t_star": 51}}, "t_star=51"),
        ({"fusion": {"alpha": 1.0, "learn_alpha": True}}, "learn_alpha"),
        ({"denoiser": {"kind": "transformer"}, "conditioning": {"injection": "film"}}, "film"),
    ],
)
def test_bad_options_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        DPL(encoder=ENCODER, **overrides)


def test_dpl_runs_end_to_end_from_the_cli(tmp_path: Path, tiny_mri_root: Path):
    args = ["run", "--method", "dpl", "--fold", "0", "--profile", "smoke", "--data-root", str(tiny_mri_root)]
    args += ["--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert (
        main([*args, "--set", "trainer.max_steps=2", "--set", "model.init_args.diffusion.num_variants=2"])
        == 0
    )
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "dpl" and summary["status"] == "ok"
    assert summary["models"][0]["train_steps"] == 2 and math.isfinite(summary["models"][0]["final_loss"])
    assert set(summary["dice"]) == {"liver", "spleen", "kidney_left", "kidney_right", "mean"}
    assert len(pd.read_csv(run_dir / "cases.csv")) == 4 * 4

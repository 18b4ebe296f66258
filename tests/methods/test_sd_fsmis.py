"""SD-FSMIS: UNet surgery, support bank, QE, VTCT, one-step formulation, offline loading, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import Dinov2Config, Dinov2Model

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.cli import main
from fsmis_bench.config import instantiate
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.sd_fsmis.attention import (
    BankAttnProcessor,
    SupportBank,
    install_bank,
    sinusoidal_positions,
)
from fsmis_bench.methods.sd_fsmis.lightning_module import SDFSMIS, dynamic_threshold_scores, largest_component
from fsmis_bench.methods.sd_fsmis.model import SCHEDULER_CONFIG, EncodedEpisodes, one_step_x0
from fsmis_bench.methods.sd_fsmis.query_enhancement import (
    foreground_probability,
    query_prototype,
    support_prototypes,
)
from fsmis_bench.methods.sd_fsmis.unet import SupportQueryUNet, widen_unet
from fsmis_bench.methods.sd_fsmis.vtct import VisualTextualTranslator, masked_average
from fsmis_bench.methods.tiny_diffusers import TINY_UNET, TINY_VAE
from fsmis_bench.runner.experiment import RunRequest, resolve_config

UNET, VAE = TINY_UNET, TINY_VAE  # the known-good tiny configurations of docs/methods/README.md §2.3
DINO = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
DINO_GEOMETRY = {"image_size": 14, "patch_size": 7}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET)


def tiny_module(**kwargs) -> SDFSMIS:
    """SDFSMIS with the tiny random components (16-pixel images -> 8x8 latents)."""
    return SDFSMIS(
        pretrained_path=None,
        dinov2_path=None,
        allow_random_init=True,
        vae_config=VAE,
        unet_config=UNET,
        dinov2_config={**DINO, **DINO_GEOMETRY},
        **kwargs,
    ).eval()


# ---------------------------------------------------------------------- UNet surgery
def test_widened_conv_in_is_half_the_doubled_kernel_and_reproduces_the_original():
    unet = tiny_unet()
    widened = widen_unet(unet)
    weight = unet.conv_in.weight
    for conv in (widened.conv_in, widened.conv_in_ref):
        assert torch.equal(conv.weight, 0.5 * torch.cat([weight, weight], dim=1))
        assert torch.equal(conv.bias, unet.conv_in.bias)
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 8)
    with torch.no_grad():
        assert torch.allclose(unet.conv_in(x), widened.conv_in(torch.cat([x, x], 1)), atol=1e-6)
        reference = unet(x, 1, ctx).sample
        for branch in ("query", "support"):
            out = widened(torch.cat([x, x], 1), 1, ctx, branch=branch).sample
            assert torch.allclose(out, reference, atol=1e-5)


def test_widened_unet_config_round_trips(tmp_path):
    widened = widen_unet(tiny_unet())
    with torch.no_grad():
        widened.conv_in_ref.weight.add_(1.0)  # make the two branches differ
    assert widened.config.in_channels == 8
    widened.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = SupportQueryUNet.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True)
    assert loaded.config.in_channels == 8
    saved, restored = widened.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    x, ctx = torch.randn(1, 8, 8, 8), torch.randn(1, 1, 8)
    with torch.no_grad():
        for branch in ("query", "support"):
            # same weights bit for bit; the outputs only to rounding, since CPU kernels may take another path
            # for the tensors safetensors loads (seen: 8e-7 with diffusers 0.42, torch 2.13; copies of them: 0)
            torch.testing.assert_close(
                loaded(x, 1, ctx, branch=branch).sample,
                widened(x, 1, ctx, branch=branch).sample,
                rtol=1e-5,
                atol=1e-5,
            )
    assert not torch.equal(loaded(x, 1, ctx).sample, loaded(x, 1, ctx, branch="support").sample)


# ---------------------------------------------------------------------- support bank
def test_bank_query_attends_over_its_own_and_its_episodes_support_tokens():
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    bank = SupportBank()
    attn.set_processor(BankAttnProcessor(bank, "a"))
    support, query = torch.randn(2 * 3, 5, 8), torch.randn(2, 5, 8)  # E=2 episodes x K=3 shots, N=2 queries
    episode = torch.tensor([1, 0])
    with torch.no_grad():
        bank.write(shots=3)
        attn(support)
        bank.read(episode)
        out = attn(query)

        def split(x):
            return x.view(x.shape[0], 2, 4).transpose(0, 1)  # [heads, tokens, d]

        for n, e in enumerate(episode.tolist()):
            tokens = torch.cat([query[n], *support[3 * e : 3 * e + 3]])  # own tokens, then all its shots'
            q, k, v = split(attn.to_q(query[n])), split(attn.to_k(tokens)), split(attn.to_v(tokens))
            weights = (q @ k.transpose(1, 2) / 2.0).softmax(-1)  # scale 1/sqrt(4)
            expected = attn.to_out[0]((weights @ v).transpose(0, 1).reshape(5, 8))
            assert torch.allclose(out[n], expected, atol=1e-5)


def test_sinusoidal_positions_share_one_frame_across_levels():
    fine, coarse = sinusoidal_positions(8, 8, 16), sinusoidal_positions(4, 4, 16)
    assert fine.shape == (64, 16) and coarse.shape == (16, 16)
    assert len({tuple(row.tolist()) for row in fine}) == 64  # every token has its own code
    # relative coordinates: token (y, x) of the coarse grid lies between the fine tokens it covers
    fine_grid, coarse_grid = fine.view(8, 8, 16), coarse.view(4, 4, 16)
    nearest = ((fine_grid[:, :, None, None] - coarse_grid[None, None]) ** 2).sum(-1).flatten(2).argmin(-1)
    assert nearest[2, 5] == 1 * 4 + 2 and nearest[7, 0] == 3 * 4 + 0
    assert torch.equal(sinusoidal_positions(2, 2, 6)[:, 4:], torch.zeros(4, 2))  # padded channels


def test_bank_positions_bias_keys_and_queries_but_not_values():
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    bank = SupportBank()
    bank.grid = (4, 4)
    with_pos, plain = BankAttnProcessor(bank, "a", "sinusoidal"), BankAttnProcessor(bank, "a")
    x = torch.randn(1, 16, 8)
    with torch.no_grad():
        attn.set_processor(plain)
        reference = attn(x)
        attn.set_processor(with_pos)
        located = attn(x)
        attn.to_q.weight.zero_()  # uniform attention: the output is the mean value, positions are moot
        attn.set_processor(plain)
        uniform_plain = attn(x)
        attn.set_processor(with_pos)
        uniform_located = attn(x)
    assert not torch.allclose(reference, located, atol=1e-4)
    assert torch.allclose(uniform_plain, uniform_located, atol=1e-6)
    with pytest.raises(ValueError, match="unknown bank positions"):
        BankAttnProcessor(bank, "a", "learned")
    bank.grid = None
    with pytest.raises(RuntimeError, match="latent grid"):
        attn(x)


@pytest.mark.parametrize(
    ("grid", "tokens", "level"), [((8, 8), 16, (4, 4)), ((8, 4), 8, (4, 2)), ((13, 13), 16, (4, 4))]
)
def test_position_codes_follow_the_unet_levels_of_any_latent_grid(grid, tokens, level):
    bank = SupportBank()
    bank.grid = grid
    code = BankAttnProcessor(bank, "a", "sinusoidal")._position_code(tokens, 8, torch.zeros(1))
    assert torch.equal(code, sinusoidal_positions(*level, 8))
    with pytest.raises(RuntimeError, match="no level of the"):
        BankAttnProcessor(bank, "a", "sinusoidal")._position_code(tokens + 1, 8, torch.zeros(1))


def test_bank_positions_match_query_to_support_by_place():
    """With positions, a query token can find the support token at its own place even when contents agree."""
    attn = Attention(query_dim=16, heads=1, dim_head=16)
    with torch.no_grad():
        for proj in (attn.to_q, attn.to_k):
            proj.weight.copy_(10.0 * torch.eye(16))
        attn.to_v.weight.copy_(torch.eye(16))
        attn.to_out[0].weight.copy_(torch.eye(16))
        attn.to_out[0].bias.zero_()
    bank = SupportBank()
    bank.grid = (4, 4)
    attn.set_processor(BankAttnProcessor(bank, "a", "sinusoidal"))
    support = torch.zeros(1, 16, 16)
    support[0, 5, 0] = 1.0  # one marked support token, at place 5; contents otherwise equal everywhere
    with torch.no_grad():
        bank.write(shots=1)
        attn(support)
        bank.read(torch.tensor([0]))
        out = attn(torch.zeros(1, 16, 16))[0, :, 0]
    assert int(out.argmax()) == 5


def test_deviations_name_the_non_paper_options():
    assert tiny_module().deviations() == []
    assert tiny_module(bank_positions="sinusoidal").deviations() == ["bank_positions=sinusoidal"]
    with pytest.raises(ConfigError, match="unknown bank_positions 'learned'"):
        tiny_module(bank_positions="learned")


def _episodes(e: int, k: int, n: int, channels: int = 8, size: int = 8, ctx: int = 8) -> EncodedEpisodes:
    return EncodedEpisodes(
        support=torch.randn(e * k, channels, size, size),
        query=torch.randn(n, channels, size, size),
        context=torch.randn(e, 1, ctx),
        shots=k,
        query_episode=torch.tensor([0, 1, 1, 0, 1])[:n],
    )


def test_batched_forward_equals_one_query_at_a_time():
    net = tiny_module().net
    enc = _episodes(e=2, k=2, n=5)
    with torch.no_grad():
        batched = net.velocity(enc)
        chunked = net.velocity(enc, query_batch=2)
        for n in range(5):
            e = int(enc.query_episode[n])
            single = EncodedEpisodes(
                support=enc.support[2 * e : 2 * e + 2],
                query=enc.query[n : n + 1],
                context=enc.context[e : e + 1],
                shots=2,
                query_episode=torch.zeros(1, dtype=torch.long),
            )
            assert torch.allclose(batched[n], net.velocity(single)[0], atol=1e-5)
    assert torch.allclose(batched, chunked, atol=1e-5)
    assert not net.bank.entries  # cleared after the episode


def test_support_changes_the_query_output_and_a_cleared_bank_removes_the_effect():
    net = tiny_module().net
    enc = _episodes(e=1, k=1, n=1)
    other = EncodedEpisodes(torch.randn_like(enc.support), enc.query, enc.context, 1, enc.query_episode)
    t = torch.ones(1, dtype=torch.long)
    with torch.no_grad():
        assert not torch.allclose(net.velocity(enc), net.velocity(other), atol=1e-4)
        outputs = []
        for episode in (enc, other):
            net.bank.write(1)
            net.unet(episode.support, t, episode.context, branch="support")
            net.bank.clear()
            outputs.append(net.unet(episode.query, t, episode.context).sample)
    assert torch.equal(outputs[0], outputs[1])
    with pytest.raises(RuntimeError, match="empty"):
        net.bank.read(torch.zeros(1, dtype=torch.long))


def test_bank_keeps_gradients_through_the_support_pass():
    net = tiny_module().net
    enc = _episodes(e=1, k=1, n=1)
    enc.support.requires_grad_(True)
    net.velocity(enc).sum().backward()
    assert enc.support.grad is not None and enc.support.grad.abs().sum() > 0


def test_install_bank_covers_every_self_attention_only():
    unet = widen_unet(tiny_unet())
    install_bank(unet)
    kinds = {name: type(p).__name__ for name, p in unet.attn_processors.items()}
    assert {n for n, k in kinds.items() if k == "BankAttnProcessor"} == {n for n in kinds if "attn1" in n}
    assert len([n for n in kinds if "attn1" in n]) == 4  # down, mid, two up


# ---------------------------------------------------------------------- query enhancement
def _looped_query_prototype(latent, fg, bg, threshold=0.7, ratio=0.1875):
    """Reference loop following docs/methods/sd_fsmis.md §6 for one query [C, h, w]."""
    c = latent.shape[0]
    flat = latent.reshape(c, -1)
    probs = []
    for i in range(flat.shape[1]):
        sims = torch.stack([F.cosine_similarity(flat[:, i], bg, 0), F.cosine_similarity(flat[:, i], fg, 0)])
        probs.append(sims.softmax(0)[1])
    prob = torch.stack(probs)
    chosen = flat[:, prob > threshold]
    if chosen.shape[1] == 0:
        chosen = flat[:, prob.topk(int(latent.shape[-1] * ratio)).indices]
    return chosen.mean(dim=1)


def test_query_enhancement_vectorised_equals_loop():
    latents, masks = torch.randn(2, 3, 4, 32, 32), (torch.rand(2, 3, 64, 64) > 0.6).float()
    queries, episode = torch.randn(4, 4, 32, 32), torch.tensor([0, 1, 1, 0])
    fg, bg = support_prototypes(latents, masks)
    for e in range(2):  # prototypes: bilinear (align_corners) masks, masked means, averaged over shots
        soft = F.interpolate(masks[e][:, None], size=(32, 32), mode="bilinear", align_corners=True)
        per_shot = [(latents[e, s] * soft[s]).sum((1, 2)) / (soft[s].sum() + 1e-6) for s in range(3)]
        assert torch.allclose(fg[e], torch.stack(per_shot).mean(0), atol=1e-5)
    result = query_prototype(queries, fg[episode], bg[episode])
    for n in range(4):
        expected = _looped_query_prototype(queries[n], fg[episode[n]], bg[episode[n]])
        assert torch.allclose(result[n], expected, atol=1e-5)


def test_query_enhancement_falls_back_to_top_k_when_no_pixel_is_confident():
    fg, bg = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    queries = torch.randn(1, 4, 32, 32)
    queries[:, 0], queries[:, 1] = 0.0, queries[:, 1].abs()  # cos to fg = 0 <= cos to bg: P_fg <= 0.5
    prob = foreground_probability(queries, fg, bg)
    assert prob.max() <= 0.5
    result = query_prototype(queries, fg, bg)
    top = prob[0].topk(6).indices  # k = int(32 * 0.1875)
    assert torch.allclose(result[0], queries.flatten(2)[0][:, top].mean(1), atol=1e-6)
    confident = query_prototype(queries, fg, bg, threshold=0.0)  # all pixels confident -> plain mean
    assert torch.allclose(confident[0], queries[0].mean((1, 2)), atol=1e-6)


# ---------------------------------------------------------------------- VTCT
def test_vtct_masked_pooling_and_widths_from_configs():
    dinov2 = Dinov2Model(Dinov2Config(**DINO, image_size=28, patch_size=7))
    vtct = VisualTextualTranslator(dinov2, output_dim=12).eval()
    assert vtct.mlp[0].in_features == 8 and vtct.mlp[0].out_features == 16 and vtct.mlp[-1].out_features == 12
    assert len([m for m in vtct.mlp if isinstance(m, torch.nn.Linear)]) == 4
    images, masks = torch.rand(2, 3, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    masks[..., :16, :16] = 1  # top-left quarter
    features = vtct.patch_features(images.flatten(0, 1))
    assert features.shape == (6, 8, 4, 4)  # grid = 28 // 7
    expected = features[:, :, :2, :2].mean(dim=(2, 3))
    assert torch.allclose(vtct.pooled(images.flatten(0, 1), masks.flatten(0, 1)), expected, atol=1e-5)
    token = vtct(images, masks)
    assert token.shape == (2, 1, 12)
    assert torch.allclose(token[0, 0], vtct.mlp(expected[:3].mean(0)), atol=1e-5)
    feats, grid_masks = torch.randn(2, 5, 3, 3), (torch.rand(2, 3, 3) > 0.5).float()
    manual = torch.stack(
        [(feats[i] * grid_masks[i]).sum((1, 2)) / (grid_masks[i].sum() + 1e-6) for i in range(2)]
    )
    assert torch.allclose(masked_average(feats, grid_masks), manual, atol=1e-6)
    vtct.train()
    assert not vtct.encoder.training and not any(p.requires_grad for p in vtct.encoder.parameters())


# ---------------------------------------------------------------------- formulation and post-processing
def test_one_step_formulation_gives_minus_v():
    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    assert torch.all(scheduler.alphas_cumprod == 0)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [
        1
    ]  # leading spacing + steps_offset 1: harmless since alpha_bar = 0
    v, sample = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    step = scheduler.step(v, scheduler.timesteps[0], sample)
    assert torch.allclose(step.pred_original_sample, one_step_x0(v))
    with pytest.raises(ConfigError, match="alpha_bar"):
        tiny_module(scheduler={"beta_start": 0.00085, "beta_end": 0.012})


def test_training_loss_regresses_onto_the_negated_query_mask_latent():
    module = tiny_module().train()
    batch = EpisodeBatch(
        torch.rand(2, 1, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float(), torch.rand(2, 3, 16, 16),
        (torch.rand(2, 16, 16) > 0.5).float(), torch.arange(2), "x",
    )  # fmt: skip
    loss = module.training_losses(batch)["loss"]
    loss.backward()
    assert loss.ndim == 0 and module.net.unet.conv_in_ref.weight.grad is not None
    assert module.net.vtct.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in module.net.vae.parameters())


def test_dynamic_threshold_per_chunk_and_largest_component():
    maps = torch.zeros(3, 3, 4, 4)
    maps[0, :, 0, 0], maps[1, 0, 1, 1], maps[2, :, 2, 2] = 1.0, 0.9, 0.2
    scores = dynamic_threshold_scores(maps, torch.tensor([0, 0, 1]), ratio=0.25)
    # chunk 0: max 1.0 -> threshold 0.25; slice 1's channel mean 0.3 passes. chunk 1: 0.2 vs 0.05
    assert scores[0, 0, 0] > 0 and scores[1, 1, 1] > 0 and scores[2, 2, 2] > 0
    assert scores[0, 3, 3] < 0 and scores[1, 0, 0] < 0
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    mask[2:5, 2:4] = True
    mask[5, 4] = True  # diagonal neighbour: 8-connected to the block
    kept = largest_component(mask)
    assert not kept[0, 0] and kept[5, 4] and kept.sum() == 7


def test_all_chunks_support_mode_and_checkpoint_hygiene():
    module = tiny_module(support_mode="all_chunks", test_query_batch=2)
    batch = EpisodeBatch(
        torch.rand(3, 1, 3, 16, 16), (torch.rand(3, 1, 16, 16) > 0.5).float(), torch.rand(5, 3, 16, 16),
        torch.zeros(5, 16, 16), torch.tensor([0, 0, 1, 2, 2]), "liver",
    )  # fmt: skip
    with torch.no_grad():
        assert module.foreground_scores(batch).shape == (5, 16, 16)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    kept = set(checkpoint["state_dict"])
    assert any(k.startswith("net.unet.") for k in kept) and any(k.startswith("net.vtct.mlp.") for k in kept)
    assert not any(k.startswith(("net.vae.", "net.vtct.encoder.")) for k in kept)
    with pytest.raises(ConfigError, match="support_mode"):
        tiny_module(support_mode="nearest")


# ---------------------------------------------------------------------- offline loading (paper code path)
@pytest.fixture()
def tiny_weights(tmp_path: Path) -> tuple[Path, Path]:
    sd, dino = tmp_path / "sd", tmp_path / "dinov2"
    AutoencoderKL(**VAE).save_pretrained(sd / "vae")
    tiny_unet().save_pretrained(sd / "unet")
    Dinov2Model(Dinov2Config(**DINO, **DINO_GEOMETRY)).save_pretrained(dino)
    return sd, dino


def test_paper_profile_loads_tiny_save_pretrained_weights_offline(tiny_weights):
    sd, dino = tiny_weights
    assert not list(sd.rglob("*.bin")) and not list(dino.rglob("*.bin"))  # safetensors only
    overrides = [f"model.init_args.pretrained_path={sd}", f"model.init_args.dinov2_path={dino}"]
    config = resolve_config(RunRequest(method="sd_fsmis", fold=0, profile="paper", overrides=overrides))
    assert config["model"]["init_args"]["allow_random_init"] is False
    module = instantiate(config["model"])
    info = module.run_info()
    assert all(v.startswith("pretrained") for v in info["weights"].values()), info
    saved_unet = UNet2DConditionModel.from_pretrained(sd / "unet")
    weight = saved_unet.conv_in.weight
    assert torch.equal(module.net.unet.conv_in_ref.weight, 0.5 * torch.cat([weight, weight], 1))
    assert torch.equal(
        module.net.unet.mid_block.resnets[0].conv1.weight, saved_unet.mid_block.resnets[0].conv1.weight
    )
    assert module.net.vtct.mlp[0].in_features == 8 and module.net.vtct.mlp[-1].out_features == 8
    batch = EpisodeBatch(
        torch.rand(1, 1, 3, 16, 16), torch.ones(1, 1, 16, 16), torch.rand(2, 3, 16, 16), torch.zeros(2, 16, 16),
        torch.zeros(2, dtype=torch.long), "liver",
    )  # fmt: skip
    with torch.no_grad():
        assert module.eval().foreground_scores(batch).shape == (2, 16, 16)


def test_missing_weights_name_the_path_unless_random_init_is_allowed(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=f"{missing}.*subfolder 'vae'"):
        SDFSMIS(pretrained_path=str(missing), dinov2_path=None)
    with pytest.raises(ConfigError, match="no pretrained_path"):
        SDFSMIS(pretrained_path=None, dinov2_path=None, vae_config=VAE, unet_config=UNET)


# ---------------------------------------------------------------------- end to end
def test_smoke_profile_fits_and_tests_two_models_through_the_cli(tmp_path, tiny_mri_root):
    args = [
        "run",
        "--method",
        "sd_fsmis",
        "--profile",
        "smoke",
        "--fold",
        "0",
        "--data-root",
        str(tiny_mri_root),
        "--set",
        "data.min_gt_pixels=20",  # the 64-pixel fixture's kidneys are smaller than the protocol's 200
    ]
    args += ["--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["traits"]["pseudolabels"] == "gt"
    assert [m["group"] for m in summary["models"]] == ["lower", "upper"]  # GT training: two models per fold
    info = summary["models"][0]["method_info"]
    assert info["weights"]["unet"] == "random init from config" and info["vae_pretraining"]["steps"] == 2
    assert set(summary["dice"]) == {"liver", "spleen", "kidney_left", "kidney_right", "mean"}
    assert (run_dir / "scheduler" / "scheduler_config.json").exists()


def test_dinov2_crop_is_the_processors_not_the_position_table_size():
    """DINOv2-base's config says image_size 518 (its position table); its processor crops 224 (16x16 patches)."""
    dinov2 = Dinov2Model(Dinov2Config(**DINO, image_size=56, patch_size=7))
    default = VisualTextualTranslator(dinov2, output_dim=12)
    cropped = VisualTextualTranslator(dinov2, output_dim=12, crop_size=28)
    images = torch.rand(2, 3, 64, 64)
    assert default.patch_features(images).shape[-2:] == (8, 8)
    assert cropped.patch_features(images).shape[-2:] == (4, 4)
    with pytest.raises(ValueError, match="multiple of its patch size"):
        VisualTextualTranslator(dinov2, output_dim=12, crop_size=30)
    paper = resolve_config(RunRequest(method="sd_fsmis", fold=0, profile="paper"))
    assert paper["model"]["init_args"]["vtct"]["crop_size"] == 224

"""ProGiDiff: zero-initialised conditioning, prompts, seeded proposals, LoRA adapters, offline loading, CLI runs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.progidiff import ProGiDiff
from fsmis_bench.methods.progidiff.adaptation import (
    AdaptationSettings,
    LoraSettings,
    adapter_parameters,
    load_adapter,
    save_adapter,
    train_adapter,
)
from fsmis_bench.methods.progidiff.components import random_backbone
from fsmis_bench.methods.progidiff.model import ProGiDiffModel, resolve_overlaps
from fsmis_bench.methods.progidiff.proposals import best_of_p_dice, dice, load_proposals, proposal_metrics

SIZE = 16  # image side; the tiny VAE halves it (8×8 latents)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are dominated by threading overhead; one thread is faster and immune to busy machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, kind: str = "vae_latent") -> ProGiDiffModel:
    torch.manual_seed(seed)
    return ProGiDiffModel(random_backbone(), hint_kind=kind, hint_widths=(8, 8)).eval()


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def denoiser_inputs(model: ProGiDiffModel, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    noisy = torch.randn(n, 4, SIZE // model.vae_factor, SIZE // model.vae_factor)
    return noisy, torch.tensor([500] * n)


@pytest.mark.parametrize("kind", ["vae_latent", "pixel_stem"])
def test_zero_initialised_encoder_leaves_the_frozen_unet_unchanged(kind):
    model = tiny_model(kind=kind)
    noisy, t = denoiser_inputs(model)
    text = model.prompt_embeddings(["liver", "liver"])
    hint = model.hint_input(images())
    assert torch.count_nonzero(model.controlnet.controlnet_cond_embedding(hint)) == 0
    with torch.no_grad():
        steered = model.predict(noisy, t, text, hint)
        plain = model.unet(noisy, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(steered, plain, rtol=0, atol=0)


def test_different_prompts_give_different_outputs():
    model = tiny_model()
    noisy, t = denoiser_inputs(model, 1)
    hint = model.hint_input(images(1))
    with torch.no_grad():
        outputs = [model.predict(noisy, t, model.prompt_embeddings([o]), hint) for o in ("liver", "spleen")]
    assert not torch.allclose(*outputs)
    left, right = model.prompt_embeddings(["kidney_left", "kidney_right"])
    assert not torch.allclose(left, right)


def test_prompt_longer_than_the_tokenizer_is_refused():
    model = tiny_model()
    with pytest.raises(ConfigError, match="longer than the tokenizer"):
        model.prompt_embeddings(["a" * 200])


def test_seeds_give_distinct_proposals_and_a_fixed_seed_reproduces_them():
    model = tiny_model()
    x = images(2)
    first = model.sample(x, ["liver", "liver"], seeds=[3, 4, 5], steps=2)
    again = model.sample(x, ["liver", "liver"], seeds=[3, 4, 5], steps=2)
    assert first.shape == (3, 2, SIZE, SIZE)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(first[a], first[b])


def lora_settings() -> AdaptationSettings:
    return AdaptationSettings(steps=3, lr=1e-2, batch_size=2, lora=LoraSettings(rank=2, alpha=2, init=False))


def trained_tiny_model() -> ProGiDiffModel:
    """A tiny model whose zero-initialised layers have moved away from zero, as after supervised training."""
    model = tiny_model()
    controlnet = model.controlnet
    zero_layers = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for layer in [*zero_layers, controlnet.controlnet_cond_embedding.conv_out]:
            for param in layer.parameters():
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(param.numel()))
    return model


def test_lora_trains_only_adapter_weights_and_the_saved_adapter_reloads(tmp_path):
    model = trained_tiny_model()
    x, masks = images(3), (torch.rand(3, SIZE, SIZE) > 0.5).float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    noisy, t = denoiser_inputs(model, 1)
    text, hint = model.prompt_embeddings(["spleen"]), model.hint_input(x[:1])
    with torch.no_grad():
        unadapted = model.predict(noisy, t, text, hint)

    log = train_adapter(model, "organ_spleen", x, masks, ["spleen"] * 3, lora_settings(), seed=0)

    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert log["trainable_parameters"] == sum(
        p.numel() for p in adapter_parameters(model.controlnet, "organ_spleen")
    )
    assert any(n.startswith("controlnet.controlnet_cond_embedding.") for n in lora)  # the custom encoder
    assert not any(n.startswith(("unet.", "vae.", "text_encoder.")) for n in lora)  # ControlNet branch only
    for name, param in model.named_parameters():
        if name in lora:
            continue
        base = name.replace(".base_layer", "")  # peft wraps a targeted layer, its weight moves down a level
        torch.testing.assert_close(param, before[base], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        adapted = model.predict(noisy, t, text, hint)
    assert not torch.allclose(adapted, unadapted)

    save_adapter(model.controlnet, "organ_spleen", tmp_path / "adapter")
    fresh = trained_tiny_model()  # same base weights, no adapter
    load_adapter(fresh.controlnet, tmp_path / "adapter", "organ_spleen")
    with torch.no_grad():
        reloaded = fresh.predict(noisy, t, text, hint)
    torch.testing.assert_close(reloaded, adapted, rtol=0, atol=0)


def test_paper_path_loads_tiny_save_pretrained_models(tmp_path):
    torch.manual_seed(7)
    saved = random_backbone()
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(saved, name).save_pretrained(tmp_path / name)
    method = ProGiDiff(
        backbone={"model_size": "pretrained", "pretrained_path": str(tmp_path)},
        hint_encoder={"widths": [8, 8]},
    )
    assert method.backbone_source == str(tmp_path)
    assert not method.run_info()["smoke_test_numbers_only"]
    for name in ("unet", "vae", "text_encoder"):
        loaded = getattr(method.model, name).state_dict()
        for key, value in getattr(saved, name).state_dict().items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert method.model.tokenizer("a segmentation mask of the liver").input_ids == (
        saved.tokenizer("a segmentation mask of the liver").input_ids
    )
    checkpoint = {"state_dict": method.state_dict()}
    method.on_save_checkpoint(checkpoint)  # frozen pretrained weights are not duplicated into checkpoints
    assert not any(
        k.startswith(("model.unet.", "model.vae.", "model.text_encoder.")) for k in checkpoint["state_dict"]
    )
    assert any(k.startswith("model.controlnet.") for k in checkpoint["state_dict"])


def test_missing_pretrained_weights_name_the_expected_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere: neither a local folder nor a hub id in the local"):
        ProGiDiff(backbone={"model_size": "pretrained", "pretrained_path": str(tmp_path / "nowhere")})


def test_multi_organ_overlaps_go_to_the_highest_intensity():
    scores = torch.tensor([[[0.5, -1.0, 0.2]], [[0.7, -0.5, -0.1]]])  # two organs, one row of three pixels
    assert resolve_overlaps(scores).tolist() == [[2, 0, 1]]
    model = tiny_model()
    labels, per_organ = model.segment_organs(images(1), ["liver", "spleen"], seeds=[0, 1], steps=1)
    assert labels.shape == (1, SIZE, SIZE) and per_organ.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(labels, resolve_overlaps(per_organ))


def test_proposal_metrics():
    ref = np.zeros((2, 4, 4), bool)
    ref[:, :2] = True
    good, bad = ref.copy(), ~ref
    metrics = proposal_metrics(np.stack([good, bad]), ref)
    assert metrics["dice_best_of_p"] == 1.0
    assert metrics["dice_proposal_mean"] == 0.5
    assert metrics["proposal_diversity"] == 1.0
    mixed = np.stack([np.stack([good[0], bad[1]]), np.stack([bad[0], good[1]])])  # each right on one slice
    metrics = proposal_metrics(mixed, ref)
    assert metrics["dice_best_of_p"] == 1.0 and metrics["dice_proposal_mean"] == 0.5
    assert proposal_metrics(np.stack([good, good]), ref)["proposal_diversity"] == 0.0


def test_best_of_p_is_the_exact_per_slice_optimum():
    rng = np.random.default_rng(0)
    proposals, ref = rng.random((3, 4, 5, 5)) < 0.5, rng.random((4, 5, 5)) < 0.3
    brute = max(
        dice(proposals[list(choice), np.arange(4)], ref) for choice in itertools.product(range(3), repeat=4)
    )
    assert best_of_p_dice(proposals, ref) == pytest.approx(brute)
    assert brute >= max(dice(p, ref) for p in proposals)


def run(tmp_path: Path, data_root: Path, *extra: str) -> dict:
    args = [
        "run",
        "--method",
        "progidiff",
        "--fold",
        "0",
        "--profile",
        "smoke",
        "--data-root",
        str(data_root),
    ]
    assert (
        main([*args, "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *extra]) == 0
    )
    run_dir = next((tmp_path / "runs").iterdir())
    return {
        "dir": run_dir,
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "cases": pd.read_csv(run_dir / "cases.csv"),
    }


SECONDARY = ("dice_best_of_p", "dice_proposal_mean", "proposal_diversity", "dice_before_adaptation")


def test_episodic_run_end_to_end(tmp_path, tiny_mri_root):
    out = run(tmp_path, tiny_mri_root)
    summary, cases = out["summary"], out["cases"]
    assert summary["setting"] == 1 and summary["traits"]["test_time_training"]
    assert {m["group"] for m in summary["models"]} == {"lower", "upper"}  # GT training: one model per group
    assert set(SECONDARY) <= set(summary["secondary_metrics"]) and set(SECONDARY) <= set(cases.columns)
    assert len(cases) == 16 and cases["dice_before_adaptation"].notna().all()
    assert (cases["dice_best_of_p"] >= cases["dice_proposal_mean"] - 1e-9).all()
    for model in summary["models"]:
        info = model["method_info"]
        assert info["adaptation_mode"] == "episodic" and info["smoke_test_numbers_only"]
        assert model["deviations"] == ["in_run_codec"]  # smoke keeps epsilon and the VAE-latent hint encoder
        assert set(info["adapters"]) == {f"organ_{o}" for o in model["organs"]}  # cached: one per organ
        for name in info["adapters"]:
            assert (out["dir"] / "adapters" / model["group"] / name / "adapter_model.safetensors").exists()
    proposals, slices = load_proposals(out["dir"] / "proposals" / "upper" / "1_liver.npz")
    assert proposals.shape[:2] == (2, len(slices)) and proposals.shape[2:] == (64, 64)


def test_cross_domain_run_end_to_end(tmp_path, tiny_mri_root, tiny_ct_root):
    out = run(
        tmp_path, tiny_mri_root, "--source-dataset", "synthetic_ct", "--source-data-root", str(tiny_ct_root)
    )
    summary = out["summary"]
    assert summary["setting"] == "cross" and summary["source_dataset"] == "synthetic_ct"
    assert "synthetic_ct-to-synthetic_mri_cross" in out["dir"].name
    (model,) = summary["models"]  # one model for the four organs
    assert model["protocol"]["source_dataset"] == "synthetic_ct"
    assert model["training_slices_total"] == 30 * 16  # every source scan
    info = model["method_info"]
    assert info["adaptation_mode"] == "support_scan" and list(info["adapters"]) == ["support_scan"]
    assert info["adapters"]["support_scan"]["examples"] > 4  # all labelled organ slices of the support scan
    assert set(summary["secondary_metrics"]["dice_before_adaptation"]) == set(summary["dice"])
    assert len(out["cases"]) == 16


def test_cross_domain_refuses_a_setting_or_the_same_dataset(tmp_path, tiny_mri_root, capsys):
    base = ["run", "--method", "progidiff", "--fold", "0", "--output", str(tmp_path / "runs")]
    assert main([*base, "--source-dataset", "synthetic_mri"]) == 2
    assert main([*base, "--source-dataset", "synthetic_ct", "--setting", "2"]) == 2
    err = capsys.readouterr().err
    assert "must differ from --dataset" in err and "has no setting" in err

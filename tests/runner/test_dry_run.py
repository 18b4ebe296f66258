"""``fsmis-bench run --dry-run``: paper-scale sizes from the built-in architectures, counts equal to what the
weights folders load, nothing read but config files, and the memory-estimate formula."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsmis_bench.cli import main
from fsmis_bench.config import instantiate
from fsmis_bench.runner.dry_run import count_components, dry_run, estimate_memory, saved_activation_bytes
from fsmis_bench.runner.experiment import RunRequest, resolve_config
from fsmis_bench.runner.paper_scale import plan_for

SD15_UNET = 859_520_964  # UNet2DConditionModel of SD-1.5
#: SD-FSMIS's surgery: conv_in reads 8 channels instead of 4 (+320·4·3·3) and conv_in_ref is a copy of it.
WIDENING = 320 * 4 * 3 * 3 + (320 * 8 * 3 * 3 + 320)
RESNET101_TRUNK = 42_500_160  # torchvision resnet101 without fc (conv1 .. layer4, batch norms)


def report(method: str, profile: str = "paper", overrides: list[str] | None = None) -> dict:
    return dry_run(RunRequest(method=method, fold=0, profile=profile, overrides=overrides or []))


def test_paper_profiles_build_at_paper_scale_from_the_builtin_architectures(capsys):
    assert (
        main(["run", "--method", "sd_fsmis", "--fold", "0", "--profile", "paper", "--dry-run", "--json"]) == 0
    )
    sd = json.loads(capsys.readouterr().out)
    unet = sd["components"]["unet"]
    assert unet["parameters"] == SD15_UNET + WIDENING and abs(unet["parameters"] - 859.5e6) < 0.1e6
    assert unet["trainable"] == unet["parameters"] and unet["dtype"] == "float32"
    assert unet["architecture"].startswith("built-in unet.json") and unet["found"] is False
    assert sd["components"]["vae"]["trainable"] == sd["components"]["dinov2"]["trainable"] == 0
    assert set(sd["components"]) == {"unet", "vae", "dinov2", "vtct"}
    breakdown = sd["memory_breakdown_gb"]
    assert sd["memory_estimate_gb"] == pytest.approx(sum(breakdown.values()), abs=0.02)
    assert breakdown["optimizer"] == pytest.approx(2 * breakdown["gradients"], abs=0.002)  # AdamW, fp32
    assert 14 < sd["memory_estimate_gb"] < 20  # the profile's header says "about 18 GB" on a GPU

    pg = report("progidiff")["components"]
    assert 355e6 < pg["controlnet"]["parameters"] < 365e6 and pg["controlnet"]["frozen"] == 0
    assert pg["unet"]["parameters"] == SD15_UNET and pg["unet"]["trainable"] == 0
    assert pg["text_encoder"]["parameters"] == 123_060_480  # CLIP ViT-L/14 text tower, 49,408 tokens

    encoder = report("dpl")["components"]["encoder"]
    assert encoder["parameters"] == RESNET101_TRUNK + 2048 * 256  # + the 1x1 reduction to 256 channels
    assert 42e6 <= encoder["parameters"] <= 44e6


def test_json_needs_dry_run_and_the_text_report_says_estimate(capsys):
    assert main(["run", "--method", "panet", "--fold", "0", "--json"]) == 2
    assert "--json goes with --dry-run" in capsys.readouterr().err
    assert main(["run", "--method", "panet", "--fold", "0", "--profile", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "encoder" in out and "MISSING" in out


def tiny_sd_folder(root: Path) -> tuple[Path, Path]:
    """vae/ and unet/ of the SD-FSMIS smoke configs, and a DINOv2 folder, written by save_pretrained."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Config, Dinov2Model

    args = resolve_config(RunRequest(method="sd_fsmis", fold=0, profile="smoke"))["model"]["init_args"]
    AutoencoderKL.from_config(args["vae_config"]).save_pretrained(root / "sd" / "vae")
    UNet2DConditionModel.from_config(args["unet_config"]).save_pretrained(root / "sd" / "unet")
    Dinov2Model(Dinov2Config(**args["dinov2_config"])).save_pretrained(root / "dinov2")
    return root / "sd", root / "dinov2"


def tiny_progidiff_folder(root: Path) -> Path:
    from fsmis_bench.methods.progidiff.components import random_backbone

    backbone = random_backbone()
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(backbone, name).save_pretrained(root / name)
    return root


def loaded_counts(method: str, overrides: list[str]) -> dict[str, int]:
    """Parameters per component of the model a real run builds (weights read from the folders)."""
    config = resolve_config(RunRequest(method=method, fold=0, profile="smoke", overrides=overrides))
    model = instantiate(config["model"])
    components = count_components(model, plan_for(method, config).components)
    return {name: c["parameters"] for name, c in components.items()}


def test_counts_equal_from_pretrained_on_folders_written_from_the_same_configs(tmp_path):
    sd, dinov2 = tiny_sd_folder(tmp_path)
    sets = [f"model.init_args.pretrained_path={sd}", f"model.init_args.dinov2_path={dinov2}"]
    sets.append("model.init_args.allow_random_init=false")
    dry = report("sd_fsmis", "smoke", sets)["components"]
    assert {n: c["parameters"] for n, c in dry.items()} == loaded_counts("sd_fsmis", sets)
    assert dry["unet"]["architecture"] == str(sd / "unet" / "config.json") and dry["unet"]["found"] is True

    folder = tiny_progidiff_folder(tmp_path / "progidiff")
    sets = [f'model.init_args.backbone={{"model_size": "pretrained", "pretrained_path": "{folder}"}}']
    dry = report("progidiff", "smoke", sets)["components"]
    assert {n: c["parameters"] for n, c in dry.items()} == loaded_counts("progidiff", sets)
    assert all(dry[n]["found"] for n in ("unet", "vae", "text_encoder"))


def test_dry_run_reads_config_files_only(tmp_path):
    """Weight files that are not weights: the dry run still sizes the model (it never opens them)."""
    sd, dinov2 = tiny_sd_folder(tmp_path)
    for weights in [*sd.rglob("*.safetensors"), *dinov2.rglob("*.safetensors")]:
        weights.write_bytes(b"not a safetensors file")
    sets = [f"model.init_args.pretrained_path={sd}", f"model.init_args.dinov2_path={dinov2}"]
    components = report("sd_fsmis", "smoke", sets)["components"]
    assert components["unet"]["found"] and components["unet"]["parameters"] > 0
    shutil.rmtree(sd / "vae")
    assert report("sd_fsmis", "smoke", sets)["components"]["vae"]["found"] is False


def test_memory_formula_per_precision_and_optimizer():
    components = {"a": {"parameters": 15, "trainable": 10}, "b": {"parameters": 5, "trainable": 0}}
    adamw = estimate_memory(components, {"name": "adamw"}, "32-true", 100)
    assert adamw == {
        "weights": 80,
        "gradients": 40,
        "optimizer": 80,
        "autocast_copies": 0,
        "activations": 100,
    }
    mixed = estimate_memory(components, {"name": "adamw"}, "bf16-mixed", 100)
    assert (mixed["weights"], mixed["autocast_copies"], mixed["activations"]) == (80, 20, 50)
    half = estimate_memory(components, {"name": "sgd", "momentum": 0.9}, "bf16-true", 100)
    assert (half["weights"], half["gradients"], half["optimizer"]) == (40, 20, 20)
    assert estimate_memory(components, {"name": "sgd", "momentum": 0.0}, "32-true", None)["optimizer"] == 0


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)[:, None]  # [B, 1 head, L, 8]
        return F.scaled_dot_product_attention(q, q, q)


def test_activations_count_saved_tensors_once_and_attention_as_fused_kernels_keep_it():
    """[B, L, 8] input: the Linear keeps its input, attention keeps q (= k = v, one storage), its output and
    one log-sum-exp per row; the L x L attention matrix of the math path is not counted."""
    model = Attention().to("meta")
    batch, tokens = 2, 64
    x = torch.zeros(batch, tokens, 8, device="meta")
    expected = 4 * (batch * tokens * 8 * 3 + batch * tokens)
    assert saved_activation_bytes(model, lambda: model(x)) == expected
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


@pytest.mark.slow
def test_full_size_counts_equal_from_pretrained_on_folders_written_from_the_builtin_configs(tmp_path):
    """GBs written: SD-1.5 UNet / VAE / CLIP text and DINOv2-base from the built-in configs, and a ResNet-101."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    from fsmis_bench.methods.progidiff.components import local_tokenizer
    from fsmis_bench.methods.prototype.resnet import DilatedResNet
    from fsmis_bench.methods.sd_architectures import architecture

    sd = tmp_path / "sd"
    UNet2DConditionModel.from_config(architecture("unet")).save_pretrained(sd / "unet")
    AutoencoderKL.from_config(architecture("vae")).save_pretrained(sd / "vae")
    CLIPTextModel(CLIPTextConfig(**architecture("text_encoder"))).save_pretrained(sd / "text_encoder")
    local_tokenizer().save_pretrained(sd / "tokenizer")
    Dinov2Model(Dinov2Config(**architecture("dinov2"))).save_pretrained(tmp_path / "dinov2")
    builtin = report("sd_fsmis")["components"]
    sets = [f"model.init_args.pretrained_path={sd}", f"model.init_args.dinov2_path={tmp_path / 'dinov2'}"]
    sets.append("model.init_args.allow_random_init=false")
    dry = report("sd_fsmis", "paper", sets)["components"]
    assert {n: c["parameters"] for n, c in dry.items()} == {n: c["parameters"] for n, c in builtin.items()}
    config = resolve_config(RunRequest(method="sd_fsmis", fold=0, profile="paper", overrides=sets))
    loaded = count_components(instantiate(config["model"]), plan_for("sd_fsmis", config).components)
    assert {n: c["parameters"] for n, c in loaded.items()} == {n: c["parameters"] for n, c in dry.items()}

    from fsmis_bench.methods.progidiff.components import pretrained_backbone

    backbone = pretrained_backbone(str(sd))
    pg = report("progidiff")["components"]
    for name in ("unet", "vae", "text_encoder"):
        assert sum(p.numel() for p in getattr(backbone, name).parameters()) == pg[name]["parameters"], name

    save_file(DilatedResNet().state_dict(), tmp_path / "resnet101.safetensors")
    sets = [f"model.init_args.encoder.pretrained_path={tmp_path / 'resnet101.safetensors'}"]
    config = resolve_config(RunRequest(method="dpl", fold=0, profile="paper", overrides=sets))
    loaded = count_components(instantiate(config["model"]), plan_for("dpl", config).components)
    assert loaded["encoder"]["parameters"] == report("dpl")["components"]["encoder"]["parameters"]

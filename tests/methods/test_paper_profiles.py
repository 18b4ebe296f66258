"""The ``paper`` profiles with real folder layouts: tiny checkpoints written where a user puts the real weights
(a torchvision DeepLabv3-ResNet101 state dict; a Stable Diffusion 1.5 folder of ``save_pretrained``
components), run in-process through ``fsmis-bench run --profile paper`` with only the weights path and the sizes
that must shrink overridden: one training step and one test batch per model. Bad weights end in one line and
exit status 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, Dinov2Config, Dinov2Model

from fsmis_bench.cli import main
from fsmis_bench.config import instantiate
from fsmis_bench.methods.base import FewShotSegmenter
from fsmis_bench.methods.prototype.resnet import DilatedResNet
from fsmis_bench.methods.tiny_diffusers import TINY_UNET, TINY_VAE
from fsmis_bench.runner import fitting

#: SD 1.5's model_index.json, as save_pretrained of its StableDiffusionPipeline writes it.
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
#: A small byte-pair vocabulary in SD 1.5's tokenizer/ files (vocab.json, merges.txt, tokenizer_config.json).
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MERGES = ["l i", "v e", "e r</w>", "k i", "s p"]
TINY_DINO = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One slice cache for the module: the phantoms' slices and superpixels are computed once."""
    return tmp_path_factory.mktemp("slice_cache")


# ---------------------------------------------------------------------- tiny checkpoints in real layouts
def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """SD 1.5's tokenizer/ files for a tiny byte-pair vocabulary; returns the tokenizer they load as."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*LETTERS, *(c + "</w>" for c in LETTERS), *(m.replace(" ", "") for m in MERGES)]:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}))
    config = {**special, "pad_token": "<|endoftext|>", "model_max_length": 77, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "CLIPTokenizer"}))
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def write_sd15(root: Path, text_width: int | None = None, skip: tuple[str, ...] = ()) -> Path:
    """A tiny Stable Diffusion 1.5 folder: model_index.json, scheduler/, text_encoder/, tokenizer/, unet/,
    vae/ (each component by save_pretrained, safetensors); ``text_width`` other than the UNet's
    cross_attention_dim makes a text encoder of another model."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    parts = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} - set(skip)
    if "unet" in parts:
        UNet2DConditionModel(**TINY_UNET).save_pretrained(root / "unet")
    if "vae" in parts:
        AutoencoderKL(**TINY_VAE).save_pretrained(root / "vae")
    if "scheduler" in parts:  # SD 1.5's scheduler_config.json (the methods build their own schedulers)
        PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            steps_offset=1,
        ).save_pretrained(root / "scheduler")
    tokenizer = write_tokenizer(root / "tokenizer") if "tokenizer" in parts else None
    if "text_encoder" in parts:
        text = CLIPTextConfig(
            hidden_size=text_width or TINY_UNET["cross_attention_dim"],
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            vocab_size=64,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        assert tokenizer is None or len(tokenizer) <= text.vocab_size
        CLIPTextModel(text).save_pretrained(root / "text_encoder")
    return root


def write_dinov2(folder: Path) -> Path:
    Dinov2Model(Dinov2Config(**TINY_DINO, image_size=14, patch_size=7)).save_pretrained(folder)
    return folder


def write_deeplabv3_resnet101(path: Path) -> Path:
    """Random weights under torchvision's deeplabv3_resnet101 key names (``backbone.*`` + heads to ignore)."""
    state = {f"backbone.{k}": v for k, v in DilatedResNet().state_dict().items()}
    state["classifier.4.weight"] = torch.zeros(21, 256, 1, 1)
    state["aux_classifier.4.weight"] = torch.zeros(21, 256, 1, 1)
    torch.save(state, path)
    return path


# ---------------------------------------------------------------------- the paper profile, shrunk
def run_paper(tmp_path: Path, data_root: Path, cache: Path, method: str, *sets: str) -> int:
    """``fsmis-bench run --profile paper --set ...`` in-process: one training step and one test batch (one
    query scan and organ) per model."""
    args = ["run", "--method", method, "--fold", "0", "--profile", "paper", "--data-root", str(data_root)]
    args += ["--output", str(tmp_path / "runs"), "--cache-dir", str(cache)]
    sets = ("trainer.max_steps=1", "trainer.limit_test_batches=1", *sets)
    return main([*args, *(item for value in sets for item in ("--set", value))])


def run_and_check_loaded(
    tmp_path: Path,
    data_root: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    sets: list[str],
    check_loaded: Callable[[FewShotSegmenter], None],
) -> dict:
    """The summary of a successful ``run_paper``; ``check_loaded`` sees every model the run builds, before it
    trains."""

    def instantiate_and_check(spec: dict) -> FewShotSegmenter:
        model = instantiate(spec)
        check_loaded(model)
        built.append(model)
        return model

    built: list[FewShotSegmenter] = []
    monkeypatch.setattr(fitting, "instantiate", instantiate_and_check)
    assert run_paper(tmp_path, data_root, cache, method, *sets) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["profile"] == "paper" and len(built) == len(summary["models"])
    assert [m["train_steps"] for m in summary["models"]] == [1] * len(built)
    assert len(pd.read_csv(run_dir / "cases.csv")) == len(built)  # one test batch: one (scan, organ) case
    return summary


def test_dpl_paper_profile_trains_and_tests_with_a_deeplabv3_resnet101_file(
    tmp_path, tiny_mri_root, cache, monkeypatch
):
    weights = write_deeplabv3_resnet101(tmp_path / "deeplabv3_resnet101_coco-586e9e4e.pth")
    saved = torch.load(weights, weights_only=True)

    def check_loaded(model):
        for name, value in model.encoder.backbone.state_dict().items():
            assert torch.equal(value, saved[f"backbone.{name}"]), name

    sets = [f"model.init_args.encoder.pretrained_path={weights}", "data.image_size=32"]
    summary = run_and_check_loaded(tmp_path, tiny_mri_root, cache, monkeypatch, "dpl", sets, check_loaded)
    assert [m["method_info"] for m in summary["models"]] == [{"encoder_weights": f"pretrained: {weights}"}]


def test_sd_fsmis_paper_profile_trains_and_tests_with_an_sd15_folder(
    tmp_path, tiny_mri_root, cache, monkeypatch
):
    sd, dino = write_sd15(tmp_path / "stable-diffusion-v1-5"), write_dinov2(tmp_path / "dinov2-base")
    vae, unet = (load_file(sd / part / "diffusion_pytorch_model.safetensors") for part in ("vae", "unet"))

    def check_loaded(model):
        for name, value in model.net.vae.state_dict().items():
            assert torch.equal(value, vae[name]), name
        weight = model.net.unet.mid_block.resnets[0].conv1.weight
        assert torch.equal(weight, unet["mid_block.resnets.0.conv1.weight"])

    sets = [
        f"model.init_args.pretrained_path={sd}",
        f"model.init_args.dinov2_path={dino}",
        "data.image_size=16",
        "data.min_gt_pixels=20",  # the 64-pixel phantoms' kidneys are smaller than the protocol's 200
    ]
    summary = run_and_check_loaded(
        tmp_path, tiny_mri_root, cache, monkeypatch, "sd_fsmis", sets, check_loaded
    )
    for model in summary["models"]:
        assert all(v.startswith("pretrained") for v in model["method_info"]["weights"].values()), model


def test_progidiff_paper_profile_trains_and_tests_with_an_sd15_folder(
    tmp_path, tiny_mri_root, cache, monkeypatch
):
    sd = write_sd15(tmp_path / "stable-diffusion-v1-5")
    files = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors"}
    saved = {
        part: load_file(sd / part / file)
        for part, file in {**files, "text_encoder": "model.safetensors"}.items()
    }

    def check_loaded(model):
        for part, state in saved.items():
            for name, value in getattr(model.model, part).state_dict().items():
                assert torch.equal(value, state[name]), (part, name)
        assert model.model.tokenizer.get_vocab() == json.loads((sd / "tokenizer" / "vocab.json").read_text())

    sets = [
        f"model.init_args.backbone.pretrained_path={sd}",
        "model.init_args.proposals.steps=2",
        "model.init_args.adaptation.steps=1",
        "model.init_args.hint_encoder.widths=[8, 8]",
        "data.image_size=16",
        "data.batch_size=1",
        "data.min_gt_pixels=20",
    ]
    summary = run_and_check_loaded(
        tmp_path, tiny_mri_root, cache, monkeypatch, "progidiff", sets, check_loaded
    )
    for model in summary["models"]:
        assert (
            model["method_info"]["backbone"] == str(sd)
            and not model["method_info"]["smoke_test_numbers_only"]
        )


# ---------------------------------------------------------------------- bad weights: one line, exit status 2
def flat_unet_folder(tmp_path: Path) -> Path:
    """The unet/ folder itself given as the Stable Diffusion folder."""
    return write_sd15(tmp_path / "sd") / "unet"


def swapped_folder(tmp_path: Path) -> Path:
    sd = write_sd15(tmp_path / "sd")
    (sd / "vae").rename(sd / "was_vae")
    (sd / "unet").rename(sd / "vae")
    (sd / "was_vae").rename(sd / "unet")
    return sd


def pickled_unet_folder(tmp_path: Path) -> Path:
    sd = write_sd15(tmp_path / "sd", skip=("unet",))
    UNet2DConditionModel(**TINY_UNET).save_pretrained(sd / "unet", safe_serialization=False)
    return sd


def eight_channel_vae_folder(tmp_path: Path) -> Path:
    sd = write_sd15(tmp_path / "sd")
    AutoencoderKL(**{**TINY_VAE, "latent_channels": 8}).save_pretrained(sd / "vae")
    return sd


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "deeplabv3_resnet101_coco-586e9e4e.pth"
    path.write_text("<html>404: the download failed</html>\n")
    return path


def truncated_file(tmp_path: Path) -> Path:
    path = tmp_path / "deeplabv3_resnet101_coco-586e9e4e.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    path.write_bytes(path.read_bytes()[:200])
    return path


BAD_WEIGHTS = {
    "sd_fsmis flat": ("sd_fsmis", "pretrained_path", flat_unet_folder, "no vae/ subfolder"),
    "sd_fsmis swapped": ("sd_fsmis", "pretrained_path", swapped_folder, "are the subfolders swapped?"),
    "sd_fsmis latent channels": (
        "sd_fsmis",
        "pretrained_path",
        eight_channel_vae_folder,
        "vae/ latent_channels 8 != unet/ in_channels 4",
    ),
    "progidiff no tokenizer": (
        "progidiff",
        "backbone.pretrained_path",
        lambda tmp: write_sd15(tmp / "sd", skip=("tokenizer",)),
        "no tokenizer/ subfolder",
    ),
    "progidiff text width": (
        "progidiff",
        "backbone.pretrained_path",
        lambda tmp: write_sd15(tmp / "sd", text_width=16),
        "text_encoder/ hidden_size 16 != unet/ cross_attention_dim 8",
    ),
    "progidiff pickled unet": (
        "progidiff",
        "backbone.pretrained_path",
        pickled_unet_folder,
        "no diffusion_pytorch_model.safetensors",
    ),
    "dpl text file": ("dpl", "encoder.pretrained_path", text_file, "cannot read the backbone weights"),
    "dpl truncated": ("dpl", "encoder.pretrained_path", truncated_file, "cannot read the backbone weights"),
}


def assert_one_line_error(tmp_path: Path, capsys, status: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("fsmis-bench: error: ") and all(f in err[0] for f in fragments), err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_bad_weights_end_in_one_line_and_status_2(tmp_path, tiny_mri_root, cache, capsys, case):
    method, option, build, message = BAD_WEIGHTS[case]
    weights = build(tmp_path)
    sets = [f"model.init_args.{option}={weights}"]
    if method == "sd_fsmis":
        sets.append(f"model.init_args.dinov2_path={write_dinov2(tmp_path / 'dinov2-base')}")
    capsys.readouterr()  # save_pretrained's progress bars
    status = run_paper(tmp_path, tiny_mri_root, cache, method, *sets)
    assert_one_line_error(tmp_path, capsys, status, str(weights), message)


@pytest.mark.parametrize("method", ["dpl", "panet", "alpnet"])
def test_resnet_paper_profiles_refuse_to_start_without_weights(
    tmp_path, tiny_mri_root, cache, capsys, method
):
    status = run_paper(tmp_path, tiny_mri_root, cache, method)
    assert_one_line_error(
        tmp_path, capsys, status, "model.init_args.encoder.pretrained_path is not set", "deeplabv3_resnet101"
    )


#: Smoke-profile settings that let a method train from random weights, per method.
RANDOM_ALLOWED = {
    "sd_fsmis": ["model.init_args.allow_random_init=true"],
    "progidiff": [
        "model.init_args.backbone.model_size=pretrained",
        "model.init_args.backbone.allow_random_init=true",
    ],
}


@pytest.mark.parametrize(
    ("method", "option"),
    [
        ("sd_fsmis", "model.init_args.pretrained_path"),
        ("sd_fsmis", "model.init_args.dinov2_path"),
        ("progidiff", "model.init_args.backbone.pretrained_path"),
    ],
)
def test_a_named_path_that_does_not_load_stops_even_with_allow_random_init(tmp_path, capsys, method, option):
    """allow_random_init covers a component with no path; a mistyped folder must not become random weights."""
    missing = tmp_path / "no-such-folder"
    sets = [*RANDOM_ALLOWED[method], f"{option}={missing}"]
    args = [
        "run",
        "--method",
        method,
        "--fold",
        "0",
        "--profile",
        "smoke",
        "--output",
        str(tmp_path / "runs"),
    ]
    status = main([*args, "--cache-dir", str(tmp_path / "cache"), *(a for s in sets for a in ("--set", s))])
    assert_one_line_error(tmp_path, capsys, status, str(missing))

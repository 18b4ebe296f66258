"""The frozen text-to-image backbone of ProGiDiff: UNet, VAE, CLIP text encoder and tokenizer
(docs/methods/README.md §2).

Two sources: a Stable Diffusion folder or cached hub id (``pretrained_path``, checked and loaded subfolder by
subfolder with ``local_files_only=True`` from safetensors, never from the network), or small randomly
initialised instances of the SAME diffusers/transformers classes (``model_size: tiny``) for tests and CPU runs,
with a character-level CLIP tokenizer written from local vocab/merges files.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.sd_layout import check_component, local_folder, size_mismatches
from fsmis_bench.methods.tiny_diffusers import TINY_UNET, TINY_VAE

log = logging.getLogger(__name__)

TINY_TEXT: dict[str, Any] = {
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
}
#: Characters of the local tokenizer's vocabulary (prompts are lower-case words).
TOKEN_CHARACTERS = "abcdefghijklmnopqrstuvwxyz"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
OPTION = "model.init_args.backbone.pretrained_path"


@dataclass
class Backbone:
    """The frozen components and where they came from (recorded with the results)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    source: str  # "random tiny configuration" or the pretrained path / hub id


def local_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A character-level CLIPTokenizer built from a vocab.json / merges.txt written locally (no hub).

    The vocabulary holds the start/end tokens and every letter with and without the end-of-word suffix; the
    merges file holds only its version header, so every word is spelled out letter by letter.
    """
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in TOKEN_CHARACTERS:
            vocab[char + suffix] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)


def random_backbone(
    unet: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    text_encoder: dict[str, Any] | None = None,
    max_prompt_tokens: int = 77,
) -> Backbone:
    """Randomly initialised components; sizes that must agree are derived, never hard-coded.

    The text encoder's width is the UNet's ``cross_attention_dim``; its vocabulary, positions and special
    token ids come from the tokenizer.
    """
    unet_args = {**TINY_UNET, **(unet or {})}
    vae_args = {**TINY_VAE, **(vae or {})}
    tokenizer = local_tokenizer(max_prompt_tokens)
    text_args = {
        **TINY_TEXT,
        **(text_encoder or {}),
        "hidden_size": unet_args["cross_attention_dim"],
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return Backbone(
        unet=UNet2DConditionModel(**block_tuples(unet_args)),
        vae=AutoencoderKL(**block_tuples(vae_args)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_args)),
        tokenizer=tokenizer,
        source="random tiny configuration",
    )


def pretrained_backbone(path: str) -> Backbone:
    """Stable Diffusion components from a local ``save_pretrained`` folder or an already cached hub id.

    Each subfolder is checked for its class and files, and the configs for sizes that must agree, before
    anything is loaded (``sd_layout``); weights are read from safetensors only, never unpickled.
    """
    try:
        root = local_folder(path)
        configs = {subfolder: check_component(root, subfolder) for subfolder in SUBFOLDERS}
    except ConfigError as exc:
        layout = ", ".join(f"{s}/" for s in SUBFOLDERS)
        raise ConfigError(
            f"{OPTION}: {exc} (expected a Stable Diffusion save_pretrained folder with {layout}, or a hub id "
            "already in the local cache)"
        ) from exc
    mismatches = size_mismatches(configs["unet"], configs["vae"], configs["text_encoder"])
    if mismatches:
        raise ConfigError(f"{OPTION} {path}: components of different models ({'; '.join(mismatches)})")
    options: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    try:
        return Backbone(
            unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **options),
            vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **options),
            text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **options),
            tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
            source=str(path),
        )
    except (OSError, ValueError) as exc:
        one_line = " ".join(str(exc).split())  # library messages span lines; the CLI prints one
        raise ConfigError(f"{OPTION} {path}: cannot load the diffusion backbone ({one_line})") from exc


def build_backbone(
    model_size: str = "tiny",
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
    **random_args: Any,
) -> Backbone:
    """``model_size: tiny`` -> random components; ``pretrained`` -> ``pretrained_path`` (offline only)."""
    if model_size == "tiny":
        return random_backbone(**random_args)
    if model_size != "pretrained":
        raise ConfigError(f"backbone.model_size '{model_size}': expected tiny or pretrained")
    if pretrained_path is not None:  # a named path must load: never silently random weights
        return pretrained_backbone(pretrained_path)
    if not allow_random_init:
        raise ConfigError("backbone.pretrained_path is required with model_size: pretrained")
    log.warning("ProGiDiff: NO PRETRAINED WEIGHTS, random initialisation (allow_random_init: true)")
    return random_backbone(**random_args)


def block_tuples(args: dict[str, Any]) -> dict[str, Any]:
    """YAML gives lists; diffusers configs expect tuples for the block specifications."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}

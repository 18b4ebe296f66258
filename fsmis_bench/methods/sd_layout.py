"""The Stable Diffusion 1.5 folder layout that SD-FSMIS and ProGiDiff load offline, checked before loading.

diffusers falls back to the top folder when a ``subfolder`` is missing and builds a randomly initialised model
from a foreign config (a VAE's config read as a UNet's); transformers builds an empty tokenizer from a folder
without vocabulary files. Either way a wrong folder fails much later with an unrelated message, or never. So
every component's subfolder is checked first for the class its ``config.json`` names (``_class_name`` of
diffusers, ``model_type`` of transformers, ``tokenizer_class``) and its weight or vocabulary files, and the
components' configs for the sizes that must agree; each problem is a ConfigError naming the subfolder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from fsmis_bench.errors import ConfigError

#: subfolder -> (file, key, accepted values): what a save_pretrained folder of that component records.
COMPONENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "unet": ("config.json", "_class_name", ("UNet2DConditionModel",)),
    "vae": ("config.json", "_class_name", ("AutoencoderKL",)),
    "text_encoder": ("config.json", "model_type", ("clip_text_model",)),
    "tokenizer": ("tokenizer_config.json", "tokenizer_class", ("CLIPTokenizer", "CLIPTokenizerFast")),
}
#: The files one of which each subfolder needs: safetensors weights (whole or sharded; pickled .bin weights
#: are never loaded), SD 1.5's vocab.json + merges.txt or the tokenizer.json that transformers 5 saves.
NEEDED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("diffusion_pytorch_model.safetensors",), ("diffusion_pytorch_model.safetensors.index.json",)),
    "vae": (("diffusion_pytorch_model.safetensors",), ("diffusion_pytorch_model.safetensors.index.json",)),
    "text_encoder": (("model.safetensors",), ("model.safetensors.index.json",)),
    "tokenizer": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
}


def local_folder(path: str) -> Path:
    """``path`` if it is a local folder, else the snapshot of hub id ``path`` in the local cache (offline)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    try:
        return Path(snapshot_download(path, local_files_only=True))
    except (OSError, ValueError) as exc:  # not cached, or not a valid hub id
        raise ConfigError(
            f"{path}: neither a local folder nor a hub id in the local Hugging Face cache ({type(exc).__name__})"
        ) from exc


def check_component(root: Path, subfolder: str) -> dict[str, Any]:
    """The saved config of ``root/subfolder`` after checking that it holds that component (``COMPONENTS``) and
    the files to load it from (``NEEDED_FILES``); a ConfigError naming the subfolder otherwise."""
    file, key, accepted = COMPONENTS[subfolder]
    folder = root / subfolder
    if not folder.is_dir():
        found = _recorded_class(_read_json(root / "config.json"))
        flat = (
            f", and {root}/config.json describes {found}: give the folder above the component folders"
            if found
            else ""
        )
        raise ConfigError(f"{root}: no {subfolder}/ subfolder{flat}")
    config = _read_json(folder / file)
    if config is None:
        raise ConfigError(f"{folder}: no readable {file} (not a save_pretrained {subfolder} folder)")
    found = _recorded_class(config, key)
    if found not in accepted:
        found = found or _recorded_class(config)
        owner = next((s for s, (_, _, names) in COMPONENTS.items() if found in names), None)
        hint = f": that is a {owner}/ component, are the subfolders swapped?" if owner else ""
        said = f"describes {found}" if found else f"names no {key}"
        raise ConfigError(f"{folder / file} {said}, expected {key} {accepted[0]}{hint}")
    needed = NEEDED_FILES[subfolder]
    if not any(all((folder / f).is_file() for f in files) for files in needed):
        present = ", ".join(sorted(p.name for p in folder.iterdir() if p.name != file)) or "nothing else"
        wanted = " or ".join(" + ".join(files) for files in needed)
        raise ConfigError(f"{folder}: no {wanted} (found {present})")
    return config


def size_mismatches(
    unet: Mapping[str, Any], vae: Mapping[str, Any], text_encoder: Mapping[str, Any] | None = None
) -> list[str]:
    """Sizes in the components' configs that disagree (parts of different models); empty when consistent."""
    pairs = [("vae", vae, "latent_channels", "in_channels")]
    if text_encoder is not None:
        pairs.append(("text_encoder", text_encoder, "hidden_size", "cross_attention_dim"))
    return [
        f"{name}/ {key} {config[key]} != unet/ {unet_key} {unet[unet_key]}"
        for name, config, key, unet_key in pairs
        if key in config and unet_key in unet and config[key] != unet[unet_key]
    ]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _recorded_class(config: dict[str, Any] | None, key: str | None = None) -> str | None:
    """The class a config records (``key``, else whichever of the known keys it has)."""
    keys = [key] if key else [k for _, k, _ in COMPONENTS.values()]
    return next((str(config[k]) for k in keys if k in config), None) if config else None

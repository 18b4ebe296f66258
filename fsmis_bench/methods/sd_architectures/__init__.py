"""The full-size architectures of the pretrained components the diffusion methods load: numbers, not weights.

Stable Diffusion 1.5 (``unet/``, ``vae/``, ``text_encoder/`` of its diffusers folder) and DINOv2-base, one JSON
file each holding the architecture keys of the published ``config.json`` (file metadata such as
``_diffusers_version`` left out). ``fsmis-bench run --dry-run`` sizes a paper profile with them when its
weights folder is absent, and ``make gpu-check`` builds full-size randomly initialised models from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fsmis_bench.errors import ConfigError

FOLDER = Path(__file__).parent
#: Architecture name -> the class that reads it (``from_config`` or ``Config(**...)``).
CLASSES: dict[str, str] = {
    "unet": "diffusers.UNet2DConditionModel",
    "vae": "diffusers.AutoencoderKL",
    "text_encoder": "transformers.CLIPTextModel",
    "dinov2": "transformers.Dinov2Model",
}


def path_of(name: str) -> Path:
    """The JSON file of one architecture."""
    if name not in CLASSES:
        raise ConfigError(f"unknown architecture '{name}' (known: {', '.join(CLASSES)})")
    return FOLDER / f"{name}.json"


def architecture(name: str) -> dict[str, Any]:
    """A fresh copy of one architecture's config (lists stay lists: the YAML/JSON form every profile uses)."""
    return json.loads(path_of(name).read_text(encoding="utf-8"))

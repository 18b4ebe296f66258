"""Few-shot LoRA adaptation with peft: adapters on the ControlNet branch and the custom hint encoder only.

Every other weight stays frozen; an adapter is trained with the diffusion loss on a handful of labelled slices
(track A: the target's support scan; track B: the EP1 support slices of the test organ) and saved and loaded
on its own (``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import Tensor

from fsmis_bench.batch import as_three_channels
from fsmis_bench.methods.progidiff.model import ProGiDiffModel
from fsmis_bench.protocol.augment import AugmentConfig, augment_pair

#: docs/methods/progidiff.md §3 target modules, plus the three convolutions of the custom hint encoder.
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "conv1",
    "conv2",
    "controlnet_cond_embedding.conv1",
    "controlnet_cond_embedding.conv2",
    "controlnet_cond_embedding.conv_out",
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    init: str | bool = (
        "gaussian"  # peft init_lora_weights; False makes a fresh adapter change outputs (tests)
    )
    target_modules: tuple[str, ...] = LORA_TARGETS

    def config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights=self.init,
            target_modules=list(self.target_modules),
        )


@dataclass(frozen=True)
class AdaptationSettings:
    """``mode``: auto (support_scan in the cross-domain track, else episodic), episodic, support_scan, none."""

    mode: str = "auto"
    steps: int = 1000
    lr: float = 1e-4
    batch_size: int = 8
    augment: bool = True
    report_unadapted: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)


def add_adapter(controlnet: ControlNetModel, name: str, config: LoraConfig) -> None:
    """Inject a LoRA adapter and make it the active one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        controlnet.add_adapter(config, adapter_name=name)
    controlnet.set_adapter(name)


def adapter_parameters(controlnet: ControlNetModel, name: str) -> list[torch.nn.Parameter]:
    return [p for n, p in controlnet.named_parameters() if "lora_" in n and f".{name}." in n]


def train_adapter(
    model: ProGiDiffModel,
    name: str,
    images: Tensor,
    masks: Tensor,
    organs: Sequence[str],
    settings: AdaptationSettings,
    seed: int,
) -> dict[str, Any]:
    """Add adapter ``name`` and fit only its LoRA weights on (image, mask, organ) examples kept on the CPU.

    Batches are drawn with replacement and augmented with the protocol's affine / elastic / gamma transforms.
    """
    started = time.perf_counter()
    device = model.latent_scale.device
    add_adapter(model.controlnet, name, settings.lora.config())
    model.requires_grad_(False)
    params = adapter_parameters(model.controlnet, name)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    sampling = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device).manual_seed(seed + 1)
    augment = AugmentConfig(enabled=settings.augment)
    images, masks = images[:, 0].float().cpu(), masks.float().cpu()
    losses = []
    with torch.enable_grad():
        for _ in range(settings.steps):
            pick = torch.randint(len(images), (settings.batch_size,), generator=sampling)
            image, mask = augment_pair(images[pick], masks[pick], augment, sampling)
            loss = model.diffusion_loss(
                as_three_channels(image).to(device), mask.to(device), [organs[i] for i in pick], noise
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    for param in params:
        param.requires_grad_(False)
    tail = losses[-20:]
    return {
        "steps": settings.steps,
        "examples": len(images),
        "trainable_parameters": sum(p.numel() for p in params),
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def save_adapter(controlnet: ControlNetModel, name: str, folder: Path) -> None:
    """The adapter alone: its LoRA config and weights."""
    folder.mkdir(parents=True, exist_ok=True)
    controlnet.peft_config[name].save_pretrained(str(folder))
    state = get_peft_model_state_dict(controlnet, adapter_name=name)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / ADAPTER_WEIGHTS))


def load_adapter(controlnet: ControlNetModel, folder: Path, name: str) -> None:
    """Add adapter ``name`` from a folder written by ``save_adapter`` and make it the active one."""
    add_adapter(controlnet, name, LoraConfig.from_pretrained(str(folder)))
    result = set_peft_model_state_dict(
        controlnet, load_file(str(folder / ADAPTER_WEIGHTS)), adapter_name=name
    )
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: adapter weights do not fit the model ({unexpected[:3]} ...)")

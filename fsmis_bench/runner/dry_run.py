"""``fsmis-bench run --dry-run``: how big a run is before it starts, with no weights, no data and no GPU.

The profile is resolved as for a run, every model is built on the meta device (accelerate's
``init_empty_weights``: shapes, no memory) with the architecture of its weights folder or the built-in SD-1.5
configs (``paper_scale``), and its parameters are counted per component. Training memory per device is an
estimate (README, "Dry run and GPU check"):

    weights + gradients + optimiser state + autocast weight copies + activations

weights = every parameter x its bytes (4; 2 under ``bf16-true``/``16-true``); gradients = trainable x the same;
AdamW keeps 2 states per trainable parameter, SGD with momentum 1; mixed precision keeps a 16-bit copy of each
trainable weight; activations = the bytes autograd saves for backward in one forward of the trained network at
the profile's batch and resolution, measured on the meta device (halved under 16-bit precision). Not counted:
the CUDA context, cuDNN/cuBLAS workspaces, allocator fragmentation, test-time work (e.g. ProGiDiff's LoRA).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from torch import nn

from fsmis_bench.config import apply_overrides, import_class, instantiate
from fsmis_bench.methods.sd_architectures import CLASSES
from fsmis_bench.runner.experiment import RunRequest, resolve_config
from fsmis_bench.runner.paper_scale import Component, PaperScalePlan, plan_for

GB = 1e9
PRIOR_WEIGHTS = (
    "the in-domain prior: trained by the run on the fold's unlabeled training slices (or ahead with "
    "fsmis-bench prior) and cached"
)
HALF_PRECISIONS = ("bf16", "16")  # precision strings starting so: activations (and *-true weights) in 2 bytes
FORMULA = (
    "weights + gradients + optimizer state + autocast copies + activations saved for backward in one step "
    "(meta-device forward at the profile's batch and resolution); excludes CUDA context, workspaces, "
    "fragmentation and test-time work"
)


def dry_run(request: RunRequest) -> dict[str, Any]:
    """The dry-run report of one run request (the dict ``--json`` prints)."""
    from fsmis_bench.runner.config_check import check_config

    config = resolve_config(request)
    check_config(request.method, config)
    with tempfile.TemporaryDirectory() as prior_folder:
        if config.get("prior"):
            config = _sized_as_prior(config, Path(prior_folder))
        plan = plan_for(request.method, config, use_folders=True)
        if config.get("prior"):
            prior_parts = {"unet", "vae", "text_encoder"}
            plan.components = [
                replace(
                    c, weights=PRIOR_WEIGHTS, files=(), found=None, architecture="the profile's prior section"
                )
                if c.name in prior_parts
                else c
                for c in plan.components
            ]
    model = build_on_meta(apply_overrides(config, plan.overrides)["model"], plan)
    components = count_components(model, plan.components)
    data, trainer = config.get("data") or {}, config.get("trainer") or {}
    precision = str(trainer.get("precision", "32-true"))
    episodes, size = int(data.get("batch_size", 8)), int(data.get("image_size", 128))
    probe = PROBES.get(request.method)
    activations = saved_activation_bytes(model, lambda: probe(model, episodes, size)) if probe else None
    optimizer = dict(getattr(model, "optimizer_config", {}) or {})
    memory = estimate_memory(components, optimizer, precision, activations)
    notes = list(plan.notes)
    missing = [name for name, c in components.items() if c["found"] is False]
    if missing:
        notes.append(
            f"weights missing for {', '.join(missing)}: put them in the layout above (without them a run stops, "
            "or trains from random weights where the profile sets allow_random_init)"
        )
    if activations is None and components:
        notes.append("activations not estimated for this method (no probe): the estimate is a lower bound")
    return {
        "method": request.method,
        "profile": request.profile,
        "run_id": request.run_id,
        "precision": precision,
        "batch_size": episodes,
        "image_size": size,
        "max_steps": trainer.get("max_steps"),
        "accumulate_grad_batches": trainer.get("accumulate_grad_batches", 1),
        "optimizer": optimizer.get("name", "sgd"),
        "components": components,
        "parameters": sum(c["parameters"] for c in components.values()),
        "trainable": sum(c["trainable"] for c in components.values()),
        "memory_estimate_gb": round(sum(memory.values()) / GB, 2),
        "memory_breakdown_gb": {k: round(v / GB, 3) for k, v in memory.items()},
        "estimate": FORMULA,
        "weightless_build": plan.overrides,  # the --set values the meta build used in place of the weights
        "notes": notes,
    }


def _sized_as_prior(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config with the prior's target pointed at ``folder``, holding the prior's component configs."""
    from fsmis_bench.prior import PriorConfig, with_prior
    from fsmis_bench.prior.builder import write_architecture

    prior = PriorConfig.from_section(config["prior"])
    write_architecture(prior, int((config.get("data") or {}).get("image_size", 64)), folder)
    return {**config, "model": with_prior(config["model"], prior.target, folder)}


def build_on_meta(model_config: dict[str, Any], plan: PaperScalePlan) -> nn.Module:
    """The model with every parameter and buffer on the meta device; nothing is read or allocated."""
    logging.disable(logging.WARNING)  # the random-init warnings of a weightless build are no news here
    try:
        with init_empty_weights():
            model = instantiate(model_config)
            for path, (arch, config) in plan.exact.items():
                parent, _, name = path.rpartition(".")
                setattr(model.get_submodule(parent), name, _architecture_module(arch, config))
    finally:
        logging.disable(logging.NOTSET)
    return model.to("meta")


def _architecture_module(arch: str, config: dict[str, Any]) -> nn.Module:
    cls = import_class(CLASSES[arch])
    if hasattr(cls, "from_config"):  # diffusers
        return cls.from_config(config).requires_grad_(False)
    config_cls = import_class(f"transformers.{cls.__name__.removesuffix('Model')}Config")
    return cls(config_cls(**config)).requires_grad_(False)


def count_components(model: nn.Module, components: list[Component]) -> dict[str, dict[str, Any]]:
    """Parameters, trainable, frozen and dtype per component; a parameter belongs to the first component
    whose module path prefixes its name, the rest to its top-level module."""
    out: dict[str, dict[str, Any]] = {}
    described = {c.name: c for c in components}
    for name, parameter in model.named_parameters():
        owner = next(
            (c.name for c in components if any(name == m or name.startswith(m + ".") for m in c.modules)),
            name.split(".")[0],
        )
        entry = out.setdefault(owner, _entry(described.get(owner)))
        entry["parameters"] += parameter.numel()
        entry["trainable"] += parameter.numel() if parameter.requires_grad else 0
        entry["dtypes"].add(str(parameter.dtype).removeprefix("torch."))
    for entry in out.values():
        entry["frozen"] = entry["parameters"] - entry["trainable"]
        entry["dtypes"] = ", ".join(sorted(entry["dtypes"]))
    return {name: {("dtype" if k == "dtypes" else k): v for k, v in e.items()} for name, e in out.items()}


def _entry(component: Component | None) -> dict[str, Any]:
    info = asdict(component) if component else {"weights": "not described for this method", "files": ()}
    described = {k: info.get(k) for k in ("weights", "files", "found", "architecture")}
    return {
        "parameters": 0,
        "trainable": 0,
        "frozen": 0,
        "dtypes": set(),
        **described,
        "files": list(info["files"]),
    }


def saved_activation_bytes(model: nn.Module, forward: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for backward during ``forward()`` (parameters excluded, each
    storage once)."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    model.train()
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_attention  # the callers look it up at call time
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward()
    finally:
        F.scaled_dot_product_attention = sdpa
    return sum(saved.values())


class _FusedAttention(torch.autograd.Function):
    """Attention as CUDA's fused kernels keep it for backward: q, k, v, the output and one log-sum-exp per
    row (the meta device would run the math path, which keeps the full attention matrix)."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1]))
        return out


def _fused_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
) -> Any:
    return _FusedAttention.apply(query, key, value)


def estimate_memory(
    components: dict[str, dict[str, Any]], optimizer: dict[str, Any], precision: str, activations: int | None
) -> dict[str, float]:
    """Training bytes per device by part (see the module docstring for the formula)."""
    total = sum(c["parameters"] for c in components.values())
    trainable = sum(c["trainable"] for c in components.values())
    half = precision.startswith(HALF_PRECISIONS)
    width = 2 if half and precision.endswith("-true") else 4
    name = optimizer.get("name", "sgd")
    states = 2 if name == "adamw" else 1 if float(optimizer.get("momentum", 0) or 0) > 0 else 0
    return {
        "weights": total * width,
        "gradients": trainable * width,
        "optimizer": trainable * width * states,
        "autocast_copies": trainable * 2 if half and precision.endswith("-mixed") else 0,
        "activations": (activations or 0) * (0.5 if half else 1.0),
    }


def _zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device="meta")


def _prototype_step(model: Any, episodes: int, size: int) -> Any:
    """The encoder pass of a training step: E supports (one shot) and E queries."""
    return model.encoder(_zeros(2 * episodes, 3, size, size))


def _sd_fsmis_step(model: Any, episodes: int, size: int) -> Any:
    """The support pass (writes the bank) and the query pass of the surgered UNet on E episodes."""
    from fsmis_bench.methods.sd_fsmis.model import EncodedEpisodes

    net = model.net
    grid = size // 2 ** (len(net.vae.config.block_out_channels) - 1)
    latents = _zeros(episodes, net.unet.config.in_channels, grid, grid)
    context = _zeros(episodes, 1, net.unet.config.cross_attention_dim)
    episode = torch.arange(episodes, device="meta")
    return net.velocity(EncodedEpisodes(latents, latents.clone(), context, 1, episode))


def _progidiff_step(model: Any, episodes: int, size: int) -> Any:
    """ControlNet + UNet on the 2E slices (supports and queries) of a step at latent resolution."""
    net = model.model
    n, grid, channels = 2 * episodes, size // net.vae_factor, net.vae.config.latent_channels
    hint_kind = net.controlnet.controlnet_cond_embedding.kind
    hint = _zeros(n, channels, grid, grid) if hint_kind == "vae_latent" else _zeros(n, 3, size, size)
    text = _zeros(n, net.tokenizer.model_max_length, net.unet.config.cross_attention_dim)
    timesteps = _zeros(n, dtype=torch.long)
    return net.predict(_zeros(n, channels, grid, grid), timesteps, text, hint)


#: The trained network's forward of one training step, per method (meta tensors in, nothing computed).
PROBES: dict[str, Callable[[Any, int, int], Any]] = {
    "panet": _prototype_step,
    "alpnet": _prototype_step,
    "dpl": _prototype_step,
    "sd_fsmis": _sd_fsmis_step,
    "progidiff": _progidiff_step,
}


def format_dry_run(report: dict[str, Any]) -> str:
    """The report as text: one block per component, then the memory estimate."""
    millions = lambda n: f"{n / 1e6:,.2f} M"  # noqa: E731
    lines = [f"{report['run_id']}: dry run (built on the meta device: no weights read, no memory, no data)"]
    if not report["components"]:
        return "\n".join([*lines, "  no parameters: nothing to load or train"])
    lines += [
        f"  batch {report['batch_size']} episode(s) x {report['image_size']} px, precision {report['precision']}, "
        f"optimizer {report['optimizer']}, {report['max_steps']} steps x {report['accumulate_grad_batches']} "
        "accumulation",
        f"  {'component':<20s}{'parameters':>14s}{'trainable':>14s}  dtype",
    ]
    for name, c in report["components"].items():
        lines.append(
            f"  {name:<20s}{millions(c['parameters']):>14s}{millions(c['trainable']):>14s}  {c['dtype']}"
        )
        status = {True: "found", False: "MISSING", None: ""}[c["found"]]
        lines.append(f"      weights: {c['weights']}" + (f"  [{status}]" if status else ""))
        lines += [f"        {f}" for f in c["files"]]
        if c["architecture"]:
            lines.append(f"      architecture: {c['architecture']}")
    lines.append(f"  {'total':<20s}{millions(report['parameters']):>14s}{millions(report['trainable']):>14s}")
    parts = " + ".join(f"{k} {v:.2f}" for k, v in report["memory_breakdown_gb"].items())
    lines.append(f"  training memory per device, ESTIMATE: {report['memory_estimate_gb']:.2f} GB = {parts}")
    lines.append(f"    ({report['estimate']}; GB = 1e9 bytes)")
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)

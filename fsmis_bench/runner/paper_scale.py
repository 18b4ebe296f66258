"""What a paper-scale model is, per method: its components, the weights each reads and the folder layout it
expects, and the ``--set`` overrides that build the same full-size architecture randomly initialised.

Architectures come from the weights folder's own ``config.json`` files when they are there (``use_folders``),
else from the built-in SD-1.5 / DINOv2-base configs (``fsmis_bench.methods.sd_architectures``); no weight file
is ever read. ``fsmis-bench run --dry-run`` builds the overridden model on the meta device; ``make gpu-check``
builds it for real from the built-in configs.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsmis_bench.config import import_class
from fsmis_bench.methods.sd_architectures import architecture, path_of

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
#: Keys of a published config.json that name the file, not the architecture.
METADATA_KEYS = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version"}
RESNET_WEIGHTS = (
    "a local torchvision deeplabv3_resnet101 or resnet101 state dict (.pth or .safetensors); the 1x1 reduction "
    "to feature_dim starts from scratch"
)
ENCODER_CLASS = "fsmis_bench.methods.prototype.encoder.FeatureEncoder"


@dataclass(frozen=True)
class Component:
    """One part of a model: its modules inside the LightningModule and where its weights come from."""

    name: str
    modules: tuple[str, ...]  # attribute paths; a parameter belongs to the first component naming a prefix
    weights: str  # what it loads, in words
    files: tuple[str, ...] = ()  # the files a run reads (empty: nothing is loaded)
    found: bool | None = None  # whether every file is there (None: nothing to load)
    architecture: str = ""  # where the architecture numbers come from


@dataclass
class PaperScalePlan:
    """Components, the overrides of a weightless full-size build, and what a user should know."""

    components: list[Component]
    overrides: list[str]  # ``--set`` values
    notes: list[str] = field(default_factory=list)
    #: Modules the random-init build sizes differently from the weights (attribute path -> (architecture,
    #: config)): the dry run swaps in a meta module of the weights' size.
    exact: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def locate(root: str | None, relative: str) -> Path | None:
    """A file of a ``save_pretrained`` folder or of an already cached hub id; never downloads."""
    if not root:
        return None
    folder = Path(root).expanduser()
    if folder.is_dir():
        path = folder / relative
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(root, relative)
    except ValueError:  # not a hub id (e.g. a missing local path)
        return None
    return Path(found) if isinstance(found, str) else None


def architecture_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A published config.json without its file metadata (``_class_name``, ``transformers_version``, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in METADATA_KEYS}


def pretrained_source(
    name: str,
    modules: tuple[str, ...],
    root: str | None,
    subfolder: str | None,
    arch: str,
    weight_file: str,
    use_folders: bool,
    extra_files: tuple[str, ...] = (),
) -> tuple[Component, dict[str, Any]]:
    """The component read from ``root[/subfolder]`` and the architecture config to build it with; a file
    entry ``a|b`` is found when either is there."""
    prefix = f"{subfolder}/" if subfolder else ""
    relative = (f"{prefix}config.json", f"{prefix}{weight_file}", *extra_files)
    located = [next(filter(None, (locate(root, f) for f in entry.split("|"))), None) for entry in relative]
    if use_folders and located[0] is not None:
        config = architecture_keys(json.loads(located[0].read_text(encoding="utf-8")))
        source = str(located[0])
    else:
        config = architecture(arch)
        source = f"built-in {path_of(arch).name} (fsmis_bench/methods/sd_architectures)"
    where = f"{root}/{subfolder}" if subfolder else str(root)
    component = Component(
        name,
        modules,
        weights=f"{where} (save_pretrained folder or cached hub id, offline)",
        files=tuple(" or ".join(f"{root}/{f}" for f in entry.split("|")) for entry in relative),
        found=root is not None and all(p is not None for p in located),
        architecture=source,
    )
    return component, config


def _random(name: str, modules: tuple[str, ...], how: str) -> Component:
    return Component(name, modules, weights=f"none: {how}")


Sets = dict[str, Any]  # top-level init_args replaced in a weightless full-size build


def _sd_fsmis(init_args: dict[str, Any], use_folders: bool) -> tuple[PaperScalePlan, Sets]:
    components, sets = [], {"pretrained_path": None, "dinov2_path": None, "allow_random_init": True}
    root, dinov2_root = init_args.get("pretrained_path"), init_args.get("dinov2_path")
    for kind, file in (
        ("unet", DIFFUSERS_WEIGHTS),
        ("vae", DIFFUSERS_WEIGHTS),
        ("dinov2", TRANSFORMERS_WEIGHTS),
    ):
        source_root, subfolder = (dinov2_root, None) if kind == "dinov2" else (root, kind)
        modules = ("net.vtct.encoder",) if kind == "dinov2" else (f"net.{kind}",)
        if source_root:
            component, config = pretrained_source(
                kind, modules, source_root, subfolder, kind, file, use_folders
            )
        else:
            config = init_args.get(f"{kind}_config") or architecture(kind)
            component = _random(kind, modules, f"random init from model.init_args.{kind}_config")
        components.append(component)
        sets[f"{kind}_config"] = config
    components.append(_random("vtct", ("net.vtct",), "VTCT MLP trained from scratch"))
    notes = ["unet: SD-FSMIS surgery widens conv_in to 2x the latent channels and adds conv_in_ref"]
    return PaperScalePlan(components, [], notes), sets


def _progidiff(init_args: dict[str, Any], use_folders: bool) -> tuple[PaperScalePlan, Sets]:
    backbone = dict(init_args.get("backbone") or {"model_size": "tiny"})
    controlnet = _random(
        "controlnet",
        ("model.controlnet",),
        "copied from the UNet (ControlNetModel.from_unet), hint encoder new",
    )
    modules = {k: (f"model.{k}",) for k in ("unet", "vae", "text_encoder")}
    if backbone.get("model_size", "tiny") != "pretrained":
        how = "random init, tiny configuration (model.init_args.backbone)"
        components = [_random(k, m, how) for k, m in modules.items()]
        return PaperScalePlan([*components, controlnet], []), {}
    root, components, sets = backbone.get("pretrained_path"), [], {}
    tokenizer = ("tokenizer/tokenizer.json|tokenizer/vocab.json",)  # fast or slow CLIP tokenizer files
    for kind, file in (
        ("unet", DIFFUSERS_WEIGHTS),
        ("vae", DIFFUSERS_WEIGHTS),
        ("text_encoder", TRANSFORMERS_WEIGHTS),
    ):
        extra = tokenizer if kind == "text_encoder" else ()
        component, config = pretrained_source(kind, modules[kind], root, kind, kind, file, use_folders, extra)
        components.append(component)
        sets[kind] = config
    new_backbone = {**backbone, "pretrained_path": None, "allow_random_init": True, **sets}
    notes = [
        "text_encoder: sized from its config; a random-init build (make gpu-check) has a local character "
        "tokenizer, a smaller vocabulary and so a smaller embedding"
    ]
    exact = {"model.text_encoder": ("text_encoder", sets["text_encoder"])}
    return PaperScalePlan([*components, controlnet], [], notes, exact), {"backbone": new_backbone}


def _prototype(init_args: dict[str, Any], diffusion_head: bool) -> tuple[PaperScalePlan, Sets]:
    encoder = dict(init_args.get("encoder") or {})
    path, sets = encoder.get("pretrained_path"), {}
    if encoder.get("kind", "tiny") != "resnet101":
        component = _random("encoder", ("encoder",), "random init, tiny CNN (our CPU design)")
    else:
        weights = (
            f"{path}: {RESNET_WEIGHTS}"
            if path
            else "none configured (model.init_args.encoder.pretrained_path)"
        )
        found = Path(path).expanduser().is_file() if path else False
        component = Component("encoder", ("encoder",), weights, (str(path),) if path else (), found)
        random_switch = {"allow_random_init": True} if _accepts(ENCODER_CLASS, "allow_random_init") else {}
        sets["encoder"] = {**encoder, "pretrained_path": None, **random_switch}
    components = [component]
    if diffusion_head:
        modules = ("diffusion", "condition", "fusion")
        components.append(
            _random("prototype_diffusion", modules, "denoiser, condition and fusion from scratch")
        )
    return PaperScalePlan(components, []), sets


def plan_for(method: str, config: dict[str, Any], use_folders: bool = True) -> PaperScalePlan:
    """The paper-scale plan of a resolved run config; methods not described here get no components (the dry
    run then groups their parameters by top-level module)."""
    init_args = copy.deepcopy(config["model"].get("init_args") or {})
    if method == "sd_fsmis":
        plan, sets = _sd_fsmis(init_args, use_folders)
    elif method == "progidiff":
        plan, sets = _progidiff(init_args, use_folders)
    elif method in ("dpl", "alpnet", "panet"):
        plan, sets = _prototype(init_args, diffusion_head=method == "dpl")
    else:
        plan, sets = PaperScalePlan([], []), {}
    new = {**init_args, **copy.deepcopy(sets)}
    _allow_random_init(new)
    if "allow_random_init" not in new and _accepts(config["model"]["class_path"], "allow_random_init"):
        new["allow_random_init"] = True
    plan.overrides = [
        f"model.init_args.{k}={json.dumps(v)}"
        for k, v in new.items()
        if k not in init_args or init_args[k] != v
    ]
    return plan


def _allow_random_init(node: Any) -> None:
    """Set every ``allow_random_init`` key, at any depth, to true."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "allow_random_init":
                node[key] = True
            else:
                _allow_random_init(value)


def _accepts(class_path: str, argument: str) -> bool:
    try:
        return argument in inspect.signature(import_class(class_path)).parameters
    except (TypeError, ValueError):
        return False

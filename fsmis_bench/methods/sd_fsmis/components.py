"""Offline loading of pretrained components (docs/methods/README.md §2.2), or random init from a config.

Weights come from a local ``save_pretrained`` folder or an already cached hub id, with
``local_files_only=True`` and safetensors only (never unpickled); the ``vae/`` and ``unet/`` subfolders are
checked for their classes first (``sd_layout``). A missing or misplaced weight is an error naming the
expected path, unless ``allow_random_init`` is set and a config is given: then the component is built from the
config, loudly logged, and the fact is recorded with the results (``describe``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import Dinov2Config, Dinov2Model

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.sd_layout import check_component, local_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where one component's weights come from: ``pretrained_path`` (+ ``subfolder``) or ``config``."""

    pretrained_path: str | None = None
    subfolder: str | None = None
    config: dict[str, Any] | None = None

    def describe(self, random: bool) -> str:
        if random:
            return "random init from config"
        where = self.pretrained_path if not self.subfolder else f"{self.pretrained_path} [{self.subfolder}]"
        return f"pretrained: {where}"


def load_component(kind: str, source: Source, allow_random_init: bool) -> tuple[Any, bool]:
    """(model, randomly_initialised) for ``kind`` in vae, unet, dinov2.

    A path that is named must load: ``allow_random_init`` only covers a component with no path at all, so a
    mistyped or damaged folder never turns silently into random weights.
    """
    if source.pretrained_path:
        try:
            return _from_pretrained(kind, source), False
        except (OSError, ValueError, ConfigError) as exc:  # missing, not cached, misplaced, no safetensors
            where = f"'{source.pretrained_path}'" + (
                f" (subfolder '{source.subfolder}')" if source.subfolder else ""
            )
            one_line = " ".join(str(exc).split())  # library messages span lines; the CLI prints one
            raise ConfigError(
                f"sd_fsmis {kind}: cannot load {where} offline ({one_line}); put the weights there in "
                "save_pretrained layout (safetensors), or leave the path unset to train from random weights "
                "(allow_random_init: true)"
            ) from None
    if not (allow_random_init and source.config):
        raise ConfigError(
            f"sd_fsmis {kind}: no pretrained_path given; set it to a save_pretrained folder, or set "
            f"allow_random_init: true with a {kind} config"
        )
    log.warning(
        "sd_fsmis %s: RANDOMLY INITIALISED from its config (no pretrained_path); results are not "
        "pretrained-weight numbers",
        kind,
    )
    return _from_config(kind, source.config), True


def _from_pretrained(kind: str, source: Source) -> Any:
    options: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    if source.subfolder:
        root = local_folder(source.pretrained_path)
        check_component(root, source.subfolder)
        options["subfolder"] = source.subfolder
    else:
        root = source.pretrained_path
    if kind == "vae":
        return AutoencoderKL.from_pretrained(root, **options)
    if kind == "unet":
        return UNet2DConditionModel.from_pretrained(root, **options)
    if kind == "dinov2":
        return Dinov2Model.from_pretrained(root, **options)
    raise ValueError(f"unknown component kind {kind!r}")


def _from_config(kind: str, config: dict[str, Any]) -> Any:
    if kind == "vae":
        return AutoencoderKL.from_config(config)
    if kind == "unet":
        return UNet2DConditionModel.from_config(config)
    if kind == "dinov2":
        return Dinov2Model(Dinov2Config(**config))
    raise ValueError(f"unknown component kind {kind!r}")

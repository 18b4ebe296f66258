"""Names -> methods, datasets and profiles. Methods are imported lazily (diffusers is heavy)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from fsmis_bench.data.datasets import DATASETS
from fsmis_bench.errors import ConfigError

PROFILES = ("smoke", "ci", "cpu", "paper")


@dataclass(frozen=True)
class MethodEntry:
    name: str
    package: str  # holds configs/<profile>.yaml and README.md
    summary: str
    reference: bool = False  # learns nothing; a floor every leaderboard shows


METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(
            "panet", "fsmis_bench.methods.panet", "PANet as SSL-PANet: global prototypes, superpixels"
        ),
        MethodEntry(
            "alpnet", "fsmis_bench.methods.alpnet", "SSL-ALPNet: adaptive local prototypes, superpixels"
        ),
        MethodEntry(
            "dpl", "fsmis_bench.methods.dpl", "DPL: diffusion-enhanced prototypes with spatial conditioning"
        ),
        MethodEntry(
            "sd_fsmis",
            "fsmis_bench.methods.sd_fsmis",
            "SD-FSMIS: Stable Diffusion UNet, support-query attention, VTCT, query enhancement",
        ),
        MethodEntry(
            "progidiff",
            "fsmis_bench.methods.progidiff",
            "ProGiDiff: prompt-guided ControlNet mask diffusion, proposals, LoRA adaptation",
        ),
        MethodEntry(
            "copy_support",
            "fsmis_bench.methods.copy_support",
            "reference: copy the chunk's support mask",
            True,
        ),
        MethodEntry("threshold", "fsmis_bench.methods.threshold", "reference: support intensity band", True),
    )
}


def get_method(name: str) -> MethodEntry:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; known methods: {', '.join(METHODS)}") from None


def check_profile(profile: str, method: str | None = None) -> None:
    """ConfigError unless ``profile`` is one of the profiles every method has, or one of ``method``'s own
    (an ablation such as ``cpu_random_init``: any other YAML in the method's ``configs/``)."""
    known = method_profiles(method) if method else PROFILES
    if profile not in known:
        raise ConfigError(f"unknown profile '{profile}'; known profiles: {', '.join(known)}")


def _configs_dir(method: str) -> Path:
    """Found without importing the method (its imports are heavy; names are checked before torch loads)."""
    spec = importlib.util.find_spec(get_method(method).package)
    return Path(spec.origin).parent / "configs"  # type: ignore[union-attr, arg-type]


def method_profiles(method: str) -> tuple[str, ...]:
    """The four common profiles, then the method's own in name order."""
    own = sorted(p.stem for p in _configs_dir(method).glob("*.yaml") if p.stem not in PROFILES)
    return (*PROFILES, *own)


def profile_path(method: str, profile: str) -> Path:
    """The YAML of a method's profile, inside the method's package folder."""
    check_profile(profile, method)
    path = _configs_dir(method) / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: method {method} has no '{profile}' profile")
    return path


def dataset_names() -> list[str]:
    return list(DATASETS)

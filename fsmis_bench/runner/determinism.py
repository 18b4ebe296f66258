"""How deterministic a run's Trainer is: exact on CPU, Lightning's ``"warn"`` on CUDA, ``trainer.deterministic``
overrides either.

Strict determinism (``torch.use_deterministic_algorithms(True)``) is free on CPU, where every op the methods use
has a deterministic kernel, and keeps CPU numbers bit-exact. On CUDA several of those ops have none and raise
under it (the backward of bilinear ``interpolate``, 2-D ``cross_entropy``), so the CUDA default is ``"warn"``:
deterministic kernels where torch has them, a warning where it does not. cuBLAS is deterministic only with a
fixed workspace (``CUBLAS_WORKSPACE_CONFIG``), which it reads at its first call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from fsmis_bench.errors import ConfigError

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
#: The cuBLAS workspace that makes its kernels deterministic (the value Lightning writes).
CUBLAS_DETERMINISTIC = ":4096:8"
Deterministic = bool | Literal["warn"]
#: ``trainer.deterministic`` values; YAML reads true/false as booleans.
CHOICES: dict[str, Deterministic] = {"true": True, "false": False, "warn": "warn"}


@dataclass(frozen=True)
class DeterminismPolicy:
    """The Trainer's ``deterministic`` argument and the environment the job needs for it."""

    deterministic: Deterministic
    device: str  # cpu, cuda or mps: where the accelerator runs
    source: str  # "default" or "trainer.deterministic"
    env: dict[str, str] = field(default_factory=dict)

    def apply_env(self) -> None:
        """Set the job's environment. Call after building the Trainer (Lightning writes its own cuBLAS value
        over any) and before it touches CUDA."""
        os.environ.update(self.env)

    def record(self) -> dict[str, Any]:
        """What ``summary.json`` keeps under ``determinism``."""
        return {
            "deterministic": self.deterministic,
            "device": self.device,
            "source": self.source,
            "env": self.env,
        }


def requested_determinism(trainer_config: Mapping[str, Any]) -> Deterministic | None:
    """The ``trainer.deterministic`` override (None when unset); any other value than true, false or warn is a
    ConfigError."""
    if "deterministic" not in trainer_config:
        return None
    value = trainer_config["deterministic"]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in CHOICES:
        return CHOICES[value.strip().lower()]
    raise ConfigError(f"trainer.deterministic={value!r}: expected true, false or warn")


def accelerator_device(accelerator: str) -> str:
    """The device a Lightning accelerator name runs on, ``auto`` and ``gpu`` resolved as Lightning does."""
    name = accelerator.lower()
    if name == "gpu":
        return "mps" if MPSAccelerator.is_available() else "cuda"
    if name == "auto":
        return "mps" if MPSAccelerator.is_available() else "cuda" if CUDAAccelerator.is_available() else "cpu"
    return name


def check_accelerator(accelerator: str) -> None:
    """ConfigError when the accelerator names a device this machine lacks (Lightning's own names)."""
    device = accelerator_device(accelerator)
    if device == "cuda" and not CUDAAccelerator.is_available():
        raise ConfigError(f"--accelerator {accelerator}: no CUDA GPU on this machine (use cpu or auto)")
    if device == "mps" and not MPSAccelerator.is_available():
        raise ConfigError(
            f"--accelerator {accelerator}: no Apple MPS device on this machine (use cpu or auto)"
        )
    if device not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--accelerator {accelerator!r}: expected auto, cpu, gpu, cuda or mps")


def resolve_determinism(
    accelerator: str, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> DeterminismPolicy:
    """The policy of a run on ``accelerator`` with the resolved ``config``: True on CPU, ``"warn"`` elsewhere,
    unless ``trainer.deterministic`` says otherwise. On CUDA a deterministic mode brings the cuBLAS workspace
    setting, keeping a value already in ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    device = accelerator_device(accelerator)
    requested = requested_determinism(config.get("trainer") or {})
    default: Deterministic = True if device == "cpu" else "warn"
    deterministic = default if requested is None else requested
    env = {}
    if device == "cuda" and deterministic:
        env[CUBLAS_ENV] = environ.get(CUBLAS_ENV, CUBLAS_DETERMINISTIC)
    source = "default" if requested is None else "trainer.deterministic"
    return DeterminismPolicy(deterministic, device, source, env)

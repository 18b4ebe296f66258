"""Provenance of a result: code version, package versions, host, config hash and environment fingerprint.

The environment fingerprint names what, besides the code, the config and the seed, decides a run's floats:
library releases (and the constraints file that pins them), the torch build, the CPU and the instruction set
torch dispatches to, and the thread count (a different reduction order). Two runs with equal fingerprints
reproduce each other bit for bit on CPU; its short id goes into every result row (column ``environment``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import fsmis_bench

PACKAGES = (
    "torch",
    "lightning",
    "diffusers",
    "transformers",
    "peft",
    "monai",
    "numpy",
    "scikit-image",
    "nibabel",
)
#: Libraries whose releases change a run's floats (by name, in the environment fingerprint).
NUMERIC_PACKAGES = ("torch", "diffusers", "transformers", "peft", "monai", "numpy", "scipy", "scikit-image")
#: The pip constraints of a source checkout (``make lock``); absent in an installed package.
CONSTRAINTS = Path(fsmis_bench.__file__).resolve().parent.parent / "constraints.txt"


@functools.cache
def code_version() -> str:
    """``git`` commit of the package source; with uncommitted edits, ``-dirty-`` plus a hash of the diff, so
    results from edited code never share a fingerprint with the commit. Outside git: the package version."""
    source = Path(fsmis_bench.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        diff = git("diff", "HEAD", "--", str(source))
    except (OSError, subprocess.CalledProcessError):
        return f"v{fsmis_bench.__version__}"
    if not diff:
        return commit
    return f"{commit}-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:8]}"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_fingerprint() -> dict[str, Any]:
    """What decides a run's floats besides code, config and seed (flat, so two fingerprints diff by field).
    ``gpu``: the GPU this process computed on (CUDA initialised), whose kernels decide a GPU run's floats."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:12] if CONSTRAINTS.is_file() else "absent"
    return {
        "python": platform.python_version(),
        **package_versions(NUMERIC_PACKAGES),
        "torch_cuda": torch.version.cuda or "none",
        "constraints_sha256": digest,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_initialized() else "none",
    }


def environment_id(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of an environment fingerprint (the store's ``environment`` column)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def environment(config_hash: str) -> dict[str, Any]:
    return {
        "code_version": code_version(),
        "fsmis_bench": fsmis_bench.__version__,
        "config_hash": config_hash,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "environment_fingerprint": environment_fingerprint(),
    }

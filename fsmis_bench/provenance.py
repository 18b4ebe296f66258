"""Provenance of a result: code version, package versions, host and config hash."""

from __future__ import annotations

import functools
import hashlib
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


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


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
    }

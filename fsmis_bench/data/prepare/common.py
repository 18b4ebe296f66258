"""Shared steps of the preparation recipes: SimpleITK resampling with the reference quirks, NIfTI output.

Arrays are in SimpleITK order (Z, H, W); spacings, origins and directions are in SimpleITK (x, y, z) order.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsmis_bench.errors import ConfigError

try:
    import SimpleITK as sitk
except ImportError as exc:  # SimpleITK is the optional extra ``fsmis-bench[prepare]``
    raise ConfigError(
        "data preparation needs SimpleITK: pip install 'fsmis-bench[prepare]' (or pip install SimpleITK)"
    ) from exc


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume in SimpleITK convention (x, y, z order; direction row-major)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def progress(message: str) -> None:
    """One progress line on stderr (the CLI leaves stdout for results)."""
    print(f"[fsmis-bench prepare] {message}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a (Z, H, W) array on the given grid."""
    return geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))


def reference_size(
    size: tuple[int, ...], spacing: tuple[float, ...], new_spacing: tuple[float, float, float]
) -> list[int]:
    """Output size of the reference resampler, ``int(size * old / new + 1)`` on every axis.

    Kept on purpose (protocol §1.3, pitfall 6): an exact in-plane ratio of 1.75 gives 257 instead of 256, an
    unchanged z spacing gives one extra slice, and the voxels past the input end are 0 (outside the buffer).
    """
    return [int(n * (s / t) + 1) for n, s, t in zip(size, spacing, new_spacing)]


def resample(image: sitk.Image, new_spacing: tuple[float, float, float]) -> sitk.Image:
    """Linear resampling anchored at the input origin, in the input pixel type (as the reference)."""
    return sitk.Resample(
        image,
        reference_size(image.GetSize(), image.GetSpacing(), new_spacing),
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        tuple(float(s) for s in new_spacing),
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def resample_label(
    label: np.ndarray, geometry: Geometry, new_spacing: tuple[float, float, float]
) -> np.ndarray:
    """Per-label resampling: each id as a float mask, linear, rint, pasted in ascending id order."""
    size = reference_size(label.shape[::-1], geometry.spacing, new_spacing)
    out = np.zeros(size[::-1], dtype=np.uint8)
    ids = np.unique(label)
    for label_id in ids[ids != 0]:
        mask = to_image((label == label_id).astype(np.float32), geometry)
        out[np.rint(sitk.GetArrayFromImage(resample(mask, new_spacing))) == 1] = label_id
    return out


def write_nifti(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a compressed NIfTI atomically (temporary file, then rename): a crash leaves no partial file."""
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.partial.nii.gz")
    sitk.WriteImage(to_image(array, geometry), str(tmp), True)
    os.replace(tmp, path)

"""Seeded CT-like and T2-SPIR-like abdominal phantoms: the embedded default datasets (no download needed).

``generate_volume`` draws one patient (anatomy in ``phantom_anatomy``) and gives it a modality-specific
appearance calibrated to the preprocessed benchmark data: CT as 0..255 values of the [-125, 275] HU window,
MRI as un-normalised T2-SPIR-like intensities (bright spleen and kidneys, dark liver, suppressed fat, coil
bias field, Rician noise, 99.5th-percentile clipping). Tissue intensities overlap on purpose, so an
intensity band fitted on one organ does not segment it. ``write_synthetic_dataset`` writes the volumes in
the SSL-ALPNet layout so that ``volumes.read_volume`` reads them like the real data.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from fsmis_bench.data.datasets import DatasetSpec
from fsmis_bench.data.phantom_anatomy import sample_anatomy
from fsmis_bench.data.phantom_render import TISSUES, render_tissues
from fsmis_bench.data.phantom_shapes import Grid, NoiseField
from fsmis_bench.errors import DataError

#: Bump whenever the generated arrays change, so cached datasets can be told apart.
GENERATOR_VERSION = "2"
MANIFEST_NAME = "manifest.json"
_GENERATOR = "fsmis_bench.data.synthetic"
#: In-plane Gaussian blur (pixels) that mimics partial-volume mixing at tissue edges.
_PARTIAL_VOLUME_SIGMA = 0.7

# Appearance of each tissue kind: (mean, smooth texture amplitude, fine grain amplitude). CT values are HU
# with additive texture; MRI values are arbitrary T2-SPIR units with texture relative to the mean.
Appearance = dict[str, tuple[float, float, float]]


def _ct_appearance(rng: np.random.Generator) -> Appearance:
    """Contrast-enhanced CT; liver, spleen and muscle overlap, enhancement varies with the scan phase."""
    u = rng.uniform
    liver, cortex = u(50, 95), u(140, 210)
    fluid = u(150, 300) if rng.random() < 0.3 else u(0, 30)  # positive oral contrast in some patients
    return {
        "air": (-1000, 0, 0),
        "skin": (30, 10, 10),
        "fat": (-100, 8, 12),
        "muscle": (u(40, 65), 8, 12),
        "visceral_fat": (-95, 12, 15),
        "lung": (-850, 40, 30),
        "heart": (u(100, 200), 10, 12),
        "bowel_wall": (u(60, 110), 10, 12),
        "bowel_fluid": (fluid, 10, 10),
        "bowel_chyme": (u(-20, 60), 40, 30),
        "gas": (-900, 50, 30),
        "pancreas": (u(70, 120), 10, 12),
        "liver": (liver, 6, 10),
        "liver_vessel": (liver + u(20, 80), 10, 10),
        "gallbladder": (u(0, 20), 4, 8),
        "spleen": (liver + u(-15, 10), 8, 10),
        "kidney_cortex": (cortex, 10, 12),
        "kidney_medulla": (cortex - u(10, 60), 10, 12),
        "ivc": (u(80, 160), 8, 10),
        "aorta": (u(150, 250), 8, 10),
        "bone": (u(500, 900), 60, 40),
        "marrow": (u(150, 250), 30, 25),
        "disc": (u(70, 100), 10, 10),
        "csf": (u(0, 20), 5, 8),
    }


def _mri_appearance(rng: np.random.Generator) -> Appearance:
    """T2-SPIR: fat suppressed, fluid bright, spleen and kidneys brighter than liver, dark aorta (flow void)."""
    u = rng.uniform
    liver, cortex = u(280, 400), u(480, 650)
    return {
        "air": (0, 0, 0),
        "skin": (u(200, 300), 0.15, 0.1),
        "fat": (u(80, 120), 0.2, 0.15),
        "muscle": (u(120, 180), 0.12, 0.1),
        "visceral_fat": (u(90, 130), 0.2, 0.15),
        "lung": (25, 0.3, 0.2),
        "heart": (u(150, 300), 0.15, 0.1),
        "bowel_wall": (u(220, 320), 0.15, 0.1),
        "bowel_fluid": (u(550, 900), 0.15, 0.1),
        "bowel_chyme": (u(250, 400), 0.3, 0.15),
        "gas": (20, 0.2, 0.2),
        "pancreas": (u(300, 420), 0.1, 0.08),
        "liver": (liver, 0.08, 0.08),
        "liver_vessel": (liver * u(1.6, 2.4), 0.1, 0.1),
        "gallbladder": (u(900, 1200), 0.05, 0.05),
        "spleen": (u(550, 720), 0.08, 0.08),
        "kidney_cortex": (cortex, 0.08, 0.08),
        "kidney_medulla": (cortex * u(1.05, 1.3), 0.08, 0.08),
        "ivc": (u(150, 400), 0.15, 0.1),
        "aorta": (u(60, 150), 0.2, 0.1),
        "bone": (u(30, 60), 0.2, 0.2),
        "marrow": (u(250, 380), 0.12, 0.1),
        "disc": (u(450, 650), 0.1, 0.1),
        "csf": (u(800, 1000), 0.05, 0.05),
    }


def _synthesize_image(
    codes: np.ndarray,
    grid: Grid,
    box: tuple[np.ndarray, np.ndarray],
    modality: str,
    look: np.random.Generator,
    noise: np.random.Generator,
) -> np.ndarray:
    """Intensities from the tissue map: per-tissue mean, smooth texture and grain, partial volume, noise.

    ``box`` is the scan's physical extent: the smooth fields are drawn over it, independent of the grid.
    """
    appearance = _ct_appearance(look) if modality == "ct" else _mri_appearance(look)
    table = np.array([appearance[t.kind] for t in TISSUES], np.float32)
    mean, texture, grain = table[codes, 0], table[codes, 1], table[codes, 2]
    texture *= NoiseField.sample(look, *box, 6.0)(grid)
    grain *= noise.standard_normal(grid.shape, dtype=np.float32)
    if modality == "ct":
        hu = ndimage.gaussian_filter(
            mean + texture + grain, (0, _PARTIAL_VOLUME_SIGMA, _PARTIAL_VOLUME_SIGMA)
        )
        hu += np.float32(look.uniform(8, 16)) * noise.standard_normal(grid.shape, dtype=np.float32)
        return np.clip((hu + 125) * np.float32(255 / 400), 0, 255).astype(np.float32)
    signal = mean * (1 + texture + grain)
    signal = ndimage.gaussian_filter(signal, (0, _PARTIAL_VOLUME_SIGMA, _PARTIAL_VOLUME_SIGMA))
    bias = np.exp(np.float32(look.uniform(0.15, 0.3)) * NoiseField.sample(look, *box, 100.0)(grid))
    signal *= np.float32(look.uniform(0.8, 1.3)) * bias
    sigma = np.float32(look.uniform(5, 8))
    real = signal + sigma * noise.standard_normal(grid.shape, dtype=np.float32)
    image = np.sqrt(real**2 + (sigma * noise.standard_normal(grid.shape, dtype=np.float32)) ** 2)
    return np.minimum(image, np.percentile(image, 99.5)).astype(np.float32)


def _label_table(spec: DatasetSpec) -> np.ndarray:
    """Tissue code -> label id of ``spec``; tissues of organs the dataset does not label map to 0."""
    by_name = {name: label for label, name in spec.label_names.items()}
    return np.array([by_name.get(t.organ, 0) for t in TISSUES], np.uint8)


def _streams(name: str, scan_id: int, seed: int) -> list[np.random.Generator]:
    """Independent generators for anatomy, appearance and noise, keyed by (dataset, scan, seed) only."""
    if seed < 0 or scan_id < 0:
        raise ValueError(f"seed and scan id must be non-negative, got seed={seed}, scan_id={scan_id}")
    key = [seed, scan_id, zlib.crc32(name.encode())]
    return [np.random.default_rng([*key, stream]) for stream in range(3)]


def generate_volume(
    spec: DatasetSpec, scan_id: int, seed: int = 0, in_plane: int = 256, n_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image float32 (Z, H, W), label uint8 (Z, H, W), spacing (sz, sy, sx) in mm) of one phantom.

    Deterministic in (spec.name, scan_id, seed, in_plane, n_slices). The anatomy is drawn in millimetres, so
    a smaller ``in_plane`` or an explicit ``n_slices`` resamples the same patient over the same field of
    view (larger spacing) instead of cropping it.
    """
    if not spec.synthetic or spec.modality not in ("ct", "mri"):
        raise ValueError(f"{spec.name} is not a synthetic CT/MRI dataset")
    if in_plane < 16 or (n_slices is not None and n_slices < 4):
        raise ValueError(f"volume too small: in_plane={in_plane}, n_slices={n_slices} (min 16 and 4)")
    anatomy_rng, look_rng, noise_rng = _streams(spec.name, scan_id, seed)
    anatomy = sample_anatomy(anatomy_rng, spec.modality)
    grid, spacing = anatomy.grid(in_plane, n_slices)
    codes = render_tissues(anatomy, grid)
    image = _synthesize_image(codes, grid, anatomy.box, spec.modality, look_rng, noise_rng)
    # Rounded to float32 as stored in the NIfTI header, so a written and re-read volume compares equal.
    sz, sy, sx = (float(np.float32(s)) for s in spacing)
    return image, _label_table(spec)[codes], (sz, sy, sx)


def _save_nifti(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    """Write a (Z, H, W) array as (X, Y, Z) NIfTI, spacing on the affine diagonal as in the real data."""
    sz, sy, sx = spacing
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.diag([-sx, sy, sz, 1.0]))
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def _is_synthetic_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest written by this generator (safe to replace)."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first and restored on failure."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(retired)
    try:
        staging.rename(target)
    except BaseException:
        retired.rename(target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_synthetic_dataset(
    spec: DatasetSpec,
    out_root: Path,
    seed: int = 0,
    scan_ids: Sequence[int] | None = None,
    in_plane: int = 256,
    n_slices: int | None = None,
) -> Path:
    """Write image_<id>.nii.gz / label_<id>.nii.gz and a manifest into out_root / spec.layout.

    Files are written to a temporary sibling folder that is renamed into place at the end, so an
    interrupted run never leaves a half-written dataset. An existing folder is replaced only if it holds a
    synthetic dataset (a manifest written here); anything else, e.g. real data, is refused. Returns the
    layout folder.
    """
    if not spec.synthetic:
        raise ValueError(f"{spec.name} is not a synthetic dataset")
    ids = [int(i) for i in (spec.scan_ids if scan_ids is None else scan_ids)]
    target = Path(out_root) / spec.layout
    if target.exists() and not _is_synthetic_folder(target):
        raise DataError(
            f"{target}: exists and is not a synthetic dataset written by {_GENERATOR}; not replacing"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset should be readable like any folder
        scans = []
        for scan_id in ids:
            image, label, spacing = generate_volume(spec, scan_id, seed, in_plane, n_slices)
            _save_nifti(image, spacing, staging / f"image_{scan_id}.nii.gz")
            _save_nifti(label, spacing, staging / f"label_{scan_id}.nii.gz")
            scans.append({"scan_id": scan_id, "shape": list(image.shape), "spacing": list(spacing)})
        manifest = {
            "generator": _GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "dataset": spec.name,
            "seed": seed,
            "in_plane": in_plane,
            "n_slices": n_slices,
            "scan_ids": ids,
            "scans": scans,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target

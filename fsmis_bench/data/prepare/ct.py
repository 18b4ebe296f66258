"""abd_ct: Synapse / BTCV ``RawData/Training`` HU volumes -> ``SABS/sabs_CT_normalized`` (protocol §1.3).

Recipe (reference: SSL-ALPNet ``data/SABS/intensity_normalization.ipynb`` + ``resampling_and_roi.ipynb``):

1. clip HU to [-125, 275], then min-max rescale the volume to [0, 255] (float);
2. crop 32 voxels from each in-plane border (512x512 -> 448x448; z untouched);
3. resample in-plane only, spacing x 1.75, image linear, label per id (linear + rint, ascending ids);
   output size ``int(size * ratio + 1)`` on every axis as in the reference: 256 or 257 in-plane (257 when
   the ratio is exact in floating point) and Z + 1 slices, the voxels past the input end being 0 (the
   original Z slices keep their values and positions; the loader crops to 256x256 at load time);
4. scan ids 0..29 by the lexical order of the 30 labelled cases (case = k + 1 for k < 10, k + 11 after),
   written to ``id_mapping.json`` and the manifest.

Deviations from the reference, none changing a voxel value: the origin is moved by the crop (the reference
keeps the uncropped origin), the image is stored as float32 (float64 in the reference; the benchmark reads
float32) and the label as uint8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from fsmis_bench.data.datasets import ABD_CT, SYNAPSE_LABEL_NAMES
from fsmis_bench.data.prepare.common import Geometry, resample, resample_label, sitk, to_image
from fsmis_bench.data.prepare.pipeline import Prepared, ScanJob, run_recipe
from fsmis_bench.errors import DataError

RECIPE_VERSION = "abd_ct/1"
#: The 30 labelled Synapse training cases; 0011-0020 and 0041-0060 do not exist, 0061-0080 are unlabelled.
SYNAPSE_CASES: tuple[int, ...] = (*range(1, 11), *range(21, 41))
HU_WINDOW = (-125.0, 275.0)
BORDER = 32
IN_PLANE = 512
SPACING_FACTOR = (IN_PLANE - 2 * BORDER) / 256  # 1.75
ID_MAPPING_NAME = "id_mapping.json"

_CASE_FILE = re.compile(r"^(img|label)(\d{4})\.nii(\.gz)?$")


def scan_id_of_case(case: int) -> int:
    """Scan id k of a labelled Synapse case: its position in the sorted list of the 30 cases."""
    return SYNAPSE_CASES.index(case)


def find_training_dir(raw: Path) -> Path:
    """``RawData/Training`` under ``raw`` (``raw`` may also be ``RawData`` or ``Training`` itself)."""
    for candidate in (raw / "RawData" / "Training", raw / "Training", raw):
        if (candidate / "img").is_dir():
            return candidate
    raise DataError(
        f"{raw}: no RawData/Training/img folder (expected the unzipped Synapse RawData.zip: "
        "RawData/Training/img/img00NN.nii.gz and RawData/Training/label/label00NN.nii.gz)"
    )


def _case_files(folder: Path, kind: str) -> dict[int, Path]:
    files = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = _CASE_FILE.match(path.name)
        if match and match.group(1) == kind:
            files[int(match.group(2))] = path
    return files


def discover_cases(training: Path, cases: Sequence[int]) -> list[tuple[int, Path, Path]]:
    """(case, image, label) of every requested case; unlabelled, unknown or missing cases are errors."""
    images = _case_files(training / "img", "img")
    labels = _case_files(training / "label", "label")
    foreign = sorted(set(images) - set(SYNAPSE_CASES))
    if foreign:
        names = ", ".join(images[c].name for c in foreign[:5])
        raise DataError(
            f"{training / 'img'}: {names} not among the 30 labelled Synapse cases 0001-0010, 0021-0040 "
            "(unlabelled test cases, e.g. from RawData/Testing, must not be used)"
        )
    missing = [c for c in cases if c not in images]
    if missing:
        raise DataError(
            f"{training / 'img'}: missing {len(missing)} of the {len(cases)} labelled cases: "
            + ", ".join(f"img{c:04d}.nii.gz" for c in missing)
        )
    unlabelled = [c for c in cases if c not in labels]
    if unlabelled:
        raise DataError(
            f"{training / 'label'}: missing label for image "
            + ", ".join(f"img{c:04d}.nii.gz (expected label{c:04d}.nii.gz)" for c in unlabelled)
        )
    return [(c, images[c], labels[c]) for c in sorted(cases)]


def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: cannot read NIfTI ({str(exc).strip().splitlines()[-1]})") from exc


def preprocess_case(image_path: Path, label_path: Path) -> Prepared:
    """HU window and min-max, 32-voxel border crop, in-plane resampling by 1.75 (protocol §1.3)."""
    image = _read(image_path)
    hu = sitk.GetArrayFromImage(image).astype(np.float64)
    label = sitk.GetArrayFromImage(_read(label_path))
    if hu.ndim != 3 or hu.shape[1:] != (IN_PLANE, IN_PLANE):
        raise DataError(f"{image_path}: expected a {IN_PLANE}x{IN_PLANE}xZ volume, got (Z, H, W) {hu.shape}")
    if label.shape != hu.shape:
        raise DataError(f"{label_path}: label shape {label.shape} does not match image shape {hu.shape}")
    unknown = sorted(set(np.unique(label).tolist()) - {0, *SYNAPSE_LABEL_NAMES})
    if unknown:
        raise DataError(f"{label_path}: unknown label values {unknown} (Synapse ids are 0..13)")
    windowed = np.clip(hu, *HU_WINDOW)
    low, high = windowed.min(), windowed.max()
    if high <= low:
        raise DataError(f"{image_path}: constant image after the HU window {HU_WINDOW}")
    windowed = (windowed - low) / (high - low) * 255.0

    crop = (slice(None), slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    corner = image.TransformIndexToPhysicalPoint((BORDER, BORDER, 0))
    cropped = Geometry(tuple(image.GetSpacing()), corner, tuple(image.GetDirection()))
    sx, sy, sz = cropped.spacing
    new_spacing = (sx * SPACING_FACTOR, sy * SPACING_FACTOR, sz)
    resampled = resample(to_image(windowed[crop], cropped), new_spacing)
    return Prepared(
        image=sitk.GetArrayFromImage(resampled),
        label=resample_label(label[crop], cropped, new_spacing),
        geometry=Geometry.of(resampled),
    )


def prepare(raw: Path, out: Path, *, superpixels: bool = True, cases: Sequence[int] = SYNAPSE_CASES) -> Path:
    """Prepare abd_ct from the Synapse download; ``cases`` (a subset of the 30) exists for tests only."""
    raw = Path(raw).expanduser().resolve()
    training = find_training_dir(raw)
    jobs = [
        ScanJob(
            scan_id=scan_id_of_case(case),
            source=f"img{case:04d}",
            inputs=(image, label),
            build=partial(preprocess_case, image, label),
        )
        for case, image, label in discover_cases(training, cases)
    ]
    mapping = {str(job.scan_id): job.source for job in jobs}
    layout_dir = run_recipe(
        ABD_CT,
        Path(out),
        raw,
        jobs,
        recipe_version=RECIPE_VERSION,
        superpixels=superpixels,
        id_mapping=mapping,
    )
    _write_id_mapping(layout_dir, jobs)
    return layout_dir


def _write_id_mapping(layout_dir: Path, jobs: Sequence[ScanJob]) -> None:
    """``id_mapping.json``: scan id k <-> Synapse case, in both directions; rewritten only when it changes."""
    mapping = {
        "scan_id_to_case": {str(j.scan_id): j.source.removeprefix("img") for j in jobs},
        "case_to_scan_id": {j.source.removeprefix("img"): j.scan_id for j in jobs},
    }
    path = layout_dir / ID_MAPPING_NAME
    text = json.dumps(mapping, indent=1) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text)

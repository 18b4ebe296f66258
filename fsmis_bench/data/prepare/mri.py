"""abd_mri: CHAOS ``Train_Sets/MR/<pid>/T2SPIR`` -> ``CHAOST2/chaos_MR_T2_normalized`` (protocol §1.4).

Recipe (reference: SSL-ALPNet ``data/CHAOST2/dcm_img_to_nii.sh``, ``png_gth_to_nii.ipynb``,
``image_normalize.ipynb``):

1. DICOM slices -> volume (read with SimpleITK here, legacy dcm2nii in the reference; see *Orientation*);
2. ground truth: PNGs sorted by the integer after the last '-', stacked on a new first axis, rows flipped
   (axis 1), grey values 0/63/126/189/252 mapped to 0..4 (any other value is an error), image geometry;
3. clip above the volume's 99.5th percentile (assigned in the image's pixel type, as the reference does);
4. resample to 1.25 x 1.25 x 7.70 mm, image linear in its pixel type, label per id (linear + rint), with
   the reference output size ``int(size * ratio + 1)`` (e.g. 36 slices at 7.7 mm give 37; protocol §1.4);
5. centre crop / pad in-plane to 256 x 256 around index ``n // 2`` (image padded with its minimum, label
   with 0); no N4. The image is stored as float32 (integer values, so exact), the label as uint8.

Orientation (protocol pitfall 8). The output array is (Z, H, W) with

* axis 0: slices in ascending position along the slice normal, i.e. inferior -> superior for CHAOS's
  axial series, which puts the kidneys below the liver as in the protocol's sanity table;
* axis 1: DICOM rows reversed (bottom row first: posterior -> anterior for a standard axial series);
* axis 2: DICOM columns as stored (patient right -> left).

That is the voxel order of legacy dcm2nii, which stores DICOM rows bottom-up; it is why the reference flips
only the PNG rows (axis 1): the PNGs are drawn in DICOM row order. For a standard axial series the result is
LAS (direction diag(1, -1, 1) in SimpleITK's LPS), as in the published preprocessed CHAOS volumes
(ZJLAB-AMMI/Q-Net), whose headers and organ positions (liver at low column indices, kidneys at lower slice
indices than the liver) agree with this convention. The flip is applied to image and label
alike and the geometry is updated (origin at the old last row, second direction column negated), so
world coordinates stay correct. Each PNG is paired with the DICOM file carrying the same number after the
last '-' (CHAOS names both ``IMG-<series>-<number>``), so the label follows its slice even when file
numbers run against the slice positions; where they run along them this equals the reference's stacking.
Whether dcm2nii's slice order (and float32 z spacing) matches ours for every CHAOS patient can only be
checked on the real download: the sanity table of protocol §1.4 (Z and per-organ slice ranges) is that check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fsmis_bench.data.datasets import ABD_MRI, CHAOS_PATIENT_IDS
from fsmis_bench.data.prepare.common import Geometry, resample, resample_label, sitk, to_image
from fsmis_bench.data.prepare.pipeline import Prepared, ScanJob, run_recipe
from fsmis_bench.errors import DataError

RECIPE_VERSION = "abd_mri/1"
GREY_TO_LABEL = {0: 0, 63: 1, 126: 2, 189: 3, 252: 4}
TARGET_SPACING = (1.25, 1.25, 7.70)  # (x, y, z) mm
CROP = 256
CLIP_PERCENTILE = 99.5

_NUMBER = re.compile(r"-(\d+)$")


def find_mr_dir(raw: Path) -> Path:
    """The CHAOS ``MR`` folder: ``raw/Train_Sets/MR``, ``raw/MR`` or ``raw`` itself."""
    for candidate in (raw / "Train_Sets" / "MR", raw / "MR", raw):
        if any(candidate.glob("[0-9]*/T2SPIR")):
            return candidate
    raise DataError(
        f"{raw}: no MR/<pid>/T2SPIR folders (expected the unzipped CHAOS_Train_Sets.zip: "
        "Train_Sets/MR/<pid>/T2SPIR/DICOM_anon/*.dcm and .../T2SPIR/Ground/*.png)"
    )


def discover_patients(mr_dir: Path, patients: Sequence[int]) -> list[tuple[int, Path]]:
    """(pid, T2SPIR folder) of every requested patient; foreign or missing patients are errors."""
    found = {int(p.name): p for p in mr_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    foreign = sorted(set(found) - set(CHAOS_PATIENT_IDS))
    if foreign:
        raise DataError(
            f"{mr_dir}: patients {foreign} are not among the 20 CHAOS training patients "
            "(is this Test_Sets/MR? only Train_Sets has ground truth)"
        )
    missing = [pid for pid in patients if not (mr_dir / str(pid) / "T2SPIR").is_dir()]
    if missing:
        raise DataError(f"{mr_dir}: missing T2SPIR folder of patients {missing} (expected MR/<pid>/T2SPIR)")
    return [(pid, mr_dir / str(pid) / "T2SPIR") for pid in sorted(patients)]


def slice_number(path: Path) -> int:
    """The integer after the last '-' of a CHAOS file name (``IMG-0002-00012.png`` -> 12)."""
    match = _NUMBER.search(path.name.split(".")[0])
    if match is None:
        raise DataError(f"{path}: no slice number after the last '-' (expected IMG-<series>-<number>)")
    return int(match.group(1))


@dataclass(frozen=True)
class DicomSeries:
    """The slices of one T2-SPIR series, sorted by position along the slice normal, and their grid."""

    files: tuple[Path, ...]
    geometry: Geometry


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable DICOM file ({str(exc).strip().splitlines()[-1]})") from exc
    return reader


def scan_dicom_series(dicom_dir: Path) -> DicomSeries:
    """Headers of every ``*.dcm`` in the folder -> slice order and grid (pixel data is read later).

    Files are grouped by folder, not by SeriesInstanceUID (anonymised CHAOS files may not share one); the
    slices must agree in size and orientation and be evenly spaced, else the folder mixes series. The z
    spacing is the distance between the first two slices, and all spacings are rounded to float32 as in
    the NIfTI header the reference resampled from (the ``int(size * ratio + 1)`` slice count of a scan
    whose spacing is within float noise of 7.7 mm depends on it).
    """
    if not dicom_dir.is_dir():
        raise DataError(f"{dicom_dir}: missing DICOM series folder")
    headers = {path: _header(path) for path in sorted(dicom_dir.glob("*.dcm"))}
    if len(headers) < 2:
        raise DataError(
            f"{dicom_dir}: no DICOM series found ({len(headers)} *.dcm file(s), need >= 2 slices)"
        )
    first = next(iter(headers.values()))
    direction = np.array(first.GetDirection()).reshape(3, 3)
    for path, header in headers.items():
        if header.GetSize()[:2] != first.GetSize()[:2] or not np.allclose(
            header.GetDirection(), first.GetDirection(), atol=1e-4
        ):
            raise DataError(
                f"{path}: slice size or orientation differs from the other slices (mixed series?)"
            )
    position = {path: float(np.dot(header.GetOrigin(), direction[:, 2])) for path, header in headers.items()}
    files = sorted(headers, key=position.__getitem__)
    steps = np.diff([position[f] for f in files])
    if steps[0] <= 0 or not np.allclose(steps, steps[0], rtol=0.01, atol=1e-3):
        raise DataError(
            f"{dicom_dir}: slices are not evenly spaced along the normal (steps {steps.round(3)} mm)"
        )
    sx, sy = first.GetSpacing()[:2]
    geometry = Geometry(
        tuple(float(np.float32(v)) for v in (sx, sy, steps[0])),
        tuple(headers[files[0]].GetOrigin()),
        tuple(float(v) for v in direction.ravel()),
    )
    return DicomSeries(tuple(files), geometry)


def read_dicom_volume(series: DicomSeries) -> sitk.Image:
    """The series' pixel data stacked in slice order on its grid."""
    slices = []
    for path in series.files:
        try:
            slices.append(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0])
        except RuntimeError as exc:
            raise DataError(
                f"{path}: cannot read DICOM pixel data ({str(exc).strip().splitlines()[-1]})"
            ) from exc
    return to_image(np.stack(slices), series.geometry)


def pair_ground_truth(ground_dir: Path, dicom_files: Sequence[Path]) -> list[Path]:
    """The PNG mask of every DICOM file (same number after the last '-'), in the order of ``dicom_files``."""
    if not ground_dir.is_dir():
        raise DataError(f"{ground_dir}: missing ground-truth folder (label PNGs) for {dicom_files[0].parent}")
    pngs = sorted(ground_dir.glob("*.png"), key=slice_number)
    if len(pngs) != len(dicom_files):
        raise DataError(
            f"{ground_dir}: {len(pngs)} PNG masks for {len(dicom_files)} DICOM slices "
            f"in {dicom_files[0].parent}"
        )
    by_number = {slice_number(p): p for p in pngs}
    missing = [d for d in dicom_files if slice_number(d) not in by_number]
    if missing:
        raise DataError(
            f"{missing[0]}: missing label (no PNG numbered {slice_number(missing[0])} in {ground_dir})"
        )
    return [by_number[slice_number(d)] for d in dicom_files]


def read_ground_truth(pngs: Sequence[Path], shape: tuple[int, int]) -> np.ndarray:
    """Stack the PNG masks on a new first axis and map the grey values 0/63/126/189/252 to 0..4."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(GREY_TO_LABEL)] = list(GREY_TO_LABEL.values())
    slices = []
    for png in pngs:
        try:
            grey = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))
        except RuntimeError as exc:
            raise DataError(f"{png}: cannot read PNG ({str(exc).strip().splitlines()[-1]})") from exc
        if grey.shape != shape:
            raise DataError(f"{png}: mask shape {grey.shape} does not match the DICOM slice shape {shape}")
        unknown = sorted(set(np.unique(grey).tolist()) - set(GREY_TO_LABEL))
        if unknown:
            raise DataError(f"{png}: unknown grey values {unknown} (expected {sorted(GREY_TO_LABEL)})")
        slices.append(lut[grey])
    return np.stack(slices)


def flip_rows(image: sitk.Image) -> Geometry:
    """Geometry of ``image`` after reversing its rows (axis 1 of the array), world positions preserved."""
    direction = list(image.GetDirection())
    direction[1::3] = [-d for d in direction[1::3]]
    last_row = image.TransformIndexToPhysicalPoint((0, image.GetSize()[1] - 1, 0))
    return Geometry(tuple(image.GetSpacing()), last_row, tuple(direction))


def centre_crop_or_pad(volume: np.ndarray, size: int, pad: float) -> tuple[np.ndarray, tuple[int, int]]:
    """In-plane crop/pad of (Z, H, W) to size x size around ``n // 2``; also returns the (row, col) offset."""
    offsets = (volume.shape[1] // 2 - size // 2, volume.shape[2] // 2 - size // 2)
    out = np.full((volume.shape[0], size, size), pad, dtype=volume.dtype)
    src, dst = [slice(None)], [slice(None)]
    for n, offset in zip(volume.shape[1:], offsets):
        lo, hi = max(0, offset), min(n, offset + size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - offset, hi - offset))
    out[tuple(dst)] = volume[tuple(src)]
    return out, offsets


def preprocess_patient(series: DicomSeries, pngs: Sequence[Path]) -> Prepared:
    """DICOM series + PNG masks of one patient -> clipped, resampled, 256 x 256 image and label."""
    image = read_dicom_volume(series)
    array = sitk.GetArrayFromImage(image)[:, ::-1, :]
    label = read_ground_truth(pngs, array.shape[1:])[:, ::-1, :]
    geometry = flip_rows(image)

    clipped = array.copy()
    ceiling = float(np.percentile(array, CLIP_PERCENTILE))
    clipped[clipped > ceiling] = ceiling  # cast to the pixel type, as the reference's in-place assignment
    resampled = resample(to_image(clipped, geometry), TARGET_SPACING)
    res_image = sitk.GetArrayFromImage(resampled)
    out_image, (row, col) = centre_crop_or_pad(res_image, CROP, pad=res_image.min())
    out_label, _ = centre_crop_or_pad(resample_label(label, geometry, TARGET_SPACING), CROP, pad=0)
    origin = resampled.TransformContinuousIndexToPhysicalPoint((float(col), float(row), 0.0))
    return Prepared(
        image=out_image,
        label=out_label,
        geometry=Geometry(tuple(resampled.GetSpacing()), origin, tuple(resampled.GetDirection())),
    )


def prepare(
    raw: Path, out: Path, *, superpixels: bool = True, patients: Sequence[int] = CHAOS_PATIENT_IDS
) -> Path:
    """Prepare abd_mri from the CHAOS download; ``patients`` (a subset of the 20) exists for tests only."""
    raw = Path(raw).expanduser().resolve()
    jobs = []
    for pid, t2spir in discover_patients(find_mr_dir(raw), patients):
        series = scan_dicom_series(t2spir / "DICOM_anon")
        pngs = pair_ground_truth(t2spir / "Ground", series.files)
        build = partial(preprocess_patient, series, pngs)
        jobs.append(ScanJob(pid, t2spir.relative_to(raw).as_posix(), (*series.files, *pngs), build))
    mapping = {str(job.scan_id): job.source for job in jobs}
    return run_recipe(
        ABD_MRI,
        Path(out),
        raw,
        jobs,
        recipe_version=RECIPE_VERSION,
        superpixels=superpixels,
        id_mapping=mapping,
    )

"""Reading preprocessed NIfTI volumes of the SSL-ALPNet layout (protocol §1.2) with validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from fsmis_bench.data.datasets import DatasetSpec
from fsmis_bench.errors import DataError

_SCAN_ID = re.compile(r"^image_(\d+)\.nii(\.gz)?$")


@dataclass
class Volume:
    """One preprocessed scan in (Z, H, W) axis order (SimpleITK order; axial slices on the first axis)."""

    scan_id: int
    image: np.ndarray  # float32 (Z, H, W), un-normalised intensities
    label: np.ndarray  # uint8 (Z, H, W), raw dataset label ids
    spacing: tuple[float, float, float]  # (sz, sy, sx) in mm
    image_path: Path
    label_path: Path


def resolve_layout_dir(spec: DatasetSpec, data_root: str | Path) -> Path:
    """Accept either the folder holding ``image_<id>.nii.gz`` or a root holding the dataset's layout."""
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataError(
            f"{root}: data folder does not exist (expected {spec.name} in layout '{spec.layout}')"
        )
    if any(root.glob("image_*.nii*")):
        return root
    candidate = root / spec.layout
    if candidate.is_dir() and any(candidate.glob("image_*.nii*")):
        return candidate
    raise DataError(
        f"{root}: no image_<id>.nii.gz files here or under {spec.layout}/ "
        f"(--data-root must point at the folder holding image_<id>.nii.gz / label_<id>.nii.gz)"
    )


def discover_scan_ids(layout_dir: Path) -> list[int]:
    """Scan ids present in a folder, paired by the integer after the last underscore (never by position)."""
    ids = []
    for path in layout_dir.iterdir():
        match = _SCAN_ID.match(path.name)
        if match:
            ids.append(int(match.group(1)))
    return sorted(ids)


def scan_paths(layout_dir: Path, scan_id: int) -> tuple[Path, Path]:
    """Image and label file of one scan; a missing file is an error naming it."""
    paths = []
    for kind in ("image", "label"):
        for suffix in (".nii.gz", ".nii"):
            path = layout_dir / f"{kind}_{scan_id}{suffix}"
            if path.exists():
                paths.append(path)
                break
        else:
            raise DataError(f"{layout_dir / f'{kind}_{scan_id}.nii.gz'}: file is missing")
    return paths[0], paths[1]


def _written_spacing(path: Path) -> tuple[float, ...]:
    """The spatial voxel sizes as the NIfTI header holds them; empty where the file is no NIfTI header.

    ``nib.load`` replaces a zero size by 1 mm and a negative one by its absolute value (and logs it): a wrong
    spacing that silently changes every HD95, so the sizes are read before nibabel repairs them.
    """
    with ImageOpener(path) as fileobj:
        block = fileobj.read(nib.Nifti2Header.template_dtype.itemsize)
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        size = header_class.template_dtype.itemsize
        header = header_class(block[:size], check=False) if len(block) >= size else None
        if header is not None and int(header["sizeof_hdr"]) == size:
            n_spatial = min(max(int(header["dim"][0]), 0), 3)
            return tuple(float(z) for z in header["pixdim"][1 : 1 + n_spatial])
    return ()


def _load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    try:
        written = _written_spacing(path)
        if not all(np.isfinite(z) and z > 0 for z in written):
            sizes = ", ".join(f"{z:g}" for z in written)
            raise DataError(f"{path}: voxel spacing (x, y, z) = ({sizes}) mm in the header; each must be > 0")
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        zooms = img.header.get_zooms()
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types for truncated or foreign files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    # nibabel gives (X, Y, Z); SimpleITK's array order, used by the protocol, is (Z, Y, X).
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return array, spacing


def read_volume(spec: DatasetSpec, layout_dir: Path, scan_id: int) -> Volume:
    """Read and validate one scan: shape agreement, finite intensities, known integer label ids."""
    image_path, label_path = scan_paths(layout_dir, scan_id)
    image, spacing = _load_nifti(image_path)
    label, _ = _load_nifti(label_path)
    if image.shape != label.shape:
        raise DataError(f"{label_path}: label shape {label.shape} does not match image shape {image.shape}")
    if not np.isfinite(image).all():
        raise DataError(f"{image_path}: image contains NaN or infinite values")
    label_ids = np.unique(label)
    if not np.array_equal(label_ids, np.round(label_ids)):
        raise DataError(f"{label_path}: label volume holds non-integer values")
    unknown = sorted(set(label_ids.astype(int).tolist()) - {0, *spec.label_names})
    if unknown:
        raise DataError(
            f"{label_path}: unknown label ids {unknown} for {spec.name} (known: {sorted(spec.label_names)})"
        )
    if spec.crop_256:
        image, label = image[:, :256, :256], label[:, :256, :256]
    return Volume(
        scan_id=scan_id,
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=np.ascontiguousarray(label, dtype=np.uint8),
        spacing=spacing,
        image_path=image_path,
        label_path=label_path,
    )

"""Pseudolabel and index files of the prepared layout: superpixels, body masks, supervoxels, class map.

* ``superpix-MIDDLE_<id>.nii.gz`` / ``fgmask_<id>.nii.gz``: 2-D superpixels and body mask of protocol §2.1,
  from :func:`fsmis_bench.data.superpixels.superpixel_volume` on the stored (un-z-scored) image.
* ``../supervoxels_5000/superpix-MIDDLE_<id>.nii.gz``: 3-D supervoxels of protocol §2.2
  (:mod:`fsmis_bench.data.prepare.supervoxels`).
* ``classmap_1.json``: protocol §1.7, nested ``{"<label id>": {"<scan id>": [slice, ...]}}`` (the nesting
  of the reference, class then scan, with integer ids as keys instead of organ names). Every label id of the
  dataset vocabulary and every scan appear, with an empty list where the label is absent; slices are the
  sorted 0-based indices along the first (axial) axis holding at least one pixel of the label. Background
  (0) is not listed.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from fsmis_bench.data.datasets import DatasetSpec
from fsmis_bench.data.prepare.common import Geometry, write_nifti
from fsmis_bench.data.prepare.supervoxels import SUPERVOXEL_MIN_SIZE, supervoxel_volume
from fsmis_bench.data.superpixels import superpixel_volume
from fsmis_bench.errors import DataError

CLASSMAP_NAME = "classmap_1.json"


def write_pseudolabels(
    spec: DatasetSpec, image: np.ndarray, geometry: Geometry, layout_dir: Path, scan_id: int
) -> list[Path]:
    """Write the 2-D superpixels, the body mask and the 3-D supervoxels of one scan; return their paths."""
    segments, body = superpixel_volume(image, spec.body_threshold)
    superpix = layout_dir / f"superpix-MIDDLE_{scan_id}.nii.gz"
    fgmask = layout_dir / f"fgmask_{scan_id}.nii.gz"
    write_nifti(segments.astype(np.int32), geometry, superpix)
    write_nifti(body.astype(np.uint8), geometry, fgmask)
    sv_dir = layout_dir.parent / f"supervoxels_{SUPERVOXEL_MIN_SIZE}"
    sv_dir.mkdir(exist_ok=True)
    supervoxels = sv_dir / f"superpix-MIDDLE_{scan_id}.nii.gz"
    spacing_zyx = geometry.spacing[::-1]
    write_nifti(supervoxel_volume(image, spacing_zyx), geometry, supervoxels)
    return [superpix, fgmask, supervoxels]


def slices_with_label(label: np.ndarray, label_id: int) -> list[int]:
    """Sorted indices of the (Z, H, W) label's axial slices holding at least one pixel of ``label_id``."""
    return np.flatnonzero((label == label_id).any(axis=(1, 2))).tolist()


def build_classmap(
    spec: DatasetSpec, layout_dir: Path, scan_ids: list[int]
) -> dict[str, dict[str, list[int]]]:
    """The class-slice index of the written label volumes (pixel-count rule, ``count >= 1``)."""
    classmap: dict[str, dict[str, list[int]]] = {str(c): {} for c in sorted(spec.label_names)}
    for scan_id in sorted(scan_ids):
        path = layout_dir / f"label_{scan_id}.nii.gz"
        try:
            label = np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)  # (X, Y, Z) -> (Z, Y, X)
        except Exception as exc:  # nibabel raises many types for missing or truncated files
            raise DataError(f"{path}: cannot read the label written by this run ({exc})") from exc
        for label_id, scans in classmap.items():
            scans[str(scan_id)] = slices_with_label(label, int(label_id))
    return classmap

"""Preparation of the benchmark datasets from their official downloads (``fsmis-bench prepare``).

Each preparer writes the SSL-ALPNet layout under ``out`` and returns the layout folder; rerunning skips the
scans whose inputs and outputs are unchanged (``manifest.json``). ``superpixels=False`` skips the
pseudolabels (2-D superpixels, body masks, 3-D supervoxels). Bad input raises ``DataError``. SimpleITK is
an optional extra (``pip install 'fsmis-bench[prepare]'``), so the recipes are imported on use; without it
a ``ConfigError`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def prepare_abd_ct(raw: Path, out: Path, *, superpixels: bool = True) -> Path:
    """Synapse BTCV ``RawData/Training`` under ``raw`` -> ``out/SABS/sabs_CT_normalized`` (returned)."""
    from fsmis_bench.data.prepare import ct

    return ct.prepare(Path(raw), Path(out), superpixels=superpixels)


def prepare_abd_mri(raw: Path, out: Path, *, superpixels: bool = True) -> Path:
    """CHAOS ``Train_Sets/MR`` under ``raw`` -> ``out/CHAOST2/chaos_MR_T2_normalized`` (returned)."""
    from fsmis_bench.data.prepare import mri

    return mri.prepare(Path(raw), Path(out), superpixels=superpixels)


#: Dataset name -> preparer, for ``fsmis-bench prepare <dataset> --raw DIR --out DIR``.
PREPARERS: dict[str, Callable[..., Path]] = {"abd_ct": prepare_abd_ct, "abd_mri": prepare_abd_mri}

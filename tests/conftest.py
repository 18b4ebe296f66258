"""Shared fixtures: the real CHAOS folder when present, and tiny synthetic datasets written per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Sweeps run by the tests lease their cores in a folder of their own, not beside the host's real sweeps.
os.environ.setdefault("FSMIS_BENCH_LEASES", tempfile.mkdtemp(prefix="fsmis_bench_leases_"))

REPO = Path(__file__).resolve().parents[1]
CHAOS_DIR = Path(
    os.environ.get("FSMIS_CHAOS_DIR", REPO.parent / "shared" / "data" / "CHAOST2" / "chaos_MR_T2_normalized")
)


@pytest.fixture(scope="session")
def chaos_dir() -> Path:
    """The real preprocessed CHAOS T2-SPIR folder; tests using it skip cleanly where it is absent."""
    if not (CHAOS_DIR / "label_1.nii.gz").exists():
        pytest.skip(f"real CHAOS data not found at {CHAOS_DIR}")
    return CHAOS_DIR


@pytest.fixture(scope="session")
def tiny_mri_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic_mri dataset (64x64 slices, 16 per scan) in the abd_mri layout."""
    from fsmis_bench.data.datasets import SYNTHETIC_MRI
    from fsmis_bench.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_mri")
    return write_synthetic_dataset(SYNTHETIC_MRI, root, seed=0, in_plane=64, n_slices=16)


@pytest.fixture(scope="session")
def tiny_ct_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic_ct dataset (64x64 slices, 16 per scan) in the abd_ct layout."""
    from fsmis_bench.data.datasets import SYNTHETIC_CT
    from fsmis_bench.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_ct")
    return write_synthetic_dataset(SYNTHETIC_CT, root, seed=0, in_plane=64, n_slices=16)


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def chaos_labels(chaos_dir: Path) -> dict[int, object]:
    """Native (Z, H, W) label volumes of the 20 real CHAOS patients, keyed by patient id."""
    import nibabel as nib
    import numpy as np

    from fsmis_bench.data.datasets import ABD_MRI

    labels = {}
    for pid in ABD_MRI.scan_ids:
        data = np.asarray(nib.load(str(chaos_dir / f"label_{pid}.nii.gz")).dataobj)
        labels[pid] = data.transpose(2, 1, 0).astype(np.uint8)
    return labels

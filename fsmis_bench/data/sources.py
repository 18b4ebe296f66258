"""Where a dataset's files are: a user's ``--data-root``, or the generated synthetic default."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from fsmis_bench.data.datasets import DatasetSpec
from fsmis_bench.data.volumes import resolve_layout_dir
from fsmis_bench.errors import DataError

#: Seed of the embedded synthetic datasets; fixed so every user gets the same volumes.
SYNTHETIC_SEED = 0


def locate_dataset(spec: DatasetSpec, data_root: str | Path | None, cache_dir: Path) -> Path:
    """The folder holding ``image_<id>.nii.gz`` / ``label_<id>.nii.gz``; synthetic data is generated once."""
    if data_root is not None:
        return resolve_layout_dir(spec, data_root)
    if not spec.synthetic:
        raise DataError(
            f"--data-root is required for {spec.name}: point it at the folder holding image_<id>.nii.gz "
            f"and label_<id>.nii.gz ({spec.reference_data_hint}); fsmis-bench never downloads data"
        )
    from fsmis_bench.data.synthetic import GENERATOR_VERSION, write_synthetic_dataset

    root = cache_dir / "synthetic" / f"{spec.name}-g{GENERATOR_VERSION}-seed{SYNTHETIC_SEED}"
    layout_dir = root / spec.layout
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (layout_dir / "manifest.json").exists():
            write_synthetic_dataset(spec, root, seed=SYNTHETIC_SEED)
    return layout_dir

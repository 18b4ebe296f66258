"""Run a preparation recipe scan by scan under a manifest, so reruns skip unchanged scans.

``manifest.json`` (in the layout folder) records the recipe version, the options, and per scan the source,
the SHA-256 of every raw input (paths relative to the raw root), the output shape and spacing and the
SHA-256 of every output (paths relative to the dataset folder, e.g. ``SABS/``). A scan is recomputed when it
is new, the recipe or options changed, an input checksum changed, or an output is missing or modified;
``last_update`` says which scans were recomputed and why. A rerun with nothing to do leaves every file,
the manifest included, untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from fsmis_bench import __version__
from fsmis_bench.data.datasets import DatasetSpec
from fsmis_bench.data.prepare.common import Geometry, progress, sha256, write_nifti
from fsmis_bench.data.prepare.pseudolabels import CLASSMAP_NAME, build_classmap, write_pseudolabels
from fsmis_bench.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Prepared:
    """A preprocessed scan: un-normalised intensities (stored as float32) and label ids on one grid."""

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry


@dataclass(frozen=True)
class ScanJob:
    """One scan to prepare: its id in the layout, where it comes from, its raw files and its recipe."""

    scan_id: int
    source: str
    inputs: tuple[Path, ...]
    build: Callable[[], Prepared]


def _load_manifest(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        progress(f"{path}: unreadable manifest ({exc}); recomputing every scan")
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _stale_outputs(dataset_dir: Path, outputs: dict[str, str]) -> list[str]:
    """Recorded outputs that are missing or whose checksum differs from the record."""
    return [
        name
        for name, digest in outputs.items()
        if not (dataset_dir / name).is_file() or sha256(dataset_dir / name) != digest
    ]


def _reason(previous: dict | None, inputs: dict[str, str], dataset_dir: Path) -> str | None:
    """Why a scan must be recomputed, or None when its recorded outputs are still valid."""
    if previous is None:
        return "new scan"
    old_inputs = previous.get("inputs", {})
    changed = sorted(n for n in inputs.keys() | old_inputs.keys() if inputs.get(n) != old_inputs.get(n))
    if changed:
        shown = ", ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else "")
        return f"input changed: {shown}"
    stale = _stale_outputs(dataset_dir, previous.get("outputs", {}))
    if stale:
        return f"output missing or modified: {', '.join(stale)}"
    return None


def run_recipe(
    spec: DatasetSpec,
    out: Path,
    raw_root: Path,
    jobs: Sequence[ScanJob],
    *,
    recipe_version: str,
    superpixels: bool,
    id_mapping: dict[str, object],
) -> Path:
    """Prepare every job into ``out/<spec.layout>`` and keep the manifest and ``classmap_1.json`` current."""
    layout_dir = Path(out).expanduser() / spec.layout
    dataset_dir = layout_dir.parent
    try:
        layout_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{layout_dir}: cannot create the output folder ({exc})") from exc
    # One preparation at a time per output folder; the lock file stays (hidden) beside the layout folder.
    with FileLock(str(dataset_dir / f".{layout_dir.name}.lock")):
        return _run_locked(spec, layout_dir, raw_root, jobs, recipe_version, superpixels, id_mapping)


def _run_locked(
    spec: DatasetSpec,
    layout_dir: Path,
    raw_root: Path,
    jobs: Sequence[ScanJob],
    recipe_version: str,
    superpixels: bool,
    id_mapping: dict[str, object],
) -> Path:
    dataset_dir = layout_dir.parent
    manifest_path = layout_dir / MANIFEST_NAME
    old = _load_manifest(manifest_path)
    options = {"superpixels": superpixels}
    same_recipe = old.get("recipe_version") == recipe_version and old.get("options") == options
    old_scans = old.get("scans", {})
    valid = old_scans if same_recipe else {}
    manifest: dict = {
        "format": MANIFEST_FORMAT,
        "dataset": spec.name,
        "layout": spec.layout,
        "recipe_version": recipe_version,
        "options": options,
        "fsmis_bench_version": __version__,
        "id_mapping": id_mapping,
        # Valid old records first, so a manifest written mid-run still covers the scans not yet reached.
        "scans": {str(j.scan_id): valid[str(j.scan_id)] for j in jobs if str(j.scan_id) in valid},
        "classmap": old.get("classmap", {}) if same_recipe else {},
        "last_update": old.get("last_update", {}),
    }
    recomputed: dict[str, str] = {}
    for job in jobs:
        key = str(job.scan_id)
        inputs = {p.relative_to(raw_root).as_posix(): sha256(p) for p in job.inputs}
        if key in old_scans and not same_recipe:
            reason = f"recipe or options changed (was {old.get('recipe_version')}, {old.get('options')})"
        else:
            reason = _reason(valid.get(key), inputs, dataset_dir)
        if reason is None:
            progress(f"{spec.name} scan {key} ({job.source}): unchanged, skipped")
            continue
        progress(f"{spec.name} scan {key} ({job.source}): {reason}; preparing")
        for name in old_scans.get(key, {}).get("outputs", {}):
            (dataset_dir / name).unlink(missing_ok=True)
        manifest["scans"][key] = _prepare_scan(spec, job, inputs, layout_dir, superpixels)
        recomputed[key] = reason
        manifest["last_update"] = {"recomputed": dict(recomputed)}
        _write_json(manifest, manifest_path)  # after every scan: an interrupted run keeps finished scans

    classmap = manifest["classmap"]
    scan_set_changed = set(old_scans) != set(manifest["scans"])
    if recomputed or scan_set_changed or not classmap or _stale_outputs(dataset_dir, classmap):
        classmap_path = layout_dir / CLASSMAP_NAME
        _write_json(build_classmap(spec, layout_dir, [job.scan_id for job in jobs]), classmap_path)
        manifest["classmap"] = {classmap_path.relative_to(dataset_dir).as_posix(): sha256(classmap_path)}
        unchanged = [k for k in manifest["scans"] if k not in recomputed]
        manifest["last_update"] = {"recomputed": recomputed, "unchanged": unchanged}
        _write_json(manifest, manifest_path)
        progress(
            f"{spec.name}: prepared {len(recomputed)} of {len(jobs)} scans, manifest updated: {layout_dir}"
        )
    else:
        progress(f"{spec.name}: all {len(jobs)} scans unchanged, nothing to do: {layout_dir}")
    return layout_dir


def _prepare_scan(
    spec: DatasetSpec, job: ScanJob, inputs: dict[str, str], layout_dir: Path, superpixels: bool
) -> dict:
    """Build, write and checksum one scan's image, label and (optionally) pseudolabels."""
    prepared = job.build()
    dataset_dir = layout_dir.parent
    image_path = layout_dir / f"image_{job.scan_id}.nii.gz"
    label_path = layout_dir / f"label_{job.scan_id}.nii.gz"
    image = prepared.image.astype(np.float32)
    write_nifti(image, prepared.geometry, image_path)
    write_nifti(prepared.label.astype(np.uint8), prepared.geometry, label_path)
    paths = [image_path, label_path]
    if superpixels:
        paths += write_pseudolabels(spec, image, prepared.geometry, layout_dir, job.scan_id)
    sx, sy, sz = prepared.geometry.spacing
    return {
        "source": job.source,
        "inputs": inputs,
        "shape": list(image.shape),
        "spacing": [sz, sy, sx],
        "label_ids": sorted(int(v) for v in np.unique(prepared.label) if v != 0),
        "outputs": {p.relative_to(dataset_dir).as_posix(): sha256(p) for p in paths},
    }

"""Synthetic phantoms: determinism, label ids, anatomy, file round trip, atomic writes, non-trivial intensities."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from fsmis_bench.data import synthetic
from fsmis_bench.data.datasets import ABD_MRI, SYNTHETIC_CT, SYNTHETIC_MRI, get_dataset
from fsmis_bench.data.superpixels import superpixel_volume
from fsmis_bench.data.synthetic import GENERATOR_VERSION, generate_volume, write_synthetic_dataset
from fsmis_bench.data.volumes import discover_scan_ids, read_volume
from fsmis_bench.errors import DataError

SPECS = [SYNTHETIC_CT, SYNTHETIC_MRI]
SMALL = {"in_plane": 64, "n_slices": 16}


@cache
def _volume(name: str, scan_id: int, in_plane: int = 64, n_slices: int | None = 16):
    """Volumes are shared between tests (generation dominates the run time)."""
    return generate_volume(get_dataset(name), scan_id, in_plane=in_plane, n_slices=n_slices)


def _organ_slices(label: np.ndarray, label_id: int) -> np.ndarray:
    return np.nonzero((label == label_id).any(axis=(1, 2)))[0]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_types_shapes_and_spacing(spec):
    image, label, spacing = _volume(spec.name, spec.scan_ids[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == (16, 64, 64)
    sz, sy, sx = spacing
    assert sy == sx
    # The field of view is kept when the grid is coarser: 64 pixels cover what 256 cover at full size.
    if spec.modality == "ct":
        assert 4.8 <= sy <= 6.2
    else:
        assert sy == pytest.approx(5.0)
    native_image, _, native_spacing = generate_volume(spec, spec.scan_ids[0], in_plane=32)
    assert native_spacing[0] == pytest.approx(5.0 if spec.modality == "ct" else 7.7, rel=1e-6)
    assert sz * 16 == pytest.approx(native_spacing[0] * native_image.shape[0], rel=1e-5)  # same z coverage
    assert np.isfinite(image).all()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_deterministic_in_seed_and_scan(spec):
    first, second = spec.scan_ids[:2]
    image, label, spacing = _volume(spec.name, first)
    again = generate_volume(spec, first, **SMALL)
    assert np.array_equal(image, again[0]) and np.array_equal(label, again[1]) and spacing == again[2]
    other_scan = _volume(spec.name, second)
    other_seed = generate_volume(spec, first, seed=1, **SMALL)
    for other in (other_scan, other_seed):
        assert not np.array_equal(label, other[1])
        assert not np.array_equal(image, other[0])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_label_ids_and_benchmark_organs_in_every_scan(spec):
    seen: set[int] = set()
    for scan_id in spec.scan_ids:
        label = _volume(spec.name, scan_id)[1]
        ids = set(np.unique(label).tolist())
        assert ids <= {0, *spec.label_names}, f"scan {scan_id}: unexpected ids {ids}"
        for organ, label_id in spec.organ_label.items():
            assert len(_organ_slices(label, label_id)) >= 4, f"scan {scan_id}: {organ} on too few slices"
        seen |= ids
    expected = {0, 1, 2, 3, 4, 6, 7, 8, 11} if spec.modality == "ct" else {0, 1, 2, 3, 4}
    assert expected <= seen


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_anatomy_extent_orientation_and_background(spec):
    """At the native slice count: organ extents, radiological orientation as in the real CHAOS volumes."""
    image, label, _ = _volume(spec.name, spec.scan_ids[2], 128, None)
    lab = spec.organ_label
    extent = {organ: _organ_slices(label, lab[organ]) for organ in lab}
    if spec.modality == "mri":
        assert 30 <= image.shape[0] <= 46
        assert 18 <= len(extent["liver"]) <= 32 and 9 <= len(extent["spleen"]) <= 20
        assert all(10 <= len(extent[k]) <= 20 for k in ("kidney_left", "kidney_right"))
    else:
        assert 40 <= image.shape[0] <= 60
    for organ, slices in extent.items():
        middle = label[slices[len(slices) // 2]] == lab[organ]
        assert len(slices) >= 6 and middle.sum() * 4 >= 300, organ  # x4: pixel count at in_plane=256
    centroid = {organ: np.argwhere(label == lab[organ]).mean(axis=0) for organ in lab}  # (z, row, col)
    width = label.shape[2]
    assert centroid["liver"][2] < width / 2 < centroid["spleen"][2]
    assert centroid["kidney_right"][2] < width / 2 < centroid["kidney_left"][2]
    for kidney in ("kidney_left", "kidney_right"):
        assert centroid[kidney][1] < centroid["liver"][1]  # posterior = toward row 0
        assert extent[kidney].max() < extent["liver"].max()  # liver dome above the kidneys
        assert centroid[kidney][0] < centroid["liver"][0]
    corners = image[:, :3, :3]
    if spec.modality == "mri":
        assert corners.max() < 50 and 500 < image.max() < 2000
    else:
        assert corners.max() == 0 and image.min() >= 0 and image.max() <= 255


def _band_dice(fit: tuple, apply: tuple, label_id: int) -> float:
    """Fit [p5, p95] of the organ on its middle slice in one scan, threshold the organ's slices of another."""
    (image_a, label_a), (image_b, label_b) = fit, apply
    slices = _organ_slices(label_a, label_id)
    middle = slices[len(slices) // 2]
    low, high = np.percentile(image_a[middle][label_a[middle] == label_id], [5, 95])
    slices = _organ_slices(label_b, label_id)
    predicted = (image_b[slices] >= low) & (image_b[slices] <= high)
    truth = label_b[slices] == label_id
    return 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_intensity_band_does_not_segment_organs(spec):
    """Learnable but not trivial: other tissues and scans overlap each organ's intensity band."""
    a, b = (_volume(spec.name, scan_id, 128, None)[:2] for scan_id in spec.scan_ids[:2])
    dice = {o: np.mean([_band_dice(a, b, i), _band_dice(b, a, i)]) for o, i in spec.organ_label.items()}
    assert np.mean(list(dice.values())) < 0.4, dice
    assert sum(d < 0.4 for d in dice.values()) >= 3, dice
    # ... while the organs still have their modality's contrast.
    image, label = a
    median = {o: np.median(image[label == i]) for o, i in spec.organ_label.items()}
    if spec.modality == "mri":
        assert median["liver"] < min(median["spleen"], median["kidney_left"], median["kidney_right"])
    else:
        assert median["kidney_left"] > median["liver"] and abs(median["liver"] - median["spleen"]) < 30


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_superpixels_inside_body(spec):
    image = generate_volume(spec, spec.scan_ids[0], in_plane=256, n_slices=8)[0]
    segments, body = superpixel_volume(image[3:6], spec.body_threshold)
    for seg, mask in zip(segments, body):
        assert 0.2 < mask.mean() < 0.9
        assert 10 <= len(np.unique(seg[seg > 0])) <= 80


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_write_and_read_round_trip(tmp_path):
    for spec, ids in ((SYNTHETIC_MRI, [1, 2]), (SYNTHETIC_CT, [0])):
        folder = write_synthetic_dataset(spec, tmp_path, seed=0, scan_ids=ids, **SMALL)
        assert folder == tmp_path / spec.layout
        assert discover_scan_ids(folder) == ids
        for scan_id in ids:
            image, label, spacing = _volume(spec.name, scan_id)
            volume = read_volume(spec, folder, scan_id)
            assert np.array_equal(volume.image, image) and np.array_equal(volume.label, label)
            assert volume.spacing == spacing
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["generator_version"] == GENERATOR_VERSION and manifest["seed"] == 0
        assert manifest["scan_ids"] == ids and manifest["scans"][0]["shape"] == [16, 64, 64]
        assert _leftovers(folder.parent) == []


def test_rewrite_replaces_synthetic_but_refuses_other_folders(tmp_path):
    write_synthetic_dataset(SYNTHETIC_MRI, tmp_path, seed=0, scan_ids=[1], **SMALL)
    folder = write_synthetic_dataset(SYNTHETIC_MRI, tmp_path, seed=3, scan_ids=[2], **SMALL)
    assert (
        discover_scan_ids(folder) == [2] and json.loads((folder / "manifest.json").read_text())["seed"] == 3
    )
    assert _leftovers(folder.parent) == []
    foreign = tmp_path / "real" / SYNTHETIC_MRI.layout
    foreign.mkdir(parents=True)
    (foreign / "image_1.nii.gz").write_bytes(b"not ours")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        write_synthetic_dataset(SYNTHETIC_MRI, tmp_path / "real", scan_ids=[1], **SMALL)
    assert (foreign / "image_1.nii.gz").read_bytes() == b"not ours"
    with pytest.raises(ValueError):
        write_synthetic_dataset(ABD_MRI, tmp_path, scan_ids=[1], **SMALL)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(array, spacing, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(array, spacing, path)

    real_save = synthetic._save_nifti
    monkeypatch.setattr(synthetic, "_save_nifti", failing_save)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(SYNTHETIC_MRI, tmp_path, scan_ids=[1, 2], **SMALL)
    parent = tmp_path / SYNTHETIC_MRI.layout.split("/")[0]
    assert not (tmp_path / SYNTHETIC_MRI.layout).exists()
    assert _leftovers(parent) == []

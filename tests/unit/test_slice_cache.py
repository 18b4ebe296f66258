"""A damaged slice-cache entry is never an error: one warning naming it, then recomputed and replaced."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fsmis_bench.data.cache import SliceCache
from fsmis_bench.data.datasets import ABD_MRI


@pytest.fixture()
def scan_folder(tmp_path: Path) -> Path:
    """One 4x16x16 scan holding the four CHAOS labels, in quadrants."""
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    label = np.zeros((16, 16, 4), np.uint8)  # nibabel order (X, Y, Z)
    label[:8, :8], label[8:, :8], label[:8, 8:], label[8:, 8:] = 1, 2, 3, 4
    image = rng.normal(100, 10, label.shape).astype(np.float32) + 50 * label
    for name, array in (("image", image), ("label", label)):
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 7.7, 1.0])), str(folder / f"{name}_1.nii.gz"))
    return folder


def _flip_a_data_byte(data: bytes, scan_image: np.ndarray) -> bytes:
    damaged = bytearray(data)
    at = damaged.find(scan_image[1].tobytes())
    assert at > 0
    damaged[at] ^= 0xFF
    return bytes(damaged)


DAMAGES = {
    "truncated": lambda data, image: data[: len(data) // 2],
    "empty": lambda data, image: b"",
    "not an npz": lambda data, image: b"slices\n" * 100,
    "bad checksum": _flip_a_data_byte,
}


def _cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fsmis_bench.data.cache"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_entry_is_recomputed_and_replaced(tmp_path, scan_folder, caplog, damage):
    cache = SliceCache(ABD_MRI, scan_folder, 16, tmp_path / "cache")
    first = cache.load(1)
    (entry,) = (tmp_path / "cache" / "slices").glob("*.npz")
    entry.write_bytes(DAMAGES[damage](entry.read_bytes(), first.image))
    with caplog.at_level(logging.WARNING, logger="fsmis_bench.data.cache"):
        again = cache.load(1)
        (message,) = _cache_warnings(caplog)
        assert message.startswith(f"{entry}: unreadable slice cache entry") and "recomputing it" in message
        np.testing.assert_array_equal(again.image, first.image)
        np.testing.assert_array_equal(again.native_label, first.native_label)
        assert again.class_slices == first.class_slices and again.spacing == first.spacing
        caplog.clear()
        cache.load(1)  # the replaced entry is read back without a word
        assert _cache_warnings(caplog) == []
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no temporary file left


def test_entry_missing_an_array_is_recomputed(tmp_path, scan_folder, caplog):
    cache = SliceCache(ABD_MRI, scan_folder, 16, tmp_path / "cache")
    first = cache.load(1)
    (entry,) = (tmp_path / "cache" / "slices").glob("*.npz")
    with entry.open("wb") as handle:
        np.savez(handle, image=first.image)
    with caplog.at_level(logging.WARNING, logger="fsmis_bench.data.cache"):
        np.testing.assert_array_equal(cache.load(1).label, first.label)
    assert len(_cache_warnings(caplog)) == 1


def test_damaged_superpixel_entry_serving_a_plain_request(tmp_path, scan_folder, caplog):
    """An entry with superpixels serves a request without them; damaged, the plain entry is written once."""
    cache = SliceCache(ABD_MRI, scan_folder, 16, tmp_path / "cache")
    cache.load(1, with_superpixels=True)
    (entry,) = (tmp_path / "cache" / "slices").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="fsmis_bench.data.cache"):
        assert cache.load(1).superpixels is None
        assert cache.load(1).superpixels is None
        assert len(_cache_warnings(caplog)) == 1
        assert cache.load(1, with_superpixels=True).superpixels is not None
        assert len(_cache_warnings(caplog)) == 2
        assert cache.load(1, with_superpixels=True).superpixels is not None
        assert len(_cache_warnings(caplog)) == 2

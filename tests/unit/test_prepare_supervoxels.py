"""3-D supervoxels (protocol §2.2): the batched Felzenszwalb against a plain sequential union-find."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fsmis_bench.data.prepare import supervoxels as sv


def sequential_felzenszwalb(volume: np.ndarray, spacing, scale: float, min_size: int) -> np.ndarray:
    """Textbook Felzenszwalb–Huttenlocher over the same sorted edges, one edge at a time."""
    head, tail, weight = sv._grid_edges(volume.astype(np.float32), spacing)
    parent = list(range(volume.size))
    size, internal = [1] * volume.size, [0.0] * volume.size

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b, w in zip(head.tolist(), tail.tolist(), weight.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb and w < min(internal[ra] + scale / size[ra], internal[rb] + scale / size[rb]):
            parent[max(ra, rb)] = min(ra, rb)
            size[min(ra, rb)] += size[max(ra, rb)]
            internal[min(ra, rb)] = w
    for a, b in zip(head.tolist(), tail.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            parent[max(ra, rb)] = min(ra, rb)
            size[min(ra, rb)] += size[max(ra, rb)]
    roots = np.array([find(i) for i in range(volume.size)])
    return np.unique(roots, return_inverse=True)[1].reshape(volume.shape)


def smooth_noise(shape, seed: int) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.0)
    return np.round((field - field.min()) / np.ptp(field) * 255)


def test_one_edge_blocks_reproduce_the_sequential_algorithm(monkeypatch):
    volume = smooth_noise((4, 16, 16), seed=0)
    expected = sequential_felzenszwalb(volume, (3.0, 1.0, 1.0), scale=1.0, min_size=40)
    monkeypatch.setattr(sv, "BATCH", 1)
    np.testing.assert_array_equal(sv.felzenszwalb_3d(volume, (3.0, 1.0, 1.0), min_size=40), expected)


def test_min_size_and_flat_regions():
    volume = smooth_noise((6, 24, 24), seed=1)
    segments = sv.felzenszwalb_3d(volume, (3.0, 1.0, 1.0), min_size=200)
    assert np.bincount(segments.ravel()).min() >= 200
    halves = np.zeros((3, 10, 10))
    halves[:, :, 5:] = 100
    np.testing.assert_array_equal(sv.felzenszwalb_3d(halves, (5.0, 1.0, 1.0), min_size=1), halves > 0)


def test_spacing_scales_through_plane_edges():
    """A 0.5 step merges across 1 mm (0.5 < k = 1) but not across a 4 mm slice gap (0.5 x 4 > 1)."""
    volume = np.array([[[0.0]], [[0.5]]])
    assert sv.felzenszwalb_3d(volume, (1.0, 1.0, 1.0), min_size=1).ravel().tolist() == [0, 0]
    assert sv.felzenszwalb_3d(volume, (4.0, 1.0, 1.0), min_size=1).ravel().tolist() == [0, 1]


def test_supervoxel_volume_masks_the_background():
    image = np.zeros((3, 40, 40), dtype=np.float32)
    image[:, 5:35, 5:35] = 400 + smooth_noise((3, 30, 30), seed=2)
    segments = sv.supervoxel_volume(image, (5.0, 1.5, 1.5), min_size=300)
    assert (segments[:, :5] == 0).all() and (segments[:, 5:35, 5:35] > 0).all()
    assert segments.dtype == np.int32


@pytest.mark.parametrize("constant", [0.0, 7.0])
def test_constant_volume_has_no_body(constant):
    assert not sv.supervoxel_volume(np.full((2, 8, 8), constant), (1.0, 1.0, 1.0), min_size=4).any()

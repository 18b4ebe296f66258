"""Superpixel pseudolabels of protocol §2.1: body mask and the reference relabelling quirk."""

import numpy as np

from fsmis_bench.data.superpixels import body_mask, relabel_segments, superpixel_volume


def test_compat_relabel_drops_raw_zero_and_skips_one_id():
    raw = np.array([[0, 1, 2], [3, 3, 2]])
    body = np.ones_like(raw, dtype=bool)
    out = relabel_segments(raw, body, compat=True)
    # raw 0 is lost; raw 1, 2 -> 1, 2; raw 3 (the maximum) gets id 4, so id 3 is skipped
    assert out.tolist() == [[0, 1, 2], [4, 4, 2]]


def test_contiguous_relabel_keeps_every_segment_inside_the_body():
    raw = np.array([[0, 1, 2], [3, 3, 2]])
    body = np.array([[True, True, False], [True, True, True]])
    out = relabel_segments(raw, body, compat=False)
    assert out[0, 2] == 0
    assert sorted(np.unique(out[body]).tolist()) == [1, 2, 3, 4]


def test_body_mask_is_the_filled_largest_component():
    image = np.zeros((20, 20))
    image[2:18, 2:18] = 100
    image[8:12, 8:12] = 0  # a hole
    image[0, 19] = 100  # a speck
    mask = body_mask(image, 50)
    assert mask[10, 10] and not mask[0, 19] and mask.sum() == 16 * 16


def test_superpixels_only_inside_the_body():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 64, 64))
    image[:, 8:56, 8:56] = 200 + 50 * rng.random((2, 48, 48))
    segments, bodies = superpixel_volume(image, body_threshold=50 + 1e-4)
    assert (segments[~bodies] == 0).all()
    assert (segments[bodies] > 0).mean() > 0.5

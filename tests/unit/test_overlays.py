"""Overlay pieces: the contour is the mask's one-pixel inner boundary, colours land where asked."""

from __future__ import annotations

import torch

from fsmis_bench.overlays import PREDICTION_COLOUR, TRUTH_COLOUR, contour, episode_overlay


def test_the_contour_of_a_square_is_its_ring():
    mask = torch.zeros(9, 9)
    mask[2:7, 2:7] = 1
    ring = contour(mask)
    assert int(ring.sum()) == 16 and not ring[3:6, 3:6].any() and ring[2, 2:7].all()
    assert not contour(torch.zeros(9, 9)).any()


def test_the_overlay_puts_support_and_query_side_by_side_with_coloured_contours():
    image = torch.linspace(0, 5, 64).reshape(8, 8)
    truth, prediction = torch.zeros(8, 8), torch.zeros(8, 8)
    truth[1:4, 1:4], prediction[4:7, 4:7] = 1, 1
    rgb = episode_overlay(image, truth, image, truth, prediction)
    assert rgb.shape == (3, 8, 16) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    query = rgb[:, :, 8:]
    assert torch.allclose(query[:, 1, 1], torch.tensor(TRUTH_COLOUR))
    assert torch.allclose(query[:, 6, 6], torch.tensor(PREDICTION_COLOUR))
    assert torch.allclose(query[:, 0, 0], query[0, 0, 0].expand(3))  # untouched pixels stay grey

"""Colour overlays for TensorBoard: the support slice with its mask, the query slice with the ground truth and
the prediction as contours, side by side (RGB in [0, 1], ``[3, H, W]``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORT_COLOUR = (1.0, 0.85, 0.0)  # yellow: the support mask
TRUTH_COLOUR = (0.1, 0.9, 0.2)  # green: the query's ground truth
PREDICTION_COLOUR = (1.0, 0.15, 0.15)  # red: the prediction


def grey_to_rgb(image: Tensor) -> Tensor:
    """A slice ``[H, W]`` scaled by its own range to ``[3, H, W]`` grey."""
    image = image.detach().float().cpu()
    low, high = image.min(), image.max()
    return ((image - low) / (high - low + 1e-8)).expand(3, -1, -1).clone()


def contour(mask: Tensor) -> Tensor:
    """The one-pixel inner boundary of a binary mask ``[H, W]`` (mask minus its 3x3 erosion)."""
    solid = (mask.detach().float().cpu() > 0.5).float()[None, None]
    eroded = -F.max_pool2d(-solid, kernel_size=3, stride=1, padding=1)
    return (solid - eroded)[0, 0] > 0


def paint(rgb: Tensor, where: Tensor, colour: tuple[float, float, float]) -> Tensor:
    """``rgb`` with the pixels of ``where`` set to ``colour`` (in place, returned)."""
    for channel, value in enumerate(colour):
        rgb[channel][where] = value
    return rgb


def episode_overlay(
    support_image: Tensor,
    support_mask: Tensor,
    query_image: Tensor,
    query_truth: Tensor,
    prediction: Tensor | None = None,
) -> Tensor:
    """Support (mask contour in yellow) | query (truth in green, prediction in red), ``[3, H, 2W]``.

    All inputs are ``[H, W]`` at the same size; where truth and prediction coincide, the prediction is drawn.
    """
    support = paint(grey_to_rgb(support_image), contour(support_mask), SUPPORT_COLOUR)
    query = paint(grey_to_rgb(query_image), contour(query_truth), TRUTH_COLOUR)
    if prediction is not None:
        query = paint(query, contour(prediction), PREDICTION_COLOUR)
    return torch.cat([support, query], dim=-1)

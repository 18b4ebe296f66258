"""HD95 in millimetres with the protocol's empty-mask policy (protocol §7.2), on top of MONAI."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Physical diagonal of the full query volume: the worst-case HD95 of a missed or spurious organ."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def hd95_mm(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    volume_shape: Sequence[int],
) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two binary 3-D slabs (Z, H, W), in mm.

    ``spacing`` is (sz, sy, sx). Policy: both empty -> NaN; exactly one empty -> the diagonal of the full
    volume ``volume_shape``; otherwise MONAI's ``compute_hausdorff_distance(percentile=95)`` with spacing.
    """
    pred = pred.astype(bool, copy=False)
    ref = ref.astype(bool, copy=False)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return math.nan
    if has_pred != has_ref:
        return volume_diagonal_mm(volume_shape, spacing)
    pred_t = torch.from_numpy(np.stack([~pred, pred]))[None]
    ref_t = torch.from_numpy(np.stack([~ref, ref]))[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation chatter about get_mask_edges
        value = compute_hausdorff_distance(
            pred_t, ref_t, include_background=False, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(value.item())

"""Overlap counts and Dice from summed counts (protocol §7.1)."""

from __future__ import annotations

import math

import numpy as np


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """TP, FP, FN of two binary arrays of the same shape, summed over every element."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    pred = pred.astype(bool, copy=False)
    ref = ref.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & ref))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """2·TP / (2·TP + FP + FN); 0/0 (nothing predicted, nothing to find) is NaN, never 1."""
    denominator = 2 * tp + fp + fn
    return math.nan if denominator == 0 else 2.0 * tp / denominator

"""Metrics of protocol §7 against hand-computed cases, the empty-mask policy, and MONAI's pinned behaviour."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from fsmis_bench.metrics import dice_from_counts, hd95_mm, score_volume, summarize_cases, volume_diagonal_mm
from fsmis_bench.metrics.aggregate import summarize_folds
from fsmis_bench.metrics.overlap import confusion_counts

SPACING = (7.7, 1.25, 1.25)
SHAPE = (10, 32, 32)


def box(z0, z1, y0, y1, x0, x1, shape=SHAPE):
    out = np.zeros(shape, dtype=bool)
    out[z0:z1, y0:y1, x0:x1] = True
    return out


def test_dice_from_summed_counts_not_mean_of_slices():
    ref = box(0, 2, 0, 4, 0, 4)  # 32 voxels on two slices
    pred = np.zeros_like(ref)
    pred[0, :4, :4] = True  # slice 0 perfect, slice 1 empty
    tp, fp, fn = confusion_counts(pred, ref)
    assert (tp, fp, fn) == (16, 0, 16)
    assert dice_from_counts(tp, fp, fn) == pytest.approx(2 * 16 / (2 * 16 + 16))  # 0.667, not (1 + 0) / 2


def test_dice_zero_over_zero_is_nan():
    assert math.isnan(dice_from_counts(0, 0, 0))
    assert dice_from_counts(0, 5, 0) == 0.0


def test_hd95_of_a_shift_along_z_is_in_millimetres():
    ref = box(2, 6, 8, 16, 8, 16)
    pred = box(3, 7, 8, 16, 8, 16)  # shifted by one slice
    assert hd95_mm(pred, ref, SPACING, SHAPE) == pytest.approx(7.7)
    pred_xy = box(2, 6, 8, 16, 9, 17)  # shifted by one column
    assert hd95_mm(pred_xy, ref, SPACING, SHAPE) == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("has_pred", "has_ref", "dice", "hd95"),
    [
        (True, True, "value", "value"),
        (False, True, 0.0, "diagonal"),
        (True, False, 0.0, "diagonal"),
        (False, False, "nan", "nan"),
    ],
)
def test_empty_mask_policy_table(has_pred, has_ref, dice, hd95):
    ref = box(2, 6, 8, 16, 8, 16) if has_ref else np.zeros(SHAPE, bool)
    pred = box(2, 6, 9, 16, 8, 16) if has_pred else np.zeros(SHAPE, bool)
    case = score_volume(1, "liver", pred, ref, SPACING, SHAPE)
    diagonal = volume_diagonal_mm(SHAPE, SPACING)
    assert diagonal == pytest.approx(math.sqrt(77.0**2 + 40.0**2 + 40.0**2))
    expect = {"nan": math.nan, "diagonal": diagonal}
    if dice == "value":
        assert 0 < case.dice < 1 and 0 < case.hd95 < diagonal
    else:
        assert case.dice == pytest.approx(expect.get(dice, dice), nan_ok=True)
        assert case.hd95 == pytest.approx(expect[hd95], nan_ok=True)


def test_hd95_uses_the_full_volume_diagonal_not_the_slab():
    ref = box(0, 3, 0, 4, 0, 4, shape=(3, 32, 32))
    case = score_volume(1, "liver", np.zeros_like(ref), ref, SPACING, volume_shape=(40, 256, 256))
    assert case.hd95 == pytest.approx(volume_diagonal_mm((40, 256, 256), SPACING))


def _onehot(mask):
    t = torch.from_numpy(mask)
    return torch.stack([~t, t])[None].float()


def test_monai_behaviour_is_pinned():
    """protocol §7.2 table, observed with MONAI 1.6.1; a change here must be a deliberate decision."""
    full, empty = box(2, 6, 8, 16, 8, 16), np.zeros(SHAPE, bool)

    def dice(p, r, ignore_empty):
        return float(
            compute_dice(_onehot(p), _onehot(r), include_background=False, ignore_empty=ignore_empty)
        )

    def hd(p, r, percentile=95):
        return float(
            compute_hausdorff_distance(
                _onehot(p), _onehot(r), include_background=False, percentile=percentile
            )
        )

    assert math.isnan(dice(empty, empty, True)) and dice(empty, empty, False) == 1.0
    assert math.isnan(dice(full, empty, True)) and dice(full, empty, False) == 0.0
    assert dice(empty, full, True) == 0.0 and dice(empty, full, False) == 0.0
    assert math.isnan(hd(empty, empty)) and math.isnan(hd(full, empty)) and math.isnan(hd(empty, full))
    assert math.isinf(hd(empty, full, percentile=None))


def test_project_dice_and_hd95_equal_monai_on_non_empty_volumes():
    rng = np.random.default_rng(0)
    for _ in range(3):
        ref = box(2, 7, 6, 20, 5, 22) & (rng.random(SHAPE) > 0.1)
        pred = box(3, 8, 8, 22, 4, 20) & (rng.random(SHAPE) > 0.1)
        case = score_volume(3, "spleen", pred, ref, SPACING, SHAPE)
        monai_dice = float(compute_dice(_onehot(pred), _onehot(ref), include_background=False))
        monai_hd = float(
            compute_hausdorff_distance(
                _onehot(pred), _onehot(ref), include_background=False, percentile=95, spacing=list(SPACING)
            )
        )
        assert case.dice == pytest.approx(monai_dice, rel=1e-6)
        assert case.hd95 == pytest.approx(monai_hd, rel=1e-6)


def test_aggregation_mean_over_volumes_then_folds_then_organs():
    rows = []
    for fold, values in ((0, (0.5, 0.7)), (1, (0.9, math.nan))):
        for scan, v in enumerate(values):
            for organ in ("liver", "spleen", "kidney_left", "kidney_right"):
                rows.append({"fold": fold, "scan_id": 10 * fold + scan, "organ": organ, "dice": v})
    cases = pd.DataFrame(rows)
    per_fold0 = summarize_cases(cases[cases.fold == 0])
    assert per_fold0["liver"] == pytest.approx(0.6)
    overall = summarize_folds(cases)
    assert overall["liver"] == pytest.approx((0.6 + 0.9) / 2)  # NaN case skipped inside fold 1
    assert overall["mean"] == pytest.approx(0.75)


def test_missing_organ_makes_the_mean_nan_not_optimistic():
    cases = pd.DataFrame([{"organ": "liver", "dice": 0.9}, {"organ": "spleen", "dice": 0.8}])
    summary = summarize_cases(cases)
    assert math.isnan(summary["kidney_left"]) and math.isnan(summary["mean"])

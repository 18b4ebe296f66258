"""Score one (query volume, organ) slab: the long-format case row of protocol §6.4."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fsmis_bench.metrics.overlap import confusion_counts, dice_from_counts
from fsmis_bench.metrics.surface import hd95_mm


@dataclass(frozen=True)
class CaseResult:
    """Counts and metrics of one (query scan, organ), from every evaluated slice of that scan."""

    scan_id: int
    organ: str
    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int
    dice: float
    hd95: float
    n_slices: int
    spacing: str

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def score_volume(
    scan_id: int,
    organ: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    volume_shape: Sequence[int],
    contiguous: bool = True,
) -> CaseResult:
    """Dice from the summed counts over the slab and HD95 in mm (skipped, NaN, when ``contiguous`` is false).

    ``pred`` and ``ref`` are the binary (n_slices, H, W) stacks of the evaluated slices in z order; under EP1
    they are the contiguous slices zmin..zmax of the query, so they form a 3-D slab.
    """
    tp, fp, fn = confusion_counts(pred, ref)
    hd95 = hd95_mm(pred, ref, spacing, volume_shape) if contiguous else float("nan")
    return CaseResult(
        scan_id=int(scan_id),
        organ=organ,
        tp=tp,
        fp=fp,
        fn=fn,
        n_ref=tp + fn,
        n_pred=tp + fp,
        dice=dice_from_counts(tp, fp, fn),
        hd95=hd95,
        n_slices=int(pred.shape[0]),
        spacing="x".join(f"{s:.4g}" for s in spacing),
    )

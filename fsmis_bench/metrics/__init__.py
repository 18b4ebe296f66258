"""Metrics: confusion counts -> Dice / HD95 per (query volume, organ) -> aggregation (protocol §7)."""

from fsmis_bench.metrics.aggregate import summarize_cases
from fsmis_bench.metrics.overlap import dice_from_counts
from fsmis_bench.metrics.surface import hd95_mm, volume_diagonal_mm
from fsmis_bench.metrics.volume_scorer import CaseResult, score_volume

__all__ = [
    "CaseResult",
    "dice_from_counts",
    "hd95_mm",
    "score_volume",
    "summarize_cases",
    "volume_diagonal_mm",
]

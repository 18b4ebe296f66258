"""Proposals: the vote that gives the method's mask and the expert-in-the-loop metrics
(docs/methods/progidiff.md §3).

The main number is always the vote; best-of-P is an oracle (it reads the ground truth, standing in for an
expert who picks a proposal) and is reported beside it, never instead of it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from fsmis_bench.errors import ConfigError
from fsmis_bench.metrics.overlap import confusion_counts, dice_from_counts
from fsmis_bench.metrics.volume_scorer import CaseResult

AGGREGATIONS = ("soft_vote", "majority")


@dataclass(frozen=True)
class ProposalCaseResult(CaseResult):
    """A case row plus the proposal metrics (extra columns of cases.csv)."""

    dice_best_of_p: float = math.nan  # oracle: per slice, the proposal choice maximising the Dice
    dice_proposal_mean: float = math.nan  # mean Dice of the single proposals
    proposal_diversity: float = math.nan  # 1 - mean pairwise Dice between proposals (0 = identical)
    dice_before_adaptation: float = math.nan  # the vote with the LoRA adapter switched off


def vote_scores(scores: Tensor, aggregation: str) -> Tensor:
    """Proposal scores [P, ...] -> one score map, foreground where > 0.

    ``soft_vote``: mean of the decoded intensities; ``majority``: fraction of proposals voting foreground − ½.
    """
    if aggregation == "soft_vote":
        return scores.mean(dim=0)
    if aggregation == "majority":
        return (scores > 0).float().mean(dim=0) - 0.5
    raise ConfigError(f"proposals.aggregation '{aggregation}' (known: {', '.join(AGGREGATIONS)})")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return dice_from_counts(*confusion_counts(pred, ref))


def proposal_metrics(proposals: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Best-of-P (per-slice oracle), mean single-proposal Dice and diversity of binary proposals [P, N, H, W].

    The oracle picks one proposal per slice so that the assembled volume's Dice is maximal (never below any
    single proposal). Two empty proposals agree perfectly (pairwise Dice 1).
    """
    count = proposals.shape[0]
    pairs = [
        1.0 if not (proposals[a].any() or proposals[b].any()) else dice(proposals[a], proposals[b])
        for a, b in itertools.combinations(range(count), 2)
    ]
    return {
        "dice_best_of_p": best_of_p_dice(proposals, ref),
        "dice_proposal_mean": float(np.mean([dice(p, ref) for p in proposals])),
        "proposal_diversity": 1.0 - float(np.mean(pairs)) if pairs else 0.0,
    }


def best_of_p_dice(proposals: np.ndarray, ref: np.ndarray) -> float:
    """max over per-slice choices of 2·ΣTP / (Σ|pred| + |ref|), solved exactly by Dinkelbach's iteration.

    For a ratio λ the best choice is separable (per slice, maximise 2·TP − λ·|pred|); λ is raised to the ratio
    that choice reaches until it stops improving, which is the optimum.
    """
    count, n = proposals.shape[:2]
    flat = proposals.reshape(count, n, -1)
    tp = (flat & ref.reshape(1, n, -1)).sum(axis=2)
    size = flat.sum(axis=2)
    total_ref, slices = int(ref.sum()), np.arange(n)
    ratio = 0.0
    for _ in range(100):
        choice = (2 * tp - ratio * size).argmax(axis=0)
        denominator = int(size[choice, slices].sum()) + total_ref
        if denominator == 0:
            return math.nan
        better = 2 * int(tp[choice, slices].sum()) / denominator
        if better <= ratio + 1e-12:
            break
        ratio = better
    return ratio


def save_proposals(path: Path, proposals: np.ndarray, slices: np.ndarray) -> None:
    """Binary native-resolution proposals [P, N, H, W], bit-packed, with the query slice indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, bits=np.packbits(proposals.astype(bool), axis=-1), shape=proposals.shape, slices=slices
    )


def load_proposals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``save_proposals``: (proposals [P, N, H, W] bool, slice indices)."""
    data = np.load(path)
    shape = tuple(int(n) for n in data["shape"])
    return np.unpackbits(data["bits"], axis=-1, count=shape[-1]).astype(bool).reshape(shape), data["slices"]


def proposal_seed(run_seed: int, scan_id: int, organ: str, index: int) -> int:
    """Noise seed of proposal ``index`` of (scan, organ): fixed by the run seed, independent of test order."""
    key = f"{run_seed}/{scan_id}/{organ}/{index}".encode()
    return int(hashlib.sha256(key).hexdigest()[:15], 16)

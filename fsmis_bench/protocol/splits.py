"""Five-fold cross-validation over scans (protocol §3): alpnet ordered folds (default) and qnet sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fsmis_bench.errors import ConfigError

N_FOLDS = 5
FOLD_SCHEMES = ("alpnet", "qnet_sets")


@dataclass(frozen=True)
class FoldPlan:
    """Which scans support, are queried and train in one fold."""

    fold: int
    support_ids: tuple[int, ...]
    query_ids: tuple[int, ...]
    train_ids: tuple[int, ...]
    scheme: str
    support_index: int


def _fold_bounds(n: int) -> list[int]:
    return [k * n // N_FOLDS for k in range(N_FOLDS + 1)]


def check_fold(fold: int) -> None:
    """ConfigError unless ``fold`` is one of the five folds."""
    if not 0 <= fold < N_FOLDS:
        raise ConfigError(f"--fold {fold}: fold out of range (valid: 0..{N_FOLDS - 1})")


def fold_plan(
    scan_ids: Sequence[int],
    fold: int,
    shots: int = 1,
    scheme: str = "alpnet",
    support_index: int = -1,
) -> FoldPlan:
    """Support, query and training scans of ``fold``.

    alpnet (§3.1): the fold's ordered scans followed by the next ``shots`` scans (wrapping around); those
    appended scans are the support and are removed from training. qnet_sets (§3.2): the fold is the sorted
    *set* of positions sep[k]..sep[k+1] (wrapping), the support is the entry at ``support_index``.
    """
    ids = sorted(int(i) for i in scan_ids)
    n = len(ids)
    check_fold(fold)
    if shots < 1:
        raise ConfigError(f"--shots {shots}: must be at least 1")
    if n < N_FOLDS + shots:
        raise ConfigError(f"{n} scans are too few for {N_FOLDS} folds with {shots} support scan(s)")
    bounds = _fold_bounds(n)
    if scheme == "alpnet":
        members = [ids[i % n] for i in range(bounds[fold], bounds[fold + 1] + shots)]
        support, queries = members[-shots:], members[:-shots]
        index = -1
    elif scheme == "qnet_sets":
        if shots != 1:
            raise ConfigError("fold_scheme qnet_sets is defined for 1 shot only")
        members = sorted({ids[i % n] for i in range(bounds[fold], bounds[fold + 1] + 1)})
        if not -len(members) <= support_index < len(members):
            raise ConfigError(
                f"support_index {support_index} out of range for a fold of {len(members)} scans"
            )
        support = [members[support_index]]
        queries = [m for m in members if m != support[0]]
        index = support_index
    else:
        raise ConfigError(f"unknown fold_scheme '{scheme}' (known: {', '.join(FOLD_SCHEMES)})")
    train = [i for i in ids if i not in set(members)]
    return FoldPlan(fold, tuple(support), tuple(queries), tuple(train), scheme, index)

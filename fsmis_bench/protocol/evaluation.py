"""Evaluation plans (protocol §6): which query slices are scored and which support slice serves each."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fsmis_bench.errors import ConfigError

EVAL_MODES = ("ep1", "ep2")
CHUNK_RULES = ("alpnet", "qnet")
#: Support percentiles of the three EP1 chunks (a single chunk would use 1/2).
CHUNK_PERCENTILES = (1 / 6, 1 / 2, 5 / 6)
#: How much a native slice may be enlarged to the model's input size (4: 64-pixel test volumes at 256);
#: beyond it the method would segment detail that interpolation invented.
MAX_UPSAMPLING = 4


@dataclass(frozen=True)
class QueryTask:
    """One (query scan, organ): scored slices in z order, each slice's chunk, each chunk's support slices.

    ``supports[j]`` lists the ``(support scan id, slice index)`` pairs of chunk ``j`` (k pairs for k shots).
    ``contiguous`` tells whether the scored slices form a 3-D slab on which HD95 is reported.
    """

    scan_id: int
    organ: str
    label: int
    slices: tuple[int, ...]
    chunk_of_slice: tuple[int, ...]
    supports: tuple[tuple[tuple[int, int], ...], ...]
    contiguous: bool


def support_slice_indices(organ_slices: Sequence[int], n_chunks: int = 3) -> list[int]:
    """Support slice of each chunk: ``Z_S[floor(p_j · len(Z_S))]`` with p = 1/6, 1/2, 5/6 (§6.1)."""
    ordered = sorted(organ_slices)
    if n_chunks == 3:
        percentiles = CHUNK_PERCENTILES
    else:
        percentiles = tuple((2 * j + 1) / (2 * n_chunks) for j in range(n_chunks))
    return [ordered[math.floor(p * len(ordered))] for p in percentiles]


def alpnet_chunks(zmin: int, zmax: int, n_chunks: int = 3) -> np.ndarray:
    """Chunk of every slice zmin..zmax: floor of the relative z over (zmax - zmin) / n_chunks, clipped."""
    z = np.arange(zmin, zmax + 1)
    if zmax == zmin:
        return np.zeros(1, dtype=int)
    return np.clip(np.floor((z - zmin) / ((zmax - zmin) / n_chunks)), 0, n_chunks - 1).astype(int)


def qnet_chunks(n_positive: int, n_chunks: int = 3) -> np.ndarray:
    """Chunk of each of the GT-positive slices: boundaries at the integer parts of linspace(0, n, 4)."""
    bounds = np.linspace(0, n_positive, n_chunks + 1).astype(int)
    chunks = np.zeros(n_positive, dtype=int)
    for j in range(n_chunks):
        chunks[bounds[j] : bounds[j + 1]] = j
    return chunks


def volume_problem(native_shape: Sequence[int], image_size: int, n_chunks: int = 3) -> str | None:
    """Why a support or query volume of (Z, H, W) ``native_shape`` cannot be tested, or None.

    It needs a slice per chunk (EP1: three, each with its own support slice) and slices at least
    ``image_size / MAX_UPSAMPLING`` pixels wide, the method's input being ``image_size`` square.
    """
    depth, height, width = native_shape
    if depth < n_chunks:
        return f"{depth} slice(s), fewer than the {n_chunks} EP1 chunks"
    smallest = math.ceil(image_size / MAX_UPSAMPLING)
    if min(height, width) < smallest:
        return (
            f"{height}x{width} slices are too small for the method's {image_size}x{image_size} input "
            f"(at least {smallest}x{smallest}: at most {MAX_UPSAMPLING}x upsampling)"
        )
    return None


def plan_queries(
    class_slices: Mapping[int, Mapping[int, Sequence[int]]],
    support_ids: Sequence[int],
    query_ids: Sequence[int],
    organ_labels: Mapping[str, int],
    depths: Mapping[int, int],
    eval_mode: str = "ep1",
    chunk_rule: str = "alpnet",
    n_chunks: int = 3,
) -> tuple[list[QueryTask], list[tuple[int, str]]]:
    """All query tasks of a fold, and the (scan, organ) pairs skipped because the organ is absent.

    ``class_slices[scan][label]`` is the sorted list of slices of ``scan`` with >= 1 pixel of ``label``.
    The caller must have checked that every organ is present in every support scan.
    """
    if eval_mode not in EVAL_MODES:
        raise ConfigError(f"unknown eval_mode '{eval_mode}' (known: {', '.join(EVAL_MODES)})")
    if chunk_rule not in CHUNK_RULES:
        raise ConfigError(f"unknown chunk_rule '{chunk_rule}' (known: {', '.join(CHUNK_RULES)})")
    tasks, skipped = [], []
    for organ, label in organ_labels.items():
        if eval_mode == "ep2":
            supports = (tuple((s, _middle(class_slices[s][label])) for s in support_ids),)
        else:
            per_scan = [support_slice_indices(class_slices[s][label], n_chunks) for s in support_ids]
            supports = tuple(
                tuple((s, per_scan[i][j]) for i, s in enumerate(support_ids)) for j in range(n_chunks)
            )
        for scan in query_ids:
            positive = sorted(class_slices[scan].get(label, []))
            if not positive:
                skipped.append((scan, organ))
                continue
            if eval_mode == "ep2":
                slices = np.arange(depths[scan])
                chunks, contiguous = np.zeros(len(slices), dtype=int), True
            elif chunk_rule == "alpnet":
                slices = np.arange(positive[0], positive[-1] + 1)
                chunks, contiguous = alpnet_chunks(positive[0], positive[-1], n_chunks), True
            else:
                slices = np.asarray(positive)
                chunks = qnet_chunks(len(positive), n_chunks)
                contiguous = False  # the protocol reports no HD95 under the qnet chunk rule (§6.2)
            tasks.append(
                QueryTask(
                    scan_id=scan,
                    organ=organ,
                    label=label,
                    slices=tuple(int(z) for z in slices),
                    chunk_of_slice=tuple(int(c) for c in chunks),
                    supports=supports,
                    contiguous=contiguous,
                )
            )
    return tasks, skipped


def _middle(organ_slices: Sequence[int]) -> int:
    ordered = sorted(organ_slices)
    return ordered[len(ordered) // 2]

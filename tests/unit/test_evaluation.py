"""EP1 chunk rule and support slices of protocol §6."""

import numpy as np
import pytest

from fsmis_bench.data.cache import class_index
from fsmis_bench.data.datasets import ABD_MRI
from fsmis_bench.protocol.evaluation import (
    alpnet_chunks,
    plan_queries,
    qnet_chunks,
    support_slice_indices,
    volume_problem,
)


def test_support_slices_at_one_sixth_half_five_sixths():
    organ_slices = list(range(12, 36))  # 24 slices, e.g. CHAOS pid 1 liver
    assert support_slice_indices(organ_slices) == [12 + 4, 12 + 12, 12 + 20]
    assert support_slice_indices([7]) == [7, 7, 7]


def test_alpnet_chunks_keep_the_full_range_and_split_in_thirds():
    chunks = alpnet_chunks(10, 19)  # 10 slices, (zmax - zmin) / 3 = 3
    assert chunks.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert alpnet_chunks(5, 5).tolist() == [0]


def test_qnet_chunks_linspace():
    assert qnet_chunks(10).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert qnet_chunks(7).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_gap_slices_are_scored_under_alpnet_and_dropped_under_qnet():
    index = {
        0: {1: [2, 3, 4, 5, 6, 7]},
        1: {1: [3, 4, 6, 7]},  # slice 5 is a gap
    }
    tasks, _ = plan_queries(index, (0,), (1,), {"liver": 1}, {0: 10, 1: 10})
    assert tasks[0].slices == (3, 4, 5, 6, 7)
    assert tasks[0].contiguous
    tasks, _ = plan_queries(index, (0,), (1,), {"liver": 1}, {0: 10, 1: 10}, chunk_rule="qnet")
    assert tasks[0].slices == (3, 4, 6, 7)
    assert not tasks[0].contiguous  # no HD95 under the qnet chunk rule


def test_absent_query_organ_is_skipped_and_reported():
    index = {0: {1: [2, 3, 4]}, 1: {}}
    tasks, skipped = plan_queries(index, (0,), (1,), {"liver": 1}, {0: 5, 1: 5})
    assert tasks == [] and skipped == [(1, "liver")]


def test_k_shot_gives_k_support_slices_per_chunk():
    index = {0: {1: list(range(6))}, 9: {1: list(range(2, 14))}, 1: {1: [1, 2, 3]}}
    tasks, _ = plan_queries(index, (0, 9), (1,), {"liver": 1}, {0: 6, 9: 14, 1: 5})
    assert tasks[0].supports == (((0, 1), (9, 4)), ((0, 3), (9, 8)), ((0, 5), (9, 12)))


@pytest.mark.real_data
def test_chunk_rules_differ_on_33_chaos_organ_slices(chaos_labels):
    differing = total = 0
    for label in chaos_labels.values():
        index, _ = class_index(label)
        for organ_label in ABD_MRI.organ_label.values():
            positive = np.asarray(index[organ_label])
            alp = alpnet_chunks(positive[0], positive[-1])[positive - positive[0]]
            differing += int((alp != qnet_chunks(len(positive))).sum())
            total += len(positive)
    # protocol §6.2: 33 of the 1320 organ slices of the §1.4 check table change chunk.
    assert (differing, total) == (33, 1320)


def test_volume_problem_bounds():
    """A slice per chunk, and at most 4x upsampling to the method's input (64-pixel volumes at 256 pass)."""
    assert volume_problem((3, 64, 64), 256) is None
    assert volume_problem((3, 64, 63), 256) == (
        "64x63 slices are too small for the method's 256x256 input (at least 64x64: at most 4x upsampling)"
    )
    assert volume_problem((2, 256, 256), 256) == "2 slice(s), fewer than the 3 EP1 chunks"
    assert volume_problem((1, 256, 256), 256, n_chunks=1) is None  # EP2: one chunk
    assert volume_problem((1, 8, 8), 32, n_chunks=1) is None

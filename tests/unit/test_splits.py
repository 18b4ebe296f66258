"""Fold tables of protocol §3 (alpnet default and qnet-set variants)."""

import pytest

from fsmis_bench.data.datasets import ABD_CT, ABD_MRI
from fsmis_bench.errors import ConfigError
from fsmis_bench.protocol.splits import fold_plan

# protocol §3.1 table: fold -> (queries, support)
ALPNET_MRI = {
    0: ((1, 2, 3, 5), 8),
    1: ((8, 10, 13, 15), 19),
    2: ((19, 20, 21, 22), 31),
    3: ((31, 32, 33, 34), 36),
    4: ((36, 37, 38, 39), 1),
}
ALPNET_CT = {
    0: (tuple(range(0, 6)), 6),
    1: (tuple(range(6, 12)), 12),
    2: (tuple(range(12, 18)), 18),
    3: (tuple(range(18, 24)), 24),
    4: (tuple(range(24, 30)), 0),
}


@pytest.mark.parametrize(("spec", "table"), [(ABD_MRI, ALPNET_MRI), (ABD_CT, ALPNET_CT)])
def test_alpnet_folds_match_protocol_table(spec, table):
    queried = []
    for fold, (queries, support) in table.items():
        plan = fold_plan(spec.scan_ids, fold)
        assert plan.query_ids == queries
        assert plan.support_ids == (support,)
        assert support not in plan.train_ids
        assert not set(plan.train_ids) & set(queries)
        assert len(plan.train_ids) == len(spec.scan_ids) - len(queries) - 1  # 15 (MRI) / 23 (CT)
        queried += plan.query_ids
    assert sorted(queried) == sorted(spec.scan_ids)  # every scan queried exactly once


def test_alpnet_k_shot_takes_the_next_k_scans_as_support():
    plan = fold_plan(ABD_MRI.scan_ids, 4, shots=2)
    assert plan.query_ids == (36, 37, 38, 39)
    assert plan.support_ids == (1, 2)
    assert 1 not in plan.train_ids and 2 not in plan.train_ids


def test_qnet_support_index_2_queries_match_protocol():
    expected = [{1, 2, 5, 8}, {8, 10, 15, 19}, {19, 20, 22, 31}, {31, 32, 34, 36}, {1, 36, 38, 39}]
    counts: dict[int, int] = {}
    for fold, queries in enumerate(expected):
        plan = fold_plan(ABD_MRI.scan_ids, fold, scheme="qnet_sets", support_index=2)
        assert set(plan.query_ids) == queries
        for q in plan.query_ids:
            counts[q] = counts.get(q, 0) + 1
    assert {p for p, c in counts.items() if c == 2} == {1, 8, 19, 31, 36}
    assert {3, 13, 21, 33, 37}.isdisjoint(counts)


def test_qnet_ct_support_index_2_twice_and_never():
    counts: dict[int, int] = {}
    for fold in range(5):
        for q in fold_plan(ABD_CT.scan_ids, fold, scheme="qnet_sets", support_index=2).query_ids:
            counts[q] = counts.get(q, 0) + 1
    assert {i for i, c in counts.items() if c == 2} == {0, 6, 12, 18, 24}
    assert {2, 8, 14, 20, 25}.isdisjoint(counts)


def test_qnet_support_last_differs_from_alpnet_only_in_fold_4():
    for fold in range(4):
        a = fold_plan(ABD_MRI.scan_ids, fold)
        q = fold_plan(ABD_MRI.scan_ids, fold, scheme="qnet_sets", support_index=-1)
        assert (a.query_ids, a.support_ids) == (q.query_ids, q.support_ids)
    q4 = fold_plan(ABD_MRI.scan_ids, 4, scheme="qnet_sets", support_index=-1)
    assert q4.support_ids == (39,)
    assert set(q4.query_ids) == {1, 36, 37, 38}


@pytest.mark.parametrize("fold", [-1, 5, 12])
def test_fold_out_of_range_is_a_clear_error(fold):
    with pytest.raises(ConfigError, match="fold out of range"):
        fold_plan(ABD_MRI.scan_ids, fold)


def test_unknown_scheme_is_an_error():
    with pytest.raises(ConfigError, match="unknown fold_scheme"):
        fold_plan(ABD_MRI.scan_ids, 0, scheme="random")

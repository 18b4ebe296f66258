"""Setting 1 / setting 2 rules of protocol §4, with the CHAOS anchors 718 / 558 / 88 of §1.4."""

import numpy as np
import pytest

from fsmis_bench.data.cache import class_index
from fsmis_bench.data.datasets import ABD_CT, ABD_MRI
from fsmis_bench.errors import ConfigError
from fsmis_bench.protocol.settings import allowed_slices, excluded_labels, model_groups, training_classes


def test_models_per_fold():
    assert model_groups(1, "superpix2d") == [None]
    assert model_groups(2, "superpix2d") == ["lower", "upper"]
    assert model_groups(1, "gt") == ["lower", "upper"]  # GT training: test organs never a class (§4.4)
    assert model_groups(2, "gt") == ["lower", "upper"]
    assert model_groups(2, "superpix2d", "all_and") == [None]
    with pytest.raises(ConfigError):
        model_groups(3, "superpix2d")
    with pytest.raises(ConfigError):
        model_groups(2, "gt", "all_any")


def test_excluded_label_sets_per_dataset():
    assert excluded_labels(ABD_MRI, 1, "upper", "group_any") == ()
    assert set(excluded_labels(ABD_MRI, 2, "upper", "group_any")) == {1, 4}
    assert set(excluded_labels(ABD_MRI, 2, "lower", "group_any")) == {2, 3}
    assert set(excluded_labels(ABD_CT, 2, "upper", "group_any")) == {6, 1}
    assert set(excluded_labels(ABD_CT, 2, "lower", "group_any")) == {2, 3}
    assert set(excluded_labels(ABD_MRI, 2, None, "all_and")) == {1, 2, 3, 4}


def test_exclusion_rules_on_a_toy_index():
    index = {1: [0, 1, 2], 4: [2, 3]}
    assert allowed_slices(index, (1, 4), "group_any", n_slices=6).tolist() == [0, 0, 0, 0, 1, 1]
    assert allowed_slices(index, (1, 4), "all_and", n_slices=6).tolist() == [1, 1, 0, 1, 1, 1]
    assert allowed_slices(index, (), "group_any", n_slices=6).all()


def test_training_classes_exclude_the_tested_group():
    assert training_classes(ABD_MRI, "upper") == (2, 3)
    assert training_classes(ABD_MRI, "lower") == (1, 4)
    ct = training_classes(ABD_CT, "upper")
    assert 6 not in ct and 1 not in ct and len(ct) == 11  # the nine other organs + both kidneys


@pytest.mark.real_data
def test_chaos_slice_counts_718_558_88(chaos_labels):
    organ_labels = (1, 2, 3, 4)
    total = removed_any = removed_all = 0
    for label in chaos_labels.values():
        index, _ = class_index(label)
        n = label.shape[0]
        total += n
        removed_any += int((~allowed_slices(index, organ_labels, "all_any", n_slices=n)).sum())
        removed_all += int((~allowed_slices(index, organ_labels, "all_and", n_slices=n)).sum())
    assert (total, removed_any, removed_all) == (718, 558, 88)


@pytest.mark.real_data
def test_chaos_sanity_table_rows(chaos_labels):
    # protocol §1.4: pid -> (Z, liver range and count, spleen range and count)
    rows = {
        1: (37, (12, 35, 24), (18, 31, 14)),
        3: (36, (9, 27, 19), (12, 25, 14)),
        32: (46, (12, 43, 32), (24, 39, 16)),
    }
    for pid, (depth, liver, spleen) in rows.items():
        index, _ = class_index(chaos_labels[pid])
        assert chaos_labels[pid].shape[0] == depth
        for label, (lo, hi, count) in ((1, liver), (4, spleen)):
            assert (index[label][0], index[label][-1], len(index[label])) == (lo, hi, count)
    index3, _ = class_index(chaos_labels[3])
    left = index3[3]
    assert (left[0], left[-1], len(left)) == (3, 18, 15)  # one gap slice


def test_group_exclusion_is_any_pixel():
    label = np.zeros((4, 8, 8), dtype=np.uint8)
    label[1, 0, 0] = 1  # a single liver pixel removes the slice in setting 2 (upper group)
    label[2, 3:6, 3:6] = 2
    index, _ = class_index(label)
    upper = allowed_slices(index, excluded_labels(ABD_MRI, 2, "upper", "group_any"), "group_any", n_slices=4)
    lower = allowed_slices(index, excluded_labels(ABD_MRI, 2, "lower", "group_any"), "group_any", n_slices=4)
    assert upper.tolist() == [True, False, True, True]
    assert lower.tolist() == [True, True, False, True]

"""The mirrored-support control: a support-following model loses Dice, a support-blind one keeps it, the main
number does not move, and bad options are one clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.support_control import (
    COLUMN,
    MirroredSupportControl,
    mirrored_support,
    support_control_of,
)


def _episode() -> EpisodeBatch:
    """One query slice whose organ is a block on the left; its support mask marks the same block."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 1:6] = 1.0
    image = torch.rand(1, 1, 3, 16, 16)
    return EpisodeBatch(
        support_images=image,
        support_masks=mask,
        query_images=image[0],
        query_masks=mask[0],
        query_episode=torch.zeros(1, dtype=torch.long),
        organ="liver",
        meta={"scan_id": 7, "native_ref": mask[0].numpy().astype(bool)},
    )


class _FollowsSupport:
    """Predicts the support mask of its episode (what an ideal few-shot model does on this toy)."""

    def predict_masks(self, batch: EpisodeBatch) -> torch.Tensor:
        return batch.support_masks[batch.query_episode, 0] > 0.5


class _IgnoresSupport:
    """Predicts the block wherever the support points (a model that only learnt the training shapes)."""

    def predict_masks(self, batch: EpisodeBatch) -> torch.Tensor:
        return torch.as_tensor(batch.meta["native_ref"]).clone()


def _control_dice(model: object) -> float:
    control = MirroredSupportControl()
    batch = _episode()
    control.on_test_batch_end(None, model, None, batch, 0)
    rows = [{"scan_id": 7, "organ": "liver"}, {"scan_id": 8, "organ": "liver"}]
    control.annotate(rows)
    assert math.isnan(rows[1][COLUMN])  # a case the control did not see
    return rows[0][COLUMN]


def test_a_model_that_follows_its_support_loses_the_organ_under_the_mirrored_support():
    assert _control_dice(_FollowsSupport()) == 0.0  # the mirrored block lies on the other side


def test_a_model_that_ignores_its_support_keeps_its_dice():
    assert _control_dice(_IgnoresSupport()) == 1.0


def test_mirroring_changes_the_support_masks_only():
    batch = _episode()
    mirrored = mirrored_support(batch)
    assert torch.equal(mirrored.support_masks, batch.support_masks.flip(-1))
    assert mirrored.support_images is batch.support_images and mirrored.query_images is batch.query_images
    assert not torch.equal(mirrored.support_masks, batch.support_masks)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"support_control": "shuffle"}, "expected one of none, mirror"),
        ({"support_contrl": "mirror"}, "unknown evaluation option"),
        ("mirror", "expected a mapping"),
    ],
)
def test_bad_evaluation_options_are_one_clear_error(section, problem):
    with pytest.raises(ConfigError, match=problem):
        support_control_of({"evaluation": section})


def test_no_evaluation_section_means_no_control():
    assert support_control_of({}) == "none"


def _run(tmp_path: Path, data_root: Path, name: str, *extra: str) -> Path:
    output = tmp_path / name
    args = ["run", "--method", "copy_support", "--fold", "0", "--data-root", str(data_root), "--profile"]
    args += ["smoke", "--output", str(output), "--cache-dir", str(tmp_path / "cache"), *extra]
    assert main(args) == 0
    return next(output.iterdir())


def test_a_run_with_the_control_records_it_beside_an_unchanged_main_number(tmp_path, tiny_mri_root):
    plain = _run(tmp_path, tiny_mri_root, "plain")
    controlled = _run(tmp_path, tiny_mri_root, "control", "--set", "evaluation.support_control=mirror")
    base, cases = pd.read_csv(plain / "cases.csv"), pd.read_csv(controlled / "cases.csv")
    assert COLUMN not in base.columns
    np.testing.assert_array_equal(base["dice"].to_numpy(), cases["dice"].to_numpy())
    assert cases[COLUMN].notna().all()
    # copying the support mask is the most support-bound method there is: mirrored, it misses the organs
    assert cases[COLUMN].mean() < cases["dice"].mean() - 0.2
    summary = json.loads((controlled / "summary.json").read_text())
    assert summary["secondary_metrics"][COLUMN]["mean"] == pytest.approx(
        cases.groupby("organ")[COLUMN].mean().mean(), abs=1e-6
    )


def test_a_method_that_trains_on_the_support_at_test_time_is_refused(tmp_path, tiny_mri_root):
    """ProGiDiff's adapters are fitted on the true support: a mirrored mask at prediction time tests nothing."""
    args = ["run", "--method", "progidiff", "--fold", "0", "--data-root", str(tiny_mri_root), "--profile"]
    args += ["smoke", "--output", str(tmp_path / "runs"), "--set", "evaluation.support_control=mirror"]
    assert main(args) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

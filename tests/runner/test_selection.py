"""``selection``: one config value chosen per model by training loss; the chosen model is the one a run with that
value alone trains, only it is tested, and the choice is recorded and tagged."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from fsmis_bench.cli import main
from fsmis_bench.errors import ConfigError
from fsmis_bench.runner.experiment import RunRequest, resolve_config
from fsmis_bench.runner.selection import Selection, chosen

LR = "model.init_args.optimizer.lr"
SELECT = ["--set", f"selection.key={LR}", "--set", "selection.values=[1.0e-2, 3.0e-1]"]


def run_panet(tmp_path, smoke_run_args, name, *extra):
    output = tmp_path / name
    args = [*smoke_run_args("panet"), "--set", "trainer.max_steps=6", *extra]
    args[args.index("--output") + 1] = str(output)
    assert main(args) == 0
    [run] = output.iterdir()
    return json.loads((run / "summary.json").read_text()), pd.read_csv(run / "cases.csv"), run


def test_the_lowest_tail_loss_wins_and_equals_a_run_with_that_value_alone(tmp_path, smoke_run_args):
    summary, cases, run = run_panet(tmp_path, smoke_run_args, "selected", *SELECT)
    [model] = summary["models"]
    record = model["selection"]
    tails = [c["train_loss_tail"] for c in record["candidates"]]
    assert [c["value"] for c in record["candidates"]] == [1.0e-2, 3.0e-1]
    assert record["chosen"] == record["candidates"][tails.index(min(tails))]["value"]
    assert tails[0] != tails[1]  # the candidates trained differently
    assert f"selected_by_train_loss({LR})" in model["deviations"]
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["all-candidate0", "all-candidate1"]
    _, alone, _ = run_panet(tmp_path, smoke_run_args, "alone", "--set", f"{LR}={record['chosen']}")
    pd.testing.assert_frame_equal(cases, alone)  # same seed, same model: the choice adds nothing else


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"key": "model.init_args.optimizer.momentumm", "values": [0.9, 0.5]}, "no such key"),
        ({"key": LR, "values": [1.0e-2]}, "two or more different values"),
        ({"key": LR, "values": [1.0e-2, 1.0e-2]}, "two or more different values"),
        ({"key": "prior.target", "values": ["a", "b"]}, "model, data or trainer"),
        ({"key": LR, "values": [1.0e-2, 1.0e-3], "tail": 0}, r"in \(0, 1\]"),
    ],
)
def test_a_bad_selection_is_a_config_error(section, message):
    overrides = [f"selection={json.dumps(section)}"]
    with pytest.raises(ConfigError, match=message):
        resolve_config(RunRequest("panet", 0, profile="smoke", overrides=overrides))


def test_a_method_that_trains_nothing_or_a_bad_candidate_is_refused_before_running(tmp_path, smoke_run_args):
    from fsmis_bench.runner.config_check import check_config

    config = resolve_config(RunRequest("panet", 0, profile="smoke"))
    bad = {**config, "selection": {"key": "model.init_args.optimizer.name", "values": ["sgd", "nosuch"]}}
    with pytest.raises(ConfigError, match="nosuch"):
        check_config("panet", bad)
    copy = {
        **resolve_config(RunRequest("copy_support", 0, profile="smoke")),
        "selection": {"key": "data.image_size", "values": [64, 32]},
    }
    with pytest.raises(ConfigError, match="trains nothing"):
        check_config("copy_support", copy)


def test_nan_never_wins_and_ties_go_to_the_first():
    selection = Selection(LR, (1.0, 2.0, 3.0))
    assert chosen(selection, [math.nan, 0.5, 0.4]) == 2
    assert chosen(selection, [0.4, 0.4, math.nan]) == 0

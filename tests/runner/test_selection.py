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
from fsmis_bench.runner.selection import chosen

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
    assert record["chosen"] == 3.0e-1  # the second candidate: trained after another in the same process
    assert tails[0] != tails[1]  # the candidates trained differently
    assert model["train_steps"] == 6 and model["train_seconds"] > 0
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
        ({"key": "data.image_size", "values": [64, 32]}, "model.init_args key"),
        ({"key": "trainer.max_steps", "values": [10, 20]}, "model.init_args key"),
        ({"key": LR, "values": [1.0e-2, 1.0e-3], "tail": 0}, r"in \(0, 1\]"),
    ],
)
def test_a_bad_selection_is_a_config_error(section, message):
    overrides = [f"selection={json.dumps(section)}"]
    with pytest.raises(ConfigError, match=message):
        resolve_config(RunRequest("panet", 0, profile="smoke", overrides=overrides))


def test_a_method_that_trains_nothing_or_a_bad_candidate_is_refused_before_running():
    from fsmis_bench.runner.config_check import check_config

    config = resolve_config(RunRequest("panet", 0, profile="smoke"))
    bad = {**config, "selection": {"key": "model.init_args.optimizer.name", "values": ["sgd", "nosuch"]}}
    with pytest.raises(ConfigError, match="nosuch"):
        check_config("panet", bad)
    band = {"key": "model.init_args.low_percentile", "values": [5.0, 10.0]}
    threshold = {**resolve_config(RunRequest("threshold", 0, profile="smoke")), "selection": band}
    with pytest.raises(ConfigError, match="trains nothing"):
        check_config("threshold", threshold)


def test_nan_never_wins_and_ties_go_to_the_first():
    assert chosen([math.nan, 0.5, 0.4]) == 2
    assert chosen([0.4, 0.4, math.nan]) == 0


def test_the_tail_averages_the_last_steps_of_a_real_fit_with_gradient_accumulation(tmp_path):
    """Batch b (1-based) of a fit accumulating A batches belongs to step ceil(b / A), and Lightning hands back its
    loss divided by A: the tail must undo both."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from fsmis_bench.runner.selection import TrainLossTail

    class Echo(L.LightningModule):  # loss = the batch's value
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, idx):
            return batch.float().sum() + 0 * self.weight

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    tail = TrainLossTail(tail=0.4)  # 5 steps of 2 batches: steps 4 and 5 = batches 7..10
    trainer = L.Trainer(
        max_steps=5, accumulate_grad_batches=2, callbacks=[tail], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Echo(), DataLoader(torch.arange(1, 11), batch_size=1))
    assert trainer.global_step == 5
    assert [step for step, _ in tail.losses] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert tail.value == pytest.approx((7 + 8 + 9 + 10) / 4)


def test_the_tail_averages_the_losses_of_the_last_steps_only():
    from types import SimpleNamespace

    import torch

    from fsmis_bench.runner.selection import TrainLossTail

    tail = TrainLossTail(tail=0.2)  # steps 9 and 10
    for step in range(1, 11):
        outputs = {"loss": torch.tensor(float(step))}
        tail.on_train_batch_end(SimpleNamespace(accumulate_grad_batches=1), None, outputs, None, 0)
    assert tail.value == 9.5
    with pytest.raises(ConfigError, match="no training loss"):
        _ = TrainLossTail(tail=0.2).value

"""A run you can watch: progress lines when stdout is a log, the end-of-run table with the floors beside it,
TensorBoard scalars and colour overlays for every test organ; and the help a new user reads first."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fsmis_bench.cli import main
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.overlays import PREDICTION_COLOUR, SUPPORT_COLOUR, TRUTH_COLOUR
from fsmis_bench.registry import METHODS, PROFILES
from fsmis_bench.runner.run_table import floor_summaries


def run(tmp_path: Path, data_root: Path, method: str, *extra: str) -> int:
    args = ["run", "--method", method, "--fold", "0", "--data-root", str(data_root), "--profile", "smoke"]
    args += ["--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *extra]
    return main(args)


@pytest.fixture(scope="module")
def watched(tmp_path_factory, tiny_mri_root):
    """The copy floor, then PANet (10 steps) into the same folder; PANet's stdout."""
    tmp_path = tmp_path_factory.mktemp("watched")
    assert run(tmp_path, tiny_mri_root, "copy_support") == 0
    out = io.StringIO()
    with redirect_stdout(out):
        assert run(tmp_path, tiny_mri_root, "panet", "--set", "trainer.max_steps=10") == 0
    return tmp_path / "runs", out.getvalue()


def test_progress_lines_cover_data_training_and_testing(watched):
    _, out = watched
    lines = [line for line in out.splitlines() if line.startswith("[panet fold 0]")]
    assert any("data ready in" in line and "4 query scans" in line for line in lines), lines
    steps = [line for line in lines if " step " in line]
    assert steps[0].startswith("[panet fold 0] step 1/10 loss ") and steps[-1].startswith(
        "[panet fold 0] step 10/10"
    )
    assert all("steps/s" in line and "ETA" in line for line in steps)
    assert lines[-1].startswith("[panet fold 0] test 16/16 cases")


def test_the_end_table_shows_dice_hd95_and_the_floor_of_the_same_fold(watched):
    runs, out = watched
    header = next(line for line in out.splitlines() if line.startswith("organ"))
    assert header.split() == ["organ", "Dice", "%", "HD95", "mm", "copy_support", "Dice", "%"]
    floor = json.loads(next(runs.glob("copy_support_*")).joinpath("summary.json").read_text())
    liver = next(line for line in out.splitlines() if line.startswith("liver "))
    assert liver.split()[-1] == f"{100 * floor['dice']['liver']:.2f}"


def test_tensorboard_has_loss_scalars_and_an_overlay_for_every_organ(watched):
    runs, _ = watched
    events = EventAccumulator(
        str(next(runs.glob("panet_*")) / "tensorboard" / "all"), size_guidance={"images": 0}
    )
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert "train/loss" in scalars and len(events.Scalars("train/loss")) >= 5  # every 1 step at 10 steps
    assert {f"test/dice_{o}" for o in ORGANS} <= scalars and {f"test/hd95_{o}" for o in ORGANS} <= scalars
    images = events.Tags()["images"]
    for organ in ORGANS:
        tags = [t for t in images if t.startswith(f"test/{organ}_")]
        assert len(tags) == 1, (organ, images)
        encoded = events.Images(tags[0])[0]
        import io

        rgb = np.asarray(Image.open(io.BytesIO(encoded.encoded_image_string)).convert("RGB")).astype(int)
        assert rgb.shape[1] == 2 * rgb.shape[0]  # support | query
        support, query = rgb[:, : rgb.shape[0]], rgb[:, rgb.shape[0] :]
        assert _has_colour(support, SUPPORT_COLOUR), organ
        assert _has_colour(query, TRUTH_COLOUR) or _has_colour(query, PREDICTION_COLOUR), organ


def _has_colour(rgb: np.ndarray, colour: tuple[float, float, float]) -> bool:
    target = np.round(np.asarray(colour) * 255).astype(int)
    return bool((np.abs(rgb - target).max(axis=-1) <= 2).any())


def test_help_lists_names_defaults_and_examples():
    out = subprocess.run(
        [sys.executable, "-m", "fsmis_bench.cli", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "250"},
    ).stdout
    for name in [*METHODS, *PROFILES, "synthetic_mri", "abd_ct"]:
        assert name in out
    assert "(default: cpu)" in out and "0..4" in out and out.count("fsmis-bench run --method") >= 2
    assert "(default: None)" not in out


def test_version_and_the_listed_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("fsmis-bench 0.")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "synthetic_mri *" in out and "cpu *" in out


def test_fold_is_required_except_for_a_dry_run(capsys):
    assert main(["run", "--method", "panet"]) == 2
    assert "--fold is required" in capsys.readouterr().err
    assert main(["run", "--method", "panet", "--profile", "paper", "--dry-run", "--json"]) == 0
    assert '"run_id": "panet_synthetic_mri_s1_f0_k1_seed0_paper"' in capsys.readouterr().out


def test_only_a_floor_of_the_same_task_stands_beside_the_run(tmp_path):
    task = {"dataset": "abd_mri", "setting": 2, "fold": 1, "shots": 1, "seed": 0}

    def write(name: str, **changes) -> None:
        (tmp_path / name).mkdir()
        summary = {**task, "method": name.split("_f")[0], "dice": {"liver": 0.5}, **changes}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary), encoding="utf-8")

    write("copy_support_f0", fold=0)  # another fold
    write("copy_support_f1_seed3", seed=3)  # same task, other seed
    write("copy_support_f1_seed0_ci", setting=1)  # another setting
    write("threshold_f1", shots=3)  # other shots
    found = floor_summaries({**task, "method": "panet"}, tmp_path / "panet_run")
    assert list(found) == ["copy_support"] and found["copy_support"]["seed"] == 3
    write("copy_support_f1_seed0_cpu")  # same task and seed: preferred
    found = floor_summaries({**task, "method": "panet"}, tmp_path / "panet_run")
    assert found["copy_support"]["seed"] == 0 and found["copy_support"]["setting"] == 2

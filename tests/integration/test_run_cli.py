"""``fsmis-bench run`` end to end on tiny synthetic volumes: outputs, determinism and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fsmis_bench.cli import main

SMOKE = ["--profile", "smoke", "--set", "trainer.max_steps=2"]


def run(tmp_path: Path, data_root: Path, *extra: str, method: str = "alpnet", fold: str = "0") -> int:
    args = ["run", "--method", method, "--fold", fold, "--data-root", str(data_root)]
    args += ["--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *SMOKE, *extra]
    return main(args)


@pytest.mark.parametrize("method", ["alpnet", "panet", "copy_support", "threshold"])
def test_each_baseline_runs_end_to_end(tmp_path, tiny_mri_root, method):
    assert run(tmp_path, tiny_mri_root, method=method) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("method", "dataset", "setting", "fold", "shots", "seed", "profile", "status", "seconds"):
        assert key in summary
    assert summary["status"] == "ok" and summary["method"] == method
    assert set(summary["dice"]) == {"liver", "spleen", "kidney_left", "kidney_right", "mean"}
    assert set(summary["hd95"]) == set(summary["dice"])
    for key in ("code_version", "packages", "config_hash", "host"):
        assert key in summary["provenance"]
    cases = pd.read_csv(run_dir / "cases.csv")
    assert list(cases.columns[:3]) == ["fold", "scan_id", "organ"]
    assert {"tp", "fp", "fn", "dice", "hd95"} <= set(cases.columns)
    assert len(cases) == 4 * 4  # four query volumes x four organs
    assert (run_dir / "config.yaml").exists()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_setting_2_trains_one_model_per_group(tmp_path, tiny_mri_root):
    assert run(tmp_path, tiny_mri_root, "--setting", "2") == 0
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    groups = {m["group"]: m for m in summary["models"]}
    assert set(groups) == {"lower", "upper"}
    assert groups["lower"]["organs"] == ["kidney_left", "kidney_right"]
    for model in groups.values():
        assert model["training_slices_kept"] < model["training_slices_total"]


@pytest.mark.parametrize("method", ["copy_support", "threshold"])
def test_reference_floors_run_in_setting_2_with_one_untrained_model(tmp_path, tiny_mri_root, method):
    """Setting 2 only changes training; a floor that never trains is scored on all four organs at once."""
    assert run(tmp_path, tiny_mri_root, "--setting", "2", method=method) == 0
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    assert [m["group"] for m in summary["models"]] == ["all"] and summary["setting"] == 2
    assert "training_slices_kept" not in summary["models"][0]


def test_same_seed_gives_identical_cases(tmp_path, tiny_mri_root):
    assert run(tmp_path / "a", tiny_mri_root, "--set", "trainer.max_steps=4") == 0
    assert run(tmp_path / "b", tiny_mri_root, "--set", "trainer.max_steps=4") == 0
    first = next((tmp_path / "a" / "runs").iterdir()) / "cases.csv"
    second = next((tmp_path / "b" / "runs").iterdir()) / "cases.csv"
    assert first.read_text() == second.read_text()


def _assert_clean_failure(tmp_path: Path, capsys, status: int, pattern: str) -> None:
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_unknown_method(tmp_path, tiny_mri_root, capsys):
    _assert_clean_failure(
        tmp_path, capsys, run(tmp_path, tiny_mri_root, method="unet"), "unknown method 'unet'"
    )


def test_unknown_dataset(tmp_path, tiny_mri_root, capsys):
    status = run(tmp_path, tiny_mri_root, "--dataset", "abd_xray")
    _assert_clean_failure(tmp_path, capsys, status, "unknown dataset 'abd_xray'")


def test_fold_out_of_range(tmp_path, tiny_mri_root, capsys):
    _assert_clean_failure(
        tmp_path, capsys, run(tmp_path, tiny_mri_root, fold="7"), "--fold 7: fold out of range"
    )


def test_missing_data_root(tmp_path, capsys):
    status = run(tmp_path, tmp_path / "nowhere")
    _assert_clean_failure(tmp_path, capsys, status, "nowhere: data folder does not exist")


def test_real_dataset_without_data_root(tmp_path, capsys):
    status = main(
        [
            "run",
            "--method",
            "alpnet",
            "--fold",
            "0",
            "--dataset",
            "abd_ct",
            "--output",
            str(tmp_path / "runs"),
        ]
    )
    _assert_clean_failure(tmp_path, capsys, status, "--data-root is required for abd_ct")


@pytest.fixture()
def broken_copy(tmp_path: Path, tiny_mri_root: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(tiny_mri_root, target)
    return target


def test_corrupt_nifti(tmp_path, broken_copy, capsys):
    (broken_copy / "image_10.nii.gz").write_bytes(b"\x1f\x8b garbage")
    status = run(tmp_path, broken_copy)
    _assert_clean_failure(tmp_path, capsys, status, "image_10.nii.gz: cannot read NIfTI")


def test_missing_file(tmp_path, broken_copy, capsys):
    (broken_copy / "label_13.nii.gz").unlink()
    _assert_clean_failure(tmp_path, capsys, run(tmp_path, broken_copy), "label_13.nii.gz: file is missing")


def _rewrite_label(path: Path, edit) -> None:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.uint8)
    nib.save(nib.Nifti1Image(edit(data), img.affine), str(path))


def test_shape_mismatch(tmp_path, broken_copy, capsys):
    _rewrite_label(broken_copy / "label_15.nii.gz", lambda d: d[:, :, :-1])
    status = run(tmp_path, broken_copy)
    _assert_clean_failure(tmp_path, capsys, status, "label_15.nii.gz: label shape")


def test_unknown_label_id(tmp_path, broken_copy, capsys):
    def add_nine(d):
        d[0, 0, 0] = 9
        return d

    _rewrite_label(broken_copy / "label_19.nii.gz", add_nine)
    status = run(tmp_path, broken_copy)
    _assert_clean_failure(tmp_path, capsys, status, "label_19.nii.gz: unknown label ids [9]")


def test_organ_absent_from_support_scan(tmp_path, broken_copy, capsys):
    _rewrite_label(broken_copy / "label_8.nii.gz", lambda d: (d * (d != 4)).astype("uint8"))  # no spleen
    status = run(tmp_path, broken_copy)
    _assert_clean_failure(tmp_path, capsys, status, "organ spleen (label 4) is absent from the support scan")


def test_organ_absent_from_a_query_is_skipped_and_reported(tmp_path, broken_copy):
    _rewrite_label(broken_copy / "label_2.nii.gz", lambda d: (d * (d != 3)).astype("uint8"))  # no left kidney
    assert run(tmp_path, broken_copy, method="copy_support") == 0
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    assert summary["models"][0]["skipped_cases"] == [
        {"scan_id": 2, "organ": "kidney_left", "reason": "organ absent from query"}
    ]
    assert summary["valid_cases"]["kidney_left"] == 3


def test_bad_override_is_a_clear_error(tmp_path, tiny_mri_root, capsys):
    status = run(tmp_path, tiny_mri_root, "--set", "data.imagesize=64")
    _assert_clean_failure(tmp_path, capsys, status, "unknown data option(s) ['imagesize']")


def test_list_prints_methods_datasets_profiles(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("alpnet", "panet", "copy_support", "threshold", "synthetic_mri", "abd_ct", "smoke", "paper"):
        assert name in out


def test_protocol_json(tiny_mri_root, tmp_path, capsys):
    args = ["protocol", "--dataset", "synthetic_mri", "--data-root", str(tiny_mri_root), "--fold", "1"]
    assert main([*args, "--setting", "2", "--json", "--cache-dir", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["support_ids"] == [19] and plan["query_ids"] == [8, 10, 13, 15]
    assert len(plan["train_ids"]) == 15
    assert 0 < plan["groups"]["upper"]["kept_slices"] < plan["training_slices_total"]
    assert len(plan["ep1_cases"]) + len(plan["skipped_cases"]) == 4 * 4  # query scans x organs
    for case in plan["ep1_cases"]:
        assert len(case["chunks"]) == 3 and all(c["supports"][0][0] == 19 for c in case["chunks"])
        firsts = [c["slices"][0] for c in case["chunks"] if c["slices"]]
        assert firsts == sorted(firsts)
    assert not any(tmp_path.iterdir())  # read from the label volumes: nothing cached


def test_protocol_prints_a_table_of_the_ep1_cases(tiny_mri_root, tmp_path, capsys):
    args = ["protocol", "--dataset", "synthetic_mri", "--data-root", str(tiny_mri_root), "--fold", "1"]
    assert main([*args, "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("synthetic_mri, fold 1, setting 1")
    header = next(i for i, line in enumerate(out) if line.startswith("scan"))
    assert out[header].split() == ["scan", "organ", "chunk", "1", "chunk", "2", "chunk", "3"]
    assert out[header + 1].split()[:2] == ["8", "liver"] and "<- 19:" in out[header + 1]

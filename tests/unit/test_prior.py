"""The in-domain prior: fold safety of its slices, its cache key, and the Stable Diffusion folder it saves."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fsmis_bench.data.datasets import SYNTHETIC_MRI
from fsmis_bench.methods.sd_layout import check_component
from fsmis_bench.prior import PriorConfig, prepare_prior, with_prior
from fsmis_bench.prior import builder as prior_builder
from fsmis_bench.prior.slices import collect_prior_slices

#: A prior small enough to train in seconds (32-px slices, 16x16 latents).
TINY_PRIOR = {
    "vae_steps": 2,
    "unet_steps": 2,
    "vae_batch": 2,
    "unet_batch": 2,
    "preview_count": 2,
    "preview_inference_steps": 2,
    "vae": {"block_out_channels": [8, 8], "norm_num_groups": 4},
    "unet": {"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4, "cross_attention_dim": 16},
    "text_encoder": {"intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1},
}
DATA = {"image_size": 32, "normalisation": "volume_minmax"}
#: Support and query scans of the synthetic datasets' folds (the ALPNet fold table; the last scan of the next
#: fold's block is the support), written out here rather than taken from the code under test.
HELD_OUT = {0: [1, 2, 3, 5, 8], 1: [8, 10, 13, 15, 19]}


@pytest.fixture(scope="module")
def prior_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("prior_cache")


def native_labels(root: Path, scan_id: int) -> np.ndarray:
    """(Z, H, W) label volume read straight from the NIfTI file."""
    data = np.asarray(nib.load(str(root / f"label_{scan_id}.nii.gz")).dataobj)
    return data.transpose(2, 1, 0)


@pytest.mark.parametrize("fold", [0, 1])
def test_a_prior_never_sees_the_folds_support_or_query_scans(tiny_mri_root, prior_cache, fold):
    slices = collect_prior_slices(
        "synthetic_mri", fold, 1, None, DATA, data_root=str(tiny_mri_root), cache_dir=str(prior_cache)
    )
    seen = {scan for scan, _ in slices.slices}
    assert slices.held_out == HELD_OUT[fold]
    assert not seen & set(HELD_OUT[fold])
    assert seen | set(HELD_OUT[fold]) == set(
        SYNTHETIC_MRI.scan_ids
    )  # setting 1: every other scan, every slice
    assert len(slices.slices) == 16 * len(seen) == len(slices.images)
    assert slices.images.min() >= 0 and slices.images.max() <= 1


@pytest.mark.parametrize("group", ["lower", "upper"])
def test_setting_2_prior_sees_no_slice_of_the_tested_organs(tiny_mri_root, prior_cache, group):
    slices = collect_prior_slices(
        "synthetic_mri", 0, 2, group, DATA, data_root=str(tiny_mri_root), cache_dir=str(prior_cache)
    )
    tested = SYNTHETIC_MRI.group_labels(group)
    kept: dict[int, list[int]] = {}
    for scan, z in slices.slices:
        kept.setdefault(scan, []).append(z)
    assert len(kept) == 15
    for scan, zs in kept.items():
        labels = native_labels(tiny_mri_root, scan)
        clean = [z for z in range(len(labels)) if not np.isin(labels[z], tested).any()]
        assert zs == clean, (scan, group)  # exactly the slices without a tested organ


def fake_training(calls: list[str], pause: float = 0.0):
    def train(slices, cfg, seed, folder):
        calls.append(folder.name)
        time.sleep(pause)
        return {"cpu_minutes": 0.0, "vae": {}, "unet": {}}

    return train


def test_the_cache_key_retrains_only_what_changed(tiny_mri_root, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(prior_builder, "train_prior", fake_training(calls))

    def prior(section=TINY_PRIOR, fold=0, setting=1, group=None, seed=0, data=DATA):
        return prepare_prior(
            section, dataset="synthetic_mri", fold=fold, setting=setting, group=group, seed=seed,
            data_root=str(tiny_mri_root), cache_dir=str(tmp_path), data_options=data,
        )  # fmt: skip

    first, record = prior()
    assert record["trained_in_this_run"] and len(calls) == 1
    assert prior()[0] == first and len(calls) == 1  # the same key reuses
    assert prior(group="lower")[0] == first and len(calls) == 1  # setting 1: the group changes no slice
    assert (
        prior({**TINY_PRIOR, "target": "backbone.pretrained_path"})[0] == first
    )  # where it goes, not what it is
    for changed in (
        {"fold": 1},
        {"seed": 1},
        {"section": {**TINY_PRIOR, "unet_steps": 3}},
        {"data": {**DATA, "superpixel_compat": False}},  # other superpixels: other masks
        {"setting": 2, "group": "lower"},
        {"setting": 2, "group": "upper"},
    ):
        before = len(calls)
        folder, record = prior(**changed)
        assert folder != first and record["trained_in_this_run"] and len(calls) == before + 1, changed
    assert json.loads((first / "prior.json").read_text())["key"]["fold"] == 0


def test_concurrent_jobs_train_a_key_once(tiny_mri_root, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(prior_builder, "train_prior", fake_training(calls, pause=0.5))
    prepare_kwargs = {"dataset": "synthetic_mri", "fold": 0, "setting": 1, "group": None, "seed": 0,
                      "data_root": str(tiny_mri_root), "cache_dir": str(tmp_path), "data_options": DATA}  # fmt: skip
    collect_prior_slices(
        "synthetic_mri", 0, data_root=str(tiny_mri_root), cache_dir=str(tmp_path), data_options=DATA
    )
    records: list[dict] = []
    threads = [
        threading.Thread(target=lambda: records.append(prepare_prior(TINY_PRIOR, **prepare_kwargs)[1]))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(r["trained_in_this_run"] for r in records) == [False, False, True]


def test_a_failed_training_leaves_no_prior_behind(tiny_mri_root, tmp_path, monkeypatch):
    def broken(slices, cfg, seed, folder):
        (folder / "half-written").write_text("x")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(prior_builder, "train_prior", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        prepare_prior(TINY_PRIOR, dataset="synthetic_mri", fold=0, setting=1, group=None, seed=0,
                      data_root=str(tiny_mri_root), cache_dir=str(tmp_path), data_options=DATA)  # fmt: skip
    assert not [p for p in (tmp_path / "priors").iterdir() if p.is_dir()]


def test_the_prior_is_a_stable_diffusion_folder(tiny_mri_root, prior_cache):
    from diffusers import StableDiffusionPipeline

    folder, record = prepare_prior(
        TINY_PRIOR, dataset="synthetic_mri", fold=0, setting=1, group=None, seed=0,
        data_root=str(tiny_mri_root), cache_dir=str(prior_cache), data_options=DATA,
    )  # fmt: skip
    for subfolder in ("vae", "unet", "text_encoder", "tokenizer"):
        check_component(folder, subfolder)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    for name in ("samples.png", "reconstructions.png"):
        assert (folder / name).stat().st_size > 0
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    pipeline = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        "an abdominal mri slice", height=32, width=32, num_inference_steps=2, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size == 16
    assert record["vae"]["steps"] == 2 and record["unet"]["steps"] == 2
    assert set(record["vae"]["mask_round_trip_dice"]) == {"liver", "spleen", "kidney_left", "kidney_right"}
    saved = json.loads((folder / "prior.json").read_text())
    assert len(saved["slices"]["list"]) == saved["slices"]["n_slices"] == 15 * 16


def test_the_prior_folder_goes_into_the_named_option(tmp_path):
    model = {"class_path": "x", "init_args": {"backbone": {"model_size": "pretrained"}}}
    pointed = with_prior(model, "backbone.pretrained_path", tmp_path)
    assert pointed["init_args"]["backbone"] == {"model_size": "pretrained", "pretrained_path": str(tmp_path)}
    assert "pretrained_path" not in model["init_args"]["backbone"]  # the profile is not changed


def test_prior_options_are_checked():
    with pytest.raises(Exception, match="unknown prior option"):
        PriorConfig.from_section({"unet_stpes": 3})
    with pytest.raises(Exception, match="prediction_type"):
        PriorConfig.from_section({"prediction_type": "sample"})


def test_make_bench_measures_the_priors_training_steps():
    import importlib.util

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("prior_perf", repo / "benchmark" / "prior_perf.py")
    prior_perf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prior_perf)
    figures = prior_perf.measure_prior_steps(lambda: 1e12, steps=1, image_size=32)
    for stage in ("vae", "unet"):
        assert figures[stage]["steps_per_s"] > 0 and figures[stage]["gflops_per_step"] > 0.01
        assert 0 < figures[stage]["flop_utilisation"] < 1
    assert "| unet | 32 |" in "\n".join(prior_perf.render_prior(figures))


def test_fsmis_bench_prior_trains_then_finds_the_cached_prior(tiny_mri_root, tmp_path, capsys):
    from fsmis_bench.cli import main

    args = ["prior", "--method", "progidiff", "--fold", "0", "--data-root", str(tiny_mri_root),
            "--cache-dir", str(tmp_path), "--set", "data.image_size=32"]  # fmt: skip
    args += [f"--set=prior.{key}={value}" for key, value in TINY_PRIOR.items() if not isinstance(value, dict)]
    assert main(args) == 0
    assert "(trained;" in capsys.readouterr().out
    assert main(args) == 0
    assert "(cached;" in capsys.readouterr().out
    assert main([*args[:5], "--setting", "2"]) == 2  # setting 2 needs the tested group
    assert "--group must be one of" in capsys.readouterr().err
    assert main(["prior", "--method", "alpnet", "--fold", "0"]) == 2
    assert "has no prior section" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["sd_fsmis", "progidiff"])
def test_the_random_init_ablation_stays_reachable(method):
    from fsmis_bench.errors import ConfigError
    from fsmis_bench.registry import check_profile
    from fsmis_bench.runner.config_check import check_config
    from fsmis_bench.runner.experiment import RunRequest, resolve_config

    with_prior = resolve_config(RunRequest(method=method, fold=0, profile="cpu"))
    ablation = resolve_config(RunRequest(method=method, fold=0, profile="cpu_random_init"))
    check_config(method, ablation)
    assert "prior" in with_prior and "prior" not in ablation
    assert ablation["data"] == with_prior["data"]
    with pytest.raises(ConfigError, match="unknown profile"):
        check_profile("cpu_random_init")  # a method's own profile, not a common one
    with pytest.raises(ConfigError, match="unknown profile"):
        check_profile("cpu_random_init", "alpnet")


def test_the_probe_reaches_the_organs_a_setting_2_prior_never_saw(tiny_mri_root, prior_cache, capsys):
    """benchmark/prior_probe.py --slices fold: the codec check and the probe cover the withheld kidneys."""
    import importlib.util

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("prior_probe", repo / "benchmark" / "prior_probe.py")
    prior_probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prior_probe)
    folder, _ = prepare_prior(
        TINY_PRIOR, dataset="synthetic_mri", fold=0, setting=2, group="lower", seed=0,
        data_root=str(tiny_mri_root), cache_dir=str(prior_cache), data_options=DATA,
    )  # fmt: skip
    capsys.readouterr()  # the prior's training lines
    common = ["--prior", str(folder), "--dataset", "synthetic_mri", "--data-root", str(tiny_mri_root)]
    common += ["--cache-dir", str(prior_cache)]
    reports = {}
    for slices in ("prior", "fold"):
        assert prior_probe.main([*common, "--slices", slices]) == 0
        reports[slices] = json.loads(capsys.readouterr().out)
    kidneys = {"kidney_left", "kidney_right"}
    assert not kidneys & set(reports["prior"]["codec"])  # setting 2's lower pool has no kidney
    assert kidneys <= set(reports["fold"]["codec"]) and kidneys <= set(reports["fold"]["prior_unet"])
    for figures in reports["fold"]["codec"].values():
        assert 0 <= figures["mask_round_trip_dice"] <= 100 and figures["image_mse_inside"] >= 0

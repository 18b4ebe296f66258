"""Both diffusion methods' `cpu` profiles through a tiny in-domain prior: trained once, shared by the two,
loaded through the same pretrained_path code as Stable Diffusion, and recorded with the results."""

from __future__ import annotations

import json

import pytest

from fsmis_bench.runner.experiment import RunRequest, execute_run

TINY_PRIOR = [
    "prior.vae_steps=2",
    "prior.unet_steps=2",
    "prior.vae_batch=2",
    "prior.unet_batch=2",
    "prior.preview_count=2",
    "prior.preview_inference_steps=2",
    "trainer.max_steps=2",
    "trainer.limit_test_batches=1",
]
METHOD_SETS = {
    "sd_fsmis": [],
    "progidiff": [
        "data.min_gt_pixels=20",
        "model.init_args.adaptation.steps=2",
        "model.init_args.proposals.count=2",
        "model.init_args.proposals.steps=2",
    ],
}


@pytest.fixture(scope="module")
def runs(tiny_mri_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_runs")
    summaries = {}
    for method, sets in METHOD_SETS.items():  # sd_fsmis first: progidiff must reuse its prior
        request = RunRequest(
            method=method,
            fold=0,
            data_root=str(tiny_mri_root),
            profile="cpu",
            output=str(root / "runs"),
            cache_dir=str(root / "cache"),
            overrides=[*TINY_PRIOR, *sets],
        )
        run_dir = execute_run(request)
        summaries[method] = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return summaries


@pytest.mark.parametrize("method", list(METHOD_SETS))
def test_the_cpu_profile_loads_the_prior_as_pretrained_weights(runs, method):
    summary = runs[method]
    for model in summary["models"]:
        prior = model["prior"]
        assert "prior=in_domain_ldm" in model["deviations"]
        assert not {"in_run_vae", "in_run_codec"} & set(model["deviations"])
        assert prior["key"]["setting"] == 1 and prior["key"]["group"] == "all"
        assert prior["slices"]["held_out"] == [1, 2, 3, 5, 8]
        info = json.dumps(model["method_info"])
        assert prior["folder"] in info  # the method names the prior as its weights
    assert summary["status"] == "ok"


def test_one_prior_serves_both_methods(runs):
    sd_prior = runs["sd_fsmis"]["models"][0]["prior"]
    assert sd_prior["trained_in_this_run"]
    for model in runs["progidiff"]["models"]:  # two GT models (lower, upper), one setting-1 prior
        assert model["prior"]["folder"] == sd_prior["folder"]
        assert not model["prior"]["trained_in_this_run"]


def test_a_run_gets_the_same_numbers_whether_its_prior_was_trained_now_or_reused(
    runs, tiny_mri_root, tmp_path
):
    """Training the prior in the run's process must not move the run's random stream (model init, noise)."""
    first = runs["sd_fsmis"]
    assert first["models"][0]["prior"]["trained_in_this_run"]
    cache = first["models"][0]["prior"]["folder"].split("/priors/")[0]
    request = RunRequest(
        method="sd_fsmis",
        fold=0,
        data_root=str(tiny_mri_root),
        profile="cpu",
        output=str(tmp_path / "runs"),
        cache_dir=cache,
        overrides=TINY_PRIOR,
    )
    again = json.loads((execute_run(request) / "summary.json").read_text(encoding="utf-8"))
    assert not again["models"][0]["prior"]["trained_in_this_run"]
    assert again["models"][0]["final_loss"] == first["models"][0]["final_loss"]
    assert again["dice"] == first["dice"]


def test_training_a_prior_leaves_the_callers_random_state_alone():
    import random

    import numpy as np
    import torch

    from fsmis_bench.prior.store import rng_untouched

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with rng_untouched():
        torch.rand(5), np.random.rand(5), random.random(), torch.nn.Linear(4, 4)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1]) and random.random() == expected[2]

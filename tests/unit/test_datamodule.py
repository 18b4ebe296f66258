"""FewShotDataModule: batch format, setting rules on the sampled episodes, EP1 batches, slice cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsmis_bench.data import cache as cache_module
from fsmis_bench.datamodule import FewShotDataModule


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One slice cache for the module: superpixels are computed once, not per test."""
    return tmp_path_factory.mktemp("cache")


def make(tiny_mri_root, cache_dir, **kwargs) -> FewShotDataModule:
    options = {"dataset": "synthetic_mri", "data_root": str(tiny_mri_root), "image_size": 32, "batch_size": 4}
    data = FewShotDataModule(**{**options, **kwargs}, cache_dir=str(cache_dir))
    data.setup()
    return data


def test_training_batch_format(tiny_mri_root, shared_cache):
    data = make(tiny_mri_root, shared_cache)
    batch = next(iter(data.train_dataloader()))
    assert batch.support_images.shape == (4, 1, 3, 32, 32)
    assert batch.support_masks.shape == (4, 1, 32, 32)
    assert batch.query_images.shape == (4, 3, 32, 32)
    assert batch.query_masks.shape == (4, 32, 32)
    assert batch.query_episode.tolist() == [0, 1, 2, 3]
    assert set(batch.support_masks.unique().tolist()) <= {0.0, 1.0}
    assert (batch.support_masks.flatten(1).amax(1) > 0).all() and (
        batch.query_masks.flatten(1).amax(1) > 0
    ).all()


def test_episode_stream_is_seeded(tiny_mri_root, shared_cache):
    first = next(iter(make(tiny_mri_root, shared_cache, seed=3).train_dataloader()))
    second = next(iter(make(tiny_mri_root, shared_cache, seed=3).train_dataloader()))
    other = next(iter(make(tiny_mri_root, shared_cache, seed=4).train_dataloader()))
    assert torch.equal(first.query_images, second.query_images)
    assert not torch.equal(first.query_images, other.query_images)


@pytest.mark.parametrize("group", ["upper", "lower"])
def test_gt_episodes_never_sample_a_tested_organ(tiny_mri_root, shared_cache, group):
    data = make(tiny_mri_root, shared_cache, pseudolabels="gt", group=group, setting=1, min_gt_pixels=20)
    sampler = data.build_sampler(0)
    tested = set(data.organs)
    for _ in range(10):
        assert tested.isdisjoint(sampler.next_batch().meta["classes"])


def test_setting_2_never_draws_a_slice_with_an_excluded_organ(tiny_mri_root, shared_cache):
    data = make(tiny_mri_root, shared_cache, setting=2, group="upper", augment={"enabled": False})
    sampler = data.build_sampler(0)
    excluded = data.excluded
    for index, z, _ in sampler.candidates:
        scan = data.scans[sampler.scans[index].scan_id]
        assert not np.isin(scan.native_label[z], excluded).any()
    kept, total = data.kept_training_slices()
    assert 0 < kept < total


def test_ep1_test_batches_cover_every_query_and_organ(tiny_mri_root, shared_cache):
    data = make(tiny_mri_root, shared_cache)
    batches = list(data.test_dataloader())
    assert {(b.meta["scan_id"], b.organ) for b in batches} == {
        (q, o) for q in data.plan.query_ids for o in ("liver", "spleen", "kidney_left", "kidney_right")
    }
    batch = batches[0]
    assert batch.support_images.shape[:2] == (3, 1)  # three chunks, one shot
    assert batch.query_episode.max() <= 2 and batch.query_episode.min() == 0
    slices = batch.meta["slices"]
    assert np.array_equal(slices, np.arange(slices[0], slices[-1] + 1))  # the contiguous organ range
    assert batch.meta["native_ref"].shape == (len(slices), 64, 64)  # scored at native resolution
    assert batch.meta["native_ref"][0].any() and batch.meta["native_ref"][-1].any()


def test_fold_zscore_uses_training_scans_only(tiny_ct_root, cache_dir):
    data = FewShotDataModule(
        dataset="synthetic_ct", data_root=str(tiny_ct_root), image_size=32, cache_dir=str(cache_dir)
    )
    data.setup()
    assert data.resolved_normalisation == "fold_zscore"
    shifts = {data._norm[s] for s in data.scans}
    assert len(shifts) == 1  # one global mean/std for every scan, training and test
    train = np.concatenate([data.scans[s].image.ravel() for s in data.plan.train_ids])
    assert data._norm[data.plan.query_ids[0]][0] == pytest.approx(train.mean(), rel=0.05)


def test_second_setup_reads_the_cache_not_nifti(tiny_mri_root, cache_dir, monkeypatch):
    make(tiny_mri_root, cache_dir)

    def fail(*args, **kwargs):
        raise AssertionError("NIfTI was read again")

    monkeypatch.setattr(cache_module, "read_volume", fail)
    data = make(tiny_mri_root, cache_dir)
    assert len(data.scans) == 20


def test_cache_key_changes_with_the_input_file(tiny_mri_root, cache_dir, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_mri_root, root)
    before = make(root, cache_dir).scans[1].image.copy()
    image = root / "image_1.nii.gz"
    import nibabel as nib

    img = nib.load(str(image))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine), str(image))
    after = make(root, cache_dir).scans[1].image
    assert np.allclose(after, 2 * before, rtol=1e-4)


def test_prefetching_thread_gives_the_same_stream_and_surfaces_sampler_errors(tiny_mri_root, shared_cache):
    streams = []
    for prefetch in (0, 3):
        loader = make(tiny_mri_root, shared_cache, prefetch=prefetch, seed=5).train_dataloader()
        stream = iter(loader)
        streams.append([next(stream) for _ in range(4)])
    for plain, ahead in zip(*streams):
        assert torch.equal(plain.query_images, ahead.query_images)
        assert torch.equal(plain.support_masks, ahead.support_masks)

    from fsmis_bench.episode_stream import EpisodeStream

    class Failing:
        def next_batch(self):
            raise RuntimeError("corrupt slice")

    with pytest.raises(RuntimeError, match="corrupt slice"):
        next(iter(EpisodeStream(lambda seed: Failing(), seed=0, prefetch=2)))


def test_teardown_after_fit_stops_the_prefetch_thread(tiny_mri_root, shared_cache):
    from fsmis_bench.episode_stream import _LIVE

    module = make(tiny_mri_root, shared_cache, prefetch=2, seed=1)
    stream = iter(module.train_dataloader())
    next(stream)
    threads = list(_LIVE)
    assert threads
    module.teardown("fit")
    assert not any(thread.is_alive() for thread in threads)

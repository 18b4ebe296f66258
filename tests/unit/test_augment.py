"""Batched torch augmentation of protocol §5.4."""

import numpy as np
import torch

from fsmis_bench.protocol.augment import AugmentConfig, augment_episode_pair, augment_pair, gamma_transform


def _batch(n=4, size=32):
    images = torch.randn(n, size, size)
    masks = torch.zeros(n, size, size)
    masks[:, 8:24, 8:24] = 1
    return images, masks


def test_augmentation_is_seeded_and_changes_the_images():
    images, masks = _batch()
    a = augment_pair(images, masks, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment_pair(images, masks, AugmentConfig(), torch.Generator().manual_seed(1))
    c = augment_pair(images, masks, AugmentConfig(), torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.allclose(a[0], images)


def test_masks_stay_binary_and_roughly_in_place():
    images, masks = _batch()
    _, out = augment_pair(images, masks, AugmentConfig(), torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    overlap = (out * masks).sum() / masks.sum()
    assert overlap > 0.6


def test_disabled_augmentation_is_identity():
    images, masks = _batch()
    out = augment_pair(images, masks, AugmentConfig(enabled=False), torch.Generator())
    assert out[0] is images and out[1] is masks


def test_gamma_keeps_the_min_max_range():
    images = torch.rand(3, 8, 8) * 4 - 2
    out = gamma_transform(images, torch.tensor([0.5, 1.0, 1.5]))
    assert torch.allclose(out.flatten(1).amin(1), images.flatten(1).amin(1))
    assert torch.allclose(out.flatten(1).amax(1), images.flatten(1).amax(1))
    assert torch.allclose(out[1], images[1], atol=1e-6)


def test_one_side_mode_applies_each_transform_to_exactly_one_copy():
    images, masks = _batch(n=8)
    cfg = AugmentConfig(
        sides="one",
        rotation_deg=0,
        translation_px=0,
        shear_deg=0,
        scale_min=1,
        scale_max=1,
        elastic_alpha=0,
        gamma_min=2.0,
        gamma_max=2.0,
    )
    (s_img, _), (q_img, _) = augment_episode_pair(
        (images, masks), (images, masks), cfg, torch.Generator().manual_seed(3)
    )
    for i in range(8):
        support_plain = torch.allclose(s_img[i], images[i], atol=1e-4)
        query_plain = torch.allclose(q_img[i], images[i], atol=1e-4)
        assert support_plain != query_plain


def test_fixed_elastic_seed_reuses_one_field():
    cfg = AugmentConfig(
        elastic_fixed_seed=2025,
        rotation_deg=0,
        translation_px=0,
        shear_deg=0,
        scale_min=1,
        scale_max=1,
        gamma_min=1,
        gamma_max=1,
    )
    images, masks = _batch(n=2)
    images = images[:1].expand(2, -1, -1).clone()
    out, _ = augment_pair(images, masks, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(out[0], out[1])


def test_smooth_noise_equals_scipy_gaussian_filter_with_zero_padding():
    """The elastic field's Toeplitz-matrix smoothing is the reference's gaussian_filter(mode='constant')."""
    from scipy.ndimage import gaussian_filter

    from fsmis_bench.protocol.augment import smooth_noise

    field = smooth_noise((2, 2, 40, 56), 3.0, torch.Generator().manual_seed(3)).numpy()
    noise = (torch.rand((2, 2, 40, 56), generator=torch.Generator().manual_seed(3)) * 2 - 1).numpy()
    expected = np.stack(
        [[gaussian_filter(channel, 3.0, mode="constant") for channel in item] for item in noise]
    )
    np.testing.assert_allclose(field, expected, atol=1e-6)

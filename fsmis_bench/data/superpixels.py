"""Self-supervision pseudolabels: 2-D Felzenszwalb superpixels of the SSL-ALPNet recipe (protocol §2.1)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import felzenszwalb

#: Parameters of the reference ('MIDDLE' mode): scale 1, sigma 1, min_size 400.
FELZENSZWALB_PARAMS = {"scale": 1.0, "sigma": 1.0, "min_size": 400}


def body_mask(slice_2d: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels above ``threshold``, reduced to the largest connected component with holes filled."""
    mask = slice_2d > threshold
    if not mask.any():
        return mask
    components = connected_components(mask)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest)


def relabel_segments(raw: np.ndarray, body: np.ndarray, compat: bool = True) -> np.ndarray:
    """Keep the segments inside the body and give them positive ids.

    ``compat=True`` reproduces the reference relabelling: the segment with raw id 0 is dropped and the id of
    the largest raw value is skipped (its pixels get the last id), so ids are not contiguous and some ids may
    have no pixels. ``compat=False`` numbers the kept segments 1..n contiguously.
    """
    raw = raw.astype(np.int64)
    if compat:
        values = np.unique(raw)
        max_value = int(values.max())
        # The reference renames raw 0 to max+1 (never relabelled, hence lost), then walks the unique values
        # followed by a repeated max value: every nonzero value gets the next id, and max gets one more.
        lookup = np.zeros(max_value + 2, dtype=np.int32)
        nonzero = values[values != 0]
        lookup[nonzero] = np.arange(1, len(nonzero) + 1, dtype=np.int32)
        if max_value != 0:
            lookup[max_value] = len(nonzero) + 1
        shifted = np.where(raw == 0, max_value + 1, raw)
        return np.where(body, lookup[shifted], 0).astype(np.int32)
    kept = np.where(body, raw + 1, 0)
    _, inverse = np.unique(kept, return_inverse=True)
    out = inverse.reshape(raw.shape).astype(np.int32)
    return out if kept.min() == 0 else out + 1


def superpixel_volume(
    image: np.ndarray, body_threshold: float, compat: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Superpixels and body mask of a (Z, H, W) volume of un-normalised intensities, slice by slice."""
    segments = np.zeros(image.shape, dtype=np.int32)
    bodies = np.zeros(image.shape, dtype=bool)
    for z in range(image.shape[0]):
        slice_2d = image[z].astype(np.float64)
        raw = felzenszwalb(slice_2d, **FELZENSZWALB_PARAMS)
        bodies[z] = body_mask(slice_2d, body_threshold)
        segments[z] = relabel_segments(raw, bodies[z], compat=compat)
    return segments, bodies

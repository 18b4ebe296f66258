"""Training episode samplers (protocol §5): batched, seeded, setting-2 exclusion applied on draw.

* ``superpix2d`` (§5.1, alpnet lineage): a random allowed slice, a random superpixel of it as foreground,
  the slice augmented twice (support copy, query copy).
* ``gt`` (§5.3, SD-FSMIS style): a random training scan, a random allowed ground-truth class present in it,
  two consecutive slices holding it (support and query, order reversed with probability 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch, as_three_channels, episode_range
from fsmis_bench.errors import DataError
from fsmis_bench.protocol.augment import AugmentConfig, augment_episode_pair


@dataclass
class TrainingScan:
    """What the samplers need of one training scan (model resolution, normalised intensities)."""

    scan_id: int
    image: Tensor  # float32 [Z, r, r], normalised
    label: np.ndarray  # uint8 [Z, r, r], raw label ids
    allowed: np.ndarray  # bool [Z]: the slice survives the setting's exclusion rule
    class_areas: dict[int, np.ndarray]  # label -> native pixel count per slice
    superpixels: np.ndarray | None = None  # int32 [Z, r, r]


class EpisodeSampler:
    """Base: draws batches of (support, query) pairs, augments them and packs an EpisodeBatch."""

    def __init__(
        self, scans: Sequence[TrainingScan], batch_size: int, augment: AugmentConfig, seed: int
    ) -> None:
        self.scans = list(scans)
        self.batch_size = batch_size
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.skipped_empty = 0  # episodes redrawn because augmentation emptied a mask

    def draw(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
        """``n`` raw pairs: support image, support mask, query image, query mask ([n, r, r] each), names."""
        raise NotImplementedError

    def next_batch(self) -> EpisodeBatch:
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        names: list[str] = []
        missing = self.batch_size
        while missing > 0:
            s_img, s_msk, q_img, q_msk, drawn_names = self.draw(missing)
            (s_img, s_msk), (q_img, q_msk) = augment_episode_pair(
                (s_img, s_msk), (q_img, q_msk), self.augment, self.generator
            )
            keep = (s_msk.flatten(1).amax(1) > 0) & (q_msk.flatten(1).amax(1) > 0)
            self.skipped_empty += int((~keep).sum())
            parts.append((s_img[keep], s_msk[keep], q_img[keep], q_msk[keep]))
            names += [name for name, k in zip(drawn_names, keep.tolist()) if k]
            missing -= int(keep.sum())
        s_img, s_msk, q_img, q_msk = (torch.cat(p) for p in zip(*parts))
        return EpisodeBatch(
            support_images=as_three_channels(s_img)[:, None],
            support_masks=s_msk.float()[:, None],
            query_images=as_three_channels(q_img),
            query_masks=q_msk.float(),
            query_episode=episode_range(self.batch_size),
            organ="episode",
            meta={"classes": names},
        )


class SuperpixelEpisodes(EpisodeSampler):
    """Same slice twice, a superpixel as foreground (§5.1)."""

    def __init__(
        self, scans: Sequence[TrainingScan], batch_size: int, augment: AugmentConfig, seed: int
    ) -> None:
        super().__init__(scans, batch_size, augment, seed)
        self.candidates: list[tuple[int, int, np.ndarray]] = []  # (scan index, slice, drawable ids)
        for index, scan in enumerate(self.scans):
            if scan.superpixels is None:
                raise DataError(f"training scan {scan.scan_id} has no superpixels")
            for z in np.flatnonzero(scan.allowed):
                ids = np.unique(scan.superpixels[z])
                # Our design choice (protocol §5.1): ids present in the slice within 1..max-1.
                ids = ids[(ids > 0) & (ids < ids.max())]
                if len(ids):
                    self.candidates.append((index, int(z), ids))
        if not self.candidates:
            raise DataError("no training slice with a superpixel survives the exclusion rule")

    def draw(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
        picks = self.rng.integers(len(self.candidates), size=n)
        images, masks = [], []
        for pick in picks:
            index, z, ids = self.candidates[pick]
            scan = self.scans[index]
            chosen = ids[self.rng.integers(len(ids))]
            images.append(scan.image[z])
            masks.append(torch.from_numpy(scan.superpixels[z] == chosen))  # type: ignore[index]
        image, mask = torch.stack(images), torch.stack(masks).float()
        return image, mask, image, mask, ["superpixel"] * n


class GroundTruthEpisodes(EpisodeSampler):
    """Two consecutive slices holding an allowed ground-truth class (§5.3)."""

    def __init__(
        self,
        scans: Sequence[TrainingScan],
        classes: Sequence[int],
        batch_size: int,
        augment: AugmentConfig,
        seed: int,
        min_pixels: int = 200,
        class_names: dict[int, str] | None = None,
    ) -> None:
        super().__init__(scans, batch_size, augment, seed)
        self.class_names = class_names or {}
        # per scan: per class: start slices z such that z and z+1 both hold >= min_pixels and are allowed
        self.pairs: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
        for index, scan in enumerate(self.scans):
            per_class = []
            for label in classes:
                area = scan.class_areas.get(int(label))
                if area is None:
                    continue
                good = (area >= min_pixels) & scan.allowed
                starts = np.flatnonzero(good[:-1] & good[1:])
                if len(starts):
                    per_class.append((int(label), starts))
            if per_class:
                self.pairs.append((index, per_class))
        if not self.pairs:
            raise DataError(
                f"no pair of consecutive allowed training slices holds >= {min_pixels} native pixels of any "
                f"of the classes {list(classes)} (lower data.min_gt_pixels for small volumes)"
            )

    def draw(self, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
        s_img, s_msk, q_img, q_msk, names = [], [], [], [], []
        for _ in range(n):
            index, per_class = self.pairs[self.rng.integers(len(self.pairs))]
            label, starts = per_class[self.rng.integers(len(per_class))]
            z = int(starts[self.rng.integers(len(starts))])
            first, second = (z + 1, z) if self.rng.random() < 0.5 else (z, z + 1)
            scan = self.scans[index]
            s_img.append(scan.image[first])
            q_img.append(scan.image[second])
            s_msk.append(torch.from_numpy(scan.label[first] == label))
            q_msk.append(torch.from_numpy(scan.label[second] == label))
            names.append(self.class_names.get(label, str(label)))
        return (
            torch.stack(s_img),
            torch.stack(s_msk).float(),
            torch.stack(q_img),
            torch.stack(q_msk).float(),
            names,
        )

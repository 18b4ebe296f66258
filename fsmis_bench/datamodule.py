"""FewShotDataModule: one LightningDataModule serving training episodes and EP1 test chunks to every method."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fsmis_bench.batch import EpisodeBatch, as_three_channels
from fsmis_bench.data.cache import ScanSlices, SliceCache, default_cache_dir
from fsmis_bench.data.datasets import ORGANS, DatasetSpec, get_dataset
from fsmis_bench.data.sources import locate_dataset
from fsmis_bench.data.volumes import scan_paths
from fsmis_bench.episode_stream import EpisodeStream
from fsmis_bench.errors import ConfigError, DataError
from fsmis_bench.protocol.augment import AugmentConfig
from fsmis_bench.protocol.episodes import (
    EpisodeSampler,
    GroundTruthEpisodes,
    SuperpixelEpisodes,
    TrainingScan,
)
from fsmis_bench.protocol.evaluation import CHUNK_PERCENTILES, QueryTask, plan_queries, volume_problem
from fsmis_bench.protocol.settings import allowed_slices, excluded_labels, organs_of, training_classes
from fsmis_bench.protocol.splits import fold_plan

log = logging.getLogger(__name__)
NORMALISATIONS = ("lineage_default", "volume_zscore", "fold_zscore", "volume_minmax")


class QueryTasks(Dataset):
    """One EpisodeBatch per (query scan, organ): its three chunks' supports and all its scored slices."""

    def __init__(self, module: FewShotDataModule, tasks: list[QueryTask]) -> None:
        self.module = module
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> EpisodeBatch:
        return self.module.task_batch(self.tasks[index])


class FewShotDataModule(L.LightningDataModule):
    """Loads the fold's scans once (through the slice cache) and serves the protocol's episodes.

    ``group`` names the organ group tested by the model being trained (``None``: all four organs). It decides
    the setting-2 slice exclusion and, for ground-truth episodes, which classes may be sampled.

    ``source_dataset`` selects the cross-domain track: training episodes come from every scan of that dataset
    (its own label ids and lineage normalisation; with ``group=None`` GT episodes use its four benchmark organs),
    while the support and query scans of ``fold`` come from ``dataset`` as usual.
    """

    def __init__(
        self,
        dataset: str = "synthetic_mri",
        data_root: str | None = None,
        fold: int = 0,
        setting: int = 1,
        shots: int = 1,
        group: str | None = None,
        image_size: int = 128,
        batch_size: int = 8,
        pseudolabels: str = "superpix2d",
        augment: AugmentConfig | dict | None = None,
        fold_scheme: str = "alpnet",
        support_index: int = -1,
        exclusion_rule: str = "group_any",
        eval_mode: str = "ep1",
        chunk_rule: str = "alpnet",
        normalisation: str = "lineage_default",
        superpixel_compat: bool = True,
        min_gt_pixels: int = 200,
        seed: int = 0,
        cache_dir: str | None = None,
        num_workers: int = 0,
        prefetch: int = 2,
        source_dataset: str | None = None,
        source_data_root: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = get_dataset(dataset)
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"unknown normalisation '{normalisation}' (known: {', '.join(NORMALISATIONS)})")
        self.data_root = data_root
        self.fold, self.setting, self.shots, self.group = fold, setting, shots, group
        self.image_size, self.batch_size = image_size, batch_size
        self.pseudolabels = pseudolabels
        self.augment = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**(augment or {}))
        self.fold_scheme, self.support_index = fold_scheme, support_index
        self.exclusion_rule, self.eval_mode, self.chunk_rule = exclusion_rule, eval_mode, chunk_rule
        self.normalisation = normalisation
        self.superpixel_compat, self.min_gt_pixels = superpixel_compat, min_gt_pixels
        self.seed, self.num_workers, self.prefetch = seed, num_workers, prefetch
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.plan = fold_plan(self.spec.scan_ids, fold, shots, fold_scheme, support_index)
        self.organs = organs_of(group)
        self.source_dataset, self.source_data_root = source_dataset, source_data_root
        self.source_spec = get_dataset(source_dataset) if source_dataset else None
        # setting 2's exclusion depends on the tested group; untrained methods (group None) never train
        self._exclusion = (self.source_spec or self.spec, setting, group, exclusion_rule)
        self.scans: dict[int, ScanSlices] = {}
        self.source_scans: dict[int, ScanSlices] = {}
        self._prepared = False
        self._train_streams: list[EpisodeStream] = []

    # ------------------------------------------------------------------ loading
    @property
    def resolved_normalisation(self) -> str:
        return self._resolve_normalisation(self.spec)

    def _resolve_normalisation(self, spec: DatasetSpec) -> str:
        if self.normalisation != "lineage_default":
            return self.normalisation
        return "volume_zscore" if self.fold_scheme == "qnet_sets" else spec.default_normalisation

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        layout_dir = locate_dataset(self.spec, self.data_root, self.cache_dir)
        cache = SliceCache(self.spec, layout_dir, self.image_size, self.cache_dir)
        superpixels = self.pseudolabels == "superpix2d"
        for scan_id in self.plan.train_ids:
            self.scans[scan_id] = cache.load(
                scan_id, superpixels and not self.source_spec, self.superpixel_compat
            )
        for scan_id in self.plan.support_ids + self.plan.query_ids:
            self.scans[scan_id] = cache.load(scan_id)
        self._check_support_organs(layout_dir)
        self._check_test_volumes(layout_dir)
        self._norm = self._normalisation_params(self.scans, self.plan.train_ids, self.resolved_normalisation)
        if self.source_spec is not None:
            self._load_source(self.source_spec, superpixels)
        self.tasks, self.skipped = plan_queries(
            {s: self.scans[s].class_slices for s in self.scans},
            self.plan.support_ids,
            self.plan.query_ids,
            {o: self.spec.organ_label[o] for o in self.organs},
            {s: self.scans[s].depth for s in self.scans},
            self.eval_mode,
            self.chunk_rule,
        )
        for scan_id, organ in self.skipped:
            log.warning("organ %s is absent from query scan %s: skipped", organ, scan_id)
        self._prepared = True

    def _check_support_organs(self, layout_dir: Path) -> None:
        for scan_id in self.plan.support_ids:
            for organ in self.organs:
                if not self.scans[scan_id].class_slices.get(self.spec.organ_label[organ]):
                    raise DataError(
                        f"{layout_dir / f'label_{scan_id}.nii.gz'}: organ {organ} "
                        f"(label {self.spec.organ_label[organ]}) is absent from the support scan of fold {self.fold}"
                    )

    def _check_test_volumes(self, layout_dir: Path) -> None:
        """Support and query volumes with a slice per chunk and slices fit for the method's input size."""
        n_chunks = len(CHUNK_PERCENTILES) if self.eval_mode == "ep1" else 1
        for role, scan_ids in (("support", self.plan.support_ids), ("query", self.plan.query_ids)):
            for scan_id in scan_ids:
                problem = volume_problem(self.scans[scan_id].native_shape, self.image_size, n_chunks)
                if problem:
                    image_path = scan_paths(layout_dir, scan_id)[0]
                    raise DataError(
                        f"{image_path}: {role} scan of fold {self.fold} ({self.eval_mode}): {problem}"
                    )

    def _load_source(self, spec: DatasetSpec, superpixels: bool) -> None:
        """Every scan of the source dataset (cross-domain training), normalised by its own lineage rule."""
        layout_dir = locate_dataset(spec, self.source_data_root, self.cache_dir)
        cache = SliceCache(spec, layout_dir, self.image_size, self.cache_dir)
        for scan_id in spec.scan_ids:
            self.source_scans[scan_id] = cache.load(scan_id, superpixels, self.superpixel_compat)
        self._source_norm = self._normalisation_params(
            self.source_scans, spec.scan_ids, self._resolve_normalisation(spec)
        )

    @staticmethod
    def _normalisation_params(
        scans: dict[int, ScanSlices], train_ids: Sequence[int], mode: str
    ) -> dict[int, tuple[float, float]]:
        """Per scan (shift, scale) so that normalised = (x - shift) / scale (protocol §1.6)."""
        params = {}
        if mode == "fold_zscore":
            stats = [scans[s].stats for s in train_ids]
            total, count = sum(s["sum"] for s in stats), sum(s["count"] for s in stats)
            mean = total / count
            std = float(np.sqrt(max(sum(s["sumsq"] for s in stats) / count - mean**2, 1e-12)))
            return {s: (mean, std) for s in scans}
        for scan_id, scan in scans.items():
            st = scan.stats
            if mode == "volume_zscore":
                mean = st["sum"] / st["count"]
                std = float(np.sqrt(max(st["sumsq"] / st["count"] - mean**2, 1e-12)))
                params[scan_id] = (mean, std)
            else:  # volume_minmax -> [0, 1]
                params[scan_id] = (st["min"], max(st["max"] - st["min"], 1e-12))
        return params

    def normalised(self, scan_id: int, slices: Any = slice(None)) -> torch.Tensor:
        return _normalise(self.scans[scan_id], self._norm[scan_id], slices)

    # ------------------------------------------------------------------ training
    def _training_pool(
        self,
    ) -> tuple[DatasetSpec, dict[int, ScanSlices], dict[int, tuple[float, float]], list[int]]:
        """Spec, scans, normalisation and ids of the training scans (the source dataset's when cross-domain)."""
        if self.source_spec is None:
            return self.spec, self.scans, self._norm, list(self.plan.train_ids)
        return self.source_spec, self.source_scans, self._source_norm, list(self.source_scans)

    @property
    def excluded(self) -> tuple[int, ...]:
        """Label ids whose presence removes a training slice (setting 2); ConfigError without a tested group."""
        return excluded_labels(*self._exclusion)

    def training_scans(self) -> list[TrainingScan]:
        _, pool, norm, ids = self._training_pool()
        excluded = self.excluded
        scans = []
        for scan_id in ids:
            scan = pool[scan_id]
            allowed = allowed_slices(scan.class_slices, excluded, self.exclusion_rule, n_slices=scan.depth)
            scans.append(
                TrainingScan(
                    scan_id=scan_id,
                    image=_normalise(scan, norm[scan_id]),
                    label=scan.label,
                    allowed=allowed,
                    class_areas=scan.class_areas,
                    superpixels=scan.superpixels,
                )
            )
        return scans

    def kept_training_slices(self) -> tuple[int, int]:
        """(kept, total) training slices after the setting's exclusion rule."""
        kept = total = 0
        _, pool, _, ids = self._training_pool()
        excluded = self.excluded
        for scan_id in ids:
            scan = pool[scan_id]
            mask = allowed_slices(scan.class_slices, excluded, self.exclusion_rule, n_slices=scan.depth)
            kept, total = kept + int(mask.sum()), total + scan.depth
        return kept, total

    def build_sampler(self, seed: int) -> EpisodeSampler:
        scans = self.training_scans()
        if self.pseudolabels == "superpix2d":
            return SuperpixelEpisodes(scans, self.batch_size, self.augment, seed)
        if self.pseudolabels == "gt":
            spec = self.source_spec or self.spec
            if self.source_spec is not None and self.group is None:
                # one cross-domain model learns the four organs: supervised transfer
                # (docs/methods/progidiff.md §4, track A)
                classes = tuple(spec.organ_label[o] for o in ORGANS)
            else:
                classes = training_classes(spec, self.group)
            return GroundTruthEpisodes(
                scans, classes, self.batch_size, self.augment, seed, self.min_gt_pixels, spec.label_names
            )
        raise ConfigError(f"unknown pseudolabels '{self.pseudolabels}' (known: superpix2d, gt)")

    def train_dataloader(self) -> DataLoader:
        self.setup()
        self._train_streams.append(EpisodeStream(self.build_sampler, self.seed, self.prefetch))
        return DataLoader(
            self._train_streams[-1],
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def teardown(self, stage: str) -> None:
        """After fit, stop the prefetch threads (a thread left inside a torch op aborts the process at exit)."""
        if stage == "fit":
            while self._train_streams:
                self._train_streams.pop().close()

    # ------------------------------------------------------------------ evaluation
    def task_batch(self, task: QueryTask) -> EpisodeBatch:
        """The EpisodeBatch of one (query scan, organ): supports per chunk, every scored query slice."""
        label = task.label
        support_images, support_masks = [], []
        for chunk in task.supports:
            support_images.append(torch.stack([self.normalised(s, z) for s, z in chunk]))
            support_masks.append(
                torch.stack([torch.from_numpy(self.scans[s].label[z] == label) for s, z in chunk])
            )
        slices = np.asarray(task.slices)
        query = self.scans[task.scan_id]
        return EpisodeBatch(
            support_images=as_three_channels(torch.stack(support_images)),
            support_masks=torch.stack(support_masks).float(),
            query_images=as_three_channels(self.normalised(task.scan_id, slices)),
            query_masks=torch.from_numpy(query.label[slices] == label).float(),
            query_episode=torch.as_tensor(task.chunk_of_slice, dtype=torch.long),
            organ=task.organ,
            meta={
                "scan_id": task.scan_id,
                "slices": slices,
                "native_ref": query.native_label[slices] == label,
                "spacing": query.spacing,
                "volume_shape": query.native_shape,
                "contiguous": task.contiguous,
                "support": task.supports,
            },
        )

    def labelled_support_slices(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Every (slice, tested organ) of the fold's support scan(s) where the organ is visible at model
        resolution: normalised images [M, 3, r, r], binary masks [M, r, r] and organ names. The labelled target
        data of the cross-domain track's few-shot adaptation (docs/methods/progidiff.md §4, track A)."""
        images, masks, organs = [], [], []
        for scan_id in self.plan.support_ids:
            scan = self.scans[scan_id]
            for organ in self.organs:
                label = self.spec.organ_label[organ]
                slices = [z for z in scan.class_slices.get(label, []) if (scan.label[z] == label).any()]
                images.append(self.normalised(scan_id, np.asarray(slices, dtype=int)))
                masks.append(torch.from_numpy(scan.label[slices] == label).float())
                organs += [organ] * len(slices)
        return as_three_channels(torch.cat(images)), torch.cat(masks), organs

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(QueryTasks(self, self.tasks), batch_size=None, num_workers=0)

    def describe(self) -> dict[str, Any]:
        """Protocol variant and data identity, recorded with every result."""
        source = {"source_dataset": self.source_dataset} if self.source_spec else {}
        return {
            **source,
            "dataset": self.spec.name,
            "fold_scheme": self.fold_scheme,
            "support_index": self.plan.support_index,
            "exclusion_rule": self.exclusion_rule,
            "eval_mode": self.eval_mode,
            "chunk_rule": self.chunk_rule,
            "pseudolabels": self.pseudolabels,
            "normalisation": self.resolved_normalisation,
            "image_size": self.image_size,
            "augment": asdict(self.augment),
        }


def _normalise(scan: ScanSlices, params: tuple[float, float], slices: Any = slice(None)) -> torch.Tensor:
    shift, scale = params
    return torch.from_numpy((scan.image[slices] - shift) / scale).float()

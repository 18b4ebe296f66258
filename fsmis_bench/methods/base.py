"""FewShotSegmenter: the base LightningModule that owns the shared EP1 test loop, metrics and logging.

A method implements ``training_losses`` (a dict with ``loss``) and ``foreground_scores`` (one score map per
query slice, foreground where > 0 after bilinear upsampling to the native slice size). Methods with
post-processing (e.g. SD-FSMIS's dynamic threshold and largest component) override ``postprocess``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.errors import ConfigError
from fsmis_bench.metrics.volume_scorer import CaseResult, score_volume
from fsmis_bench.overlays import episode_overlay


@dataclass(frozen=True)
class MethodTraits:
    """Declared properties of a method, recorded with every result (docs/methods/README.md §1)."""

    trainable: bool = True
    pseudolabels: str = "superpix2d"  # default training label source: superpix2d or gt
    episode_type: str = "same_slice_two_augs"
    normalisation: str = "lineage_default"
    postprocessing: str = "none"
    support_mode: str = "per_chunk"
    #: Fits weights while testing (e.g. LoRA on the support slices): the test loop then runs with gradients
    #: available (Lightning ``inference_mode=False``).
    test_time_training: bool = False


OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def make_optimizer(groups: list[dict[str, Any]], optimizer_config: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser a method's ``optimizer`` option names (``name``: sgd or adamw, the rest its arguments)."""
    cfg = dict(optimizer_config)
    name = cfg.pop("name", "sgd")
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}' (known: {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](groups, **cfg)


class FewShotSegmenter(L.LightningModule):
    """Shared training plumbing (optimiser, schedule, logging) and the EP1 test loop."""

    traits: ClassVar[MethodTraits] = MethodTraits()

    def __init__(
        self,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        log_images_every: int = 500,
    ) -> None:
        super().__init__()
        self.optimizer_config = dict(
            optimizer or {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}
        )
        self.lr_schedule_config = dict(lr_schedule or {"name": "constant"})
        self.log_images_every = log_images_every
        self.case_results: list[CaseResult] = []

    # ------------------------------------------------------------------ to implement
    def training_losses(self, batch: EpisodeBatch) -> dict[str, Tensor]:
        raise NotImplementedError

    def foreground_scores(self, batch: EpisodeBatch) -> Tensor:
        """[N, h, w] scores at any resolution; foreground where > 0 (e.g. logit difference fg - bg)."""
        raise NotImplementedError

    def postprocess(self, scores: Tensor, batch: EpisodeBatch) -> Tensor:
        """Binary masks [N, H, W] from native-resolution scores; the protocol itself adds nothing."""
        return scores > 0

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; override for per-module learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # ------------------------------------------------------------------ training
    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> Tensor:
        losses = self.training_losses(batch)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, batch_size=batch.n_queries
        )
        if self.log_images_every and self.global_step % self.log_images_every == 0:
            self._log_episode_images("train", batch, None)
        return losses["loss"]

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        if not any(p.requires_grad for g in groups for p in g["params"]):
            raise ConfigError(f"{type(self).__name__}: no trainable parameters")
        optimizer = make_optimizer(groups, self.optimizer_config)
        schedule = dict(self.lr_schedule_config)
        kind = schedule.pop("name", "constant")
        if kind == "constant":
            return optimizer
        if kind == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **schedule)
        elif kind == "linear":
            total = schedule.pop("total_steps", None) or self.trainer.max_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
        else:
            raise ConfigError(f"unknown lr_schedule '{kind}' (known: constant, step, linear)")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def on_test_epoch_start(self) -> None:
        self.case_results = []
        self._imaged_organs: set[str] = set()

    def predict_masks(self, batch: EpisodeBatch) -> Tensor:
        """Binary native-resolution masks [N, H, W] of one test batch."""
        scores = self.foreground_scores(batch).float()
        native = batch.meta["native_ref"].shape[-2:]
        if scores.shape[-2:] != native:
            scores = F.interpolate(scores[:, None], size=tuple(native), mode="bilinear", align_corners=False)[
                :, 0
            ]
        return self.postprocess(scores, batch)

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        masks = self.predict_masks(batch).cpu().numpy()
        meta = batch.meta
        result = score_volume(
            meta["scan_id"],
            batch.organ,
            masks,
            meta["native_ref"],
            meta["spacing"],
            meta["volume_shape"],
            contiguous=meta["contiguous"],
        )
        self.case_results.append(result)
        self._log_test_case(batch, result, masks)

    # ------------------------------------------------------------------ logging
    def _log_episode_images(self, tag: str, batch: EpisodeBatch, native_masks: Any) -> None:
        """Colour overlay of the middle query slice: its support with the support mask, the query with the
        ground truth and, when given, the prediction (``fsmis_bench.overlays``)."""
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        with torch.no_grad():
            index = batch.n_queries // 2
            episode = int(batch.query_episode[index])
            size = tuple(batch.query_images.shape[-2:])
            prediction = None
            if native_masks is not None:
                pred = torch.as_tensor(native_masks[index], dtype=torch.float32)[None, None]
                prediction = F.interpolate(pred, size=size, mode="nearest")[0, 0]
            image = episode_overlay(
                batch.support_images[episode, 0, 0],
                batch.support_masks[episode, 0],
                batch.query_images[index, 0],
                batch.query_masks[index],
                prediction,
            )
            experiment.add_image(tag, image, self.global_step)

    def _log_test_case(self, batch: EpisodeBatch, result: CaseResult, masks: Any) -> None:
        """Per-organ Dice and HD95 scalars of a test case, and one overlay per organ (its first case)."""
        self.log(f"test/dice_{batch.organ}", result.dice, batch_size=1, on_epoch=True, on_step=False)
        if result.hd95 == result.hd95:  # NaN where the organ is absent from both
            self.log(f"test/hd95_{batch.organ}", result.hd95, batch_size=1, on_epoch=True, on_step=False)
        if batch.organ not in self._imaged_organs:
            self._imaged_organs.add(batch.organ)
            self._log_episode_images(f"test/{batch.organ}_{batch.meta['scan_id']}", batch, masks)

    def describe(self) -> dict[str, Any]:
        """Declared traits, recorded with every result."""
        return asdict(self.traits)

    def deviations(self) -> list[str]:
        """Named options of this run that depart from the paper's recipe (written into every result row)."""
        return []

    def run_info(self) -> dict[str, Any]:
        """Method-specific facts about a finished fit/test (recorded per model in summary.json); none here."""
        return {}

"""ProGiDiff as a LightningModule: supervised prompt-guided training, P proposals, LoRA adaptation at test time.

Training (GT episodes, docs/methods/progidiff.md §4): every support and query slice of an episode is one
(slice, mask, organ prompt) example for the ε-prediction loss; with ``codec.pretrain_steps > 0`` the first
steps train the VAE on slice/mask reconstruction instead (the in-run mask codec of the CPU profiles). Testing:
per (query scan, organ) P DDIM proposals, their vote as the mask, best-of-P and diversity beside it; before
the queries, a LoRA adapter is fitted on the support information (track B: the organ's EP1 support slices,
cached per organ; track A, the cross-domain run: every labelled organ slice of the target's support scan).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.base import FewShotSegmenter, MethodTraits
from fsmis_bench.methods.progidiff.adaptation import (
    AdaptationSettings,
    LoraSettings,
    save_adapter,
    train_adapter,
)
from fsmis_bench.methods.progidiff.components import build_backbone
from fsmis_bench.methods.progidiff.model import PROMPT_TEMPLATE, ProGiDiffModel
from fsmis_bench.methods.progidiff.proposals import (
    AGGREGATIONS,
    ProposalCaseResult,
    dice,
    proposal_metrics,
    proposal_seed,
    save_proposals,
    vote_scores,
)
from fsmis_bench.metrics.volume_scorer import score_volume

ADAPTATION_MODES = ("auto", "episodic", "support_scan", "none")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProposalSettings:
    count: int = 5
    steps: int = 50  # DDIM steps per proposal
    aggregation: str = "soft_vote"
    batch_size: int = 64  # denoiser batch while sampling
    save: bool = True  # keep the binary proposals of every case (proposals/<group>/<scan>_<organ>.npz)


@dataclass(frozen=True)
class CodecSettings:
    """In-run VAE pre-training (random backbones only): ``pretrain_steps`` steps of reconstruction first."""

    pretrain_steps: int = 0
    lr: float = 1e-3
    kl_weight: float = 1e-6


def _settings(cls: type, values: dict[str, Any] | None, name: str) -> Any:
    try:
        return cls(**(values or {}))
    except TypeError as exc:
        raise ConfigError(f"progidiff {name}: {exc}") from exc


class ProGiDiff(FewShotSegmenter):
    """Prompt-guided ControlNet mask diffusion (docs/methods/progidiff.md; choices: the package README)."""

    traits: ClassVar[MethodTraits] = MethodTraits(
        pseudolabels="gt",
        episode_type="gt_adjacent",
        normalisation="volume_minmax",
        postprocessing="vote over P diffusion proposals",
        support_mode="LoRA on the support slices at test time",
        test_time_training=True,
    )

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        hint_encoder: dict[str, Any] | None = None,
        noise_scheduler: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
        proposals: dict[str, Any] | None = None,
        codec: dict[str, Any] | None = None,
        adaptation: dict[str, Any] | None = None,
        prompt_template: str = PROMPT_TEMPLATE,
        seed: int | None = None,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        log_images_every: int = 500,
    ) -> None:
        super().__init__(optimizer or {"name": "adamw", "lr": 1e-5}, lr_schedule, log_images_every)
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold the trained parts only
        backbone_args = dict(backbone or {"model_size": "tiny"})
        built = build_backbone(**backbone_args)
        self.backbone_source = built.source
        hint = {"kind": "vae_latent", "widths": (64, 128), **(hint_encoder or {})}
        self.model = ProGiDiffModel(
            built,
            hint_kind=hint["kind"],
            hint_widths=tuple(hint["widths"]),
            noise_scheduler=noise_scheduler,
            sampler=sampler,
            prompt_template=prompt_template,
        )
        self.proposals = _settings(ProposalSettings, proposals, "proposals")
        if self.proposals.aggregation not in AGGREGATIONS:
            raise ConfigError(f"proposals.aggregation must be one of {', '.join(AGGREGATIONS)}")
        self.codec = _settings(CodecSettings, codec, "codec")
        adaptation_args = dict(adaptation or {})
        lora = _settings(LoraSettings, adaptation_args.pop("lora", None), "adaptation.lora")
        self.adaptation = _settings(AdaptationSettings, {**adaptation_args, "lora": lora}, "adaptation")
        if self.adaptation.mode not in ADAPTATION_MODES:
            raise ConfigError(f"adaptation.mode must be one of {', '.join(ADAPTATION_MODES)}")
        self.seed = int(torch.initial_seed() if seed is None else seed)  # the run seed (seed_everything)
        self.register_buffer("codec_done", torch.tensor(self.codec.pretrain_steps == 0))
        if self.codec.pretrain_steps:
            self.model.vae.requires_grad_(True)
        self._mask_latent_std = float("nan")
        self._generator: torch.Generator | None = None
        self.adapters: dict[str, dict[str, Any]] = {}
        self._mode = "none"

    # ------------------------------------------------------------------ training
    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": list(self.model.controlnet.parameters())}]
        if not bool(self.codec_done):
            groups.append({"params": list(self.model.vae.parameters()), "lr": self.codec.lr})
        return groups

    def on_fit_start(self) -> None:
        self._generator = torch.Generator(self.device).manual_seed(self.seed)

    def on_train_batch_start(self, batch: EpisodeBatch, batch_idx: int) -> None:
        if not bool(self.codec_done) and self.global_step >= self.codec.pretrain_steps:
            self._finish_codec()

    def on_train_end(self) -> None:
        self._finish_codec()

    def training_losses(self, batch: EpisodeBatch) -> dict[str, Tensor]:
        images = torch.cat([batch.support_images[:, 0], batch.query_images])
        masks = torch.cat([batch.support_masks[:, 0], batch.query_masks])
        organs = list(batch.meta["classes"]) * 2
        if not bool(self.codec_done):
            losses = self.model.codec_losses(images, masks, self.codec.kl_weight, self._generator)
            std = float(losses.pop("mask_latent_std"))
            old = self._mask_latent_std
            self._mask_latent_std = std if math.isnan(old) else 0.9 * old + 0.1 * std
            return losses
        return {"loss": self.model.diffusion_loss(images, masks, organs, self._generator)}

    def _finish_codec(self) -> None:
        """Freeze the pre-trained VAE and scale its mask latents to unit standard deviation."""
        if bool(self.codec_done):
            return
        self.model.vae.requires_grad_(False)
        if not math.isnan(self._mask_latent_std):
            self.model.latent_scale.fill_(1.0 / max(self._mask_latent_std, 1e-6))
        self.codec_done.fill_(True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen pretrained weights (reloaded from ``pretrained_path``); random ones must stay."""
        if self.backbone_source == "random tiny configuration":
            return
        frozen = ["model.unet.", "model.text_encoder."]
        if self.codec.pretrain_steps == 0:
            frozen.append("model.vae.")
        state = checkpoint["state_dict"]
        for key in [k for k in state if any(k.startswith(p) for p in frozen)]:
            del state[key]

    # ------------------------------------------------------------------ inference
    def proposal_scores(self, batch: EpisodeBatch) -> Tensor:
        """Decoded proposal intensities [P, N, h, w] of the query slices, prompted with ``batch.organ``."""
        scan_id = int(batch.meta.get("scan_id", 0))
        seeds = [proposal_seed(self.seed, scan_id, batch.organ, p) for p in range(self.proposals.count)]
        return self.model.sample(
            batch.query_images,
            [batch.organ] * batch.n_queries,
            seeds,
            self.proposals.steps,
            self.proposals.batch_size,
        )

    def foreground_scores(self, batch: EpisodeBatch) -> Tensor:
        return vote_scores(self.proposal_scores(batch), self.proposals.aggregation)

    def predict_masks(self, batch: EpisodeBatch) -> Tensor:
        """The vote of the native-resolution proposals, as the test loop scores it."""
        return vote_scores(self._native_proposals(batch), self.proposals.aggregation) > 0

    def _native_proposals(self, batch: EpisodeBatch) -> Tensor:
        scores = self.proposal_scores(batch).float()
        count, n = scores.shape[:2]
        native = tuple(batch.meta["native_ref"].shape[-2:])
        if scores.shape[-2:] != native:
            scores = F.interpolate(
                scores.flatten(0, 1)[:, None], size=native, mode="bilinear", align_corners=False
            )[:, 0]
        return scores.reshape(count, n, *native)

    # ------------------------------------------------------------------ test loop
    def on_test_start(self) -> None:
        self._finish_codec()
        self.adapters = {}
        mode = self.adaptation.mode
        if mode == "auto":
            cross = getattr(self.trainer.datamodule, "source_dataset", None) is not None
            mode = "support_scan" if cross else "episodic"
        self._mode = mode
        if mode == "support_scan":
            images, masks, organs = self.trainer.datamodule.labelled_support_slices()
            self._adapt("support_scan", images, masks, organs)

    def _adapt(self, name: str, images: Tensor, masks: Tensor, organs: list[str]) -> None:
        seed = proposal_seed(self.seed, -1, name, 0)
        self.adapters[name] = train_adapter(self.model, name, images, masks, organs, self.adaptation, seed)
        log.info("ProGiDiff adapter %s: %s", name, self.adapters[name])
        folder = self._artifact_dir("adapters")
        if folder is not None:
            save_adapter(self.model.controlnet, name, folder / name)

    def _adapter_for(self, batch: EpisodeBatch) -> str | None:
        """The adapter serving this batch, fitted on first use (one per organ in the episodic mode)."""
        if self._mode == "none":
            return None
        if self._mode == "support_scan":
            return "support_scan"
        name = f"organ_{batch.organ}"
        if name not in self.adapters:
            shots = batch.support_images.flatten(0, 1)
            self._adapt(name, shots, batch.support_masks.flatten(0, 1), [batch.organ] * len(shots))
        return name

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        meta = batch.meta
        ref = meta["native_ref"]
        adapter = self._adapter_for(batch)
        before = math.nan
        if adapter is not None:
            controlnet = self.model.controlnet
            controlnet.set_adapter(adapter)
            if self.adaptation.report_unadapted:
                controlnet.disable_adapters()
                unadapted = self.predict_masks(batch)
                before = dice(unadapted.cpu().numpy(), ref)
                controlnet.enable_adapters()
        scores = self._native_proposals(batch)
        masks = (vote_scores(scores, self.proposals.aggregation) > 0).cpu().numpy()
        proposals = (scores > 0).cpu().numpy()
        result = score_volume(
            meta["scan_id"],
            batch.organ,
            masks,
            ref,
            meta["spacing"],
            meta["volume_shape"],
            contiguous=meta["contiguous"],
        )
        self.case_results.append(
            ProposalCaseResult(
                **asdict(result), **proposal_metrics(proposals, ref), dice_before_adaptation=before
            )
        )
        self._log_test_case(batch, result, masks)
        folder = self._artifact_dir("proposals")
        if self.proposals.save and folder is not None:
            save_proposals(
                folder / f"{meta['scan_id']}_{batch.organ}.npz", proposals, np.asarray(meta["slices"])
            )

    def _artifact_dir(self, kind: str) -> Path | None:
        """``<run dir>/<kind>/<model group>`` when a logger knows the run directory."""
        logger = self.logger
        if logger is None or getattr(logger, "save_dir", None) is None:
            return None
        return Path(logger.save_dir) / kind / str(logger.version)

    def deviations(self) -> list[str]:
        """Departures from the spec (docs/methods/progidiff.md §3): objective, hint encoder, in-run codec."""
        found = []
        prediction = self.model.noise_scheduler.config.prediction_type
        if prediction != "epsilon":
            found.append(f"prediction_type={prediction}")
        hint = self.model.controlnet.controlnet_cond_embedding.kind
        if hint != "vae_latent":
            found.append(f"hint_encoder={hint}")
        if self.codec.pretrain_steps > 0:
            found.append("in_run_codec")
        return found

    def run_info(self) -> dict[str, Any]:
        """What produced the numbers: backbone source, codec, latent scale, adapters and their cost."""
        return {
            "backbone": self.backbone_source,
            "smoke_test_numbers_only": self.backbone_source == "random tiny configuration",
            "codec": {**asdict(self.codec), "latent_scale": float(self.model.latent_scale)},
            "proposals": asdict(self.proposals),
            "adaptation": asdict(self.adaptation),
            "adaptation_mode": self._mode,
            "adapters": self.adapters,
        }

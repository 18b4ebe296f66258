"""SD-FSMIS as a LightningModule (docs/methods/sd_fsmis.md): training on one-step latent regression,
chunk-wise inference with the dynamic threshold and the largest connected component."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.base import FewShotSegmenter, MethodTraits
from fsmis_bench.methods.sd_fsmis.attention import POSITIONS
from fsmis_bench.methods.sd_fsmis.components import Source, load_component
from fsmis_bench.methods.sd_fsmis.model import SDFSMISNet
from fsmis_bench.methods.sd_fsmis.unet import widen_unet
from fsmis_bench.methods.sd_fsmis.vae_pretraining import VaePretraining, pretrain_vae
from fsmis_bench.methods.sd_fsmis.vtct import VisualTextualTranslator
from fsmis_bench.methods.sd_layout import size_mismatches

log = logging.getLogger(__name__)
SUPPORT_MODES = ("per_chunk", "all_chunks")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def dynamic_threshold_scores(maps: Tensor, chunk: Tensor, ratio: float) -> Tensor:
    """Channel mean of the decoded maps [N, 3, h, w] minus ratio × the maximum of each query's chunk tensor.

    The reference thresholds the channel mean at ``ratio`` × the maximum over the whole (3-channel) chunk
    tensor; subtracting the threshold keeps "foreground where > 0" and commutes with bilinear upsampling.
    """
    per_slice = maps.flatten(1).amax(dim=1)
    chunk_max = torch.zeros(int(chunk.max()) + 1, dtype=maps.dtype, device=maps.device)
    chunk_max = chunk_max.scatter_reduce(0, chunk, per_slice, reduce="amax", include_self=False)
    return maps.mean(dim=1) - ratio * chunk_max[chunk][:, None, None]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D binary mask (empty stays empty)."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


class SDFSMIS(FewShotSegmenter):
    """SD-FSMIS (Li et al., arXiv 2604.03134), official-code faithful, batched over episodes and query slices.

    Weights: ``pretrained_path`` holds the SD-1.5 ``vae/`` and ``unet/`` subfolders, ``dinov2_path`` DINOv2;
    hub ids resolve only from the local cache. ``*_config`` are used only with ``allow_random_init``.
    """

    traits: ClassVar[MethodTraits] = MethodTraits(
        pseudolabels="gt",
        episode_type="gt_adjacent",
        normalisation="volume_minmax",
        postprocessing="dynamic threshold (0.25 x chunk max) + largest 8-connected component",
        support_mode="per_chunk",
    )

    def __init__(
        self,
        pretrained_path: str | None = "sd-legacy/stable-diffusion-v1-5",
        dinov2_path: str | None = "facebook/dinov2-base",
        allow_random_init: bool = False,
        vae_config: dict[str, Any] | None = None,
        unet_config: dict[str, Any] | None = None,
        dinov2_config: dict[str, Any] | None = None,
        vae_pretraining: dict[str, Any] | None = None,
        vtct: dict[str, Any] | None = None,
        query_enhancement: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        timestep: int = 1,
        threshold_ratio: float = 0.25,
        keep_largest_component: bool = True,
        support_mode: str = "per_chunk",
        bank_positions: str = "none",
        test_query_batch: int | None = 16,
        vtct_lr: float = 5e-5,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        log_images_every: int = 500,
    ) -> None:
        super().__init__(
            optimizer or {"name": "adamw", "lr": 1e-5, "weight_decay": 1e-2},
            lr_schedule or {"name": "linear", "total_steps": 15000},
            log_images_every,
        )
        self.save_hyperparameters()
        if support_mode not in SUPPORT_MODES:
            raise ConfigError(
                f"sd_fsmis: unknown support_mode '{support_mode}' (known: {', '.join(SUPPORT_MODES)})"
            )
        if bank_positions not in POSITIONS:
            raise ConfigError(
                f"sd_fsmis: unknown bank_positions '{bank_positions}' (known: {', '.join(POSITIONS)})"
            )
        sources = {
            "vae": Source(pretrained_path, "vae", vae_config),
            "unet": Source(pretrained_path, "unet", unet_config),
            "dinov2": Source(dinov2_path, None, dinov2_config),
        }
        loaded = {kind: load_component(kind, sources[kind], allow_random_init) for kind in ("vae", "unet")}
        mismatches = size_mismatches(loaded["unet"][0].config, loaded["vae"][0].config)
        if mismatches:  # before DINOv2 is loaded: a wrong SD folder fails fast
            where = pretrained_path or "vae_config, unet_config"
            raise ConfigError(
                f"sd_fsmis {where}: the vae and unet do not fit together ({'; '.join(mismatches)})"
            )
        loaded["dinov2"] = load_component("dinov2", sources["dinov2"], allow_random_init)
        self.weights = {kind: sources[kind].describe(random) for kind, (_, random) in loaded.items()}
        self.random_vae = loaded["vae"][1]
        vae, unet, dinov2 = (loaded[kind][0] for kind in ("vae", "unet", "dinov2"))
        vtct_options = dict(vtct or {})
        qe = dict(query_enhancement or {})
        self.net = SDFSMISNet(
            vae,
            widen_unet(unet),
            VisualTextualTranslator(dinov2, output_dim=unet.config.cross_attention_dim, **vtct_options),
            scheduler_config=scheduler,
            timestep=timestep,
            use_qe=qe.get("enabled", True),
            qe_threshold=qe.get("threshold", 0.7),
            qe_topk_ratio=qe.get("topk_ratio", 0.1875),
            bank_positions=bank_positions,
        )
        self.vae_pretraining = VaePretraining(**vae_pretraining) if vae_pretraining else None
        self.vae_record: dict[str, float] | None = None
        self.threshold_ratio = threshold_ratio
        self.keep_largest_component = keep_largest_component
        self.support_mode = support_mode
        self.test_query_batch = test_query_batch
        self.vtct_lr = vtct_lr
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self) -> None:
        self._generator = torch.Generator(device=self.device).manual_seed(torch.initial_seed())
        if self.vae_pretraining is not None and self.vae_record is None:
            batches = self.trainer.datamodule.train_dataloader()
            self.vae_record = pretrain_vae(self.net.vae, batches, self.vae_pretraining, self.device)
            log.warning("sd_fsmis: VAE pre-trained in this run: %s", self.vae_record)
        elif self.random_vae:
            log.warning("sd_fsmis: random VAE without vae_pretraining: its decoder is not a mask codec")
        save_dir = getattr(self.logger, "save_dir", None)
        if save_dir:
            self.net.scheduler.save_config(Path(save_dir) / "scheduler")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """UNet at the optimizer's lr, VTCT at ``vtct_lr`` (5x the base lr in the reference)."""
        vtct = [p for p in self.net.vtct.parameters() if p.requires_grad]
        return [
            {"params": [p for p in self.net.unet.parameters() if p.requires_grad]},
            {"params": vtct, "lr": self.vtct_lr},
        ]

    # ------------------------------------------------------------------ training
    def training_losses(self, batch: EpisodeBatch) -> dict[str, Tensor]:
        """MSE between the query-pass output and the negated query-mask latent (docs/methods/sd_fsmis.md
        §8)."""
        encoded = self.net.encode_episodes(
            batch.support_images,
            batch.support_masks,
            batch.query_images,
            batch.query_episode,
            sample=True,
            generator=self._generator,
        )
        target = -self.net.mask_latents(batch.query_masks, sample=True, generator=self._generator)
        velocity = self.net.velocity(encoded)
        return {"loss": F.mse_loss(velocity.float(), target.float())}

    # ------------------------------------------------------------------ inference
    def foreground_scores(self, batch: EpisodeBatch) -> Tensor:
        """Channel-mean decoded maps minus the chunk's dynamic threshold, at the model resolution."""
        images, masks, episode = batch.support_images, batch.support_masks, batch.query_episode
        if self.support_mode == "all_chunks":  # every chunk's support slice as a shot of one episode
            images, masks = images.flatten(0, 1)[None], masks.flatten(0, 1)[None]
            episode = torch.zeros_like(episode)
        encoded = self.net.encode_episodes(images, masks, batch.query_images, episode, sample=False)
        maps = self.net.predict_masks(encoded, self.test_query_batch)
        return dynamic_threshold_scores(maps, batch.query_episode, self.threshold_ratio)

    def postprocess(self, scores: Tensor, batch: EpisodeBatch) -> Tensor:
        masks = scores > 0
        if not self.keep_largest_component:
            return masks
        kept = [largest_component(m) for m in masks.cpu().numpy()]
        return torch.from_numpy(np.stack(kept)).to(masks.device)

    # ------------------------------------------------------------------ checkpoints and records
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable weights (UNet, VTCT MLP) and an in-run pre-trained VAE; drop frozen weights."""
        keep = {f"{name}" for name, p in self.named_parameters() if p.requires_grad}
        prefix = "net.vae."
        checkpoint["state_dict"] = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k in keep or (self.vae_record is not None and k.startswith(prefix))
        }

    def deviations(self) -> list[str]:
        """CPU-profile departures from the official recipe (the label source is recorded on its own)."""
        found = []
        if self.hparams.bank_positions != "none":
            found.append(f"bank_positions={self.hparams.bank_positions}")
        if self.vae_pretraining is not None:
            found.append("in_run_vae")
        return found

    def run_info(self) -> dict[str, Any]:
        """Where each component's weights came from, the in-run VAE pre-training, the test support mode."""
        return {
            "weights": self.weights,
            "vae_pretraining": self.vae_record,
            "support_mode": self.support_mode,
            "bank_positions": self.hparams.bank_positions,
        }

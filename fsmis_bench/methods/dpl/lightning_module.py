"""DPL as a LightningModule: SSL-ALPNet whose global foreground prototype is diffusion-enhanced
(docs/methods/dpl.md)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.base import MethodTraits
from fsmis_bench.methods.dpl.conditioning import ConditioningConfig, SpatialCondition
from fsmis_bench.methods.dpl.denoiser import DenoiserConfig, build_denoiser
from fsmis_bench.methods.dpl.diffusion import DiffusionConfig, PrototypeDiffusion
from fsmis_bench.methods.dpl.fusion import ConservativeFusion, FusionConfig
from fsmis_bench.methods.prototype.module import PrototypeSegmenter
from fsmis_bench.methods.prototype.prototypes import PrototypeSet

C = TypeVar("C")
#: Foreground mass (in feature pixels) below which a support mask counts as empty.
EMPTY_MASK = 1e-3


def _section(cls: type[C], values: dict[str, Any] | None, name: str) -> C:
    """A config dataclass from its YAML mapping; unknown keys are a ConfigError naming the known ones."""
    try:
        return cls(**(values or {}))
    except TypeError as exc:
        known = ", ".join(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        raise ConfigError(f"model.init_args.{name}: {exc} (known: {known})") from None


def episode_seed(*parts: Any) -> int:
    """A stable 63-bit seed from JSON-serialisable parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class DPL(PrototypeSegmenter):
    """DPL (docs/methods/dpl.md §3): the global foreground prototype p0 of SSL-ALPNet is noised to t* K times,
    denoised by DDIM under a spatial condition and fused with p0; the fused prototype replaces p0 in the
    foreground set, identically in training and at test. Loss = L_seg (ALPNet's) + λ·L_ε.

    Test-time noise is drawn per episode from a generator seeded by (run seed, query scan, organ, chunk), the
    chunk being named by its support slices (``batch.meta["support"]``), so a chunk's variants do not depend
    on how chunks are batched. ``noise_seed`` None takes the run seed (``PL_GLOBAL_SEED``, set by
    ``seed_everything``). Training noise comes from the global RNG, seeded by the run.
    """

    traits: ClassVar[MethodTraits] = MethodTraits(
        pseudolabels="superpix2d", episode_type="same_slice_two_augs"
    )

    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        diffusion: dict[str, Any] | None = None,
        conditioning: dict[str, Any] | None = None,
        denoiser: dict[str, Any] | None = None,
        fusion: dict[str, Any] | None = None,
        diffusion_loss_weight: float = 0.1,
        diffusion_loss_to_encoder: bool = False,
        noise_seed: int | None = None,
        align_loss: bool = True,
        background_weight: float = 0.05,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        log_images_every: int = 500,
    ) -> None:
        super().__init__(
            encoder, {**(head or {}), "mode": "alp"}, align_loss, background_weight, optimizer, lr_schedule,
            log_images_every,
        )  # fmt: skip
        diffusion_config = _section(DiffusionConfig, diffusion, "diffusion")
        conditioning_config = _section(ConditioningConfig, conditioning, "conditioning")
        denoiser_config = _section(DenoiserConfig, denoiser, "denoiser")
        fusion_config = _section(FusionConfig, fusion, "fusion")
        self.diffusion_loss_weight = diffusion_loss_weight
        self.diffusion_loss_to_encoder = diffusion_loss_to_encoder
        self.noise_seed = noise_seed
        self.diffusion: PrototypeDiffusion | None = None
        self.condition: SpatialCondition | None = None
        self.fusion: ConservativeFusion | None = None
        self.diagnostics: dict[str, Tensor] = {}
        if not diffusion_config.enabled:
            return  # the no-diffusion ablation: no extra modules, exactly the SSL-ALPNet prototypes
        dim = self.encoder.feature_dim
        injection = None
        if conditioning_config.enabled:
            self.condition = SpatialCondition(dim, denoiser_config.embed_dim, conditioning_config)
            injection = conditioning_config.injection
        self.diffusion = PrototypeDiffusion(diffusion_config, build_denoiser(dim, denoiser_config, injection))
        self.fusion = ConservativeFusion(fusion_config)

    # ------------------------------------------------------------------ the DPL hook
    def refine_prototypes(
        self, protos: PrototypeSet, features: Tensor, masks: Tensor, batch: EpisodeBatch | None
    ) -> tuple[PrototypeSet, dict[str, Tensor]]:
        if self.diffusion is None:
            return protos, {}
        p0 = protos.foreground_global
        fused, variants = self.enhance(p0, features, masks, self.noise_generators(batch))
        aux: dict[str, Tensor] = {}
        if self.training:
            if self.diffusion_loss_weight > 0:
                aux["diffusion_eps"] = self.diffusion_loss_weight * self.denoising_loss(p0, features, masks)
            self._record_diagnostics(p0, variants, masks)
        return protos.with_foreground_global(fused), aux

    def enhance(
        self, p0: Tensor, features: Tensor, masks: Tensor, generator: list[torch.Generator] | None
    ) -> tuple[Tensor, Tensor]:
        """Fused prototypes [E, C] and the K variants [E, K, C] of p0 [E, C] (in p0's feature space)."""
        assert self.diffusion is not None and self.fusion is not None
        cond = None if self.condition is None else self.condition(features, masks)
        x = self.diffusion.enhance(self.diffusion.normalise(p0), cond, generator)
        variants = self.diffusion.denormalise(x, p0)
        return self.fusion(p0, variants), variants

    def denoising_loss(self, p0: Tensor, features: Tensor, masks: Tensor) -> Tensor:
        """L_ε on the episodes' p0, skipping episodes whose support mask vanishes at feature resolution (their
        p0 is 0, no prototype to learn); reaches the encoder only with ``diffusion_loss_to_encoder``."""
        assert self.diffusion is not None
        if not self.diffusion_loss_to_encoder:
            p0, features = p0.detach(), features.detach()
        keep = masks.sum(dim=(1, 2, 3)) > EMPTY_MASK
        if not keep.any():
            return p0.new_zeros(())
        p0, features, masks = p0[keep], features[keep], masks[keep]
        cond = None if self.condition is None else self.condition(features, masks)
        return self.diffusion.loss(self.diffusion.normalise(p0), cond)

    def noise_generators(self, batch: EpisodeBatch | None) -> list[torch.Generator] | None:
        """One generator per episode of a test batch (run seed, scan, organ, chunk); None: global RNG."""
        if self.training or batch is None or "scan_id" not in batch.meta:
            return None
        seed = self.noise_seed if self.noise_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        support = batch.meta.get("support")
        if support is None or len(support) != batch.n_episodes:
            raise ValueError("a test batch needs meta['support'] with one entry per episode (chunk)")
        device = batch.support_images.device
        scan, organ = int(batch.meta["scan_id"]), str(batch.organ)
        return [
            torch.Generator(device).manual_seed(
                episode_seed(seed, scan, organ, [[int(s), int(z)] for s, z in chunk])
            )
            for chunk in support
        ]

    # ------------------------------------------------------------------ logging
    def _record_diagnostics(self, p0: Tensor, variants: Tensor, masks: Tensor) -> None:
        """Variant fidelity (mean cosine to p0 over episodes with a support mask) and α, logged after the step."""
        cosine = F.cosine_similarity(variants, p0[:, None].expand_as(variants), dim=-1, eps=1e-6)
        keep = masks.sum(dim=(1, 2, 3)) > EMPTY_MASK
        self.diagnostics = {"train/variant_cos": cosine[keep].mean().detach()} if keep.any() else {}
        alpha = self.fusion.alpha if self.fusion is not None else None
        if isinstance(alpha, Tensor):
            self.diagnostics["train/alpha"] = alpha.detach()

    def on_train_batch_end(self, outputs: Any, batch: EpisodeBatch, batch_idx: int) -> None:
        if self.diagnostics:
            self.log_dict(self.diagnostics, batch_size=batch.n_queries)

"""Train one prior from its slices and save it as a Stable Diffusion folder (``vae/ unet/ text_encoder/
tokenizer/ scheduler/ model_index.json``) that ``StableDiffusionPipeline.from_pretrained`` loads, with PNG
grids of samples and reconstructions and a TensorBoard log beside it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fsmis_bench.methods.progidiff.components import block_tuples, local_tokenizer
from fsmis_bench.methods.sd_fsmis.vae_pretraining import mask_images
from fsmis_bench.prior.config import PriorConfig
from fsmis_bench.prior.slices import PriorSlices
from fsmis_bench.prior.training import (
    as_vae_input,
    encode_latents,
    label_free_masks,
    mask_round_trip_dice,
    train_autoencoder,
    train_latent_diffusion,
)

log = logging.getLogger(__name__)


def build_components(cfg: PriorConfig, image_size: int) -> dict[str, Any]:
    """Fresh components; sizes that must agree (latent channels, text width, grids) are derived here."""
    vae_args = {**block_tuples(cfg.vae), "sample_size": image_size}
    downsampling = 2 ** (len(vae_args["block_out_channels"]) - 1)
    unet_args = {
        **block_tuples(cfg.unet),
        "in_channels": vae_args["latent_channels"],
        "out_channels": vae_args["latent_channels"],
        "sample_size": image_size // downsampling,
    }
    tokenizer = local_tokenizer(cfg.max_prompt_tokens)
    text_config = CLIPTextConfig(
        **cfg.text_encoder,
        hidden_size=unet_args["cross_attention_dim"],
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,  # as SD-1.5's scheduler config
    )
    return {
        "vae": AutoencoderKL(**vae_args),
        "unet": UNet2DConditionModel(**unet_args),
        "text_encoder": CLIPTextModel(text_config).eval().requires_grad_(False),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def prompt_embedding(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompt: str) -> Tensor:
    """[1, tokens, width]: the text encoder's last hidden state for ``prompt``, padded as the SD pipeline pads."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    with torch.no_grad():
        return text_encoder(torch.tensor([ids["input_ids"]]))[0]


def train_prior(slices: PriorSlices, cfg: PriorConfig, seed: int, folder: Path) -> dict[str, Any]:
    """Train and save into ``folder``; returns the figures recorded in ``prior.json``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    image_size = int(slices.images.shape[-1])
    parts = build_components(cfg, image_size)
    prompt = cfg.prompt.format(modality=slices.modality)
    writer = SummaryWriter(str(folder / "tensorboard"))

    def logger(stage: str, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            writer.add_scalar(f"prior/{stage}_{name}", value, step)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scalars.items())
        print(f"[prior] {stage} step {step + 1}: {shown}", flush=True)

    began = time.perf_counter()
    vae_record = train_autoencoder(parts["vae"], slices, cfg, rng, logger)
    vae_record["mask_round_trip_dice"] = mask_round_trip_dice(parts["vae"], slices)
    scans = np.array([scan for scan, _ in slices.slices])
    validation_scan = scans.max()  # one training scan the UNet never trains on: is the prior general?
    trained = scans != validation_scan if len(np.unique(scans)) > 1 else np.ones(len(scans), bool)
    latents = encode_latents(parts["vae"], slices.images)
    context = prompt_embedding(parts["text_encoder"], parts["tokenizer"], prompt)
    unet_record = train_latent_diffusion(
        parts["unet"],
        parts["scheduler"],
        latents[torch.from_numpy(trained)],
        latents[torch.from_numpy(~trained)][:64] if (~trained).any() else latents[:64],
        context,
        cfg,
        generator,
        logger,
    )
    unet_record["validation_scan"] = int(validation_scan) if (~trained).any() else None
    pipeline = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(folder, safe_serialization=True)
    minutes = (time.perf_counter() - began) / 60
    previews = save_previews(pipeline, slices, cfg, prompt, seed, folder, writer)
    writer.close()
    return {
        "prompt": prompt,
        "image_size": image_size,
        "cpu_minutes": round(minutes, 2),
        "vae": vae_record,
        "unet": unet_record,
        "parameters": {
            name: sum(p.numel() for p in parts[name].parameters()) for name in ("vae", "unet", "text_encoder")
        },
        "previews": previews,
    }


def save_previews(
    pipeline: StableDiffusionPipeline,
    slices: PriorSlices,
    cfg: PriorConfig,
    prompt: str,
    seed: int,
    folder: Path,
    writer: SummaryWriter,
) -> list[str]:
    """samples.png (slices the prior generates from noise) and reconstructions.png (rows: slices, their
    reconstructions, label-free masks, theirs); both also logged to TensorBoard. Samples are drawn with DDIM
    (trailing spacing) after the folder is saved with its DDPM training scheduler."""
    count = cfg.preview_count
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, timestep_spacing="trailing")
    with torch.no_grad():
        samples = pipeline(
            [prompt] * count,
            height=slices.images.shape[-1],
            width=slices.images.shape[-1],
            num_inference_steps=cfg.preview_inference_steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images.mean(1)
        picks = torch.linspace(0, len(slices.slices) - 1, count).long()
        images = as_vae_input(slices.images[picks])
        masks = mask_images(
            label_free_masks(slices, count, cfg.superpixel_mask_fraction, np.random.default_rng(seed))
        )
        vae = pipeline.vae
        recon = vae.decode(vae.encode(torch.cat([images, masks])).latent_dist.mean).sample.mean(1)
    rows = {
        "samples": [samples],
        "reconstructions": [images[:, 0], recon[:count], masks[:, 0], recon[count:]],
    }
    written = []
    for name, parts in rows.items():
        signed = name == "reconstructions"
        grid = np.concatenate([np.concatenate(list(_to_unit(p, signed)), axis=1) for p in parts], axis=0)
        Image.fromarray((grid * 255).round().astype(np.uint8)).save(folder / f"{name}.png")
        writer.add_image(f"prior/{name}", grid, dataformats="HW")
        written.append(f"{name}.png")
    return written


def _to_unit(images: Tensor, signed: bool) -> np.ndarray:
    """[N, h, w] in [-1, 1] (or [0, 1]) -> numpy in [0, 1]."""
    values = (images + 1) / 2 if signed else images
    return values.clamp(0, 1).cpu().numpy()


def write_architecture(cfg: PriorConfig, image_size: int, folder: Path) -> None:
    """The prior's component configs (no weights) in the SD layout: what ``run --dry-run`` sizes a prior
    profile from before any prior is trained."""
    parts = build_components(cfg, image_size)
    for name in ("vae", "unet", "scheduler"):
        parts[name].save_config(folder / name)
    parts["text_encoder"].config.save_pretrained(folder / "text_encoder")
    parts["tokenizer"].save_pretrained(folder / "tokenizer")

"""Do a prior's UNet features separate the organs? A linear probe of frozen features (diagnostic).

For one cached prior (``fsmis-bench prior``) and the same UNet architecture randomly initialised: the training
slices of its fold are encoded by the prior's VAE, noised lightly (t = ``--timestep``, fixed noise) and passed
through the UNet with the prompt; the decoder blocks' outputs, upsampled to the latent grid and concatenated,
are each pixel's features. A linear classifier (background + four organs) is fitted on the pixels of some
training scans and scored (Dice per organ) on the others. Labels serve the probe only; the prior never saw them.

The prior's codec is checked on the same slices: encode -> decode Dice of each organ's masks, and the image
reconstruction error inside each organ against the rest of the body. ``--slices fold`` probes a setting-2 prior
on every training slice of its fold (setting 1's pool), so that the organs its exclusion withheld are in the
test: does the prior represent organs it never saw?

  python benchmark/prior_probe.py --prior ~/.cache/fsmis_bench/priors/<key> --dataset abd_mri --data-root DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from fsmis_bench.prior.builder import prompt_embedding
from fsmis_bench.prior.slices import PriorSlices, collect_prior_slices
from fsmis_bench.prior.training import as_vae_input, encode_latents, mask_round_trip_dice


@torch.no_grad()
def unet_features(
    unet: UNet2DConditionModel, latents: torch.Tensor, context: torch.Tensor, timestep: int
) -> torch.Tensor:
    """[N, C, h, w]: every decoder block's output, upsampled to the latent grid, concatenated."""
    outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in unet.up_blocks]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    alpha = 1.0 - timestep / 1000.0  # a light, fixed corruption: features of (almost) the clean slice
    unet(alpha**0.5 * latents + (1 - alpha) ** 0.5 * noise, torch.full((len(latents),), timestep),
         encoder_hidden_states=context.expand(len(latents), -1, -1))  # fmt: skip
    for hook in hooks:
        hook.remove()
    size = latents.shape[-1]
    return torch.cat([F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outputs], 1)


def probe_dice(
    features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, steps: int = 300
) -> list[float]:
    """Fit a linear pixel classifier on ``train`` slices, Dice (%) per class 1..K on the other slices."""
    classes = int(labels.max()) + 1
    x = features.permute(0, 2, 3, 1)
    mean, std = x[train].reshape(-1, x.shape[-1]).mean(0), x[train].reshape(-1, x.shape[-1]).std(0) + 1e-6
    x = (x - mean) / std
    layer = torch.nn.Linear(x.shape[-1], classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    weights = 1.0 / torch.bincount(labels[train].flatten(), minlength=classes).clamp_min(1).float()
    for _ in range(steps):
        loss = F.cross_entropy(
            layer(x[train]).reshape(-1, classes), labels[train].flatten(), weight=weights / weights.sum()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = layer(x[~train]).argmax(-1)
    truth = labels[~train]
    return [
        round(
            200.0
            * ((predicted == c) & (truth == c)).sum().item()
            / max(((predicted == c).sum() + (truth == c).sum()).item(), 1),
            2,
        )
        for c in range(1, classes)
    ]


@torch.no_grad()
def codec_check(vae: AutoencoderKL, slices: PriorSlices, per_organ: int = 64) -> dict[str, dict[str, float]]:
    """Per organ: mask round-trip Dice (%) and the image reconstruction MSE ([-1, 1] scale) inside the organ and in
    the rest of the body on the same slices (up to ``per_organ`` slices that contain it)."""
    round_trip = mask_round_trip_dice(vae, slices, per_organ)
    out = {}
    for organ, label in slices.organ_labels.items():
        present = np.flatnonzero((slices.labels == label).any(axis=(1, 2)))[:per_organ]
        if not len(present):
            continue
        images = as_vae_input(slices.images[present])
        error = (vae.decode(vae.encode(images).latent_dist.mean).sample - images).pow(2).mean(1).numpy()
        inside = slices.labels[present] == label
        body = (slices.images[present].numpy() > 0.05) & (slices.labels[present] == 0)
        out[organ] = {
            "mask_round_trip_dice": round_trip[organ],
            "image_mse_inside": round(float(error[inside].mean()), 5),
            "image_mse_body": round(float(error[body].mean()), 5),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prior", required=True, type=Path)
    parser.add_argument("--dataset", default="synthetic_mri")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--timestep", type=int, default=50)
    parser.add_argument(
        "--slices",
        choices=("prior", "fold"),
        default="prior",
        help="probe on the prior's own training slices, or on every training slice of its fold (setting 1)",
    )
    args = parser.parse_args(argv)
    record = json.loads((args.prior / "prior.json").read_text(encoding="utf-8"))
    key = record["key"]
    own = args.slices == "prior"
    slices = collect_prior_slices(args.dataset, key["fold"], key["setting"] if own else 1,
                                  None if key["group"] == "all" or not own else key["group"],
                                  {"image_size": record["image_size"], "normalisation": "volume_minmax"},
                                  data_root=args.data_root, cache_dir=args.cache_dir)  # fmt: skip
    vae = AutoencoderKL.from_pretrained(args.prior, subfolder="vae", local_files_only=True)
    prior_unet = UNet2DConditionModel.from_pretrained(args.prior, subfolder="unet", local_files_only=True)
    torch.manual_seed(0)
    random_unet = UNet2DConditionModel.from_config(prior_unet.config)
    from transformers import CLIPTextModel, CLIPTokenizer

    text = CLIPTextModel.from_pretrained(args.prior, subfolder="text_encoder", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(args.prior, subfolder="tokenizer", local_files_only=True)
    context = prompt_embedding(text, tokenizer, record["prompt"])
    latents = encode_latents(vae, slices.images)
    grid = latents.shape[-1]
    step = slices.labels.shape[-1] // grid
    names = {v: k for k, v in slices.organ_labels.items()}
    remap = np.zeros(256, np.int64)
    for index, label in enumerate(sorted(names), start=1):
        remap[label] = index
    labels = torch.from_numpy(remap[slices.labels[:, ::step, ::step]])
    scans = np.array([s for s, _ in slices.slices])
    held = sorted(set(scans))[-len(set(scans)) // 3 :]  # the last third of the scans are scored
    train = torch.from_numpy(~np.isin(scans, held))
    result = {
        "prior": str(args.prior),
        "slices": args.slices,
        "timestep": args.timestep,
        "scored_scans": [int(s) for s in held],
        "codec": codec_check(vae, slices),
    }
    for name, unet in (("prior_unet", prior_unet.eval()), ("random_unet", random_unet.eval())):
        features = unet_features(unet, latents, context, args.timestep)
        dice = probe_dice(features, labels, train)
        result[name] = {names[label]: d for label, d in zip(sorted(names), dice)} | {
            "mean": round(float(np.mean(dice)), 2)
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

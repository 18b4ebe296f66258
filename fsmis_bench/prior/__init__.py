"""In-domain latent-diffusion priors: small Stable-Diffusion-layout models trained without labels on a fold's
training slices, for the CPU profiles of the diffusion methods (see docs/priors.md)."""

from fsmis_bench.prior.config import PriorConfig
from fsmis_bench.prior.stage import prepare_prior, with_prior

__all__ = ["PriorConfig", "prepare_prior", "with_prior"]

"""SD-FSMIS (Li et al., arXiv 2604.03134): Stable Diffusion UNet with support-query attention, VTCT and QE."""

from fsmis_bench.methods.sd_fsmis.lightning_module import SDFSMIS

__all__ = ["SDFSMIS"]

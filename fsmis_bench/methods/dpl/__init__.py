"""DPL (Gao & Morel, arXiv 2510.12159): diffusion-enhanced prototypes with spatial conditioning."""

from fsmis_bench.methods.dpl.lightning_module import DPL

__all__ = ["DPL"]

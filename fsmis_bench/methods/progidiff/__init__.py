"""ProGiDiff (Lin et al., arXiv 2601.16060): prompt-guided ControlNet mask diffusion with LoRA adaptation."""

from fsmis_bench.methods.progidiff.lightning_module import ProGiDiff

__all__ = ["ProGiDiff"]

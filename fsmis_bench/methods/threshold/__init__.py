"""Reference 'method' that learns nothing: an intensity band fitted on the support foreground."""

from fsmis_bench.methods.threshold.lightning_module import IntensityThreshold

__all__ = ["IntensityThreshold"]

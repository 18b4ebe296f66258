"""Reference 'method' that learns nothing: predicts the chunk's support mask for every query slice."""

from fsmis_bench.methods.copy_support.lightning_module import CopySupport

__all__ = ["CopySupport"]

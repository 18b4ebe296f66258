"""SSL-ALPNet (Ouyang et al., ECCV 2020): adaptive local prototype pooling, superpixel self-supervision."""

from fsmis_bench.methods.alpnet.lightning_module import ALPNet

__all__ = ["ALPNet"]

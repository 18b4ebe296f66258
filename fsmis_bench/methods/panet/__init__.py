"""PANet run as SSL-PANet (Wang et al., ICCV 2019; Ouyang et al., ECCV 2020): global prototypes only."""

from fsmis_bench.methods.panet.lightning_module import PANet

__all__ = ["PANet"]

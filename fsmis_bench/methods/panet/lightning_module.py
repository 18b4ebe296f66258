"""PANet (SSL-PANet) as a LightningModule: the shared prototype segmenter with global prototypes only."""

from __future__ import annotations

from typing import Any, ClassVar

from fsmis_bench.methods.base import MethodTraits
from fsmis_bench.methods.prototype.module import PrototypeSegmenter


class PANet(PrototypeSegmenter):
    """SSL-PANet (docs/methods/panet.md): identical to ALPNet except one global prototype per class."""

    traits: ClassVar[MethodTraits] = MethodTraits(
        pseudolabels="superpix2d", episode_type="same_slice_two_augs"
    )

    def __init__(
        self, encoder: dict[str, Any] | None = None, head: dict[str, Any] | None = None, **kwargs: Any
    ):
        super().__init__(encoder=encoder, head={**(head or {}), "mode": "global"}, **kwargs)

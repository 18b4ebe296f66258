"""UNet surgery for SD-FSMIS (docs/methods/sd_fsmis.md §3): a widened query input conv and a separate support
input conv.

The query branch reads [query image latent ‖ query prototype map], the support branch reads
[support image latent ‖ support mask latent]; everything after the input convolution is shared. Both input
convolutions start as 0.5·[W, W] with W the pretrained 4-channel kernel, so that feeding the same latent to
both halves reproduces the pretrained convolution.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

BRANCHES = ("query", "support")


class SupportQueryUNet(UNet2DConditionModel):
    """``UNet2DConditionModel`` with a second input convolution ``conv_in_ref`` for the support branch.

    The config keys are the parent's (``in_channels`` is the width of both input convolutions), so
    ``save_pretrained`` / ``from_pretrained`` round-trip through this class, weights included.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conv = self.conv_in
        self.conv_in_ref = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding
        )

    def forward(  # type: ignore[override]
        self,
        sample: Tensor,
        timestep: Tensor | int,
        encoder_hidden_states: Tensor,
        *args: Any,
        branch: str = "query",
        **kwargs: Any,
    ) -> Any:
        """The parent's forward with ``conv_in`` (query) or ``conv_in_ref`` (support) as input layer."""
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        if branch == "query":
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        query_conv = self.conv_in
        self.conv_in = self.conv_in_ref
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            self.conv_in = query_conv


# diffusers reads the config keys from the signature of ``__init__``: expose the parent's.
SupportQueryUNet.__init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)  # type: ignore[attr-defined]


def widened_kernel(weight: Tensor, factor: int = 2) -> Tensor:
    """[out, c, k, k] -> [out, factor·c, k, k]: the kernel repeated along the input axis, divided by factor."""
    return torch.cat([weight] * factor, dim=1) / factor


def widen_unet(unet: UNet2DConditionModel, factor: int = 2) -> SupportQueryUNet:
    """The surgered UNet: ``conv_in`` and ``conv_in_ref`` take ``factor`` × the original input channels.

    Built on the meta device and filled with the original tensors (``assign=True``), so an SD-size UNet is
    not allocated twice. The config's ``in_channels`` is updated, so the result saves and loads as is.
    """
    if isinstance(unet, SupportQueryUNet):
        raise ValueError("UNet is already widened")
    state = unet.state_dict()
    weight, bias = state.pop("conv_in.weight"), state.pop("conv_in.bias")
    wide = widened_kernel(weight, factor)
    state.update(
        {
            "conv_in.weight": wide,
            "conv_in.bias": bias.clone(),
            "conv_in_ref.weight": wide.clone(),
            "conv_in_ref.bias": bias.clone(),
        }
    )
    config = {**unet.config, "in_channels": weight.shape[1] * factor}
    with torch.device("meta"):
        widened = SupportQueryUNet.from_config(config)
    widened.load_state_dict(state, strict=True, assign=True)
    return widened

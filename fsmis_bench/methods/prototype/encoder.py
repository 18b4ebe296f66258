"""Feature encoders of the prototype methods: the paper's ResNet-101 and a small CPU network."""

from __future__ import annotations

import logging

from torch import Tensor, nn

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.prototype.resnet import DilatedResNet, load_backbone_weights

log = logging.getLogger(__name__)

RESNET_WEIGHTS_REQUIRED = (
    "model.init_args.encoder.pretrained_path is not set: encoder kind resnet101 needs the COCO-pretrained "
    "DeepLabv3 backbone, a local torchvision deeplabv3_resnet101 state dict file "
    "(deeplabv3_resnet101_coco-586e9e4e.pth, or its tensors as .safetensors); pass "
    "--set model.init_args.encoder.pretrained_path=/path/to/file, or set encoder.allow_random_init: true to "
    "train from random weights"
)


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.body(x))


class TinyEncoder(nn.Module):
    """A small residual CNN with a chosen output stride (our CPU design, docs/methods/README.md §2.3).

    Stages halve the resolution until ``output_stride`` is reached; the remaining stages use dilation to
    widen the receptive field without further downsampling, like the DeepLab backbone.
    """

    def __init__(self, width: int = 32, output_stride: int = 4, depth: int = 4) -> None:
        super().__init__()
        if output_stride not in (2, 4, 8, 16):
            raise ConfigError(f"encoder output_stride {output_stride} must be 2, 4, 8 or 16")
        layers: list[nn.Module] = [_conv_block(3, width, 2)]
        channels, stride, dilation = width, 2, 1
        for _ in range(depth):
            if stride < output_stride:
                layers.append(_conv_block(channels, channels * 2, 2))
                channels, stride = channels * 2, stride * 2
            else:
                dilation *= 2
            layers.append(ResidualBlock(channels, dilation))
        self.body = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class FeatureEncoder(nn.Module):
    """Backbone + bias-free 1×1 reduction to ``feature_dim`` channels (docs/methods/alpnet.md §1)."""

    def __init__(
        self,
        kind: str = "tiny",
        feature_dim: int = 256,
        width: int = 32,
        output_stride: int = 4,
        depth: int = 4,
        pretrained_path: str | None = None,
        allow_random_init: bool = False,
    ) -> None:
        """``resnet101`` refuses to start without ``pretrained_path`` unless ``allow_random_init`` (a paper run
        must never silently train a random backbone); ``tiny`` is always trained from scratch."""
        super().__init__()
        #: Where the ResNet-101 weights came from (recorded with the results); None for the tiny encoder.
        self.weights: str | None = None
        if kind == "tiny":
            if pretrained_path:
                raise ConfigError("pretrained_path is only supported for encoder kind resnet101")
            self.backbone: nn.Module = TinyEncoder(width, output_stride, depth)
        elif kind == "resnet101":
            if not pretrained_path and not allow_random_init:
                raise ConfigError(RESNET_WEIGHTS_REQUIRED)
            self.backbone = DilatedResNet()
            if pretrained_path:
                load_backbone_weights(self.backbone, pretrained_path)
                self.weights = f"pretrained: {pretrained_path}"
            else:
                log.warning(
                    "encoder resnet101: RANDOMLY INITIALISED (allow_random_init: true, no pretrained_path)"
                )
                self.weights = "random init (allow_random_init)"
        else:
            raise ConfigError(f"unknown encoder kind '{kind}' (known: tiny, resnet101)")
        self.reduce = nn.Conv2d(self.backbone.out_channels, feature_dim, 1, bias=False)
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.backbone(x))

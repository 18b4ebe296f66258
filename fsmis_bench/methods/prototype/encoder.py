"""Feature encoders of the prototype methods: the paper's ResNet-101 and a small CPU network."""

from __future__ import annotations

from torch import Tensor, nn

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.prototype.resnet import DilatedResNet, load_backbone_weights


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
    ) -> None:
        super().__init__()
        if kind == "tiny":
            self.backbone: nn.Module = TinyEncoder(width, output_stride, depth)
        elif kind == "resnet101":
            self.backbone = DilatedResNet()
            if pretrained_path:
                load_backbone_weights(self.backbone, pretrained_path)
        else:
            raise ConfigError(f"unknown encoder kind '{kind}' (known: tiny, resnet101)")
        if kind == "tiny" and pretrained_path:
            raise ConfigError("pretrained_path is only supported for encoder kind resnet101")
        self.reduce = nn.Conv2d(self.backbone.out_channels, feature_dim, 1, bias=False)
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.backbone(x))

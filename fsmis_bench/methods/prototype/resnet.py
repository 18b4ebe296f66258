"""ResNet-101 with dilated last stages (output stride 8), parameter names compatible with torchvision.

torchvision is not a dependency (its wheels do not match this project's CPU torch), so the backbone of
DeepLabv3-ResNet101 is written here; ``load_backbone_weights`` accepts a torchvision ``.pth`` state dict of
``deeplabv3_resnet101`` (keys prefixed ``backbone.``) or of a plain ``resnet101``, or the same tensors in a
``.safetensors`` file. Files are never unpickled beyond tensors (``weights_only``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from fsmis_bench.errors import ConfigError


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class DilatedResNet(nn.Module):
    """ResNet trunk (layers 1-4) with strides replaced by dilation in layers 3 and 4 (DeepLabv3 style)."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=True)
        self.out_channels = 512 * Bottleneck.expansion

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        modules = [Bottleneck(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        modules += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_backbone_weights(model: DilatedResNet, path: str | Path) -> None:
    """Load a torchvision DeepLabv3-ResNet101 or ResNet-101 state dict from a local file (never downloads)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: backbone weights not found (download them on a machine with internet)")
    state = _read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes: the first mismatch follows a header line
        first = (str(exc).splitlines()[1:] or [str(exc)])[0].strip()
        raise ConfigError(f"{path}: not a ResNet-101 backbone ({first})") from exc
    if missing or unexpected:
        raise ConfigError(
            f"{path}: not a ResNet-101 backbone (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or of a ``torch.save``d state dict (optionally under
    ``state_dict``); anything else is a ConfigError naming the file."""
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    # by content: KeyError, EOFError, RuntimeError, UnpicklingError, SafetensorError...
    except Exception as exc:
        first_sentence = str(exc).split(". ")[0].splitlines()[0][:160] if str(exc) else ""
        raise ConfigError(
            f"{path}: cannot read the backbone weights as a state dict of tensors "
            f"({type(exc).__name__}: {first_sentence})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(
            f"{path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}"
        )
    return state

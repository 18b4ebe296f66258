"""The ResNet-101 weights loader of the prototype methods and the encoder's refusal to start without weights:
tiny state dicts in torchvision's key layouts, and files that are no state dict (a ConfigError naming the file,
never an UnpicklingError)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fsmis_bench.errors import ConfigError
from fsmis_bench.methods.prototype.encoder import FeatureEncoder
from fsmis_bench.methods.prototype.resnet import DilatedResNet, load_backbone_weights

TINY = (1, 1, 1, 1)  # one bottleneck per stage: the same key names and shapes per block, 13x fewer weights


def saved(layout: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone state, file contents) under torchvision's deeplabv3_resnet101 or resnet101 key names."""
    torch.manual_seed(0)
    state = DilatedResNet(TINY).state_dict()
    if layout == "deeplabv3":
        contents = {f"backbone.{k}": v for k, v in state.items()}
        contents["classifier.4.weight"] = torch.zeros(21, 256, 1, 1)  # heads are ignored
        contents["aux_classifier.4.weight"] = torch.zeros(21, 256, 1, 1)
    else:
        contents = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    return state, contents


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("layout", ["deeplabv3", "resnet101"])
def test_state_dicts_of_either_layout_and_format_load_exactly(tmp_path, layout, suffix):
    state, contents = saved(layout)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(contents, path)
    else:
        torch.save({"state_dict": contents} if layout == "resnet101" else contents, path)
    model = DilatedResNet(TINY)
    load_backbone_weights(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def write_text(path):
    path.write_text("<html>404 Not Found</html>\n")


def write_truncated(path):
    torch.save(saved("deeplabv3")[1], path)
    path.write_bytes(path.read_bytes()[:4096])


def write_pickled_module(path):
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module: weights_only refuses to unpickle it


def write_not_a_state_dict(path):
    torch.save([torch.zeros(3)], path)


def write_garbage_safetensors(path):
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("w.pth", write_text, "cannot read the backbone weights"),
        ("w.pth", write_truncated, "cannot read the backbone weights"),
        ("w.pth", lambda p: p.write_bytes(b""), "cannot read the backbone weights"),
        ("w.pth", write_pickled_module, "cannot read the backbone weights"),
        ("w.pth", write_not_a_state_dict, "expected a state dict"),
        ("w.safetensors", write_garbage_safetensors, "cannot read the backbone weights"),
    ],
)
def test_files_that_are_no_state_dict_are_config_errors_naming_the_file(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ConfigError, match=message) as caught:
        load_backbone_weights(DilatedResNet(TINY), path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_other_architectures_and_missing_files_name_the_file(tmp_path):
    state, _ = saved("resnet101")
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"partial\.pth: not a ResNet-101 backbone \(missing \['layer4"):
        load_backbone_weights(DilatedResNet(TINY), tmp_path / "partial.pth")
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a one-channel stem
    torch.save(state, tmp_path / "gray.pth")
    with pytest.raises(
        ConfigError, match=r"gray\.pth: not a ResNet-101 backbone \(size mismatch for conv1\.weight"
    ):
        load_backbone_weights(DilatedResNet(TINY), tmp_path / "gray.pth")
    for missing in (tmp_path / "nowhere.pth", tmp_path):
        with pytest.raises(ConfigError, match="backbone weights not found"):
            load_backbone_weights(DilatedResNet(TINY), missing)


def test_resnet101_encoder_refuses_to_start_without_weights_unless_random_init_is_allowed():
    with pytest.raises(
        ConfigError, match=r"model\.init_args\.encoder\.pretrained_path is not set.*deeplabv3_resnet101"
    ):
        FeatureEncoder(kind="resnet101")
    encoder = FeatureEncoder(kind="resnet101", feature_dim=8, allow_random_init=True)
    assert encoder.weights == "random init (allow_random_init)"
    assert FeatureEncoder(kind="tiny").weights is None  # the CPU encoder is always trained from scratch

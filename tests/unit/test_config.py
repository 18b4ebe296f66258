"""Run configuration parsing: YAML 1.2 numbers in profiles and --set overrides."""

from __future__ import annotations

import pytest

from fsmis_bench.config import apply_overrides, load_yaml, parse_yaml
from fsmis_bench.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [("5e-3", 0.005), ("1.0e-2", 0.01), ("-2E-4", -0.0002), ("1e5", 100000.0), ("12", 12), ("0.5", 0.5),
     ("abc", "abc"), ("e5", "e5"), ("1e-3x", "1e-3x")],
)  # fmt: skip
def test_scientific_notation_is_a_number(text, value):
    assert parse_yaml(text) == value
    assert type(parse_yaml(text)) is type(value)


def test_overrides_parse_numbers_and_refuse_bad_paths():
    config = {"model": {"init_args": {"lr": 0.1}}, "trainer": 3}
    out = apply_overrides(config, ["model.init_args.lr=5e-3", "model.init_args.new.deep=[1, 2]"])
    assert out["model"]["init_args"] == {"lr": 0.005, "new": {"deep": [1, 2]}}
    assert config["model"]["init_args"] == {"lr": 0.1}  # the input is left alone
    with pytest.raises(ConfigError, match="'trainer' is not a mapping"):
        apply_overrides(config, ["trainer.max_steps=2"])


def test_profile_files_read_exponents_as_numbers(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model:\n  init_args: {lr: 1e-3}\n")
    assert load_yaml(path)["model"]["init_args"]["lr"] == 0.001

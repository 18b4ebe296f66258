"""Run configuration: a method profile (YAML, class_path/init_args) plus dotted command-line overrides."""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import yaml

from fsmis_bench.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text to Python values (safe loader, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line report in one line: where (1-based line and column) and what."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"
    return " ".join(str(exc).split())


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise ConfigError(f"{path}: not a YAML text file (byte {byte:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a copy of ``config``."""
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: value is not valid YAML ({yaml_problem(exc)})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a mapping")
        node[parts[-1]] = value
    return out


def import_class(class_path: str) -> type:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"class_path {class_path}: cannot import ({exc})") from exc


def instantiate(spec: dict[str, Any]) -> Any:
    """Build ``class_path(**init_args)``, rejecting unknown arguments with a clear message."""
    if "class_path" not in spec:
        raise ConfigError(f"expected a class_path in {spec}")
    cls = import_class(spec["class_path"])
    init_args = dict(spec.get("init_args") or {})
    try:
        inspect.signature(cls).bind(**init_args)
    except TypeError as exc:
        raise ConfigError(f"{spec['class_path']}: invalid init_args ({exc})") from exc
    return cls(**init_args)


def config_hash(payload: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable configuration."""
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]

"""Typed configuration check, before anything runs: each ``data``, ``trainer`` and ``model.init_args`` option
against the signature of what it configures (jsonargparse reads the type hints), then the model built on the
meta device and its optimiser made on a stand-in parameter, so nested options (``encoder``, ``optimizer``,
``adaptation`` ...) are checked by the code that takes them. A typo or a wrong type is one ConfigError line that
names the key; ``run``, ``sweep`` planning (``--dry-run`` too) and the dry run call it."""

from __future__ import annotations

import inspect
import re
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentParser

from fsmis_bench.config import config_hash, import_class
from fsmis_bench.errors import ConfigError


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _accepted(cls: type) -> list[str]:
    """The keyword arguments of ``cls`` and of the classes its ``**kwargs`` reach."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(set(names))


def check_signature(cls: type, values: dict[str, Any], section: str) -> None:
    """``values`` against ``cls.__init__``: unknown keys and values of the wrong type (jsonargparse)."""
    known = _accepted(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{section}: unknown option(s) {unknown} for {cls.__name__} (known: {', '.join(known)})"
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, skip={name for name in known if name not in values})
    try:
        parser.parse_object(values)
    except Exception as exc:  # jsonargparse's ArgumentError and the type adapters' errors
        raise ConfigError(_parser_problem(section, _one_line(exc))) from None


def _parser_problem(section: str, message: str, limit: int = 300) -> str:
    """jsonargparse's 'Parser key "k": Expected a <class 'int'>. Got value: abc' as 'section.k: expected int,
    got abc'."""
    found = re.match(r'Parser key "([\w.]+)": (.*)', message)
    if not found:
        return f"{section}: {message}"[:limit]
    key, problem = found.groups()
    problem = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got \2", problem)
    return f"{section}.{key}: {problem}"[:limit]


def check_builds(method: str, config: dict[str, Any]) -> None:
    """Instantiate the model on the meta device (pretrained parts as their architectures, nothing read) and
    make its optimiser: the nested options meet the code that takes them."""
    from fsmis_bench.config import apply_overrides
    from fsmis_bench.methods.base import OPTIMIZERS, FewShotSegmenter, make_optimizer
    from fsmis_bench.runner.dry_run import build_on_meta
    from fsmis_bench.runner.paper_scale import plan_for

    plan = plan_for(method, config, use_folders=False)
    try:
        model = build_on_meta(apply_overrides(config, plan.overrides)["model"], plan)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"model.init_args: {_one_line(exc)}") from None
    if isinstance(model, FewShotSegmenter) and model.traits.trainable:
        optimizer = dict(getattr(model, "optimizer_config", {}) or {})
        name = optimizer.pop("name", "sgd")
        if name in OPTIMIZERS:
            check_signature(OPTIMIZERS[name], optimizer, "model.init_args.optimizer")
        stand_in = [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
        try:
            make_optimizer(stand_in, getattr(model, "optimizer_config", {}) or {})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.init_args.optimizer: {_one_line(exc)}") from None


#: (method, config hash) of the configs that passed in this process: a sweep checks each config once.
_PASSED: set[tuple[str, str]] = set()


def check_config(method: str, config: dict[str, Any]) -> None:
    """Every section of a resolved run config; ConfigError naming the first bad key."""
    digest = config_hash(config)
    if (method, digest) in _PASSED:
        return
    from fsmis_bench.datamodule import FewShotDataModule
    from fsmis_bench.runner.experiment import RUN_ONLY_TRAINER_KEYS
    from fsmis_bench.runner.selection import selection_of

    check_signature(FewShotDataModule, dict(config.get("data") or {}), "data")
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k not in RUN_ONLY_TRAINER_KEYS}
    check_signature(L.Trainer, trainer, "trainer")
    model = config["model"]
    try:
        cls = import_class(model["class_path"])
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"model.class_path {model.get('class_path')!r}: {_one_line(exc)}") from None
    check_signature(cls, dict(model.get("init_args") or {}), "model.init_args")
    traits = getattr(cls, "traits", None)
    selection = selection_of(config)
    if selection is not None and not getattr(traits, "trainable", True):
        raise ConfigError(f"selection: {method} trains nothing, so there is no training loss to choose by")
    for value in selection.values if selection else ():
        check_config(method, selection.config_for(config, value))
    check_builds(method, config)
    _PASSED.add((method, digest))

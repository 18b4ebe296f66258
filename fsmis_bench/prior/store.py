"""Priors in the cache: one folder per key, trained once under a file lock and reused by every run and job
that asks for the same key.

The key is (dataset, source dataset, fold, setting, group, hash of the slice list, hash of the prior config,
version of the code that trains it, seed). The code version is a hash of the prior's own modules, not the
repository commit, so unrelated commits do not retrain 10-CPU-minute priors. A folder is complete when its
``prior.json`` exists: it is written into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsmis_bench.config import config_hash
from fsmis_bench.prior.config import PriorConfig
from fsmis_bench.prior.slices import PriorSlices

RECORD = "prior.json"
#: Modules whose code defines what a prior is (their text hashes into every key).
CODE_FILES = ("prior/builder.py", "prior/config.py", "prior/slices.py", "prior/training.py",
              "methods/sd_fsmis/vae_pretraining.py")  # fmt: skip


def prior_code_version() -> str:
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in CODE_FILES:
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class PriorKey:
    dataset: str
    fold: int
    setting: int
    group: str
    slices: str  # PriorSlices.digest()
    config: str  # hash of PriorConfig.as_dict()
    code: str
    seed: int
    source_dataset: str | None = None

    @classmethod
    def of(
        cls,
        slices: PriorSlices,
        cfg: PriorConfig,
        dataset: str,
        fold: int,
        setting: int,
        group: str | None,
        seed: int,
        source_dataset: str | None = None,
    ) -> PriorKey:
        training = {
            k: v for k, v in cfg.as_dict().items() if k != "target"
        }  # where it goes is not what it is
        return cls(
            dataset=dataset,
            fold=fold,
            setting=setting,
            group=(group or "all") if setting == 2 else "all",  # only setting 2's exclusion depends on it
            slices=slices.digest(),
            config=config_hash(training),
            code=prior_code_version(),
            seed=seed,
            source_dataset=source_dataset,
        )

    @property
    def name(self) -> str:
        data = f"{self.source_dataset}-to-{self.dataset}" if self.source_dataset else self.dataset
        return (
            f"{data}_s{self.setting}_f{self.fold}_{self.group}_seed{self.seed}_{config_hash(self.__dict__)}"
        )


def priors_dir(cache_dir: Path) -> Path:
    return cache_dir / "priors"


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (blocking): one process trains a key, the others wait."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Restore the global torch (CPU and CUDA), NumPy and Python random states on exit: training a prior must
    not move the caller's random stream, or a run would get other numbers when its prior was trained in the
    same process than when it was reused from the cache."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def obtain_prior(
    key: PriorKey, slices: PriorSlices, cfg: PriorConfig, cache_dir: Path
) -> tuple[Path, dict[str, Any], bool]:
    """(folder, record, trained_now): the cached prior of ``key``, trained first if it is not there yet."""
    from fsmis_bench.prior.builder import train_prior  # diffusers and transformers only when training

    folder = priors_dir(cache_dir) / key.name
    record = read_record(folder)
    if record is not None:
        return folder, record, False
    with exclusive(priors_dir(cache_dir) / f"{key.name}.lock"):
        record = read_record(folder)  # another job may have finished it while this one waited
        if record is not None:
            return folder, record, False
        tmp = folder.with_name(f".tmp-{key.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with rng_untouched():
                figures = train_prior(slices, cfg, key.seed, tmp)
            record = {
                "key": key.__dict__,
                "config": cfg.as_dict(),
                "slices": {**slices.record(), "digest": key.slices, "list": slices.slices},
                **figures,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder (no prior.json) from a crash
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder, record, True


def summary_of(folder: Path, record: dict[str, Any], trained_now: bool) -> dict[str, Any]:
    """What a run's summary.json records of the prior it used."""
    return {
        "tag": "prior=in_domain_ldm",
        "folder": str(folder),
        "key": record["key"],
        "trained_in_this_run": trained_now,
        "cpu_minutes": record["cpu_minutes"],
        "slices": {k: v for k, v in record["slices"].items() if k != "list"},
        "vae": record["vae"],
        "unet": record["unet"],
    }

"""docs/adding-a-method.md is true: its quotes are the repository's files, its lists are the code's, and both of
its examples (the ``copy_support`` floor and the trainable toy) run end to end."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from fsmis_bench.batch import EpisodeBatch
from fsmis_bench.cli import main
from fsmis_bench.datamodule import FewShotDataModule
from fsmis_bench.methods.base import FewShotSegmenter
from fsmis_bench.registry import METHODS, PROFILES, MethodEntry, profile_path
from fsmis_bench.runner.experiment import PROFILE_DATA_KEYS, TRAINER_KEYS

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "adding-a-method.md").read_text(encoding="utf-8")
PROSE = " ".join(DOC.split())
#: "`path`:" or "`path` (excerpt):", a blank line, then a fenced block.
QUOTE = re.compile(r"^`([\w/.]+)`( \(excerpt\))?:\n\n```\w+\n(.*?)^```", re.M | re.S)


def quotes() -> dict[str, tuple[bool, str]]:
    return {path: (bool(excerpt), code) for path, excerpt, code in QUOTE.findall(DOC)}


def ticks(text: str) -> list[str]:
    return re.findall(r"`([^`]*)`", text)


def table(first_header: str) -> list[list[str]]:
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def run(tmp_path: Path, data_root: Path, method: str, *extra: str) -> dict:
    args = ["run", "--method", method, "--fold", "0", "--data-root", str(data_root), "--profile", "smoke"]
    args += ["--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *extra]
    assert main(args) == 0
    return json.loads(
        next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text(encoding="utf-8")
    )


def test_quoted_repository_files_are_the_files():
    repository = {path: q for path, q in quotes().items() if path.startswith("fsmis_bench/")}
    assert set(repository) == {
        "fsmis_bench/methods/copy_support/lightning_module.py",
        "fsmis_bench/methods/copy_support/__init__.py",
        "fsmis_bench/methods/copy_support/configs/smoke.yaml",
        "fsmis_bench/registry.py",
    }
    for path, (excerpt, code) in repository.items():
        text = (REPO / path).read_text(encoding="utf-8")
        assert (code in text) if excerpt else (code == text), path


def test_registry_entry_and_the_four_profiles():
    entry = METHODS["copy_support"]
    assert (entry.package, entry.reference) == ("fsmis_bench.methods.copy_support", True)
    folder = DOC.split("## 1. The folder", 1)[1].split("```", 2)[1]
    assert set(re.findall(r"configs/(\w+)\.yaml", folder)) == set(PROFILES)
    for profile in PROFILES:
        assert profile_path("copy_support", profile).is_file()


def test_listed_profile_keys_are_the_runners():
    data, trainer = (ticks(part.split(" (", 1)[0]) for part in PROSE.split("from this list only: ")[1:3])
    assert set(data) == PROFILE_DATA_KEYS
    assert set(trainer[: len(TRAINER_KEYS)]) == TRAINER_KEYS


def test_batch_table_and_hooks_are_the_code(tiny_mri_root, tmp_path):
    rows = {ticks(row[0])[0]: row for row in table("field")}
    assert set(rows) == {f.name for f in dataclasses.fields(EpisodeBatch)}
    for row in table("hook"):
        assert hasattr(FewShotSegmenter, ticks(row[0])[0]), row[0]
    data = FewShotDataModule(
        dataset="synthetic_mri",
        data_root=str(tiny_mri_root),
        image_size=32,
        batch_size=2,
        cache_dir=str(tmp_path),
    )
    data.setup()
    train = next(iter(data.train_dataloader()))
    test = next(iter(data.test_dataloader()))
    assert set(train.meta) == set(ticks(rows["meta"][1]))
    assert set(test.meta) == set(ticks(rows["meta"][2]))
    assert train.organ == ticks(rows["organ"][1])[0]
    assert test.n_episodes == 3 and test.query_episode.max() == 2


def test_copy_support_runs_as_one_untrained_model(tiny_mri_root, tmp_path):
    summary = run(tmp_path, tiny_mri_root, "copy_support", "--setting", "2")
    assert summary["status"] == "ok" and summary["reference_method"] is True
    assert [m["group"] for m in summary["models"]] == ["all"]
    assert summary["traits"]["trainable"] is False


def test_the_trainable_example_runs_end_to_end(tiny_mri_root, tmp_path, monkeypatch):
    """The toy of section 6 written into a temporary package (the doc's ``fsmis_bench.methods.support_conv``
    becomes the top-level ``support_conv``), registered, and run in setting 2."""
    package = tmp_path / "packages" / "support_conv"
    (package / "configs").mkdir(parents=True)
    examples = {path: code for path, (_, code) in quotes().items() if path.startswith("support_conv/")}
    assert set(examples) == {"support_conv/lightning_module.py", "support_conv/configs/smoke.yaml"}
    for path, code in examples.items():
        (package.parent / path).write_text(code.replace("fsmis_bench.methods.support_conv", "support_conv"))
    (package / "__init__.py").write_text("from support_conv.lightning_module import SupportConv\n")
    call = ast.parse(DOC.split("Registry entry:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]).body[0]
    entry = MethodEntry(*(ast.literal_eval(arg) for arg in call.value.args))  # type: ignore[attr-defined]
    assert entry.name == "support_conv" and entry.package == "fsmis_bench.methods.support_conv"
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setitem(METHODS, entry.name, dataclasses.replace(entry, package="support_conv"))

    summary = run(tmp_path, tiny_mri_root, "support_conv", "--setting", "2")
    assert summary["status"] == "ok" and summary["traits"]["trainable"] is True
    assert [m["group"] for m in summary["models"]] == ["lower", "upper"]
    assert all(m["train_steps"] == 2 for m in summary["models"])
    assert summary["traits"]["episode_type"] == "same_slice_two_augs"


@pytest.mark.parametrize("method", [name for name, entry in METHODS.items() if not entry.reference])
def test_every_learned_method_has_the_documented_parts(method):
    folder = Path(profile_path(method, "smoke")).parents[1]
    assert (folder / "README.md").is_file() and (folder / "__init__.py").is_file()
    assert (REPO / "docs" / "methods" / f"{method}.md").is_file()

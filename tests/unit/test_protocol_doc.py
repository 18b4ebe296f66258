"""docs/protocol.md against the code: every table of numbers in the document is parsed and compared.

A change of a fold rule, a label id, an exclusion set, a default or a constant without the matching change
of the document (or the reverse) fails here. The CHAOS check table is compared with the real labels where
they are present.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import math
import operator
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fsmis_bench.config import parse_yaml
from fsmis_bench.data.cache import class_index
from fsmis_bench.data.datasets import (
    ABD_CT,
    ABD_MRI,
    CHAOS_LABEL_NAMES,
    LABEL_GROUPS,
    ORGANS,
    SYNAPSE_LABEL_NAMES,
)
from fsmis_bench.data.prepare.ct import SYNAPSE_CASES
from fsmis_bench.datamodule import NORMALISATIONS, FewShotDataModule
from fsmis_bench.errors import ConfigError
from fsmis_bench.metrics.surface import volume_diagonal_mm
from fsmis_bench.metrics.volume_scorer import score_volume
from fsmis_bench.protocol.augment import AugmentConfig
from fsmis_bench.protocol.evaluation import CHUNK_RULES, EVAL_MODES, alpnet_chunks, qnet_chunks
from fsmis_bench.protocol.settings import (
    EXCLUSION_RULES,
    PSEUDOLABEL_SOURCES,
    allowed_slices,
    excluded_labels,
    model_groups,
)
from fsmis_bench.protocol.splits import FOLD_SCHEMES, fold_plan
from fsmis_bench.runner.experiment import CASE_COLUMNS, PROFILE_DATA_KEYS

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
PROSE = " ".join(DOC.split())  # the text with line breaks as spaces, for sentences that wrap
SPECS = {"abd_ct": ABD_CT, "abd_mri": ABD_MRI}


# ---------------------------------------------------------------------------------------------- parsing
def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of ``text``: (header cells, body rows of cells)."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            found.append((block[0], block[2:]))
            block = []
    return found


def table(*header: str) -> list[list[str]]:
    """Body of the one table whose header starts with ``header``."""
    matches = [rows for head, rows in tables(DOC) if tuple(head[: len(header)]) == header]
    assert len(matches) == 1, f"expected one table with header {header}, found {len(matches)}"
    return matches[0]


def ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def ids(cell: str) -> list[int]:
    """``"1, 2, 5"`` or ``"0–5"`` (en dash range) to a list of integers."""
    out = []
    for part in cell.split(","):
        bounds = [int(b) for b in re.findall(r"\d+", part)]
        out += list(range(bounds[0], bounds[-1] + 1)) if "–" in part else bounds
    return out


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str) -> Any:
    """A literal or plain arithmetic (``50 + 1e-4``, ``1 / 6``) without eval."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(walk(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return {walk(k): walk(v) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not a plain value: {expression}")

    return walk(ast.parse(expression, mode="eval").body)


def resolve(reference: str) -> Any:
    """``pkg.module.Name.attr``; ``len:`` takes the length, ``default:`` a constructor argument's default."""
    kind, _, dotted = reference.rpartition(":")
    parts = dotted.split(".")
    if kind == "default":
        parts, argument = parts[:-1], parts[-1]
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
            break
        except ModuleNotFoundError:
            continue
    for name in parts[split:]:
        obj = getattr(obj, name)
    if kind == "len":
        return len(obj)
    if kind == "default":
        return inspect.signature(obj).parameters[argument].default
    return obj


# ---------------------------------------------------------------------------------------------- §0.1
ENUMERATED = {
    "fold_scheme": FOLD_SCHEMES,
    "exclusion_rule": EXCLUSION_RULES,
    "pseudolabels": PSEUDOLABEL_SOURCES,
    "eval_mode": EVAL_MODES,
    "chunk_rule": CHUNK_RULES,
    "normalisation": NORMALISATIONS,
}


def test_option_table_gives_the_code_defaults_and_values():
    defaults = inspect.signature(FewShotDataModule).parameters
    augment_defaults = {f.name: f.default for f in dataclasses.fields(AugmentConfig)}
    rows = table("option", "values")
    for row in rows:
        option, values = ticks(row[0])[0], ticks(row[1])
        default = parse_yaml(values[0])
        if option.startswith("augment."):
            assert "augment" in PROFILE_DATA_KEYS
            assert augment_defaults[option.removeprefix("augment.")] == default, option
        else:
            assert option in PROFILE_DATA_KEYS, f"{option} cannot be set from a profile"
            assert defaults[option].default == default, option
        if option in ENUMERATED:
            assert tuple(values) == ENUMERATED[option], option
    assert set(ENUMERATED) <= {ticks(row[0])[0] for row in rows}


# ---------------------------------------------------------------------------------------------- §1.3, §1.4
def test_label_id_table_is_the_datasets_label_table():
    ct, mri = {}, {}
    for label, ct_name, mri_name in table("label id", "`abd_ct`", "`abd_mri`"):
        ct[int(label)] = ticks(ct_name)[0]
        if ticks(mri_name):
            mri[int(label)] = ticks(mri_name)[0]
    assert ct == SYNAPSE_LABEL_NAMES
    assert mri == CHAOS_LABEL_NAMES


def test_benchmark_organ_table_is_the_organ_lookup_in_column_order():
    rows = table("organ", "`abd_ct` id", "`abd_mri` id")
    assert tuple(ticks(row[0])[0] for row in rows) == ORGANS
    for row in rows:
        organ = ticks(row[0])[0]
        assert (ABD_CT.organ_label[organ], ABD_MRI.organ_label[organ]) == (int(row[1]), int(row[2]))


def test_ct_scan_id_table_is_the_case_mapping():
    covered = []
    for scan_ids, case in table("scan id k", "Synapse case"):
        offset = int(re.match(r"k \+ (\d+)", case).group(1))
        for k in ids(scan_ids):
            assert SYNAPSE_CASES[k] == k + offset
            covered.append(k)
    assert covered == list(ABD_CT.scan_ids)


CHECK_HEADER = ("pid", "Z", "liver (1)", "kidney_right (2)", "kidney_left (3)", "spleen (4)")


def check_table() -> dict[int, tuple[int, dict[int, tuple[int, int, int]]]]:
    """pid -> (Z, label -> (first, last, count))."""
    rows = {}
    for row in table(*CHECK_HEADER):
        organs = {}
        for label, cell in enumerate(row[2:], start=1):
            first, last, count = (int(v) for v in re.match(r"(\d+)–(\d+) \((\d+)", cell).groups())
            gaps = last - first + 1 - count
            assert ("gap" in cell) == (gaps > 0), f"pid {row[0]} label {label}: {cell}"
            organs[label] = (first, last, count)
        rows[int(row[0])] = (int(row[1]), organs)
    return rows


def anchors() -> dict[str, int]:
    return {ticks(row[0])[0]: int(row[1]) for row in table("anchor", "value")}


def test_check_table_covers_every_patient_and_sums_to_its_anchors():
    rows = check_table()
    assert tuple(rows) == ABD_MRI.scan_ids
    assert sum(depth for depth, _ in rows.values()) == anchors()["chaos_slices"]
    assert (
        sum(c for _, organs in rows.values() for _, _, c in organs.values())
        == anchors()["chaos_organ_slices"]
    )


@pytest.mark.real_data
def test_check_table_and_anchors_match_the_real_chaos_labels(chaos_labels):
    expected = check_table()
    any_organ = all_organs = changed = 0
    organ_ids = tuple(CHAOS_LABEL_NAMES)
    for pid, label in chaos_labels.items():
        index, _ = class_index(label)
        depth, organs = expected[pid]
        assert label.shape[0] == depth, pid
        for organ_id, (first, last, count) in organs.items():
            assert (index[organ_id][0], index[organ_id][-1], len(index[organ_id])) == (first, last, count)
            positive = np.asarray(index[organ_id])
            alp = alpnet_chunks(first, last)[positive - first]
            changed += int((alp != qnet_chunks(len(positive))).sum())
        any_organ += int((~allowed_slices(index, organ_ids, "all_any", n_slices=depth)).sum())
        all_organs += int((~allowed_slices(index, organ_ids, "all_and", n_slices=depth)).sum())
    values = anchors()
    assert any_organ == values["chaos_slices_any_organ"]
    assert all_organs == values["chaos_slices_all_organs"]
    assert changed == values["chaos_chunk_rule_changes"]


# ---------------------------------------------------------------------------------------------- §3
def test_alpnet_fold_table_is_fold_plan():
    for row in table("fold", "`abd_ct` queries (scan ids)"):
        fold = int(row[0])
        for spec, queries, support in ((ABD_CT, row[1], row[2]), (ABD_MRI, row[3], row[4])):
            plan = fold_plan(spec.scan_ids, fold)
            assert plan.query_ids == tuple(ids(queries)), (spec.name, fold)
            assert plan.support_ids == (int(support),), (spec.name, fold)
    ct, mri = (
        int(n) for n in re.search(r"trains on (\d+) `abd_ct` or (\d+) `abd_mri` scans", PROSE).groups()
    )
    assert len(fold_plan(ABD_CT.scan_ids, 0).train_ids) == ct
    assert len(fold_plan(ABD_MRI.scan_ids, 0).train_ids) == mri


def test_qnet_fold_table_and_its_twice_and_never_sets_are_fold_plan():
    counts: dict[str, dict[int, int]] = {"abd_ct": {}, "abd_mri": {}}
    for row in table("fold", "`abd_ct` queries", "`abd_ct` support"):
        fold = int(row[0])
        for spec, queries, support in ((ABD_CT, row[1], row[2]), (ABD_MRI, row[3], row[4])):
            plan = fold_plan(spec.scan_ids, fold, scheme="qnet_sets", support_index=2)
            assert plan.query_ids == tuple(ids(queries)), (spec.name, fold)
            assert plan.support_ids == (int(support),), (spec.name, fold)
            for scan in plan.query_ids:
                counts[spec.name][scan] = counts[spec.name].get(scan, 0) + 1
    sentence = re.search(
        r"pids ([\d, ]+) are scored twice and ([\d, ]+) never; on `abd_ct` scans ([\d, ]+) twice and ([\d, ]+) never",
        PROSE,
    )
    mri_twice, mri_never, ct_twice, ct_never = (set(ids(group)) for group in sentence.groups())
    for name, twice, never in (("abd_mri", mri_twice, mri_never), ("abd_ct", ct_twice, ct_never)):
        assert {s for s, c in counts[name].items() if c == 2} == twice
        assert set(SPECS[name].scan_ids) - set(counts[name]) == never


# ---------------------------------------------------------------------------------------------- §4
def test_group_table_is_the_setting_2_groups():
    rows = table("group", "organs", "`abd_ct` ids", "`abd_mri` ids")
    assert {ticks(row[0])[0] for row in rows} == set(LABEL_GROUPS)
    for row in rows:
        group = ticks(row[0])[0]
        assert tuple(ticks(row[1])) == LABEL_GROUPS[group]
        assert ABD_CT.group_labels(group) == tuple(ids(row[2]))
        assert ABD_MRI.group_labels(group) == tuple(ids(row[3]))


def test_models_per_fold_table_is_model_groups():
    for setting, labels, rule_cell, models in table("setting", "training labels", "`exclusion_rule`"):
        rules = EXCLUSION_RULES if rule_cell == "any" else tuple(ticks(rule_cell))
        expected = ticks(models)
        for rule in rules:
            if expected == ["ConfigError"]:
                with pytest.raises(ConfigError):
                    model_groups(int(setting), ticks(labels)[0], rule)
            else:
                groups = model_groups(int(setting), ticks(labels)[0], rule)
                assert [g or "all" for g in groups] == expected, (setting, labels, rule)


def test_exclusion_table_is_excluded_labels_and_allowed_slices():
    rows = table("`exclusion_rule`", "model", "`abd_ct` excluded ids")
    assert {ticks(row[0])[0] for row in rows} == set(EXCLUSION_RULES)
    for rule_cell, model, ct_ids, mri_ids, removed_when in rows:
        rule, group = ticks(rule_cell)[0], ticks(model)[0]
        for spec, cell in ((ABD_CT, ct_ids), (ABD_MRI, mri_ids)):
            excluded = excluded_labels(spec, 2, None if group == "all" else group, rule)
            assert excluded == tuple(ids(cell)), (rule, group, spec.name)
            assert excluded_labels(spec, 1, None if group == "all" else group, rule) == ()
            # a slice holding only the first excluded label: removed under "any", kept under "all"
            presence = np.zeros((len(excluded), 1), dtype=bool)
            presence[0, 0] = True
            kept = bool(allowed_slices(presence, excluded, rule)[0])
            assert kept == removed_when.startswith("all of them"), (rule, removed_when)


# ---------------------------------------------------------------------------------------------- §5.4, §6.4, §7.2
def test_augmentation_table_is_augment_config():
    documented: dict[str, Any] = {}
    for row in table("transform", "parameter", "default (`AugmentConfig`)"):
        value = parse_yaml(ticks(row[2])[0])
        documented.update(value if isinstance(value, dict) else {})
    defaults = {f.name: f.default for f in dataclasses.fields(AugmentConfig)}
    assert set(documented) == set(defaults) - {"enabled"}  # enabled is in the option table
    for name, value in documented.items():
        assert defaults[name] == value, name


def test_recorded_case_columns_are_the_runners():
    paragraph = DOC.split("### 6.4", 1)[1].split("with the columns", 1)[1].split("(plus", 1)[0]
    assert tuple(ticks(paragraph)) == tuple(CASE_COLUMNS)


def test_empty_mask_policy_table_is_score_volume():
    shape, spacing = (4, 8, 8), (2.0, 1.0, 1.0)
    diagonal = volume_diagonal_mm(shape, spacing)
    masks = {"empty": np.zeros(shape, bool), "non-empty": np.zeros(shape, bool)}
    masks["non-empty"][1:3, 2:5, 2:5] = True
    rows = table("GT", "prediction", "Dice", "HD95")
    assert len(rows) == 4
    for gt, prediction, dice, hd95 in rows:
        result = score_volume(0, "liver", masks[prediction], masks[gt], spacing, shape)
        for documented, value in ((dice, result.dice), (hd95, result.hd95)):
            if documented == "NaN":
                assert math.isnan(value)
            elif documented == "diagonal":
                assert value == pytest.approx(diagonal)
            elif documented == "value":
                assert math.isfinite(value)
            else:
                assert value == float(documented)


# ---------------------------------------------------------------------------------------------- §9
def test_numbers_table_is_the_code():
    rows = table("quantity", "value", "code")
    assert len(rows) >= 20
    for quantity, value, code in rows:
        assert resolve(ticks(code)[0]) == evaluate(ticks(value)[0]), quantity


# ---------------------------------------------------------------------------------------------- citations
def test_every_cited_section_and_pitfall_exists():
    """``protocol §N.M`` and ``pitfall N`` in code, tests and Markdown name a section / pitfall of the doc."""
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", DOC, flags=re.M))
    pitfalls = {int(n) for n in re.findall(r"^(\d+)\. \*\*", DOC.split("## 8.", 1)[1], flags=re.M)}
    files = [REPO / "README.md", *(p for d in ("fsmis_bench", "tests", "docs", "benchmark", "leaderboards")
                                   for p in (REPO / d).rglob("*") if p.suffix in {".py", ".md", ".yaml"})]  # fmt: skip
    cited = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        for section in re.findall(r"protocol §(\d+(?:\.\d+)?)", text):
            assert section in sections, f"{path.relative_to(REPO)} cites protocol §{section}"
            cited += 1
        for number in re.findall(r"pitfall (\d+)", text):
            assert int(number) in pitfalls, f"{path.relative_to(REPO)} cites pitfall {number}"
    assert cited > 20

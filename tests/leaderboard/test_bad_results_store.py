"""``fsmis-bench leaderboard`` on a damaged results.csv: one line naming the file and the problem, exit status
2, no table written; nothing is dropped or padded (only the columns added later may be absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsmis_bench.cli import main
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.runner.store import COLUMNS, LATER_COLUMNS, ResultsStore


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """A store of two ok folds of one method, written the way a sweep writes it."""
    store = ResultsStore(tmp_path / "results")
    common = {
        "status": "ok", "method": "alpnet", "dataset": "abd_mri", "setting": 1, "shots": 1, "seed": 0,
        "profile": "cpu", "hd95": 9.0, "valid_cases": 4, "reference": False, "protocol": "alpnet/ep1",
        "budget": "100 steps", "fingerprint": "h@c", "seconds": 60.0, "determinism": True,
        "environment": "0123456789ab",
    }  # fmt: skip
    for fold in (0, 1):
        key = f"alpnet_f{fold}"
        rows = [
            {
                **common,
                "key": key,
                "fold": fold,
                "organ": organ,
                "dice": 0.5 + 0.1 * i,
                "run_dir": f"runs/{key}",
            }
            for i, organ in enumerate(ORGANS)
        ]
        store.record(key, rows)
    return store.root


def leaderboard(results: Path, tmp_path: Path) -> int:
    out = tmp_path / "boards"
    return main(
        ["leaderboard", "--results", str(results), "--out", str(out), "--published", str(tmp_path / "none")]
    )


def refused(results: Path, tmp_path: Path, capsys, pattern: str) -> None:
    capsys.readouterr()
    assert leaderboard(results, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fsmis-bench: error: {results / 'results.csv'}"), err
    assert pattern in err[0], err
    assert not (tmp_path / "boards").exists()


def edit_lines(results: Path, edit) -> None:
    path = results / "results.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def without_columns(lines: list[str], names: tuple[str, ...]) -> list[str]:
    keep = [i for i, name in enumerate(COLUMNS) if name not in names]
    return [",".join(line.split(",")[i] for i in keep) for line in lines]


def test_a_sound_store_builds(results, tmp_path):
    assert leaderboard(results, tmp_path) == 0
    assert (tmp_path / "boards" / "abd_mri_setting1_1shot.csv").exists()


def test_an_older_store_without_the_later_columns_builds(results, tmp_path):
    edit_lines(results, lambda lines: without_columns(lines, LATER_COLUMNS))
    assert leaderboard(results, tmp_path) == 0


def test_a_value_that_is_not_a_number(results, tmp_path, capsys):
    edit_lines(results, lambda lines: [lines[0], lines[1].replace(",0.500000,", ",abc,"), *lines[2:]])
    refused(results, tmp_path, capsys, "row of job alpnet_f0 (liver): dice='abc' is not a number")


def test_an_integer_column_holding_text(results, tmp_path, capsys):
    edit_lines(
        results, lambda lines: [lines[0], lines[1].replace("alpnet,abd_mri,,1,0,", "alpnet,abd_mri,,1,zero,")]
    )
    refused(results, tmp_path, capsys, "fold='zero' is not an integer")


def test_a_truncated_row(results, tmp_path, capsys):
    path = results / "results.csv"
    path.write_bytes(path.read_bytes()[:-40])  # a copy cut short
    refused(results, tmp_path, capsys, "line 9: 19 fields where the header has 23")


def test_an_extra_field_is_refused_not_dropped(results, tmp_path, capsys):
    edit_lines(results, lambda lines: [*lines[:3], lines[3] + ",surplus", *lines[4:]])
    refused(results, tmp_path, capsys, "line 4: 24 fields where the header has 23")


def test_a_row_cut_inside_a_quoted_field(results, tmp_path, capsys):
    edit_lines(
        results, lambda lines: [*lines, 'alpnet_f2,failed,alpnet,abd_mri,,1,2,1,0,cpu,,,,,,,,,,,"boom, cut']
    )
    refused(results, tmp_path, capsys, "line 10: not CSV (unexpected end of data)")


def test_a_missing_column(results, tmp_path, capsys):
    edit_lines(results, lambda lines: without_columns(lines, ("dice",)))
    refused(results, tmp_path, capsys, "not a results table (missing column(s) dice)")


def test_an_unknown_column(results, tmp_path, capsys):
    edit_lines(results, lambda lines: [lines[0] + ",colour", *(line + ",red" for line in lines[1:])])
    refused(results, tmp_path, capsys, "not a results table (unknown column(s) colour)")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (bytes(range(256)) * 4, "not a results table (binary: byte 0x80 at offset 128)"),
        (b"key,status\x00\x00\x00", "not a results table (binary: NUL byte at offset 10)"),
        (b"", "not a results table (empty)"),
    ],
)
def test_binary_or_empty_content(results, tmp_path, capsys, content, pattern):
    (results / "results.csv").write_bytes(content)
    refused(results, tmp_path, capsys, pattern)

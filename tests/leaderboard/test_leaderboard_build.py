"""Leaderboards from a results store: protocol aggregation, published numbers beside, refusal of mixed rows,
byte-identical output."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from fsmis_bench.cli import main
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.leaderboard.aggregate import MixedResultsError
from fsmis_bench.leaderboard.build import build_leaderboards
from fsmis_bench.metrics.aggregate import summarize_folds
from fsmis_bench.runner.jobs import ok_rows
from fsmis_bench.runner.store import ResultsStore

PUBLISHED = Path(__file__).resolve().parents[2] / "leaderboards" / "published.csv"
PROTOCOL = {
    "fold_scheme": "alpnet", "support_index": -1, "exclusion_rule": "group_any", "eval_mode": "ep1",
    "chunk_rule": "alpnet", "normalisation": "volume_zscore",
}  # fmt: skip


def record(store: ResultsStore, method: str, fold: int, dice: list[float], *, seed: int = 0, setting: int = 1,
           dataset: str = "abd_mri", profile: str = "cpu", config: str = "cfg", reference: bool = False,
           protocol: dict | None = None, source: str | None = None,
           deviations: list[str] | None = None, seconds: float = 1.0) -> None:  # fmt: skip
    """A finished run as execute_run would describe it, recorded as the sweep's job function does."""
    mean = sum(dice) / 4
    summary = {
        "method": method, "dataset": dataset, "setting": "cross" if source else setting, "source_dataset": source,
        "fold": fold, "shots": 1, "seed": seed,
        "profile": profile, "reference_method": reference, "seconds": seconds,
        "dice": {**dict(zip(ORGANS, dice)), "mean": mean},
        "hd95": {**{o: 10.0 * (fold + 1) for o in ORGANS}, "mean": 10.0 * (fold + 1)},
        "valid_cases": dict.fromkeys(ORGANS, 4),
        "budget": {"max_steps": 100, "max_time": None},
        "traits": {"pseudolabels": "none" if reference else "superpix2d"},
        "models": [{"protocol": {**PROTOCOL, **(protocol or {})}, "deviations": deviations or []}],
        "provenance": {"config_hash": config, "code_version": "abc"},
    }  # fmt: skip
    key = f"{method}_{source}_{dataset}_s{setting}_f{fold}_seed{seed}_{profile}_{config}"
    store.record(key, ok_rows(key, summary, Path("runs") / key))


def build(results: Path, out: Path, **kwargs) -> pd.DataFrame:
    build_leaderboards(str(results), str(out), str(PUBLISHED), **kwargs)
    return pd.read_csv(out / "abd_mri_setting1_1shot.csv")


def test_folds_then_seeds_then_organs(tmp_path):
    store = ResultsStore(tmp_path / "results")
    values = {(0, 0): [0.8, 0.6, 0.4, 0.2], (1, 0): [0.6, 0.4, math.nan, 0.4],
              (0, 1): [0.7, 0.5, 0.5, 0.3], (1, 1): [0.5, 0.5, 0.3, 0.3]}  # fmt: skip
    for (fold, seed), dice in values.items():
        record(store, "alpnet", fold, dice, seed=seed)
    table = build(tmp_path / "results", tmp_path / "out")
    mine = table[table.entry == "reproduced"].set_index("organ")
    per_seed = []
    for seed in (0, 1):
        cases = pd.DataFrame(
            [{"fold": f, "organ": o, "dice": d} for (f, s), dice in values.items() if s == seed
             for o, d in zip(ORGANS, dice)]
        )  # fmt: skip
        per_seed.append(summarize_folds(cases, "dice"))
    for organ in (*ORGANS, "mean"):
        expected = 100 * (per_seed[0][organ] + per_seed[1][organ]) / 2  # seeds averaged last
        assert mine.loc[organ, "dice"] == pytest.approx(expected, abs=0.005)
    # std over folds per seed (sample std), averaged over seeds: liver (0.8, 0.6) and (0.7, 0.5)
    assert mine.loc["liver", "dice_std"] == pytest.approx(100 * 0.141421, abs=0.005)
    assert mine.loc["liver", "hd95"] == pytest.approx(15.0)
    assert (mine["n_folds"] == 2).all() and (mine["n_seeds"] == 2).all()
    assert mine.loc["liver", "n_cases"] == 16 and mine.loc["mean", "n_cases"] == 64
    assert set(mine["fingerprint"]) == {"cfg@abc"} and set(mine["budget"]) == {"max_steps=100"}


def test_minutes_per_job_is_the_mean_job_wall_time(tmp_path):
    store = ResultsStore(tmp_path / "results")
    record(store, "alpnet", 0, [0.7] * 4, seconds=300.0)
    record(store, "alpnet", 1, [0.7] * 4, seconds=900.0)  # 4 organ rows per job count once
    table = build(tmp_path / "results", tmp_path / "out")
    assert set(table.loc[table.entry == "reproduced", "job_minutes"]) == {10.0}
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| cpu | max_steps=100 | 10.0 | P1 |" in readme


def test_published_counterparts_sit_beside_and_floors_come_last(tmp_path):
    store = ResultsStore(tmp_path / "results")
    for fold in (0, 1):
        record(store, "copy_support", fold, [0.5, 0.4, 0.3, 0.2], reference=True)
        record(store, "alpnet", fold, [0.7, 0.6, 0.5, 0.4])
        record(store, "dpl", fold, [0.7, 0.6, 0.5, 0.4])
    table = build(tmp_path / "results", tmp_path / "out")
    order = list(dict.fromkeys(zip(table.entry, table.method)))
    assert order == [
        ("reproduced", "alpnet"), ("published", "ALPNet (GT-trained)"), ("published", "SSL-ALPNet"),
        ("published", "SSL-ALPNet [re-run]"), ("reproduced", "dpl"), ("published", "DPL"),
        ("reference", "copy_support"),
    ]  # fmt: skip
    ssl = table[(table.method == "SSL-ALPNet")].set_index("organ")
    assert ssl.loc["liver", "dice"] == 76.10 and ssl.loc["mean", "dice"] == 78.84
    assert ssl.loc["liver", "evidence_level"] == "A" and ssl.loc["liver", "protocol"] == "lineage=alpnet"
    assert "Ouyang et al. ECCV 2020" in ssl.loc["liver", "source"]
    dpl = table[table.method == "DPL"]
    assert list(dpl.organ) == ["mean"] and dpl.protocol.iloc[0] == "lineage=unknown setting=unspecified"
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "| published | SSL-ALPNet | 76.10 | 72.18 | 81.92 | 85.18 | 78.84 |" in readme
    assert "| reproduced | alpnet | 70.00 ± 0.00 |" in readme


def test_protocol_variants_are_separate_entries(tmp_path):
    store = ResultsStore(tmp_path / "results")
    record(store, "alpnet", 0, [0.7, 0.6, 0.5, 0.4])
    record(store, "alpnet", 0, [0.3] * 4, config="qnet", protocol={"fold_scheme": "qnet_sets"})
    table = build(tmp_path / "results", tmp_path / "out")
    mine = table[table.entry == "reproduced"]
    assert sorted(set(mine.protocol)) == sorted(
        f"fold_scheme={s} support_index=-1 exclusion_rule=group_any eval_mode=ep1 chunk_rule=alpnet "
        "normalisation=volume_zscore pseudolabels=superpix2d"
        for s in ("alpnet", "qnet_sets")
    )
    assert "* P2: `fold_scheme=qnet_sets" in (tmp_path / "out" / "README.md").read_text()


def test_method_deviations_are_named_in_the_rows_and_make_their_own_entry(tmp_path):
    store = ResultsStore(tmp_path / "results")
    record(store, "sd_fsmis", 0, [0.5] * 4)
    record(
        store, "sd_fsmis", 0, [0.6] * 4, config="pos", deviations=["bank_positions=sinusoidal", "in_run_vae"]
    )
    rows = pd.read_csv(tmp_path / "results" / "results.csv")
    assert (
        rows.protocol.str.endswith(
            "pseudolabels=superpix2d deviations=bank_positions=sinusoidal,in_run_vae"
        ).sum()
        == 4
    )
    table = build(tmp_path / "results", tmp_path / "out")
    assert len(table[(table.entry == "reproduced") & (table.organ == "mean")]) == 2


@pytest.mark.parametrize(
    ("column", "kwargs"), [("fingerprints", {"config": "other"}), ("profiles", {"profile": "paper"})]
)
def test_mixed_rows_are_refused_unless_allowed(tmp_path, capsys, column, kwargs):
    store = ResultsStore(tmp_path / "results")
    record(store, "alpnet", 0, [0.7] * 4)
    record(store, "alpnet", 1, [0.5] * 4, **kwargs)
    with pytest.raises(MixedResultsError, match=f"alpnet on abd_mri setting 1 1-shot .* mixes {column}"):
        build(tmp_path / "results", tmp_path / "out")
    args = ["leaderboard", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "--allow-mixed" in capsys.readouterr().err
    table = build(tmp_path / "results", tmp_path / "out", allow_mixed=True)
    assert table.loc[table.organ == "liver", "dice"].tolist()[0] == pytest.approx(60.0)
    assert "+" in table[column[:-1]].iloc[0]  # e.g. "cfg@abc+other@abc"


def test_same_results_give_byte_identical_files_whatever_the_order(tmp_path):
    runs = [("alpnet", f, [0.1 * (f + 4), 0.5, 0.4, 0.3]) for f in range(3)]
    runs += [("threshold", f, [0.2, 0.2, 0.1, 0.1]) for f in range(3)]
    outputs = []
    for name, order in (("a", runs), ("b", runs[::-1])):
        store = ResultsStore(tmp_path / name)
        for method, fold, dice in order:
            record(store, method, fold, dice, reference=method == "threshold", setting=2)
        store.record("failed-job", [{"key": "failed-job", "status": "failed", "error": "boom"}])  # ignored
        build_leaderboards(str(tmp_path / name), str(tmp_path / f"out-{name}"), str(PUBLISHED))
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / f"out-{name}").iterdir())})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {"README.md", "abd_mri_setting2_1shot.csv", "abd_mri_setting2_1shot.png"}
    assert b"tEXt" not in outputs[0]["abd_mri_setting2_1shot.png"]  # no Software / date metadata


def test_cross_domain_results_get_their_own_table_without_published_rows(tmp_path):
    store = ResultsStore(tmp_path / "results")
    record(store, "alpnet", 0, [0.5] * 4, dataset="synthetic_mri", source="synthetic_ct")
    record(store, "alpnet", 0, [0.6] * 4, dataset="synthetic_mri")
    build_leaderboards(str(tmp_path / "results"), str(tmp_path / "out"), str(PUBLISHED))
    cross = pd.read_csv(tmp_path / "out" / "synthetic_ct-to-synthetic_mri_cross_1shot.csv")
    assert set(cross.entry) == {"reproduced"} and set(cross.setting) == {"cross"}
    assert cross.dice.tolist() == [50.0] * 5
    assert (
        "## synthetic_ct → synthetic_mri, cross-domain, 1-shot"
        in (tmp_path / "out" / "README.md").read_text()
    )
    assert (tmp_path / "out" / "synthetic_mri_setting1_1shot.csv").exists()


def test_no_results_is_a_clear_error(tmp_path, capsys):
    assert main(["leaderboard", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert "no ok results" in capsys.readouterr().err


def test_several_campaign_stores_build_one_set_of_tables(tmp_path):
    """A CHAOS campaign and a cross-domain campaign kept in separate stores give both tables in one README."""
    record(ResultsStore(tmp_path / "chaos"), "alpnet", 0, [0.8, 0.6, 0.4, 0.2])
    record(
        ResultsStore(tmp_path / "cross"),
        "progidiff",
        0,
        [0.5] * 4,
        dataset="synthetic_mri",
        source="synthetic_ct",
    )
    assert main(["leaderboard", "--results", str(tmp_path / "chaos"), str(tmp_path / "cross"),
                 "--out", str(tmp_path / "out"), "--published", str(PUBLISHED)]) == 0  # fmt: skip
    readme = (tmp_path / "out" / "README.md").read_text()
    assert (tmp_path / "out" / "abd_mri_setting1_1shot.csv").exists()
    assert (tmp_path / "out" / "synthetic_ct-to-synthetic_mri_cross_1shot.csv").exists()
    assert "abd_mri, setting 1" in readme and "synthetic_ct → synthetic_mri" in readme

"""Results store: one row per (job, organ), replaced atomically, exact under concurrent writers and kills."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from multiprocessing import get_context
from pathlib import Path

import pytest

from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.runner.store import COLUMNS, ResultsStore


def organ_rows(key: str, dice: float = 0.5) -> list[dict]:
    return [{"key": key, "status": "ok", "organ": o, "dice": dice, "fingerprint": "h@c"} for o in ORGANS]


def test_record_replaces_a_jobs_rows_and_keeps_the_table_sorted(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("b", organ_rows("b"))
    store.record("a", [{"key": "a", "status": "failed", "error": "boom", "fingerprint": "h@c"}])
    store.record("a", organ_rows("a", dice=float("nan")))  # the rerun replaces the failure
    rows = store.rows()
    assert [(r["key"], r["organ"]) for r in rows] == [("a", o) for o in ORGANS] + [("b", o) for o in ORGANS]
    assert rows[0]["dice"] == "nan" and rows[4]["dice"] == "0.500000"
    assert store.state() == {"a": ("ok", "h@c"), "b": ("ok", "h@c")}
    assert store.path.read_text().splitlines()[0] == ",".join(COLUMNS)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o666 & ~umask  # readable like any file we write


def test_rows_of_another_job_or_unknown_columns_are_refused(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError):
        store.record("a", organ_rows("b"))
    with pytest.raises(ValueError):
        store.record("a", [{"key": "a", "colour": "red"}])
    assert not store.path.exists()


def test_a_failed_write_leaves_the_previous_table(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.record("a", organ_rows("a"))
    before = store.path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.record("b", organ_rows("b"))
    assert store.path.read_bytes() == before
    assert not list(tmp_path.glob(".results.csv.*"))


WRITER = """
import os, sys, time
from fsmis_bench.runner.store import ResultsStore

def slow_fsync(fd):  # the new table is half on disk when the test kills us
    print("writing", flush=True)
    time.sleep(60)
os.fsync = slow_fsync
ResultsStore(sys.argv[1]).record("b", [{"key": "b", "status": "ok", "organ": "liver", "dice": 0.1}])
"""


def test_a_writer_killed_mid_write_leaves_no_partial_row(tmp_path):
    store = ResultsStore(tmp_path)
    store.record("a", organ_rows("a"))
    before = store.path.read_bytes()
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert store.path.read_bytes() == before  # the killed writer's table never replaced ours
    assert list(tmp_path.glob(".results.csv.*.tmp"))  # ... it only left a temporary file
    store.record("c", organ_rows("c"))  # the lock was released with the process; the leftover is cleaned
    assert {r["key"] for r in store.rows()} == {"a", "c"}
    assert not list(tmp_path.glob(".results.csv.*.tmp"))


def _record_many(root: str, worker: int) -> None:
    store = ResultsStore(root)
    for i in range(5):
        store.record(f"w{worker}-{i}", organ_rows(f"w{worker}-{i}"))
        time.sleep(0.001)


def test_concurrent_writers_lose_nothing(tmp_path):
    processes = [get_context("spawn").Process(target=_record_many, args=(str(tmp_path), w)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    rows = ResultsStore(tmp_path).rows()
    assert len(rows) == 4 * 5 * len(ORGANS)
    assert len({(r["key"], r["organ"]) for r in rows}) == len(rows)


def test_a_missing_store_is_empty(tmp_path):
    assert ResultsStore(Path(tmp_path) / "nowhere").rows() == []

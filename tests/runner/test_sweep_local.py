"""Local backend end to end on tiny data: the smoke sweep on 2 CPU slots, a failing job, SIGKILL + --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import pytest

from fsmis_bench.cli import main
from fsmis_bench.data.datasets import ORGANS
from fsmis_bench.runner.jobs import Job, PlannedJob
from fsmis_bench.runner.local import parse_devices, run_local
from fsmis_bench.runner.store import ResultsStore
from fsmis_bench.runner.sweep_log import SweepLog

SMOKE_KEYS = {f"{m}_synthetic_mri_s1_f{f}_k1_seed0_smoke" for m in ("panet", "copy_support") for f in (0, 1)}


def assert_rows_exactly_once(results: Path, keys: set[str]) -> list[dict]:
    rows = ResultsStore(results).rows()
    assert sorted((r["key"], r["organ"]) for r in rows) == sorted((k, o) for k in keys for o in ORGANS)
    return rows


def test_devices_give_slots_disjoint_cores_and_a_thread_per_core(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    gpus = parse_devices("0,2")
    assert [(s.name, s.env()["CUDA_VISIBLE_DEVICES"], s.cpus) for s in gpus] == [
        ("cuda:0", "0", (0, 1, 2, 3)),
        ("cuda:2", "2", (4, 5, 6, 7)),
    ]
    cpus = parse_devices("cpu:4")
    assert [(s.name, s.cpus) for s in cpus] == [
        ("cpu:0", (0, 1)),
        ("cpu:1", (2, 3)),
        ("cpu:2", (4, 5)),
        ("cpu:3", (6, 7)),
    ]
    assert cpus[0].env() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    # the cores a `taskset -c 2,5,6` sweep may use, split; more slots than cores share them one each
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {6, 2, 5}, raising=False)
    assert [s.cpus for s in parse_devices("cpu:1")] == [(2, 5, 6)]
    assert [s.cpus for s in parse_devices("cpu:4")] == [(2,), (5,), (6,), (2,)]


def test_cpu_slots_of_a_fixed_thread_count_do_not_depend_on_the_machine(monkeypatch):
    for cores in (2, 4, 8):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        slots = parse_devices("cpu:2x1")
        assert [(s.cpus, s.env()["OMP_NUM_THREADS"]) for s in slots] == [((0,), "1"), ((1,), "1")]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert [s.cpus for s in parse_devices("cpu:2x2")] == [(0, 1), (2, 0)]  # too few cores: shared, T kept


def test_a_job_runs_pinned_to_its_slot_cores(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 1)
    )
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    planned = PlannedJob(1, Job({"method": "panet", "fold": 0}), "h@c")
    run_local(
        [planned], tmp_path, SweepLog(tmp_path / "logs" / "sweep.log", total=1), parse_devices("cpu:2")[1:]
    )
    [command] = commands
    assert command[command.index("--cpus") + 1] == "2,3"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity masks on this platform")
def test_pinning_holds_for_threads_started_before_and_after():
    core = max(
        os.sched_getaffinity(0)
    )  # under plain pytest a strict subset of the cores on a multi-core machine
    script = (
        "import os, torch; from fsmis_bench.runner.jobs import pin_to_cpus  # imports start threads\n"
        f"pin_to_cpus({{{core}}}); torch.set_num_threads(2); torch.ones(512, 512) @ torch.ones(512, 512)\n"
        "tasks = os.listdir('/proc/self/task')\n"
        "print(len(tasks), sorted({frozenset(os.sched_getaffinity(int(t))) for t in tasks}, key=sorted))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # with more than one, importing torch starts OpenMP threads
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert output.stdout.split(" ", 1)[1].strip() == f"[frozenset({{{core}}})]"


def test_smoke_sweep_on_two_cpu_slots_then_leaderboard(smoke_results, tmp_path):
    results, status, output = smoke_results
    assert status == 0, output
    rows = assert_rows_exactly_once(results, SMOKE_KEYS)
    assert {r["status"] for r in rows} == {"ok"}
    assert all(
        r["fingerprint"].count("@") == 1 and r["protocol"].startswith("fold_scheme=alpnet") for r in rows
    )
    assert all(Path(r["run_dir"], "summary.json").exists() for r in rows)
    log = (results / "logs" / "sweep-smoke.log").read_text()
    assert log.count("START ") == 4 and log.count("DONE ") == 4 and "4 ok, 0 failed" in log
    assert "s on cpu:0)" in log and "s on cpu:1)" in log  # both slots worked
    assert all((results / "logs" / f"{key}.log").exists() for key in SMOKE_KEYS)

    out = tmp_path / "leaderboards"
    published = Path(__file__).resolve().parents[2] / "leaderboards" / "published.csv"
    args = ["leaderboard", "--results", str(results), "--out", str(out), "--published", str(published)]
    assert main(args) == 0
    table = (out / "synthetic_mri_setting1_1shot.csv").read_text().splitlines()
    assert len(table) == 1 + 2 * 5  # two entries x (four organs + Mean)
    assert ",reproduced,panet," in table[1] and ",reference,copy_support," in table[-1]
    readme = (out / "README.md").read_text()
    assert "## synthetic_mri, setting 1, 1-shot" in readme and "| reference | copy_support |" in readme
    assert (out / "synthetic_mri_setting1_1shot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_job_is_recorded_and_the_others_continue(tiny_spec, tmp_path, capsys):
    # the first job raises at run time (a max_time string of the right type that Lightning cannot read: the
    # planning-time check passes it); the second is fine
    spec = tiny_spec(run={"overrides": {"grid": [{"trainer.max_time": "abc"}, {}]}}, name="failing")
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--devices", "cpu:1", "--results", str(results)]) == 1
    rows = ResultsStore(results).rows()
    failed = [r for r in rows if r["status"] == "failed"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(failed) == 1 and len(ok) == len(ORGANS)
    assert "is not a valid duration" in failed[0]["error"] and failed[0]["method"] == "panet"
    log = (results / "logs" / "sweep-failing.log").read_text()
    assert "FAILED  [1/2]" in log and "DONE    [2/2]" in log and "1 ok, 1 failed" in log
    capsys.readouterr()
    assert main(["sweep", str(spec), "--resume", "--dry-run", "--results", str(results)]) == 0
    plan = capsys.readouterr().out
    assert "run (failed before)" in plan and "skip (ok)" in plan and "2 jobs, 1 to run, 1 skipped" in plan


def _wait_for(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _sweep_in_own_session(args: list[str]) -> None:
    """The sweep as a process of its own (forked: no second interpreter start-up), leader of its group."""
    os.setsid()
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    main(args)


def test_sigkill_mid_job_then_resume_records_every_job_exactly_once(tiny_spec, smoke_results, tmp_path):
    done, killed = (f"panet_synthetic_mri_s1_f{f}_k1_seed0_smoke" for f in (0, 1))
    results = tmp_path / "results"
    store = ResultsStore(results)  # a previous sweep finished fold 0 (the smoke sweep ran the same job)
    store.record(done, [r for r in ResultsStore(smoke_results[0]).rows() if r["key"] == done])
    spec = tiny_spec(run={"fold": {"grid": [0, 1]}}, name="killed")
    args = ["sweep", str(spec), "--devices", "cpu:1", "--results", str(results), "--resume"]
    log = results / "logs" / "sweep-killed.log"
    sweep = get_context("fork").Process(target=_sweep_in_own_session, args=(args,))
    sweep.start()
    try:
        _wait_for(lambda: log.exists() and f"START   [1/1] {killed}" in log.read_text())
        time.sleep(1.0)  # fold 1's job subprocess is running
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its job, like a crashed node
        sweep.join()
    before = ResultsStore(results).rows()
    assert {r["key"] for r in before} == {done}  # the killed job recorded nothing, fold 0 is untouched

    assert main(args) == 0
    rows = assert_rows_exactly_once(results, {done, killed})
    assert [r for r in rows if r["key"] == done] == before
    assert "1 run: 1 ok, 0 failed; 1 skipped" in log.read_text()
    assert main(args) == 0  # nothing left to do
    assert_rows_exactly_once(results, {done, killed})


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "exit status -9"),  # e.g. the OOM killer
        ("print('done, but forgot to record')", "exited 0 without recording a result: done, but forgot"),
    ],
)
def test_a_crashed_job_is_recorded_as_failed(tmp_path, monkeypatch, script, error):
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: real_run([sys.executable, "-c", script], **kw))
    planned = PlannedJob(1, Job({"method": "panet", "fold": 0}), "h@c")
    log = SweepLog(tmp_path / "logs" / "sweep.log", total=1)
    [outcome] = run_local([planned], tmp_path, log, parse_devices("cpu:1"))
    assert outcome.status == "failed" and outcome.error.startswith(error)
    [row] = ResultsStore(tmp_path).rows()
    assert (row["key"], row["status"], row["fingerprint"]) == (planned.job.key, "failed", "h@c")
    assert "FAILED  [1/1] panet_synthetic_mri_s1_f0_k1_seed0_cpu" in log.path.read_text()


def test_a_repeated_gpu_id_gives_slots_sharing_that_gpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    slots = parse_devices("0,0")
    assert [(s.name, s.env()["CUDA_VISIBLE_DEVICES"], s.cpus) for s in slots] == [
        ("cuda:0", "0", (0, 1)),
        ("cuda:0#2", "0", (2, 3)),
    ]


@pytest.mark.parametrize("devices", ["cpu:0", "0,x", "x", "cpu:2x0", "cpu:2x", "cpu:x1"])
def test_bad_device_strings(devices):
    from fsmis_bench.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_devices(devices)

"""The sweep log: timestamped START / DONE / FAILED lines, printed and appended to ``logs/sweep-<name>.log``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fsmis_bench.runner.jobs import Outcome, PlannedJob


def tail(text: str, lines: int = 3, width: int = 600) -> str:
    """The last non-empty lines of ``text`` on one line (``|``-separated), for logs and the store."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-width:]


class SweepLog:
    """Thread-safe event lines shared by the backends, and the closing summary."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.total = total
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def line(self, event: str, text: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {event:<8s}{text}"
        with self._lock:
            print(stamped, flush=True)
            with self.path.open("a") as handle:
                handle.write(stamped + "\n")

    def start(self, planned: PlannedJob, where: str) -> None:
        self.line("START", f"[{planned.index}/{self.total}] {planned.job.key} on {where}")

    def finish(self, planned: PlannedJob, outcome: Outcome, detail: str = "") -> None:
        event = {"ok": "DONE", "skipped": "SKIP"}.get(outcome.status, "FAILED")
        text = f"[{planned.index}/{self.total}] {outcome.key} ({outcome.seconds:.1f} s on {outcome.where})"
        if outcome.error:
            text += f": {outcome.error}"
        self.line(event, text + (f" {detail}" if detail else ""))

    def summary(self, outcomes: list[Outcome], skipped: int, seconds: float) -> None:
        ok = sum(o.status == "ok" for o in outcomes)
        failed = [o for o in outcomes if o.status == "failed"]
        elsewhere = len(outcomes) - ok - len(failed)
        self.line(
            "SUMMARY",
            f"{ok + len(failed)} run: {ok} ok, {len(failed)} failed; {skipped} skipped (already ok)"
            + (f", {elsewhere} left to other sweeps" if elsewhere else "")
            + f"; {seconds:.0f} s wall",
        )
        for outcome in failed:
            self.line("FAILED", f"{outcome.key}: {outcome.error}")

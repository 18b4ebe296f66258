"""What a run shows while it works: Lightning's progress bar on a terminal, else one line every N training steps
(step, loss, steps/s, ETA) and every N test cases, so a sweep's job log shows progress too."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

#: About this many progress lines per phase when the output is not a terminal.
LINES_PER_PHASE = 20


def interactive() -> bool:
    """True when the progress bar has a terminal to draw on."""
    return sys.stderr.isatty()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressLines(Callback):
    """Plain progress lines on stdout for logs: ``[label] step 40/200 loss 0.412 3.1 steps/s ETA 0m52s`` and
    ``[label] test 4/16 cases``."""

    def __init__(self, label: str, lines: int = LINES_PER_PHASE) -> None:
        self.label = label
        self.lines = lines
        self._started = 0.0
        self._last_step = -1

    def _say(self, text: str) -> None:
        print(f"[{self.label}] {text}", flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._say(f"training {trainer.max_steps} steps")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step, total = int(trainer.global_step), max(int(trainer.max_steps), 1)
        every = max(1, total // self.lines)
        if step == self._last_step or not (step % every == 0 or step == total):
            return
        self._last_step = step
        elapsed = time.perf_counter() - self._started
        rate = step / elapsed if elapsed > 0 else 0.0
        loss = trainer.callback_metrics.get("train/loss")
        shown = f" loss {float(loss):.4f}" if loss is not None else ""
        eta = f" ETA {_duration((total - step) / rate)}" if rate > 0 else ""
        self._say(f"step {step}/{total}{shown} {rate:.2f} steps/s{eta}")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        total = trainer.num_test_batches[dataloader_idx] if trainer.num_test_batches else 0
        done = batch_idx + 1
        every = max(1, int(total) // self.lines) if total else 1
        if done % every == 0 or done == total:
            elapsed = _duration(time.perf_counter() - self._started)
            self._say(f"test {done}/{int(total)} cases (query volume x organ), {elapsed}")


def progress_options(label: str, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Trainer arguments: the progress bar on a terminal, else the line callback (after ``extra_callbacks``,
    so that a progress line counts their work on a test case too)."""
    extra = list(extra_callbacks or [])
    if interactive():
        return {"enable_progress_bar": True, "callbacks": extra}
    return {"enable_progress_bar": False, "callbacks": [*extra, ProgressLines(label)]}

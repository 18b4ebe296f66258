"""The prefetch thread never outlives its use: a daemon thread still inside a torch op at interpreter exit
aborts the process (exit status -6 after the results were written), which failed finished jobs."""

import subprocess
import sys
import textwrap

import pytest
import torch

from fsmis_bench.episode_stream import EpisodeStream, Prefetcher

BUSY_PRODUCER = textwrap.dedent(
    """
    import torch
    from fsmis_bench.episode_stream import Prefetcher

    def produce():
        x = torch.randn(300, 300)
        for _ in range(20):
            x = (x @ x).tanh()
        return x

    stream = Prefetcher(produce, depth=1)
    next(stream)
    """
)


@pytest.mark.parametrize("ending", ["", "del stream"], ids=["left-open", "dropped-while-busy"])
def test_a_process_exits_cleanly_with_a_busy_prefetcher(ending):
    """Exit with the producer inside torch ops: the iterator still referenced, or just collected (its thread
    still finishing a batch). Without the exit hook this aborted every time here."""
    for _ in range(2):
        script = BUSY_PRODUCER + ending + "\n"
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def next_batch(self) -> torch.Tensor:
        self.count += 1
        return torch.full((2,), float(self.count))


def test_closing_the_stream_joins_its_threads_and_ends_iteration():
    stream = EpisodeStream(lambda seed: Counter(), seed=0, prefetch=2)
    first, second = iter(stream), iter(stream)
    assert next(first).tolist() == [1.0, 1.0] and next(second).tolist() == [1.0, 1.0]
    stream.close()
    assert not first.running and not second.running
    assert next(first, None) is None


def test_dropping_the_iterator_stops_its_thread():
    prefetcher = Prefetcher(Counter().next_batch, depth=1)
    thread = prefetcher._thread
    next(prefetcher)
    del prefetcher
    thread.join(5.0)
    assert not thread.is_alive()

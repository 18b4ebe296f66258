"""The endless training stream of episode batches, optionally prepared ahead by a background thread.

The producer thread must be stopped and joined before the interpreter exits: Python ends a daemon thread that
is still inside a torch op by unwinding it through C++ code that may not be unwound, and the process aborts
("terminate called without an active exception", exit status -6) after its results are written. So every
prefetcher is closed by the data module's teardown, when its iterator is dropped, and at exit.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from fsmis_bench.batch import EpisodeBatch

JOIN_TIMEOUT_S = 60.0  # one batch being made when the stream is closed; generous for a slow disk


class Prefetcher:
    """Iterator over ``produce()`` results made up to ``depth`` ahead by a daemon thread. A producer error is
    raised in the consumer; ``close()`` stops the thread and waits for it."""

    def __init__(self, produce: Callable[[], EpisodeBatch], depth: int) -> None:
        self._batches: queue.Queue[EpisodeBatch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        # the thread holds the queue and the event, not this object, so dropping the iterator stops it
        self._thread = threading.Thread(
            target=_produce_until_stopped,
            args=(produce, self._batches, self._stop),
            name="episode-prefetch",
            daemon=True,
        )
        _LIVE[self._thread] = self._stop
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> EpisodeBatch:
        if self._stop.is_set():
            raise StopIteration
        item = self._batches.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        _join(self._thread)

    def __del__(self) -> None:
        self._stop.set()  # the thread ends after the batch it is making; the exit hook waits for it


#: Every producer thread still running, with its stop event (an iterator may be gone while its thread finishes).
_LIVE: dict[threading.Thread, threading.Event] = {}


def _join(thread: threading.Thread) -> None:
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(JOIN_TIMEOUT_S)


def stop_all_prefetching() -> None:
    """Stop every producer thread and wait for it; registered to run at exit."""
    for thread, stop in list(_LIVE.items()):
        stop.set()
        _join(thread)


def _produce_until_stopped(
    produce: Callable[[], EpisodeBatch], batches: queue.Queue, stop: threading.Event
) -> None:
    try:
        while not stop.is_set():
            try:
                item: EpisodeBatch | BaseException = produce()
            except BaseException as exc:  # surfaced in the consumer
                item = exc
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
    finally:
        _LIVE.pop(threading.current_thread(), None)


atexit.register(stop_all_prefetching)  # runs before Python ends the daemon threads


class EpisodeStream(IterableDataset):
    """Endless stream of training batches; each dataloader worker gets its own seeded sampler.

    In the main process (``num_workers=0``) up to ``prefetch`` batches are prepared by a background thread
    while the model trains (torch releases the GIL, so augmentation overlaps the step). The sampler draws only
    from its own generators, so the stream is the same with or without prefetching."""

    def __init__(self, build_sampler: Any, seed: int, prefetch: int = 0) -> None:
        self.build_sampler = build_sampler
        self.seed = seed
        self.prefetch = prefetch
        self._prefetchers: weakref.WeakSet[Prefetcher] = weakref.WeakSet()

    def __iter__(self) -> Any:
        info = get_worker_info()
        sampler = self.build_sampler(self.seed + (0 if info is None else 1000 * (info.id + 1)))
        if info is None and self.prefetch > 0:
            prefetcher = Prefetcher(sampler.next_batch, self.prefetch)
            self._prefetchers.add(prefetcher)
            return prefetcher
        return iter(sampler.next_batch, None)

    def close(self) -> None:
        """Stop and join every prefetch thread this stream started."""
        for prefetcher in list(self._prefetchers):
            prefetcher.close()

    def __getstate__(self) -> dict[str, Any]:  # dataloader workers get the recipe, never the threads
        return {key: value for key, value in self.__dict__.items() if key != "_prefetchers"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _prefetchers=weakref.WeakSet())

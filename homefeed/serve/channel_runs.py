"""One request's recall channels under a time budget: one thread runs them in turn, and the channels still
waiting get a thread each once that thread has been busy for `spill_s`, so a slow channel delays no other.

Why not a thread per channel from the start: on the small shop the six channels compute ~1 ms in all, and
running them on six threads cost ~0.5 ms more CPU per request (measured on 2 cores: 1.51 against 0.97 CPU
ms for the recall stage, `benchmarks/serve.py`): six wake-ups, and the GIL passed back and forth between
threads at every numpy call that releases it. Most requests now finish every channel on one thread long
before `spill_s`; a slow or hung channel still costs the others nothing past `spill_s`, and at most one
thread per channel is ever used, so a pool of channels x admitted requests threads never makes one wait.

    >>> outcomes = run_channels(pool, {"itemcf": lambda: ch.recall(state, k)}, budget_s=0.08, spill_s=0.01)
    >>> outcomes["itemcf"]          # ("ok", result), ("error", exception) or ("timeout", None)
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor


class _Run:
    """The shared state of one request's channels: the ones not started yet, and the outcomes so far."""

    def __init__(self, calls: dict[str, Callable[[], object]]):
        self.lock = threading.Lock()
        self.pending = deque(calls.items())
        self.outcomes: dict[str, tuple[str, object]] = {}
        self.left = len(calls)
        self.done = threading.Event()
        self.stopped = False  # the request took what it had: later outcomes are dropped, no channel starts
        if not calls:
            self.done.set()

    def worker(self) -> None:
        """Run waiting channels one after another until none is left or the request has moved on."""
        while True:
            with self.lock:
                if self.stopped or not self.pending:
                    return
                name, call = self.pending.popleft()
            try:
                outcome: tuple[str, object] = ("ok", call())
            except BaseException as e:  # noqa: BLE001 a channel's failure is its own outcome, as a future's was
                outcome = ("error", e)
            with self.lock:
                if self.stopped:
                    return
                self.outcomes[name] = outcome
                self.left -= 1
                if self.left == 0:
                    self.done.set()


def run_channels(pool: Executor, calls: dict[str, Callable[[], object]], *, budget_s: float,
                 spill_s: float) -> dict[str, tuple[str, object]]:
    """Each call's outcome, in the order of `calls`: ("ok", result), ("error", exception), or ("timeout", None)
    for one not finished within `budget_s` (started or not). One pool thread starts; after `spill_s` every
    channel not started yet gets a thread of its own."""
    if budget_s <= 0 or spill_s <= 0:
        raise ValueError(f"budget_s and spill_s must be > 0; got {budget_s}, {spill_s}")
    run = _Run(calls)
    start = time.perf_counter()
    pool.submit(run.worker)
    if not run.done.wait(min(spill_s, budget_s)):
        with run.lock:
            waiting = len(run.pending)
        for _ in range(waiting):
            pool.submit(run.worker)
        run.done.wait(max(0.0, budget_s - (time.perf_counter() - start)))
    with run.lock:
        run.stopped = True
        outcomes = dict(run.outcomes)
    return {name: outcomes.get(name, ("timeout", None)) for name in calls}

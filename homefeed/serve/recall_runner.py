"""One request's recall channels on the pipeline's thread pool: one thread hop per request, not one per channel.

    run = ChannelRun(bundle.channels, state, k)
    results, late, failed = run.collect(pool, budget_s=0.08)   # {name: candidates}, [names], [names]

A pool thread runs the channels in turn while the request thread waits. Handing each channel to a thread
of its own (what the pipeline did before) costs a wake-up and a GIL hand-over per channel: ~0.8 CPU ms
and ~0.9 ms of wall per request on a DIN small-shop bundle (6 channels, `benchmarks/serve.py`), more than
the channels' own ~1.1 ms. The budget keeps its meaning: a channel that runs past `straggler_s` (a hung
or very slow one; the channels take well under a millisecond) makes the runner hand every channel not yet
started to threads of their own, so a slow channel delays the others by at most that; whatever is not
done at the deadline is left out as late. The results are those of the same channels on the same state,
so the merged list, and the page, are the same; only who runs each channel changes.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Executor


class ChannelRun:
    """The channels of one request, each run once by whichever pool thread claims it first."""

    def __init__(self, channels: dict, state, k: int):
        self.channels, self.state, self.k = channels, state, k
        self.names = list(channels)
        self.cond = threading.Condition()
        self.next = 0  # index of the first channel no thread has claimed
        self.running = 0  # channels claimed and not finished
        self.results: dict[str, object] = {}
        self.failed: dict[str, BaseException] = {}
        self.stopped = False  # past the deadline: claim nothing more
        self.last_event = 0.0  # monotonic time a channel last started or finished

    def _claim(self) -> str | None:
        with self.cond:
            if self.stopped or self.next >= len(self.names):
                return None
            name = self.names[self.next]
            self.next += 1
            self.running += 1
            self.last_event = time.monotonic()
            return name

    def work(self) -> None:
        """Run channels until none is left to claim (a pool thread's job)."""
        while (name := self._claim()) is not None:
            try:
                out, err = self.channels[name].recall(self.state, self.k), None
            except Exception as e:  # noqa: BLE001 a broken channel is left out of the page, never breaks it
                out, err = None, e
            with self.cond:
                if err is None:
                    self.results[name] = out
                else:
                    self.failed[name] = err
                self.running -= 1
                self.last_event = time.monotonic()
                if self._done():  # the request thread sleeps until then (or the straggler check): no wake-up per channel
                    self.cond.notify_all()

    def _done(self) -> bool:
        return len(self.results) + len(self.failed) == len(self.names)

    def collect(self, pool: Executor, *, budget_s: float, straggler_s: float | None = None
                ) -> tuple[dict[str, object], list[str], list[str]]:
        """Run every channel under the budget -> (results in channel order, late names, failed names).

        straggler_s: how long one channel may run before the channels not yet started get threads of their own
        (default: a quarter of the budget, at most 5 ms).
        """
        if budget_s <= 0:
            raise ValueError(f"the recall budget must be positive; got {budget_s * 1000:g} ms")
        straggle = min(budget_s / 4, 0.005) if straggler_s is None else straggler_s
        start = time.monotonic()
        deadline = start + budget_s
        spread = False
        with self.cond:
            self.last_event = start
        pool.submit(self.work)
        with self.cond:
            while not self._done():
                now = time.monotonic()
                if now >= deadline:
                    break
                unclaimed = len(self.names) - self.next
                if not spread and unclaimed and now - self.last_event >= straggle:
                    spread = True  # a slow channel holds the thread: every channel left gets its own
                    for _ in range(unclaimed):
                        pool.submit(self.work)
                wake = deadline if spread or not unclaimed else min(deadline, self.last_event + straggle)
                self.cond.wait(max(wake - now, 0.0))
            self.stopped = True
            results = {n: self.results[n] for n in self.names if n in self.results}
            failed = [n for n in self.names if n in self.failed]
            late = [n for n in self.names if n not in self.results and n not in self.failed]
        return results, late, failed

"""ChannelRun: every channel once, on one pool thread when they are quick, a slow one never holding the rest past the budget."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from homefeed.serve.recall_runner import ChannelRun


class Channel:
    """Answers (its name, the state, k) after `delay_s`, noting the thread that ran it; raises if `broken`."""

    def __init__(self, name: str, delay_s: float = 0.0, broken: bool = False):
        self.name, self.delay_s, self.broken, self.threads = name, delay_s, broken, []

    def recall(self, state, k):
        self.threads.append(threading.get_ident())
        time.sleep(self.delay_s)
        if self.broken:
            raise RuntimeError(f"{self.name} is broken")
        return (self.name, state, k)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=8) as p:
        yield p


def test_quick_channels_run_once_each_on_one_pool_thread(pool):
    channels = {n: Channel(n) for n in ("itemcf", "swing", "popular", "crowd")}
    results, late, failed = ChannelRun(channels, "state", 7).collect(pool, budget_s=1.0, straggler_s=0.5)
    assert list(results) == list(channels)  # channel order, as the merge received them before
    assert results == {n: (n, "state", 7) for n in channels}
    assert late == [] and failed == []
    threads = {t for ch in channels.values() for t in ch.threads}
    assert all(len(ch.threads) == 1 for ch in channels.values())
    assert len(threads) == 1 and threading.get_ident() not in threads  # one hop, and never the request thread


def test_slow_channel_hands_the_rest_to_other_threads_and_is_left_out_at_the_deadline(pool):
    channels = {"slow": Channel("slow", delay_s=0.6), "broken": Channel("broken", broken=True),
                "a": Channel("a"), "b": Channel("b", delay_s=0.05)}
    t = time.monotonic()
    results, late, failed = ChannelRun(channels, "s", 3).collect(pool, budget_s=0.2, straggler_s=0.02)
    elapsed = time.monotonic() - t
    assert late == ["slow"] and failed == ["broken"]
    assert results == {"a": ("a", "s", 3), "b": ("b", "s", 3)}
    assert elapsed < 0.5, f"waited {elapsed:.2f} s on a 0.2 s budget"
    assert channels["a"].threads[0] != channels["slow"].threads[0]  # not queued behind the slow one


def test_channels_after_a_slow_one_still_make_the_budget(pool):
    """Sequential on one thread, 4 x 0.15 s would end at 0.6 s, past the 0.4 s budget; handed out, all make it."""
    channels = {n: Channel(n, delay_s=0.15) for n in "abcd"}
    results, late, failed = ChannelRun(channels, None, 1).collect(pool, budget_s=0.4, straggler_s=0.01)
    assert late == [] and failed == [] and list(results) == list("abcd")


def test_nothing_is_claimed_after_the_deadline(pool):
    channels = {"slow": Channel("slow", delay_s=0.3), "next": Channel("next")}
    run = ChannelRun(channels, None, 1)
    results, late, _ = run.collect(pool, budget_s=0.05, straggler_s=10.0)  # no hand-out: "next" waits behind "slow"
    assert results == {} and late == ["slow", "next"]
    time.sleep(0.4)  # the slow channel returns; its thread must not start the next one for a finished request
    assert channels["next"].threads == []


def test_budget_must_be_positive(pool):
    with pytest.raises(ValueError, match="budget must be positive"):
        ChannelRun({"a": Channel("a")}, None, 1).collect(pool, budget_s=0)

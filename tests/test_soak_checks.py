"""The soak benchmark's accounting (benchmarks/soak_checks.py): what counts as an error outside a fault window, RSS
drift per server life, and the store audit catching a lost event and a buy stored but never folded (real SQLite)."""
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from soak_checks import check_store, rss_drift, summarise  # noqa: E402

from homefeed.mechanism.purchase_filter import BlockingPeriods, PurchaseState, on_event  # noqa: E402
from homefeed.serve.state import Event, SQLiteStore  # noqa: E402


def test_errors_are_split_by_fault_window_and_4xx_are_not_errors():
    windows = [[10.0, 20.0]]
    records = [(1.0, 1.1, "homepage", 200), (2.0, 2.2, "homepage", 422), (3.0, 3.1, "events", 503),
               (9.5, 10.5, "homepage", "conn"), (15.0, 15.1, "events", 503), (21.0, 21.5, "homepage", 500)]
    out = summarise(records, windows)
    assert out["errors_outside"] == 2 and out["errors_outside_codes"] == {"503": 1, "500": 1}
    assert out["errors_inside"] == 2  # the request that ran into the window counts inside
    assert out["codes"] == {"200": 1, "422": 1, "503": 2, "conn": 1, "500": 1}
    assert out["latency_ms"]["homepage"]["n"] == 1 and abs(out["p50_ms"] - 100) < 1e-6


def test_rss_drift_compares_within_each_life_after_warm_up():
    samples = [{"life": 0, "age": 10, "bytes": 50}, {"life": 0, "age": 40, "bytes": 100}, {"life": 0, "age": 50, "bytes": 108},
               {"life": 1, "age": 35, "bytes": 300}, {"life": 1, "age": 45, "bytes": 285},
               {"life": 2, "age": 40, "bytes": 999}]  # a life with one sample after warm-up is not measured
    out = rss_drift(samples, 30)
    assert out["lives_measured"] == 2 and abs(out["max_pct"] - 8.0) < 1e-9


def test_the_audit_finds_lost_events_and_unfolded_buys(tmp_path):
    periods = BlockingPeriods(pl.DataFrame({"standard_category": [1, 2], "block_days": [10.0, 0.0]}))
    facts = {"standard": {"i1": 1, "i2": 2}, "periods": periods}
    store = SQLiteStore(tmp_path / "s.db")

    def fold(user, evs):
        def change(blob):
            state = PurchaseState.from_dict(blob or {})
            for e in evs:
                state = on_event(state, standard=facts["standard"][e.item_id], behavior=e.behavior, ts=e.ts, periods=periods)
            return state.to_dict()
        return [("purchase_filter", change)]

    folded = [("b1", "ann", "i1", "buy", 1000), ("b2", "ann", "i2", "buy", 1001)]  # i2 blocks nothing
    store.append_events([Event(*e) for e in folded], fold=fold)
    unfolded = ("b3", "bob", "i1", "buy", 1002)
    store.append_events([Event(*unfolded)])  # stored, never folded: what a kill between two writes once left
    lost = ("e9", "cid", "i1", "pv", 1003)  # acknowledged, never stored
    store.close()
    out = check_store(f"sqlite:{tmp_path / 's.db'}", [*folded, unfolded, lost], facts, history_len=200)
    assert out["acked_events"] == 4 and out["lost_events"] == 1 and out["lost_examples"] == ["e9"]
    assert out["acked_buys"] == 3 and out["unfolded_buys"] == 1 and out["unfolded_users"] == ["bob"]
    assert out["stored_events"] == 3

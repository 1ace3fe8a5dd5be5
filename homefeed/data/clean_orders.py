"""Fake (brushed) orders: buys of items the buyer never looked at, alone or in bursts.

Brushing buys an item to push it up the sales ranking, without the browsing that precedes a real
purchase. Two tests, each a reason:

* ``no_view``: no pv/click/fav/cart of the same item by the same user in the `view_lookback_s`
  seconds up to the buy (same second included: log order within a second is unknown). A log only
  shows a window of time, so a buy early in it may follow a view from before it: buys sooner after
  the log's start than `min_history_s`, or than the `history_quantile` of this log's own view->buy
  delays when that is longer, are not judged. How common unviewed buys are differs per log (the
  Taobao UserBehavior sample has one in two); the cleaning guard (`clean.py`) stops the test when
  it would remove more than a small share of the log's buys.
* ``burst``: `burst_buys` or more unviewed buys of one user within `burst_window_s` seconds (every
  one of them). A checkout of carted items is a burst of *viewed* buys and is not flagged.

    >>> fake_orders(events, FakeOrderRule())                                  # doctest: +SKIP
    row   user_id  item_id  ts          reason
    1207  88       5012     1511700000  no_view
"""
from __future__ import annotations

import numpy as np
import polars as pl

from homefeed.config import FakeOrderRule
from homefeed.data.clean_log import REQUIRED, VIEWS, conform_events
from homefeed.data.history import group_time_key

FAKE_TESTS = ("no_view", "burst")


def buys_with_views(ev: pl.DataFrame, lookback_s: int) -> pl.DataFrame:
    """Every buy row (`row`, user_id, item_id, ts) with `view_ts`: its latest view within lookback_s, or null."""
    buys = ev.filter(pl.col("behavior") == "buy")
    views = (ev.filter(pl.col("behavior").is_in(VIEWS))
             .join(buys.select("user_id", "item_id").unique(), on=["user_id", "item_id"], how="semi")
             .select("user_id", "item_id", view_ts="ts").sort("view_ts"))
    return (buys.sort("ts").join_asof(views, left_on="ts", right_on="view_ts", by=["user_id", "item_id"],
                                      strategy="backward", tolerance=lookback_s, check_sortedness=False)
            .sort("row"))


def judged_from(buys: pl.DataFrame, start_ts: int, rule: FakeOrderRule) -> int:
    """First ts whose buys the no_view test judges: the log's start plus the longer of min_history_s and
    the `history_quantile` of this log's view->buy delays (of the buys that have a view)."""
    delays = (buys["ts"] - buys["view_ts"]).drop_nulls()
    typical = float(delays.quantile(rule.history_quantile, interpolation="higher")) if delays.len() else 0.0
    return start_ts + max(rule.min_history_s, int(typical))


def _in_bursts(user: np.ndarray, ts: np.ndarray, burst_buys: int, window_s: int) -> np.ndarray:
    """(n,) bool for rows sorted by (user, ts): inside a run of >= burst_buys rows of one user within window_s."""
    if len(ts) == 0:
        return np.zeros(0, bool)
    dense = np.r_[0, np.cumsum(user[1:] != user[:-1])]
    key, _, _ = group_time_key(dense, ts, pad=window_s)
    first = np.arange(len(key))
    end = np.searchsorted(key, key + window_s, side="right")  # rows [i, end) lie within window_s of row i
    starts = (end - first) >= burst_buys
    depth = np.cumsum(np.bincount(first[starts], minlength=len(key) + 1)
                      - np.bincount(end[starts], minlength=len(key) + 1))[:-1]
    return depth > 0


def fake_order_table(events: pl.DataFrame, rule: FakeOrderRule = FakeOrderRule(), *,
                     start_ts: int | None = None) -> pl.DataFrame:
    """Every buy: row (UInt32 position in `events`), user_id, item_id, ts, and the FAKE_TESTS as Booleans.

    `start_ts` is where the log's bulk starts (`clean_log.log_span`); the first ts by default.
    """
    ev = conform_events(events).select(*REQUIRED).with_row_index("row")
    buys = buys_with_views(ev, rule.view_lookback_s)
    start = (ev["ts"].min() or 0) if start_ts is None else start_ts
    unviewed = pl.col("view_ts").is_null()
    no_view = unviewed & (pl.col("ts") >= judged_from(buys, start, rule)) & pl.lit(rule.require_view)
    lone = buys.filter(unviewed).sort("user_id", "ts", maintain_order=True)
    bursts = lone.filter(pl.Series(_in_bursts(lone["user_id"].to_numpy(), lone["ts"].to_numpy(),
                                              rule.burst_buys, rule.burst_window_s)))
    return buys.select("row", "user_id", "item_id", "ts", no_view.alias("no_view"),
                       pl.col("row").is_in(bursts["row"].implode()).alias("burst"))


def fake_orders(events: pl.DataFrame, rule: FakeOrderRule = FakeOrderRule(), *, start_ts: int | None = None,
                skip: tuple[str, ...] = ()) -> pl.DataFrame:
    """Buys that look brushed: row (UInt32 position in `events`), user_id, item_id, ts, reason.

    reason is "no_view" or "burst" ("no_view" wins when both hold); tests in `skip` do not count.
    Sorted by row. Empty when the rule is disabled.
    """
    table = fake_order_table(events, rule, start_ts=start_ts)
    tests = [t for t in FAKE_TESTS if t not in skip] if rule.enabled else []
    if not tests:
        return table.clear().select("row", "user_id", "item_id", "ts", reason=pl.lit("", pl.String))
    reason = pl.when(tests[0]).then(pl.lit(tests[0]))
    for t in tests[1:]:
        reason = reason.when(t).then(pl.lit(t))
    return table.filter(pl.any_horizontal(tests)).select("row", "user_id", "item_id", "ts", reason.alias("reason"))

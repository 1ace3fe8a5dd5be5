"""Cleaning rules on hand-made logs with hand-computed removals and the guard (known-answer data: test_clean_real.py)."""
from __future__ import annotations

import polars as pl
import pytest

from homefeed.config import Cleaning, CrawlerRule, FakeOrderRule, InactiveRule, TimeWindow
from homefeed.data.clean import (clean_events, crawler_users, fake_orders, in_window, inactive_users,
                                 load_verdicts, log_span, save_verdicts, window_days)
from homefeed.data.schema import BEHAVIOR

HUGE = 10**9
DAY = 86_400

EVERY_NIGHT = Cleaning(abnormal_windows=[TimeWindow(name="midnight_spike", start="00:00", end="00:10",
                                                    behaviors=["buy", "cart"], min_lift=0.0)])
NIGHT = TimeWindow(name="night", start="00:00", end="00:10", behaviors=["buy"])
ONLY_WINDOWS = dict(crawler=CrawlerRule(enabled=False), fake_orders=FakeOrderRule(enabled=False))


def log(rows: list[tuple]) -> pl.DataFrame:
    """(user_id, item_id, behavior, ts) tuples -> an events frame."""
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "behavior": BEHAVIOR, "ts": pl.Int64},
                        orient="row")


def crowd(n: int, ts: int, behavior: str = "pv", first_user: int = 10_000) -> list[tuple]:
    """n ordinary users with one event each at ts, ts+1, ...: what the log's own percentiles are made of."""
    return [(first_user + u, 1, behavior, ts + u) for u in range(n)]


# --- crawlers --------------------------------------------------------------------------------

def crawler_ids(events, tz=0.0, **knobs) -> list:
    """Crawlers under the absolute limits only (rate_factor ~0), every test off unless given."""
    rule = CrawlerRule(**{"max_pv_per_minute": HUGE, "max_pv_per_hour": HUGE, "daily_factor": HUGE,
                          "rate_factor": 1e-9, **knobs})
    return crawler_users(events, rule, tz_offset_hours=tz)["user_id"].to_list()


def test_crawler_pv_per_minute_uses_whole_minutes():
    rows = [(1, 0, "pv", 600 + s) for s in range(21)]              # 21 pv in one minute: bot
    rows += [(2, 0, "pv", 600 + s) for s in range(20)]             # exactly 20: allowed
    rows += [(3, 0, "pv", 650 + s) for s in range(21)]             # 21 pv across two minutes: 10 + 11
    rows += [(4, 0, "click", 600 + s) for s in range(30)]          # clicks are not page views
    assert crawler_ids(log(rows), max_pv_per_minute=20) == [1]


def test_crawler_minute_limit_follows_the_logs_own_clock():
    # a coarse clock stamps each of 1000 users' 30 views with one second: p99 (user, minute) = 30
    rows = [(10_000 + u, k, "pv", 60 * u) for u in range(1000) for k in range(30)]
    rows += [(1, k, "pv", 0) for k in range(120)]                  # 120 = 4 x 30: allowed
    rows += [(2, k, "pv", 0) for k in range(121)]                  # above 4 x the log's p99
    assert crawler_ids(log(rows), max_pv_per_minute=20, rate_factor=4.0) == [2]
    assert len(crawler_ids(log(rows), max_pv_per_minute=20)) == 1002  # the absolute limit alone flags everyone


def test_crawler_pv_per_hour_is_a_sustained_rate():
    rows = crowd(1000, 0)
    rows += [(1, k, "pv", 3600 + 29 * k) for k in range(121)]      # 121 pv in one local hour, 2-3 a minute
    rows += [(2, k, "pv", 3600 + 29 * k) for k in range(120)]      # exactly 120: allowed
    rows += [(3, k, "pv", 7200 - 29 * 60 + 29 * k) for k in range(121)]  # 60 + 61 across two hours
    assert crawler_ids(log(rows), max_pv_per_hour=120, rate_factor=4.0) == [1]
    assert crawler_ids(log(rows), max_pv_per_minute=2) == [1, 2, 3]   # 3 pv in some minute


def test_crawler_daily_volume_against_crowd_p99():
    rows = [(100 + u, 0, "click", 5 * DAY) for u in range(1000)]   # the crowd: 1 event per user-day, p99 = 1
    rows += [(1, 0, "click", DAY + 120 * k) for k in range(11)]    # 11 > 10 x 1
    rows += [(2, 0, "click", DAY + 120 * k) for k in range(10)]    # 10 is not above 10
    assert crawler_ids(log(rows), daily_factor=10.0) == [1]


def test_crawler_days_are_local():
    rows = [(100 + u, 0, "click", 5 * DAY) for u in range(1000)]
    # 6 events at local 23:xx and 6 at local 00:xx (+8 h): one UTC day (15:xx, 16:xx), two local days
    rows += [(1, 0, "click", DAY + 15 * 3600 + 300 * k) for k in range(6)]
    rows += [(1, 0, "click", DAY + 16 * 3600 + 300 * k) for k in range(6)]
    assert crawler_ids(log(rows), tz=0.0, daily_factor=10.0) == [1]
    assert crawler_ids(log(rows), tz=8.0, daily_factor=10.0) == []


def test_crawler_reasons_and_busiest_counts():
    rows = crowd(1000, 0)
    rows += [(1, k, "pv", 3600 + k) for k in range(60)] + [(1, k, "pv", 3700 + 40 * k) for k in range(70)]
    rows += [(2, k, "pv", 3600 + k // 2) for k in range(100)]      # 100 in one minute, not 120 in the hour
    out = crawler_users(log(rows), CrawlerRule(daily_factor=HUGE), tz_offset_hours=0)
    assert dict(out.select("user_id", "reason").iter_rows()) == {1: "pv_per_minute,pv_per_hour", 2: "pv_per_minute"}
    assert out.filter(pl.col("user_id") == 1).select("max_pv_minute", "max_pv_hour").row(0) == (60, 130)


def test_crawler_rule_disabled_finds_nobody():
    rows = [(1, 0, "pv", s) for s in range(100)]
    assert crawler_users(log(rows), CrawlerRule(enabled=False), tz_offset_hours=0).height == 0


# --- fake orders -----------------------------------------------------------------------------

def fake_rows(events, **knobs) -> list[int]:
    rule = FakeOrderRule(**{"burst_buys": HUGE, "min_history_s": 0, "history_quantile": 0.0, **knobs})
    return fake_orders(events, rule)["row"].to_list()


def test_fake_order_needs_an_earlier_view_of_the_same_item_by_the_same_user():
    lookback = 1000
    events = log([
        (1, 10, "pv", 100), (1, 10, "buy", 200),          # 0, 1: viewed, then bought: fine
        (1, 11, "buy", 300),                              # 2: never viewed: fake
        (3, 20, "pv", 10), (2, 20, "buy", 60),            # 3, 4: someone else's view does not count: 4 fake
        (4, 30, "fav", 0), (4, 30, "buy", lookback),      # 5, 6: view exactly lookback earlier: fine
        (5, 40, "click", 0), (5, 40, "buy", lookback + 1),  # 7, 8: one second too late: 8 fake
        (6, 50, "cart", 100), (6, 50, "buy", 100),        # 9, 10: same second counts as earlier: fine
        (7, 60, "buy", 100), (7, 60, "pv", 101),          # 11, 12: view after the buy: 11 fake
        (8, 70, "buy", 100), (8, 70, "buy", 200),         # 13, 14: a buy is not a view: both fake
    ])
    assert fake_rows(events, view_lookback_s=lookback) == [2, 4, 8, 11, 13, 14]
    assert fake_rows(events, view_lookback_s=lookback, require_view=False) == []
    assert fake_rows(events, view_lookback_s=lookback, enabled=False) == []


def test_fake_order_bursts_edges():
    events = log([
        (1, 1, "buy", 0), (1, 2, "buy", 100), (1, 3, "buy", 300),                     # 0-2: span 300: burst
        (2, 1, "buy", 0), (2, 2, "buy", 100), (2, 3, "buy", 301),                     # 3-5: span 301: no
        (3, 1, "buy", 0), (3, 2, "buy", 1000), (3, 3, "buy", 1100), (3, 4, "buy", 1200), (3, 5, "buy", 5000),  # 6-10
        (4, 1, "buy", 0), (4, 2, "buy", 0), (5, 1, "buy", 0), (5, 2, "buy", 0),       # 11-14: 2 + 2 users apart
        (6, 1, "buy", 0), (6, 2, "buy", 200), (6, 3, "buy", 400), (6, 4, "buy", 600),  # 15-18: never 3 in 300 s
        (7, 1, "pv", 0), (7, 1, "pv", 1), (7, 2, "buy", 2),                           # 19-21: pvs are not buys
    ])
    out = fake_orders(events, FakeOrderRule(require_view=False, burst_buys=3, burst_window_s=300))
    assert out["row"].to_list() == [0, 1, 2, 7, 8, 9]
    assert set(out["reason"]) == {"burst"}


def test_a_checkout_of_viewed_items_is_not_a_burst():
    events = log([(1, k, "cart", 0) for k in (1, 2, 3)]                # 0-2: carts
                 + [(1, k, "buy", 100) for k in (1, 2, 3, 4, 5)]       # 3-7: a checkout; items 4, 5 never viewed
                 + [(2, k, "buy", 100 + k) for k in (1, 2, 3)])        # 8-10: three unviewed buys in 3 s
    out = fake_orders(events, FakeOrderRule(require_view=False, burst_buys=3, burst_window_s=60))
    assert dict(out.select("row", "reason").iter_rows()) == {8: "burst", 9: "burst", 10: "burst"}
    out = fake_orders(events, FakeOrderRule(burst_buys=3, burst_window_s=60, min_history_s=0))
    assert dict(out.select("row", "reason").iter_rows()) == {r: "no_view" for r in (6, 7, 8, 9, 10)}


def test_buys_early_in_the_log_are_not_judged_for_a_missing_view():
    # a log that starts mid-funnel (e.g. a two-hour slice) cannot show the views behind its first buys
    events = log([(1, 1, "pv", 0), (2, 5, "buy", 60), (3, 6, "buy", 7 * 3600)])
    assert fake_rows(events, min_history_s=6 * 3600) == [2]
    assert fake_rows(events, min_history_s=0) == [1, 2]
    # ... and how early is "early" follows the log's own view->buy delays (here 10 hours)
    slow = log([(1, 1, "pv", 0), (1, 1, "buy", 36_000), (2, 2, "pv", 0), (2, 2, "buy", 36_000),
                (3, 3, "buy", 8 * 3600), (4, 4, "buy", 11 * 3600)])
    assert fake_rows(slow, history_quantile=0.95) == [5]
    assert fake_rows(slow, history_quantile=0.95, min_history_s=12 * 3600) == []
    assert fake_orders(slow, FakeOrderRule(min_history_s=0, history_quantile=0.0), start_ts=-3 * 3600)["row"].to_list() == [4, 5]


# --- abnormal windows ------------------------------------------------------------------------

def window_rows(events, window, tz) -> list[int]:
    return events.with_row_index("row").filter(in_window(window, tz_offset_hours=tz))["row"].to_list()


def test_window_in_local_time_with_behaviours():
    local_midnight = DAY - 8 * 3600                   # 1970-01-02 00:00 at UTC+8
    events = log([(1, 1, "buy", local_midnight - 1), (1, 1, "buy", local_midnight), (1, 1, "cart", local_midnight + 599),
                  (1, 1, "buy", local_midnight + 600), (1, 1, "pv", local_midnight + 5)])
    w = TimeWindow(name="spike", start="00:00", end="00:10", behaviors=["buy", "cart"])
    assert window_rows(events, w, tz=8) == [1, 2]
    assert window_rows(events, w, tz=0) == []         # at UTC the same instants are 15:59-16:10
    assert window_rows(events, TimeWindow(name="all", start="00:00", end="00:10"), tz=8) == [1, 2, 4]


def test_window_wraps_past_midnight_and_dates_name_the_start_day():
    events = log([(1, 1, "buy", t) for t in (DAY - 601, DAY - 600, DAY + 599, DAY + 600,
                                             2 * DAY - 600, 2 * DAY + 300, 3 * DAY - 300)])
    wrap = TimeWindow(name="w", start="23:50", end="00:10")
    assert window_rows(events, wrap, tz=0) == [1, 2, 4, 5, 6]
    # the occurrence starting 1970-01-02 23:50 runs into 01-03; the 01-03 23:55 event starts the next one
    dated = TimeWindow(name="w", start="23:50", end="00:10", dates=["1970-01-02"])
    assert window_rows(events, dated, tz=0) == [4, 5]
    assert window_rows(events, TimeWindow(name="day", start="00:00", end="24:00"), tz=0) == list(range(7))


@pytest.mark.parametrize("knobs, message", [
    ({"start": "25:00"}, "'25:00' is not a time of day"),
    ({"start": "7:5"}, "'7:5' is not a time of day"),
    ({"start": "24:00"}, "'24:00' is not a time of day"),
    ({"end": "00:00"}, "equals end"),
    ({"behaviors": ["purchase"]}, "unknown behaviour(s) ['purchase']; valid: pv, click, fav, cart, buy"),
    ({"dates": ["2017-13-01"]}, "'2017-13-01' is not a date"),
])
def test_window_errors_name_the_window_and_the_problem(knobs, message):
    w = TimeWindow(**{"name": "bad", "start": "00:00", "end": "00:10", **knobs})
    with pytest.raises(ValueError, match="abnormal window 'bad'") as e:
        in_window(w, tz_offset_hours=0)
    assert message in str(e.value)


def spike_log(spike_days=(4,), *, n_days=10, base=0, buyers=50, spike_users=20) -> pl.DataFrame:
    """Each UTC day: `buyers` users buy at midday and one user at 00:05; on spike days 20 more users at 00:01."""
    rows = []
    for d in range(n_days):
        t = base + d * DAY
        rows += [(1000 + u, 1, "buy", t + 12 * 3600 + u) for u in range(buyers)] + [(1, 2, "buy", t + 300)]
        rows += [(2000 + u, 3, "buy", t + 60 + u) for u in range(spike_users)] if d in spike_days else []
    return log(rows)


def test_window_days_compare_each_day_with_the_logs_hour_profile():
    days = window_days(spike_log(), NIGHT, tz_offset_hours=0)
    assert days["day"].to_list() == list(range(10)) and days["date"][4] == "1970-01-05"
    assert days["users"].to_list() == [1, 1, 1, 1, 21, 1, 1, 1, 1, 1] and set(days["users_outside"]) == {50}
    assert days.filter("abnormal")["day"].to_list() == [4]
    # day 4 is judged on the other 9 days: 9 night users per 450 outside, plus a flat prior of 1 per 143
    assert days["expected"][4] == pytest.approx(50 * 10 / (450 + 143))
    assert window_days(spike_log(), NIGHT.model_copy(update={"min_lift": 30.0}), tz_offset_hours=0)["abnormal"].sum() == 0
    every = window_days(spike_log(), NIGHT.model_copy(update={"min_lift": 0.0}), tz_offset_hours=0)
    assert every["abnormal"].sum() == 10
    dated = NIGHT.model_copy(update={"min_lift": 0.0, "dates": ["1970-01-05"]})
    assert window_days(spike_log(), dated, tz_offset_hours=0).filter("abnormal")["day"].to_list() == [4]
    res = clean_events(spike_log(), Cleaning(abnormal_windows=[NIGHT], **ONLY_WINDOWS), tz_offset_hours=0)
    assert res.counts == {"abnormal_window:night": 21} and res.abnormal_days == {"night": ["1970-01-05"]}


def test_one_users_long_night_session_is_not_a_spike():
    events = pl.concat([spike_log(()), log([(3000, k, "buy", 6 * DAY + 300 + k) for k in range(40)])])
    days = window_days(events, NIGHT, tz_offset_hours=0)
    assert days["rows"][6] == 41 and days["users"][6] == 2 and days["abnormal"].sum() == 0


def test_a_window_abnormal_on_many_days_is_the_logs_normal_and_stops():
    events = spike_log((1, 3, 5, 7))
    assert window_days(events, NIGHT, tz_offset_hours=0)["abnormal"].sum() == 4
    res = clean_events(events, Cleaning(abnormal_windows=[NIGHT], **ONLY_WINDOWS), tz_offset_hours=0)
    assert res.counts == {"abnormal_window:night": 0} and res.abnormal_days == {"night": []}
    (skip,) = res.skipped
    assert skip["rule"] == "abnormal_window:night" and skip["would_flag_days"] == 4 and skip["days"] == 10
    assert skip["dates"] == ["1970-01-02", "1970-01-04", "1970-01-06", "1970-01-08"]
    assert skip["would_remove"] == {"rows": 84} and 'cleaning.force=["abnormal_window:night"]' in skip["force"]
    forced = Cleaning(abnormal_windows=[NIGHT], force=["abnormal_window:night"], **ONLY_WINDOWS)
    assert clean_events(events, forced, tz_offset_hours=0).counts == {"abnormal_window:night": 84}
    wider = Cleaning(abnormal_windows=[NIGHT], max_abnormal_day_share=0.4, **ONLY_WINDOWS)
    assert clean_events(events, wider, tz_offset_hours=0).counts == {"abnormal_window:night": 84}
    every = Cleaning(abnormal_windows=[NIGHT.model_copy(update={"min_lift": 0.0})], **ONLY_WINDOWS)
    res = clean_events(events, every, tz_offset_hours=0)                # a configured every-night cut is not guarded
    assert res.counts == {"abnormal_window:night": 90} and res.skipped == []


def test_outlier_rows_are_reported_and_do_not_stretch_the_days():
    base = 400 * DAY
    stray = [(7, 9, "buy", base - 365 * DAY + 300 + k) for k in range(3)]  # 3 midnight buys a year early
    stray += [(8, 9, "pv", base - DAY + 43_200 + k) for k in range(2)]     # 2 rows the day before the log
    events = pl.concat([spike_log(base=base), log(stray)])
    span = log_span(events, tz_offset_hours=0)
    assert (span.first_day, span.last_day, span.n_days, span.outliers) == (400, 409, 10, 5)
    assert span.outlier_ts == (base - 365 * DAY + 300, base - DAY + 43_201)
    assert span.summary()["outliers"] == {"rows": 5, "first": "1970-02-05 00:05:00", "last": "1971-02-04 12:00:01",
                                               "first_ts": base - 365 * DAY + 300, "last_ts": base - DAY + 43_201}
    days = window_days(events, NIGHT, tz_offset_hours=0)
    assert days.height == 10 and days.filter("abnormal")["day"].to_list() == [404]
    res = clean_events(events, Cleaning(abnormal_windows=[NIGHT], **ONLY_WINDOWS), tz_offset_hours=0)
    assert res.counts == {"abnormal_window:night": 21} and res.summary()["outliers"]["rows"] == 5
    assert res.kept.join(log(stray), on=["user_id", "item_id", "ts"], how="semi").height == 5  # kept, not judged


# --- the guard on crawler and fake-order tests -----------------------------------------------

def unviewed_log(n_viewed=60, n_unviewed=40, burst=0) -> pl.DataFrame:
    """One day: `n_viewed` users view then buy, `n_unviewed` buy with no view, one user buys `burst` unviewed items in 10 s."""
    rows = [(999, 1, "pv", 0)]                                          # the log starts at 0; buys from 8 h on
    rows += [r for u in range(n_viewed) for r in ((u, u, "pv", 28_800 + u), (u, u, "buy", 28_860 + u))]
    rows += [(u, u, "buy", 28_800 + u) for u in range(n_viewed, n_viewed + n_unviewed)]
    rows += [(500, 1000 + k, "buy", 30_000 + 2 * k) for k in range(burst)]
    return log(rows)


ONLY_FAKES = dict(crawler=CrawlerRule(enabled=False), abnormal_windows=[])


def test_fake_order_test_stops_when_unviewed_buys_are_the_logs_normal():
    events = unviewed_log()
    res = clean_events(events, Cleaning(**ONLY_FAKES), tz_offset_hours=0)
    assert res.counts == {"fake_order": 0} and res.kept.equals(events)
    (skip,) = res.skipped
    assert skip["rule"] == "fake_order:no_view" and skip["would_remove"] == {"rows": 40, "buy": 40}
    assert skip["share"] == {"buy": 0.4} and skip["limit"] == {"buy": 0.05} and "40.0% of the log's buy rows" in skip["why"]
    assert skip["force"] == """--set 'cleaning.force=["fake_order:no_view"]'"""
    assert clean_events(events, Cleaning(force=["fake_order:no_view"], **ONLY_FAKES), tz_offset_hours=0).counts == {"fake_order": 40}
    assert clean_events(events, Cleaning(max_removed_share={"buy": 0.5}, **ONLY_FAKES), tz_offset_hours=0).counts == {"fake_order": 40}
    rare = unviewed_log(n_viewed=96, n_unviewed=4)                     # 4% unviewed: under the limit, removed
    assert clean_events(rare, Cleaning(**ONLY_FAKES), tz_offset_hours=0).counts == {"fake_order": 4}


def test_bursts_are_no_evidence_where_unviewed_buys_are_normal():
    events = unviewed_log(burst=5)
    res = clean_events(events, Cleaning(**ONLY_FAKES), tz_offset_hours=0)
    assert res.counts == {"fake_order": 0} and [s["rule"] for s in res.skipped] == ["fake_order:no_view", "fake_order:burst"]
    assert res.skipped[1]["after"] == "fake_order:no_view" and res.skipped[1]["would_remove"] == {"rows": 5}
    forced = clean_events(events, Cleaning(force=["fake_order:burst"], **ONLY_FAKES), tz_offset_hours=0)
    assert forced.counts == {"fake_order": 5} and set(forced.removed["user_id"]) == {500}
    clean = clean_events(unviewed_log(n_viewed=200, n_unviewed=0, burst=5), Cleaning(**ONLY_FAKES), tz_offset_hours=0)
    assert clean.counts == {"fake_order": 5} and clean.skipped == []     # 5 of 205 buys: a burst in a viewing log


def test_crawler_test_stops_when_its_users_hold_many_buys():
    rows = crowd(1000, 0) + crowd(100, 5000, "buy")
    rows += [r for u in range(10) for r in [(u, k, "pv", 3600 + k) for k in range(25)] + [(u, 1, "buy", 7200)]]  # bots that buy
    only = dict(crawler=CrawlerRule(daily_factor=HUGE), fake_orders=FakeOrderRule(enabled=False), abnormal_windows=[])
    res = clean_events(log(rows), Cleaning(**only), tz_offset_hours=0)
    assert res.counts == {"crawler": 0} and res.crawlers.height == 0
    assert [s["rule"] for s in res.skipped] == ["crawler:pv_per_minute"] and res.skipped[0]["would_remove"]["buy"] == 10
    res = clean_events(log(rows), Cleaning(max_removed_share={"buy": 0.1}, **only), tz_offset_hours=0)
    assert res.crawlers["user_id"].to_list() == list(range(10)) and res.counts == {"crawler": 260}


def test_guard_settings_are_checked():
    events = unviewed_log()
    with pytest.raises(ValueError, match=r"cleaning.force names unknown test\(s\) \['fake_order:nope'\]; valid: crawler:pv_per_minute"):
        clean_events(events, Cleaning(force=["fake_order:nope"]), tz_offset_hours=0)
    with pytest.raises(ValueError, match=r"unknown behaviour\(s\) \['purchase'\]"):
        clean_events(events, Cleaning(max_removed_share={"purchase": 0.1}), tz_offset_hours=0)


# --- inactive users and the whole pipeline ---------------------------------------------------

def test_inactive_users_are_reported_not_removed():
    events = log([(1, 1, "pv", 0), (1, 2, "pv", 1), (2, 1, "pv", 0), (2, 1, "pv", 1), (2, 1, "pv", 2)])
    assert inactive_users(events, InactiveRule(min_events=3)).rows() == [(1, 2)]
    assert inactive_users(events, InactiveRule(min_events=3, enabled=False)).height == 0
    assert clean_events(events, Cleaning(abnormal_windows=[]), tz_offset_hours=0).kept.height == 5


def pipeline_log() -> pl.DataFrame:
    midnight = DAY                                                     # 1970-01-02 00:00 UTC
    rows = [(1, 5, "pv", 7 * DAY + s) for s in range(25)]               # 0-24: crawler (25 pv in a minute)
    rows += [(1, 6, "buy", midnight + 30)]                              # 25: crawler's unviewed midnight buy
    rows += [(2, 7, "pv", 100), (2, 7, "buy", midnight + 60)]           # 26, 27: viewed, but in the spike
    rows += [(3, 8, "buy", midnight + 120)]                             # 28: unviewed AND in the spike
    rows += [(3, 9, "buy", 3 * DAY + 3600)]                             # 29: unviewed: fake order
    rows += [(4, 9, "pv", 3 * DAY + 3600), (4, 9, "buy", 3 * DAY + 3605)]  # 30, 31: clean
    rows += [r for u in range(200) for r in ((100 + u, 1, "pv", 5 * DAY + 43_200 + u), (100 + u, 1, "buy", 5 * DAY + 43_260 + u))]
    return log(rows)                                                    # 32-431: 200 ordinary buyers


def test_clean_events_order_and_accounting():
    events = pipeline_log()
    res = clean_events(events, EVERY_NIGHT, tz_offset_hours=0)
    assert res.counts == {"crawler": 26, "abnormal_window:midnight_spike": 2, "fake_order": 1} and res.skipped == []
    assert res.kept.height + sum(res.counts.values()) == events.height
    assert res.kept.rows() == events[[26, 30, 31, *range(32, 432)]].rows()
    assert res.removed.filter(pl.col("rule") != "crawler").select("ts", "rule").rows() == [
        (DAY + 60, "abnormal_window:midnight_spike"), (DAY + 120, "abnormal_window:midnight_spike"),
        (3 * DAY + 3600, "fake_order")]
    assert res.crawlers["user_id"].to_list() == [1]
    summary = res.summary()
    assert summary["input"] == events.height and summary["removed_by_behavior"] == {"pv": 25, "buy": 4}
    assert summary["bulk"] == {"from": "1970-01-01", "to": "1970-01-08", "days": 8} and summary["outliers"] == {"rows": 0}


def test_clean_events_rules_can_be_switched_off():
    events = pipeline_log()
    off = Cleaning(crawler=CrawlerRule(enabled=False), abnormal_windows=[])
    res = clean_events(events, off, tz_offset_hours=0)
    assert res.counts == {"fake_order": 3}                              # rows 25, 28, 29; 27 was viewed
    assert res.removed["ts"].to_list() == [DAY + 30, DAY + 120, 3 * DAY + 3600]
    nothing = Cleaning(crawler=CrawlerRule(enabled=False), fake_orders=FakeOrderRule(enabled=False), abnormal_windows=[])
    res = clean_events(events, nothing, tz_offset_hours=0)
    assert res.counts == {} and res.kept.equals(events) and res.removed.height == 0


def test_clean_events_accepts_string_behaviours_and_names_bad_rows():
    events = pipeline_log().with_columns(pl.col("behavior").cast(pl.String))
    assert clean_events(events, EVERY_NIGHT, tz_offset_hours=0).counts["fake_order"] == 1
    bad = events.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("view"))
                              .otherwise(pl.col("behavior")).alias("behavior"))
    with pytest.raises(ValueError, match=r"events row 3, column 'behavior': unknown value 'view'.*valid: pv, click"):
        clean_events(bad, Cleaning(), tz_offset_hours=0)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['ts'\]"):
        clean_events(events.drop("ts"), Cleaning(), tz_offset_hours=0)
    twice = Cleaning(abnormal_windows=[TimeWindow(name="a", start="01:00", end="02:00")] * 2)
    with pytest.raises(ValueError, match="names must be unique"):
        clean_events(events, twice, tz_offset_hours=0)


def test_verdicts_are_saved_for_later_stages(tmp_path):
    res = clean_events(pipeline_log(), EVERY_NIGHT, tz_offset_hours=0)
    assert res.verdicts().rows() == [(1, "crawler", 26), (3, "fake_orders", 1)]
    summary = save_verdicts(res, tmp_path / "ds")
    assert load_verdicts(tmp_path / "ds").equals(res.verdicts())
    assert summary["removed"] == res.counts and "skipped" in summary and "outliers" in summary
    assert load_verdicts(tmp_path / "elsewhere") is None and load_verdicts(None) is None



def test_window_p_values_equal_scipy_stats_poisson():
    # clean_windows computes the Poisson tail with scipy.special (scipy.stats costs seconds to import)
    import numpy as np
    from scipy.stats import poisson

    from homefeed.data.clean_windows import _flag

    rng = np.random.default_rng(0)
    outside = rng.integers(0, 2000, 40)
    n = rng.poisson(outside * 0.01)  # ordinary days: 1 in the window per 100 outside
    n[:3], n[3:5], outside[3:5] = 0, 5, 0  # empty windows; people in the window with nobody outside (expected 0)
    n[7] = 400  # one spike day, flagged
    window = TimeWindow(name="w", start="00:00", end="00:10", min_lift=3.0, max_p_value=0.001)
    expected, p_value, abnormal = _flag(n, outside, 10 / 1440, window)
    assert np.array_equal(p_value, poisson.sf(n - 1, expected))
    assert abnormal[7] and abnormal[3:5].all() and abnormal.sum() == 3


@pytest.mark.parametrize("ids", ["int64", "uint32", "string", "negative"])
def test_crawler_table_on_packed_keys_equals_the_two_key_group_by(ids):
    # crawler_table groups (user, minute / hour / day) on one packed integer; the table must not change
    import numpy as np

    from homefeed.data.clean_users import crawler_table

    rng = np.random.default_rng(3)
    n = 40_000
    user = rng.integers(1, 300, n)
    ts = 1_511_000_000 + np.sort(rng.integers(0, 5 * DAY, n))
    ts[:500] = 1_511_000_000 + 3 * DAY + rng.integers(0, 300, 500)  # one user's burst: a crawler
    user[:500] = 7
    cast = {"int64": pl.Series(user), "uint32": pl.Series(user.astype(np.uint32)),
            "string": pl.Series(user.astype(str)), "negative": pl.Series(user - 1000)}[ids]
    events = pl.DataFrame({"user_id": cast, "item_id": rng.integers(1, 50, n), "ts": ts,
                           "behavior": rng.choice(["pv", "pv", "pv", "cart", "buy"], n)}).with_columns(
        pl.col("behavior").cast(BEHAVIOR))
    rule = CrawlerRule()
    packed, limits = crawler_table(events, rule, tz_offset_hours=8, pack=True)
    plain, plain_limits = crawler_table(events, rule, tz_offset_hours=8, pack=False)
    assert packed.sort("user_id").equals(plain.sort("user_id")) and limits == plain_limits
    assert packed.filter("pv_per_minute")["user_id"].cast(pl.String).to_list() == [str(cast[0])]

"""Cleaning rules on hand-made logs with hand-computed removals, plus the synthetic world's truth."""
from __future__ import annotations

import polars as pl
import pytest

from homefeed.config import Cleaning, CrawlerRule, FakeOrderRule, InactiveRule, TimeWindow
from homefeed.data.clean import clean_events, crawler_users, fake_orders, in_window, inactive_users, window_days
from homefeed.data.schema import BEHAVIOR

HUGE = 10**9
DAY = 86_400


EVERY_NIGHT = Cleaning(abnormal_windows=[TimeWindow(name="midnight_spike", start="00:00", end="00:10",
                                                    behaviors=["buy", "cart"], min_lift=0.0)])


def log(rows: list[tuple]) -> pl.DataFrame:
    """(user_id, item_id, behavior, ts) tuples -> an events frame."""
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64, "behavior": BEHAVIOR, "ts": pl.Int64},
                        orient="row")


def crawler_ids(events, tz=0.0, **knobs) -> list:
    rule = CrawlerRule(**{"max_pv_per_minute": HUGE, "daily_factor": HUGE, "pv_only_min_events": HUGE, **knobs})
    return crawler_users(events, rule, tz_offset_hours=tz)["user_id"].to_list()


# --- crawlers --------------------------------------------------------------------------------

def test_crawler_pv_per_minute_uses_whole_minutes():
    rows = [(1, 0, "pv", 600 + s) for s in range(21)]              # 21 pv in one minute: bot
    rows += [(2, 0, "pv", 600 + s) for s in range(20)]             # exactly 20: allowed
    rows += [(3, 0, "pv", 650 + s) for s in range(21)]             # 21 pv across two minutes: 10 + 11
    rows += [(4, 0, "click", 600 + s) for s in range(30)]          # clicks are not page views
    assert crawler_ids(log(rows), max_pv_per_minute=20) == [1]


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


def test_crawler_pv_only_and_reasons():
    rows = [(1, 0, "pv", 60 * k) for k in range(200)]              # 200 events, all pv
    rows += [(2, 0, "pv", 60 * k) for k in range(199)]             # too few to judge
    rows += [(3, 0, "pv", 60 * k) for k in range(250)] + [(3, 0, "click", 0)]
    rows += [(4, 0, "pv", s) for s in range(200)]                  # all pv AND 60 in one minute
    out = crawler_users(log(rows), CrawlerRule(max_pv_per_minute=20, daily_factor=HUGE, pv_only_min_events=200),
                        tz_offset_hours=0)
    assert dict(out.select("user_id", "reason").iter_rows()) == {1: "pv_only", 4: "pv_per_minute,pv_only"}
    assert out.filter(pl.col("user_id") == 4)["max_pv_minute"].item() == 60


def test_crawler_rule_disabled_finds_nobody():
    rows = [(1, 0, "pv", s) for s in range(100)]
    assert crawler_users(log(rows), CrawlerRule(enabled=False), tz_offset_hours=0).height == 0


# --- fake orders -----------------------------------------------------------------------------

def fake_rows(events, **knobs) -> list[int]:
    rule = FakeOrderRule(**{"burst_buys": HUGE, "min_history_s": 0, **knobs})
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


def test_fake_order_reason_prefers_no_view():
    events = log([(1, 1, "pv", 0), (1, 1, "buy", 10), (1, 2, "buy", 20)])
    out = fake_orders(events, FakeOrderRule(burst_buys=2, burst_window_s=60, min_history_s=0))
    assert dict(out.select("row", "reason").iter_rows()) == {1: "burst", 2: "no_view"}


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


def test_window_days_flag_only_abnormally_full_days():
    per_day = {0: 1, 1: 1, 2: 10, 3: 2, 4: 0, 5: 1}                   # rows at 00:05 UTC of each day
    events = log([(1, 1, "buy", d * DAY + 300) for d, k in per_day.items() for _ in range(k)] + [(1, 1, "pv", 5 * DAY + 300)])
    w = TimeWindow(name="night", start="00:00", end="00:10", behaviors=["buy"])
    days = window_days(events, w, tz_offset_hours=0, min_lift=3.0)       # median 1 -> abnormal above 3
    assert days["n"].to_list() == [1, 1, 10, 2, 0, 1] and days["date"][2] == "1970-01-03"
    assert days.filter("abnormal")["day"].to_list() == [2]
    assert window_days(events, w, tz_offset_hours=0, min_lift=0.0).filter("abnormal")["day"].to_list() == [0, 1, 2, 3, 5]
    assert window_days(events, w, tz_offset_hours=0, min_lift=10.0).filter("abnormal").height == 0
    res = clean_events(events, Cleaning(crawler=CrawlerRule(enabled=False), abnormal_windows=[w],
                                        fake_orders=FakeOrderRule(enabled=False)), tz_offset_hours=0)
    assert res.counts == {"abnormal_window:night": 10}                  # default min_lift 3: only day 2
    res = clean_events(events, Cleaning(crawler=CrawlerRule(enabled=False), fake_orders=FakeOrderRule(enabled=False),
                                        abnormal_windows=[TimeWindow(**(w.model_dump() | {'min_lift': 0.0}))]), tz_offset_hours=0)
    assert res.counts == {"abnormal_window:night": 15}


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
    return log(rows)


def test_clean_events_order_and_accounting():
    events = pipeline_log()
    res = clean_events(events, EVERY_NIGHT, tz_offset_hours=0)
    assert res.counts == {"crawler": 26, "abnormal_window:midnight_spike": 2, "fake_order": 1}
    assert res.kept.height + sum(res.counts.values()) == events.height
    assert res.kept.rows() == events[[26, 30, 31]].rows()
    assert res.removed.filter(pl.col("rule") != "crawler").select("ts", "rule").rows() == [
        (DAY + 60, "abnormal_window:midnight_spike"), (DAY + 120, "abnormal_window:midnight_spike"),
        (3 * DAY + 3600, "fake_order")]
    assert res.crawlers["user_id"].to_list() == [1]
    assert res.summary()["input"] == events.height


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


# --- the synthetic world: the noise it planted must come out ---------------------------------

def precision_recall(flagged: pl.DataFrame, kept: pl.DataFrame, truth: pl.DataFrame, keys: list[str]) -> tuple[float, float]:
    """Precision of the rows a rule flagged; recall = share of true noise rows no longer kept."""
    truth = truth.select(keys).unique()
    hits = flagged.select(keys).unique().join(truth, on=keys, how="semi").height
    still_kept = truth.join(kept.select(keys).unique(), on=keys, how="semi").height
    return hits / max(flagged.select(keys).unique().height, 1), 1 - still_kept / max(truth.height, 1)


def test_cleaning_finds_the_synthetic_worlds_noise(tmp_path):
    world = pytest.importorskip("homefeed.world")
    if not all(hasattr(world, name) for name in ("generate", "load_truth")):
        pytest.skip("homefeed.world does not expose generate / load_truth yet")
    spec = world.WorldSpec.preset("tiny", seed=7)
    paths = world.generate(spec, tmp_path / "tiny")
    events = pl.read_parquet(paths["events"])
    truth = world.load_truth(tmp_path / "tiny")
    res = clean_events(events, Cleaning(), tz_offset_hours=spec.tz_offset_hours)
    by_rule = {rule: res.removed.filter(pl.col("rule") == rule) for rule in res.counts}
    crawlers = truth.crawler_users.select("user_id")
    p, r = precision_recall(res.crawlers, res.kept, crawlers, ["user_id"])
    assert p >= 0.9 and r >= 0.9, f"crawler users: precision {p:.3f}, recall {r:.3f}"
    p, r = precision_recall(by_rule["fake_order"], res.kept, truth.fake_orders, ["user_id", "item_id", "ts"])
    assert p >= 0.9 and r >= 0.9, f"fake order rows: precision {p:.3f}, recall {r:.3f}"
    p, r = precision_recall(by_rule["abnormal_window:midnight_spike"], res.kept, truth.spike_events,
                            ["user_id", "item_id", "ts"])
    assert p >= 0.9 and r >= 0.9, f"midnight spike rows: precision {p:.3f}, recall {r:.3f}"


def test_buys_in_the_logs_first_hours_are_not_judged_for_a_missing_view():
    # a log that starts mid-funnel (e.g. a two-hour slice) cannot show the views behind its first buys
    events = log([(1, 1, "pv", 0), (2, 5, "buy", 60), (3, 6, "buy", 7 * 3600)])
    assert fake_rows(events, min_history_s=6 * 3600) == [2]
    assert fake_rows(events, min_history_s=0) == [1, 2]

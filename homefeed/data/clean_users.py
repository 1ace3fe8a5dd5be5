"""Users to clean out or set aside: crawlers (judged against the log's own rates) and inactive users.

A crawler views pages faster and longer than people do. What "faster" means depends on the log:
a two-hour slice of a big shop has users with one or two events, a nine-day panel has users with
hundreds, and a log whose clock is coarse stamps many events with the same minute. So each rate
test compares a user's busiest local minute, hour and day of page views with the log's own 99th
percentile over all (user, minute / hour / day) cells, and the minute and hour tests also need
an absolute floor a person would not reach (20 page views in one minute, 120 in one hour).

    >>> crawler_users(events, CrawlerRule(), tz_offset_hours=8)                 # doctest: +SKIP
    user_id  reason                       max_pv_minute  max_pv_hour  max_pv_day  n_events  n_pv
    1041     pv_per_minute,pv_per_hour    63             210          210         214       212
"""
from __future__ import annotations

import polars as pl

from homefeed.config import CrawlerRule, InactiveRule
from homefeed.data.clean_log import conform_events
from homefeed.data.split import tz_seconds

CRAWLER_TESTS = ("pv_per_minute", "pv_per_hour", "daily_volume")


def _p99(counts: pl.Series) -> float:
    return float(counts.quantile(0.99, interpolation="nearest") or 0.0)


def crawler_table(events: pl.DataFrame, rule: CrawlerRule, *, tz_offset_hours: float) -> tuple[pl.DataFrame, dict[str, float]]:
    """Every user's busiest minute, hour and day, one Boolean column per test, and the log's limits.

    Returns (users, limits): users has user_id, max_pv_minute, max_pv_hour, max_daily (all events of
    the busiest local day), n_events, n_pv (UInt32) and the CRAWLER_TESTS as Boolean columns;
    limits maps each test to the count a busiest minute / hour / day must exceed in this log.
    """
    per_minute = (  # one pass over the log for (user, local minute); hours, days and users roll up from it
        events.lazy()
        .group_by("user_id", minute=(pl.col("ts") + tz_seconds(tz_offset_hours)) // 60)
        .agg(n=pl.len().cast(pl.UInt32), n_pv=(pl.col("behavior") == "pv").sum().cast(pl.UInt32))
        .collect()
    )
    per_hour = per_minute.group_by("user_id", hour=pl.col("minute") // 60).agg(
        n=pl.col("n").sum(), n_pv=pl.col("n_pv").sum(), max_pv_minute=pl.col("n_pv").max())
    per_day = per_hour.group_by("user_id", day=pl.col("hour") // 24).agg(
        n=pl.col("n").sum(), n_pv=pl.col("n_pv").sum(), max_pv_minute=pl.col("max_pv_minute").max(),
        max_pv_hour=pl.col("n_pv").max())
    limits = {"pv_per_minute": max(rule.max_pv_per_minute, rule.rate_factor * _p99(per_minute.filter(pl.col("n_pv") > 0)["n_pv"])),
              "pv_per_hour": max(rule.max_pv_per_hour, rule.rate_factor * _p99(per_hour.filter(pl.col("n_pv") > 0)["n_pv"])),
              "daily_volume": rule.daily_factor * _p99(per_day["n"])}
    users = per_day.group_by("user_id").agg(
        max_pv_minute=pl.col("max_pv_minute").max(), max_pv_hour=pl.col("max_pv_hour").max(),
        max_daily=pl.col("n").max(), n_events=pl.col("n").sum(), n_pv=pl.col("n_pv").sum())
    return users.with_columns(pv_per_minute=pl.col("max_pv_minute") > limits["pv_per_minute"],
                              pv_per_hour=pl.col("max_pv_hour") > limits["pv_per_hour"],
                              daily_volume=pl.col("max_daily") > limits["daily_volume"]), limits


def crawler_users(events: pl.DataFrame, rule: CrawlerRule = CrawlerRule(), *, tz_offset_hours: float,
                  skip: tuple[str, ...] = ()) -> pl.DataFrame:
    """Users who behave like bots, with why.

    Returns one row per crawler: user_id, reason (String: the tests it failed, comma-separated, of
    "pv_per_minute", "pv_per_hour", "daily_volume"; tests in `skip` do not count), max_pv_minute,
    max_pv_hour, max_daily, n_events, n_pv (UInt32), sorted by user_id. Empty when the rule is
    disabled. The limits are this log's (`crawler_table`).
    """
    users, _ = crawler_table(conform_events(events), rule, tz_offset_hours=tz_offset_hours)
    out = crawlers_of(users, [t for t in CRAWLER_TESTS if t not in skip])
    return out if rule.enabled else out.clear()


def crawlers_of(users: pl.DataFrame, tests: list[str]) -> pl.DataFrame:
    """The rows of a `crawler_table` that fail any of `tests`, with `reason`, sorted by user_id."""
    reason = pl.concat_str([pl.when(t).then(pl.lit(t)) for t in tests], separator=",", ignore_nulls=True)
    return (users.filter(pl.any_horizontal(tests) if tests else pl.lit(False))
            .select("user_id", reason.alias("reason"), "max_pv_minute", "max_pv_hour", "max_daily", "n_events", "n_pv")
            .sort("user_id"))


def inactive_users(events: pl.DataFrame, rule: InactiveRule = InactiveRule()) -> pl.DataFrame:
    """Users with fewer than `min_events` events: user_id, n_events (UInt32), sorted by user_id.

    Meant for ranking samples (too little behaviour to learn from); the event log keeps them.
    """
    counts = events.group_by("user_id").agg(n_events=pl.len())
    out = counts.filter(pl.col("n_events") < rule.min_events).sort("user_id")
    return out if rule.enabled else out.clear()

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


def _by_user_and(frame: pl.DataFrame, name: str, when: pl.Expr, aggs: dict[str, pl.Expr],
                 packed: tuple[int, int, int, int] | None) -> pl.DataFrame:
    """`frame.group_by("user_id", name=when).agg(**aggs)`. With `packed` = (lowest user, highest user,
    lowest `when`, highest `when`), both keys go into one UInt64 (user offset, then `when` offset, bit
    by bit) and are unpacked after: the same cells, about 1.5x less CPU than polars' two-key group_by."""
    plain = frame.lazy().group_by("user_id", **{name: when}).agg(**aggs)
    if packed is None:
        return plain.collect()
    u0, u1, t0, t1 = packed
    width = max(1, (t1 - t0).bit_length())
    if max(1, (u1 - u0).bit_length()) + width > 63:
        return plain.collect()
    scale = 1 << width
    schema = plain.collect_schema()
    key = (pl.col("user_id").cast(pl.Int64) - u0).cast(pl.UInt64) * scale + (when - t0).cast(pl.UInt64)
    cells = frame.lazy().group_by(key.alias("__key")).agg(**aggs).collect()
    return cells.select(((pl.col("__key") // scale).cast(pl.Int64) + u0).cast(schema["user_id"]).alias("user_id"),
                        ((pl.col("__key") % scale).cast(pl.Int64) + t0).cast(schema[name]).alias(name), *aggs)


def _packable(events: pl.DataFrame, shift: int) -> tuple[int, int, int, int] | None:
    """(lowest user, highest user, first local minute, last local minute), or None when ids are not
    integers in Int64's range or a user id or ts is missing (then the plain group_by runs)."""
    user, ts = events["user_id"], events["ts"]
    if events.height == 0 or not user.dtype.is_integer() or user.null_count() or ts.null_count():
        return None
    u0, u1 = int(user.min()), int(user.max())
    if u0 < -(1 << 62) or u1 >= 1 << 62:
        return None
    return u0, u1, (int(ts.min()) + shift) // 60, (int(ts.max()) + shift) // 60


def crawler_table(events: pl.DataFrame, rule: CrawlerRule, *, tz_offset_hours: float,
                  pack: bool = True) -> tuple[pl.DataFrame, dict[str, float]]:
    """Every user's busiest minute, hour and day, one Boolean column per test, and the log's limits.

    Returns (users, limits): users has user_id, max_pv_minute, max_pv_hour, max_daily (all events of
    the busiest local day), n_events, n_pv (UInt32) and the CRAWLER_TESTS as Boolean columns;
    limits maps each test to the count a busiest minute / hour / day must exceed in this log.
    `pack` groups (user, minute / hour / day) on one packed integer key (False: two-key group_bys;
    the same table, the rows in another order).
    """
    shift = tz_seconds(tz_offset_hours)
    b = _packable(events, shift) if pack else None
    # one pass over the log for (user, local minute); hours, days and users roll up from it
    per_minute = _by_user_and(events, "minute", (pl.col("ts") + shift) // 60, {
        "n": pl.len().cast(pl.UInt32), "n_pv": (pl.col("behavior") == "pv").sum().cast(pl.UInt32)}, b)
    per_hour = _by_user_and(per_minute, "hour", pl.col("minute") // 60, {
        "n": pl.col("n").sum(), "n_pv": pl.col("n_pv").sum(), "max_pv_minute": pl.col("n_pv").max()},
        b and (b[0], b[1], b[2] // 60, b[3] // 60))
    per_day = _by_user_and(per_hour, "day", pl.col("hour") // 24, {
        "n": pl.col("n").sum(), "n_pv": pl.col("n_pv").sum(), "max_pv_minute": pl.col("max_pv_minute").max(),
        "max_pv_hour": pl.col("n_pv").max()}, b and (b[0], b[1], b[2] // 1440, b[3] // 1440))
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

"""Cleaning: take crawlers, fake orders and abnormal time segments out of an event log.

Shop logs mix shoppers with noise that teaches a recommender the wrong lessons: crawlers make
thousands of page views that look like the most engaged users on earth, brushed ("fake") orders
buy items nobody looked at to push them up the sales ranking, and flash events such as the
00:00 Double 11 ordering rush pile buys into minutes that look nothing like normal demand. Each
rule below is a pure function of the input log with its knobs in `homefeed.config.Cleaning`.

`clean_events` runs them in this fixed order; a row removed by an earlier rule is charged to it
and no other, so `input rows == kept rows + sum(counts)`:

1. ``crawler`` (whole users): any local minute with more than `max_pv_per_minute` page views;
   or a busiest local day above `daily_factor` x the 99th percentile (nearest rank) of all
   (user, day) event counts; or at least `pv_only_min_events` events, every one a pv.
2. ``abnormal_window:<name>`` (rows): events inside a recurring daily window of local time,
   e.g. 23:50-00:10 (wrapping past midnight), optionally only some behaviours and dates, on the
   days when that window is abnormally full (more than `min_lift` x its median day; 0 = every
   day). A configured, known anomaly goes before the inferred fake-order rule that would
   otherwise also catch some of its buys.
3. ``fake_order`` (buy rows): a buy with no pv/click/fav/cart of the same item by the same user
   in the `view_lookback_s` seconds up to it (same second included: log order within a second is
   unknown); or a burst: `burst_buys` or more buys of one user whose times span at most
   `burst_window_s` seconds (every buy of the burst is fake).

Flags are computed on the whole input (a view removed by a window still proves the buyer looked),
so a rule's flags never depend on which rules ran before it. Inactive users (`inactive_users`) are
reported, not removed: they only thin out ranking samples.

    >>> res = clean_events(events, Cleaning(), tz_offset_hours=8)          # doctest: +SKIP
    >>> res.counts                                                          # doctest: +SKIP
    {'crawler': 51200, 'abnormal_window:midnight_spike': 310, 'fake_order': 742}
    >>> res.kept.height + sum(res.counts.values()) == events.height        # doctest: +SKIP
    True
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from homefeed.config import Cleaning, CrawlerRule, FakeOrderRule, InactiveRule, TimeWindow
from homefeed.data.history import group_time_key
from homefeed.data.schema import BEHAVIOR, BEHAVIORS
from homefeed.data.split import DAY_S, day_name, day_number, tz_seconds

REQUIRED = ("user_id", "item_id", "behavior", "ts")
VIEWS = ("pv", "click", "fav", "cart")  # behaviours that prove a buyer looked at the item
DEFAULT_MIN_LIFT = 3.0  # a window's day is abnormal above 3 x its median day (TimeWindow.min_lift overrides)


@dataclass
class CleanResult:
    """What `clean_events` kept and removed.

    kept : the surviving events, input order, input columns.
    removed : the removed events, input order, input columns plus `rule` (String).
    counts : rows removed per rule, in run order; every rule that ran is present, even at 0.
    crawlers : the crawler users with their `reason` (empty when the rule is off).
    """

    kept: pl.DataFrame
    removed: pl.DataFrame
    counts: dict[str, int]
    crawlers: pl.DataFrame = field(default_factory=pl.DataFrame)

    def summary(self) -> dict:
        """JSON-ready totals for an ingest report."""
        return {"input": self.kept.height + self.removed.height, "kept": self.kept.height,
                "removed": dict(self.counts), "crawler_users": self.crawlers.height}


def conform_events(events: pl.DataFrame) -> pl.DataFrame:
    """Check the event columns and give `behavior` the BEHAVIOR Enum; errors name row and value."""
    missing = [c for c in REQUIRED if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; required: {', '.join(REQUIRED)}; "
                         f"got: {', '.join(events.columns)}")
    if not events.schema["ts"].is_integer():
        raise ValueError(f"events column 'ts' must be integer unix seconds, got {events.schema['ts']}")
    if events.schema["behavior"] == BEHAVIOR:
        return events
    bad = events.with_row_index("row").filter(
        ~pl.col("behavior").cast(pl.String).is_in(list(BEHAVIORS)).fill_null(False))
    if bad.height:
        row, value = bad.row(0, named=True)["row"], bad.row(0, named=True)["behavior"]
        raise ValueError(f"events row {row}, column 'behavior': unknown value {value!r} "
                         f"({bad.height} such rows); valid: {', '.join(BEHAVIORS)}")
    return events.with_columns(pl.col("behavior").cast(pl.String).cast(BEHAVIOR))


# --- 1. crawlers -----------------------------------------------------------------------------

def crawler_users(events: pl.DataFrame, rule: CrawlerRule = CrawlerRule(), *, tz_offset_hours: float) -> pl.DataFrame:
    """Users who behave like bots, with why.

    Returns one row per crawler: user_id, reason (String: the tests it failed, comma-separated, of
    "pv_per_minute", "daily_volume", "pv_only"), max_pv_minute, max_daily, n_events, n_pv
    (UInt32), sorted by user_id. Empty when the rule is disabled.
    """
    events = conform_events(events)
    per_day = (  # one pass over the log for (user, local minute); days and users roll up from it
        events.lazy()
        .group_by("user_id", minute=(pl.col("ts") + tz_seconds(tz_offset_hours)) // 60)
        .agg(n=pl.len(), n_pv=(pl.col("behavior") == "pv").sum().cast(pl.UInt32))
        .group_by("user_id", day=pl.col("minute") // (DAY_S // 60))
        .agg(n=pl.col("n").sum(), n_pv=pl.col("n_pv").sum(), max_pv_minute=pl.col("n_pv").max())
        .collect()
    )
    p99 = per_day["n"].quantile(0.99, interpolation="nearest") or 0.0
    users = per_day.group_by("user_id").agg(
        max_pv_minute=pl.col("max_pv_minute").max(), max_daily=pl.col("n").max(),
        n_events=pl.col("n").sum(), n_pv=pl.col("n_pv").sum())
    tests = {
        "pv_per_minute": pl.col("max_pv_minute") > rule.max_pv_per_minute,
        "daily_volume": pl.col("max_daily") > rule.daily_factor * p99,
        "pv_only": (pl.col("n_events") >= rule.pv_only_min_events) & (pl.col("n_pv") == pl.col("n_events")),
    }
    reason = pl.concat_str([pl.when(t).then(pl.lit(name)) for name, t in tests.items()], separator=",",
                           ignore_nulls=True)
    out = (users.filter(pl.any_horizontal(tests.values()))
           .select("user_id", reason.alias("reason"), "max_pv_minute", "max_daily", "n_events", "n_pv"))
    return out.sort("user_id") if rule.enabled else out.clear()


# --- 2. abnormal time windows ----------------------------------------------------------------

def _clock(text: str, *, window: str, end: bool) -> int:
    """'HH:MM' -> seconds after local midnight; '24:00' is allowed as an end."""
    m = re.fullmatch(r"(\d{2}):(\d{2})", text.strip())
    h, minute = (int(m[1]), int(m[2])) if m else (-1, -1)
    if (0 <= h < 24 and 0 <= minute < 60) or (end and (h, minute) == (24, 0)):
        return h * 3600 + minute * 60
    raise ValueError(f"abnormal window {window!r}: {text!r} is not a time of day HH:MM "
                     f"(00:00 .. 23:59{', or 24:00 as end' if end else ''})")


def occurrence_day(window: TimeWindow, *, tz_offset_hours: float) -> pl.Expr:
    """Local date (days since 1970-01-01) on which the latest occurrence of `window` at or before each row started."""
    start = _clock(window.start, window=window.name, end=False)
    return (pl.col("ts") + (tz_seconds(tz_offset_hours) - start)) // DAY_S


def in_window(window: TimeWindow, *, tz_offset_hours: float) -> pl.Expr:
    """Boolean expression: the row's local time falls in `window` (and its behaviours and dates).

    The window is [start, end) in local time; end < start wraps past midnight. An occurrence
    belongs to the date on which it *starts*, so `23:50-00:10` with dates ["2017-11-10"] covers
    2017-11-10 23:50 .. 2017-11-11 00:10. Expects `ts` (unix s) and `behavior` (BEHAVIOR Enum).
    """
    start, end = _clock(window.start, window=window.name, end=False), _clock(window.end, window=window.name, end=True)
    length = DAY_S - start if end == DAY_S else (end - start) % DAY_S
    if length == 0:
        raise ValueError(f"abnormal window {window.name!r}: start {window.start} equals end {window.end}; "
                         f"use 00:00-24:00 for a whole day")
    cond = ((pl.col("ts") + (tz_seconds(tz_offset_hours) - start)) % DAY_S) < length
    unknown = sorted(set(window.behaviors) - set(BEHAVIORS))
    if unknown:
        raise ValueError(f"abnormal window {window.name!r}: unknown behaviour(s) {unknown}; "
                         f"valid: {', '.join(BEHAVIORS)}")
    if window.behaviors:
        cond = cond & pl.col("behavior").is_in(window.behaviors)
    if window.dates:
        try:
            days = [day_number(d) for d in window.dates]
        except ValueError as e:
            raise ValueError(f"abnormal window {window.name!r}, dates: {e}") from None
        cond = cond & occurrence_day(window, tz_offset_hours=tz_offset_hours).is_in(days)
    return cond


def window_days(events: pl.DataFrame, window: TimeWindow, *, tz_offset_hours: float,
                min_lift: float = DEFAULT_MIN_LIFT) -> pl.DataFrame:
    """How full `window` is on each day, and on which days it is abnormal.

    A window is a suspect, not a verdict: 00:00-00:10 buys on an ordinary night are real demand;
    only the night of a pre-sale opening is a spike. So a day's occurrence is *abnormal* when it
    holds more than `min_lift` x max(median over days, 1) matching rows; `min_lift=0` makes every
    day with a matching row abnormal (a plain recurring window).

    Returns one row per local day from the log's first to last occurrence day: day (Int64, days
    since 1970-01-01), date (String), n (UInt32 rows inside the window, 0 if none), abnormal (Boolean).
    """
    day = occurrence_day(window, tz_offset_hours=tz_offset_hours)
    lo, hi = events.select(day.min(), day.max().alias("hi")).row(0)
    counts = events.filter(in_window(window, tz_offset_hours=tz_offset_hours)).group_by(day=day).agg(n=pl.len())
    days = pl.DataFrame({"day": pl.int_range(lo or 0, (hi or -1) + 1, dtype=pl.Int64, eager=True)})
    days = days.join(counts, on="day", how="left").with_columns(pl.col("n").fill_null(0))
    threshold = min_lift * max(days["n"].median() or 0.0, 1.0)
    date = pl.col("day").map_elements(day_name, return_dtype=pl.String)  # a handful of days
    return days.select("day", date.alias("date"), "n", abnormal=pl.col("n") > threshold)


# --- 3. fake orders --------------------------------------------------------------------------

def _buys_without_view(ev: pl.DataFrame, lookback_s: int, min_history_s: int = 0) -> pl.DataFrame:
    """Buy rows (with `row`) that no same-user same-item view precedes within `lookback_s`.

    Buys in the log's first `min_history_s` are not judged: a log that starts mid-funnel cannot
    show the view that led to them (a two-hour slice would otherwise call nearly every buy fake).
    """
    start = ev["ts"].min()
    buys = ev.filter((pl.col("behavior") == "buy") & (pl.col("ts") >= (start or 0) + min_history_s))
    views = (ev.filter(pl.col("behavior").is_in(VIEWS))
             .join(buys.select("user_id", "item_id").unique(), on=["user_id", "item_id"], how="semi")
             .select("user_id", "item_id", view_ts="ts").sort("view_ts"))
    matched = buys.sort("ts").join_asof(views, left_on="ts", right_on="view_ts", by=["user_id", "item_id"],
                                        strategy="backward", tolerance=lookback_s, check_sortedness=False)
    return matched.filter(pl.col("view_ts").is_null()).drop("view_ts")


def _buy_bursts(ev: pl.DataFrame, burst_buys: int, window_s: int) -> pl.DataFrame:
    """Buy rows inside any run of >= `burst_buys` buys of one user spanning <= `window_s` seconds."""
    buys = ev.filter(pl.col("behavior") == "buy").sort("user_id", "ts", maintain_order=True)
    if buys.height == 0 or burst_buys <= 0:
        return buys.clear()
    user = (pl.col("user_id") != pl.col("user_id").shift()).fill_null(True).cum_sum() - 1
    key, _, _ = group_time_key(buys.select(user)["user_id"].to_numpy(), buys["ts"].to_numpy(), pad=window_s)
    first = np.arange(len(key))
    end = np.searchsorted(key, key + window_s, side="right")  # buys [i, end) lie within window_s of buy i
    starts = (end - first) >= burst_buys
    depth = np.cumsum(np.bincount(first[starts], minlength=len(key) + 1)
                      - np.bincount(end[starts], minlength=len(key) + 1))[:-1]
    return buys.filter(pl.Series(depth > 0))


def fake_orders(events: pl.DataFrame, rule: FakeOrderRule = FakeOrderRule()) -> pl.DataFrame:
    """Buys that look brushed: row (UInt32 position in `events`), user_id, item_id, ts, reason.

    reason is "no_view" or "burst" ("no_view" wins when both hold). Sorted by row. Empty when the
    rule is disabled.
    """
    ev = conform_events(events).select(*REQUIRED).with_row_index("row")
    parts = []
    if rule.enabled and rule.require_view:
        parts.append(_buys_without_view(ev, rule.view_lookback_s, rule.min_history_s).with_columns(reason=pl.lit("no_view")))
    if rule.enabled:
        parts.append(_buy_bursts(ev, rule.burst_buys, rule.burst_window_s).with_columns(reason=pl.lit("burst")))
    if not parts:
        return ev.clear().select("row", "user_id", "item_id", "ts").with_columns(reason=pl.lit("", pl.String))
    return (pl.concat(parts).unique("row", keep="first", maintain_order=True)
            .select("row", "user_id", "item_id", "ts", "reason").sort("row"))


# --- inactive users (reported, not removed) --------------------------------------------------

def inactive_users(events: pl.DataFrame, rule: InactiveRule = InactiveRule()) -> pl.DataFrame:
    """Users with fewer than `min_events` events: user_id, n_events (UInt32), sorted by user_id.

    Meant for ranking samples (too little behaviour to learn from); the event log keeps them.
    """
    counts = events.group_by("user_id").agg(n_events=pl.len())
    out = counts.filter(pl.col("n_events") < rule.min_events).sort("user_id")
    return out if rule.enabled else out.clear()


# --- all rules -------------------------------------------------------------------------------

def clean_events(events: pl.DataFrame, cleaning: Cleaning = Cleaning(), *, tz_offset_hours: float) -> CleanResult:
    """Run the enabled rules in order (crawler, abnormal windows as listed, fake_order).

    `tz_offset_hours` is the logs' local time (`Ingest.tz_offset_hours`). Each removed row names
    the first rule that flagged it in `removed["rule"]`; `counts` has one entry per rule that ran.
    """
    events = conform_events(events)
    names = [w.name for w in cleaning.abnormal_windows]
    if len(set(names)) != len(names):
        raise ValueError(f"abnormal window names must be unique, got {names}")
    flags: list[tuple[str, pl.Expr]] = []
    crawlers = pl.DataFrame()
    if cleaning.crawler.enabled:
        crawlers = crawler_users(events, cleaning.crawler, tz_offset_hours=tz_offset_hours)
        flags.append(("crawler", pl.col("user_id").is_in(crawlers["user_id"].implode())))
    for w in cleaning.abnormal_windows:
        lift = w.min_lift
        days = window_days(events, w, tz_offset_hours=tz_offset_hours, min_lift=lift)
        on_days = occurrence_day(w, tz_offset_hours=tz_offset_hours).is_in(days.filter("abnormal")["day"].implode())
        flags.append((f"abnormal_window:{w.name}", in_window(w, tz_offset_hours=tz_offset_hours) & on_days))
    if cleaning.fake_orders.enabled:
        mask = np.zeros(events.height, bool)
        mask[fake_orders(events, cleaning.fake_orders)["row"].to_numpy()] = True
        flags.append(("fake_order", pl.lit(pl.Series(mask))))
    if not flags:
        return CleanResult(events, events.clear().with_columns(rule=pl.lit("", pl.String)), {}, crawlers)
    rule = pl.when(flags[0][1]).then(pl.lit(flags[0][0]))
    for name, flag in flags[1:]:
        rule = rule.when(flag).then(pl.lit(name))
    labelled = events.with_columns(rule.otherwise(pl.lit(None, pl.String)).alias("__rule"))
    removed = labelled.filter(pl.col("__rule").is_not_null()).rename({"__rule": "rule"})
    n = dict(removed.group_by("rule").len().iter_rows())
    counts = {name: int(n.get(name, 0)) for name, _ in flags}
    return CleanResult(labelled.filter(pl.col("__rule").is_null()).drop("__rule"), removed, counts, crawlers)

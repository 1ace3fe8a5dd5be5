"""Abnormal daily time windows: a recurring window of local time, judged day by day against the log's own profile.

A window is a suspect, not a verdict: 00:00-00:10 buys on an ordinary night are real demand; only
the night of a pre-sale opening (the Double 11 rush) is a spike. How full the window "should" be on
a day comes from the log itself, counted in users (one user's long session at midnight is not a
spike): the window's users per user of the same behaviours outside it that day (its place in the
log's hour-of-day profile), estimated on the *other* ordinary days and scaled by this day's volume.
A day is abnormal when the window holds more than `min_lift` x the users expected, and a Poisson
count with that mean would reach it with probability below `max_p_value` / the number of days (so
an ordinary log gets any day flagged by chance with probability below `max_p_value`). Days found
abnormal are left out of the profile and the test is repeated, so a second spike day does not hide
behind the first. Only the bulk days of the log count (`clean_log.log_span`).

    >>> w = TimeWindow(name="midnight_spike", start="00:00", end="00:10", behaviors=["buy", "cart"])
    >>> window_days(events, w, tz_offset_hours=8).filter("abnormal")        # doctest: +SKIP
    day    date        rows  users  users_outside  expected  p_value  abnormal
    17499  2017-11-29  143   120    410            0.9       1e-180   true
"""
from __future__ import annotations

import re

import numpy as np
import polars as pl
from scipy.special import pdtrc  # Poisson survival; scipy.stats costs seconds to import

from homefeed.config import TimeWindow
from homefeed.data.clean_log import LogSpan, log_span
from homefeed.data.schema import BEHAVIORS
from homefeed.data.split import DAY_S, day_name, day_number, tz_seconds

PASSES = 3  # re-estimate the profile without the days found abnormal, this many times at most


def _clock(text: str, *, window: str, end: bool) -> int:
    """'HH:MM' -> seconds after local midnight; '24:00' is allowed as an end."""
    m = re.fullmatch(r"(\d{2}):(\d{2})", text.strip())
    h, minute = (int(m[1]), int(m[2])) if m else (-1, -1)
    if (0 <= h < 24 and 0 <= minute < 60) or (end and (h, minute) == (24, 0)):
        return h * 3600 + minute * 60
    raise ValueError(f"abnormal window {window!r}: {text!r} is not a time of day HH:MM "
                     f"(00:00 .. 23:59{', or 24:00 as end' if end else ''})")


def window_length(window: TimeWindow) -> int:
    """Seconds the window lasts (wrapping past midnight when end < start)."""
    start, end = _clock(window.start, window=window.name, end=False), _clock(window.end, window=window.name, end=True)
    length = DAY_S - start if end == DAY_S else (end - start) % DAY_S
    if length == 0:
        raise ValueError(f"abnormal window {window.name!r}: start {window.start} equals end {window.end}; "
                         f"use 00:00-24:00 for a whole day")
    return length


def occurrence_day(window: TimeWindow, *, tz_offset_hours: float) -> pl.Expr:
    """Local date (days since 1970-01-01) on which the latest occurrence of `window` at or before each row started."""
    start = _clock(window.start, window=window.name, end=False)
    return (pl.col("ts") + (tz_seconds(tz_offset_hours) - start)) // DAY_S


def _behaviours(window: TimeWindow) -> pl.Expr:
    unknown = sorted(set(window.behaviors) - set(BEHAVIORS))
    if unknown:
        raise ValueError(f"abnormal window {window.name!r}: unknown behaviour(s) {unknown}; "
                         f"valid: {', '.join(BEHAVIORS)}")
    return pl.col("behavior").is_in(window.behaviors) if window.behaviors else pl.lit(True)


def _dates(window: TimeWindow) -> list[int]:
    try:
        return [day_number(d) for d in window.dates]
    except ValueError as e:
        raise ValueError(f"abnormal window {window.name!r}, dates: {e}") from None


def in_window(window: TimeWindow, *, tz_offset_hours: float) -> pl.Expr:
    """Boolean expression: the row's local time falls in `window` (and its behaviours and dates).

    The window is [start, end) in local time; end < start wraps past midnight. An occurrence
    belongs to the date on which it *starts*, so `23:50-00:10` with dates ["2017-11-10"] covers
    2017-11-10 23:50 .. 2017-11-11 00:10. Expects `ts` (unix s) and `behavior` (BEHAVIOR Enum).
    """
    start = _clock(window.start, window=window.name, end=False)
    cond = ((pl.col("ts") + (tz_seconds(tz_offset_hours) - start)) % DAY_S) < window_length(window)
    cond = cond & _behaviours(window)
    if window.dates:
        cond = cond & occurrence_day(window, tz_offset_hours=tz_offset_hours).is_in(_dates(window))
    return cond


def _flag(n: np.ndarray, outside: np.ndarray, share: float, window: TimeWindow) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected, p_value, abnormal) per day; each day's profile comes from the other ordinary days."""
    prior = (1.0 - share) / share  # one pseudo-user in the window per this many outside: a flat profile
    ordinary = np.ones(len(n), bool)
    for _ in range(PASSES):
        users_in, users_out = n[ordinary].sum(), outside[ordinary].sum()
        mine_in, mine_out = np.where(ordinary, n, 0), np.where(ordinary, outside, 0)
        rate = (users_in - mine_in + 1.0) / (users_out - mine_out + prior)  # leave this day out
        expected = outside * rate
        p_value = np.where(n >= 1, pdtrc(n - 1, expected), 1.0)  # P(X >= n), = scipy.stats.poisson.sf(n - 1, .)
        abnormal = (n > window.min_lift * expected) & (p_value < window.max_p_value / len(n))
        if np.array_equal(~abnormal, ordinary):
            break
        ordinary = ~abnormal
    return expected, p_value, abnormal


def window_days(events: pl.DataFrame, window: TimeWindow, *, tz_offset_hours: float,
                span: LogSpan | None = None) -> pl.DataFrame:
    """How full `window` is on each bulk day of the log, what the log's profile expects, and which days are abnormal.

    Fullness counts *users* (a spike is many people acting at once; one user's long session at
    midnight is not), each against the users with the window's behaviours outside it that day.
    `min_lift = 0` makes every day with a matching row abnormal (a plain recurring window); `dates`
    limits abnormal days to those dates. `span` defaults to `log_span(events)`.

    Returns one row per local day of the bulk: day (Int64, days since 1970-01-01), date (String),
    rows (rows inside the window), users (distinct users inside), users_outside (distinct users
    with the window's behaviours outside it), expected (users, Float64), p_value (Float64),
    abnormal (Boolean).
    """
    span = span or log_span(events, tz_offset_hours=tz_offset_hours)
    day = occurrence_day(window, tz_offset_hours=tz_offset_hours)
    start = _clock(window.start, window=window.name, end=False)
    inside = ((pl.col("ts") + (tz_seconds(tz_offset_hours) - start)) % DAY_S) < window_length(window)
    counts = (events.filter(_behaviours(window) & span.inside())
              .group_by(day.alias("day"))
              .agg(rows=inside.sum().cast(pl.Int64), users=pl.col("user_id").filter(inside).n_unique().cast(pl.Int64),
                   users_outside=pl.col("user_id").filter(~inside).n_unique().cast(pl.Int64)))
    days = pl.DataFrame({"day": pl.int_range(span.first_day, span.last_day + 1, dtype=pl.Int64, eager=True)})
    days = days.join(counts, on="day", how="left").with_columns(pl.col("rows", "users", "users_outside").fill_null(0))
    n, outside = days["users"].to_numpy(), days["users_outside"].to_numpy()
    if window.min_lift == 0:
        expected, p_value, abnormal = np.zeros(len(n)), np.zeros(len(n)), n > 0
    else:
        expected, p_value, abnormal = _flag(n, outside, window_length(window) / DAY_S, window)
    if window.dates:
        abnormal = abnormal & np.isin(days["day"].to_numpy(), _dates(window))
    date = pl.col("day").map_elements(day_name, return_dtype=pl.String)  # a handful of days
    return days.select("day", date.alias("date"), "rows", "users", "users_outside").with_columns(
        expected=pl.Series(expected, dtype=pl.Float64), p_value=pl.Series(p_value, dtype=pl.Float64),
        abnormal=pl.Series(abnormal, dtype=pl.Boolean))


def window_rows(window: TimeWindow, days: pl.DataFrame, *, tz_offset_hours: float) -> pl.Expr:
    """Boolean expression: the row is inside `window` on one of the abnormal `days` (from `window_days`)."""
    abnormal = days.filter("abnormal")["day"].implode()
    return in_window(window, tz_offset_hours=tz_offset_hours) & occurrence_day(window, tz_offset_hours=tz_offset_hours).is_in(abnormal)

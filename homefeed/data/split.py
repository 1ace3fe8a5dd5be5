"""Time split: train on the past, validate on the next days, test on the last days.

A recommender is judged on what users do *after* it was trained, so the events are cut by time,
never at random: a random cut lets a model see tomorrow's clicks while it learns today's (leakage),
and its offline scores then promise more than it can deliver online. Days are counted in the shop's
local time (`tz_offset_hours`, +8 for China): a "day" of Taobao logs runs from local midnight to
local midnight, which is when daily habits and promotions (the 00:00 Double 11 rush) reset.

The last `test_days` local days that hold any event are test, the `valid_days` before them valid,
everything earlier train. The first and last days may be partial; they still count as days.

    >>> # events from local 2017-11-25 00:00 to 2017-12-03 23:59 (9 days), +8 h
    >>> split = time_split(events, valid_days=1, test_days=1, tz_offset_hours=8)   # doctest: +SKIP
    >>> split.valid_end - split.train_end                                            # doctest: +SKIP
    86400

The boundaries are local midnights written as unix seconds, so `TimeSplit.expr()` can label rows
without knowing the time zone.

Logs without clock times (the SASRec / S3-Rec sequence files: each user's items in order, nothing
more) get an *ordinal clock* (`ordinal_ts`): each user's events one `step_s` apart, every user's last
event at the same instant `ORDINAL_END`. `leave_one_out` then holds out each user's last event for
test and the one before for validation (Kang & McAuley, "Self-Attentive Sequential Recommendation",
ICDM 2018, and the papers that follow it) and writes that as a `TimeSplit` too, so every consumer of
the split works unchanged:

    user 7 (ordinal clock, step 60 s):  items a  b  c  d   ->  a, b train; c valid; d test
    ts                                   E-180 E-120 E-60 E    train_end = E-60, valid_end = E
"""
from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from homefeed.data.dataset import TimeSplit

DAY_S = 86_400
EPOCH = date(1970, 1, 1)


def tz_seconds(tz_offset_hours: float) -> int:
    """Offset of local time from UTC in whole seconds (5.5 h -> 19800)."""
    return int(round(tz_offset_hours * 3600))


def local_day(ts: pl.Expr | str = "ts", *, tz_offset_hours: float) -> pl.Expr:
    """Local calendar day of unix seconds, as days since 1970-01-01 (Int64; floor, so before 1970 works)."""
    t = pl.col(ts) if isinstance(ts, str) else ts
    return (t + tz_seconds(tz_offset_hours)) // DAY_S


def day_name(day: int) -> str:
    """Days since 1970-01-01 -> 'YYYY-MM-DD'."""
    return (EPOCH + timedelta(days=int(day))).isoformat()


def day_number(text: str) -> int:
    """'YYYY-MM-DD' -> days since 1970-01-01; ValueError naming the text when it is not a date."""
    try:
        return (date.fromisoformat(text) - EPOCH).days
    except ValueError:
        raise ValueError(f"{text!r} is not a date; expected YYYY-MM-DD, e.g. 2017-11-11") from None


UNITS = {"day": DAY_S, "hour": 3_600}
STRAGGLER_SHARE = 0.1  # a trailing day holding less than this share of the median day is a straggler


def last_full_day(per_day: pl.DataFrame) -> int:
    """The last day (or hour) of the log, skipping trailing stragglers: a log cut a few minutes past
    midnight must not make those few minutes the whole test day. Straggler rows stay in the test part."""
    median = float(per_day["len"].median())
    days, counts = per_day["day"].to_list(), per_day["len"].to_list()
    i = len(days) - 1
    while i > 0 and counts[i] < STRAGGLER_SHARE * median:
        i -= 1
    return int(days[i])


ORDINAL_END = 1_400_000_000
"""Where ordinal clocks end (2014-05-13 UTC): an arbitrary instant inside [ingest.ts_min, ts_max)."""
LOO_MIN_EVENTS = 3  # leave-one-out tests only users with at least this many events (SASRec's rule)


def ordinal_ts(by: str | list[str] = "user_id", *, step_s: int, end: int = ORDINAL_END) -> pl.Expr:
    """For rows already in each user's time order: the user's last row at `end`, the one before at
    `end - step_s`, and so on (Int64 `ts`). `by` names the user column(s); users need not be contiguous."""
    if step_s < 1:
        raise ValueError(f"step_s must be >= 1 second, got {step_s}")
    after = pl.len().over(by) - 1 - pl.int_range(pl.len()).over(by)  # the user's rows after this one
    return (pl.lit(end, pl.Int64) - after.cast(pl.Int64) * step_s).alias("ts")


def leave_one_out(events: pl.DataFrame, *, step_s: int, ordinal: bool,
                  min_events: int = LOO_MIN_EVENTS) -> tuple[pl.DataFrame, TimeSplit, dict]:
    """Hold out each user's last event (test) and the one before (valid), as a `TimeSplit`.

    Users with fewer than `min_events` events keep them all in train (there is nothing to learn
    from before their only item). Events are ordered by (user_id, ts), ties in input order.
    Train events keep their times (with `ordinal`, each user's train events are re-clocked to end
    one step before `train_end`, so a short user's events do not push the boundary past the rest).
    Every valid event is moved to `train_end` = one step after the last train event, every test event
    to `valid_end = train_end + step_s`: after every train event, each user's order kept.

    Returns (events sorted by user then time, the split, a JSON-ready description of what was done).
    Raises ValueError when no user has `min_events` events.
    """
    if step_s < 1:
        raise ValueError(f"step_s must be >= 1 second, got {step_s}")
    ev = events.with_row_index("__order").sort("user_id", "ts", "__order")
    n, after = pl.len().over("user_id"), pl.len().over("user_id") - 1 - pl.int_range(pl.len()).over("user_id")
    part = (pl.when((n >= min_events) & (after == 0)).then(pl.lit("test"))
            .when((n >= min_events) & (after == 1)).then(pl.lit("valid")).otherwise(pl.lit("train")))
    ev = ev.with_columns(part.alias("__part"))
    tested = int((ev["__part"] == "test").sum())
    if tested == 0:
        raise ValueError(f"leave-one-out needs users with at least {min_events} events; the largest user has "
                         f"{int(ev.group_by('user_id').len()['len'].max() or 0)}")
    train = pl.col("__part") == "train"
    if ordinal:
        train_end = ORDINAL_END - step_s
        clock = ordinal_ts(["user_id", "__part"], step_s=step_s, end=train_end - step_s)
        ev = ev.with_columns(pl.when(train).then(clock).otherwise(pl.col("ts")).alias("ts"))
    else:
        train_end = int(ev.filter(train)["ts"].max() or ORDINAL_END) + step_s
    valid_end = train_end + step_s
    ev = ev.with_columns(pl.when(pl.col("__part") == "valid").then(train_end)
                         .when(pl.col("__part") == "test").then(valid_end).otherwise(pl.col("ts")).alias("ts"))
    info = {"method": "leave_one_out", "clock": "ordinal" if ordinal else "logged", "step_s": step_s,
            "min_events": min_events, "users_tested": tested,
            "users_train_only": int(ev.filter(pl.len().over("user_id") < min_events)["user_id"].n_unique())}
    return ev.drop("__order", "__part"), TimeSplit(train_end=train_end, valid_end=valid_end), info


def time_split(events: pl.DataFrame, *, valid_days: int = 1, test_days: int = 1,
               tz_offset_hours: float = 8.0, ts: str = "ts", unit: str = "day") -> TimeSplit:
    """Cut the event log into train / valid / test by local day.

    Parameters
    ----------
    events : frame with an integer unix-seconds column `ts` (any other columns are ignored).
    valid_days, test_days : how many local days (>= 0) go to validation and test; at least one
        earlier day must remain for training.
    tz_offset_hours : local time of the logs, hours east of UTC.
    unit : "day" (default) or "hour": what valid_days and test_days count, for logs of a few hours.

    Returns
    -------
    TimeSplit with `train_end` / `valid_end` at local midnights (unix seconds):
    train = ts < train_end, valid = train_end <= ts < valid_end, test = ts >= valid_end.

    Raises ValueError when the log spans too few days, naming how many it spans and needs.
    """
    if valid_days < 0 or test_days < 0:
        raise ValueError(f"valid_days and test_days must be >= 0, got valid_days={valid_days}, test_days={test_days}")
    if ts not in events.columns:
        raise ValueError(f"events have no column {ts!r}; columns: {', '.join(events.columns)}")
    if unit not in UNITS:
        raise ValueError(f"unknown split unit {unit!r}; valid units: {', '.join(UNITS)}")
    unit_s = UNITS[unit]
    local = (pl.col(ts) + tz_seconds(tz_offset_hours)) // unit_s
    per_day = events.group_by(local.alias("day")).len().sort("day")
    if per_day.height == 0:
        raise ValueError("cannot split an empty event log (0 rows with a timestamp)")
    first, last = int(per_day["day"][0]), last_full_day(per_day)
    span, needed = last - first + 1, valid_days + test_days + 1
    if span < needed:
        raise ValueError(
            f"events span {span} local {unit}(s) ("
            + (f"{day_name(first)} .. {day_name(last)}, " if unit == "day" else "")
            + f"UTC{tz_offset_hours:+g} h) "
            f"but the split needs at least {needed}: {test_days} test + {valid_days} valid + 1 train; "
            f"lower ingest.valid_days / ingest.test_days, split by hours (--set ingest.split_unit=hour) "
            f"or provide a longer log")
    test_start_day = last - test_days + 1
    valid_end = test_start_day * unit_s - tz_seconds(tz_offset_hours)
    return TimeSplit(train_end=valid_end - valid_days * unit_s, valid_end=valid_end)

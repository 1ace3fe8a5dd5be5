"""The event log as cleaning sees it: checked columns, and the span of days its bulk covers.

Cleaning judges a log against its own distribution, so it first needs the log's own days. A few
rows far outside them (a stray timestamp a day, a month or years before the rest, rows from before
a data set's official start) must not stretch that range: a rule that compares each day with the
median day would otherwise count dozens of empty days and flag ordinary ones. `log_span` finds the
bulk: the run of days (no week-long hole inside) holding most rows, trimmed of edge days with fewer
than `min_day_share` x the median day's rows. Rows outside it are *outliers*: kept in the log,
reported with their count and time range, and ignored by the day-based rules.

    >>> span = log_span(events, tz_offset_hours=8)                      # doctest: +SKIP
    >>> span.summary()["outliers"]                                      # doctest: +SKIP
    {'rows': 4, 'first': '2017-11-24 16:45:57', 'last': '2017-11-24 23:59:46', ...}
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import polars as pl

from homefeed.data.schema import BEHAVIOR, BEHAVIORS
from homefeed.data.split import DAY_S, day_name, tz_seconds

REQUIRED = ("user_id", "item_id", "behavior", "ts")
VIEWS = ("pv", "click", "fav", "cart")  # behaviours that prove a buyer looked at the item
MAX_GAP_DAYS = 7  # a week with no row at all splits a log into separate runs of days


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


def local_time(ts: int, tz_offset_hours: float) -> str:
    """Unix seconds -> 'YYYY-MM-DD HH:MM:SS' in the log's local time."""
    moment = datetime.fromtimestamp(ts, timezone.utc) + timedelta(seconds=tz_seconds(tz_offset_hours))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class LogSpan:
    """The local days the bulk of a log covers (inclusive), and the rows outside them.

    first_day, last_day : days since 1970-01-01 (local). start_ts : the first ts inside the bulk.
    outliers : rows outside the bulk; outlier_ts : (first, last) ts of those rows, None when none.
    """

    first_day: int
    last_day: int
    start_ts: int
    outliers: int
    outlier_ts: tuple[int, int] | None
    tz_offset_hours: float

    @property
    def n_days(self) -> int:
        return self.last_day - self.first_day + 1

    def inside(self) -> pl.Expr:
        """Boolean expression: the row's local day lies in the bulk."""
        day = (pl.col("ts") + tz_seconds(self.tz_offset_hours)) // DAY_S
        return day.is_between(self.first_day, self.last_day)

    def summary(self) -> dict:
        """JSON-ready: the bulk's dates, and the outliers' count and time range (local)."""
        out = {"bulk": {"from": day_name(self.first_day), "to": day_name(self.last_day), "days": self.n_days},
               "outliers": {"rows": self.outliers}}
        if self.outlier_ts is not None:
            lo, hi = self.outlier_ts
            out["outliers"].update(first=local_time(lo, self.tz_offset_hours), last=local_time(hi, self.tz_offset_hours),
                                   first_ts=lo, last_ts=hi)
        return out


def log_span(events: pl.DataFrame, *, tz_offset_hours: float, min_day_share: float = 0.1, clock: bool = True) -> LogSpan:
    """The bulk of the log: the run of local days holding most rows, edge days of < min_day_share x the median trimmed.

    Runs are split where no row falls for more than MAX_GAP_DAYS days. `clock=False` (a log whose
    times only encode the order, `split.ordinal_ts`) takes every day as the bulk: its days say
    nothing. An empty log gives an empty span (first_day > last_day) with no outliers.
    """
    day = (pl.col("ts") + tz_seconds(tz_offset_hours)) // DAY_S
    per_day = events.group_by(day.alias("day")).agg(n=pl.len(), lo=pl.col("ts").min()).sort("day")
    if per_day.height == 0:
        return LogSpan(0, -1, 0, 0, None, tz_offset_hours)
    if not clock:
        return LogSpan(int(per_day["day"][0]), int(per_day["day"][-1]), int(per_day["lo"][0]), 0, None, tz_offset_hours)
    run = (per_day["day"].diff().fill_null(1) > MAX_GAP_DAYS).cum_sum().alias("run")
    per_day = per_day.with_columns(run)
    best = per_day.group_by("run").agg(pl.col("n").sum()).sort("n", "run", descending=[True, False])["run"][0]
    bulk = per_day.filter(pl.col("run") == best)
    floor = min_day_share * float(bulk["n"].median())
    full = bulk.filter(pl.col("n") >= floor)  # never empty: the median day passes its own floor
    first, last = int(full["day"][0]), int(full["day"][-1])
    start_ts = int(per_day.filter(pl.col("day") == first)["lo"][0])
    outside = events.filter(~day.is_between(first, last))
    outlier_ts = (int(outside["ts"].min()), int(outside["ts"].max())) if outside.height else None
    return LogSpan(first, last, start_ts, outside.height, outlier_ts, tz_offset_hours)

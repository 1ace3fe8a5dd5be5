"""Cleaning: take crawlers, fake orders and abnormal time segments out of an event log, judged against the log itself.

Shop logs mix shoppers with noise that teaches a recommender the wrong lessons: crawlers make
thousands of page views that look like the most engaged users on earth, brushed ("fake") orders
buy items nobody looked at to push them up the sales ranking, and flash events such as the
00:00 Double 11 ordering rush pile buys into minutes that look nothing like normal demand. But
what is abnormal depends on the log: a two-hour slice, a nine-day panel and a review log differ
in rates per user, per day and per hour. So every rule measures the log's own distribution first:

1. ``crawler`` (whole users, `clean_users.py`): a busiest minute / hour / day of page views far
   above this log's 99th percentile (and above what a person can do).
2. ``abnormal_window:<name>`` (rows, `clean_windows.py`): a recurring daily window of local
   time (e.g. 00:00-00:10 carts and buys) on the days when it holds far more than this log's
   hour-of-day profile predicts from its ordinary days.
3. ``fake_order`` (buy rows, `clean_orders.py`): buys with no view of the item (``no_view``), or
   bursts of such buys (``burst``).

**The guard.** A test that would remove more than `max_removed_share` of a behaviour's rows
(default 5% of buys), or a window found abnormal on more than `max_abnormal_day_share` of the
log's days, removes nothing: it is listed in `skipped` with the share it would have removed and
the setting that forces it (`cleaning.force`). Windows with `dates` or `min_lift = 0` are the
user's own statement of when to cut and are not guarded.

**Outliers.** Rows far outside the bulk of the log's days (`clean_log.log_span`) are kept and
reported with their count and time range; they do not stretch the days the rules compare.

Rules run in the order above; a row removed by an earlier rule is charged to it and no other, so
`input rows == kept rows + sum(counts)`. Flags are computed on the whole input (a view removed by
a window still proves the buyer looked), so a rule's flags never depend on which rules ran before
it. Inactive users (`inactive_users`) are reported, not removed: they only thin out ranking
samples. `save_verdicts` writes who was judged a crawler or a brusher into the dataset folder, so
ranking reuses these verdicts instead of judging the cleaned log again (`load_verdicts`).

    >>> res = clean_events(events, Cleaning(), tz_offset_hours=8)          # doctest: +SKIP
    >>> res.counts                                                          # doctest: +SKIP
    {'crawler': 51200, 'abnormal_window:midnight_spike': 310, 'fake_order': 742}
    >>> res.skipped                                                         # doctest: +SKIP
    [{'rule': 'fake_order:no_view', 'would_remove': {'rows': 101, 'buy': 101}, 'share': {'buy': 0.49}, ...}]
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from homefeed.config import Cleaning
from homefeed.data.clean_log import LogSpan, conform_events, log_span
from homefeed.data.clean_orders import FAKE_TESTS, fake_order_table, fake_orders
from homefeed.data.clean_users import CRAWLER_TESTS, crawler_table, crawler_users, crawlers_of, inactive_users
from homefeed.data.clean_windows import in_window, window_days, window_rows
from homefeed.data.schema import BEHAVIORS

__all__ = ["CleanResult", "clean_events", "conform_events", "crawler_users", "fake_orders", "in_window",
           "inactive_users", "load_verdicts", "log_span", "save_verdicts", "window_days"]

VERDICTS_FILE = "cleaning_verdicts.parquet"
SUMMARY_FILE = "cleaning.json"


@dataclass
class CleanResult:
    """What `clean_events` kept, removed and declined to remove.

    kept : the surviving events, input order, input columns.
    removed : the removed events, input order, input columns plus `rule` (String).
    counts : rows removed per rule, in run order; every rule that ran is present, even at 0.
    crawlers : the crawler users with their `reason` (empty when the rule is off).
    skipped : one dict per test the guard stopped (rule, what it would have removed, limit, force).
    span : the bulk days of the log and its outlier rows.
    abnormal_days : window name -> the dates it was found abnormal on (and cut).
    """

    kept: pl.DataFrame
    removed: pl.DataFrame
    counts: dict[str, int]
    crawlers: pl.DataFrame = field(default_factory=pl.DataFrame)
    skipped: list[dict] = field(default_factory=list)
    span: LogSpan | None = None
    abnormal_days: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready totals for an ingest report."""
        return {"input": self.kept.height + self.removed.height, "kept": self.kept.height,
                "removed": dict(self.counts), "crawler_users": self.crawlers.height,
                "removed_by_behavior": {str(b): n for b, n in self.removed.group_by("behavior").len().sort("behavior").iter_rows()},
                "skipped": self.skipped, "abnormal_days": self.abnormal_days,
                **(self.span.summary() if self.span else {})}

    def verdicts(self) -> pl.DataFrame:
        """Users judged: user_id (raw), verdict ("crawler" | "fake_orders"), n (rows removed for it, UInt32)."""
        judged = self.removed.filter(pl.col("rule").is_in(["crawler", "fake_order"]))
        return (judged.group_by("user_id", "rule").agg(n=pl.len().cast(pl.UInt32))
                .select("user_id", pl.col("rule").replace({"fake_order": "fake_orders"}).alias("verdict"), "n")
                .sort("verdict", "user_id"))


# --- the guard -------------------------------------------------------------------------------

def _counts_by_behavior(events: pl.DataFrame) -> dict[str, int]:
    """{behaviour name: rows}; grouped on the Enum codes, then named (casting every row to text first
    cost seconds on a large log)."""
    counts = events.group_by("behavior").len()
    return dict(counts.with_columns(pl.col("behavior").cast(pl.String)).iter_rows())


class Guard:
    """Decides which tests may remove what they flagged; records the ones it stops."""

    def __init__(self, events: pl.DataFrame, cleaning: Cleaning, span: LogSpan):
        unknown = sorted(set(cleaning.max_removed_share) - set(BEHAVIORS))
        bad = {b: s for b, s in cleaning.max_removed_share.items() if not 0 <= s <= 1}
        if unknown or bad:
            raise ValueError(f"cleaning.max_removed_share: {'unknown behaviour(s) ' + str(unknown) if unknown else ''}"
                             f"{'shares outside [0, 1]: ' + str(bad) if bad else ''}; valid behaviours: {', '.join(BEHAVIORS)}")
        self.events, self.cleaning, self.span = events, cleaning, span
        self.totals = _counts_by_behavior(events)
        self.skipped: list[dict] = []

    def _stop(self, entry: dict) -> bool:
        if entry["rule"] in self.cleaning.force:
            return False
        self.skipped.append(entry | {"force": f"--set 'cleaning.force=[\"{entry['rule']}\"]'"})
        return True

    def rows(self, test: str, flagged: pl.Expr) -> bool:
        """True when `test` may remove the rows `flagged` selects; else False, and it is recorded as skipped."""
        hit = self.events.filter(flagged)
        by = _counts_by_behavior(hit)
        share = {b: by.get(b, 0) / self.totals[b] for b in self.cleaning.max_removed_share if self.totals.get(b)}
        over = {b: s for b, s in share.items() if s > self.cleaning.max_removed_share[b]}
        if not over:
            return True
        why = "; ".join(f"{s:.1%} of the log's {b} rows ({by[b]:,} of {self.totals[b]:,}; limit "
                        f"{self.cleaning.max_removed_share[b]:.0%})" for b, s in over.items())
        return not self._stop({"rule": test, "would_remove": {"rows": hit.height, **by}, "share": share,
                               "limit": dict(self.cleaning.max_removed_share), "why": f"would remove {why}"})

    def blind(self, test: str, n_rows: int, because: str) -> bool:
        """Record `test` as skipped because the evidence it relies on failed the guard in `because`."""
        why = f"{because} was skipped: buys without a view are this log's normal, so a burst of them is no evidence either"
        return n_rows == 0 or not self._stop({"rule": test, "would_remove": {"rows": n_rows}, "after": because, "why": why})

    def days(self, test: str, days: pl.DataFrame) -> bool:
        """True when a window may cut the abnormal `days` it found; else False, recorded as skipped."""
        flagged = days.filter("abnormal")
        allowed = max(1, math.floor(self.cleaning.max_abnormal_day_share * self.span.n_days))
        if flagged.height <= allowed:
            return True
        return not self._stop({"rule": test, "would_flag_days": flagged.height, "days": self.span.n_days,
                               "share": flagged.height / self.span.n_days, "limit": self.cleaning.max_abnormal_day_share,
                               "dates": flagged["date"].to_list(), "would_remove": {"rows": int(flagged["rows"].sum())},
                               "why": f"abnormal on {flagged.height} of the log's {self.span.n_days} days: "
                                      f"that is the log's normal, not a spike"})


def _check_names(cleaning: Cleaning) -> None:
    names = [w.name for w in cleaning.abnormal_windows]
    if len(set(names)) != len(names):
        raise ValueError(f"abnormal window names must be unique, got {names}")
    valid = [f"crawler:{t}" for t in CRAWLER_TESTS] + [f"fake_order:{t}" for t in FAKE_TESTS] \
        + [f"abnormal_window:{n}" for n in names]
    unknown = sorted(set(cleaning.force) - set(valid))
    if unknown:
        raise ValueError(f"cleaning.force names unknown test(s) {unknown}; valid: {', '.join(valid)}")


# --- all rules -------------------------------------------------------------------------------

def clean_events(events: pl.DataFrame, cleaning: Cleaning = Cleaning(), *, tz_offset_hours: float,
                 clock: bool = True) -> CleanResult:
    """Run the enabled rules in order (crawler, abnormal windows as listed, fake_order) under the guard.

    `tz_offset_hours` is the logs' local time (`Ingest.tz_offset_hours`); `clock=False` says the
    times only encode each user's order (no outliers then: the log's days mean nothing). Each
    removed row names the first rule that flagged it in `removed["rule"]`; `counts` has one entry
    per rule that ran.
    """
    events = conform_events(events)
    _check_names(cleaning)
    span = log_span(events, tz_offset_hours=tz_offset_hours, min_day_share=cleaning.outlier_day_share, clock=clock)
    guard = Guard(events, cleaning, span)
    flags: list[tuple[str, pl.Expr]] = []
    crawlers = pl.DataFrame()
    if cleaning.crawler.enabled:
        crawlers = _crawlers(events, cleaning, guard, tz_offset_hours)
        flags.append(("crawler", pl.col("user_id").is_in(crawlers["user_id"].implode())))
    abnormal_days = {}
    for w in cleaning.abnormal_windows:
        days = window_days(events, w, tz_offset_hours=tz_offset_hours, span=span)
        if w.min_lift > 0 and not w.dates and not guard.days(f"abnormal_window:{w.name}", days):
            days = days.with_columns(abnormal=pl.lit(False))
        abnormal_days[w.name] = days.filter("abnormal")["date"].to_list()
        flags.append((f"abnormal_window:{w.name}", window_rows(w, days, tz_offset_hours=tz_offset_hours)))
    if cleaning.fake_orders.enabled:
        flags.append(("fake_order", pl.lit(pl.Series(_fake_order_mask(events, cleaning, guard, span.start_ts)))))
    return _apply(events, flags, crawlers, guard.skipped, span, abnormal_days)


def _crawlers(events: pl.DataFrame, cleaning: Cleaning, guard: Guard, tz_offset_hours: float) -> pl.DataFrame:
    """The crawler users of the tests the guard lets through (`crawler_users` columns)."""
    table, _ = crawler_table(events, cleaning.crawler, tz_offset_hours=tz_offset_hours)
    tests = [t for t in CRAWLER_TESTS
             if guard.rows(f"crawler:{t}", pl.col("user_id").is_in(table.filter(t)["user_id"].implode()))]
    return crawlers_of(table, tests)


def _fake_order_mask(events: pl.DataFrame, cleaning: Cleaning, guard: Guard, start_ts: int) -> np.ndarray:
    """(n,) bool: the buys flagged by the fake-order tests the guard lets through."""
    table = fake_order_table(events, cleaning.fake_orders, start_ts=start_ts)
    index = pl.int_range(pl.len(), dtype=pl.UInt32)
    mask = np.zeros(events.height, bool)
    viewed_log = True  # unviewed buys are evidence only in a log that records views before its buys
    for t in FAKE_TESTS:
        rows = table.filter(t)["row"].to_numpy()
        if t == "burst" and not viewed_log:
            allowed = guard.blind("fake_order:burst", len(rows), "fake_order:no_view")
        else:
            allowed = guard.rows(f"fake_order:{t}", index.is_in(pl.Series(rows).implode()))
        if allowed:
            mask[rows] = True
        elif t == "no_view":
            viewed_log = False
    return mask


def _apply(events, flags, crawlers, skipped, span, abnormal_days) -> CleanResult:
    """Label each row with the first rule that flagged it and split kept from removed."""
    if not flags:
        return CleanResult(events, events.clear().with_columns(rule=pl.lit("", pl.String)), {}, crawlers,
                           skipped, span, abnormal_days)
    rule = pl.when(flags[0][1]).then(pl.lit(flags[0][0]))
    for name, flag in flags[1:]:
        rule = rule.when(flag).then(pl.lit(name))
    labelled = events.with_columns(rule.otherwise(pl.lit(None, pl.String)).alias("__rule"))
    removed = labelled.filter(pl.col("__rule").is_not_null()).rename({"__rule": "rule"})
    n = dict(removed.group_by("rule").len().iter_rows())
    counts = {name: int(n.get(name, 0)) for name, _ in flags}
    return CleanResult(labelled.filter(pl.col("__rule").is_null()).drop("__rule"), removed, counts, crawlers,
                       skipped, span, abnormal_days)


# --- verdicts for later stages ---------------------------------------------------------------

def save_verdicts(result: CleanResult, folder: str | Path) -> dict:
    """Write the users judged (`CleanResult.verdicts`, raw ids) and the cleaning summary into a dataset folder.

    Ranking reads them back with `load_verdicts` instead of judging the cleaned log again. Returns
    the summary (for the ingest report).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.verdicts().write_parquet(folder / VERDICTS_FILE)
    summary = result.summary()
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def load_verdicts(folder: str | Path | None) -> pl.DataFrame | None:
    """The verdicts `save_verdicts` wrote into `folder`, or None when there are none (or no folder)."""
    path = Path(folder) / VERDICTS_FILE if folder is not None else None
    if path is None or not path.exists():
        return None
    table = pl.read_parquet(path)
    if table.columns != ["user_id", "verdict", "n"]:
        raise ValueError(f"{path}: expected columns user_id, verdict, n; got {', '.join(table.columns)}")
    return table

"""Ranking features computed point in time: what was known about (user, item, context) at the sample's ts.

A CTR model is only as honest as its features. Every sample is a moment `ts` (an exposure, or a
positive of the DIN protocol); each feature below uses events and exposures strictly BEFORE `ts`
(an event at exactly `ts`, such as the click being predicted, is not yet known). Five groups
(the fields of Alibaba's homepage ranker; Zhou et al., "Deep Interest Network", KDD 2018):

    user     user_id, gender, age, city, purchase_power              (profile table)
    item     item_id, leaf_category, standard_category, brand, shop, price, tags   (item table)
    context  channel (recall match type), trigger_type, position, page, hour (local hour of day)
    cross    how often the user acted on this leaf / standard category / brand / item in the
             last `cross_windows_days` days, and how often the item was already shown (fatigue)
    sequence the last L clicked items and their leaf categories, with the time gap to `ts`

`standard_category` comes from an optional `standard_category` column of the items table (the
mechanism stage's leaf -> standard mapping); without it the leaf stands in. `tags` is the item's
sorted `tags` (or `pools`) list joined to one string: one categorical value per tag set.
`trigger_type` is the user's latest behaviour on the exposure's trigger item before `ts`
("none" without a trigger, "unseen" for a trigger the user never touched).

How it stays fast: events are sorted once by (key, ts) into one int64 `group * stride + ts` key
(`homefeed.data.history.group_time_key`); one `np.searchsorted` per window then counts, for a
million samples at once, the key's events in [ts - w, ts). No per-sample Python.

    >>> raw = point_in_time(dataset, rows, FeatureSettings())                 # doctest: +SKIP
    >>> raw.frame["user_leaf_7d"][0], raw.seq["hist_item_id"].shape            # doctest: +SKIP
    (3, (1000, 20))

These are raw values (dataset codes, strings, counts); `homefeed.rank.encoders` turns them into
the model's tensors with vocabularies fitted on train only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import njit
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.history import group_time_key
from homefeed.data.schema import BEHAVIORS

DAY_S = 86_400
PROFILE = ("gender", "age", "city", "purchase_power")
CROSS_KEYS = ("leaf", "std", "brand", "item")  # user x (leaf category, standard category, brand, item)
SEQ_FIELDS = {"hist_item_id": "item_id", "hist_leaf_category": "leaf_category"}  # sequence field -> shared field


class FeatureSettings(Section):
    """Which features and how they are encoded (saved with the encoders and the model)."""

    max_len: int = Field(20, ge=1, description="L: clicked items kept in the behaviour sequence")
    seq_behaviors: list[str] = Field(default_factory=lambda: ["pv", "click"],
                                     description="behaviours that count as a click in the sequence")
    n_gap_buckets: int = Field(16, ge=3, description="time-gap buckets of sequence steps; 0 = padding")
    cross_windows_days: list[float] = Field(default_factory=lambda: [1.0, 7.0], description="cross-count windows")
    cross_behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS), description="behaviours counted")
    n_price_bands: int = Field(10, ge=2, description="price quantile bands (fitted on train)")
    min_count: int = Field(1, ge=1, description="values seen fewer times in train encode as unknown (0)")
    hash_above: int = Field(2_000_000, ge=1, description="id fields with more distinct train values are hashed")
    hash_buckets: int = Field(1_000_000, ge=1, description="buckets of a hashed id field")
    use_user_id: bool = Field(True, description="the user id itself is a feature")
    tz_offset_hours: float = Field(8.0, description="local time of the logs, for the hour-of-day feature")


@dataclass
class RawFeatures:
    """Raw feature values of N samples, row-aligned with the sample rows.

    frame: one column per scalar feature (dataset codes Int32 with 0 = unknown, Strings, Int64
        counts, Float64 price); see `scalar_columns`.
    seq: {"hist_item_id", "hist_leaf_category"} -> (N, L) int64 dataset codes, oldest first, 0-padded right.
    seq_gap_s: (N, L) int64 seconds from each step to the sample time; -1 on padding.
    """

    frame: pl.DataFrame
    seq: dict[str, np.ndarray]
    seq_gap_s: np.ndarray

    def __len__(self) -> int:
        return self.frame.height


def count_columns(settings: FeatureSettings, *, exposures: bool) -> list[str]:
    """Names of the cross-count columns, e.g. user_leaf_1d ... item_shown_7d."""
    names = [f"user_{k}_{_days(w)}d" for k in CROSS_KEYS for w in settings.cross_windows_days]
    return names + ([f"item_shown_{_days(w)}d" for w in settings.cross_windows_days] if exposures else [])


def _days(w: float) -> str:
    return f"{w:g}".replace(".", "p")


# --- point-in-time primitives -------------------------------------------------------------------

class Timeline:
    """Rows sorted once by (user, ts), looked up by (user, t) with one vectorised searchsorted.

    users: (n,) non-negative int codes; ts: (n,) int64; columns: payload arrays (n,), reordered alike.
    `bounds(q, window_s)` gives, per query, the half-open index range of the user's rows with
    ts in [t - window_s, t) (all rows before t when window_s is None).
    """

    def __init__(self, users: np.ndarray, ts: np.ndarray, **columns: np.ndarray):
        users, ts = np.asarray(users, np.int64), np.asarray(ts, np.int64)
        key, self.t0, self.stride = group_time_key(users, ts, pad=0)
        self.order = np.argsort(key, kind="stable")
        self.key, self.ts = key[self.order], ts[self.order]
        self.columns = {k: np.asarray(v)[self.order] for k, v in columns.items()}

    def __len__(self) -> int:
        return self.key.size

    def _search(self, q: "Queries", shift: int | None) -> np.ndarray:
        rel = np.zeros(len(q), np.int64) if shift is None else np.clip(q.ts - shift - self.t0, 0, self.stride - 1)
        out = np.empty(len(q), np.int64)
        out[q.order] = np.searchsorted(self.key, (q.users * self.stride + rel)[q.order], side="left")  # sorted probes
        return out

    def bounds(self, q: "Queries", window_s: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): (n_q,) int64 index ranges into the sorted rows; hi - lo is the count."""
        if len(self) == 0:
            zero = np.zeros(len(q), np.int64)
            return zero, zero
        block = self._search(q, None)
        hi = self._search(q, 0)
        return (block if window_s is None else np.maximum(self._search(q, int(window_s)), block)), hi

    def last(self, q: "Queries", n: int) -> np.ndarray:
        """(n_q, n) int64 indexes of the last n rows before t, oldest first, -1 right-padded."""
        block, hi = self.bounds(q)
        pos = np.maximum(hi - n, block)[:, None] + np.arange(n, dtype=np.int64)[None, :]
        return np.where(pos < hi[:, None], pos, -1)


class Queries:
    """Sample (user, ts) pairs with their (user, ts) sort order, computed once for every Timeline."""

    def __init__(self, users: np.ndarray, ts: np.ndarray):
        self.users, self.ts = np.asarray(users, np.int64), np.asarray(ts, np.int64)
        if self.users.size and self.users.min() < 0:
            raise ValueError("user codes must be >= 0")
        span = int(self.ts.max() - self.ts.min()) + 1 if self.ts.size else 1
        if self.users.size and (int(self.users.max()) + 1) * span < 2**62:
            self.order = np.argsort(self.users * span + (self.ts - self.ts.min()), kind="stable")
        else:
            self.order = np.lexsort((self.ts, self.users))

    def __len__(self) -> int:
        return self.users.size


@njit(cache=True)
def _window_counts(lo, hi, ev_ts, ev_keys, q_ts, q_keys, windows):  # pragma: no cover - numba
    """counts[q, k, w] = rows in [lo[q], hi[q]) with ev_keys[., k] == q_keys[q, k] > 0 and age <= windows[w]."""
    n_q, n_k = q_keys.shape
    out = np.zeros((n_q, n_k, windows.size), np.int64)
    for q in range(n_q):
        for e in range(lo[q], hi[q]):
            age = q_ts[q] - ev_ts[e]
            for k in range(n_k):
                if q_keys[q, k] > 0 and ev_keys[e, k] == q_keys[q, k]:
                    for w in range(windows.size):
                        if age <= windows[w]:
                            out[q, k, w] += 1
    return out


@njit(cache=True)
def _last_match(block, hi, ev_keys, q_keys):  # pragma: no cover - numba
    """Index of the last row in [block[q], hi[q]) whose key equals q_keys[q] (> 0), else -1."""
    out = np.full(q_keys.size, -1, np.int64)
    for q in range(q_keys.size):
        if q_keys[q] > 0:
            for e in range(hi[q] - 1, block[q] - 1, -1):
                if ev_keys[e] == q_keys[q]:
                    out[q] = e
                    break
    return out


def _gather(values: np.ndarray, pos: np.ndarray, fill) -> np.ndarray:
    """values[pos] where pos >= 0, else `fill` (also when `values` is empty)."""
    if values.size == 0:
        return np.full(pos.shape, fill, dtype=np.result_type(values.dtype, np.min_scalar_type(fill)))
    return np.where(pos >= 0, values[np.maximum(pos, 0)], fill)


def _lookup(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table[codes] with codes outside the table -> 0 (unknown)."""
    codes = np.asarray(codes, np.int64)
    inside = (codes >= 0) & (codes < table.size)
    return np.where(inside, table[np.where(inside, codes, 0)], 0)


def item_attributes(items: pl.DataFrame) -> pl.DataFrame:
    """item_id + leaf_category, standard_category, brand, shop, price, tags (String) of the item table."""
    cols = [pl.col("item_id"), pl.col("leaf_category")]
    std = "standard_category" if "standard_category" in items.columns else "leaf_category"
    cols.append(pl.col(std).cast(pl.Int64).alias("standard_category"))
    for c, dtype in (("brand", pl.Int32), ("shop", pl.Int32), ("price", pl.Float64)):
        cols.append(pl.col(c).cast(dtype) if c in items.columns else pl.lit(None, dtype).alias(c))
    tag_col = next((c for c in ("tags", "pools") if c in items.columns), None)
    if tag_col is None:
        cols.append(pl.lit(None, pl.String).alias("tags"))
    elif items.schema[tag_col] == pl.String:
        cols.append(pl.col(tag_col).alias("tags"))
    else:
        cols.append(pl.col(tag_col).cast(pl.List(pl.String)).list.sort().list.join("|").alias("tags"))
    return items.select(cols).unique("item_id", keep="first")


def _item_table(items: pl.DataFrame, column: str, size: int) -> np.ndarray:
    """(size,) int64: item code -> attribute code (0 where unknown)."""
    table = np.zeros(size, np.int64)
    ids = items["item_id"].to_numpy().astype(np.int64)
    keep = (ids >= 0) & (ids < size)
    table[ids[keep]] = items[column].fill_null(0).to_numpy().astype(np.int64)[keep]
    return table


# --- the features -------------------------------------------------------------------------------

def point_in_time(dataset: Dataset, rows: pl.DataFrame, settings: FeatureSettings) -> RawFeatures:
    """Raw features of sample `rows` from `dataset`'s events/exposures strictly before each row's ts.

    rows: user_id, item_id (dataset codes), ts (Int64); optional channel (String), position, page
        (Int), trigger_item (item code). Extra columns are ignored. Order is kept.
    """
    for c in ("user_id", "item_id", "ts"):
        if c not in rows.columns:
            raise ValueError(f"sample rows lack column {c!r}; columns: {', '.join(rows.columns)}")
    unknown = sorted(set(settings.seq_behaviors + settings.cross_behaviors) - set(BEHAVIORS))
    if unknown:
        raise ValueError(f"unknown behaviour(s) {unknown} in feature settings; valid: {', '.join(BEHAVIORS)}")
    items = item_attributes(dataset.items)
    frame = (rows.select("user_id", "item_id", "ts").with_row_index("__row")
             .join(items, on="item_id", how="left").sort("__row").drop("__row"))
    frame = frame.with_columns(*_user_profile(dataset.users, rows["user_id"]), *_context(rows, settings))

    ev = dataset.events
    size = int(max(ev["item_id"].max() or 0, items["item_id"].max() or 0, rows["item_id"].max() or 0)) + 1
    attrs = {"leaf": _item_table(items, "leaf_category", size), "std": _item_table(items, "standard_category", size),
             "brand": _item_table(items, "brand", size), "item": np.arange(size, dtype=np.int64)}
    ev_item = ev["item_id"].to_numpy().astype(np.int64)
    timeline = Timeline(ev["user_id"].to_numpy(), ev["ts"].to_numpy(), item=ev_item,
                        behavior=ev["behavior"].to_physical().to_numpy().astype(np.int64),
                        **{k: _lookup(ev_item, t) for k, t in attrs.items() if k != "item"})
    q = Queries(rows["user_id"].to_numpy(), rows["ts"].to_numpy())
    q_item = rows["item_id"].to_numpy().astype(np.int64)
    trigger = rows["trigger_item"].fill_null(0).to_numpy().astype(np.int64) if "trigger_item" in rows.columns else np.zeros(len(q), np.int64)
    frame = frame.with_columns(_trigger_type(timeline, q, trigger), *_cross_counts(timeline, q, q_item, attrs, settings))
    if dataset.exposures is not None:
        ex = dataset.exposures
        shown = Timeline(ex["user_id"].to_numpy(), ex["ts"].to_numpy(), item=ex["item_id"].to_numpy().astype(np.int64))
        frame = frame.with_columns(*_counts(shown, q, {"item": q_item}, settings, prefix="item_shown"))
    seq, gap = _sequence(timeline, q, attrs["leaf"], settings)
    return RawFeatures(frame=frame, seq=seq, seq_gap_s=gap)


def _user_profile(users: pl.DataFrame, user_ids: pl.Series) -> list[pl.Series]:
    """The profile columns for each sample's user (null where unknown)."""
    present = [c for c in PROFILE if c in users.columns]
    joined = (user_ids.to_frame("user_id").with_row_index("__row")
              .join(users.select("user_id", *present).unique("user_id", keep="first"), on="user_id", how="left")
              .sort("__row"))
    out = []
    for c in PROFILE:
        dtype = pl.String if c in ("gender", "city") else pl.Int64
        out.append(joined[c].cast(dtype) if c in present else pl.Series(c, [None] * len(joined), dtype))
    return out


def _context(rows: pl.DataFrame, settings: FeatureSettings) -> list[pl.Series]:
    """channel, position, page and local hour of day of the samples."""
    n = rows.height
    local = rows["ts"].to_numpy().astype(np.int64) + int(round(settings.tz_offset_hours * 3600))
    return [
        rows["channel"].cast(pl.String) if "channel" in rows.columns else pl.Series("channel", [None] * n, pl.String),
        *(rows[c].cast(pl.Int64) if c in rows.columns else pl.Series(c, [None] * n, pl.Int64) for c in ("position", "page")),
        pl.Series("hour", (local // 3600) % 24, pl.Int64),
    ]


def _trigger_type(timeline: Timeline, q: Queries, trigger: np.ndarray) -> pl.Series:
    """The user's latest behaviour on the trigger item before ts; 'none' without trigger, 'unseen' if never touched."""
    block, hi = timeline.bounds(q)
    last = _last_match(block, hi, timeline.columns["item"], trigger) if len(timeline) else np.full(len(q), -1)
    code = _gather(timeline.columns["behavior"], last, len(BEHAVIORS))
    names = np.array(BEHAVIORS + ("unseen", "none"), dtype=object)
    return pl.Series("trigger_type", names[np.where(trigger > 0, code, len(BEHAVIORS) + 1)], pl.String)


def _counts(timeline: Timeline, q: Queries, q_keys: dict[str, np.ndarray], settings: FeatureSettings,
            *, prefix: str = "user") -> list[pl.Series]:
    """Rows of the user's timeline matching each key in each window before ts: one numba pass."""
    windows = np.array([int(w * DAY_S) for w in settings.cross_windows_days], np.int64)
    lo, hi = timeline.bounds(q, int(windows.max()))
    ev_keys = np.stack([timeline.columns[k] for k in q_keys], axis=1) if len(timeline) else np.zeros((0, len(q_keys)), np.int64)
    counts = _window_counts(lo, hi, timeline.ts, ev_keys, q.ts, np.stack(list(q_keys.values()), axis=1), windows)
    return [pl.Series(f"{prefix}_{k}_{_days(w)}d" if prefix == "user" else f"{prefix}_{_days(w)}d", counts[:, i, j])
            for i, k in enumerate(q_keys) for j, w in enumerate(settings.cross_windows_days)]


def _cross_counts(timeline: Timeline, q: Queries, q_item: np.ndarray, attrs: dict[str, np.ndarray],
                  settings: FeatureSettings) -> list[pl.Series]:
    """user x {leaf, standard, brand, item} counts of the `cross_behaviors` events in each window."""
    counted = np.isin(timeline.columns["behavior"], [BEHAVIORS.index(b) for b in settings.cross_behaviors])
    if not counted.all():
        timeline = _subset(timeline, counted)
    return _counts(timeline, q, {k: _lookup(q_item, attrs[k]) for k in CROSS_KEYS}, settings)


def _subset(timeline: Timeline, keep: np.ndarray) -> Timeline:
    """The rows where `keep`, still sorted (a mask keeps the order: no second sort)."""
    out = Timeline.__new__(Timeline)
    out.t0, out.stride, out.order = timeline.t0, timeline.stride, timeline.order[keep]
    out.key, out.ts = timeline.key[keep], timeline.ts[keep]
    out.columns = {k: v[keep] for k, v in timeline.columns.items()}
    return out


def _sequence(timeline: Timeline, q: Queries, leaf: np.ndarray,
              settings: FeatureSettings) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Last L clicked items before ts per sample: item codes, their leaves and gaps in seconds."""
    clicks = _subset(timeline, np.isin(timeline.columns["behavior"], [BEHAVIORS.index(b) for b in settings.seq_behaviors]))
    pos = clicks.last(q, settings.max_len)  # (N, L)
    hist = _gather(clicks.columns["item"], pos, 0)
    gap = np.where(pos < 0, -1, q.ts[:, None] - _gather(clicks.ts, pos, 0))
    return {"hist_item_id": hist, "hist_leaf_category": np.where(pos < 0, 0, _lookup(hist, leaf))}, gap


def gap_bucket(gap_s: np.ndarray, n_buckets: int) -> np.ndarray:
    """Seconds before the sample -> bucket 1..n_buckets-1 by log2 of minutes; -1 (padding) -> 0.

    0-1 min -> 1, 1-3 min -> 2, 3-7 -> 3, ..., capped at n_buckets - 1 (about 11 days for 16).
    """
    gap_s = np.asarray(gap_s, np.int64)
    edges = 60 * (2 ** np.arange(1, n_buckets - 1, dtype=np.int64) - 1)  # minutes 1, 3, 7, 15, ... in seconds
    return np.where(gap_s < 0, 0, 1 + np.searchsorted(edges, gap_s, side="right"))

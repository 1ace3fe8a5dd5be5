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

class KeyedTimes:
    """Event times grouped by an int64 key, queried by (key, t): how many / which events before t.

    keys, ts: (n,) int64. Built once (one sort); every query method is one vectorised searchsorted.
    """

    def __init__(self, keys: np.ndarray, ts: np.ndarray):
        keys, ts = np.asarray(keys, np.int64), np.asarray(ts, np.int64)
        self.order = np.lexsort((ts, keys))  # (n,) positions of the input rows, sorted by (key, ts)
        self.uniq, group = np.unique(keys[self.order], return_inverse=True)
        self.ts = ts[self.order]
        self.key, self.t0, self.stride = group_time_key(group.reshape(-1), self.ts)

    def _locate(self, keys: np.ndarray, ts: np.ndarray, shift: np.ndarray | int = 0):
        """Per query: index of the first event of its key at or after ts - shift, and of the key's block."""
        keys = np.asarray(keys, np.int64)
        if self.uniq.size == 0:
            zero = np.zeros(keys.shape, np.int64)
            return zero, zero
        g = np.minimum(np.searchsorted(self.uniq, keys), self.uniq.size - 1)
        known = self.uniq[g] == keys
        base = g * self.stride
        rel = np.clip(np.asarray(ts, np.int64) - shift - self.t0, 0, self.stride - 1)
        pos = np.searchsorted(self.key, base + rel, side="left")
        block = np.searchsorted(self.key, base, side="left")
        return np.where(known, pos, 0), np.where(known, block, 0)

    def count_before(self, keys: np.ndarray, ts: np.ndarray, window_s: int | None = None) -> np.ndarray:
        """(n,) int64: events of each query's key with ts in [t - window_s, t) (all before t if None)."""
        hi, block = self._locate(keys, ts)
        lo = block if window_s is None else self._locate(keys, ts, int(window_s))[0]
        return hi - np.maximum(lo, block)

    def last_before(self, keys: np.ndarray, ts: np.ndarray, n: int) -> np.ndarray:
        """(q, n) int64 indexes into the sorted events: the last n before t, oldest first, -1 right-padded."""
        hi, block = self._locate(keys, ts)
        start = np.maximum(hi - n, block)
        pos = start[:, None] + np.arange(n, dtype=np.int64)[None, :]
        return np.where(pos < hi[:, None], pos, -1)


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
    frame = frame.with_columns(_user_profile(dataset.users, rows["user_id"]))
    frame = frame.with_columns(_context(dataset, rows, settings))

    size = int(max(dataset.events["item_id"].max() or 0, items["item_id"].max() or 0, rows["item_id"].max() or 0)) + 1
    tables = {k: _item_table(items, c, size) for k, c in
              (("leaf", "leaf_category"), ("std", "standard_category"), ("brand", "brand"))}
    frame = frame.with_columns(_cross_counts(dataset, frame, tables, settings))
    seq, gap = _sequence(dataset.events, frame, tables["leaf"], settings)
    return RawFeatures(frame=frame, seq=seq, seq_gap_s=gap)


def _user_profile(users: pl.DataFrame, user_ids: pl.Series) -> list[pl.Series]:
    """The profile columns for each sample's user (null where unknown)."""
    present = [c for c in PROFILE if c in users.columns]
    joined = (user_ids.to_frame("user_id").with_row_index("__row")
              .join(users.select("user_id", *present).unique("user_id", keep="first"), on="user_id", how="left")
              .sort("__row"))
    out = []
    for c in PROFILE:
        if c in ("gender", "city"):
            out.append(joined[c].cast(pl.String) if c in present else pl.Series(c, [None] * len(joined), pl.String))
        else:
            out.append(joined[c].cast(pl.Int64) if c in present else pl.Series(c, [None] * len(joined), pl.Int64))
    return out


def _context(dataset: Dataset, rows: pl.DataFrame, settings: FeatureSettings) -> list[pl.Series]:
    """channel, trigger_type, position, page, hour of the samples."""
    n = rows.height
    ts = rows["ts"].to_numpy().astype(np.int64)
    local = ts + int(round(settings.tz_offset_hours * 3600))
    out = [
        rows["channel"].cast(pl.String) if "channel" in rows.columns else pl.Series("channel", [None] * n, pl.String),
        *(rows[c].cast(pl.Int64) if c in rows.columns else pl.Series(c, [None] * n, pl.Int64) for c in ("position", "page")),
        pl.Series("hour", (local // 3600) % 24, pl.Int64),
    ]
    trigger = rows["trigger_item"].fill_null(0).to_numpy().astype(np.int64) if "trigger_item" in rows.columns else np.zeros(n, np.int64)
    out.append(pl.Series("trigger_type", _trigger_type(dataset.events, rows["user_id"].to_numpy(), trigger, ts), pl.String))
    return out


def _trigger_type(events: pl.DataFrame, users: np.ndarray, trigger: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(n,) str: latest behaviour of the user on the trigger item before ts; 'none' / 'unseen'."""
    stride = int(max(events["item_id"].max() or 0, trigger.max(initial=0))) + 1
    ev_keys = events["user_id"].to_numpy().astype(np.int64) * stride + events["item_id"].to_numpy().astype(np.int64)
    index = KeyedTimes(ev_keys, events["ts"].to_numpy())
    last = index.last_before(users.astype(np.int64) * stride + trigger, ts, 1)[:, 0]
    behavior = events["behavior"].to_physical().to_numpy().astype(np.int64)[index.order]
    names = np.array(BEHAVIORS + ("unseen", "none"), dtype=object)
    code = _gather(behavior, last, len(BEHAVIORS))
    return names[np.where(trigger > 0, code, len(BEHAVIORS) + 1)]


def _cross_counts(dataset: Dataset, frame: pl.DataFrame, tables: dict[str, np.ndarray],
                  settings: FeatureSettings) -> list[pl.Series]:
    """user x {leaf, standard, brand, item} event counts and item-shown counts in each window before ts."""
    ev = dataset.events.filter(pl.col("behavior").cast(pl.String).is_in(settings.cross_behaviors))
    ev_user, ev_item = ev["user_id"].to_numpy().astype(np.int64), ev["item_id"].to_numpy().astype(np.int64)
    q_user, q_item = frame["user_id"].to_numpy().astype(np.int64), frame["item_id"].to_numpy().astype(np.int64)
    ts = frame["ts"].to_numpy().astype(np.int64)
    out = []
    for k in CROSS_KEYS:
        e_val = ev_item if k == "item" else _lookup(ev_item, tables[k])
        q_val = q_item if k == "item" else _lookup(q_item, tables[k])
        stride = int(max(e_val.max(initial=0), q_val.max(initial=0))) + 1
        index = KeyedTimes(ev_user * stride + e_val, ev["ts"].to_numpy())
        keys = np.where(q_val > 0, q_user * stride + q_val, -1)  # unknown attribute: no count
        for w in settings.cross_windows_days:
            out.append(pl.Series(f"user_{k}_{_days(w)}d", index.count_before(keys, ts, int(w * DAY_S))))
    if dataset.exposures is not None:
        ex = dataset.exposures
        stride = int(max(ex["item_id"].max() or 0, q_item.max(initial=0))) + 1
        index = KeyedTimes(ex["user_id"].to_numpy().astype(np.int64) * stride + ex["item_id"].to_numpy(), ex["ts"].to_numpy())
        for w in settings.cross_windows_days:
            out.append(pl.Series(f"item_shown_{_days(w)}d", index.count_before(q_user * stride + q_item, ts, int(w * DAY_S))))
    return out


def _sequence(events: pl.DataFrame, frame: pl.DataFrame, leaf: np.ndarray,
              settings: FeatureSettings) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Last L clicked items before ts per sample: item codes, their leaves and gaps in seconds."""
    ev = events.filter(pl.col("behavior").cast(pl.String).is_in(settings.seq_behaviors))
    index = KeyedTimes(ev["user_id"].to_numpy(), ev["ts"].to_numpy())
    ts = frame["ts"].to_numpy().astype(np.int64)
    pos = index.last_before(frame["user_id"].to_numpy().astype(np.int64), ts, settings.max_len)  # (N, L)
    hist = _gather(ev["item_id"].to_numpy().astype(np.int64)[index.order], pos, 0)
    gap = np.where(pos < 0, -1, ts[:, None] - _gather(index.ts, pos, 0))
    return {"hist_item_id": hist, "hist_leaf_category": np.where(pos < 0, 0, _lookup(hist, leaf))}, gap


def gap_bucket(gap_s: np.ndarray, n_buckets: int) -> np.ndarray:
    """Seconds before the sample -> bucket 1..n_buckets-1 by log2 of minutes; -1 (padding) -> 0.

    0-1 min -> 1, 1-3 min -> 2, 3-7 -> 3, ..., capped at n_buckets - 1 (about 11 days for 16).
    """
    minutes = np.maximum(np.asarray(gap_s, np.int64), 0) // 60
    bucket = 1 + np.floor(np.log2(1 + minutes)).astype(np.int64)
    return np.where(np.asarray(gap_s) < 0, 0, np.minimum(bucket, n_buckets - 1))

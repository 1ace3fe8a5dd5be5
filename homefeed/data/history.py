"""Point-in-time history: what a user had done strictly before a given moment.

Every training sample of a sequence model (DIN, BST, MIND) pairs a target with the user's earlier
behaviour. Taking the history from the whole log instead of from *before the sample's time* leaks
the future into the features: the model then sees, say, the purchase it is asked to predict. The
helpers here cut each user's events at the query time, exclusive: an event at exactly the query's
ts is NOT history (it may be the very event being predicted).

How: events are sorted once by (user, ts) and each (user, ts) pair becomes one int64 key
`group * stride + (ts - t0)`, so one `np.searchsorted` finds, for every query at once, where that
user's events stop being earlier than the query. The last `max_len` events before that point are
gathered into list columns (most recent last). No per-query Python.

    >>> events: user 1 viewed item 10 at ts 5, bought item 11 at ts 9
    >>> history_before(events, pl.DataFrame({"user_id": [1, 1], "ts": [9, 10]}), max_len=5)   # doctest: +SKIP
    hist_item_id: [[10], [10, 11]]     (at ts 9 the buy at ts 9 is not yet history)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from homefeed.data.schema import BEHAVIOR, BEHAVIORS

HIST_COLUMNS = ("item_id", "behavior", "ts")


def group_time_key(groups: np.ndarray, ts: np.ndarray, *, pad: int = 0) -> tuple[np.ndarray, int, int]:
    """Fold (group, ts) into one sortable int64: `groups * stride + (ts - t0)`.

    `groups` are dense non-negative ints (int64, shape (n,)), `ts` int64 seconds. `stride` leaves room
    for `ts - t0 + pad` inside each group, so a search `key + pad` never reaches the next group.
    Returns (key, t0, stride). Raises ValueError if the keys would overflow int64.
    """
    if len(ts) == 0:
        return np.zeros(0, np.int64), 0, 1
    t0 = int(ts.min())
    stride = int(ts.max()) - t0 + int(pad) + 2
    if (int(groups.max()) + 1) * stride >= 2**62:
        raise ValueError(f"{int(groups.max()) + 1} groups x {stride} s is too large for an int64 key")
    return groups.astype(np.int64) * stride + (ts.astype(np.int64) - t0), t0, stride


def _ragged(values: pl.Series, starts: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """List column whose row i holds values[starts[i] : starts[i] + lengths[i]] (lengths may be 0)."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.repeat(starts.astype(np.int64) - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    gathered = values.gather(flat).rechunk().to_arrow()
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), gathered)
    return pl.Series(values.name, lists).cast(pl.List(values.dtype))


def _only(events: pl.DataFrame, behaviors: Sequence[str] | None) -> pl.DataFrame:
    """Events of the given behaviours (all when None), behavior as the BEHAVIOR Enum."""
    missing = [c for c in ("user_id", *HIST_COLUMNS) if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; columns: {', '.join(events.columns)}")
    events = events.with_columns(pl.col("behavior").cast(BEHAVIOR))
    if behaviors is None:
        return events
    unknown = sorted(set(behaviors) - set(BEHAVIORS))
    if unknown:
        raise ValueError(f"unknown behaviour(s) {unknown}; valid: {', '.join(BEHAVIORS)}")
    return events.filter(pl.col("behavior").is_in(list(behaviors)))


def history_before(events: pl.DataFrame, queries: pl.DataFrame, *, max_len: int,
                   behaviors: Sequence[str] | None = None) -> pl.DataFrame:
    """Each query's user history strictly before the query time, as list columns.

    Parameters
    ----------
    events : user_id, item_id, behavior, ts (raw or encoded ids).
    queries : user_id (same dtype as events), ts (Int64); any other columns are carried along.
    max_len : keep at most this many most recent events per query.
    behaviors : only these behaviours count as history (e.g. ["click", "buy"]); None = all.

    Returns
    -------
    `queries` in their order plus `hist_item_id` (List[item dtype]), `hist_behavior` (List[Enum]),
    `hist_ts` (List[Int64]), oldest first / most recent last, and `hist_len` (Int64). A user with no
    earlier event (or unknown to `events`) gets empty lists.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    for c in ("user_id", "ts"):
        if c not in queries.columns:
            raise ValueError(f"queries lack column {c!r}; columns: {', '.join(queries.columns)}")
    if queries["ts"].null_count():
        row = queries["ts"].is_null().arg_max()
        raise ValueError(f"queries row {row}: column 'ts' is null; every query needs a time")
    ev = _only(events, behaviors).select("user_id", *HIST_COLUMNS).sort("user_id", "ts", maintain_order=True)
    ev = ev.with_columns(group=(pl.col("user_id") != pl.col("user_id").shift()).fill_null(True).cum_sum() - 1)
    key, t0, stride = group_time_key(ev["group"].to_numpy(), ev["ts"].to_numpy())
    groups = ev.select("user_id", "group").unique("user_id", keep="first")
    q_group = queries.select(pl.col("user_id").replace_strict(groups["user_id"], groups["group"], default=-1,
                                                              return_dtype=pl.Int64))["user_id"].to_numpy()
    q_ts = np.clip(queries["ts"].to_numpy().astype(np.int64) - t0, 0, stride - 1)
    known = q_group >= 0
    pos = np.searchsorted(key, np.where(known, q_group, 0) * stride + q_ts, side="left")
    block = np.searchsorted(key, np.where(known, q_group, 0) * stride, side="left")
    lengths = np.where(known, np.minimum(pos - block, max_len), 0)
    starts = pos - lengths
    hist = {f"hist_{c}": _ragged(ev[c], starts, lengths).alias(f"hist_{c}") for c in HIST_COLUMNS}
    return queries.with_columns(**hist, hist_len=pl.Series(lengths.astype(np.int64)))


def last_events(events: pl.DataFrame, at_ts: int, *, n: int,
                behaviors: Sequence[str] | None = None) -> pl.DataFrame:
    """Each user's last `n` events with ts < `at_ts` (e.g. the triggers of i2i recall).

    Returns a long frame user_id, item_id, behavior, ts, recency (Int64; 1 = most recent), sorted by
    user_id then ts (oldest first). Events at equal ts keep their input order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return (
        _only(events, behaviors)
        .filter(pl.col("ts") < at_ts)
        .select("user_id", *HIST_COLUMNS)
        .sort("user_id", "ts", maintain_order=True)
        .group_by("user_id", maintain_order=True).tail(n)
        .with_columns(recency=pl.int_range(pl.len(), 0, -1, dtype=pl.Int64).over("user_id"))
    )

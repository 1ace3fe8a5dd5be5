"""Online ranking features: one user's candidates -> the model's tensors in well under a millisecond.

`point_in_time` + `Encoders.transform` compute features for millions of training samples at once;
run on one request (one user, ~500 candidates, one `now`) most of their cost is fixed overhead:
polars frames, joins, sorts of the whole slice, string encoding. Online everything that does not
depend on the request is done once at load, and the rest is a few numpy calls:

    at load     per item code: the encoded item fields (item_id, leaf, standard category, brand,
                shop, price band, tags) as one (n_items, F_item) int64 table, and the raw leaf /
                standard / brand codes the cross counts match on; the codes of every hour,
                trigger type and position
    per request the user's events before `now` (a `UserState`), stably sorted by time once;
                cross counts user x {leaf, std, brand, item} per window by one bincount each;
                trigger types by the last event on each trigger item; the last L "click" steps
                and their gaps; profile codes (cached per distinct value)

The result is, value for value, what `Encoders.transform(point_in_time(...))` gives on the same
one-user slice (`tests/test_rank_online.py` checks it on many states and candidate sets), so
training and serving cannot drift apart.

Exposures (the `item_shown_*` fatigue counts): training reads them from the exposure log; online
the caller passes the user's recent exposures as `(items, ts)` arrays (the serving pipeline keeps
the pages it served in the user-state store). Without them those counts are 0, which is the
training value of a user never shown the item -- a skew for users who were.

    >>> online = OnlineFeatures(encoders, bundle.items, n_items=bundle.n_items)      # doctest: +SKIP
    >>> batch = online.transform(state, items, channels=ch, names=("itemcf", "popular"),
    ...                          triggers=trig, page=0)                                 # doctest: +SKIP
    >>> batch["sparse"].shape, batch["seq"].shape                                       # doctest: +SKIP
    (torch.Size([500, 24]), torch.Size([500, 20, 2]))
"""
from __future__ import annotations

import numpy as np
import polars as pl
import torch

from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import UserState
from homefeed.rank.encoders import Encoders
from homefeed.rank.features import (CROSS_KEYS, DAY_S, PROFILE, SEQ_FIELDS, _days, _item_table, _lookup, gap_bucket,
                                    item_attributes)

TRIGGER_NAMES = BEHAVIORS + ("unseen", "none")  # trigger_type values, as in features._trigger_type
UNSEEN, NONE = len(BEHAVIORS), len(BEHAVIORS) + 1
CACHE_LIMIT = 10_000  # distinct profile / channel / page values remembered per field
DENSE_KEYS = 1 << 22  # cross counts by a bincount over the code space below this many codes


class OnlineFeatures:
    """Precomputed item-side codes plus the per-request feature code for one user's candidates.

    encoders: the fitted encoders saved with the model; items: the serving item table (dataset
    codes); n_items: rows of the item code space (vocabulary size), so every code has a row.
    """

    def __init__(self, encoders: Encoders, items: pl.DataFrame, *, n_items: int = 0,
                 user_schema: dict[str, pl.DataType] | None = None):
        self.enc, s = encoders, encoders.settings
        self.fields = {f.name: f for f in encoders.fields}
        known = {"user_id", *PROFILE, "price_band", "item_id", "leaf_category", "standard_category", "brand", "shop",
                 "tags", "channel", "trigger_type", "position", "page", "hour", *encoders.counts}
        odd = [f for f in self.fields if f not in known]
        if odd:
            raise ValueError(f"encoders have field(s) {odd} the online feature code does not compute; "
                             f"it computes: {', '.join(sorted(known))}")
        odd = [c for c in encoders.counts if c in self.fields and self.fields[c].kind != "count"]
        if odd:
            raise ValueError(f"count field(s) {odd} are not encoded as counts; the online code encodes them all as counts")
        self.user_schema = dict(user_schema or {})
        attrs = item_attributes(items)
        self.size = max(int(n_items), int(attrs["item_id"].max() or 0) + 1 if attrs.height else 1)
        self.item_names = [f.name for f in encoders.fields if f.group == "item"]
        self.item_table, self.absent = self._encode_items(attrs)
        self.keys = {"leaf": _item_table(attrs, "leaf_category", self.size),
                     "std": _item_table(attrs, "standard_category", self.size),
                     "brand": _item_table(attrs, "brand", self.size)}
        self.windows = np.array([int(w * DAY_S) for w in s.cross_windows_days], np.int64)
        self.cross_codes = np.array([BEHAVIORS.index(b) for b in s.cross_behaviors], np.int64)
        self.seq_codes = np.array([BEHAVIORS.index(b) for b in s.seq_behaviors], np.int64)
        self._is_cross = np.isin(np.arange(len(BEHAVIORS)), self.cross_codes)  # behaviour code -> counted?
        self._is_seq = np.isin(np.arange(len(BEHAVIORS)), self.seq_codes)
        self.tz_s = int(round(s.tz_offset_hours * 3600))
        self.hour_codes = self._encode_series("hour", pl.Series("hour", np.arange(24), pl.Int64))
        self.trigger_codes = self._encode_series("trigger_type", pl.Series("t", list(TRIGGER_NAMES), pl.String))
        self._cache: dict[tuple, int] = {}

    # --- load time ------------------------------------------------------------------------------
    def _encode_items(self, attrs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(size, F_item) int64 codes of every item code, and the row of an item absent from the table."""
        dtype = attrs.schema["item_id"]
        codes = pl.DataFrame({"item_id": pl.Series(np.arange(self.size + 1), dtype=pl.Int64).cast(dtype)})
        frame = (codes.with_row_index("__row").join(attrs, on="item_id", how="left").sort("__row").drop("__row"))
        table = np.zeros((self.size + 1, len(self.item_names)), np.int64)
        for j, name in enumerate(self.item_names):
            table[:, j] = self.fields[name].encode(frame["price" if name == "price_band" else name])
        return table[:-1], table[-1]  # code `size` is in no table: the absent row

    def _encode_series(self, name: str, values: pl.Series) -> np.ndarray:
        f = self.fields.get(name)
        return f.encode(values) if f is not None else np.zeros(len(values), np.int64)

    def _cached(self, name: str, value, make) -> int:
        """The code of one scalar value of field `name`, computed once per distinct value."""
        key = (name, type(value).__name__, value)
        try:
            return self._cache[key]
        except KeyError:
            pass
        except TypeError:  # unhashable value: no caching
            return int(make())
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        code = self._cache[key] = int(make())
        return code

    # --- per request ----------------------------------------------------------------------------
    def item_rows(self, items: np.ndarray) -> np.ndarray:
        """(n, F_item) encoded item fields of item codes (codes outside the table: only item_id known)."""
        inside = (items >= 0) & (items < self.size)
        rows = self.item_table[np.where(inside, items, 0)]
        if not inside.all():
            rows[~inside] = self.absent
            if "item_id" in self.item_names:
                rows[~inside, self.item_names.index("item_id")] = self.fields["item_id"].encode(items[~inside])
        return rows

    def profile_codes(self, profile: dict) -> dict[str, int]:
        """Encoded profile fields, built as the batch code builds them (column dtype, then the feature dtype)."""
        out = {}
        for c in PROFILE:
            if c not in self.fields:
                continue
            value = profile.get(c) if c in self.user_schema else None
            out[c] = self._cached(c, value, lambda c=c, value=value: self._encode_profile(c, value))
        return out

    def warm_profiles(self, users: pl.DataFrame) -> None:
        """Encode every distinct profile value in `users` now (one call per field), so that a request
        for a known user pays no per-value encoding: `profile_codes` finds them all in its cache."""
        for c in PROFILE:
            if c not in self.fields or c not in self.user_schema or c not in users.columns:
                continue
            values = users[c].cast(self.user_schema[c]).unique()
            codes = self.fields[c].encode(values.cast(_profile_dtype(c)))
            for value, code in zip(values.to_list(), codes.tolist()):
                if len(self._cache) >= CACHE_LIMIT:
                    return
                self._cache[(c, type(value).__name__, value)] = int(code)

    def _encode_profile(self, c: str, value) -> int:
        dtype = _profile_dtype(c)
        series = pl.Series(c, [value], dtype=self.user_schema[c]) if c in self.user_schema else pl.Series(c, [None], dtype)
        return int(self.fields[c].encode(series.cast(dtype))[0])

    def transform(self, state: UserState, items: np.ndarray, *, channels: np.ndarray, names: tuple[str, ...] | list[str],
                  triggers: np.ndarray, page: int = 0, position: int = 0,
                  exposures: tuple[np.ndarray, np.ndarray] | None = None,
                  shared_sequence: bool = False) -> dict[str, torch.Tensor]:
        """The model batch of `state`'s user and n candidates at `state.now`.

        items: (n,) item codes; channels: (n,) int index into `names` (the recall channel of each);
        triggers: (n,) trigger item codes (<= 0: none); exposures: the user's shown (items, ts), or None.
        Returns {"sparse" (n, F) int64, "dense" (n, Dn) float32, "seq" (n, L, S) int64, "seq_gap" (n, L) int64};
        shared_sequence=True gives the user's one history as seq (1, L, S) and seq_gap (1, L) for a
        model that broadcasts it (`RankModel`: the user-side sequence work is then done once).
        """
        items = np.asarray(items, np.int64)
        n, now = items.size, int(state.now)
        ev_item, ev_b, ev_ts = _before(state.items, state.behaviors, state.ts, now)
        cols: dict[str, np.ndarray | int] = self.profile_codes(state.profile)
        if "user_id" in self.fields:
            cols["user_id"] = int(self.fields["user_id"].encode(np.array([state.user_id], np.int64))[0])
        block = self.item_rows(items)
        for j, name in enumerate(self.item_names):
            cols[name] = block[:, j]
        cols |= self._context(items, channels, names, triggers, page, position, now, ev_item, ev_b)
        counts = self._counts(items, now, ev_item, ev_b, ev_ts, exposures)
        raw = np.stack([counts[c] for c in self.enc.counts], axis=1) if self.enc.counts else np.zeros((n, 0), np.int64)
        coded = [c for c in self.enc.counts if c in self.fields]
        if coded:  # every count field encodes alike (log2 buckets, nothing fitted): one call for all
            codes = self.fields[coded[0]].encode(raw)
            cols |= {c: codes[:, j] for j, c in enumerate(self.enc.counts) if c in self.fields}
        sparse = np.empty((n, len(self.enc.fields)), np.int64)
        for j, f in enumerate(self.enc.fields):
            sparse[:, j] = cols[f.name]
        dense = (np.log1p(raw.astype(np.float64)) - self.enc.dense_mean) / self.enc.dense_std
        seq, gap = self._sequence(now, ev_item, ev_b, ev_ts)
        if not shared_sequence:
            seq = np.ascontiguousarray(np.broadcast_to(seq, (n, *seq.shape[1:])))
            gap = np.ascontiguousarray(np.broadcast_to(gap, (n, gap.shape[1])))
        return {"sparse": torch.from_numpy(sparse), "dense": torch.from_numpy(dense.astype(np.float32)),
                "seq": torch.from_numpy(seq), "seq_gap": torch.from_numpy(gap)}

    def _context(self, items, channels, names, triggers, page, position, now, ev_item, ev_b) -> dict:
        """channel, trigger_type (per candidate), position, page, hour (one value each)."""
        f = self.fields
        encode = self._encode_series
        by_name = np.array([self._cached("channel", str(x), lambda x=x: encode("channel", pl.Series([str(x)]))[0])
                            for x in names] + [0], np.int64)
        channels = np.asarray(channels, np.int64)
        out = {"channel": by_name[np.where((channels >= 0) & (channels < len(names)), channels, len(names))]}
        out["trigger_type"] = self.trigger_codes[_trigger_types(np.asarray(triggers, np.int64), ev_item, ev_b)]
        out["hour"] = int(self.hour_codes[((now + self.tz_s) // 3600) % 24])
        for name, value in (("position", int(position)), ("page", int(page))):
            out[name] = self._cached(name, value, lambda n=name, v=value: f[n].encode(pl.Series([v], dtype=pl.Int64))[0]
                                     if n in f else 0)
        return out

    def _counts(self, items, now, ev_item, ev_b, ev_ts, exposures) -> dict[str, np.ndarray]:
        """user_{key}_{w}d and item_shown_{w}d raw counts, (n,) int64 each."""
        days = [_days(d) for d in self.enc.settings.cross_windows_days]
        counted = _member(ev_b, self._is_cross)
        c_item, age = ev_item[counted], now - ev_ts[counted]
        out = {}
        for k in CROSS_KEYS:
            table = self.keys.get(k)
            q = items if table is None else _lookup(items, table)
            e = c_item if table is None else _lookup(c_item, table)
            out |= dict(zip((f"user_{k}_{d}d" for d in days), _window_matches(e, age, q, self.windows)))
        if exposures is not None:
            x_item, _, x_ts = _before(np.asarray(exposures[0], np.int64), np.zeros(len(exposures[0]), np.int8),
                                      np.asarray(exposures[1], np.int64), now)
        else:
            x_item, x_ts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        out |= dict(zip((f"item_shown_{d}d" for d in days), _window_matches(x_item, now - x_ts, items, self.windows)))
        return out

    def _sequence(self, now, ev_item, ev_b, ev_ts) -> tuple[np.ndarray, np.ndarray]:
        """(1, L, S) encoded sequence and (1, L) gap buckets of the last L "click" steps, oldest first."""
        L = self.enc.settings.max_len
        clicks = _member(ev_b, self._is_seq)
        hist, when = ev_item[clicks][-L:], ev_ts[clicks][-L:]
        m = hist.size
        raw = {"hist_item_id": hist, "hist_leaf_category": _lookup(hist, self.keys["leaf"])}
        seq = np.zeros((1, L, len(SEQ_FIELDS)), np.int64)
        for s, (name, target) in enumerate(SEQ_FIELDS.items()):
            seq[0, :m, s] = self.fields[target].encode(raw[name])
        gap_s = np.full((1, L), -1, np.int64)
        gap_s[0, :m] = now - when
        return seq, gap_bucket(gap_s, self.enc.settings.n_gap_buckets)


def _profile_dtype(c: str) -> pl.DataType:
    """The dtype a profile field is encoded from, as the batch feature code builds it."""
    return pl.String if c in ("gender", "city") else pl.Int64


def _before(items: np.ndarray, behaviors: np.ndarray, ts: np.ndarray, now: int) -> tuple[np.ndarray, ...]:
    """The events strictly before `now`, stably sorted by time (ties keep their given order)."""
    items, behaviors, ts = np.asarray(items, np.int64), np.asarray(behaviors, np.int64), np.asarray(ts, np.int64)
    keep = ts < now
    if not keep.all():
        items, behaviors, ts = items[keep], behaviors[keep], ts[keep]
    if ts.size > 1 and (np.diff(ts) < 0).any():
        order = np.argsort(ts, kind="stable")
        items, behaviors, ts = items[order], behaviors[order], ts[order]
    return items, behaviors, ts


def _member(codes: np.ndarray, is_member: np.ndarray) -> np.ndarray:
    """(n,) bool: is_member[code] for codes inside the table, False outside (np.isin on a small code space)."""
    inside = (codes >= 0) & (codes < is_member.size)
    return inside & is_member[np.where(inside, codes, 0)]


def _window_matches(keys: np.ndarray, age: np.ndarray, queries: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(W, n) int64: per window w, how many `keys` with `age` <= windows[w] equal each query (0 for queries <= 0).

    Keys are codes (items, categories, brands): counted per window with one bincount over the code
    space, then gathered per query. Codes past DENSE_KEYS, or negative: the distinct keys (a user's
    few hundred events at most) are counted instead, and each query finds its key by searchsorted.
    """
    out = np.zeros((windows.size, queries.size), np.int64)
    if keys.size == 0:
        return out
    top = max(int(keys.max()), int(queries.max(initial=0)))
    if keys.min() >= 0 and top < DENSE_KEYS:
        q = np.where(queries > 0, queries, 0)  # bin 0 is emptied: a query <= 0 matches nothing
        for w, window in enumerate(windows):
            per_key = np.bincount(keys[age <= window], minlength=top + 1)
            per_key[0] = 0
            out[w] = per_key[q]
        return out
    uniq, inv = np.unique(keys, return_inverse=True)
    pos = np.minimum(np.searchsorted(uniq, queries), uniq.size - 1)
    hit = (uniq[pos] == queries) & (queries > 0)
    for w, window in enumerate(windows):
        per_key = np.bincount(inv[age <= window], minlength=uniq.size)
        out[w] = np.where(hit, per_key[pos], 0)
    return out


def _trigger_types(triggers: np.ndarray, ev_item: np.ndarray, ev_b: np.ndarray) -> np.ndarray:
    """Index into TRIGGER_NAMES: the latest behaviour on each trigger item, UNSEEN, or NONE (trigger <= 0)."""
    out = np.where(triggers > 0, UNSEEN, NONE)
    if ev_item.size:
        uniq, first_rev = np.unique(ev_item[::-1], return_index=True)  # first from the end = latest
        last_b = ev_b[ev_item.size - 1 - first_rev]
        i = np.minimum(np.searchsorted(uniq, triggers), uniq.size - 1)
        hit = (triggers > 0) & (uniq[i] == triggers)
        out = np.where(hit, last_b[i], out)
    return out


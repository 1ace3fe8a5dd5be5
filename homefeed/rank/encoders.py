"""Encoders: raw feature values -> the model's int64 codes and float32 values, fitted on train only.

Fitting on the training part alone is what keeps offline scores honest: an item first seen in the
test days must look to the model exactly as it will online, i.e. unknown (code 0). Four kinds:

    vocab   sorted distinct train values seen >= min_count times -> codes 1..n (ids, strings, small ints)
    hash    id spaces with more than `hash_above` distinct values -> 1 + splitmix64(id) % buckets
    band    price -> quantile band of the train prices (1..n; 0 unknown)
    count   a behaviour count -> log2 bucket (0 -> 1, 1 -> 2, 2-3 -> 3, ... capped): no fitting needed

Counts also become dense values: log1p(count) standardised with the train mean and std.
Sequence fields encode with the encoder of the field whose embedding they share (`hist_item_id`
with `item_id`), which is also fitted on the items of the train sequences.

    >>> enc = Encoders.fit(raw_train, FeatureSettings())        # doctest: +SKIP
    >>> batch = enc.transform(raw_test)                         # {"sparse": (N, F) int64, ...}  # doctest: +SKIP
    >>> enc.save("out/rank"); Encoders.load("out/rank").spec == enc.spec        # doctest: +SKIP
    True

Saved as `encoders.json` (settings, spec, per-field kind, band edges, dense mean/std) plus
`encoders.npz` (the vocabularies; loaded with allow_pickle=False).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from homefeed.rank.features import PROFILE, SEQ_FIELDS, FeatureSettings, RawFeatures, count_columns, gap_bucket
from homefeed.rank.spec import DenseField, FeatureSpec, SequenceField, SparseField

ID_FIELDS = ("user_id", "item_id", "leaf_category", "standard_category", "brand", "shop")  # 0 = unknown code
ITEM_FIELDS = ("item_id", "leaf_category", "standard_category", "brand", "shop", "price", "tags")
CONTEXT_FIELDS = ("channel", "trigger_type", "position", "page", "hour")
COUNT_BUCKETS = 18  # count codes 1..17 (+ unknown 0)
MISSING = -(2**62)
DENSE_LIMIT = 1 << 26  # int vocabularies whose values are all in [0, this) encode by a lookup table


@dataclass
class FieldCode:
    """How one sparse field is encoded. `values` (vocab): sorted int64 or str array; `edges` (band)."""

    name: str
    group: str
    kind: str  # vocab | hash | band | count
    values: np.ndarray | None = None
    edges: np.ndarray | None = None
    buckets: int = 0
    _table: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        return {"vocab": lambda: len(self.values) + 1, "hash": lambda: self.buckets + 1,
                "band": lambda: len(self.edges) + 2, "count": lambda: COUNT_BUCKETS}[self.kind]()

    def encode(self, x) -> np.ndarray:
        """Raw values (pl.Series or int ndarray of any shape) -> int64 codes of the same shape, 0 = unknown."""
        if self.kind == "count":
            c = np.asarray(x, np.int64)
            return np.minimum(np.where(c <= 0, 1, 2 + np.floor(np.log2(np.maximum(c, 1))).astype(np.int64)), COUNT_BUCKETS - 1)
        if self.kind == "band":
            p = pl.Series(x).cast(pl.Float64).fill_nan(None).fill_null(np.nan).to_numpy()
            return np.where(np.isfinite(p), 1 + np.searchsorted(self.edges, p, side="right"), 0).astype(np.int64)
        if self.values is not None and self.values.dtype.kind == "U":
            s = pl.Series(x).cast(pl.String)
            return s.replace_strict(self.values, np.arange(1, len(self.values) + 1), default=0,
                                    return_dtype=pl.Int64).fill_null(0).to_numpy()
        v = _ints(x, self.name)
        if self.kind == "hash":
            return np.where(v == MISSING, 0, 1 + (_splitmix64(v) % np.uint64(self.buckets)).astype(np.int64))
        if len(self.values) == 0:
            return np.zeros(v.shape, np.int64)
        if self.values[0] >= 0 and self.values[-1] < DENSE_LIMIT:  # small non-negative ints: one gather
            if self._table is None:
                self._table = np.zeros(int(self.values[-1]) + 1, np.int64)
                self._table[self.values] = np.arange(1, len(self.values) + 1)
            inside = (v >= 0) & (v < self._table.size)
            return np.where(inside, self._table[np.where(inside, v, 0)], 0)
        i = np.minimum(np.searchsorted(self.values, v), len(self.values) - 1)
        return np.where((self.values[i] == v) & (v != MISSING), i + 1, 0).astype(np.int64)


def _ints(x, name: str) -> np.ndarray:
    """int64 array with nulls (and 0 in id fields: the unknown code) as MISSING."""
    v = pl.Series(x).cast(pl.Int64).fill_null(MISSING).to_numpy() if isinstance(x, pl.Series) else np.asarray(x, np.int64)
    return np.where(v == 0, MISSING, v) if name in ID_FIELDS or name in SEQ_FIELDS else v


def _splitmix64(v: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mix (splitmix64 finaliser): hashing that is the same on every machine and run."""
    z = v.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _fit_vocab(name: str, group: str, values: np.ndarray | pl.Series, settings: FeatureSettings) -> FieldCode:
    if isinstance(values, pl.Series) and values.dtype == pl.String:
        counts = values.drop_nulls().filter(values.drop_nulls() != "").value_counts()
        keep = counts.filter(pl.col("count") >= settings.min_count).get_column(values.name).sort()
        return FieldCode(name, group, "vocab", values=keep.to_numpy().astype(str))
    v = _ints(values, name)
    uniq, n = np.unique(v[v != MISSING], return_counts=True)
    uniq = uniq[n >= settings.min_count]
    if name in ID_FIELDS and uniq.size > settings.hash_above:
        return FieldCode(name, group, "hash", buckets=settings.hash_buckets)
    return FieldCode(name, group, "vocab", values=uniq.astype(np.int64))


def _fit_band(name: str, prices: pl.Series, n_bands: int) -> FieldCode:
    p = prices.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    edges = np.unique(np.quantile(p, np.arange(1, n_bands) / n_bands)) if p.size else np.zeros(0)
    return FieldCode(name, "item", "band", edges=edges)


class Encoders:
    """The fitted encoders of every feature, and the FeatureSpec they produce.

    Attributes: settings; fields (list[FieldCode], the sparse fields in spec order); dense_names;
    dense_mean, dense_std ((Dn,) float64); spec (FeatureSpec).
    """

    def __init__(self, settings: FeatureSettings, fields: list[FieldCode], counts: list[str],
                 dense_mean: np.ndarray, dense_std: np.ndarray):
        self.settings, self.fields, self.counts = settings, fields, counts
        self.dense_mean, self.dense_std = np.asarray(dense_mean, np.float64), np.asarray(dense_std, np.float64)
        self.spec = FeatureSpec(
            sparse=[SparseField(name=f.name, vocab_size=f.vocab_size, group=f.group) for f in fields],
            dense=[DenseField(name=f"{c}_log", group="cross") for c in counts],
            sequence=[SequenceField(name=s, shares=t) for s, t in SEQ_FIELDS.items()],
            max_len=settings.max_len, n_gap_buckets=settings.n_gap_buckets)

    @classmethod
    def fit(cls, raw: RawFeatures, settings: FeatureSettings) -> "Encoders":
        """Fit every encoder on `raw` (the TRAIN part's raw features)."""
        f = raw.frame
        user = (["user_id"] if settings.use_user_id else []) + list(PROFILE)
        fields = [_fit_vocab(c, "user", f[c], settings) for c in user]
        for c in ITEM_FIELDS:
            if c == "price":
                fields.append(_fit_band("price_band", f["price"], settings.n_price_bands))
                continue
            shared = [s for s, t in SEQ_FIELDS.items() if t == c]
            values = f[c] if not shared else np.concatenate([_ints(f[c], c), *(raw.seq[s].ravel() for s in shared)])
            fields.append(_fit_vocab(c, "item", values, settings))
        fields += [_fit_vocab(c, "context", f[c], settings) for c in CONTEXT_FIELDS]
        counts = [c for c in count_columns(settings, exposures=True) if c in f.columns]
        fields += [FieldCode(c, "cross", "count") for c in counts]
        logs = np.log1p(np.stack([f[c].to_numpy() for c in counts], axis=1).astype(np.float64)) if counts else np.zeros((len(f), 0))
        std = logs.std(axis=0) if len(f) else np.ones(len(counts))
        return cls(settings, fields, counts, logs.mean(axis=0) if len(f) else np.zeros(len(counts)), np.where(std > 0, std, 1.0))

    def transform(self, raw: RawFeatures) -> dict[str, torch.Tensor]:
        """Raw features -> {"sparse" (N, F) int64, "dense" (N, Dn) float32, "seq" (N, L, S) int64, "seq_gap" (N, L) int64}."""
        f = raw.frame
        missing = [c for c in self.counts if c not in f.columns]
        if missing:
            raise ValueError(f"raw features lack column(s) {missing} the encoders were fitted with; "
                             "were the train samples built with exposures and these without?")
        by_name = {c.name: c for c in self.fields}
        sparse = np.stack([c.encode(f["price" if c.name == "price_band" else c.name]) for c in self.fields], axis=1)
        logs = np.log1p(np.stack([f[c].to_numpy() for c in self.counts], axis=1).astype(np.float64)) if self.counts else np.zeros((len(f), 0))
        dense = (logs - self.dense_mean) / self.dense_std
        seq = np.stack([by_name[t].encode(raw.seq[s]) for s, t in SEQ_FIELDS.items()], axis=2)
        seq[raw.seq_gap_s < 0] = 0
        return {"sparse": torch.from_numpy(np.ascontiguousarray(sparse, np.int64)),
                "dense": torch.from_numpy(dense.astype(np.float32)),
                "seq": torch.from_numpy(np.ascontiguousarray(seq, np.int64)),
                "seq_gap": torch.from_numpy(gap_bucket(raw.seq_gap_s, self.settings.n_gap_buckets))}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"settings": self.settings.model_dump(), "spec": self.spec.model_dump(), "counts": self.counts,
                "dense_mean": self.dense_mean.tolist(), "dense_std": self.dense_std.tolist(),
                "fields": [{"name": c.name, "group": c.group, "kind": c.kind, "buckets": c.buckets,
                            "edges": None if c.edges is None else c.edges.tolist()} for c in self.fields]}
        (folder / "encoders.json").write_text(json.dumps(meta, indent=1))
        np.savez(folder / "encoders.npz", **{c.name: c.values for c in self.fields if c.values is not None})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Encoders":
        folder = Path(folder)
        meta = json.loads((folder / "encoders.json").read_text())
        with np.load(folder / "encoders.npz", allow_pickle=False) as arrays:
            fields = [FieldCode(m["name"], m["group"], m["kind"], buckets=m["buckets"],
                                values=arrays[m["name"]] if m["name"] in arrays.files else None,
                                edges=None if m["edges"] is None else np.asarray(m["edges"], np.float64)) for m in meta["fields"]]
        enc = cls(FeatureSettings(**meta["settings"]), fields, meta["counts"], meta["dense_mean"], meta["dense_std"])
        if enc.spec.model_dump() != meta["spec"]:
            raise ValueError(f"{folder / 'encoders.json'}: the saved spec differs from the one its encoders produce")
        return enc

"""A bundle loaded into memory: what one request needs, ready to use (no disk access per request).

Loading verifies every checksum first (`bundle.verify`), so a half-copied bundle never serves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from homefeed.data.schema import BEHAVIOR
from homefeed.data.vocab import Vocab
from homefeed.mechanism.purchase_filter import BlockingPeriods
from homefeed.mechanism.scatter import DIMENSIONS, ItemAttributes
from homefeed.recall import Merger, Recaller
from homefeed.recall.part import RecallPart
from homefeed.bundle.manifest import verify


def load_history(path: Path, vocabs: dict[str, Vocab]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """recent_events.parquet (raw ids) -> CSR arrays by user code, each user's events oldest first."""
    ev = pl.read_parquet(path)
    ev = ev.with_columns(vocabs["user"].encode_expr("user_raw", "user"), vocabs["item"].encode_expr("item_raw", "item"),
                         pl.col("behavior").cast(BEHAVIOR).to_physical().cast(pl.Int8).alias("b")).sort("user", "ts")
    counts = np.bincount(ev["user"].to_numpy(), minlength=vocabs["user"].size)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, ev["item"].to_numpy().astype(np.int32), ev["b"].to_numpy(), ev["ts"].to_numpy().astype(np.int64)


@dataclass
class ServingBundle:
    """Everything loaded from one bundle folder.

    Attributes:
        items: the serving item table (codes, standard_category, image_group, pools...).
        standard_of: (n_items + 1,) int64 standard category per item code (-1 unknown).
        pool_mask: slot/pool name -> (n_items + 1,) bool, which items a slot may show.
        venue_of: (n_items + 1,) int64 venue per item code (-1 none).
        raw_item: (n_items + 1,) object array, item code -> raw id string ('' for code 0).
    """

    path: Path
    manifest: dict
    vocabs: dict[str, Vocab]
    items: pl.DataFrame
    users: pl.DataFrame
    channels: dict[str, Recaller]
    merger: Merger
    attributes: ItemAttributes
    periods: BlockingPeriods
    standard_of: np.ndarray
    venue_of: np.ndarray
    raw_item: np.ndarray
    pool_mask: dict[str, np.ndarray] = field(default_factory=dict)
    history: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # CSR by user code: indptr, items, behaviors, ts
    profiles: dict[int, dict] = field(default_factory=dict)
    ranker: object | None = None

    @property
    def version(self) -> str:
        """The bundle's content hash (`bundle.manifest.content_version`)."""
        return self.manifest.get("version") or self.manifest.get("updated", "")

    @property
    def n_items(self) -> int:
        return self.vocabs["item"].size

    @classmethod
    def load(cls, path: str | Path) -> "ServingBundle":
        path = Path(path)
        manifest = verify(path, parts=("mechanism", "data", "recall"))
        vocabs = {p.stem: Vocab.load(p) for p in sorted((path / "data" / "vocab").glob("*.parquet"))}
        items = pl.read_parquet(path / "data" / "items.parquet")
        items = items.with_columns([pl.lit(None, pl.Int64).alias(d) for d in DIMENSIONS if d not in items.columns])
        users = pl.read_parquet(path / "data" / "users.parquet")
        n = vocabs["item"].size
        codes = items["item_id"].to_numpy()
        standard_of = np.full(n, -1, np.int64)
        standard_of[codes] = items["standard_category"].fill_null(-1).to_numpy()
        venue_of = np.full(n, -1, np.int64)
        if "venue" in items.columns:
            venue_of[codes] = items["venue"].fill_null(-1).to_numpy()
        raw_item = np.full(n, "", dtype=object)
        raw_item[vocabs["item"].table["code"].to_numpy()] = vocabs["item"].table["raw"].cast(pl.String).to_list()
        pool_mask = {}
        if "pools" in items.columns:
            exploded = items.select("item_id", "pools").explode("pools").drop_nulls()
            for pool, group in exploded.group_by("pools"):
                mask = np.zeros(n, bool)
                mask[group["item_id"].to_numpy()] = True
                pool_mask[str(pool[0])] = mask
        recall = RecallPart.load(path / "recall")
        bundle = cls(path=path, manifest=manifest, vocabs=vocabs, items=items, users=users, channels=recall.channels,
                     merger=recall.merger,
                     attributes=ItemAttributes.from_items(items),
                     periods=BlockingPeriods.load(path / "mechanism" / "blocking_periods.parquet"),
                     standard_of=standard_of, venue_of=venue_of, raw_item=raw_item, pool_mask=pool_mask)
        bundle.history = load_history(path / "data" / "recent_events.parquet", vocabs)
        cols = [c for c in ("gender", "age", "city", "purchase_power") if c in users.columns]
        bundle.profiles = {row.pop("user_id"): row for row in users.select("user_id", *cols).iter_rows(named=True)}
        if (path / "rank").exists() and "rank" in manifest["parts"]:
            from homefeed.serve.ranker import ServedRanker

            bundle.ranker = ServedRanker.load(path / "rank", items=items, users=users, vocabs=vocabs)
        return bundle

    def past(self, user_code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The user's events known when the bundle was built: item codes, behaviour codes, ts (oldest first)."""
        indptr, items, behaviors, ts = self.history
        if not 0 < user_code < len(indptr) - 1:
            return items[:0], behaviors[:0], ts[:0]
        lo, hi = indptr[user_code], indptr[user_code + 1]
        return items[lo:hi], behaviors[lo:hi], ts[lo:hi]

    def raw_venue(self, code: int) -> str:
        vocab = self.vocabs.get("venue")
        if vocab is None or code <= 0:
            return str(code)
        return str(vocab.decode(pl.Series([code], dtype=pl.Int32))[0])

    def item_code(self, raw: str) -> int:
        return self.vocabs["item"].code_of(raw)

    def user_code(self, raw: str) -> int:
        return self.vocabs["user"].code_of(raw)

"""An ingested dataset: the encoded tables, their vocabularies and the time split, in one folder.

Layout of `DATASET/` (written by `homefeed ingest`):

    events.parquet  exposures.parquet (optional)  items.parquet  users.parquet
    vocab/<space>.parquet      one per id space (user, item, leaf_category, brand, shop, venue)
    split.json                 {"train_end": ts, "valid_end": ts}: train < train_end <= valid < valid_end <= test
    report.json                what ingest kept, quarantined and removed, per reason
    quarantine.parquet         every rejected row with its `reason`

    >>> ds = Dataset.load("out/tiny_ds")                       # doctest: +SKIP
    >>> train = ds.events_in("train")                          # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from homefeed.data.schema import CONTRACTS, EVENTS, EXPOSURES, ITEMS, USERS
from homefeed.data.vocab import Vocab


@dataclass(frozen=True)
class TimeSplit:
    """Half-open time ranges: train [.., train_end), valid [train_end, valid_end), test [valid_end, ..)."""

    train_end: int
    valid_end: int

    def __post_init__(self):
        if self.train_end > self.valid_end:
            raise ValueError(f"train_end {self.train_end} is after valid_end {self.valid_end}")

    def expr(self, ts: str = "ts") -> pl.Expr:
        """A polars expression naming each row's part: 'train', 'valid' or 'test'."""
        t = pl.col(ts)
        return (
            pl.when(t < self.train_end).then(pl.lit("train"))
            .when(t < self.valid_end).then(pl.lit("valid"))
            .otherwise(pl.lit("test"))
        )

    def bounds(self, part: str) -> tuple[int | None, int | None]:
        """[start, end) of one part; None means open."""
        try:
            return {"train": (None, self.train_end), "valid": (self.train_end, self.valid_end),
                    "test": (self.valid_end, None)}[part]
        except KeyError:
            raise ValueError(f"unknown split part {part!r}; valid parts: train, valid, test") from None

    def filter(self, df: pl.DataFrame, part: str, ts: str = "ts") -> pl.DataFrame:
        lo, hi = self.bounds(part)
        cond = pl.lit(True)
        if lo is not None:
            cond = cond & (pl.col(ts) >= lo)
        if hi is not None:
            cond = cond & (pl.col(ts) < hi)
        return df.filter(cond)


@dataclass
class Dataset:
    """Encoded tables + vocabularies + split. `exposures` is None for logs without impressions."""

    events: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    split: TimeSplit
    vocabs: dict[str, Vocab] = field(default_factory=dict)
    exposures: pl.DataFrame | None = None
    path: Path | None = None

    def events_in(self, part: str) -> pl.DataFrame:
        return self.split.filter(self.events, part)

    def exposures_in(self, part: str) -> pl.DataFrame | None:
        return None if self.exposures is None else self.split.filter(self.exposures, part)

    @property
    def n_items(self) -> int:
        """Rows of an item embedding table: every item code plus the unknown code 0."""
        return self.vocabs["item"].size if "item" in self.vocabs else int(self.items["item_id"].max()) + 1

    @property
    def n_users(self) -> int:
        return self.vocabs["user"].size if "user" in self.vocabs else int(self.users["user_id"].max()) + 1

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        (path / "vocab").mkdir(parents=True, exist_ok=True)
        self.events.write_parquet(path / "events.parquet")
        self.items.write_parquet(path / "items.parquet")
        self.users.write_parquet(path / "users.parquet")
        if self.exposures is not None:
            self.exposures.write_parquet(path / "exposures.parquet")
        for name, vocab in self.vocabs.items():
            vocab.save(path / "vocab" / f"{name}.parquet")
        (path / "split.json").write_text(json.dumps({"train_end": self.split.train_end, "valid_end": self.split.valid_end}))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Dataset":
        path = Path(path)
        if not (path / "events.parquet").exists():
            raise FileNotFoundError(f"{path} is not an ingested dataset (no events.parquet); run `homefeed ingest` first")
        bounds = json.loads((path / "split.json").read_text())  # may also say how the split was made
        split = TimeSplit(train_end=bounds["train_end"], valid_end=bounds["valid_end"])
        vocabs = {p.stem: Vocab.load(p) for p in sorted((path / "vocab").glob("*.parquet"))}
        exposures = path / "exposures.parquet"
        return cls(
            events=EVENTS.conform(pl.read_parquet(path / "events.parquet")),
            items=ITEMS.conform(pl.read_parquet(path / "items.parquet")),
            users=USERS.conform(pl.read_parquet(path / "users.parquet")),
            exposures=EXPOSURES.conform(pl.read_parquet(exposures)) if exposures.exists() else None,
            split=split,
            vocabs=vocabs,
            path=path,
        )


RECENT_EVENTS = 200  # per user, copied into a bundle to seed the state store


def serving_dataset(ds: Dataset) -> Dataset:
    """The same data with train = everything before the test days, so what a bundle fits never saw the test."""
    return dataclasses.replace(ds, split=TimeSplit(train_end=ds.split.valid_end, valid_end=ds.split.valid_end))


def read_table(path: str | Path, contract: str) -> pl.DataFrame:
    """Read one Parquet table and cast it to its contract's dtypes."""
    return CONTRACTS[contract].conform(pl.read_parquet(path))

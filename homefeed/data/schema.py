"""Data contracts: the four tables every stage reads (events, exposures, items, users).

Each contract lists its columns with a polars dtype and whether the column is required. Raw ids
(strings or ints, as the shop logs them) are kept as given until `homefeed.data.vocab` encodes each
id space once to dense int32 codes; the dtypes below are those of an encoded dataset.

    >>> from homefeed.data.schema import EVENTS
    >>> EVENTS.required
    ('user_id', 'item_id', 'behavior', 'ts')
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

BEHAVIORS: tuple[str, ...] = ("pv", "click", "fav", "cart", "buy")
"""Behaviour types, weakest first; `click` is a click on a homepage exposure, `pv` any other view."""
BEHAVIOR = pl.Enum(list(BEHAVIORS))

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Unix seconds accepted in logs: 2000-01-01 .. 2100-01-01. Anything outside is a unit or parse error.
TS_MIN, TS_MAX = 946_684_800, 4_102_444_800

ID_COLUMNS: dict[str, str] = {
    # column -> the id space (vocabulary) it is encoded with
    "user_id": "user",
    "item_id": "item",
    "trigger_item": "item",
    "leaf_category": "leaf_category",
    "brand": "brand",
    "shop": "shop",
    "venue": "venue",
}
"""Columns holding ids, and the vocabulary each is encoded with (trigger_item shares the item space)."""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType  # dtype inside an encoded dataset
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Contract:
    """One table's columns; `required` must be present, the rest may be."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}; columns: {', '.join(self.names)}")

    def conform(self, df: pl.DataFrame) -> pl.DataFrame:
        """Cast the contract's columns present in `df` to their dataset dtypes; keep extra columns."""
        casts = [pl.col(c.name).cast(c.dtype) for c in self.columns if c.name in df.columns]
        return df.with_columns(casts)

    def missing(self, columns: list[str]) -> list[str]:
        return [c for c in self.required if c not in columns]


ID = pl.Int32  # dense code; 0 is reserved for ids unknown to the vocabulary

EVENTS = Contract(
    "events",
    (
        Column("user_id", ID),
        Column("item_id", ID),
        Column("behavior", BEHAVIOR, doc="one of " + "/".join(BEHAVIORS)),
        Column("ts", pl.Int64, doc="unix seconds"),
        Column("scene", pl.String, required=False, doc="where it happened, e.g. homepage, search"),
        Column("session_id", pl.Int64, required=False, doc="global session number (added by ingest)"),
    ),
)

EXPOSURES = Contract(
    "exposures",
    (
        Column("request_id", pl.Int64),
        Column("user_id", ID),
        Column("item_id", ID),
        Column("ts", pl.Int64),
        Column("position", pl.Int32, doc="0-based slot on the page"),
        Column("page", pl.Int32, doc="0-based page number of the feed"),
        Column("channel", pl.String, doc="recall channel (match type) that produced the item"),
        Column("trigger_item", ID, required=False, doc="item that triggered the recall, if any"),
        Column("clicked", pl.Int8, doc="0/1"),
    ),
    key=("request_id", "item_id"),
)

ITEMS = Contract(
    "items",
    (
        Column("item_id", ID),
        Column("leaf_category", ID),
        Column("category_path", pl.String, required=False, doc="names root>...>leaf"),
        Column("brand", ID),
        Column("shop", ID),
        Column("price", pl.Float64),
        Column("venue", ID, required=False, doc="promotion venue grouping the item"),
        Column("image", pl.String, required=False, doc="path of an image file, or 'npy:ROW' into images.npy"),
        Column("title", pl.String, required=False),
        Column("pools", pl.List(pl.String), required=False, doc="homepage channel material pools"),
    ),
    key=("item_id",),
)

USERS = Contract(
    "users",
    (
        Column("user_id", ID),
        Column("gender", pl.String, required=False),
        Column("age", pl.Int32, required=False),
        Column("city", pl.String, required=False),
        Column("purchase_power", pl.Int32, required=False, doc="1 (low) .. 5 (high)"),
    ),
    key=("user_id",),
)

CONTRACTS: dict[str, Contract] = {c.name: c for c in (EVENTS, EXPOSURES, ITEMS, USERS)}

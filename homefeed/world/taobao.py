"""Write events in the Taobao UserBehavior CSV format, so the public-data loader can read a generated shop.

The public Alibaba set (tianchi dataset 649) is a header-less CSV `user_id,item_id,category_id,behavior,ts`
with behaviours pv, fav, cart, buy. Homepage clicks have no such type there, so `click` becomes `pv`;
category_id is the item's leaf category.

    >>> n = write_taobao_csv("out/tiny/events.parquet", "out/tiny/UserBehavior.csv")   # doctest: +SKIP
    1,1042,87,pv,1511544070
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

TAOBAO_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior", "ts")


def write_taobao_csv(events_path: str | Path, path: str | Path, *, items_path: str | Path | None = None) -> int:
    """Write `events_path` (events.parquet) as Taobao UserBehavior CSV at `path`; returns the row count.

    The leaf category comes from `items_path` (default: items.parquet next to the events file).
    """
    events_path = Path(events_path)
    items_path = Path(items_path) if items_path is not None else events_path.with_name("items.parquet")
    for p in (events_path, items_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; generate the shop first (homefeed generate)")
    items = pl.scan_parquet(items_path).select("item_id", pl.col("leaf_category").alias("category_id"))
    rows = (
        pl.scan_parquet(events_path)
        .with_row_index("_row")
        .join(items, on="item_id", how="left")
        .sort("_row")
        .select("user_id", "item_id", "category_id",
                pl.col("behavior").cast(pl.String).replace("click", "pv").alias("behavior"), "ts")
        .collect()
    )
    missing = rows.filter(pl.col("category_id").is_null())
    if missing.height:
        first = missing.row(0, named=True)
        raise ValueError(f"{events_path}: {missing.height} events name items missing from {items_path}, "
                         f"e.g. item_id {first['item_id']} (user_id {first['user_id']}, ts {first['ts']})")
    rows.write_csv(path, include_header=False)
    return rows.height

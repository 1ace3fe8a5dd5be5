"""Vocabularies: each id space (user, item, brand, ...) encoded once to dense int32 codes.

Code 0 is reserved for ids the vocabulary has never seen (a new user at serving time), so codes
of known ids run 1..n and can index an embedding table of n + 1 rows directly.

    >>> v = Vocab.fit(pl.Series(["b", "a", "b"]))
    >>> v.encode(pl.Series(["a", "zz"])).to_list()
    [1, 0]
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

UNKNOWN = 0


class Vocab:
    """Raw id <-> dense code. `table` has columns `raw` (the ids' own dtype) and `code` (Int32)."""

    def __init__(self, table: pl.DataFrame, *, name: str = ""):
        if table.columns != ["raw", "code"]:
            raise ValueError(f"vocabulary {name!r} needs columns ['raw', 'code'], got {table.columns}")
        self.table = table
        self.name = name
        self._lookup: dict | None = None

    @classmethod
    def fit(cls, *columns: pl.Series, name: str = "") -> "Vocab":
        """Codes 1..n for the distinct non-null values of `columns`, in sorted order (deterministic)."""
        values = pl.concat([c.drop_nulls().rename("raw") for c in columns]).unique().sort()
        table = pl.DataFrame({"raw": values, "code": pl.int_range(1, len(values) + 1, dtype=pl.Int32, eager=True)})
        return cls(table, name=name)

    def __len__(self) -> int:
        return self.table.height

    @property
    def size(self) -> int:
        """Rows an embedding table needs: every code plus the reserved unknown code 0."""
        return self.table.height + 1

    @property
    def dtype(self) -> pl.DataType:
        return self.table.schema["raw"]

    def encode_expr(self, column: str, out: str | None = None) -> pl.Expr:
        """A polars expression mapping raw ids in `column` to codes (unknown -> 0)."""
        col = pl.col(column).cast(self.dtype, strict=False)
        return col.replace_strict(self.table["raw"], self.table["code"], default=UNKNOWN, return_dtype=pl.Int32).alias(out or column)

    def encode(self, values: pl.Series) -> pl.Series:
        return values.to_frame("v").select(self.encode_expr("v"))["v"]

    def decode(self, codes: pl.Series) -> pl.Series:
        """Codes back to raw ids; code 0 (unknown) decodes to null."""
        return codes.to_frame("c").select(
            pl.col("c").replace_strict(self.table["code"], self.table["raw"], default=None, return_dtype=self.dtype)
        )["c"]

    def code_of(self, raw) -> int:
        """One raw id to its code, for the serving path (a dict lookup, no frame)."""
        if self._lookup is None:
            self._lookup = {str(r): c for r, c in zip(self.table["raw"].to_list(), self.table["code"].to_list())}
        return self._lookup.get(str(raw), UNKNOWN)

    def save(self, path: Path) -> None:
        self.table.write_parquet(path)

    @classmethod
    def load(cls, path: Path, *, name: str = "") -> "Vocab":
        return cls(pl.read_parquet(path), name=name or Path(path).stem)

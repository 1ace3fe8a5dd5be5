"""The quarantine: rejected rows with their reason, and the accounting that proves nothing was lost.

Every input file becomes a `Checked`: its kept rows (a `line` column plus parsed columns) and a
quarantine frame with one row per rejected line (file, line, column, reason, raw). For each file
`input_rows == kept_rows + quarantined_rows`, and `counts()` breaks the quarantined rows down by reason.
Row-level problems are found by `homefeed.data.validate.triage`; the checks here need several rows at
once and run on kept rows: `conflicts` (a key repeated with other attributes, or repeated exactly)
and `unknown` (an id missing from a reference table, e.g. an event of an item not in the catalogue).

    >>> c = Checked("items", "items.csv", pl.DataFrame({"line": [2, 3], "item_id": [7, 7], "brand": [1, 2]}), input_rows=2)
    >>> c.reject(conflicts(c.rows, ["item_id"], ["brand"], what="item"), policy="quarantine",
    ...          raw=lambda lines: pl.DataFrame({"line": lines, "raw": ["7,2"]}))
    >>> c.counts()
    {'items.input_rows': 2, 'items.kept_rows': 1, 'items.quarantined_rows': 1, 'items.quarantined.conflicting item attributes': 1}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import polars as pl

Policy = Literal["quarantine", "strict"]
QUARANTINE_SCHEMA = {"file": pl.String, "line": pl.Int64, "column": pl.String, "reason": pl.String, "raw": pl.String}
BAD_SCHEMA = {"line": pl.Int64, "column": pl.String, "reason": pl.String, "problem": pl.String}


class DataError(ValueError):
    """A problem in an input file. `file`, `line` (1-based, counting a header; None for the whole
    file), `column` (as named in the file; None for the whole line) and `problem` say where and what.

    >>> str(DataError("events.csv", 7, "ts", "'abc' is not a unix timestamp in seconds"))
    "events.csv:7: column 'ts': 'abc' is not a unix timestamp in seconds"
    """

    def __init__(self, file: Any, line: int | None, column: str | None, problem: str):
        self.file, self.line, self.column, self.problem = str(file), line, column, problem
        where = self.file if line is None else f"{self.file}:{line}"
        col = f" column {column!r}:" if column else ""
        super().__init__(f"{where}:{col} {problem}")


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


@dataclass
class Checked:
    """One input file after validation: kept `rows` (column `line` + parsed columns) and its `quarantine`."""

    table: str
    file: str
    rows: pl.DataFrame
    quarantine: pl.DataFrame = field(default_factory=empty_quarantine)
    input_rows: int = 0

    def counts(self) -> dict[str, int]:
        """`<table>.input_rows`, `.kept_rows`, `.quarantined_rows` and `.quarantined.<reason>`."""
        t = self.table
        out = {f"{t}.input_rows": self.input_rows, f"{t}.kept_rows": self.rows.height,
               f"{t}.quarantined_rows": self.quarantine.height}
        for reason, n in self.quarantine.group_by("reason").len().sort("reason").iter_rows():
            out[f"{t}.quarantined.{reason}"] = n
        return out

    def reject(self, bad: pl.DataFrame, *, policy: Policy, raw: Callable[[pl.Series], pl.DataFrame]) -> None:
        """Move the rows whose `line` is in `bad` (line, column, reason, problem) to the quarantine, or
        under "strict" raise `DataError` for the first. `raw(lines)` returns their text as (line, raw)."""
        if bad.height == 0:
            return
        bad = bad.unique("line", keep="first", maintain_order=True).sort("line")
        if policy == "strict":
            line, column, _, problem = bad.row(0)
            raise DataError(self.file, line, column, problem)
        rows = bad.join(raw(bad["line"]), on="line", how="left").select(
            pl.lit(self.file).alias("file"), pl.col("line").cast(pl.Int64), "column", "reason", "raw")
        self.quarantine = pl.concat([self.quarantine, rows.cast(QUARANTINE_SCHEMA)]).sort("line")
        self.rows = self.rows.join(bad.select("line"), on="line", how="anti", maintain_order="left")


def no_problems() -> pl.DataFrame:
    return pl.DataFrame(schema=BAD_SCHEMA)


def conflicts(df: pl.DataFrame, key: list[str], attrs: list[str], *, what: str, columns: dict[str, str] | None = None,
              duplicates: bool = True) -> pl.DataFrame:
    """Rows repeating the `key` of an earlier row (by `line`): with different `attrs`, reason
    "conflicting `what` attributes"; with the same, if `duplicates`, "duplicate row". The first row
    of each key is kept. `columns` maps a column to its name in the file, for messages.

    Returns (line, column, reason, problem). One group_by answers the common case of no repeats;
    rows are compared one by one only for keys that repeat.
    """
    if duplicates:  # any repeat is suspect
        keys = df.group_by(key).agg(pl.len().alias("_n")).filter(pl.col("_n") > 1).select(key)
    else:
        stats = df.group_by(key).agg(*[pl.col(a).n_unique().alias(a) for a in attrs])
        keys = stats.filter(pl.any_horizontal([pl.col(a) > 1 for a in attrs] or [pl.lit(False)])).select(key)
    if keys.height == 0:
        return no_problems()
    df = df.join(keys, on=key, how="semi").sort("line")
    first = df.unique(key, keep="first", maintain_order=True).select(
        *key, pl.col("line").alias("_first"), *[pl.col(a).alias(f"_was_{a}") for a in attrs])
    df = df.join(first, on=key, how="left").filter(pl.col("line") != pl.col("_first"))
    differs = [pl.when(pl.col(a).ne_missing(pl.col(f"_was_{a}"))).then(pl.lit(a)) for a in attrs]
    df = df.with_columns(_col=pl.coalesce(differs) if attrs else pl.lit(None, pl.String))
    if not duplicates:
        df = df.filter(pl.col("_col").is_not_null())
    pick = lambda prefix: pl.coalesce([pl.when(pl.col("_col") == a).then(pl.col(prefix + a).cast(pl.String))
                                       for a in attrs] or [pl.lit(None, pl.String)]).fill_null("null")
    keytext = pl.concat_str([pl.col(k).cast(pl.String) for k in key], separator="/")
    conflict = pl.col("_col").is_not_null()
    df = df.with_columns(column=pl.col("_col").replace_strict(columns or {}, default=pl.col("_col"), return_dtype=pl.String))
    return df.select(
        pl.col("line").cast(pl.Int64), "column",
        reason=pl.when(conflict).then(pl.lit(f"conflicting {what} attributes")).otherwise(pl.lit("duplicate row")),
        problem=pl.when(conflict)
        .then(pl.format(f"{what} {{}} has {{}} here but {{}} on line {{}}", keytext, pick(""), pick("_was_"), "_first"))
        .otherwise(pl.format(f"repeats {what} {{}} of line {{}} exactly", keytext, "_first")),
    )


def unknown(df: pl.DataFrame, column: str, known: pl.Series, *, what: str, where: str, source_column: str) -> pl.DataFrame:
    """Rows whose `column` is not among `known`: reason "unknown `what`". Returns (line, column, reason, problem)."""
    known = known.cast(df.schema[column], strict=False).unique()
    bad = df.filter(~pl.col(column).is_in(known.implode()))
    return bad.select(
        pl.col("line").cast(pl.Int64), column=pl.lit(source_column), reason=pl.lit(f"unknown {what}"),
        problem=pl.format(f"{what} {{}} is not in {where}", pl.col(column).cast(pl.String)),
    )


def auto_int(df: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """String id columns whose every value is a plain integer (round-trips: no "007", no "+5") -> Int64."""
    casts = []
    for c in columns:
        if c in df.columns and df.schema[c] == pl.String:
            s = df[c]
            i = s.cast(pl.Int64, strict=False)
            if i.null_count() == s.null_count() and (i.cast(pl.String) == s).all():
                casts.append(i.alias(c))
    return df.with_columns(casts) if casts else df

"""Validation: parse raw columns into contract columns and account for every rejected row.

A loader describes each output column once as a `Field`: where it comes from in the file and what
kind of value it holds (an integer id, a timestamp, a behaviour code, a price...). `triage` turns the
fields into polars expressions, evaluates them over the whole file in one vectorised pass and splits
the rows in two: kept rows, parsed, and a quarantine frame (file, line, column, reason, raw) holding
each rejected row as it was written. Checks that need several rows at once (an item repeated with
conflicting attributes, an event of an item missing from the catalogue) run afterwards on the kept
rows and move their culprits to the quarantine with `Checked.reject`. Nothing is dropped silently:
`input_rows == kept_rows + quarantined_rows` for every file, and the counts say why, per reason.

Policy "quarantine" (the default) sets bad rows aside and goes on; "strict" raises `DataError` at the
first bad row (the lowest line). Problems with the file itself (empty, wrong delimiter, missing
columns, not UTF-8) raise under both policies, since then no row can be trusted.

    >>> err = DataError("events.csv", 7, "ts", "'abc' is not a unix timestamp in seconds")
    >>> str(err)
    "events.csv:7: column 'ts': 'abc' is not a unix timestamp in seconds"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from homefeed.config import Ingest

if TYPE_CHECKING:
    from homefeed.data.rawfile import Source

Policy = Literal["quarantine", "strict"]
Kind = Literal["id", "key", "int", "flag", "float", "ts", "code", "text", "any"]

LINE, RAW, NF = "__line", "__raw", "__nf"  # internal columns of a source frame (see rawfile.py)
QUARANTINE_SCHEMA = {"file": pl.String, "line": pl.Int64, "column": pl.String, "reason": pl.String, "raw": pl.String}
ENCODING_LIMIT = 0.01  # more lines than this share not UTF-8 (and at least 2): the whole file is refused


class DataError(ValueError):
    """A problem in an input file. `file`, `line` (1-based, counting a header; None for the whole
    file), `column` (as named in the file; None for the whole line) and `problem` say where and what."""

    def __init__(self, file: Any, line: int | None, column: str | None, problem: str):
        self.file, self.line, self.column, self.problem = str(file), line, column, problem
        where = self.file if line is None else f"{self.file}:{line}"
        col = f" column {column!r}:" if column else ""
        super().__init__(f"{where}:{col} {problem}")


@dataclass(frozen=True)
class Field:
    """One output column: its source column and how to parse and check it.

    kind: "id" integer id (Int64, must parse); "key" id kept as given (String, or Int64 from Parquet;
    see `auto_int`); "int" integer (cast to `dtype`, at least `min`); "flag" 0/1 (Int8); "float" a
    finite number >= 0 (prices); "ts" unix seconds (or a datetime / `format` string) in the ingest range;
    "code" one of `codes` (raw -> value); "text" any string; "any" passed through untouched.
    """

    name: str  # output (contract) column
    source: str | None = None  # column in the file; None: the format has none -> `fill`
    kind: Kind = "text"
    required: bool = True  # an empty value is "missing value"; optional ones become `fill`
    fill: Any = None
    null_tokens: tuple[str, ...] = ()  # spellings of "empty" besides "", e.g. ("NULL",)
    codes: dict[str, str] | None = None  # kind "code": raw value -> output value
    dtype: pl.DataType | None = None  # output dtype when not implied by the kind
    min: int | None = None  # kind "int": smallest valid value
    format: str | None = None  # kind "ts": strptime format of local date-times, e.g. "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class Check:
    """Rows where `bad` is true are rejected for `reason`, blaming `column` (None: the whole line)."""

    bad: pl.Expr
    reason: str
    column: str | None = None


def _is_empty(v: pl.Expr, dtype: pl.DataType, tokens: tuple[str, ...]) -> pl.Expr:
    if dtype != pl.String:
        return v.is_null()
    empty = v.is_null() | (v == "")
    return empty | v.is_in(list(tokens)) if tokens else empty


def _ts(f: Field, v: pl.Expr, dtype: pl.DataType, ingest: Ingest) -> pl.Expr:
    """Unix seconds from integers, floats ("874965758.0"), datetimes, or `f.format` strings (local time)."""
    if dtype.is_temporal():
        return v.cast(pl.Datetime("us")).dt.epoch("s")
    if f.format:
        local = v.str.strptime(pl.Datetime("us"), f.format, strict=False).dt.epoch("s")
        return local - int(ingest.tz_offset_hours * 3600)
    x = v.cast(pl.Float64, strict=False)
    return pl.coalesce(v.cast(pl.Int64, strict=False), pl.when(x.is_finite()).then(x.floor().cast(pl.Int64)))


def _parsed(f: Field, v: pl.Expr, dtype: pl.DataType, ingest: Ingest) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
    """The parsed value of a present (non-empty) source value, and (bad, reason) pairs."""
    if f.kind in ("id", "int", "flag"):
        p = v.cast(pl.Int64, strict=False)
        bad = [(p.is_null(), "not an integer")]
        if f.kind == "flag":
            bad.append((~p.is_in([0, 1]), "not 0 or 1"))
        if f.min is not None:
            bad.append((p < f.min, "negative value" if f.min == 0 else f"below {f.min}"))
        return p, bad
    if f.kind == "key":
        return (v.cast(pl.String) if dtype == pl.String else v.cast(pl.Int64, strict=False)), []
    if f.kind == "float":
        p = v.cast(pl.Float64, strict=False)
        return p, [(p.is_null(), "not a number"), (p.is_nan(), f"NaN {f.name}"),
                   (p.is_infinite(), f"infinite {f.name}"), (p < 0, f"negative {f.name}")]
    if f.kind == "ts":
        p = _ts(f, v, dtype, ingest)
        return p, [(p.is_null(), "bad timestamp"), (~p.is_between(ingest.ts_min, ingest.ts_max, closed="left"), "timestamp out of range")]
    if f.kind == "code":
        p = v.cast(pl.String).replace_strict(list(f.codes), list(f.codes.values()), default=None)
        return p, [(p.is_null(), f"unknown {f.name}")]
    return (v if f.kind == "any" else v.cast(pl.String)), []


_DTYPES = {"id": pl.Int64, "int": pl.Int64, "flag": pl.Int8, "float": pl.Float64, "ts": pl.Int64, "code": pl.String, "text": pl.String}


def parse_field(f: Field, dtype: pl.DataType | None, *, ingest: Ingest) -> tuple[pl.Expr, list[Check]]:
    """The output expression of `f` over a frame whose source column has `dtype`, and its checks."""
    out = f.dtype or _DTYPES.get(f.kind)
    if f.source is None or dtype is None:
        if f.kind == "key":
            return pl.lit(None if f.fill is None else str(f.fill), pl.String).alias(f.name), []
        return pl.lit(f.fill, out).alias(f.name), []
    v = pl.col(f.source)
    empty = _is_empty(v, dtype, f.null_tokens)
    parsed, bad = _parsed(f, v, dtype, ingest)
    checks = [Check(empty, "missing value", f.source)] if f.required else []
    checks += [Check(~empty & b, reason, f.source) for b, reason in bad]
    fill = pl.lit(str(f.fill) if f.kind == "key" and dtype == pl.String and f.fill is not None else f.fill)
    expr = pl.when(empty).then(fill).otherwise(parsed)
    return (expr.cast(out) if out is not None else expr).alias(f.name), checks


def first_failure(checks: list[Check]) -> pl.Expr:
    """Per row, the index (UInt16) of the first check that fails, or null for a good row."""
    if not checks:
        return pl.lit(None, pl.UInt16)
    expr = pl.when(checks[0].bad.fill_null(False)).then(pl.lit(0, pl.UInt16))
    for i, c in enumerate(checks[1:], 1):
        expr = expr.when(c.bad.fill_null(False)).then(pl.lit(i, pl.UInt16))
    return expr.otherwise(pl.lit(None, pl.UInt16))


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


@dataclass
class Checked:
    """One input file after validation: its kept rows (column `line` + output columns) and its quarantine."""

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

    def reject(self, bad: pl.DataFrame, *, policy: Policy, raw: "RawFetcher") -> None:
        """Move the rows whose `line` is in `bad` (line, column, reason, problem) to the quarantine;
        under "strict", raise for the first instead. `raw(lines)` gives their text (line, raw)."""
        if bad.height == 0:
            return
        bad = bad.unique("line", keep="first", maintain_order=True).sort("line")
        if policy == "strict":
            line, column, _, problem = bad.row(0)
            raise DataError(self.file, line, column, problem)
        texts = raw(bad["line"])
        rows = bad.join(texts, on="line", how="left").select(
            pl.lit(self.file).alias("file"), pl.col("line").cast(pl.Int64), "column", "reason", "raw")
        self.quarantine = pl.concat([self.quarantine, rows.cast(QUARANTINE_SCHEMA)]).sort("line")
        self.rows = self.rows.join(bad.select("line"), on="line", how="anti", maintain_order="left")


RawFetcher = Any  # callable: pl.Series of lines -> DataFrame(line Int64, raw String)


def conflicts(df: pl.DataFrame, key: list[str], attrs: list[str], *, what: str, columns: dict[str, str],
              duplicates: bool = True) -> pl.DataFrame:
    """Rows repeating the `key` of an earlier row (by line) with different `attrs` ("conflicting `what`
    attributes"), and, if `duplicates`, with the same attrs ("duplicate row"). `columns` maps output
    column -> name in the file, for messages. Returns (line, column, reason, problem)."""
    if not attrs and not duplicates:
        return _bad_frame()
    first = [pl.col(a).first().over(key) for a in attrs]
    differs = [pl.col(a).ne_missing(f) for a, f in zip(attrs, first)]
    marked = df.select(
        "line", *key, *attrs,
        _first=pl.col("line").first().over(key),
        _col=pl.coalesce([pl.when(d).then(pl.lit(a)) for a, d in zip(attrs, differs)]) if attrs else pl.lit(None, pl.String),
    ).filter(pl.col("line") != pl.col("_first"))
    if not duplicates:
        marked = marked.filter(pl.col("_col").is_not_null())
    if marked.height == 0:
        return _bad_frame()
    firsts = df.select(pl.col("line").alias("_first"), *[pl.col(a).alias(f"_was_{a}") for a in attrs])
    marked = marked.join(firsts, on="_first", how="left")
    keytext = pl.concat_str([pl.col(k).cast(pl.String) for k in key], separator="/")
    value = pl.coalesce([pl.when(pl.col("_col") == a).then(pl.col(a).cast(pl.String)) for a in attrs] or [pl.lit(None, pl.String)])
    was = pl.coalesce([pl.when(pl.col("_col") == a).then(pl.col(f"_was_{a}").cast(pl.String)) for a in attrs] or [pl.lit(None, pl.String)])
    conflict = pl.col("_col").is_not_null()
    return marked.select(
        "line",
        column=pl.col("_col").replace_strict(columns, default=pl.col("_col")) if columns else pl.col("_col"),
        reason=pl.when(conflict).then(pl.lit(f"conflicting {what} attributes")).otherwise(pl.lit("duplicate row")),
        problem=pl.when(conflict).then(pl.format(f"{what} {{}} has {{}} here but {{}} on line {{}}", keytext, value.fill_null("null"), was.fill_null("null"), "_first"))
        .otherwise(pl.format(f"repeats {what} {{}} of line {{}}", keytext, "_first")),
    )


def unknown(df: pl.DataFrame, column: str, known: pl.Series, *, what: str, where: str, source_column: str) -> pl.DataFrame:
    """Rows whose `column` is not among `known` ("unknown `what`"). Returns (line, column, reason, problem)."""
    known = known.cast(df.schema[column], strict=False)
    bad = df.filter(~pl.col(column).is_in(known.implode()))
    return bad.select(
        "line", column=pl.lit(source_column), reason=pl.lit(f"unknown {what}"),
        problem=pl.format(f"{what} {{}} is not in {where}", pl.col(column).cast(pl.String)),
    )


def _bad_frame() -> pl.DataFrame:
    return pl.DataFrame(schema={"line": pl.Int64, "column": pl.String, "reason": pl.String, "problem": pl.String})


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


def triage(src: "Source", fields: list[Field], *, table: str, ingest: Ingest, policy: Policy,
           extra: tuple[Check, ...] = ()) -> Checked:
    """Parse and check every row of `src` in one vectorised pass; split kept rows from quarantined ones.

    Returns a `Checked` whose `rows` hold `line` and one column per field, in order. Raises
    `DataError` for file-level problems (no data rows, not UTF-8) and, under "strict", for the first bad row.
    """
    schema = src.frame.collect_schema()
    exprs, checks = [], list(src.checks)
    for f in fields:
        expr, cs = parse_field(f, schema.get(f.source) if f.source else None, ingest=ingest)
        exprs.append(expr)
        checks.extend(cs)
    checks.extend(extra)
    code = first_failure(checks)
    raw = pl.when(code.is_not_null()).then(pl.col(RAW)) if RAW in schema else pl.lit(None, pl.String)
    df = src.collect(src.frame.select(pl.col(LINE).cast(pl.Int64).alias("line"), *exprs, code.alias("_code"), raw.alias("_raw")))
    if df.height == 0:
        raise DataError(src.name, None, None, "no data rows" + (" after the header" if src.header else ""))
    n_bad = df.height - df["_code"].null_count()
    rows = (df.filter(pl.col("_code").is_null()) if n_bad else df).drop("_code", "_raw")
    bad = df.filter(pl.col("_code").is_not_null()) if n_bad else df.clear()
    quarantine = bad.select(
        pl.lit(src.name).alias("file"), "line",
        pl.col("_code").replace_strict(list(range(len(checks))), [c.column for c in checks], return_dtype=pl.String).alias("column"),
        pl.col("_code").replace_strict(list(range(len(checks))), [c.reason for c in checks], return_dtype=pl.String).alias("reason"),
        pl.col("_raw").alias("raw"),
    )
    if RAW not in schema and quarantine.height:
        quarantine = quarantine.drop("raw").join(src.raw_lines(quarantine["line"]), on="line", how="left")
    quarantine = _mark_truncated(quarantine, src, last_line=int(df["line"].max()))
    _refuse_bad_encoding(quarantine, df.height, src)
    if policy == "strict" and quarantine.height:
        line, column, reason, text = quarantine.row(0)[1:]
        raise DataError(src.name, line, column, describe(reason, src.value(text, column), src=src, fields=fields, ingest=ingest, raw=text))
    return Checked(table, src.name, rows, quarantine.cast(QUARANTINE_SCHEMA), df.height)


def _mark_truncated(q: pl.DataFrame, src: "Source", *, last_line: int) -> pl.DataFrame:
    """A bad last line with no final newline is most likely a file cut off mid-row: say so."""
    if src.terminated or q.height == 0:
        return q
    last = (pl.col("line") == last_line) & pl.col("reason").is_in(["wrong field count", "missing value"])
    return q.with_columns(pl.when(last).then(pl.lit("truncated last line")).otherwise(pl.col("reason")).alias("reason"),
                          pl.when(last).then(None).otherwise(pl.col("column")).alias("column"))


def _refuse_bad_encoding(q: pl.DataFrame, n_rows: int, src: "Source") -> None:
    lines = q.filter(pl.col("reason") == "bad encoding")["line"]
    if lines.len() > 1 and lines.len() > ENCODING_LIMIT * n_rows:
        raise DataError(src.name, int(lines.min()), None,
                        f"not UTF-8 text: {lines.len()} of {n_rows} lines hold invalid bytes (first shown here); "
                        "convert it first, e.g. `iconv -f GBK -t UTF-8`")


def describe(reason: str, value: str | None, *, src: "Source", fields: list[Field], ingest: Ingest, raw: str | None) -> str:
    """A sentence for a `DataError` about one rejected row."""
    n = len(src.columns)
    nf = None if raw is None else raw.count(src.sep) + 1
    by_source = {f.source: f for f in fields if f.source}
    if reason == "wrong field count":
        hint = next((f" (separated by {s!r}?)" for s in ";\t|," if s != src.sep and raw and raw.count(s) == n - 1), "")
        return f"{nf} fields, expected {n} ({src.sep.join(src.columns)}){hint}"
    if reason == "truncated last line":
        return f"last line has {nf} of {n} fields and no final newline: the file looks cut off"
    if reason == "timestamp out of range":
        return (f"{value} is outside [{ingest.ts_min}, {ingest.ts_max}) (ingest.ts_min/ts_max)"
                + ("; milliseconds instead of seconds?" if value and value.lstrip("-").isdigit() and int(value) >= ingest.ts_max else ""))
    if reason.startswith("unknown ") and value is not None:
        codes = next((f.codes for f in fields if f.kind == "code" and reason == f"unknown {f.name}"), None) or {}
        return f"{value!r} is not a valid {reason[8:]}; valid values: {', '.join(codes)}"
    texts = {
        "blank line": "blank line",
        "bad encoding": "invalid UTF-8 bytes on this line (is the file in another encoding, e.g. GBK?)",
        "missing value": "empty value",
        "not an integer": f"{value!r} is not an integer",
        "not a number": f"{value!r} is not a number",
        "not 0 or 1": f"{value!r} is not 0 or 1",
        "bad timestamp": f"{value!r} is not a unix timestamp in seconds"
        + (f" nor a date-time in format {by_source[c].format!r}" if (c := _column_of(by_source, "ts")) and by_source[c].format else ""),
    }
    return texts.get(reason, f"{reason}: {value!r}")


def _column_of(by_source: dict[str, Field], kind: str) -> str | None:
    return next((s for s, f in by_source.items() if f.kind == kind), None)

"""Validation: parse raw columns into contract columns, and say exactly why a row is rejected.

A loader describes each output column once as a `Field`: where it comes from in the file and what
kind of value it holds (an integer id, a timestamp, a behaviour code, a price...). `triage` turns the
fields into polars expressions and reads the file in one vectorised pass that parses every value and
raises one cheap "bad" flag per row. Only the flagged rows, usually few, are examined again with the
full, ordered list of `Check`s to name the first problem: its column and reason. The result is a
`Checked` (see `homefeed.data.quarantine`): kept rows, and a quarantine frame (file, line, column,
reason, raw) holding each rejected row as it was written.

Policy "quarantine" (the default) sets bad rows aside and goes on; "strict" raises `DataError` at the
first bad row. Problems with the file itself (empty, wrong delimiter, missing columns, not UTF-8)
raise under both policies, since then no row can be trusted.

    >>> f = Field("ts", "timestamp", "ts")
    >>> df = pl.DataFrame({"timestamp": ["1511658000", "abc", ""]})
    >>> expr, checks, bad = parse_field(f, pl.String, ingest=Ingest())
    >>> df.select(expr, bad.alias("bad")).rows()
    [(1511658000, False), (None, True), (None, True)]
    >>> df.select(first_failure(checks)).to_series().to_list()   # 0: "missing value", 1: "bad timestamp"
    [None, 1, 0]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from homefeed.config import Ingest
from homefeed.data.quarantine import QUARANTINE_SCHEMA, Checked, DataError, Policy

if TYPE_CHECKING:
    from homefeed.data.rawfile import Source

__all__ = ["Check", "Checked", "DataError", "Field", "Policy", "describe", "first_failure", "parse_field", "triage"]

Kind = Literal["id", "key", "int", "flag", "float", "ts", "code", "text", "any"]
LINE, RAW = "__line", "__raw"  # internal columns of a source frame (see rawfile.py)
BAD_CHAR = "\ufffd"  # what lossy UTF-8 decoding puts in place of invalid bytes
ENCODING_LIMIT = 0.01  # more lines than this share not UTF-8 (and at least 2): the whole file is refused


@dataclass(frozen=True)
class Field:
    """One output column: its source column and how to parse and check it.

    kind: "id" integer id (Int64, must parse); "key" id kept as given (String from text, Int64 from
    Parquet integers); "int" integer (cast to `dtype`, at least `min`); "flag" 0/1 (Int8); "float" a
    finite number >= 0 (prices); "ts" unix seconds (integer or float text, a datetime column, or a
    local date-time string in `format`) within [ingest.ts_min, ingest.ts_max); "code" one of `codes`
    (raw -> value); "text" any string; "any" passed through untouched.
    """

    name: str  # output (contract) column
    source: str | None = None  # column in the file; None: the format has none -> `fill`
    kind: Kind = "text"
    required: bool = True  # an empty value is "missing value"; in optional fields it becomes `fill`
    fill: Any = None
    null_tokens: tuple[str, ...] = ()  # spellings of "empty" besides "", e.g. ("NULL",)
    codes: dict[str, str] | None = None  # kind "code": raw value -> output value
    dtype: pl.DataType | None = None  # output dtype when not implied by the kind
    min: int | None = None  # kind "int": smallest valid value
    format: str | None = None  # kind "ts": strptime format, e.g. "%Y-%m-%d %H:%M:%S" (local time)


@dataclass(frozen=True)
class Check:
    """Rows where `bad` is true are rejected for `reason`, blaming `column` (None: the whole line)."""

    bad: pl.Expr
    reason: str
    column: str | None = None


_DTYPES = {"id": pl.Int64, "int": pl.Int64, "flag": pl.Int8, "float": pl.Float64, "ts": pl.Int64,
           "code": pl.String, "text": pl.String}
_CASTS = ("id", "int", "flag", "float", "ts", "code")  # kinds whose parse fails (null) on an empty value


def _is_empty(v: pl.Expr, dtype: pl.DataType, tokens: tuple[str, ...]) -> pl.Expr:
    if dtype != pl.String:
        return v.is_null()
    empty = v.is_null() | (v == "")
    return empty | v.is_in(list(tokens)) if tokens else empty


def _ts(f: Field, v: pl.Expr, dtype: pl.DataType, ingest: Ingest) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
    if dtype.is_temporal():
        p = v.cast(pl.Datetime("us")).dt.epoch("s")
    elif f.format:
        p = v.str.strptime(pl.Datetime("us"), f.format, strict=False).dt.epoch("s") - int(ingest.tz_offset_hours * 3600)
    else:  # one float parse reads "1511658000" and "874965758.0" alike; exact below 2**53
        x = v.cast(pl.Float64, strict=False)
        in_range = x.is_between(ingest.ts_min, ingest.ts_max, closed="left")
        bad = (~x.is_finite()).fill_null(True)
        return x.floor().cast(pl.Int64, strict=False), [(bad, "bad timestamp"), (~in_range, "timestamp out of range")]
    in_range = p.is_between(ingest.ts_min, ingest.ts_max, closed="left")
    return p, [(p.is_null(), "bad timestamp"), (~in_range, "timestamp out of range")]


def _code(f: Field, s: pl.Expr) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
    """Raw codes -> values; a when-chain, not `replace_strict`, which would stop the streaming engine."""
    mapped = s
    for raw, value in f.codes.items():
        if raw != value:
            mapped = pl.when(s == raw).then(pl.lit(value)).otherwise(mapped)
    p = pl.when(s.is_in(list(f.codes))).then(mapped)
    return p, [(p.is_null(), f"unknown {f.name}")]


def _parsed(f: Field, v: pl.Expr, dtype: pl.DataType, ingest: Ingest) -> tuple[pl.Expr, list[tuple[pl.Expr, str]]]:
    """The parsed value of a source value, and (bad, reason) pairs meant for non-empty values."""
    if f.kind in ("id", "int", "flag"):
        p = v.cast(pl.Int64, strict=False)
        bad = [(p.is_null(), "not an integer")]
        if f.kind == "flag":
            bad.append((~p.is_in([0, 1]), "not 0 or 1"))
        if f.min is not None:
            bad.append((p < f.min, "negative value" if f.min == 0 else f"below {f.min}"))
        return p, bad
    if f.kind == "float":
        p = v.cast(pl.Float64, strict=False)
        return p, [(p.is_null(), "not a number"), (p.is_nan(), f"NaN {f.name}"),
                   (p.is_infinite(), f"infinite {f.name}"), (p < 0, f"negative {f.name}")]
    if f.kind == "ts":
        return _ts(f, v, dtype, ingest)
    if f.kind == "code":
        return _code(f, v.cast(pl.String))
    if f.kind == "key":
        return (v if dtype == pl.String else v.cast(pl.Int64, strict=False)), []
    return (v if f.kind == "any" else v.cast(pl.String)), []


def _any(exprs: list[pl.Expr]) -> pl.Expr:
    return pl.any_horizontal([e.fill_null(False) for e in exprs]) if exprs else pl.lit(False)


def parse_field(f: Field, dtype: pl.DataType | None, *, ingest: Ingest) -> tuple[pl.Expr, list[Check], pl.Expr]:
    """For a source column of `dtype` (None: absent): the output expression, the ordered checks that
    name a problem, and one cheap boolean expression true exactly when some check fails."""
    out = f.dtype or _DTYPES.get(f.kind)
    if f.source is None or dtype is None:
        fill = pl.lit(None if f.fill is None else str(f.fill), pl.String) if f.kind == "key" else pl.lit(f.fill, out)
        return fill.alias(f.name), [], pl.lit(False)
    v = pl.col(f.source)
    empty = _is_empty(v, dtype, f.null_tokens)
    parsed, bad = _parsed(f, v, dtype, ingest)
    checks = [Check(empty, "missing value", f.source)] if f.required else []
    checks += [Check(~empty & b, reason, f.source) for b, reason in bad]
    if f.required and f.kind in _CASTS and not f.null_tokens:  # an empty value fails the parse anyway
        expr, flag = parsed, _any([b for b, _ in bad])
    elif f.required:
        expr, flag = parsed, _any([empty, *(b for b, _ in bad)])
    else:
        fill = str(f.fill) if f.kind == "key" and dtype == pl.String and f.fill is not None else f.fill
        expr, flag = pl.when(empty).then(pl.lit(fill)).otherwise(parsed), ~empty & _any([b for b, _ in bad])
    return (expr.cast(out) if out is not None else expr).alias(f.name), checks, flag


def first_failure(checks: list[Check]) -> pl.Expr:
    """Per row, the index (UInt16) of the first check that fails, or null for a good row."""
    if not checks:
        return pl.lit(None, pl.UInt16)
    expr = pl.when(checks[0].bad.fill_null(False)).then(pl.lit(0, pl.UInt16))
    for i, c in enumerate(checks[1:], 1):
        expr = expr.when(c.bad.fill_null(False)).then(pl.lit(i, pl.UInt16))
    return expr.otherwise(pl.lit(None, pl.UInt16))


def triage(src: Source, fields: list[Field], *, table: str, ingest: Ingest, policy: Policy,
           extra: tuple[Check, ...] = ()) -> Checked:
    """Parse and check every row of `src`; split kept rows from quarantined ones.

    Returns a `Checked` whose rows hold `line` and one column per field, in order. Raises `DataError`
    for file-level problems (no data rows, not UTF-8) and, under "strict", for the first bad row.
    """
    schema = src.frame.collect_schema()
    parsed = [parse_field(f, schema.get(f.source) if f.source else None, ingest=ingest) for f in fields]
    checks = [*src.checks, *(c for _, cs, _ in parsed for c in cs), *extra]
    texts = [pl.col(f.source).str.contains(BAD_CHAR, literal=True) for f in fields
             if src.lines is not None and f.kind in ("text", "key") and schema.get(f.source) == pl.String]
    flag = _any([src.bad, *(b for _, _, b in parsed), *(c.bad for c in extra), *texts])
    line = pl.col(LINE).cast(pl.Int64).alias("line")
    df = src.collect(src.frame.select(line, *(e for e, _, _ in parsed), flag.alias("_bad")))
    if df.height == 0:
        raise DataError(src.name, None, None, "no data rows" + (" after the header" if src.header else ""))
    if not df["_bad"].any():
        return Checked(table, src.name, df.drop("_bad"), input_rows=df.height)
    quarantine = _name_problems(src, df.filter(pl.col("_bad"))["line"], checks)
    rows = df.drop("_bad").join(quarantine.select("line"), on="line", how="anti", maintain_order="left")
    quarantine = _mark_truncated(quarantine, src, last_line=int(df["line"].max()))
    _refuse_bad_encoding(quarantine, df.height, src)
    if policy == "strict" and quarantine.height:
        _, at, column, reason, text = quarantine.row(0)
        problem = describe(reason, src.value(text, column), src=src, fields=fields, ingest=ingest, raw=text)
        raise DataError(src.name, at, column, problem)
    return Checked(table, src.name, rows, quarantine, df.height)


def _name_problems(src: Source, lines: pl.Series, checks: list[Check]) -> pl.DataFrame:
    """Quarantine rows for the flagged `lines` that fail a check, each with its first failing check.
    The fast pass flags a superset (e.g. an empty last field); rows failing no check are not returned."""
    raw = src.raw_lines(lines)
    line = pl.col(LINE).cast(pl.Int64).alias("line")
    coded = src.collect(src.rows_at(raw).select(line, first_failure(checks).alias("_code")))
    index = list(range(len(checks)))
    return raw.join(coded.filter(pl.col("_code").is_not_null()), on="line", how="inner").sort("line").select(
        pl.lit(src.name).alias("file"), "line",
        pl.col("_code").replace_strict(index, [c.column for c in checks], return_dtype=pl.String).alias("column"),
        pl.col("_code").replace_strict(index, [c.reason for c in checks], return_dtype=pl.String).alias("reason"),
        "raw",
    ).cast(QUARANTINE_SCHEMA)


def _mark_truncated(q: pl.DataFrame, src: Source, *, last_line: int) -> pl.DataFrame:
    """A short last line with no final newline is most likely a file cut off mid-row: say so."""
    if src.terminated:
        return q
    last = (pl.col("line") == last_line) & pl.col("reason").is_in(["wrong field count", "missing value"])
    return q.with_columns(pl.when(last).then(pl.lit("truncated last line")).otherwise(pl.col("reason")).alias("reason"),
                          pl.when(last).then(None).otherwise(pl.col("column")).alias("column"))


def _refuse_bad_encoding(q: pl.DataFrame, n_rows: int, src: Source) -> None:
    lines = q.filter(pl.col("reason") == "bad encoding")["line"]
    if lines.len() > 1 and lines.len() > ENCODING_LIMIT * n_rows:
        raise DataError(src.name, int(lines.min()), None,
                        f"not UTF-8 text: {lines.len()} of {n_rows} lines hold invalid bytes, the first here; "
                        "convert the file first, e.g. `iconv -f GBK -t UTF-8`")


def describe(reason: str, value: str | None, *, src: Source, fields: list[Field], ingest: Ingest, raw: str | None) -> str:
    """A sentence for a `DataError` about one rejected row."""
    n, nf = len(src.columns), None if raw is None else raw.count(src.sep) + 1
    if reason == "wrong field count":
        hint = next((f" (separated by {s!r}?)" for s in ",\t;|" if s != src.sep and raw and raw.count(s) == n - 1), "")
        return f"{nf} field{'s' if nf != 1 else ''}, expected {n} ({src.sep.join(src.columns)}){hint}"
    if reason == "truncated last line":
        what = f"has {nf} of {n} fields" if nf is not None and nf < n else "ends in an empty value"
        return f"last line {what} and no final newline: the file looks cut off"
    if reason == "timestamp out of range":
        ms = value is not None and value.isdigit() and int(value) >= ingest.ts_max
        hint = "; milliseconds, not seconds?" if ms else ""
        return f"{value} is outside [{ingest.ts_min}, {ingest.ts_max}) (ingest.ts_min/ts_max){hint}"
    if reason.startswith("unknown "):
        codes = next((f.codes for f in fields if f.kind == "code" and reason == f"unknown {f.name}"), None) or {}
        return f"{value!r} is not a valid {reason[8:]}; valid values: {', '.join(codes)}"
    for word, text in (("negative ", "is negative"), ("NaN ", "is not a number (NaN)"), ("infinite ", "is infinite")):
        if reason.startswith(word):
            return f"{reason[len(word):]} {value!r} {text}"
    fmt = next((f.format for f in fields if f.kind == "ts" and f.format), None)
    texts = {
        "blank line": "blank line",
        "bad encoding": "invalid UTF-8 bytes on this line (is the file in another encoding, e.g. GBK?)",
        "missing value": "empty value",
        "not an integer": f"{value!r} is not an integer",
        "not a number": f"{value!r} is not a number",
        "not 0 or 1": f"{value!r} is not 0 or 1",
        "bad timestamp": f"{value!r} is not a unix timestamp in seconds" + (f" nor a date-time like {fmt!r}" if fmt else ""),
    }
    return texts.get(reason, f"{reason}: {value!r}")

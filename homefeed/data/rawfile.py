"""Raw input files as lazy frames with exact line numbers, plus the checks on the file as a whole.

A delimited text file is scanned as one string column, a line per row (polars' CSV reader with a NUL
separator and no quoting), then split on the delimiter with vectorised string expressions. Reading
lines rather than letting a CSV parser guess keeps what validation needs: the 1-based line number of
every row (a header counts, blank lines count), its field count (so a short or long row is caught
rather than padded or fatal) and its exact text for the quarantine. Bytes that are not UTF-8 are
decoded lossily to U+FFFD, so each bad line can be named. Files whose fields are quoted (a '"' in the
first 64 KiB) go through polars' quote-aware parser instead; there a quoted field may hold the
delimiter, but line numbers assume no line breaks inside quotes.

Before any row is read, `open_text` refuses files no row of which can be trusted: empty, UTF-16 or
binary, a different delimiter than declared (';' or tab in a comma file), or, for a headerless file,
lines that mostly have the wrong number of fields.

    >>> src = open_text("UserBehavior.csv", names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"])  # doctest: +SKIP
    >>> src.frame.collect_schema().names()                                                                            # doctest: +SKIP
    ['__line', '__raw', 'user_id', 'item_id', 'category_id', 'behavior_type', 'timestamp', '__more']
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import polars as pl

from homefeed.data.quarantine import DataError
from homefeed.data.validate import LINE, RAW, Check

SEPARATORS = (",", "\t", ";", "|")
HEAD_BYTES = 1 << 16
BAD_CHAR = "\ufffd"  # what lossy UTF-8 decoding puts in place of invalid bytes


@dataclass
class Source:
    """One input file: a lazy frame of its rows (LINE, then the source columns as named in the file,
    as strings for text; for text files also RAW, the line itself) and what checks need to know."""

    path: Path
    frame: pl.LazyFrame
    columns: tuple[str, ...]
    sep: str = ","
    header: bool = False
    terminated: bool = True  # the file ends with a newline (else a bad last line looks cut off)
    checks: tuple[Check, ...] = ()  # structural row checks: blank line, bad encoding, field count
    bad: pl.Expr = pl.lit(False)  # true exactly where one of `checks` fails, cheaper to evaluate
    split: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None  # (LINE, RAW) -> source columns

    @property
    def name(self) -> str:
        return str(self.path)

    def collect(self, lf: pl.LazyFrame) -> pl.DataFrame:
        """Collect with the streaming engine; a failure of the reader itself becomes a `DataError`."""
        try:
            return lf.collect(engine="streaming")
        except pl.exceptions.ComputeError as e:
            hint = (" (a NUL byte: UTF-16 or binary?)" if self.split else
                    " (a row with more fields than the header?)" if self.header else "")
            raise DataError(self.name, None, None, f"cannot be read{hint}: {str(e).splitlines()[0]}") from None

    def rows_at(self, lines: pl.Series, raw: pl.Series | None = None) -> pl.LazyFrame:
        """The source rows at `lines`: re-split from their `raw` text when given, else read again."""
        if self.split is not None and raw is not None:
            return self.split(pl.LazyFrame({LINE: lines.cast(pl.Int64), RAW: raw.cast(pl.String)}))
        return self.frame.filter(pl.col(LINE).cast(pl.Int64).is_in(lines.cast(pl.Int64).implode()))

    def raw_lines(self, lines: pl.Series) -> pl.DataFrame:
        """The text of the given lines, as (line Int64, raw String); Parquet rows are joined with ','."""
        schema = self.frame.collect_schema()
        if RAW in schema:
            text = pl.col(RAW)
        else:
            flat = [c for c in self.columns if not isinstance(schema[c], (pl.List, pl.Array, pl.Struct))]
            text = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in flat], separator=self.sep)
        rows = self.rows_at(lines).select(pl.col(LINE).cast(pl.Int64).alias("line"), text.alias("raw"))
        return self.collect(rows)

    def value(self, raw: str | None, column: str | None) -> str | None:
        """The field of `column` in a raw line, for messages (None when the line is shorter)."""
        if raw is None or column not in self.columns:
            return None
        parts = raw.split(self.sep)
        i = self.columns.index(column)
        return parts[i] if i < len(parts) else None


def _head(path: Path) -> tuple[bytes, bool]:
    """The first 64 KiB, and whether the file ends with a newline. Refuses empty and UTF-16/binary files."""
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
        f.seek(0, 2)
        if f.tell() > 0:
            f.seek(-1, 2)
        terminated = f.read(1) == b"\n"
    if not head.strip():
        raise DataError(path, None, None, "empty file")
    if b"\x00" in head:
        raise DataError(path, None, None, "contains NUL bytes: UTF-16 or binary, not UTF-8 text")
    return head, terminated


def sniff_separator(line: str) -> str:
    """The candidate separator appearing most often in `line` (',' when none does)."""
    counts = {s: line.count(s) for s in SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _check_separator(path: Path, line: str, sep: str, n: int | None) -> None:
    if sep in line or n == 1:
        return
    other = sniff_separator(line)
    if other != sep or line.count(other):
        raise DataError(path, 1, None, f"fields are separated by {other!r}, not {sep!r}")


def _check_field_counts(path: Path, lines: list[str], sep: str, names: Sequence[str]) -> None:
    """A headerless file whose first lines mostly have another field count is the wrong format."""
    counts = Counter(line.count(sep) + 1 for line in lines if line.strip())
    common, k = counts.most_common(1)[0]
    if common != len(names) and k > len(lines) // 2:
        raise DataError(path, 1, None, f"lines have {common} fields, expected {len(names)} ({sep.join(names)})")


def open_text(path: str | Path, *, names: Sequence[str] | None = None, sep: str | None = ",", quotes: bool = False) -> Source:
    """A delimited text file: headerless with `names`, or with a header line naming its columns.

    sep: the delimiter, or None to pick the commonest of , tab ; | in the first line.
    quotes: parse '"'-quoted fields when the file has any (generic files); known formats have none.
    """
    path = Path(path)
    head, terminated = _head(path)
    lines = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()
    first = lines[0]
    sep = sep or sniff_separator(first)
    _check_separator(path, first, sep, len(names) if names else None)
    header = names is None
    if header:
        names = [c.strip().strip('"') for c in first.split(sep)]
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            raise DataError(path, 1, None, f"header names column(s) {', '.join(map(repr, dupes))} more than once")
    else:
        _check_field_counts(path, lines[:100], sep, names)
    if quotes and b'"' in head:
        return _quoted(path, tuple(names), sep, terminated)
    return _lines(path, tuple(names), sep, header, terminated)


def _splitter(names: tuple[str, ...], sep: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """Split RAW into the named fields, plus one more (`__more`, non-null when the line is too long)."""
    fields = [*names, "__more"]
    split = pl.col(RAW).str.split_exact(sep, len(names)).struct.rename_fields(fields).alias("_fields")
    return lambda lf: lf.with_columns(split).unnest("_fields")


def _lines(path: Path, names: tuple[str, ...], sep: str, header: bool, terminated: bool) -> Source:
    lf = pl.scan_csv(path, has_header=False, separator="\x00", quote_char=None, new_columns=[RAW],
                     schema={RAW: pl.String}, encoding="utf8-lossy", skip_rows=int(header), raise_if_empty=False)
    split = _splitter(names, sep)
    lf = split(lf.with_row_index(LINE, offset=1 + int(header)))
    raw = pl.col(RAW)
    wrong = pl.col(names[-1]).is_null() | pl.col("__more").is_not_null()  # too few fields, too many
    checks = (Check(raw.is_null(), "blank line"), Check(raw.str.contains(BAD_CHAR, literal=True), "bad encoding"),
              Check(wrong, "wrong field count"))
    bad = raw.is_null() | wrong | raw.str.contains(BAD_CHAR, literal=True)
    return Source(path, lf, names, sep, header, terminated, checks, bad, split)


def _quoted(path: Path, names: tuple[str, ...], sep: str, terminated: bool) -> Source:
    lf = pl.scan_csv(path, has_header=True, separator=sep, infer_schema=False, encoding="utf8-lossy",
                     new_columns=list(names), raise_if_empty=False)
    lf = lf.with_row_index(LINE, offset=2)
    cols = [pl.col(c) for c in names]
    blank = pl.all_horizontal([c.is_null() for c in cols])
    encoding = pl.any_horizontal([c.str.contains(BAD_CHAR, literal=True).fill_null(False) for c in cols])
    checks = (Check(blank, "blank line"), Check(encoding, "bad encoding"))
    return Source(path, lf, names, sep, True, terminated, checks, blank | encoding)


def open_parquet(path: str | Path) -> Source:
    """A Parquet file; `line` is the 1-based row number. Columns keep their stored dtypes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    try:
        lf = pl.scan_parquet(path)
        names = tuple(lf.collect_schema().names())
    except (pl.exceptions.ComputeError, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file: {str(e).splitlines()[0]}") from None
    return Source(path, lf.with_row_index(LINE, offset=1), names, ",", False, True, ())

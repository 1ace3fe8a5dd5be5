"""Raw input files as lazy frames with exact line numbers, plus the checks on the file as a whole.

A delimited text file is read twice over, lazily, in two ways that agree line for line:

* `frame`: polars' CSV reader, every column as a string, plus one spare column `__more` that is
  non-null exactly when a line has too many fields; no quoting for known formats, bytes that are not
  UTF-8 decoded to U+FFFD, a blank line kept as a row of nulls. This is the fast pass every row takes.
* `raw_lines`: the same file as one string per line (NUL as the "separator"), for the rows the fast
  pass flags. Split again with `str.split_exact`, a line tells an empty field ("") from a missing one
  (null), which the CSV reader cannot, and its text goes into the quarantine as it was written.

Either way the row index plus the header gives the 1-based line number of every row (blank lines
count). Files with '"'-quoted fields (generic files only) are read with quoting on; there line numbers
assume no line breaks inside quotes, and a short line reads as empty trailing fields.

Before any row is read, `open_text` refuses files no row of which can be trusted: missing, empty,
UTF-16 or binary, a different delimiter than declared (';' or tab in a comma file), or, without a
header, first lines that mostly have the wrong number of fields.

    >>> src = open_text("UserBehavior.csv", names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"])  # doctest: +SKIP
    >>> src.frame.collect_schema().names()                                                                            # doctest: +SKIP
    ['__line', 'user_id', 'item_id', 'category_id', 'behavior_type', 'timestamp', '__more']
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import polars as pl

from homefeed.data.quarantine import DataError
from homefeed.data.validate import BAD_CHAR, LINE, RAW, Check

SEPARATORS = (",", "\t", ";", "|")
HEAD_BYTES = 1 << 16
MORE = "__more"


@dataclass
class Source:
    """One input file: `frame` (LINE, then the source columns as named in the file: strings for text,
    stored dtypes for Parquet) and what validation needs to know about it."""

    path: Path
    frame: pl.LazyFrame
    columns: tuple[str, ...]
    sep: str = ","
    header: bool = False
    terminated: bool = True  # the file ends with a newline (else a bad last line looks cut off)
    checks: tuple[Check, ...] = ()  # structural row checks, on `rows_at` frames: blank line, bad encoding, field count
    bad: pl.Expr = pl.lit(False)  # on `frame`: true wherever a structural check may fail (a superset)
    lines: pl.LazyFrame | None = None  # (LINE, RAW), one row per line, for text files
    split: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None  # (LINE, RAW) -> + source columns

    @property
    def name(self) -> str:
        return str(self.path)

    def collect(self, lf: pl.LazyFrame) -> pl.DataFrame:
        """Collect with the streaming engine; a failure of the reader itself becomes a `DataError`."""
        try:
            return lf.collect(engine="streaming")
        except pl.exceptions.ComputeError as e:
            raise DataError(self.name, None, None, f"cannot be read: {str(e).splitlines()[0]}") from None

    def raw_lines(self, lines: pl.Series) -> pl.DataFrame:
        """The text of the given lines, as (line Int64, raw String); Parquet rows are joined with ','."""
        wanted = pl.col(LINE).cast(pl.Int64).is_in(lines.cast(pl.Int64).implode())
        line = pl.col(LINE).cast(pl.Int64).alias("line")
        if self.lines is not None:
            return self.collect(self.lines.filter(wanted).select(line, pl.col(RAW).alias("raw")))
        schema = self.frame.collect_schema()
        flat = [c for c in self.columns if not isinstance(schema[c], (pl.List, pl.Array, pl.Struct))]
        text = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in flat], separator=self.sep)
        return self.collect(self.frame.filter(wanted).select(line, text.alias("raw")))

    def rows_at(self, raw: pl.DataFrame) -> pl.LazyFrame:
        """The source rows of `raw` (line, raw): split again from their text, or read again (quoted, Parquet)."""
        if self.split is not None:
            return self.split(raw.lazy().select(pl.col("line").alias(LINE), pl.col("raw").alias(RAW)))
        return self.frame.filter(pl.col(LINE).cast(pl.Int64).is_in(raw["line"].implode()))

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
        f.seek(max(f.seek(0, 2) - 1, 0))
        terminated = f.read(1) == b"\n"
    if not head.strip():
        raise DataError(path, None, None, "empty file")
    if b"\x00" in head:
        raise DataError(path, None, None, "contains NUL bytes: UTF-16 or binary, not UTF-8 text")
    return head, terminated


def sniff_separator(line: str) -> str | None:
    """The candidate separator appearing most often in `line`, or None when none does."""
    counts = {s: line.count(s) for s in SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def _check_separator(path: Path, line: str, sep: str, n: int | None) -> None:
    other = sniff_separator(line)
    if sep not in line and other is not None and n != 1:
        raise DataError(path, 1, None, f"fields are separated by {other!r}, not {sep!r}")


def _check_field_counts(path: Path, lines: list[str], sep: str, names: Sequence[str]) -> None:
    """A headerless file whose first lines mostly have another field count is the wrong format."""
    counts = Counter(line.count(sep) + 1 for line in lines if line.strip())
    common, k = counts.most_common(1)[0]
    if common != len(names) and k > len(lines) // 2:
        raise DataError(path, 1, None, f"lines have {common} fields, expected {len(names)} ({sep.join(names)})")


def open_text(path: str | Path, *, names: Sequence[str] | None = None, sep: str | None = ",",
              quotes: bool = False) -> Source:
    """A delimited text file: headerless with `names`, or with a header line naming its columns.

    sep: the delimiter, or None to pick the commonest of , tab ; | in the first line.
    quotes: read '"'-quoted fields when the file has any (generic files); known formats have none.
    """
    path = Path(path)
    head, terminated = _head(path)
    lines = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()
    sep = sep or sniff_separator(lines[0]) or ","
    _check_separator(path, lines[0], sep, len(names) if names else None)
    header = names is None
    if header:
        if len(head) < HEAD_BYTES and not any(line.strip() for line in lines[1:]):
            raise DataError(path, None, None, "no data rows after the header")
        names = [c.strip().strip('"') for c in lines[0].split(sep)]
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            raise DataError(path, 1, None, f"header names column(s) {', '.join(map(repr, dupes))} more than once")
    else:
        _check_field_counts(path, lines[:100], sep, names)
    return _text_source(path, tuple(names), sep, header=header, terminated=terminated, quoted=quotes and b'"' in head)


def _splitter(names: tuple[str, ...], sep: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """Split RAW into the named fields plus MORE ("" for an empty field, null for a missing one)."""
    split = pl.col(RAW).str.split_exact(sep, len(names)).struct.rename_fields([*names, MORE]).alias("_fields")
    return lambda lf: lf.with_columns(split).unnest("_fields")


def _text_source(path: Path, names: tuple[str, ...], sep: str, *, header: bool, terminated: bool, quoted: bool) -> Source:
    skip, offset = int(header), 1 + int(header)
    strings = {c: pl.String for c in (*names, MORE)}
    frame = pl.scan_csv(path, has_header=False, separator=sep, quote_char='"' if quoted else None, skip_rows=skip,
                        new_columns=list(strings), schema_overrides=strings, infer_schema=False, encoding="utf8-lossy",
                        truncate_ragged_lines=True, missing_columns="insert", raise_if_empty=False)
    lines = pl.scan_csv(path, has_header=False, separator="\x00", quote_char=None, new_columns=[RAW], skip_rows=skip,
                        schema={RAW: pl.String}, encoding="utf8-lossy", raise_if_empty=False)
    fields = [pl.col(c) for c in names]
    if quoted:  # no exact re-split: structure is judged on the parsed fields
        blank = pl.all_horizontal([f.is_null() for f in fields])
        encoding = pl.any_horizontal([f.str.contains(BAD_CHAR, literal=True).fill_null(False) for f in fields])
        checks = (Check(blank, "blank line"), Check(encoding, "bad encoding"),
                  Check(pl.col(MORE).is_not_null(), "wrong field count"))
        split = None
    else:
        wrong = pl.col(names[-1]).is_null() | pl.col(MORE).is_not_null()
        checks = (Check(pl.col(RAW).is_null(), "blank line"),
                  Check(pl.col(RAW).str.contains(BAD_CHAR, literal=True), "bad encoding"),
                  Check(wrong, "wrong field count"))
        split = _splitter(names, sep)
    bad = pl.col(names[-1]).is_null() | pl.col(MORE).is_not_null()  # short (or empty last field), long, blank
    return Source(path, frame.with_row_index(LINE, offset=offset), names, sep, header, terminated, checks, bad,
                  lines.with_row_index(LINE, offset=offset), split)


def open_lines(path: str | Path) -> tuple[pl.LazyFrame, bool]:
    """A text file with no fixed fields (e.g. one user's item sequence per line) as (LINE, RAW) rows,
    1-based line numbers, blank lines kept as null; and whether it ends with a newline.
    Refuses the same files as `open_text` (missing, empty, UTF-16 or binary)."""
    path = Path(path)
    _, terminated = _head(path)
    lines = pl.scan_csv(path, has_header=False, separator="\x00", quote_char=None, new_columns=[RAW],
                        schema={RAW: pl.String}, encoding="utf8-lossy", raise_if_empty=False)
    return lines.with_row_index(LINE, offset=1), terminated


def head_text(path: str | Path) -> str:
    """The first 64 KiB of a text file, decoded (invalid bytes as U+FFFD), BOM removed; checked like `open_text`."""
    head, _ = _head(Path(path))
    return head.decode("utf-8", errors="replace").lstrip("\ufeff")


def open_parquet(path: str | Path) -> Source:
    """A Parquet file; its `line` is the 1-based row number. Columns keep their stored dtypes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    try:
        lf = pl.scan_parquet(path)
        names = tuple(lf.collect_schema().names())
    except (pl.exceptions.ComputeError, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file: {str(e).splitlines()[0]}") from None
    return Source(path, lf.with_row_index(LINE, offset=1), names)

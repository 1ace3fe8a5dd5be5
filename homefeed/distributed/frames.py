"""An ingested dataset as Spark DataFrames, and the few column helpers every Spark job here shares.

`SparkDataset` holds the encoded tables (events, exposures, users, items) with the time split and
the item vocabulary size. It comes either from a `Dataset` already in memory (`from_dataset`: polars
-> Arrow -> Spark) or straight from the dataset folder (`read_dataset`: Spark reads the Parquet
files, so the folder may be on HDFS or S3: `s3a://bucket/ds`).

Events carry `b`, the behaviour's code (0 = pv .. 4 = buy, as `BEHAVIORS`), and `_row`, their
position in the events table: the single-process jobs sort stably, so rows tied on time keep their
input order, and the Spark jobs break the same ties by `_row`.

`ordered_sum` adds floats one by one in a stated order, as the numpy and numba loops do, so a sum
comes out bitwise equal wherever the group's rows were shuffled to.

    >>> sds = read_dataset(spark, "hdfs:///shop/ds")            # doctest: +SKIP
    >>> sds.events_in("train").groupBy("item_id").count()      # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIORS
from homefeed.recall.i2i import I2ITable


def _functions():
    from pyspark.sql import functions as F

    return F


@dataclass
class SparkDataset:
    """Encoded tables as Spark DataFrames. `exposures` is None for logs without impressions.

    Attributes:
        events: user_id, item_id (long), b (int behaviour code), ts (long)[, session_id (long)], _row (long).
        exposures: user_id, item_id, ts, clicked[, trigger_item, channel] or None.
        users, items: as in the dataset (ids as long).
        split: the TimeSplit; n_items: rows of an item table (every code plus 0).
    """

    events: object
    exposures: object | None
    users: object
    items: object
    split: TimeSplit
    n_items: int

    def events_in(self, part: str):
        return _in_part(self.events, self.split, part)

    def exposures_in(self, part: str):
        return None if self.exposures is None else _in_part(self.exposures, self.split, part)


def _in_part(df, split: TimeSplit, part: str):
    F = _functions()
    lo, hi = split.bounds(part)
    cond = F.lit(True)
    if lo is not None:
        cond = cond & (F.col("ts") >= lo)
    if hi is not None:
        cond = cond & (F.col("ts") < hi)
    return df.filter(cond)


def _to_spark(spark, frame: pl.DataFrame):
    """A polars frame as a Spark DataFrame via Arrow (enums and categoricals become strings, unsigned ints Int64)."""
    casts = [pl.col(c).cast(pl.String) for c, t in frame.schema.items() if isinstance(t, (pl.Enum, pl.Categorical))]
    casts += [pl.col(c).cast(pl.Int64) for c, t in frame.schema.items() if t in (pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)]
    return spark.createDataFrame(frame.with_columns(casts).to_arrow())


def _ids_as_long(df, columns):
    F = _functions()
    for c in columns:
        if c in df.columns:
            df = df.withColumn(c, F.col(c).cast("long"))
    return df


def conform_events(df):
    """Events with `b` (behaviour code) and long ids; a string `behavior` is looked up in BEHAVIORS."""
    F = _functions()
    missing = [c for c in ("user_id", "item_id", "behavior", "ts", "_row") if c not in df.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; columns: {', '.join(df.columns)}")
    kind = dict(df.dtypes)["behavior"]
    if kind == "string":
        code = F.array_position(F.array(*[F.lit(b) for b in BEHAVIORS]), F.col("behavior")).cast("int") - 1
        bad = df.filter(code < 0).select("behavior").limit(1).collect()
        if bad:
            raise ValueError(f"events: column behavior holds {bad[0][0]!r}; valid behaviours: {', '.join(BEHAVIORS)}")
    else:
        code = F.col("behavior").cast("int")
    keep = ["user_id", "item_id", "ts", *(["session_id"] if "session_id" in df.columns else []), "_row"]
    return _ids_as_long(df.select(*keep, code.alias("b")), ["user_id", "item_id", "ts", "session_id", "_row"])


def from_dataset(spark, ds: Dataset) -> SparkDataset:
    """An in-memory Dataset as Spark DataFrames (events keep their row order in `_row`)."""
    events = conform_events(_to_spark(spark, ds.events.with_row_index("_row")))
    exposures = None
    if ds.exposures is not None:
        exposures = _ids_as_long(_to_spark(spark, ds.exposures), ["user_id", "item_id", "trigger_item", "ts"])
    return SparkDataset(events, exposures, _ids_as_long(_to_spark(spark, ds.users), ["user_id"]),
                        _ids_as_long(_to_spark(spark, ds.items), ["item_id"]), ds.split, ds.n_items)


def read_dataset(spark, path: str) -> SparkDataset:
    """Read an ingested dataset folder (local, HDFS or S3) with Spark.

    `_row` is the row's position in `events.parquet` (one file, as ingest writes it: Spark reads one
    file's splits in offset order).
    """
    F = _functions()
    path = str(path).rstrip("/")
    split = json.loads("".join(r[0] for r in spark.read.text(f"{path}/split.json", wholetext=True).collect()))
    events = conform_events(spark.read.parquet(f"{path}/events.parquet").withColumn("_row", F.monotonically_increasing_id()))
    try:
        exposures = _ids_as_long(spark.read.parquet(f"{path}/exposures.parquet"), ["user_id", "item_id", "trigger_item", "ts"])
    except Exception as e:  # AnalysisException: path does not exist
        if "PATH_NOT_FOUND" not in str(e) and "does not exist" not in str(e):
            raise
        exposures = None
    n_items = spark.read.parquet(f"{path}/vocab/item.parquet").count() + 1
    return SparkDataset(events, exposures, _ids_as_long(spark.read.parquet(f"{path}/users.parquet"), ["user_id"]),
                        _ids_as_long(spark.read.parquet(f"{path}/items.parquet"), ["item_id"]),
                        TimeSplit(int(split["train_end"]), int(split["valid_end"])), int(n_items))


def with_sessions(events, gap_s: int):
    """Events with a session key (_s1, _s2) ordered as global session ids: ingest's `session_id`, else
    (user_id, the user's session number) cut after gaps longer than `gap_s`, as `add_sessions`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if "session_id" in events.columns:
        return events.withColumn("_s1", F.col("session_id")).withColumn("_s2", F.lit(0).cast("long"))
    by_time = Window.partitionBy("user_id").orderBy("ts", "_row")
    prev = F.lag("ts").over(by_time)
    start = (prev.isNull() | ((F.col("ts") - prev) > gap_s)).cast("long")
    return (events.withColumn("_start", start)
            .withColumn("_s2", F.sum("_start").over(by_time.rowsBetween(Window.unboundedPreceding, 0)))
            .withColumn("_s1", F.col("user_id")).drop("_start"))


def ordered_sum(value, order: list[str]):
    """Aggregate: the float sum of `value` over a group, added left to right in ascending `order` (column
    names), starting at 0.0: what a sequential loop gives, whatever the shuffle order."""
    F = _functions()
    parts = F.array_sort(F.collect_list(F.struct(*[F.col(c) for c in order], value.cast("double").alias("_v"))))
    return F.aggregate(parts, F.lit(0.0).cast("double"), lambda acc, x: acc + x["_v"])


def weight_of(weights: np.ndarray, column: str = "b"):
    """A double column: weights[code] for an integer code column (0.0 for codes outside the array)."""
    F = _functions()
    return F.coalesce(F.try_element_at(F.array(*[F.lit(float(w)) for w in weights]), F.col(column) + 1), F.lit(0.0))


def integral(values) -> bool:
    """Whether every value is a whole number, so sums of them are exact in float64 in any order."""
    return all(float(v).is_integer() for v in values)


def check_max_item(df, n_items: int, column: str = "item_id", what: str = "events") -> None:
    """Raise like the single-process jobs when a row holds an item code outside 0..n_items-1."""
    F = _functions()
    top = df.agg(F.max(column)).collect()[0][0]
    if top is not None and int(top) >= n_items:
        raise ValueError(f"{what} hold item code {int(top)} but n_items is {n_items}; "
                         "pass n_items = the item vocabulary size (dataset.n_items)")


def collect_numpy(df, columns: list[str]) -> dict[str, np.ndarray]:
    """Columns of a (small) Spark result as numpy arrays, via Arrow."""
    table = df.select(*columns).toArrow()
    return {c: table.column(c).to_numpy() for c in columns}


def table_from_top(top, n_items: int) -> I2ITable:
    """Collect (i, j, score, rank) into an I2ITable, rows in rank order, scores as float32."""
    got = collect_numpy(top.orderBy("i", "rank"), ["i", "j", "score"])
    indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.bincount(got["i"].astype(np.int64), minlength=n_items), out=indptr[1:])
    return I2ITable(indptr, got["j"].astype(np.int32), got["score"].astype(np.float32))

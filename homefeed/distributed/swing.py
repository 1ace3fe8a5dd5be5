"""Swing on Spark: inputs built with DataFrames, each item's row computed by the single-process numba kernel
inside `applyInPandas` (items grouped 64 to a call), so the table is bitwise `homefeed.recall.swing.swing_table`.

Spark does the parts that need the whole log: distinct (user, item) pairs of the chosen behaviours,
users kept by activity (`min_user_items`..`max_user_items`), user weights, the deterministic sample
of at most `max_users_per_item` users per item (the same 32-bit hash, smallest keys first, ties by
user), and each sampled user's full item list. Per item, the UDF takes its users, most active first
(as the kernel expects them), with their weights and lists. The UDF renumbers the item's neighbours
monotonically (ties still go to the lower code), runs `i2i_kernels.swing_rows` for that one row and
maps the neighbours back. Weights are computed with the same numpy expressions (pandas UDFs).
Spark groups `ITEMS_PER_GROUP` items into one `applyInPandas` call (by item code modulo the group
count) and the UDF computes their rows one by one: a call per item costs ~5 ms of Arrow and pandas
overhead, which dominated small jobs; a group's memory stays bounded whatever the log's size.

    >>> table = swing_table_spark(sds.events_in("train"), sds.n_items, settings=SwingSettings())   # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd  # pandas UDF type hints are resolved in this module's globals

from homefeed.data.user_state import BEHAVIOR_CODE
from homefeed.distributed.frames import SparkDataset, check_max_item, table_from_top
from homefeed.recall import i2i_kernels as kernels
from homefeed.recall.i2i import I2ITable
from homefeed.recall.swing import Swing, SwingSettings, sample_key

ROW_SCHEMA = "i long, j long, score float, rank int"
ITEMS_PER_GROUP = 64
"""Items whose rows one `applyInPandas` call computes (each item's row alone: the grouping changes no result)."""


def user_weights(counts: np.ndarray, settings: SwingSettings) -> tuple[np.ndarray, np.ndarray]:
    """(user_w, self_w) per user from |I_u|, with the numpy expressions of `swing_inputs`."""
    s = settings
    user_w = (counts + s.alpha1) ** -s.beta
    self_w = user_w ** 2 / (s.alpha2 + counts) if s.self_pairs else np.zeros(counts.size)
    return user_w, self_w


def one_row(group: pd.DataFrame, settings: SwingSettings) -> pd.DataFrame:
    """The Swing row of one item: `group` holds its sampled users (n, user_w, self_w, items) in any order."""
    group = group.sort_values(["n", "user_id"], ascending=[False, True], kind="stable")  # most active first
    i = int(group["item_id"].iloc[0])
    lists = [np.asarray(x, np.int64) for x in group["items"]]
    codes = np.unique(np.concatenate(lists))  # the group's items, ascending: a monotone renumbering
    sizes = np.array([x.size for x in lists], np.int64)
    user_ptr = np.zeros(sizes.size + 1, np.int64)
    np.cumsum(sizes, out=user_ptr[1:])
    user_items = np.searchsorted(codes, np.concatenate(lists)).astype(np.int32)
    m, n, local_i = codes.size, sizes.size, int(np.searchsorted(codes, i))
    item_ptr = np.zeros(m + 1, np.int64)
    item_ptr[local_i + 1:] = n
    total = int(sizes.sum())
    row = kernels.run_rows(
        kernels.swing_rows, np.array([local_i]), np.ones(1), np.array([total]), settings.top_n, m,
        item_ptr, np.arange(n, dtype=np.int64), user_ptr, user_items, group["user_w"].to_numpy(np.float64),
        group["self_w"].to_numpy(np.float64), float(settings.alpha2), n, total, m)
    neighbors, scores = row.neighbors_of(local_i)
    return pd.DataFrame({"i": np.full(neighbors.size, i, np.int64), "j": codes[neighbors].astype(np.int64),
                         "score": scores.astype(np.float32), "rank": np.arange(1, neighbors.size + 1, dtype=np.int32)})


def rows_of_group(group: pd.DataFrame, settings: SwingSettings) -> pd.DataFrame:
    """The Swing rows of every item in `group` (its items' sampled users), each item's row by `one_row`."""
    rows = [one_row(users, settings) for _, users in group.groupby("item_id", sort=True)]
    if not rows:
        return pd.DataFrame({"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64), "score": np.zeros(0, np.float32),
                             "rank": np.zeros(0, np.int32)})
    return pd.concat(rows, ignore_index=True)


def swing_rows(events, n_items: int, settings: SwingSettings):
    """Spark DataFrame (i, j, score float, rank int): every item's Swing row, rank 1 the best."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    s = settings
    codes = [BEHAVIOR_CODE[b] for b in s.behaviors]

    @pandas_udf("long")
    def key(user: pd.Series, item: pd.Series) -> pd.Series:
        return pd.Series(sample_key(user.to_numpy(np.int64), item.to_numpy(np.int64), s.seed).astype(np.int64))

    @pandas_udf("double")
    def user_w(n: pd.Series) -> pd.Series:
        return pd.Series(user_weights(n.to_numpy(np.int64), s)[0])

    @pandas_udf("double")
    def self_w(n: pd.Series) -> pd.Series:
        return pd.Series(user_weights(n.to_numpy(np.int64), s)[1])

    pairs = (events.filter((F.col("item_id") > 0) & F.col("b").isin(codes)).select("user_id", "item_id").distinct()
             .withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
             .filter(F.col("n").between(s.min_user_items, s.max_user_items)).cache())
    check_max_item(pairs, n_items)
    users = (pairs.groupBy("user_id").agg(F.array_sort(F.collect_list("item_id")).alias("items"), F.first("n").alias("n"))
             .select("user_id", "n", "items", user_w("n").alias("user_w"), self_w("n").alias("self_w")))
    sample = Window.partitionBy("item_id").orderBy("_key", "user_id")
    kept = (pairs.withColumn("_key", key("user_id", "item_id")).withColumn("_rank", F.row_number().over(sample))
            .filter(F.col("_rank") <= s.max_users_per_item).select("item_id", "user_id"))
    fewest = 1 if s.self_pairs else 2  # users an item needs for a row
    kept = kept.withColumn("_users", F.count(F.lit(1)).over(Window.partitionBy("item_id"))).filter(F.col("_users") >= fewest)
    groups = kept.join(users, on="user_id").select("item_id", "user_id", "n", "user_w", "self_w", "items")
    n_groups = max(1, -(-n_items // ITEMS_PER_GROUP))
    by_group = groups.groupBy((F.col("item_id") % n_groups).alias("_group"))
    return by_group.applyInPandas(lambda g: rows_of_group(g, s), schema=ROW_SCHEMA), pairs


def swing_table_spark(events, n_items: int, *, settings: SwingSettings | None = None) -> I2ITable:
    """The Swing I2ITable of Spark events (user_id, item_id, b, ts, _row); see `swing_table`."""
    s = settings if settings is not None else SwingSettings()
    rows, cached = swing_rows(events, n_items, s)
    table = table_from_top(rows, n_items)
    cached.unpersist()
    return table


def fit_swing(sds: SparkDataset, settings: SwingSettings | None = None) -> Swing:
    """A fitted Swing channel whose table was computed on Spark (as `Swing.fit`)."""
    channel = Swing(settings=settings)
    channel.table_ = swing_table_spark(sds.events_in("train"), sds.n_items, settings=channel.settings)
    return channel

"""Item-CF on Spark, every option of `ItemCFSettings`, bitwise equal to `homefeed.recall.itemcf.itemcf_table`.

The job is the textbook one for a cluster: actions per user (collapsed, capped, decayed), a self-join
per user into the pairs the window allows, a per-user max (or plain term) per item pair, a sum over
users, then the top N per item. Equality with the numba kernel comes from three rules:

1. Every transcendental runs in the function the single-process job calls, on the executors:
   numpy's `exp2` for age decay, `log1p` for IUF, `normalizers` for cosine/asymmetric (in pandas
   UDFs), and a numba `math.exp` loop for pair decay (the kernel's own call). Spark's `pow`, `exp`
   and `log` can differ in the last bit, so none of them is used on a weight.
2. Products are formed in the kernel's order (IEEE multiplication is not associative).
3. Each item pair's sum over users is added in ascending user order from 0.0 (`ordered_sum`),
   as the kernel walks users; the row scale multiplies the sum last.

The top N per item is taken on the float64 score (ties: lower item code), then stored as float32,
so a float32 tie keeps the kernel's order. Results are bitwise equal on the same CPU family; numpy
picks SIMD code paths per CPU, so executors of another kind may differ by an ulp.
Sessions are assumed time-contiguous within a user, as in the single-process job.

    >>> table = itemcf_table_spark(sds.events_in("train"), sds.n_items, settings=ItemCFSettings())  # doctest: +SKIP
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd  # pandas UDF type hints are resolved in this module's globals
from numba import njit

from homefeed.distributed.frames import (SparkDataset, check_max_item, integral, ordered_sum, table_from_top, weight_of,
                                         with_sessions)
from homefeed.recall.i2i import I2ITable, behavior_weight_array
from homefeed.recall.itemcf import ItemCF, ItemCFSettings, item_categories, normalizers, unique_pairs


@njit(cache=True)
def pair_decay(dt, rate):
    """(n,) float64 exp(-rate * |dt|) with the same numba `math.exp` the Item-CF kernel calls."""
    out = np.empty(dt.size, np.float64)
    for k in range(dt.size):
        out[k] = math.exp(-rate * abs(dt[k]))
    return out


def _udfs(settings: ItemCFSettings, now: int):
    """The pandas UDFs that compute weights with the single-process job's numpy calls."""
    from pyspark.sql.functions import pandas_udf

    h = settings.age_half_life_s
    gap_rate = np.log(2) / settings.pair_half_life_s if settings.pair_half_life_s > 0 else 0.0

    @pandas_udf("double")
    def aged(b: pd.Series, t: pd.Series) -> pd.Series:
        b, t = b.to_numpy(np.float64), t.to_numpy(np.int64)
        return pd.Series(b * (np.exp2(-np.maximum(now - t, 0) / h) if h > 0 else 1.0))

    @pandas_udf("double")
    def iuf(n: pd.Series) -> pd.Series:
        return pd.Series(1.0 / np.log1p(np.maximum(n.to_numpy(np.int64), 1)))

    @pandas_udf("double")
    def left(pop: pd.Series) -> pd.Series:
        return pd.Series(normalizers(pop.to_numpy(np.float64), settings)[0])

    @pandas_udf("double")
    def right(pop: pd.Series) -> pd.Series:
        return pd.Series(normalizers(pop.to_numpy(np.float64), settings)[1])

    @pandas_udf("double")
    def decay(dt: pd.Series) -> pd.Series:
        return pd.Series(pair_decay(dt.to_numpy(np.int64), gap_rate))

    return aged, iuf, left, right, decay


def actions(events, n_items: int, settings: ItemCFSettings, now: int | None):
    """(actions, users, items): as `collapse_actions`.

    actions: user_id, item_id, _s1, _s2 (session), t, w, pos (order within the user by time);
    users: user_id, iuf; items: item_id, left, right (normalisers), all with the kept actions' keys.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    s = settings
    ev = events.filter(F.col("item_id") > 0)
    check_max_item(ev, n_items)
    per_session = not unique_pairs(s)
    if per_session:
        ev = with_sessions(ev, s.session_gap_s)
    else:
        ev = ev.withColumn("_s1", F.lit(0).cast("long")).withColumn("_s2", F.lit(0).cast("long"))
    bw = behavior_weight_array(s.behavior_weights)
    ev = ev.select("user_id", "item_id", "_s1", "_s2", "ts", weight_of(bw).alias("b")).filter(F.col("b") > 0).cache()
    if now is None:
        now = ev.agg(F.max("ts")).collect()[0][0]
        now = int(now) if now is not None else 0
    aged, iuf, left, right, _ = _udfs(s, int(now))
    acts = ev.groupBy("user_id", "item_id", "_s1", "_s2").agg(F.max("ts").alias("t"), F.max("b").alias("b"))
    strongest = acts.groupBy("user_id", "item_id").agg(F.max("b").alias("b"))
    square = F.col("b") * F.col("b")
    pop = F.sum(square) if integral(bw) else ordered_sum(square, ["user_id"])  # bincount adds users in order
    items = strongest.groupBy("item_id").agg(pop.alias("pop")).select("item_id", left("pop").alias("left"),
                                                                       right("pop").alias("right"))
    users = strongest.groupBy("user_id").agg(F.count(F.lit(1)).alias("n"))
    users = users.select("user_id", iuf("n").alias("iuf") if s.iuf else F.lit(1.0).alias("iuf"))
    recent = Window.partitionBy("user_id").orderBy(*[F.col(c).desc() for c in ("t", "item_id", "_s1", "_s2")])
    acts = (acts.withColumn("_recent", F.row_number().over(recent)).filter(F.col("_recent") <= s.max_actions_per_user)
            .withColumn("w", aged("b", "t")).filter(F.col("w") > 1e-100))
    in_time = Window.partitionBy("user_id").orderBy("t", "item_id", "_s1", "_s2")
    acts = acts.select("user_id", "item_id", "_s1", "_s2", "t", "w", F.row_number().over(in_time).alias("pos"))
    return acts, users, items, ev


def partners(settings: ItemCFSettings):
    """The join condition of actions `a` and `p` of one user that pair (as `partner_ranges`; i != j drops itself)."""
    from pyspark.sql import functions as F

    s = settings
    a, p = (lambda c: F.col(f"a.{c}")), (lambda c: F.col(f"p.{c}"))
    same = (a("user_id") == p("user_id")) & (a("item_id") != p("item_id"))
    if s.window == "user":
        return same
    if s.window == "session":
        near = (a("_s1") == p("_s1")) & (a("_s2") == p("_s2"))
    else:
        near = F.abs(a("t") - p("t")) <= s.max_gap_s
    if s.window_events:
        near = near | (F.abs(a("pos") - p("pos")) <= s.window_events)
    return same & near


def itemcf_scores(events, n_items: int, *, settings: ItemCFSettings | None = None,
                  categories: np.ndarray | None = None, now: int | None = None):
    """Spark DataFrame (i, j, score double, rank int): each item's top N neighbours, rank 1 the best."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    s = settings if settings is not None else ItemCFSettings()
    use_cat = s.same_category != "off"
    if use_cat and (categories is None or len(categories) < n_items):
        raise ValueError(f"same_category={s.same_category!r} needs categories: an item code -> category array "
                         f"of length n_items={n_items}")
    acts, users, items, cached = actions(events, n_items, s, now)
    spark = acts.sparkSession
    acts = acts.join(items, on="item_id").join(users, on="user_id")
    if use_cat:
        cat = np.asarray(categories, np.int64)[:n_items]
        table = pd.DataFrame({"item_id": np.arange(n_items, dtype=np.int64), "cat": cat})
        acts = acts.join(spark.createDataFrame(table), on="item_id")
    acts = acts.withColumn("wn", F.col("w") / F.col("right")).cache()
    cond = partners(s)
    if use_cat:
        cond = cond & (F.col("a.cat") == F.col("p.cat"))
    pairs = acts.alias("a").join(acts.alias("p"), cond).select(F.col("a.user_id").alias("u"), F.col("a.item_id").alias("i"), F.col("p.item_id").alias("j"),
                                   F.col("a.w").alias("wa"), F.col("p.wn").alias("wn"), F.col("a.iuf").alias("iuf"),
                                   (F.col("a.t") - F.col("p.t")).alias("dt"), (F.lit(1.0) / F.col("a.left")).alias("scale"))
    if unique_pairs(s):  # one action per (user, item): a plain weighted sum
        terms = pairs.select("u", "i", "j", "scale", ((F.col("wa") * F.col("iuf")) * F.col("wn")).alias("v"))
    else:  # each user counts once per item pair: their best-weighted pair
        v = F.col("wa") * F.col("wn")
        if s.pair_half_life_s > 0:
            v = v * _udfs(s, 0)[4]("dt")
        terms = (pairs.withColumn("v", v).groupBy("u", "i", "j")
                 .agg(F.max("v").alias("best"), F.first("iuf").alias("iuf"), F.first("scale").alias("scale"))
                 .select("u", "i", "j", "scale", (F.col("iuf") * F.col("best")).alias("v")))
    scores = (terms.groupBy("i", "j").agg(ordered_sum(F.col("v"), ["u"]).alias("c"), F.first("scale").alias("scale"))
              .select("i", "j", (F.col("c") * F.col("scale")).alias("score")).filter(F.col("score") > 0))
    best = Window.partitionBy("i").orderBy(F.col("score").desc(), F.col("j").asc())
    top = scores.withColumn("rank", F.row_number().over(best)).filter(F.col("rank") <= s.top_n)
    return top, [cached, acts]


def itemcf_table_spark(events, n_items: int, *, settings: ItemCFSettings | None = None,
                       categories: np.ndarray | None = None, now: int | None = None) -> I2ITable:
    """The Item-CF I2ITable of Spark events (user_id, item_id, b, ts[, session_id], _row); see `itemcf_table`."""
    s = settings if settings is not None else ItemCFSettings()
    top, cached = itemcf_scores(events, n_items, settings=s, categories=categories, now=now)
    table = table_from_top(top, n_items)
    for frame in cached:
        frame.unpersist()
    return table.discretize(s.levels) if s.levels else table


def fit_itemcf(sds: SparkDataset, settings: ItemCFSettings | None = None, *,
               standard_categories: np.ndarray | None = None) -> ItemCF:
    """A fitted ItemCF channel whose table was computed on Spark (as `ItemCF.fit`)."""
    channel = ItemCF(settings=settings, standard_categories=standard_categories)
    s, categories = channel.settings, None
    if s.same_category == "leaf":
        import polars as pl

        items = pl.from_arrow(sds.items.select("item_id", "leaf_category").toArrow())
        categories = item_categories(items, sds.n_items)
    elif s.same_category == "standard":
        if standard_categories is None:
            raise ValueError("same_category='standard' needs standard_categories: an item code -> standard category array")
        categories = standard_categories
    channel.table_ = itemcf_table_spark(sds.events_in("train"), sds.n_items, settings=s, categories=categories,
                                        now=sds.split.train_end)
    return channel

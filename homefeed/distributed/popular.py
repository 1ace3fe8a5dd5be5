"""Popularity on Spark: the time-decayed weighted event count per item, top `max_items`, as `Popular.fit`.

    score(i) = sum over training events e on i of  w[behavior_e] * 0.5 ** ((t_end - ts_e) / half_life)

Each term is computed with the C library's `pow` (Python's `math.pow`, the function polars calls),
so every term is bitwise the single-process one. The sum is not: polars adds a group's floats in an
order of its own, so Spark adds them exactly (`math.fsum`, correctly rounded, independent of the
shuffle) and the two agree within 1e-12 relative. Ties are broken by the lower item code.

    >>> pop = fit_popular(sds, PopularSettings())     # a fitted homefeed.recall.popular.Popular   # doctest: +SKIP
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd  # pandas UDF type hints are resolved in this module's globals

from homefeed.data.schema import BEHAVIORS
from homefeed.distributed.frames import SparkDataset, collect_numpy, weight_of
from homefeed.recall.popular import Popular, PopularSettings


def popular_scores(sds: SparkDataset, settings: PopularSettings, t_end: int):
    """Spark DataFrame (item_id long, w double): the top `max_items` items, best first (ties: lower code)."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    half_life = settings.half_life_days * 86400.0

    @pandas_udf("double")
    def decay(age: pd.Series) -> pd.Series:  # 0.5 ** (age / half_life) with libm's pow, as polars computes it
        x = age.to_numpy(np.float64) / half_life
        return pd.Series(np.frompyfunc(math.pow, 2, 1)(0.5, x).astype(np.float64))

    @pandas_udf("double")
    def fsum(w: pd.Series) -> float:
        return math.fsum(w.to_numpy())

    weights = np.array([settings.weights.get(b, 0.0) for b in BEHAVIORS])
    age = (F.lit(int(t_end)) - F.col("ts")).cast("double")
    terms = sds.events_in("train").select("item_id", (weight_of(weights) * decay(age)).alias("w")).filter(F.col("w") > 0)
    return (terms.groupBy("item_id").agg(fsum("w").alias("w"))
            .orderBy(F.col("w").desc(), F.col("item_id").asc()).limit(settings.max_items))


def fit_popular(sds: SparkDataset, settings: PopularSettings | None = None) -> Popular:
    """A fitted `Popular` channel whose table was computed on Spark."""
    pop = Popular(settings=settings or PopularSettings())
    pop.t_end_ = int(sds.split.train_end)
    top = collect_numpy(popular_scores(sds, pop.settings, pop.t_end_), ["item_id", "w"])
    pop.items_ = top["item_id"].astype(np.int32)
    pop.scores_ = top["w"].astype(np.float32)
    return pop

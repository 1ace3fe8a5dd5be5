"""Crowd top-K on Spark: smoothed click rates per demographic group, level by level, as `Crowd.fit`.

Levels run coarsest first; a group's rate for an item is pulled toward its parent group's rate,
and items a group never saw inherit the parent's top list (see homefeed/recall/crowd.py):

    rate(g, i) = (clicks(g, i) + m * rate(parent(g), i)) / (shown(g, i) + m)

Counts are integers and every rate is one division of the same operands, so the Spark rates are
bitwise the single-process ones; each group keeps its `top_k` by rate descending, lower item code
first. The lists (small: groups x top_k) come back to the driver and fill a `Crowd` channel.

    >>> crowd = fit_crowd(sds, CrowdSettings())       # a fitted homefeed.recall.crowd.Crowd   # doctest: +SKIP
"""
from __future__ import annotations

import polars as pl

from homefeed.distributed.frames import SparkDataset
from homefeed.recall.crowd import ATTRIBUTES, UNKNOWN, Crowd, CrowdSettings


def user_attributes(users, age_bands: list[int]):
    """(user_id, gender, age_band, city, purchase_power) as strings, UNKNOWN where missing."""
    from pyspark.sql import functions as F

    cols = [F.col("user_id")]
    for a in ("gender", "city", "purchase_power"):
        cols.append(F.coalesce(F.col(a).cast("string"), F.lit(UNKNOWN)).alias(a) if a in users.columns
                    else F.lit(UNKNOWN).alias(a))
    if "age" in users.columns:
        band = sum((F.col("age") >= e).cast("int") for e in age_bands) if age_bands else F.lit(0)
        cols.append(F.when(F.col("age").isNull(), F.lit(UNKNOWN)).otherwise(band.cast("string")).alias("age_band"))
    else:
        cols.append(F.lit(UNKNOWN).alias("age_band"))
    return users.select(cols)


def observations(sds: SparkDataset, settings: CrowdSettings):
    """(rows (user_id, attributes..., _all, item_id, shown, clicks), source): as `crowd._observations`."""
    from pyspark.sql import functions as F

    exposures, source = sds.exposures_in("train"), settings.source
    has_exposures = exposures is not None and exposures.limit(1).count() > 0
    if source == "auto":
        source = "exposures" if has_exposures else "interactions"
    if source == "exposures":
        if not has_exposures:
            raise ValueError("crowd.source = 'exposures' but the dataset has no training exposures; use 'interactions' or 'auto'")
        obs = exposures.select("user_id", "item_id", F.lit(1).cast("long").alias("shown"), F.col("clicked").cast("long").alias("clicks"))
    else:
        obs = (sds.events_in("train").select("user_id", "item_id").distinct()
               .withColumn("shown", F.lit(1).cast("long")).withColumn("clicks", F.lit(1).cast("long")))
    attrs = user_attributes(sds.users, settings.age_bands)
    obs = obs.join(attrs, on="user_id", how="left").fillna(UNKNOWN, subset=list(ATTRIBUTES)).withColumn("_all", F.lit(""))
    return obs, source


def fit_level(obs, level, parent_level, parent_full, parent_top, per_item: bool, settings: CrowdSettings):
    """(full rates (keys, item_id, rate), top K per group with n_users) of one level."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    m, keys = float(settings.prior_strength), ["_all", *level]
    size = obs.groupBy(keys).agg(F.countDistinct("user_id").cast("long").alias("n_users"))
    stats = obs.groupBy([*keys, "item_id"]).agg(F.sum("shown").alias("shown"), F.sum("clicks").alias("clicks"))
    if not per_item:
        stats = stats.drop("shown").join(size.withColumnRenamed("n_users", "shown"), on=keys)
    if parent_full is None:
        total = stats.agg(F.sum("clicks"), F.sum("shown")).collect()[0]
        clicks, shown = int(total[0] or 0), int(total[1] or 0)
        stats = stats.withColumn("parent", F.lit(clicks / max(shown, 1)))
    else:
        stats = stats.join(parent_full.withColumnRenamed("rate", "parent"), on=["_all", *parent_level, "item_id"], how="left")
    rate = (F.col("clicks").cast("double") + m * F.col("parent")) / (F.col("shown").cast("double") + m)
    full = stats.select(*keys, "item_id", rate.alias("rate")).cache()
    candidates = full
    if parent_top is not None:
        shrink = F.lit(1.0) if per_item else m / (m + F.col("n_users").cast("double"))
        inherited = (size.join(parent_top.drop("n_users"), on=["_all", *parent_level])
                     .join(full, on=[*keys, "item_id"], how="left_anti")
                     .select(*keys, "item_id", (F.col("rate") * shrink).alias("rate")))
        candidates = full.unionByName(inherited)
    order = Window.partitionBy(*keys).orderBy(F.col("rate").desc(), F.col("item_id").asc())
    top = (candidates.withColumn("_rank", F.row_number().over(order)).filter(F.col("_rank") <= settings.top_k)
           .join(size, on=keys).cache())
    return full, top


def fit_crowd(sds: SparkDataset, settings: CrowdSettings | None = None) -> Crowd:
    """A fitted `Crowd` channel whose per-group lists were computed on Spark."""
    crowd = Crowd(settings=settings or CrowdSettings())
    s = crowd.settings
    obs, crowd.source_ = observations(sds, s)
    obs = obs.cache()
    per_item = crowd.source_ == "exposures"
    lists, cached, parent_full, parent_top, parent_level = [], [obs], None, None, None
    for depth, level in reversed(list(enumerate(s.levels))):
        full, top = fit_level(obs, level, parent_level, parent_full, parent_top, per_item, s)
        cached += [full, top]
        keys = ["_all", *level]
        local = pl.from_arrow(top.orderBy(*keys, "_rank").select(*keys, "item_id", "rate", "n_users").toArrow())
        lists.append((depth, level, local))
        parent_full, parent_top, parent_level = full, top, level
    crowd._store(None, sorted(lists, key=lambda t: t[0]))  # the single-process CSR layout, from the same lists
    crowd._memo = {}
    for frame in cached:
        frame.unpersist()
    return crowd

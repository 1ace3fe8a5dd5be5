"""Ranki2i's CTR statistics on Spark: global, per-item and per-(trigger, item) smoothed click rates.

The same estimates as `homefeed.recall.ranki2i.smoothed_ctr` (Bayesian smoothing, each level pulled
toward the next coarser one), from the training exposures:

    p0 = (C + 1) / (N + 2),   p(j) = (c_j + m_item p0) / (n_j + m_item),   p(t, j) = (c_tj + m_pair p(j)) / (n_tj + m_pair)

Clicks and exposures are whole counts (exact in any order) and each rate is one division of the same
operands, so the PairCTR is bitwise the single-process one. The base table is re-scored on the driver
by `rank_table`, as the channel does.

    >>> ctr = pair_ctr(sds, RankI2ISettings())        # doctest: +SKIP
    >>> table = rank_table(base_table, ctr, top_n=100)  # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from homefeed.distributed.frames import SparkDataset, check_max_item, collect_numpy
from homefeed.recall.i2i import I2ITable
from homefeed.recall.ranki2i import PairCTR, RankI2I, RankI2ISettings, rank_table


def pair_ctr(sds: SparkDataset, settings: RankI2ISettings | None = None) -> PairCTR:
    """The smoothed CTRs of the training exposures, computed on Spark."""
    from pyspark.sql import functions as F

    s = settings if settings is not None else RankI2ISettings()
    n_items, exposures = sds.n_items, sds.exposures_in("train")
    if exposures is None or exposures.limit(1).count() == 0:
        return PairCTR(0.5, np.full(n_items, 0.5), np.zeros(0, np.int64), np.zeros(0))
    missing = [c for c in ("item_id", "clicked") if c not in exposures.columns]
    if missing:
        raise ValueError(f"exposures lack column(s) {missing}; columns: {', '.join(exposures.columns)}")
    check_max_item(exposures, n_items, what="exposures")
    click = F.col("clicked").cast("long")
    per_item = collect_numpy(exposures.groupBy("item_id").agg(F.sum(click).alias("c"), F.count(F.lit(1)).alias("n")),
                             ["item_id", "c", "n"])
    c_item = np.zeros(n_items)
    n_item = np.zeros(n_items)
    c_item[per_item["item_id"]] = per_item["c"]
    n_item[per_item["item_id"]] = per_item["n"]
    p0 = (float(c_item.sum()) + 1.0) / (float(n_item.sum()) + 2.0)  # whole numbers: exact sums
    item_ctr = (c_item + s.item_prior * p0) / np.maximum(n_item + s.item_prior, 1e-12)
    item_ctr[n_item + s.item_prior == 0] = p0
    if "trigger_item" not in exposures.columns:
        return PairCTR(float(p0), item_ctr, np.zeros(0, np.int64), np.zeros(0))
    shown = exposures.filter(F.col("trigger_item").isNotNull() & (F.col("trigger_item") > 0))
    if s.channels:
        shown = shown.filter(F.col("channel").isin(list(s.channels)))
    key = F.col("trigger_item").cast("long") * n_items + F.col("item_id").cast("long")
    pairs = collect_numpy(shown.groupBy(key.alias("key")).agg(F.sum(click).alias("c"), F.count(F.lit(1)).alias("n"))
                          .orderBy("key"), ["key", "c", "n"])
    keys, n = pairs["key"].astype(np.int64), pairs["n"].astype(np.float64)
    prior = item_ctr[keys % n_items]
    pair = (pairs["c"].astype(np.float64) + s.pair_prior * prior) / np.maximum(n + s.pair_prior, 1e-12)
    return PairCTR(float(p0), item_ctr, keys, pair)


def fit_ranki2i(sds: SparkDataset, base_table: I2ITable, settings: RankI2ISettings | None = None) -> RankI2I:
    """A fitted RankI2I channel: `base_table` (from Spark Item-CF or Swing) re-scored by Spark's CTRs."""
    channel = RankI2I(settings=settings, base_table=base_table)
    if base_table.n_items != sds.n_items:
        raise ValueError(f"base_table has {base_table.n_items} rows but the dataset has {sds.n_items} item codes")
    channel.ctr_ = pair_ctr(sds, channel.settings)
    channel.table_ = rank_table(base_table, channel.ctr_, top_n=channel.settings.top_n)
    return channel

"""`--engine spark`: the recall channels fitted with their tables computed on Spark, for `homefeed build` and
`homefeed evaluate recall`.

`fit_channels_spark` has the signature of `homefeed.recall.part.fit_channels` (plus the session) and
returns the same fitted channel objects, so whatever saves, merges or evaluates them is unchanged:
Item-CF, Swing, Ranki2i, crowd and popularity tables come from Spark (equal to the local ones, see
tests/test_distributed_tables.py); every other channel (retarget, the graph and MIND channels) is
fitted as before. The events are read by Spark from the dataset folder when the dataset has one
(local, HDFS or S3), with the split and the item table of the dataset object (the bundle moves the
split and adds the serving item columns; the item table is small).

    >>> fitter = spark_channel_fitter(spark_session(SparkSettings(master="yarn")))          # doctest: +SKIP
    >>> channels = fitter(dataset, ["itemcf", "swing", "ranki2i", "popular"], {})            # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

from homefeed.data.dataset import Dataset
from homefeed.distributed.crowd import fit_crowd
from homefeed.distributed.frames import SparkDataset, _ids_as_long, _to_spark, from_dataset, read_dataset
from homefeed.distributed.itemcf import fit_itemcf
from homefeed.distributed.popular import fit_popular
from homefeed.distributed.ranki2i import fit_ranki2i
from homefeed.distributed.swing import fit_swing
from homefeed.recall import CHANNELS, Recaller, make_channel

SPARK_CHANNELS = {"itemcf": fit_itemcf, "swing": fit_swing, "crowd": fit_crowd, "popular": fit_popular}
"""Channels whose tables Spark computes (plus ranki2i, which re-scores one of the first two)."""


def spark_dataset(spark, dataset: Dataset) -> SparkDataset:
    """The dataset as Spark frames: events read from its folder when it has one, else sent from memory; its own
    split and item table."""
    if dataset.path is not None and (Path(dataset.path) / "events.parquet").exists():
        sds = read_dataset(spark, str(dataset.path))
        items = _ids_as_long(_to_spark(spark, dataset.items), ["item_id"])
        return dataclasses.replace(sds, split=dataset.split, n_items=dataset.n_items, items=items)
    return from_dataset(spark, dataset)


def fit_channels_spark(dataset: Dataset, names: list[str] | None = None, settings: dict[str, dict] | None = None, *,
                       spark) -> dict[str, Recaller]:
    """As `fit_channels`: the named channels fitted, the Spark ones (`SPARK_CHANNELS`, ranki2i) on `spark`."""
    names = list(CHANNELS) if names is None else list(names)
    settings = settings or {}
    sds = spark_dataset(spark, dataset)
    sds.events = sds.events.cache()
    fitted: dict[str, Recaller] = {}
    try:
        for name in sorted(names, key=lambda n: n == "ranki2i"):  # ranki2i last, after its base
            channel = make_channel(name, **settings.get(name, {}))  # validates the knobs, names the bad key
            if name in SPARK_CHANNELS:
                fitted[name] = SPARK_CHANNELS[name](sds, channel.settings)
            elif name == "ranki2i":
                base = channel.settings.base
                if base in fitted and not settings.get(base):
                    table = fitted[base].table_
                else:
                    table = SPARK_CHANNELS[base](sds, CHANNELS[base].Settings()).table_
                fitted[name] = fit_ranki2i(sds, table, channel.settings)
            else:
                fitted[name] = channel.fit(dataset)
    finally:
        sds.events.unpersist()
    return {name: fitted[name] for name in names}


def spark_channel_fitter(spark) -> Callable[..., dict[str, Recaller]]:
    """`fit_channels_spark` bound to a session: a drop-in for `fit_channels`."""
    return functools.partial(fit_channels_spark, spark=spark)

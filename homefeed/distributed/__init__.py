"""Scale-out mirrors of the offline jobs: the recall tables on Apache Spark, ranker training under torch DDP.

Every single-process job stays the default (polars + numba beat a cluster engine on one machine).
This package computes the same tables on Spark DataFrames, for a shop whose logs outgrow one machine,
and is tested equal to the single-process functions: counts exactly, floats bitwise where the order of
every sum is reproduced, top-K with the same tie-break (score descending, lower item code first).
Nothing else in homefeed imports it; see docs/scale-out.md.

    >>> from homefeed.distributed.session import spark_session          # doctest: +SKIP
    >>> from homefeed.distributed.build import fit_channels_spark       # doctest: +SKIP
    >>> channels = fit_channels_spark(dataset, ["itemcf", "swing", "popular"], spark=spark_session())  # doctest: +SKIP
"""

"""One Spark session helper for every distributed job and test: the settings that make PySpark behave here.

The defaults suit a laptop or CI box (`local[2]`); on a cluster pass the master (`yarn`, `k8s://...`)
or leave it to `spark-submit`, which sets it before Python starts. Fixed here once:

- the driver binds to 127.0.0.1 for local masters (hostnames that resolve to loopback break the RPC);
- executors run this interpreter (`PYSPARK_PYTHON = sys.executable`), so numpy and numba match the driver's;
- the UI and the console progress bar are off; Arrow carries pandas UDF batches;
- ANSI (strict) SQL mode is on, as Spark 4 defaults: an overflow is an error, never a silent wrap,
  so every job here casts explicitly;
- PySpark's warning about the installed pandas major version is silenced (the UDFs use numpy arrays).

    >>> spark = spark_session(SparkSettings(master="local[2]"))   # doctest: +SKIP
    >>> with spark_engine(cfg.spark) as spark: ...                  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

from homefeed.config import Spark


SparkSettings = Spark  # the `[spark]` config section (homefeed.config.Spark)


def _is_local(master: str) -> bool:
    return master.startswith("local")


def spark_conf(settings: SparkSettings) -> dict[str, str]:
    """Every spark.* setting `spark_session` applies, as plain strings (extra `conf` wins)."""
    conf = {
        "spark.app.name": settings.app_name,
        "spark.driver.memory": settings.driver_memory,
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.default.parallelism": str(settings.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.ansi.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        "spark.executorEnv.NUMBA_NUM_THREADS": "1",  # one task per core: no oversubscribed numba pools
    }
    if _is_local(settings.master):
        conf |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    return conf | {k: str(v) for k, v in settings.conf.items()}


def spark_session(settings: SparkSettings | None = None):
    """Get or create the SparkSession for `settings` (default: local[2]); the caller stops it when done."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ImportError("the Spark engine needs pyspark: pip install 'homefeed[spark]' (and a Java 17 runtime)") from None
    s = settings or SparkSettings()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _is_local(s.master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warnings.filterwarnings("ignore", message=".*pandas.*", module="pyspark.*")
    builder = SparkSession.builder
    if s.master:
        builder = builder.master(s.master)
    for key, value in spark_conf(s).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextlib.contextmanager
def spark_engine(settings: SparkSettings | None = None):
    """A session for one command: `spark_session(settings)`, stopped at the end. A session already running in this
    process (a notebook's, a test suite's) is used as it is, its settings untouched, and left running."""
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError:
        spark_session(settings)  # raises the install hint
        raise
    if SparkContext._active_spark_context is not None:
        yield SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        return
    spark = spark_session(settings)
    try:
        yield spark
    finally:
        spark.stop()

"""Check a Spark deployment against the single-process jobs: every table computed both ways, compared, timed.

    python -m homefeed.distributed.selfcheck DATASET --master yarn --json

Run it once per cluster (or executor image) on a sample of the shop's log: it prints, per table,
whether Spark's result equals the local one (bitwise; popularity within 1e-12 relative), the largest
relative difference, and both wall times. It exits 1 if any table differs, so it can gate a deploy.
The tests run it on `local-cluster[2,1,1024]`, where executors are separate JVMs and Python workers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from homefeed.data.dataset import Dataset

TABLES = ("itemcf", "swing", "ranki2i", "crowd", "popular", "graph")


def arrays_compared(spark_arrays: list[np.ndarray], local_arrays: list[np.ndarray], rtol: float = 0.0) -> dict:
    """{"equal": bool, "max_rel": float}: arrays pairwise equal in shape and within `rtol` (0 = bitwise)."""
    worst, equal = 0.0, True
    for a, b in zip(spark_arrays, local_arrays):
        if a.shape != b.shape:
            return {"equal": False, "max_rel": float("inf")}
        if a.size and np.issubdtype(a.dtype, np.floating):
            rel = np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b.astype(np.float64)), 1e-300)
            worst = max(worst, float(rel.max()))
            equal &= bool(np.all(rel <= rtol))
        else:
            equal &= bool(np.array_equal(a, b))
    return {"equal": equal, "max_rel": worst}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _pair(name: str, sds, ds: Dataset):
    """(spark thunk, local thunk, arrays of a result, rtol) of one table."""
    from homefeed.distributed import crowd, graph, itemcf, popular, ranki2i, swing
    from homefeed.recall import Crowd, ItemCF, Popular, Swing
    from homefeed.recall.graph.graph import build_graph
    from homefeed.recall.ranki2i import smoothed_ctr

    table = lambda c: [c.table_.indptr, c.table_.neighbors, c.table_.scores]  # noqa: E731
    return {
        "itemcf": (lambda: itemcf.fit_itemcf(sds), lambda: ItemCF().fit(ds), table, 0.0),
        "swing": (lambda: swing.fit_swing(sds), lambda: Swing().fit(ds), table, 0.0),
        "ranki2i": (lambda: ranki2i.pair_ctr(sds), lambda: smoothed_ctr(ds.exposures_in("train"), ds.n_items),
                    lambda c: [np.array([c.global_ctr]), c.item_ctr, c.pair_keys, c.pair_ctr], 0.0),
        "crowd": (lambda: crowd.fit_crowd(sds), lambda: Crowd().fit(ds),
                  lambda c: [c.indptr_, c.items_, c.scores_, c.group_users_], 0.0),
        "popular": (lambda: popular.fit_popular(sds), lambda: Popular().fit(ds), lambda c: [c.items_, c.scores_], 1e-12),
        "graph": (lambda: graph.session_graph(sds), lambda: build_graph(ds.events_in("train"), ds.n_items),
                  lambda g: [g.indptr, g.indices, g.weights], 0.0),
    }[name]


def run_checks(spark, dataset: Dataset, tables: tuple[str, ...] = TABLES) -> dict[str, dict]:
    """Per table: equal, max_rel, spark_s, local_s (Spark reads the dataset's folder when it has one)."""
    from homefeed.distributed.build import spark_dataset

    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; valid tables: {', '.join(TABLES)}")
    sds = spark_dataset(spark, dataset)
    report = {}
    for name in tables:
        on_spark, on_local, arrays, rtol = _pair(name, sds, dataset)
        got, spark_s = _timed(on_spark)
        want, local_s = _timed(on_local)
        report[name] = arrays_compared(arrays(got), arrays(want), rtol) | {"spark_s": spark_s, "local_s": local_s}
    return report


def main(argv: list[str] | None = None) -> int:
    from homefeed.distributed.session import SparkSettings, spark_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="an ingested dataset folder")
    parser.add_argument("--master", default="local[2]", help="Spark master URL ('' keeps spark-submit's)")
    parser.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, of {', '.join(TABLES)}")
    parser.add_argument("--shuffle-partitions", type=int, default=SparkSettings().shuffle_partitions,
                        help="spark.sql.shuffle.partitions (~2-4x the cluster's cores)")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra spark.* setting (repeatable), as spark-submit's --conf")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args(argv)
    conf = {}
    for pair in args.conf:
        key, eq, value = pair.partition("=")
        if not eq or not key.startswith("spark."):
            parser.error(f"--conf {pair!r}: expected spark.KEY=VALUE")
        conf[key] = value
    spark = spark_session(SparkSettings(master=args.master, shuffle_partitions=args.shuffle_partitions, conf=conf))
    try:
        report = run_checks(spark, Dataset.load(args.dataset), tuple(t for t in args.tables.split(",") if t))
    finally:
        spark.stop()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'table':<10}{'equal':>7}{'max rel diff':>14}{'spark s':>10}{'local s':>10}")
        for name, row in report.items():
            print(f"{name:<10}{str(row['equal']):>7}{row['max_rel']:>14.2e}{row['spark_s']:>10.2f}{row['local_s']:>10.2f}")
    return 0 if all(row["equal"] for row in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

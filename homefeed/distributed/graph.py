"""The session item graph on Spark: edge i -> j weighted by the sessions that step from i to j, as `build_graph`.

The same steps as homefeed/recall/graph/graph.py, on DataFrames: sequences (ingest's sessions, or
cut at `session_gap_s`, or whole user streams when sessions link almost nothing), crawler sessions
dropped, runs on one item collapsed to their strongest behaviour, consecutive steps summed into
edges. Ties in time keep the events' input order (`_row`), as the stable single-process sort does.

Edge weights are sums of behaviour weights: exact in any order when the weights are whole numbers
(the default), else added in the single-process order (`ordered_sum`), so the graph is bitwise equal.

    >>> graph = session_graph(sds, GraphSettings())    # an ItemGraph over codes 0..n_items-1   # doctest: +SKIP
"""
from __future__ import annotations

from homefeed.distributed.frames import (SparkDataset, check_max_item, collect_numpy, integral, ordered_sum, weight_of,
                                         with_sessions)
from homefeed.recall.graph.graph import MIN_USER_PAIRS, GraphSettings, ItemGraph
from homefeed.recall.i2i import behavior_weight_array


def linked_share(events) -> tuple[float, int]:
    """(share, pairs) of a user's consecutive events (time order) falling in one session, as graph.linked_share."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_time = Window.partitionBy("user_id").orderBy("ts", "_row")
    same = ((F.lag("_s1").over(by_time) == F.col("_s1")) & (F.lag("_s2").over(by_time) == F.col("_s2")))
    row = events.select(same.cast("long").alias("same")).agg(F.count("same"), F.sum("same")).collect()[0]
    pairs = int(row[0])
    return (int(row[1]) / pairs if pairs else 1.0), pairs


def sequence_unit(events, settings: GraphSettings) -> str:
    if settings.sequences != "auto":
        return settings.sequences
    share, pairs = linked_share(events)
    return "users" if share < settings.min_linked_share and pairs >= MIN_USER_PAIRS else "sessions"


def session_steps(events, settings: GraphSettings):
    """Events (with a session key) -> steps (_s1, _s2, _step, item_id, w): runs collapsed, crawler sessions dropped."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    events = with_sessions(events, settings.session_gap_s)
    if sequence_unit(events, settings) == "users":
        events = events.withColumn("_s1", F.col("user_id")).withColumn("_s2", F.lit(0).cast("long"))
        by_user = True
    else:
        by_user = False
    bw = behavior_weight_array(settings.behavior_weights)
    ev = (events.select("_s1", "_s2", "item_id", "ts", "_row", weight_of(bw).alias("w"))
          .filter((F.col("w") > 0) & (F.col("item_id") > 0)))
    session = Window.partitionBy("_s1", "_s2")
    if not by_user:
        ev = (ev.withColumn("_minutes", (F.max("ts").over(session) - F.min("ts").over(session)).cast("double") / 60.0)
              .withColumn("_size", F.count(F.lit(1)).over(session)))
        size, rate = F.col("_size"), settings.max_events_per_minute * F.greatest(F.col("_minutes"), F.lit(1.0))
        ev = ev.filter((size <= settings.max_session_events) & ((size <= 2) | (size <= rate))).drop("_minutes", "_size")
    in_order = session.orderBy("ts", "_row")
    prev = F.lag("item_id").over(in_order)
    ev = ev.withColumn("_new", (prev.isNull() | (prev != F.col("item_id"))).cast("long"))
    ev = ev.withColumn("_step", F.sum("_new").over(in_order.rowsBetween(Window.unboundedPreceding, 0)))
    return ev.groupBy("_s1", "_s2", "_step").agg(F.first("item_id").alias("item_id"), F.max("w").alias("w"))


def graph_edges(events, n_items: int, settings: GraphSettings):
    """Spark DataFrame (src, dst, weight double): every edge of the graph, weights summed, light ones dropped."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    steps = session_steps(events, settings)
    check_max_item(steps, n_items)
    in_order = Window.partitionBy("_s1", "_s2").orderBy("_step")
    edges = (steps.select("_s1", "_s2", "_step", F.lag("item_id").over(in_order).alias("src"),
                          F.col("item_id").alias("dst"), F.col("w").alias("weight"), F.lit(0).alias("_dir"))
             .filter(F.col("src").isNotNull()))
    if settings.undirected:  # the reversed copies come after every forward edge, as np.r_ puts them
        edges = edges.unionByName(edges.select("_s1", "_s2", "_step", F.col("dst").alias("src"), F.col("src").alias("dst"),
                                               "weight", F.lit(1).alias("_dir")))
    edges = edges.filter((F.col("src") != F.col("dst")) & (F.col("weight") > 0))
    exact = integral(settings.behavior_weights.values())
    total = F.sum("weight") if exact else ordered_sum(F.col("weight"), ["_dir", "_s1", "_s2", "_step"])
    return (edges.groupBy("src", "dst").agg(total.alias("weight"))
            .filter(F.col("weight") >= max(settings.min_weight, 1e-12)))


def session_graph(sds: SparkDataset, settings: GraphSettings | None = None, *, part: str = "train") -> ItemGraph:
    """The ItemGraph of the dataset's `part` events, computed on Spark."""
    s = settings if settings is not None else GraphSettings()
    edges = collect_numpy(graph_edges(sds.events_in(part), sds.n_items, s), ["src", "dst", "weight"])
    return ItemGraph.from_edges(edges["src"], edges["dst"], edges["weight"], sds.n_items)  # unique edges: sums are the totals

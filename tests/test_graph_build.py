"""The session item graph: edges, weights, runs, crawler sessions, CSR layout, save/load."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from homefeed.data.schema import BEHAVIOR
from homefeed.recall.graph.graph import GraphSettings, ItemGraph, build_graph

UNIT = GraphSettings(behavior_weights={"pv": 1.0, "click": 1.0, "fav": 1.0, "cart": 1.0, "buy": 1.0})


def events(rows, sessions=True) -> pl.DataFrame:
    """rows: (user, session, item, behavior, ts)."""
    df = pl.DataFrame(rows, schema=["user_id", "session_id", "item_id", "behavior", "ts"], orient="row")
    df = df.with_columns(pl.col("behavior").cast(BEHAVIOR))
    return df if sessions else df.drop("session_id")


def as_dict(g: ItemGraph) -> dict[tuple[int, int], float]:
    src, dst, w = g.edges()
    return {(int(a), int(b)): float(x) for a, b, x in zip(src, dst, w)}


def test_docstring_example_counts_transitions():
    ev = events([(1, 0, 1, "pv", 0), (1, 0, 2, "pv", 1), (1, 0, 3, "pv", 2),
                 (2, 1, 1, "pv", 0), (2, 1, 2, "pv", 1), (2, 1, 2, "pv", 2), (2, 1, 4, "pv", 3)])
    g = build_graph(ev, 5, settings=UNIT)
    assert as_dict(g) == {(1, 2): 2.0, (2, 3): 1.0, (2, 4): 1.0}
    assert g.indptr.tolist() == [0, 0, 1, 3, 3, 3] and g.indices.tolist() == [2, 3, 4]


def test_weight_is_the_strongest_behaviour_of_the_step_entered():
    # 1 (pv) -> 2 (pv, then cart: one run, weight 3) -> 1 (buy, weight 4)
    ev = events([(1, 0, 1, "pv", 0), (1, 0, 2, "pv", 1), (1, 0, 2, "cart", 2), (1, 0, 1, "buy", 3)])
    assert as_dict(build_graph(ev, 3)) == {(1, 2): 3.0, (2, 1): 4.0}


def test_no_edge_across_sessions_and_sessions_cut_by_gap_when_missing():
    ev = events([(1, 0, 1, "pv", 0), (1, 1, 2, "pv", 10)])
    assert as_dict(build_graph(ev, 3, settings=UNIT)) == {}
    # no session_id: cut at session_gap_s
    ev = events([(1, 0, 1, "pv", 0), (1, 0, 2, "pv", 100), (1, 0, 3, "pv", 10_000)], sessions=False)
    assert as_dict(build_graph(ev, 4, settings=UNIT.model_copy(update={"session_gap_s": 3600}))) == {(1, 2): 1.0}


def test_zero_weight_behaviours_and_unknown_items_are_skipped():
    ev = events([(1, 0, 1, "pv", 0), (1, 0, 0, "pv", 1), (1, 0, 2, "click", 2), (1, 0, 3, "pv", 3)])
    s = GraphSettings(behavior_weights={"pv": 1.0})
    assert as_dict(build_graph(ev, 4, settings=s)) == {(1, 3): 1.0}  # item 0 and the click are dropped


def test_crawler_like_sessions_are_dropped():
    fast = [(1, 0, i % 5 + 1, "pv", i) for i in range(100)]  # 100 events in 99 s
    slow = [(2, 1, 1, "pv", 0), (2, 1, 2, "pv", 60)]
    g = build_graph(events(fast + slow), 6, settings=UNIT)
    assert as_dict(g) == {(1, 2): 1.0}
    long = [(3, 2, i % 5 + 1, "pv", 120 * i) for i in range(20)]
    g = build_graph(events(long), 6, settings=UNIT.model_copy(update={"max_session_events": 10}))
    assert g.nnz == 0


def test_min_weight_and_undirected():
    ev = events([(1, 0, 1, "pv", 0), (1, 0, 2, "pv", 1), (2, 1, 1, "pv", 0), (2, 1, 2, "pv", 1), (2, 1, 3, "pv", 2)])
    assert as_dict(build_graph(ev, 4, settings=UNIT.model_copy(update={"min_weight": 2.0}))) == {(1, 2): 2.0}
    both = as_dict(build_graph(ev, 4, settings=UNIT.model_copy(update={"undirected": True})))
    assert both == {(1, 2): 2.0, (2, 1): 2.0, (2, 3): 1.0, (3, 2): 1.0}


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="n_items"):
        build_graph(events([(1, 0, 1, "pv", 0), (1, 0, 9, "pv", 1)]), 5)
    with pytest.raises(ValueError, match="lack column"):
        build_graph(pl.DataFrame({"user_id": [1]}), 5)
    with pytest.raises(ValueError, match="valid behaviours"):
        GraphSettings(behavior_weights={"view": 1.0})


def test_subgraph_active_and_save_load(tmp_path):
    g = ItemGraph.from_edges([1, 2, 3], [2, 3, 1], [1.0, 2.0, 3.0], 5)
    keep = np.array([False, True, True, False, False])
    assert as_dict(g.subgraph(keep)) == {(1, 2): 1.0}
    assert g.active().tolist() == [False, True, True, True, False]
    back = ItemGraph.load(g.save(tmp_path / "g.npz"))
    assert as_dict(back) == as_dict(g) and back.n_nodes == 5

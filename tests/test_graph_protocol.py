"""Link-prediction protocol and graph embedding on real-log shapes: no zero-vector bias in the AUC, graphs walked in
user order when a log has no clock, and EGES at least as good as DeepWalk when side information is informative."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from scipy.sparse.csgraph import connected_components

from graph_fixtures import planted
from homefeed.data.schema import BEHAVIOR
from homefeed.data.sessions import add_sessions
from homefeed.recall.graph.channel import EGESSettings
from homefeed.recall.graph.eges import EGESModel, SideInfo, side_agreement, side_information, side_information_gain
from homefeed.recall.graph.embed import embed_graph
from homefeed.recall.graph.graph import GraphSettings, ItemGraph, build_graph, sequence_unit
from homefeed.recall.graph.skipgram import TrainSettings
from homefeed.recall.graph.walks import WalkSettings
from homefeed.recall.graph_evaluate import LinkProtocol, holdout_edges, link_prediction, pair_auc

WALKS = WalkSettings(walks_per_node=10, length=20, seed=0)
TRAIN = TrainSettings(dim=16, epochs=2, batch_size=256, lr=0.05, subsample=0.0, seed=0)


def sparse_log_graph(seed: int = 0, n_paths: int = 300, length: int = 6) -> ItemGraph:
    """A session-log-like graph: many short paths over a long-tail catalogue (most items on one path), a few
    popular items shared by many paths. Items 1..N; code 0 unused."""
    rng = np.random.default_rng(seed)
    popular = np.arange(1, 21)
    src, dst, next_item = [], [], 21
    for _ in range(n_paths):
        path = []
        for _ in range(length):
            if rng.random() < 0.3:
                path.append(int(rng.choice(popular)))
            else:
                path.append(next_item)
                next_item += 1
        src += path[:-1]
        dst += path[1:]
    return ItemGraph.from_edges(np.array(src), np.array(dst), np.ones(len(src)), next_item)


@pytest.mark.parametrize("keep", ["connected", "endpoints"])
@pytest.mark.parametrize("negatives", ["degree", "uniform"])
def test_heldout_edges_join_nodes_that_keep_training_edges(keep, negatives):
    graph = sparse_log_graph()
    train, pairs, labels = holdout_edges(graph, share=1 / 3, seed=1, keep=keep, negatives=negatives)
    pos, neg = pairs[labels == 1], pairs[labels == 0]
    assert len(pos) == len(neg) > 50
    active = train.active()
    assert active[pos].all() and active[neg].all()  # no pair touches an item left without a training edge
    full = {(min(a, b), max(a, b)) for a, b, _ in zip(*graph.edges())}
    kept = {(min(a, b), max(a, b)) for a, b, _ in zip(*train.edges())}
    assert all((a, b) in full and (a, b) not in kept for a, b in pos)  # held-out edges are real and gone
    assert not any((min(a, b), max(a, b)) in full for a, b in neg) and (neg[:, 0] != neg[:, 1]).all()
    assert len(pos) <= round(len(full) / 3)
    if keep == "connected":  # the training graph still joins the two ends of every held-out edge
        _, comp = connected_components(train.to_scipy(), directed=False)
        assert (comp[pos[:, 0]] == comp[pos[:, 1]]).all()
    if negatives == "degree":  # negatives are made of the held-out edges' own ends
        assert np.isin(neg, pos).all()


@pytest.mark.parametrize("keep", ["connected", "endpoints"])
def test_uninformed_vectors_score_chance(keep):
    """Random vectors sharing a common direction (what undertrained skip-gram vectors look like), zero for items
    with no training edge: the old protocol (held-out pairs often touching such items) ranked this below chance."""
    graph = sparse_log_graph(seed=2)
    train, pairs, labels = holdout_edges(graph, seed=3, keep=keep)
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(graph.n_nodes, 16)) + 2.0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[~train.active()] = 0.0
    assert abs(pair_auc(vectors, pairs, labels) - 0.5) < 0.07


def test_a_forest_has_no_edge_to_hold_out():
    path = ItemGraph.from_edges(np.arange(1, 9), np.arange(2, 10), np.ones(8), 10)
    with pytest.raises(ValueError, match="bridge"):
        holdout_edges(path)
    train, pairs, labels = holdout_edges(path, keep="endpoints")  # inner edges can go: both ends keep another
    assert labels.sum() >= 1 and train.active()[pairs].all()
    with pytest.raises(ValueError, match="valid: connected, endpoints"):
        holdout_edges(path, keep="nodes")


def clockless_events(step_s: int) -> pl.DataFrame:
    """60 users' item sequences on an ordinal clock `step_s` apart: 1 2 3, 3 4 or 5 1 2."""
    habits = [[1, 2, 3], [3, 4], [5, 1, 2]]  # each held by 20 users: enough consecutive pairs to tell
    rows = [(10 * k + u, item, "pv", 1_000_000 + t * step_s) for k in range(20) for u, items in enumerate(habits)
            for t, item in enumerate(items)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "behavior", "ts"], orient="row").with_columns(
        pl.col("behavior").cast(BEHAVIOR))


def edges_of(graph: ItemGraph) -> set[tuple[int, int]]:
    src, dst, _ = graph.edges()
    return set(zip(src.tolist(), dst.tolist()))


@pytest.mark.parametrize("step_s", [86_401, 60])
def test_clockless_log_walks_each_users_order(step_s):
    """A day between events (no session holds two) or an ordinal clock inside the session gap: either way the graph
    links each user's consecutive items."""
    events = add_sessions(clockless_events(step_s), gap_s=1800)
    expected = {(1, 2), (2, 3), (3, 4), (5, 1)}
    graph = build_graph(events, 6)
    assert edges_of(graph) == expected
    assert sequence_unit(events, GraphSettings()) == ("users" if step_s > 1800 else "sessions")
    assert edges_of(build_graph(events, 6, settings=GraphSettings(sequences="sessions"))) == (
        set() if step_s > 1800 else expected)


def test_logs_with_real_sessions_keep_them():
    rows = [(u, item, "pv", ts) for u in range(30) for item, ts in [(1, 0), (2, 60), (3, 10_000)]]  # 3 after a pause
    events = add_sessions(pl.DataFrame(rows, schema=["user_id", "item_id", "behavior", "ts"], orient="row")
                          .with_columns(pl.col("behavior").cast(BEHAVIOR)), gap_s=1800)
    assert sequence_unit(events, GraphSettings()) == "sessions"  # half the transitions stay inside a session
    assert edges_of(build_graph(events, 4)) == {(1, 2)}
    assert edges_of(build_graph(events, 4, settings=GraphSettings(sequences="users"))) == {(1, 2), (2, 3)}


def test_unknown_and_constant_side_fields_add_nothing():
    items = pl.DataFrame({"item_id": [1, 2, 3, 4], "leaf_category": [1, 1, 2, 2], "brand": [0, 5, 6, 6],
                          "shop": [3, 3, 3, 3], "price": [None, None, None, None]},
                         schema_overrides={"price": pl.Float64})
    side = side_information(items, 5)
    assert side.names == ["leaf_category", "brand"]  # one shop for all and no price: nothing to learn from
    model = EGESModel(5, side, dim=4, mode="ges", seed=0)
    h, _ = model.encode(torch.tensor([1, 2]))
    np.testing.assert_allclose(h[0].numpy(), ((model.ids[1] + model.sides[0][1]) / 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(model.field_weights(np.array([1, 2])), [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]],
                               rtol=1e-6)
    cold = model.side_only(np.array([1]))
    np.testing.assert_allclose(cold[0], model.sides[0][1].numpy(), rtol=1e-6)  # the unknown brand is left out


def test_side_agreement_and_the_attention_start_by_hand():
    side = SideInfo(np.array([[0, 0], [1, 7], [1, 7], [2, 7], [2, 0]]), [3, 8], ["leaf", "brand"])
    src, dst = np.array([1, 3, 1]), np.array([2, 4, 3])
    # leaf: the ends agree on 2 of 3 edges; chance (values 1 and 2, half each) 1/2 -> kappa (2/3 - 1/2) / (1/2)
    # brand: known at both ends of edges (1, 2) and (1, 3) only, always 7: chance 1 too, so no information
    np.testing.assert_allclose(side_agreement(side, src, dst), [1 / 3, 0.0])
    # information gain of the leaf: KL(Bernoulli(2/3) || Bernoulli(1/2)) nats; the brand again none
    gain = 2 / 3 * np.log(4 / 3) + 1 / 3 * np.log(2 / 3)
    np.testing.assert_allclose(side_information_gain(side, src, dst), [gain, 0.0], rtol=1e-9, atol=1e-12)
    never = SideInfo(np.array([[0, 0], [1, 7], [2, 7], [1, 7], [2, 0]]), [3, 8], ["leaf", "brand"])
    assert side_information_gain(never, src, dst)[0] == 0.0  # ends share less often than chance: no gain, not negative
    model = EGESModel(5, side, dim=4, mode="eges").start_attention(np.array([0, 30, 1, 2, 1]), np.array([1 / 3, 0.0]), 6.0)
    w = model.field_weights(np.array([1, 2]))
    np.testing.assert_allclose(w[:, 0], [30 / 32.01, 1 / 3.01], rtol=1e-5)  # neighbours against 6 * kappa = 2 for the leaf
    np.testing.assert_allclose(w[:, 2], [0.01 / 32.01, 0.01 / 3.01], rtol=1e-4)  # the brand predicts nothing: ~0
    equal = EGESModel(5, side, dim=4, mode="eges").start_attention(np.array([0, 30, 1, 2, 1]), np.array([0.3, 0.2]), 0.0)
    np.testing.assert_allclose(equal.field_weights(np.array([1])), 1 / 3)  # prior 0: the paper's equal start


def test_eges_at_least_deepwalk_with_informative_side_information():
    """Sparse communities (few edges per item) with brand = community: side information carries what the graph
    barely shows, so GES and EGES must beat ids alone at link prediction, and EGES must not fall below DeepWalk."""
    graph, _, side = planted(n_comm=6, size=30, p_in=0.12, p_out=0.004, seed=5)
    result = link_prediction(graph, side, settings=EGESSettings(walks=WALKS, train=TRAIN), protocol=LinkProtocol(seed=0))
    auc = result["auc"]
    assert result["pairs"] > 100
    assert auc["deepwalk"] > 0.6, auc  # the graph alone says something ...
    assert auc["eges"] >= auc["deepwalk"] + 0.02 and auc["ges"] >= auc["deepwalk"] + 0.02, auc  # ... side info more


def test_side_information_off_trains_as_deepwalk():
    graph, _, _ = planted(n_comm=2, size=10, seed=1)
    empty = SideInfo(np.zeros((graph.n_nodes, 0), np.int64), [], [])
    a = embed_graph(graph, empty, mode="eges", walks=WALKS, train=TRAIN)
    b = embed_graph(graph, None, mode="deepwalk", walks=WALKS, train=TRAIN)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert np.isfinite(b.norms).all() and b.norms[1:].max() < 100  # 20 nodes: a batch of 256 centres diverged

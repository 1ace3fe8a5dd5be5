"""Skip-gram / (E)GES embeddings on a planted-community graph: communities, cold start, attention, training modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_fixtures import nearest_same_share, planted
from homefeed.recall.ann import normalize
from homefeed.recall.graph.eges import EGESModel, SideInfo
from homefeed.recall.graph.embed import embed_graph
from homefeed.recall.graph.skipgram import TrainSettings, keep_probability, unigram_table, window_contexts
from homefeed.recall.graph.walks import WalkSettings

WALKS = WalkSettings(walks_per_node=10, length=20, seed=0)
TRAIN = TrainSettings(dim=16, epochs=2, batch_size=256, lr=0.05, subsample=0.0, seed=0)


@pytest.fixture(scope="module")
def world():
    return planted(n_comm=4, size=20, n_cold=3, seed=0)


def test_window_contexts_by_hand():
    walks = np.array([[1, 2, 3, -1], [4, 5, -1, -1]], np.int32)
    centers, contexts = window_contexts(walks, window=1, keep=np.ones(6), seed=0)
    assert centers.tolist() == [1, 2, 3, 4, 5]
    assert contexts.tolist() == [[2, -1], [1, 3], [2, -1], [5, -1], [4, -1]]
    keep = np.ones(6)
    keep[2] = 0.0  # node 2 is always dropped: 1 and 3 become neighbours
    centers, contexts = window_contexts(walks[:1], window=1, keep=keep, seed=0)
    assert centers.tolist() == [1, 3] and contexts.tolist() == [[3, -1], [1, -1]]


def test_negative_table_and_subsampling_follow_their_formulas():
    table = unigram_table(np.array([0, 1, 16]), power=0.75, size=9000)
    share = np.bincount(table.numpy(), minlength=3) / 9000
    np.testing.assert_allclose(share, [0, 1 / 9, 8 / 9], atol=1e-3)  # 16 ** 0.75 = 8
    keep = keep_probability(np.array([1, 1000]), 1e-3)  # threshold s T = 1.001
    assert keep[0] == 1.0 and keep[1] == pytest.approx((np.sqrt(1000 / 1.001) + 1) * 1.001 / 1000)


@pytest.mark.parametrize("mode", ["deepwalk", "eges"])
def test_planted_communities_are_closer_inside(world, mode):
    graph, comm, side = world
    emb = embed_graph(graph, side, mode=mode, walks=WALKS, train=TRAIN)
    warm = np.flatnonzero(emb.warm)
    assert warm.size == 80
    v = emb.vectors
    same = comm[warm][:, None] == comm[warm][None, :]
    sims = v[warm] @ v[warm].T
    inside, across = sims[same & ~np.eye(warm.size, dtype=bool)].mean(), sims[~same].mean()
    assert inside > across + 0.3, (inside, across)
    assert nearest_same_share(v, comm, warm, warm) >= 0.95
    assert emb.log["epoch_loss"][1] < emb.log["epoch_loss"][0]


def test_cold_start_vectors_come_from_side_information(world):
    graph, comm, side = world
    emb = embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN)
    cold = np.flatnonzero(~emb.warm)[1:]  # item 0 is the unknown item
    assert cold.size == 12
    np.testing.assert_allclose(emb.centre[cold], emb.model.side_only(cold, emb.warm), atol=1e-6)
    assert nearest_same_share(emb.vectors, comm, cold, np.flatnonzero(emb.warm)) >= 0.9
    assert nearest_same_share(normalize(emb.centre), comm, cold, np.flatnonzero(emb.warm)) >= 0.9
    # DeepWalk has nothing to go on for them
    dw = embed_graph(graph, side, mode="deepwalk", walks=WALKS, train=TRAIN)
    assert not np.any(dw.vectors[cold]) and not np.any(dw.vectors[0])


def test_eges_attention_is_a_softmax_and_learns_the_informative_field(world):
    graph, comm, side = world
    emb = embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN.model_copy(update={"attention_lr": 20.0}))
    w = emb.model.field_weights(np.flatnonzero(emb.warm))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    brand, noise = w[:, 1].mean(), w[:, 2].mean()
    assert brand > noise, (brand, noise)
    ges = EGESModel(graph.n_nodes, side, dim=4, mode="ges")
    np.testing.assert_allclose(ges.field_weights(np.array([1, 2])), 1 / 3)


def test_ges_vector_is_the_mean_of_its_parts():
    side = SideInfo(np.array([[0, 0], [1, 2]]), [2, 3], ["a", "b"])
    m = EGESModel(2, side, dim=3, mode="ges", seed=1)
    h, _ = m.encode(torch.tensor([1]))
    torch.testing.assert_close(h[0], (m.ids[1] + m.sides[0][1] + m.sides[1][2]) / 3)
    with pytest.raises(ValueError, match="valid modes"):
        EGESModel(2, side, mode="bge")
    with pytest.raises(ValueError, match="side information"):
        EGESModel(2, None, mode="eges")


@pytest.mark.parametrize("mode", ["deepwalk", "ges", "eges"])
def test_hand_written_backward_matches_autograd(mode):
    side = SideInfo(np.array([[0, 0], [1, 2], [1, 1]]), [2, 3], ["a", "b"])
    m = EGESModel(3, side, dim=4, mode=mode, seed=2)
    m.attention.normal_(generator=torch.Generator().manual_seed(0))
    items, grad_h = torch.tensor([1, 2, 1]), torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    _, saved = m.encode(items)
    by_hand = {(id(t), tuple(r.tolist())): g for t, r, g, _, _ in m.backward(saved, grad_h)}
    tables = [m.ids, *m.sides, m.attention]
    leaves = [t.clone().requires_grad_() for t in tables]
    m.ids, m.sides, m.attention = leaves[0], leaves[1:-1], leaves[-1]
    h, _ = m.encode(items)
    (h * grad_h).sum().backward()
    for table, leaf in zip(tables, leaves):
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        got = torch.zeros_like(table)
        for (tid, rows), g in by_hand.items():
            if tid == id(table):
                got.index_add_(0, torch.tensor(rows), g)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("change", [{"negatives_mode": "static"}, {"hard_negatives": 0.4, "hard_pool": 5},
                                    {"bf16": True}])
def test_training_variants_still_separate_communities(world, change):
    graph, comm, side = world
    emb = embed_graph(graph, side, mode="deepwalk", walks=WALKS, train=TRAIN.model_copy(update=change))
    warm = np.flatnonzero(emb.warm)
    assert nearest_same_share(emb.vectors, comm, warm, warm) >= 0.9


def test_training_is_deterministic(world):
    graph, _, side = world
    a = embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN)
    b = embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN)
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_pair_scores_by_cosine_and_by_skipgram_context(world):
    """cosine = the unit similarity vectors' dot product; context = H_a . z_b + H_b . z_a (symmetric), and it ranks
    pairs inside a planted community above pairs across."""
    graph, comm, side = world
    emb = embed_graph(graph, side, mode="deepwalk", walks=WALKS, train=TRAIN)
    pairs = np.array([[1, 2], [2, 1], [1, 30], [5, 65]])
    h, z = emb.centre, emb.context()
    np.testing.assert_allclose(emb.pair_scores(pairs), [emb.vectors[a] @ emb.vectors[b] for a, b in pairs], rtol=1e-5)
    ctx = emb.pair_scores(pairs, "context")
    np.testing.assert_allclose(ctx, [h[a] @ z[b] + h[b] @ z[a] for a, b in pairs], rtol=1e-4, atol=1e-5)
    assert ctx[0] == pytest.approx(ctx[1])
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 81, 400), rng.integers(1, 81, 400)
    same = comm[a] == comm[b]
    scores = emb.pair_scores(np.stack([a, b], 1), "context")
    assert scores[same & (a != b)].mean() > scores[~same].mean() + 1.0
    with pytest.raises(ValueError, match="similarity"):
        emb.pair_scores(pairs, "dot")
    with pytest.raises(ValueError, match=r"\(P, 2\)"):
        emb.pair_scores(np.array([1, 2, 3]))


def test_information_gain_start_trusts_the_informative_field(world):
    """side_measure="information": the brand (= community) gets a real share of every item's mix, the random field
    none to speak of, and the vectors still separate the communities."""
    graph, comm, side = world
    emb = embed_graph(graph, side, mode="eges", walks=WALKS,
                      train=TRAIN.model_copy(update={"side_measure": "information", "side_prior": 25.0}))
    warm = np.flatnonzero(emb.warm)
    w = emb.model.field_weights(warm)  # id, brand, noise
    assert w[:, 1].mean() > 0.1 and w[:, 2].mean() < 0.01, w.mean(0)
    assert nearest_same_share(emb.vectors, comm, warm, warm) >= 0.9


def test_similarity_vectors_are_centre_plus_context_for_warm_items(world):
    """vectors="sum": a warm item's vector is H + z (unit), a cold one's H plus its side values' mean z; "centre": H;
    both runs train the same tables (same seed), so only the read-out differs."""
    graph, _, side = world
    cold = 77
    sub = graph.subgraph(np.arange(graph.n_nodes) != cold)
    both = embed_graph(sub, side, mode="eges", walks=WALKS, train=TRAIN)
    plain = embed_graph(sub, side, mode="eges", walks=WALKS, train=TRAIN, vectors="centre")
    np.testing.assert_array_equal(both.centre, plain.centre)
    warm = np.flatnonzero(both.warm)
    assert cold not in warm and warm.size > 50
    raw = both.centre[warm] + both.context()[warm]
    np.testing.assert_allclose(both.vectors[warm], raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(both.norms[warm], np.linalg.norm(raw, axis=1), rtol=1e-4)
    # a cold item has no z: it borrows the mean z of the warm items sharing each side value, mixed like its H
    z, codes = both.context(), side.codes
    beta = both.model.side_weights(np.array([cold]), both.warm)[0]
    borrowed = sum(b * z[warm[codes[warm, j] == codes[cold, j]]].mean(0) for j, b in enumerate(beta)) / beta.sum()
    expected = plain.centre[cold] + borrowed
    np.testing.assert_allclose(both.vectors[cold], expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(plain.vectors * plain.norms[:, None], plain.centre, rtol=1e-4, atol=1e-6)
    assert not np.allclose(both.vectors[warm], plain.vectors[warm], atol=1e-3)
    with pytest.raises(ValueError, match="vectors"):
        embed_graph(sub, side, mode="eges", walks=WALKS, train=TRAIN, vectors="context")


def test_training_is_picked_on_held_out_training_edges(world):
    """validate=True: each start (EGES: kappa, information gain) trains cycle after cycle on the graph less some
    held-out edges while their AUC rises; the best start and cycle count train the real model (the same vectors as
    training with them directly), and the report says which and why."""
    from homefeed.recall.graph.graph import ItemGraph
    from homefeed.recall.graph.validation import MAX_CYCLES, pick_training

    graph, _, side = world
    picked, cycles, report = pick_training(graph, side, mode="eges", walks=WALKS, train=TRAIN)
    assert set(report) == {"kappa", "information", "picked", "cycles", "validation_edges"}
    assert report["validation_edges"] > 50
    for name in ("kappa", "information"):
        aucs = report[name]
        assert 1 <= len(aucs) <= MAX_CYCLES and all(0.5 < a <= 1.0 for a in aucs)
        assert all(b > a for a, b in zip(aucs[:-2], aucs[1:-1]))  # it went on only while the AUC rose
        assert len(aucs) == MAX_CYCLES or len(aucs) == 1 or aucs[-1] <= aucs[-2]
    best = max(("kappa", "information"), key=lambda k: max(report[k]))
    assert report["picked"] == best == picked.side_measure and cycles == report["cycles"] == np.argmax(report[best]) + 1
    assert picked.side_prior == (TRAIN.side_prior if best == "kappa" else 5 * TRAIN.side_prior)
    auto = embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN)
    direct = embed_graph(graph, side, mode="eges", walks=WALKS, train=picked, validate=False, cycles=cycles)
    assert auto.log["validation"] == report and "validation" not in direct.log and direct.log["cycles"] == cycles
    np.testing.assert_array_equal(auto.vectors, direct.vectors)
    # DeepWalk: only the cycles are picked
    _, _, dw = pick_training(graph, side, mode="deepwalk", walks=WALKS, train=TRAIN)
    assert dw["picked"] == "settings" and set(dw) == {"settings", "picked", "cycles", "validation_edges"}
    # a forest: no edge can go with its ends still connected, so the settings train one cycle
    path = ItemGraph.from_edges(np.arange(1, 40), np.arange(2, 41), np.ones(39), graph.n_nodes, undirected=True)
    kept, n, why = pick_training(path, side, mode="eges", walks=WALKS, train=TRAIN)
    assert kept == TRAIN and n == 1 and why == {"picked": "kappa", "cycles": 1, "validation_edges": 0}
    with pytest.raises(ValueError, match="cycles"):
        embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN, validate=False, cycles=0)
    # a graph above the edge cap trains once as set, and says why, in the embedding's log too
    kept, n, why = pick_training(graph, side, mode="eges", walks=WALKS, train=TRAIN, max_edges=graph.nnz - 1)
    assert kept == TRAIN and n == 1 and why["cycles"] == 1 and str(graph.nnz) in why["skipped"]
    capped = embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN, validate_max_edges=graph.nnz - 1)
    np.testing.assert_array_equal(capped.vectors, embed_graph(graph, side, mode="eges", walks=WALKS, train=TRAIN,
                                                              validate=False).vectors)
    assert "skipped" in capped.log["validation"]


def test_a_second_cycle_trains_on_fresh_walks_and_adds_up(world):
    graph, _, side = world
    one = embed_graph(graph, side, mode="deepwalk", walks=WALKS, train=TRAIN, validate=False)
    two = embed_graph(graph, side, mode="deepwalk", walks=WALKS, train=TRAIN, validate=False, cycles=2)
    assert two.log["cycles"] == 2 and two.log["walk_steps"] > 1.9 * one.log["walk_steps"]
    assert len(two.log["epoch_loss"]) == 2 * len(one.log["epoch_loss"])
    assert not np.allclose(one.vectors, two.vectors)

"""Alias sampling, weighted and node2vec-biased walks, the walk corpus."""
from __future__ import annotations

import numpy as np
import pytest

from homefeed.recall.graph.graph import ItemGraph
from homefeed.recall.graph.walks import PAD, WalkCorpus, WalkSettings, alias_tables, random_walks


def star(weights) -> ItemGraph:
    """Node 0 -> 1..k with the given weights, and every leaf back to 0."""
    k = len(weights)
    leaves = np.arange(1, k + 1)
    return ItemGraph.from_edges(np.r_[np.zeros(k, int), leaves], np.r_[leaves, np.zeros(k, int)],
                                np.r_[weights, np.ones(k)], k + 1)


def test_alias_table_by_hand():
    prob, alias = alias_tables(star([1.0, 3.0]))
    # row 0: weights [1, 3] -> scaled [0.5, 1.5] -> slot 0 keeps edge 0 half the time, else edge 1
    assert prob[:2].tolist() == [0.5, 1.0] and alias[:2].tolist() == [1, 1]
    assert np.all(prob[2:] == 1.0)


def test_alias_sampling_frequencies_match_edge_weights():
    w = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    walks = random_walks(star(w), settings=WalkSettings(walks_per_node=40_000, length=2, seed=3))
    nxt = walks[walks[:, 0] == 0, 1]
    observed = np.bincount(nxt, minlength=6)[1:]
    expected = nxt.size * w / w.sum()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, (observed, expected)  # 4 degrees of freedom: p = 0.0004


def test_walks_follow_edges_stop_at_dead_ends_and_are_seeded():
    g = ItemGraph.from_edges([1, 2, 2, 3], [2, 3, 1, 4], [1, 1, 1, 1], 6)  # 4 has no out-edge
    s = WalkSettings(walks_per_node=50, length=8, seed=1)
    walks = random_walks(g, settings=s)
    assert walks.shape == (3 * 50, 8) and walks.dtype == np.int32
    assert set(np.unique(walks[:, 0])) == {1, 2, 3}  # one start per node with an out-edge
    adj = g.to_scipy()
    for row in walks:
        steps = row[row != PAD]
        assert np.all(row[steps.size:] == PAD)  # padding only at the end
        assert all(adj[a, b] > 0 for a, b in zip(steps[:-1], steps[1:]))
        if steps.size < 8:
            assert steps[-1] == 4
    np.testing.assert_array_equal(walks, random_walks(g, settings=s))
    assert not np.array_equal(walks, random_walks(g, settings=s.model_copy(update={"seed": 2})))


def test_node2vec_return_parameter_biases_backtracking():
    # a ring 0..9 both ways: from any node, going back to the previous one has prior 1/2
    n = 10
    src = np.r_[np.arange(n), np.arange(n)]
    dst = np.r_[(np.arange(n) + 1) % n, (np.arange(n) - 1) % n]
    g = ItemGraph.from_edges(src, dst, np.ones(2 * n), n)

    def back_rate(p, q):
        w = random_walks(g, settings=WalkSettings(walks_per_node=300, length=6, p=p, q=q, seed=0))
        return float((w[:, 2:] == w[:, :-2]).mean())

    assert back_rate(1, 1) == pytest.approx(0.5, abs=0.03)
    assert back_rate(0.25, 1) == pytest.approx(0.8, abs=0.03)  # 4 : 1 against going on (weight 1/q = 1)
    assert back_rate(4, 1) == pytest.approx(0.2, abs=0.03)


def test_corpus_writes_once_and_streams_chunks(tmp_path):
    walks = np.arange(30, dtype=np.int32).reshape(10, 3)
    walks[9, 2] = PAD
    corpus = WalkCorpus.write(tmp_path / "w.npy", walks)
    assert len(corpus) == 10 and corpus.length == 3 and corpus.n_tokens() == 29
    chunks = list(corpus.chunks(4))
    assert [c.shape[0] for c in chunks] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), walks)
    assert corpus.counts(30).sum() == 29 and corpus.counts(30)[29] == 0
    with pytest.raises(ValueError, match="int32"):
        WalkCorpus(np.zeros((2, 2), np.float32))

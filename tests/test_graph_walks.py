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


MASK = (1 << 64) - 1


def _splitmix(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def reference_walks(graph: ItemGraph, s: WalkSettings) -> np.ndarray:
    """The walker's documented algorithm in plain Python, one walk at a time in original node ids: walk w draws
    from splitmix64 seeded (seed * 0x2545F4914F6CDD1D + w), high 32 bits pick an alias slot, low 32 keep it."""
    prob, alias = alias_tables(graph)
    deg, ptr, idx = graph.out_degree(), graph.indptr, graph.indices
    starts = np.tile(np.flatnonzero(deg > 0), s.walks_per_node)
    np.random.default_rng(s.seed).shuffle(starts)
    keep_at = np.where(prob >= 1.0, 2 ** 32, np.minimum(prob.astype(np.float64) * 2.0 ** 32, 2.0 ** 32 - 1).astype(np.int64))
    inv_p, inv_q = 1.0 / s.p, 1.0 / s.q
    top = max(inv_p, 1.0, inv_q)
    out = np.full((starts.size, s.length), PAD, np.int32)

    def draw(state, v):
        state, z = _splitmix(state)
        e = int(ptr[v]) + (((z >> 32) * int(deg[v])) >> 32)
        return state, int(idx[e] if (z & 0xFFFFFFFF) < keep_at[e] else idx[ptr[v] + alias[e]])

    for w, v in enumerate(starts):
        state, _ = _splitmix((s.seed * 0x2545F4914F6CDD1D + w) & MASK)
        out[w, 0] = v
        for step in range(1, s.length):
            if deg[v] == 0:
                break
            state, nxt = draw(state, v)
            while (inv_p != 1.0 or inv_q != 1.0) and step >= 2:
                prev = int(out[w, step - 2])
                bias = inv_p if nxt == prev else (1.0 if nxt in idx[ptr[prev]:ptr[prev + 1]] else inv_q)
                state, z = _splitmix(state)
                if (z >> 11) * (1.0 / 9007199254740992.0) * top < bias:
                    break
                state, nxt = draw(state, v)
            out[w, step] = v = nxt
    return out


def seeded_graph(n: int = 400, seed: int = 5) -> ItemGraph:
    """A random weighted graph in 8 communities with ids shuffled across them, and a few dead ends."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n - 10, 6 * n)
    dst = np.where(rng.random(src.size) < 0.85, (src // 50) * 50 + rng.integers(0, 50, src.size), rng.integers(0, n, src.size))
    perm = rng.permutation(n)
    return ItemGraph.from_edges(perm[src], perm[dst], rng.integers(1, 6, src.size).astype(float), n)


@pytest.mark.parametrize("p,q", [(1.0, 1.0), (0.5, 2.0)])
def test_walks_equal_the_reference_walker_bit_for_bit(p, q):
    g = seeded_graph()
    s = WalkSettings(walks_per_node=3, length=12, p=p, q=q, seed=11)
    expected = reference_walks(g, s)
    assert (expected == PAD).any() and (expected[:, -1] != PAD).any()  # dead ends and full walks both occur
    np.testing.assert_array_equal(random_walks(g, settings=s), expected)

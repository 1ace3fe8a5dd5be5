"""A planted-community item graph with side information, for graph-embedding tests."""
from __future__ import annotations

import numpy as np

from homefeed.recall.graph.eges import SideInfo
from homefeed.recall.graph.graph import ItemGraph


def planted(n_comm: int = 4, size: int = 20, *, p_in: float = 0.4, p_out: float = 0.01, n_cold: int = 0,
            seed: int = 0) -> tuple[ItemGraph, np.ndarray, SideInfo]:
    """Items 1..n_comm*size in communities of `size` (dense inside, sparse across, undirected), then `n_cold`
    items per community with no edge at all. Code 0 is the unknown item.

    Returns (graph, community (N,) int64 with -1 for item 0, side info): field "brand" = community + 1
    (informative), field "noise" = a random code 1..10 (uninformative).
    """
    rng = np.random.default_rng(seed)
    warm = n_comm * size
    n = 1 + warm + n_comm * n_cold
    comm = np.full(n, -1)
    comm[1:warm + 1] = np.repeat(np.arange(n_comm), size)
    comm[warm + 1:] = np.repeat(np.arange(n_comm), n_cold)
    a, b = np.triu_indices(warm, 1)
    same = comm[a + 1] == comm[b + 1]
    keep = rng.random(a.size) < np.where(same, p_in, p_out)
    graph = ItemGraph.from_edges(a[keep] + 1, b[keep] + 1, np.ones(keep.sum()), n, undirected=True)
    codes = np.zeros((n, 2), np.int64)
    codes[1:, 0] = comm[1:] + 1
    codes[1:, 1] = rng.integers(1, 11, n - 1)
    return graph, comm, SideInfo(codes, [n_comm + 1, 11], ["brand", "noise"])


def nearest_same_share(vectors: np.ndarray, comm: np.ndarray, rows: np.ndarray, among: np.ndarray) -> float:
    """Share of `rows` whose most similar item among `among` (itself excluded) is in the same community."""
    sims = vectors[rows] @ vectors[among].T
    sims[rows[:, None] == among[None, :]] = -np.inf
    return float((comm[among[np.argmax(sims, axis=1)]] == comm[rows]).mean())

"""Cut the item graph into P balanced parts with few edges between them, so parts can train apart.

The EGES paper trains its billion-edge graph on a parameter server; a single machine gets the same
kind of parallelism by *partitioning*: walks that stay inside one part touch only that part's id
and context rows, so P workers never write the same row, and only the side-information tables
(shared by all items) are touched by everyone. Edges between parts are lost, which is the quality
the partition costs; a good cut keeps that small.

Methods:
- "metis": METIS (Karypis & Kumar 1998), multilevel k-way partitioning minimising the edge cut under
  a balance constraint, through `pymetis` where it is installed. The standard answer.
- "label_propagation": the fallback needing nothing: each node repeatedly takes the label with the
  largest edge weight among its neighbours (Raghavan et al. 2007, in random node order, seeded), which
  finds dense communities; communities are then packed greedily into P parts, largest first, each into
  the lightest part so far (LPT scheduling). Balance is good when no community is bigger than N / P;
  a bigger one is split by node order.
- "auto": metis where pymetis imports, else label propagation.

    >>> parts = partition_graph(graph, 4, method="label_propagation")   # (N,) int32 in 0..3
"""
from __future__ import annotations

import numpy as np
from numba import njit

from homefeed.recall.graph.graph import ItemGraph

METHODS = ("auto", "metis", "label_propagation")


def has_metis() -> bool:
    try:
        import pymetis  # noqa: F401
    except ImportError:
        return False
    return True


def symmetric(graph: ItemGraph) -> ItemGraph:
    """Both directions of every edge, weights summed: partitioners work on undirected graphs."""
    src, dst, w = graph.edges()
    return ItemGraph.from_edges(src, dst, w, graph.n_nodes, undirected=True)


@njit(cache=True)
def _propagate(indptr, indices, weights, order, labels, rounds):
    score = np.zeros(labels.size, np.float64)
    for _ in range(rounds):
        changed = 0
        for v in order:
            lo, hi = indptr[v], indptr[v + 1]
            if lo == hi:
                continue
            for e in range(lo, hi):
                score[labels[indices[e]]] += weights[e]
            best, best_score = labels[v], score[labels[v]]
            for e in range(lo, hi):
                lab = labels[indices[e]]
                if score[lab] > best_score or (score[lab] == best_score and lab < best):
                    best, best_score = lab, score[lab]
            for e in range(lo, hi):
                score[labels[indices[e]]] = 0.0
            if best != labels[v]:
                labels[v] = best
                changed += 1
        if changed == 0:
            break


def label_propagation(graph: ItemGraph, *, rounds: int = 20, seed: int = 0) -> np.ndarray:
    """(N,) int64 community label per node (a node's own code when it has no edges)."""
    g = symmetric(graph)
    labels = np.arange(g.n_nodes, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(g.n_nodes).astype(np.int64)
    _propagate(g.indptr, g.indices, g.weights.astype(np.float64), order, labels, rounds)
    return labels


def pack_communities(labels: np.ndarray, n_parts: int, *, active: np.ndarray | None = None) -> np.ndarray:
    """(N,) int32 part per node: communities (by size of their `active` nodes, largest first) each go to the
    lightest part so far; a community larger than the ideal part size is cut into pieces of that size first."""
    active = np.ones(labels.size, bool) if active is None else active
    _, comm = np.unique(labels, return_inverse=True)
    cap = max(1, -(-int(active.sum()) // n_parts))
    order = np.lexsort((np.arange(labels.size), comm))  # nodes grouped by community
    rank = np.arange(order.size) - np.searchsorted(comm[order], comm[order])  # position within community
    piece = np.zeros(labels.size, np.int64)
    piece[order] = comm[order] * (labels.size + 1) + rank // cap
    _, piece = np.unique(piece, return_inverse=True)
    sizes = np.bincount(piece, weights=active.astype(np.float64))
    load, owner = np.zeros(n_parts), np.empty(sizes.size, np.int32)
    for p in np.argsort(-sizes, kind="stable"):  # one step per community piece, not per node
        owner[p] = int(np.argmin(load))
        load[owner[p]] += sizes[p]
    return owner[piece]


def metis_parts(graph: ItemGraph, n_parts: int, *, seed: int = 0) -> np.ndarray:
    """(N,) int32 METIS parts of the symmetrised graph (integer edge weights, at least 1)."""
    import pymetis

    g = symmetric(graph)
    w = np.maximum(np.rint(g.weights), 1).astype(np.int64)
    options = pymetis.Options(seed=seed)
    _, parts = pymetis.part_graph(n_parts, adjacency=pymetis.CSRAdjacency(g.indptr, g.indices), eweights=w, options=options)
    return np.asarray(parts, np.int32)


def partition_graph(graph: ItemGraph, n_parts: int, *, method: str = "auto", seed: int = 0) -> np.ndarray:
    """(N,) int32 part 0..n_parts-1 of every node. Nodes without edges are spread round-robin."""
    if method not in METHODS:
        raise ValueError(f"unknown partition method {method!r}; valid methods: {', '.join(METHODS)}")
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    if method == "metis" and not has_metis():
        raise ValueError("partition method 'metis' needs pymetis (pip install pymetis); or use 'label_propagation'")
    active = graph.active()
    if n_parts == 1:
        return np.zeros(graph.n_nodes, np.int32)
    if method == "metis" or (method == "auto" and has_metis()):
        parts = metis_parts(graph, n_parts, seed=seed)
    else:
        parts = pack_communities(label_propagation(graph, seed=seed), n_parts, active=active)
    idle = np.flatnonzero(~active)
    parts[idle] = np.arange(idle.size) % n_parts
    return parts.astype(np.int32)


def cut_share(graph: ItemGraph, parts: np.ndarray) -> float:
    """Share of the total edge weight that crosses between parts (lost to partitioned training)."""
    src, dst, w = graph.edges()
    total = float(w.sum())
    return float(w[parts[src] != parts[dst]].sum()) / total if total > 0 else 0.0

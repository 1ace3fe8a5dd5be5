"""Where link prediction misses: the AUC of each score split by the pairs' endpoint degree and shared neighbours.

A link AUC alone does not say what limits it. Two splits of the labelled pairs (`graph_evaluate.link_split`)
do, each computed on the *training* graph (taken both ways):
- "min_degree": the smaller number of distinct training neighbours of the pair's two ends, binned
  (1, 2, 3-4, 5-9, 10+): are the misses low-degree items whose vectors rest on few walks?
- "common": whether the two ends share a training neighbour ("none" / "some"): is the pair reachable
  within two steps, so that a walk window sees both often, or only further apart?
Each bin reports the share of positives and of negatives in it and every score's AUC inside it (None when a
bin holds one class only). On Amazon Toys (DeepWalk, default protocol): 69% of held-out edges share no
neighbour (AUC .71 cosine there, .80 where they do), and only 4% touch an item with at most 2 neighbours.
What does not help there (DeepWalk, cosine .759): node2vec q = 2 or 4 (.757, .756), skip-gram window 3 or 8
(.752, .760), dim 128 (.759), negative exponent .25 or 1 (.758, .757), hard negatives .2 (.753). Linking
steps two apart in a sequence looks better (.779) only because a held-out pair then keeps its triangle from
the same sequence (Taobao tail jumps .89 -> .99); with the sequences cut at every held-out transition it is .762.

    >>> link_breakdown(train_graph, pairs, labels, {"deepwalk": cosine})   # doctest: +SKIP
    {"min_degree": {"1": {"pos_share": .01, "neg_share": .01, "deepwalk": .70}, ...}, "common": {"none": ..., "some": ...}}
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from homefeed.evaluate.metrics import auc
from homefeed.recall.graph.graph import ItemGraph

DEGREE_BINS: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 4), (5, 9), (10, 1 << 62))


def bin_name(lo: int, hi: int) -> str:
    """"1", "3-4", "10+"."""
    return str(lo) if lo == hi else (f"{lo}+" if hi >= 1 << 62 else f"{lo}-{hi}")


def two_way_adjacency(graph: ItemGraph) -> sp.csr_matrix:
    """(n, n) 0/1 float matrix: i ~ j when the graph has i -> j or j -> i."""
    src, dst, _ = graph.edges()
    n = graph.n_nodes
    adj = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    return ((adj + adj.T) > 0).astype(np.float64).tocsr()


def _cell(mask: np.ndarray, labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    pos, neg = labels == 1, labels == 0
    row: dict = {"pos_share": float((mask & pos).sum() / max(pos.sum(), 1)),
                 "neg_share": float((mask & neg).sum() / max(neg.sum(), 1))}
    both = (mask & pos).any() and (mask & neg).any()
    for name, s in scores.items():
        row[name] = float(auc(labels[mask], s[mask])) if both else None
    return row


def link_breakdown(train_graph: ItemGraph, pairs: np.ndarray, labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    """{"min_degree": {bin: cell}, "common": {"none" | "some": cell}}, cell = {"pos_share", "neg_share", name: AUC}."""
    pairs, labels = np.asarray(pairs), np.asarray(labels)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) != len(labels):
        raise ValueError(f"pairs must be (P, 2) with one label each; got pairs {pairs.shape}, labels {labels.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= train_graph.n_nodes):
        raise ValueError(f"pair ends must lie in 0..{train_graph.n_nodes - 1}; got {pairs.min()}..{pairs.max()}")
    for name, s in scores.items():
        if np.shape(s) != labels.shape:
            raise ValueError(f"score {name!r} has shape {np.shape(s)}, expected {labels.shape} (one per pair)")
    adj = two_way_adjacency(train_graph)
    degree = np.diff(adj.indptr)
    low = np.minimum(degree[pairs[:, 0]], degree[pairs[:, 1]])
    shared = np.asarray(adj[pairs[:, 0]].multiply(adj[pairs[:, 1]]).sum(1)).ravel() > 0
    by_degree = {bin_name(lo, hi): _cell((low >= lo) & (low <= hi), labels, scores) for lo, hi in DEGREE_BINS}
    zero = low == 0
    if zero.any():
        by_degree = {"0": _cell(zero, labels, scores), **by_degree}
    return {"min_degree": by_degree, "common": {"none": _cell(~shared, labels, scores), "some": _cell(shared, labels, scores)}}


__all__ = ["DEGREE_BINS", "link_breakdown", "two_way_adjacency"]

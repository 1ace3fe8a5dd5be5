"""Evaluating graph embeddings: link-prediction AUC (the EGES paper's test) and cold-start HitRate.

1. Link prediction (Wang et al., KDD 2018, section 4.1): up to a third of the graph's edges (as
   unordered pairs) are held out, vectors are trained on the rest, and each held-out pair must score
   higher (cosine of the two vectors) than pairs that are not edges, as many as there are held-out
   edges. AUC = P(score(held-out edge) > score(negative pair)), by `homefeed.evaluate.metrics.auc`.
   The paper (Amazon): BGE 0.9327 < GES 0.9575 < EGES 0.9700. The same pairs are also scored by
   skip-gram's own score both ways ("auc_context"), which is what the channel's default table ranks by.
   `LinkProtocol` says how:
   - keep "connected" (node2vec, Grover & Leskovec, KDD 2016): a random spanning forest is never held
     out, so every held-out edge joins two nodes the training graph still connects; "endpoints": both
     ends keep some training edge. Either way no held-out pair scores against an empty vector. (Holding
     out edges at random left 48% of the held-out pairs of a sparse shop log touching an item with no
     training edge, against 27% of the random pairs, and ranked DeepWalk below chance.)
   - negatives "degree": both ends drawn from the held-out edges' ends, so popularity cannot tell the
     sides apart; "uniform": among nodes with a training edge (the paper's random pairs).
   - undirected (default): the training graph is walked both ways, since a held-out pair is unordered;
     off, it is walked as the channel walks it (sparse directed session graphs dead-end quickly).
   The embedding may pick its own training cycles and side start on edges it holds out of the
   training graph it is given (`recall/graph/validation.py`); the test edges are never in that graph.
2. Cold-start recall: the users of the test part who acted on *cold* items (no training event at
   all); relevant = those cold items; HitRate@K of each channel's list. Item-CF and Swing cannot
   recall an item nobody touched, nor can a table by skip-gram context scores (a cold item has no
   context vector); EGES and GES tables by cosine can, through side information ("<method>_cosine").

Everything else (overall HitRate/Recall@K, the merged list) is `homefeed.recall.evaluate.evaluate_recall`.

    >>> result = evaluate_graph(ds, settings=EGESSettings(), k=50)          # doctest: +SKIP
    >>> result["auc"]                       # {"deepwalk": 0.96, "ges": 0.97, "eges": 0.98}
    >>> result["cold_start_hitrate@50"]     # {"deepwalk": 0.0, ..., "eges_cosine": .., "itemcf": 0.0, "swing": 0.0}
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from numba import njit
from pydantic import Field
from rich.table import Table
from scipy.sparse.csgraph import minimum_spanning_tree

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.user_state import states_at
from homefeed.evaluate.metrics import auc, topk_metrics
from homefeed.evaluate.report import metrics_table
from homefeed.recall.base import Recaller
from homefeed.recall.evaluate import as_matrix, relevant_items
from homefeed.recall.graph.channel import EGES, DeepWalk, EGESSettings
from homefeed.recall.graph.eges import MODES, SideInfo
from homefeed.recall.graph.embed import PartitionSettings, embed_graph
from homefeed.recall.graph.graph import ItemGraph, build_graph, sequence_unit

METHODS = MODES  # "deepwalk", "ges", "eges"
Negatives = Literal["degree", "uniform"]
NEGATIVES: tuple[str, ...] = ("degree", "uniform")
Keep = Literal["connected", "endpoints"]
KEEPS: tuple[str, ...] = ("connected", "endpoints")


@njit(cache=True)
def _greedy_holdout(a, b, degree, target, held):
    """Walk the edges (a[e], b[e]) in the given order and hold one out while both its ends keep another edge."""
    n_held = 0
    for e in range(a.size):
        if n_held >= target:
            break
        if degree[a[e]] > 1 and degree[b[e]] > 1:
            degree[a[e]] -= 1
            degree[b[e]] -= 1
            held[e] = True
            n_held += 1


def _negative_pairs(candidates_a: np.ndarray, candidates_b: np.ndarray, edge_keys: np.ndarray, n: int, count: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(count, 2) int64 pairs {a, b}, a drawn from `candidates_a` and b from `candidates_b`, never an edge nor a loop."""
    out = np.zeros((0, 2), np.int64)
    for _ in range(50):
        if len(out) >= count:
            break
        a, b = rng.choice(candidates_a, 2 * count + 16), rng.choice(candidates_b, 2 * count + 16)
        key = np.minimum(a, b) * n + np.maximum(a, b)
        fresh = (a != b) & ~np.isin(key, edge_keys)
        out = np.r_[out, np.stack([a[fresh], b[fresh]], 1)]
    return out[:count]


def spanning_forest(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(E,) bool: the edges {a[e], b[e]} of a random spanning forest (Kruskal on random weights)."""
    if a.size == 0:
        return np.zeros(0, bool)
    weight = rng.random(a.size) + 1.0  # distinct positive weights: every edge is stored
    forest = minimum_spanning_tree(sp.coo_matrix((weight, (a, b)), shape=(n, n)).tocsr()).tocoo()
    return np.isin(weight, forest.data)


def holdout_edges(graph: ItemGraph, *, share: float = 1 / 3, seed: int = 0, negatives: Negatives = "degree",
                  keep: Keep = "connected") -> tuple[ItemGraph, np.ndarray, np.ndarray]:
    """Hold out up to `share` of the unordered edges {i, j} (both directions go); pair them with as many node pairs
    that are not edges of the full graph.

    keep: "connected" never holds out an edge of a random spanning forest, so the training graph still joins
    i and j (node2vec's protocol); "endpoints" holds out an edge only while i and j each keep another edge.
    Either way every held-out edge joins two nodes with a trained vector, so no pair is scored against an
    empty vector. On a tree-like graph fewer than `share` edges can go (the count is in the labels); on a
    forest none can under "connected" (a ValueError).

    negatives: "degree" draws each end of a negative pair from the ends of the held-out edges (the same
    nodes, as often as they occur in positives: popularity alone cannot separate the two sides);
    "uniform" draws both ends uniformly among nodes with a training edge (the EGES paper's random pairs).

    Returns (training graph, pairs (2 n, 2) int64, labels (2 n,) 1 = held-out edge, 0 = negative pair).
    """
    if not 0 < share < 1:
        raise ValueError(f"share must lie in (0, 1), got {share}")
    if keep not in KEEPS:
        raise ValueError(f"unknown keep {keep!r}; valid: {', '.join(KEEPS)}")
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r}; valid: {', '.join(NEGATIVES)}")
    rng = np.random.default_rng(seed)
    src, dst, w = graph.edges()
    n = graph.n_nodes
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    keys = np.unique(lo * n + hi)
    keys = keys[rng.permutation(keys.size)]
    a, b = keys // n, keys % n
    target = int(round(share * keys.size))
    if keep == "connected":
        free = np.flatnonzero(~spanning_forest(a, b, n, rng))  # already in random order
        held_mask = np.zeros(keys.size, bool)
        held_mask[free[:target]] = True
    else:
        degree = np.bincount(np.r_[a, b], minlength=n).astype(np.int64)
        held_mask = np.zeros(keys.size, bool)
        _greedy_holdout(a, b, degree, target, held_mask)
    held = keys[held_mask]
    if held.size == 0:
        raise ValueError(f"no edge of the graph ({keys.size} unordered edges) can be held out with keep={keep!r}: "
                         + ("every edge is a bridge (the graph is a forest); try keep='endpoints'" if keep == "connected"
                            else "no edge has both ends on another edge"))
    out = np.isin(lo * n + hi, held)
    train = ItemGraph.from_edges(src[~out], dst[~out], w[~out], n)
    pos = np.stack([held // n, held % n], 1)
    if negatives == "degree":
        neg = _negative_pairs(pos.ravel(), pos.ravel(), keys, n, len(pos), rng)
    else:
        nodes = np.flatnonzero(train.active())
        neg = _negative_pairs(nodes, nodes, keys, n, len(pos), rng)
    return train, np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]


def pair_auc(vectors: np.ndarray, pairs: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the inner product of (unit) vectors over labelled pairs."""
    scores = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    return auc(labels, scores)


def check_methods(methods: tuple[str, ...]) -> None:
    """Raise a ValueError naming the valid methods when `methods` is empty or holds an unknown one."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or 'none given'}; valid methods: {', '.join(METHODS)}")


class LinkProtocol(Section):
    """How link prediction holds out edges, draws negatives and trains (see the module docstring)."""

    share: float = Field(1 / 3, gt=0, lt=1)  # most edges held out (fewer where the graph is tree-like)
    keep: Keep = "connected"  # "connected": held-out ends stay connected; "endpoints": each keeps an edge
    negatives: Negatives = "degree"  # "degree": ends of held-out edges; "uniform": any node with a training edge
    undirected: bool = True  # train on the training graph walked both ways (a held-out pair is unordered)
    seed: int = 0


def link_split(graph: ItemGraph, protocol: LinkProtocol) -> tuple[ItemGraph, np.ndarray, np.ndarray]:
    """`holdout_edges` under `protocol`; the training graph made two-way when `protocol.undirected`."""
    p = protocol
    train_graph, pairs, labels = holdout_edges(graph, share=p.share, seed=p.seed, keep=p.keep, negatives=p.negatives)
    if p.undirected:
        src, dst, w = train_graph.edges()
        train_graph = ItemGraph.from_edges(src, dst, w, train_graph.n_nodes, undirected=True)
    return train_graph, pairs, labels


def link_prediction(graph: ItemGraph, side: SideInfo | None, *, settings: EGESSettings | None = None,
                    methods: tuple[str, ...] = METHODS, protocol: LinkProtocol | None = None,
                    partition: PartitionSettings | None = None) -> dict:
    """`{"auc": {method: AUC}, "auc_context": {method: AUC}, "pairs": held-out edges scored}`: "auc" scores pairs
    by the cosine of their vectors (the paper's test), "auc_context" by skip-gram's own score both ways
    (`Embedding.pair_scores(..., "context")`, what the channel's default table ranks by). With `partition`
    (parts > 1) also AUCs of "<method>_p<P>" trained partitioned."""
    s = settings or EGESSettings()
    check_methods(methods)
    train_graph, pairs, labels = link_split(graph, protocol or LinkProtocol())
    out: dict[str, float] = {}
    context: dict[str, float] = {}
    for method in methods:
        runs = {method: PartitionSettings()}
        if partition is not None and partition.parts > 1:
            runs[f"{method}_p{partition.parts}"] = partition
        for name, part in runs.items():
            emb = embed_graph(train_graph, side, mode=method, walks=s.walks, train=s.train, partition=part,
                              vectors=s.vectors, validate=s.pick_on_validation, validate_max_edges=s.pick_max_edges)
            out[name] = pair_auc(emb.vectors, pairs, labels)
            context[name] = auc(labels, emb.pair_scores(pairs, "context"))
    return {"auc": out, "auc_context": context, "pairs": int(labels.sum())}


def cold_items(dataset: Dataset) -> np.ndarray:
    """(n_items,) bool: items with no training event."""
    seen = np.zeros(dataset.n_items, bool)
    seen[dataset.events_in("train")["item_id"].to_numpy()] = True
    return ~seen


def part_start(dataset: Dataset, part: str) -> int:
    """Start time of the part scored; a ValueError for "train" (no history before it) or an unknown part."""
    start, _ = dataset.split.bounds(part)
    if start is None:
        raise ValueError(f"cannot evaluate on part {part!r}: it has no history before it; use 'valid' or 'test'")
    return start


def cold_start_hitrate(dataset: Dataset, channels: dict[str, Recaller], *, k: int = 50, part: str = "test",
                       max_users: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per channel: HitRate@k and Recall@k over users of `part` whose relevant items are the cold ones they acted on."""
    start = part_start(dataset, part)
    cold = cold_items(dataset)
    users, relevant = relevant_items(dataset, part)
    relevant = [r[cold[r]] for r in relevant]
    keep = np.flatnonzero([r.size > 0 for r in relevant])
    if max_users is not None and keep.size > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_users, replace=False))
    users, relevant = users[keep], [relevant[i] for i in keep]
    states = states_at(dataset.events, dataset.users, start, user_ids=users)
    out = {}
    for name, channel in channels.items():
        m = topk_metrics(as_matrix(channel.recall_batch(states, k), k), relevant, (k,))
        out[name] = {f"hitrate@{k}": m[f"hitrate@{k}"], f"recall@{k}": m[f"recall@{k}"], "users": len(users)}
    return out


def graph_channels(settings: EGESSettings | None = None, methods: tuple[str, ...] = METHODS) -> dict[str, Recaller]:
    """Unfitted channels, one per method: DeepWalk, EGES in "ges" mode, EGES."""
    s = settings or EGESSettings()
    base = {k: v for k, v in s.model_dump().items() if k in DeepWalk.Settings.model_fields}
    make = {"deepwalk": lambda: DeepWalk(settings=DeepWalk.Settings(**base)),
            "ges": lambda: EGES(settings=s.model_copy(update={"mode": "ges"})),
            "eges": lambda: EGES(settings=s.model_copy(update={"mode": "eges"}))}
    return {m: make[m]() for m in methods}


def evaluate_graph(dataset: Dataset, *, settings: EGESSettings | None = None, methods: tuple[str, ...] = METHODS,
                   baselines: dict[str, Recaller] | None = None, fitted: dict[str, Recaller] | None = None,
                   k: int = 50, part: str = "test", max_users: int | None = None, seed: int = 0,
                   partitions: int = 1, protocol: LinkProtocol | None = None, cold_start: bool = True) -> dict:
    """`{"auc": {method: AUC}, "auc_context": {method: AUC}, "cold_start_hitrate@k": {channel: HR}, "cold_start":
    {channel: {...}}, "setup": {...}}` (the two AUCs as `link_prediction` says).

    Parameters:
        baselines: fitted channels scored on cold-start too (e.g. fitted Item-CF and Swing).
        fitted: graph channels already fitted on `dataset`, by method name (the others are fitted here).
        partitions: > 1 adds "<method>_p<P>" link-prediction AUCs with sub-graph training.
        protocol: how link prediction holds out edges (default `LinkProtocol(seed=seed)`).
        cold_start: False skips the cold-start recall (no channel is fitted; its entries are empty).
    """
    check_methods(methods)
    part_start(dataset, part)
    s = settings or EGESSettings()
    events = dataset.events_in("train")
    graph = build_graph(events, dataset.n_items, settings=s.graph)
    side = EGES(settings=s)._side(dataset)
    part_settings = s.partition.model_copy(update={"parts": partitions}) if partitions > 1 else None
    protocol = protocol or LinkProtocol(seed=seed)
    link = link_prediction(graph, side, settings=s, methods=methods, protocol=protocol, partition=part_settings)
    setup = {"part": part, "k": k, "graph_nodes": int(graph.active().sum()), "graph_edges": graph.nnz,
             "sequences": sequence_unit(events, s.graph), "link_pairs": link["pairs"], "link_protocol": protocol.model_dump(),
             "cold_items": int(cold_items(dataset)[1:].sum()), "side_fields": side.names}
    if not cold_start:
        return {"auc": link["auc"], "auc_context": link["auc_context"], f"cold_start_hitrate@{k}": {}, "cold_start": {},
                "setup": setup}
    fitted = fitted or {}
    channels = {name: fitted[name] if name in fitted else ch.fit(dataset)
                for name, ch in graph_channels(s, methods).items()}
    if s.similarity != "cosine":  # only cosine tables can list cold items: score those too
        channels.update({f"{m}_cosine": channels[m].with_similarity("cosine") for m in methods if m != "deepwalk"})
    channels.update(baselines or {})
    cold = cold_start_hitrate(dataset, channels, k=k, part=part, max_users=max_users, seed=seed)
    return {"auc": link["auc"], "auc_context": link["auc_context"],
            f"cold_start_hitrate@{k}": {n: v[f"hitrate@{k}"] for n, v in cold.items()},
            "cold_start": cold, "setup": setup}


def evaluate_graph_dataset(dataset: Dataset, channel_settings: dict[str, dict] | None = None, *,
                           baselines: tuple[str, ...] = ("itemcf", "swing"), **options) -> dict:
    """`evaluate_graph` with settings as config holds them (`recall.channel_settings`, keyed by channel name):
    the "eges" entry sets the graph methods, and the named baselines are fitted by `fit_channels`."""
    from homefeed.recall.evaluate import fit_channels

    check_methods(options.get("methods", METHODS))
    part_start(dataset, options.get("part", "test"))
    channel_settings = channel_settings or {}
    settings = EGESSettings(**channel_settings.get("eges", {}))
    cold_start = options.get("cold_start", True)
    fitted = fit_channels(dataset, list(baselines), channel_settings) if baselines and cold_start else {}
    return evaluate_graph(dataset, settings=settings, baselines=fitted, **options)


def format_graph_table(result: dict) -> Table:
    """One row per method/channel: link-prediction AUC and cold-start HitRate/Recall."""
    rows: dict[str, dict] = {}
    for name, value in result["auc"].items():
        rows.setdefault(name, {})["link_auc"] = value
    for name, value in result.get("auc_context", {}).items():
        rows.setdefault(name, {})["link_auc_context"] = value
    for name, metrics in result["cold_start"].items():
        rows.setdefault(name, {}).update({f"cold_{m}": v for m, v in metrics.items()})
    setup = result["setup"]
    return metrics_table(rows, title=f"graph embeddings ({setup['graph_nodes']} nodes walked by {setup['sequences']}, "
                                     f"{setup['link_pairs']} held-out edges, {setup['cold_items']} cold items)",
                         name_header="method")


def cold_share(dataset: Dataset, part: str = "test") -> float:
    """Share of the part's events that fall on cold items (how much cold-start recall can matter)."""
    cold = cold_items(dataset)
    items = dataset.events_in(part)["item_id"].to_numpy()
    return float(cold[items].mean()) if items.size else 0.0


__all__ = ["LinkProtocol", "cold_items", "cold_share", "cold_start_hitrate", "evaluate_graph", "evaluate_graph_dataset", "format_graph_table",
           "graph_channels", "holdout_edges", "link_prediction", "link_split", "pair_auc"]

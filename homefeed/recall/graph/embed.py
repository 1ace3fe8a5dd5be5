"""Graph -> walks -> skip-gram -> item vectors: the one pipeline behind the DeepWalk and EGES channels.

    >>> result = embed_graph(graph, side, mode="eges")                  # doctest: +SKIP
    >>> result.vectors.shape, result.warm.sum()                          # doctest: +SKIP
    ((20001, 64), 15873)

Items that appear in the walks are *warm* and get their trained vector H_v; every other item is
*cold* and gets the side-information vector (EGES, GES) or none at all (DeepWalk: a zero row, never
indexed); with no informative side field at all, GES and EGES train as DeepWalk. With
`partitions > 1` the graph is cut into parts trained apart (`parallel.py`). Unless told otherwise,
the number of training cycles and EGES's side start are picked on edges held out of the graph
(`validation.py`) before the real training.

The similarity vector of a warm item is H_v + z_v, its centre plus its context vector (`vectors="sum"`,
the "w + c" of Levy, Goldberg & Dagan, TACL 2015, GloVe's W + W~): cos(H_a + z_a, H_b + z_b) adds the
skip-gram scores H_a . z_b + H_b . z_a (a and b walk together) to the shared-context terms. Link AUC
(cosine, held-out edges; H alone -> H + z): Taobao tail DeepWalk .888 -> .892, GES .955 -> .971, EGES
.946 -> .969; Toys .751 -> .760, .762 -> .779, .750 -> .760; MovieLens .765 -> .783 (DeepWalk).
A cold item has no z of its own: it borrows the mean z of the warm items sharing each of its side values,
mixed by the same field weights as its H (`side_context`), so warm and cold vectors stay comparable.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from homefeed.config import Section
from homefeed.recall.ann import AnnIndex, normalize
from homefeed.recall.graph.eges import EGESModel, Mode, SideInfo, side_agreement, side_information_gain
from homefeed.recall.graph.graph import ItemGraph
from homefeed.recall.graph.skipgram import Shard, TrainSettings, train_skipgram
from homefeed.recall.graph.walks import WalkCorpus, WalkSettings, random_walks


class PartitionSettings(Section):
    """Sub-graph parallel training (see `parallel.py`)."""

    parts: int = Field(1, ge=1)  # P parts; 1 = train on the whole graph
    method: str = "auto"  # "metis" (pymetis), "label_propagation", or "auto" (metis where installed)
    workers: int = Field(1, ge=1)  # processes training parts at once; 1 = one part after another
    start_method: Literal["spawn", "forkserver"] = "spawn"  # how workers start (not fork: numba's OpenMP forbids it)


@dataclass
class Embedding:
    """Trained item vectors.

    Attributes:
        vectors: (N, D) float32 unit-length similarity vectors (H_v + z_v for warm items, H_v for cold ones, or H_v
            alone with `vectors="centre"`; zero rows: no vector).
        norms: (N,) float32 their length before normalising (the raw vector is vectors * norms).
        warm: (N,) bool items that were in the walks.
        model: the trained EGESModel (tables, attention; `model.context` holds the context vectors z).
        log: training counters (pairs, words/s, loss per epoch, walk seconds).
        centre: (N, D) float32 raw centre vectors H_v (zero rows: no vector); skip-gram's score is centre . context.
    """

    vectors: np.ndarray
    norms: np.ndarray
    warm: np.ndarray
    model: EGESModel
    log: dict = field(default_factory=dict)
    centre: np.ndarray | None = None

    def __post_init__(self):
        if self.centre is None:
            self.centre = self.vectors * self.norms[:, None]

    def has_vector(self) -> np.ndarray:
        return self.norms > 0

    def context(self) -> np.ndarray:
        """(N, D) float32 skip-gram context vectors z (zero for items never seen as a context)."""
        return self.model.context.numpy()

    def pair_scores(self, pairs: np.ndarray, similarity: Literal["cosine", "context"] = "cosine") -> np.ndarray:
        """(P,) float32 scores of unordered item pairs (P, 2): the cosine of their `vectors` (the paper's test, on
        H + z by default), or skip-gram's own score both ways, H_a . z_b + H_b . z_a (what the channel's default
        "context" table ranks by)."""
        pairs = np.asarray(pairs, np.int64)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be (P, 2), got shape {pairs.shape}")
        a, b = pairs[:, 0], pairs[:, 1]
        if similarity == "cosine":
            return np.einsum("ij,ij->i", self.vectors[a], self.vectors[b])
        if similarity != "context":
            raise ValueError(f"unknown similarity {similarity!r}; valid: cosine, context")
        h, z = self.centre, self.context()
        return np.einsum("ij,ij->i", h[a], z[b]) + np.einsum("ij,ij->i", h[b], z[a])


def neighbours(graph: ItemGraph) -> np.ndarray:
    """(N,) int64 distinct neighbours of each node, in or out."""
    src, dst, _ = graph.edges()
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    pairs = np.unique(lo * graph.n_nodes + hi)
    return np.bincount(np.r_[pairs // graph.n_nodes, pairs % graph.n_nodes], minlength=graph.n_nodes)


def side_context(model: EGESModel, warm: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(len(items), D) float32 context vectors of cold `items` from side information: for each field, the mean z of
    the warm items sharing the item's value, mixed with the field weights of `EGESModel.side_only` (zeros where no
    warm item shares any value, and in deepwalk mode)."""
    z = model.context.numpy()
    out = np.zeros((len(items), model.dim), np.float32)
    if model.mode == "deepwalk" or not model.sides or len(items) == 0:
        return out
    codes, hot = model.side.codes, np.flatnonzero(warm)
    beta = model.side_weights(items, warm)  # (B, m), as for their H
    weight = np.zeros(len(items))
    for j in range(model.side.n_fields):
        c = codes[hot, j]
        sums = np.zeros((model.side.sizes[j], model.dim))
        np.add.at(sums, c, z[hot])
        count = np.bincount(c, minlength=model.side.sizes[j])
        count[0] = 0  # unknown values share nothing
        mine = codes[items, j]
        has = count[mine] > 0
        out[has] += beta[has, j, None] * (sums[mine[has]] / count[mine[has], None])
        weight[has] += beta[has, j]
    return out / np.maximum(weight, 1e-12)[:, None]


def hard_miner(vectors: np.ndarray, pool: int) -> np.ndarray:
    """(N, pool) int64 nearest neighbours of each row by cosine (itself excluded, -1 where none)."""
    x = normalize(vectors)
    index = AnnIndex.build(x, spec="auto")
    _, nbrs = index.search(x, pool + 1)
    own = np.arange(x.shape[0])[:, None]
    out = np.where(nbrs == own, -1, nbrs)
    return np.sort(out, axis=1)[:, ::-1][:, :pool].copy()  # -1s last


def train_on_graph(model: EGESModel, graph: ItemGraph, *, walks: WalkSettings, train: TrainSettings,
                   workdir: Path, shard: Shard | None = None) -> tuple[dict, np.ndarray]:
    """Walk `graph`, write the corpus to `workdir/walks.npy`, train `model` in place (this rank's `shard` of it).

    Returns (log, counts): training counters and (N,) int64 occurrences of each node in the walks.
    """
    import time

    t0 = time.perf_counter()
    corpus = WalkCorpus.write(workdir / "walks.npy", random_walks(graph, settings=walks))
    walk_s = time.perf_counter() - t0
    counts = corpus.counts(graph.n_nodes)
    if len(corpus) == 0:
        return {"walk_seconds": walk_s, "walk_steps": 0}, counts
    log = train_skipgram(model, corpus, settings=train, counts=counts,
                         hard_miner=hard_miner if train.hard_negatives > 0 else None, shard=shard)
    return {"walk_seconds": walk_s, "walk_steps": int(counts.sum()), **log.as_dict()}, counts


def train_cycles(model: EGESModel, graph: ItemGraph, *, walks: WalkSettings, train: TrainSettings, workdir: Path,
                 cycles: int = 1, shard: Shard | None = None, after=None) -> tuple[dict, np.ndarray]:
    """`train_on_graph` `cycles` times, cycle c on fresh walks and windows (seeds + c) with the learning rate annealed
    from `train.lr` again (a warm restart); cycle 0 is the plain run. after(c, counts) -> bool, called after cycle c
    (1-based) with the occurrences so far, stops early when False. Returns (log with "cycles", counts summed)."""
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    log: dict = {}
    counts = np.zeros(graph.n_nodes, np.int64)
    for c in range(cycles):
        w = walks if c == 0 else walks.model_copy(update={"seed": walks.seed + c})
        t = train if c == 0 else train.model_copy(update={"seed": train.seed + c})
        step, seen = train_on_graph(model, graph, walks=w, train=t, workdir=workdir, shard=shard)
        counts += seen
        if not log:
            log = dict(step)
        else:
            for key in ("walk_seconds", "walk_steps", "pairs", "tokens", "seconds"):
                log[key] = log.get(key, 0) + step.get(key, 0)
            log["epoch_loss"] = log.get("epoch_loss", []) + step.get("epoch_loss", [])
        log["cycles"] = c + 1
        if after is not None and not after(c + 1, counts):
            break
    return log, counts


def new_model(graph: ItemGraph, side: SideInfo | None, mode: Mode, train: TrainSettings) -> EGESModel:
    """A fresh model for `graph`; in eges mode its mix starts as `train.side_measure` and `train.side_prior` say."""
    model = EGESModel(graph.n_nodes, side, dim=train.dim, mode=mode, attention_lr=train.attention_lr, seed=train.seed)
    if model.mode == "eges":
        src, dst, _ = graph.edges()
        measure = side_information_gain if train.side_measure == "information" else side_agreement
        model.start_attention(neighbours(graph), measure(model.side, src, dst), train.side_prior)
    return model


def read_out(model: EGESModel, counts: np.ndarray, vectors: str, log: dict | None = None) -> Embedding:
    """The Embedding of a trained `model` (warm = counts > 0), similarity vectors as `vectors` says."""
    warm = counts > 0
    centre = model.item_vectors(warm)
    if model.mode == "deepwalk":
        centre[~warm] = 0.0
    centre[0] = 0.0  # code 0 is the unknown item
    similar = centre
    if vectors == "sum":
        similar = centre + model.context.numpy() * warm[:, None]
        cold = np.flatnonzero(~warm)
        similar[cold] += side_context(model, warm, cold)
    similar[0] = 0.0
    return Embedding(normalize(similar), np.linalg.norm(similar, axis=1).astype(np.float32), warm, model, log or {},
                     centre)


def embed_graph(graph: ItemGraph, side: SideInfo | None, *, mode: Mode = "eges", walks: WalkSettings | None = None,
                train: TrainSettings | None = None, partition: PartitionSettings | None = None,
                workdir: str | Path | None = None, shard: Shard | None = None,
                vectors: Literal["sum", "centre"] = "sum", validate: bool = True, cycles: int = 1,
                validate_max_edges: int | None = None) -> Embedding:
    """Item vectors for every node of `graph` (warm) and, with side information, for every other item (cold).
    With `shard`, this process is one rank of data-parallel training (every rank ends with the same vectors).
    vectors: "sum" compares items by H + z (see the module docstring), "centre" by H alone (the paper's).
    validate: pick the training cycles (and EGES's side start) on held-out edges of `graph` (`validation.py`, its
    report in `log["validation"]`; not above `validate_max_edges` edges, default `validation.MAX_EDGES`); else train
    `cycles` cycles as the settings say. Unpartitioned training only."""
    from homefeed.recall.graph.validation import MAX_EDGES, pick_training

    if vectors not in ("sum", "centre"):
        raise ValueError(f"unknown vectors {vectors!r}; valid: sum, centre")
    walks = walks or WalkSettings()
    train = train or TrainSettings()
    partition = partition or PartitionSettings()
    if mode != "deepwalk" and (side is None or side.n_fields == 0):
        mode = "deepwalk"  # no informative side information (e.g. a log without item attributes): ids alone
    report = None
    if validate and partition.parts == 1:
        train, cycles, report = pick_training(graph, side, mode=mode, walks=walks, train=train, vectors=vectors,
                                              max_edges=MAX_EDGES if validate_max_edges is None else validate_max_edges)
    model = new_model(graph, side, mode, train)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if partition.parts > 1:
            if shard is not None:
                raise ValueError("data-parallel training (--nproc > 1) trains the whole graph; set partition.parts = 1")
            if cycles != 1:
                raise ValueError(f"partitioned training runs one cycle, got cycles={cycles}")
            from homefeed.recall.graph.parallel import train_partitioned

            log, counts = train_partitioned(model, graph, walks=walks, train=train, partition=partition, workdir=Path(tmp))
        else:
            log, counts = train_cycles(model, graph, walks=walks, train=train, workdir=Path(tmp), cycles=cycles,
                                       shard=shard)
    if report is not None:
        log["validation"] = report
    return read_out(model, counts, vectors, log)

"""Nearest-inner-product search over item vectors: a thin faiss wrapper, i2i tables from it, and request-time queries.

faiss (Johnson, Douze & Jegou, "Billion-scale similarity search with GPUs", 2017) answers
`search(x, k) -> (D, I)`: for each query row, the k stored vectors with the largest inner product,
best first. Which index does the work is a faiss *factory string*:

    "Flat"          exact, brute force: right up to ~100k items (one matrix product per batch)
    "HNSW32"        graph search (Malkov & Yashunin 2018): fast, approximate, no training
    "IVF1024,Flat"  inverted lists over k-means cells: approximate, needs training vectors
    "auto"          Flat below `exact_below` items, else HNSW32

`AnnIndex` stores vectors under caller ids (item codes) and keeps faiss's conventions: D and I are
(n, k); a slot with no result holds id -1 and score -inf. Search-time knobs go in `params`, faiss's
own syntax ("efSearch=128", "nprobe=16").

Two uses:
- offline, `i2i_table(index, vectors, ids)`: each item's top-N neighbours as an `I2ITable`, so a graph
  embedding channel recalls by the same trigger expansion as Item-CF;
- online, `search_candidates(index, queries, k)`: vectors computed at request time (MIND's interest
  capsules) -> one candidate list, each item scored by its best query.

    >>> index = AnnIndex.build(vectors, ids=np.arange(1, n + 1), spec="Flat")   # doctest: +SKIP
    >>> D, I = index.search(vectors[:2], 10)                                   # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from homefeed.recall.base import Candidates
from homefeed.recall.i2i import I2ITable

EXACT_BELOW = 100_000


def resolve_spec(spec: str, n: int, *, exact_below: int = EXACT_BELOW) -> str:
    """The faiss factory string for `spec` ("auto" -> Flat below `exact_below` vectors, else HNSW32)."""
    if spec == "auto":
        return "Flat" if n < exact_below else "HNSW32"
    return spec


class AnnIndex:
    """Inner-product index over vectors stored under integer ids.

    Attributes:
        index: the faiss index (rows 0..n-1 in insertion order).
        ids: (n,) int64 caller id of each row.
        spec: the faiss factory string it was built from.
    """

    def __init__(self, index: faiss.Index, ids: np.ndarray, spec: str, params: str = ""):
        self.index, self.ids, self.spec, self.params = index, np.asarray(ids, np.int64), spec, params
        if self.ids.size != index.ntotal:
            raise ValueError(f"{self.ids.size} ids for an index of {index.ntotal} vectors")
        if params:
            faiss.ParameterSpace().set_index_parameters(index, params)

    @classmethod
    def build(cls, vectors: np.ndarray, *, ids: np.ndarray | None = None, spec: str = "auto", params: str = "",
              seed: int = 0) -> "AnnIndex":
        """Index (n, D) vectors (ids default 0..n-1). IVF-type specs are trained on the vectors themselves."""
        x = np.ascontiguousarray(vectors, np.float32)
        if x.ndim != 2:
            raise ValueError(f"vectors must be (n, D), got shape {x.shape}")
        ids = np.arange(x.shape[0]) if ids is None else np.asarray(ids, np.int64)
        if ids.size != x.shape[0]:
            raise ValueError(f"{ids.size} ids for {x.shape[0]} vectors")
        spec = resolve_spec(spec, x.shape[0])
        try:
            index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"faiss cannot build index {spec!r}: {str(e).splitlines()[-1]}") from None
        if not index.is_trained:
            try:
                faiss.extract_index_ivf(index).cp.seed = seed  # k-means of IVF cells, seeded
            except RuntimeError:
                pass  # not an IVF index
            if x.shape[0] == 0:
                raise ValueError(f"index {spec!r} needs training vectors, got none")
            index.train(x)
        index.add(x)
        return cls(index, ids, spec, params)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(D (n, k) float32 scores, I (n, k) int64 ids), best first; missing slots are (-inf, -1)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have {q.shape[1]} dimensions, the index {self.dim}")
        k = int(k)
        if k <= 0 or len(self) == 0:
            return np.full((q.shape[0], max(k, 0)), -np.inf, np.float32), np.full((q.shape[0], max(k, 0)), -1, np.int64)
        scores, rows = self.index.search(q, k)
        missing = rows < 0
        ids = np.where(missing, -1, self.ids[np.where(missing, 0, rows)])
        return np.where(missing, -np.inf, scores).astype(np.float32), ids

    def save(self, path: str | Path) -> Path:
        """Write `path/index.faiss` and `path/index.json` (ids in `path/ids.npy`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(path / "index.faiss"))
        with open(path / "ids.npy", "wb") as f:
            np.save(f, self.ids, allow_pickle=False)
        (path / "index.json").write_text(json.dumps({"spec": self.spec, "params": self.params, "n": len(self)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AnnIndex":
        path = Path(path)
        if not (path / "index.faiss").exists():
            raise FileNotFoundError(f"{path} holds no ANN index (index.faiss); save one there first")
        meta = json.loads((path / "index.json").read_text())
        ids = np.load(path / "ids.npy", allow_pickle=False)
        return cls(faiss.read_index(str(path / "index.faiss")), ids, meta["spec"], meta.get("params", ""))


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32: inner product becomes cosine."""
    x = np.asarray(vectors, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def i2i_table(index: AnnIndex, vectors: np.ndarray, ids: np.ndarray, n_items: int, *, top_n: int = 100,
              batch: int = 8192, sigmoid: bool = False) -> I2ITable:
    """Top-`top_n` neighbours of each item in `ids` (rows of `vectors`) as an I2ITable over codes 0..n_items-1.

    The item itself is dropped, and so are neighbours with a non-positive score (the table keeps
    similarities only), so a row may hold fewer than top_n. With `sigmoid`, scores go through the
    logistic function first (skip-gram's probability that j occurs near i): all positive, order kept.
    """
    ids = np.asarray(ids, np.int64)
    rows, nbrs, scores = [], [], []
    for lo in range(0, ids.size, batch):
        d, i = index.search(vectors[lo:lo + batch], top_n + 1)
        own = np.repeat(ids[lo:lo + batch], i.shape[1]).reshape(i.shape)
        keep = (i >= 0) & (i != own)
        rows.append(own[keep]), nbrs.append(i[keep])
        scores.append(1.0 / (1.0 + np.exp(-d[keep].astype(np.float64))) if sigmoid else d[keep])
    cat = (lambda a, t: np.concatenate(a) if a else np.zeros(0, t))
    return I2ITable.from_rows(cat(rows, np.int64), cat(nbrs, np.int64), cat(scores, np.float32), n_items, top_n=top_n)


def search_candidates(index: AnnIndex, queries: np.ndarray, k: int, *, channel: str,
                      exclude: np.ndarray | None = None, query_weights: np.ndarray | None = None) -> Candidates:
    """One user's candidates from request-time vectors: every query (q, D) searched, each item scored by
    its best weighted query score, `exclude`d items (and ids <= 0) dropped, top k kept.

    Searches k + len(exclude) per query so that excluding never leaves the list short for lack of results.
    """
    q = np.atleast_2d(np.asarray(queries, np.float32))
    exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    if k <= 0 or q.shape[0] == 0:
        return Candidates.empty(channel)
    d, i = index.search(q, min(k + exclude.size + 1, max(len(index), 1)))
    if query_weights is not None:
        d = d * np.asarray(query_weights, np.float32)[:, None]
    items, scores = i.ravel(), d.ravel()
    keep = (items > 0) & np.isfinite(scores) & ~np.isin(items, exclude)
    items, scores = items[keep], scores[keep]
    if items.size == 0:
        return Candidates.empty(channel)
    order = np.lexsort((-scores, items))  # by item, best score first
    items, scores = items[order], scores[order]
    first = np.r_[True, items[1:] != items[:-1]]
    return Candidates.top(items[first], scores[first], k, channel)

"""Standard categories: leaf categories grouped into the units people shop by.

A shop's leaf categories are too fine for filtering and scattering ("lace dress", "mini dress" and
"dress set" are one thing to a shopper, who has just bought *a dress*). This module learns the
grouping leaf -> standard category from three signals and one override:

1. leaf names: TF-IDF of character n-grams (3-5 letters, Manning et al. "IR" ch. 6 / "char-grams"),
   so "mini-dress" and "Lace Dress" are close while "Dress" and "Coat" are not;
2. parent path: TF-IDF of the path's parent segments (a real shop's parents are coarse and messy,
   so this is one signal among others, weighted low by default);
3. behaviour: leaves browsed in the same sessions, as the cosine of their session-incidence rows,
   plus leaf embeddings from an SVD of the positive PMI of that co-occurrence (Levy & Goldberg 2014:
   PPMI-SVD ~ word2vec) -- how shoppers move between leaves, whatever the leaves are called;
4. a mapping file (leaf_category, standard) that overrides the learned answer for the leaves it names.

Signals are averaged into one similarity (behaviour weighted by how many sessions back it), then
average-linkage agglomerative clustering is cut at a distance threshold, chosen by the mean
silhouette when not given.

    >>> cats = fit_standard_categories(items, events)               # doctest: +SKIP
    >>> cats.standard_of(np.array([12, 13]))                        # doctest: +SKIP
    array([4, 4])
    >>> cats.expand(np.array([12, 40, 41]))  # a user's recent leaves -> their standard categories
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from homefeed.config import Section

UNKNOWN = -1


class CategoryConfig(Section):
    name_weight: float = 1.0  # leaf-name character n-grams
    path_weight: float = 0.25  # parent path segments (coarse, messy in a real shop)
    behavior_weight: float = 1.5  # co-browsing in sessions + leaf embeddings
    ngram_min: int = 3
    ngram_max: int = 5
    min_sessions: int = 20  # behaviour counts fully once both leaves appear in this many sessions
    embedding_dim: int = 32
    session_gap_s: int = 30 * 60  # used only when events have no session_id column
    threshold: float | None = None  # cut distance in [0, 1]; None = best mean silhouette
    max_events: int = 5_000_000  # behaviour uses the latest this many events


def _text_matrix(docs: list[list[str]]) -> sp.csr_matrix:
    """Rows of L2-normalised TF-IDF over the given tokens per document (sparse, (n_docs, n_terms))."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, tokens in enumerate(docs):  # leaves are few (hundreds to thousands): a plain loop is fine
        for t in tokens:
            rows.append(r)
            cols.append(vocab.setdefault(t, len(vocab)))
    x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), max(len(vocab), 1)))
    x.sum_duplicates()
    df = np.asarray((x > 0).sum(axis=0)).ravel()
    x = x.multiply(np.log((1 + len(docs)) / (1 + df)) + 1.0).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x


def char_ngrams(text: str, lo: int, hi: int) -> list[str]:
    """Character n-grams of each word of `text`, padded with spaces: 'Dress' -> ' dr', 'dre', ..."""
    out = []
    for word in text.lower().replace("-", " ").replace("'", "").split():
        w = f" {word} "
        out += [w[i:i + n] for n in range(lo, hi + 1) for i in range(max(len(w) - n + 1, 1))]
    return out


def name_similarity(names: list[str], *, ngram_min: int = 3, ngram_max: int = 5) -> np.ndarray:
    """(L, L) float32 cosine of character n-gram TF-IDF vectors of `names`."""
    x = _text_matrix([char_ngrams(n, ngram_min, ngram_max) for n in names])
    return (x @ x.T).toarray().astype(np.float32)


def path_similarity(parents: list[list[str]]) -> np.ndarray:
    """(L, L) float32 cosine of TF-IDF over parent path segments (each segment one token)."""
    x = _text_matrix([[s.strip().lower() for s in p] for p in parents])
    return (x @ x.T).toarray().astype(np.float32)


def _sessions(events: pl.DataFrame, gap_s: int) -> pl.DataFrame:
    """events with a `session_id`: the column itself if present, else a new one wherever a user pauses > gap_s."""
    if "session_id" in events.columns:
        return events
    e = events.sort(["user_id", "ts"])
    new = (pl.col("user_id") != pl.col("user_id").shift(1)) | ((pl.col("ts") - pl.col("ts").shift(1)) > gap_s)
    return e.with_columns(new.fill_null(True).cum_sum().alias("session_id"))


def leaf_session_matrix(items: pl.DataFrame, events: pl.DataFrame, leaves: np.ndarray, *, gap_s: int = 1800) -> sp.csr_matrix:
    """(L, S) 0/1 sparse: whether leaf l (in the order of `leaves`) was browsed in session s."""
    e = _sessions(events.select([c for c in ("user_id", "item_id", "ts", "session_id") if c in events.columns]), gap_s)
    pairs = (
        e.join(items.select("item_id", "leaf_category"), on="item_id", how="inner")
        .select("leaf_category", pl.col("session_id").rank("dense").cast(pl.Int64) - 1)
        .unique()
    )
    row = np.searchsorted(leaves, pairs["leaf_category"].to_numpy())
    col = pairs["session_id"].to_numpy()
    ok = (row < len(leaves)) & (leaves[np.minimum(row, len(leaves) - 1)] == pairs["leaf_category"].to_numpy())
    n_sessions = int(col.max()) + 1 if col.size else 1
    return sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (row[ok], col[ok])), shape=(len(leaves), n_sessions))


def behavior_similarity(m: sp.csr_matrix, *, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour similarity of leaves from their session incidence `m` (L, S).

    Returns (similarity (L, L) float32: mean of co-session cosine and PPMI-SVD embedding cosine,
    support (L,) float32: sessions each leaf appears in).
    """
    c = (m @ m.T).toarray().astype(np.float64)  # (L, L) co-session counts
    support = np.diag(c).copy()
    denom = np.sqrt(np.outer(support, support))
    cooc = np.divide(c, denom, out=np.zeros_like(c), where=denom > 0)
    off = c - np.diag(support)
    total = off.sum()
    row = off.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(off * total / np.outer(row, row))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    vals, vecs = np.linalg.eigh(ppmi)  # symmetric: keep the top positive eigen-directions
    top = np.argsort(-vals)[:max(1, min(dim, len(c) - 1))]
    top = top[vals[top] > 0]
    emb = vecs[:, top] * np.sqrt(vals[top])
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = 0.5 * (cooc + np.clip(emb @ emb.T, 0.0, 1.0))
    return sim.astype(np.float32), support.astype(np.float32)


def combine(signals: list[tuple[np.ndarray, float | np.ndarray]]) -> np.ndarray:
    """Weighted mean of similarity matrices; a weight may be a matrix (per-pair confidence)."""
    num = sum(w * s for s, w in signals)
    den = sum(np.broadcast_to(w, signals[0][0].shape) for _, w in signals)
    out = np.divide(num, den, out=np.zeros(signals[0][0].shape), where=den > 0)
    np.fill_diagonal(out, 1.0)
    return np.clip(out, 0.0, 1.0)


def silhouette(distance: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a clustering from a square distance matrix (singletons score 0)."""
    _, lab = np.unique(labels, return_inverse=True)
    onehot = np.zeros((len(lab), lab.max() + 1))
    onehot[np.arange(len(lab)), lab] = 1.0
    sums = distance @ onehot  # (L, K) total distance to each cluster
    sizes = onehot.sum(axis=0)
    own = sizes[lab]
    a = sums[np.arange(len(lab)), lab] / np.maximum(own - 1, 1)
    other = np.where(onehot > 0, np.inf, sums / sizes)
    b = other.min(axis=1) if onehot.shape[1] > 1 else np.zeros(len(lab))
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def cluster(similarity: np.ndarray, *, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Average-linkage clusters of a similarity matrix; returns (labels (L,) int64 from 0, threshold used)."""
    dist = 1.0 - similarity
    np.fill_diagonal(dist, 0.0)
    dist = 0.5 * (dist + dist.T)
    if len(dist) < 2:
        return np.zeros(len(dist), np.int64), threshold or 0.0
    tree = linkage(squareform(dist, checks=False), method="average")
    if threshold is None:
        grid = np.unique(np.round(np.quantile(tree[:, 2], np.linspace(0.05, 0.99, 60)), 4))
        scores = [silhouette(dist, fcluster(tree, t, criterion="distance")) for t in grid]
        threshold = float(grid[int(np.argmax(scores))])
    labels = fcluster(tree, threshold, criterion="distance")
    return np.unique(labels, return_inverse=True)[1].astype(np.int64), threshold


class StandardCategories:
    """Leaf -> standard category, and "expansion" of a user's scattered leaves to standard categories.

    Attributes:
        table: frame (leaf_category, standard_category Int64 1..K, standard_name String, source String
            'learned' or 'override').
    """

    def __init__(self, table: pl.DataFrame):
        missing = {"leaf_category", "standard_category"} - set(table.columns)
        if missing:
            raise ValueError(f"standard category table lacks columns {sorted(missing)}; has {table.columns}")
        self.table = table.sort("leaf_category")
        self._leaves = self.table["leaf_category"].to_numpy()
        self._standard = self.table["standard_category"].to_numpy().astype(np.int64)

    @property
    def n_standard(self) -> int:
        return int(self.table["standard_category"].n_unique())

    def standard_of(self, leaves: np.ndarray) -> np.ndarray:
        """(n,) leaf ids -> (n,) int64 standard category; UNKNOWN (-1) for leaves never seen."""
        leaves = np.asarray(leaves)
        pos = np.minimum(np.searchsorted(self._leaves, leaves), len(self._leaves) - 1)
        return np.where(self._leaves[pos] == leaves, self._standard[pos], UNKNOWN)

    def expand(self, leaves: np.ndarray) -> np.ndarray:
        """A user's recent leaves (any number, repeats allowed) -> the distinct standard categories they cover."""
        s = self.standard_of(leaves)
        return np.unique(s[s != UNKNOWN])

    def leaves_of(self, standards: np.ndarray) -> np.ndarray:
        """Every leaf that belongs to one of `standards` (sorted)."""
        return self._leaves[np.isin(self._standard, standards)]

    def add_column(self, items: pl.DataFrame) -> pl.DataFrame:
        """`items` with a `standard_category` column (null for unknown leaves)."""
        return items.join(self.table.select("leaf_category", "standard_category"), on="leaf_category", how="left")

    def save(self, path: str | Path) -> Path:
        self.table.write_parquet(path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "StandardCategories":
        return cls(pl.read_parquet(path))


def leaf_names(items: pl.DataFrame) -> pl.DataFrame:
    """One row per leaf: leaf_category, name (last path segment), parents (list of the other segments)."""
    if "category_path" not in items.columns:
        return items.select(pl.col("leaf_category").unique().sort()).with_columns(
            pl.col("leaf_category").cast(pl.String).alias("name"), pl.lit([], dtype=pl.List(pl.String)).alias("parents"))
    segs = pl.col("category_path").fill_null("").str.split(">")
    return (
        items.group_by("leaf_category").agg(pl.col("category_path").mode().first())
        .sort("leaf_category")
        .with_columns(segs.list.last().str.strip_chars().alias("name"), segs.list.head(segs.list.len() - 1).alias("parents"))
    )


def read_overrides(path_or_frame: str | Path | pl.DataFrame) -> pl.DataFrame:
    """A mapping file (CSV or Parquet) with columns leaf_category and standard (a name or number)."""
    if isinstance(path_or_frame, pl.DataFrame):
        df, where = path_or_frame, "overrides"
    else:
        where = str(path_or_frame)
        df = pl.read_csv(path_or_frame, infer_schema=False) if str(path_or_frame).endswith(".csv") else pl.read_parquet(path_or_frame)
    missing = {"leaf_category", "standard"} - set(df.columns)
    if missing:
        raise ValueError(f"{where}: missing columns {sorted(missing)}; expected leaf_category, standard (has {df.columns})")
    bad = df.with_row_index("row").filter(pl.col("leaf_category").is_null() | pl.col("standard").is_null())
    if bad.height:
        raise ValueError(f"{where}: row {bad['row'][0]}: empty leaf_category or standard")
    return df.select(pl.col("leaf_category").cast(pl.Int64), pl.col("standard").cast(pl.String))


def similarity_matrix(items: pl.DataFrame, events: pl.DataFrame | None, *, config: CategoryConfig | None = None,
                      signals: tuple[str, ...] = ("name", "path", "behavior")) -> tuple[pl.DataFrame, np.ndarray]:
    """(leaf table, (L, L) combined similarity) from the chosen signals: name, path, behavior."""
    cfg = config or CategoryConfig()
    unknown = set(signals) - {"name", "path", "behavior"}
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; valid: name, path, behavior")
    leaves = leaf_names(items)
    parts: list[tuple[np.ndarray, float | np.ndarray]] = []
    if "category_path" not in items.columns:
        signals = tuple(s for s in signals if s not in ("name", "path"))
    if "name" in signals and cfg.name_weight > 0:
        parts.append((name_similarity(leaves["name"].to_list(), ngram_min=cfg.ngram_min, ngram_max=cfg.ngram_max), cfg.name_weight))
    if "path" in signals and cfg.path_weight > 0 and leaves["parents"].list.len().max():
        parts.append((path_similarity(leaves["parents"].to_list()), cfg.path_weight))
    if "behavior" in signals and cfg.behavior_weight > 0 and events is not None and events.height:
        m = leaf_session_matrix(items, events.tail(cfg.max_events), leaves["leaf_category"].to_numpy(), gap_s=cfg.session_gap_s)
        sim, support = behavior_similarity(m, dim=cfg.embedding_dim)
        confidence = np.minimum(np.minimum.outer(support, support) / cfg.min_sessions, 1.0)
        parts.append((sim, cfg.behavior_weight * confidence))
    if not parts:
        raise ValueError("no signal to group leaves by: give items a category_path and/or give events, with a weight > 0")
    return leaves, combine(parts)


def fit_standard_categories(items: pl.DataFrame, events: pl.DataFrame | None = None, *, config: CategoryConfig | None = None,
                            overrides: str | Path | pl.DataFrame | None = None,
                            signals: tuple[str, ...] = ("name", "path", "behavior")) -> StandardCategories:
    """Learn leaf -> standard category from `items` (leaf_category, category_path) and `events` (sessions).

    `overrides` (a frame or CSV/Parquet path with leaf_category, standard) wins over the learned answer.
    """
    cfg = config or CategoryConfig()
    leaves, sim = similarity_matrix(items, events, config=cfg, signals=signals)
    labels, _ = cluster(sim, threshold=cfg.threshold)
    medoid_name = _medoid_names(sim, labels, leaves["name"].to_list())
    table = leaves.select("leaf_category").with_columns(
        pl.Series("label", [f"learned:{x}" for x in labels]),
        pl.Series("standard_name", medoid_name), pl.lit("learned").alias("source"))
    if overrides is not None:
        ov = read_overrides(overrides)
        table = table.join(ov, on="leaf_category", how="left").with_columns(
            pl.when(pl.col("standard").is_not_null()).then(pl.lit("override:") + pl.col("standard")).otherwise("label").alias("label"),
            pl.coalesce("standard", "standard_name").alias("standard_name"),
            pl.when(pl.col("standard").is_not_null()).then(pl.lit("override")).otherwise("source").alias("source"),
        ).drop("standard")
    table = table.with_columns((pl.col("label").rank("dense").cast(pl.Int64)).alias("standard_category"))
    return StandardCategories(table.select("leaf_category", "standard_category", "standard_name", "source"))


def _medoid_names(sim: np.ndarray, labels: np.ndarray, names: list[str]) -> list[str]:
    """Each leaf's cluster named after the member most similar to the rest of the cluster."""
    same = labels[:, None] == labels[None, :]
    centrality = np.where(same, sim, 0.0).sum(axis=1)
    best: dict[int, int] = {}
    for i in np.argsort(-centrality, kind="stable"):
        best.setdefault(int(labels[i]), int(i))
    return [names[best[int(x)]] for x in labels]

"""The item graph: a weighted directed edge i -> j for every time a session goes from item i to item j.

Wang et al., "Billion-scale Commodity Embedding for E-commerce Recommendation in Alibaba" (KDD 2018),
build their item graph from users' behaviour sequences cut into sessions: consecutive items of a
session are related, and the edge weight counts how often the transition was seen, so a walk on the
graph follows the shop's real paths (with the sparse, long-tail items linked in through them).

Steps (all vectorised; no Python loop over events):
1. Sequences: events carry `session_id` (ingest adds it; else they are cut at `session_gap_s`).
   Sessions that look like crawlers (more than `max_session_events` events, or more than
   `max_events_per_minute` on average) are dropped. When sessions link almost nothing (fewer than
   `min_linked_share` of a user's consecutive events share a session: a log without a real clock,
   or one whose events lie days apart, such as reviews), each user's whole stream in order is the
   sequence instead (`sequences="users"`), with no clock-based crawler test.
2. Runs: consecutive events on the same item collapse into one step whose weight is the strongest
   behaviour's weight (`behavior_weights`; pv 1, click 1, fav 2, cart 3, buy 4 by default).
3. Edges: each pair of consecutive steps (i, j) adds weight(j) to edge i -> j; self loops vanish in 2.
   Edges whose total weight is below `min_weight` are dropped.

Tiny example (unit weights): sessions [1, 2, 3] and [1, 2, 2, 4] give edges 1->2 (2), 2->3 (1), 2->4 (1).

The result is kept as CSR arrays (`ItemGraph`): row i holds i's out-neighbours, sorted by code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field, field_validator

from homefeed.config import Section
from homefeed.data.sessions import add_sessions
from homefeed.recall.i2i import behavior_weight_array, check_behavior_weights


class GraphSettings(Section):
    """How sessions become the weighted item graph."""

    behavior_weights: dict[str, float] = Field(  # weight a step adds to the edge that enters it; 0 or absent drops it
        default_factory=lambda: {"pv": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0})
    session_gap_s: int = Field(3_600, ge=0)  # cuts sessions when events carry no session_id (the paper: one hour)
    min_weight: float = Field(0.0, ge=0)  # edges lighter than this are dropped
    max_session_events: int = Field(500, ge=2)  # longer sessions are crawler-like and dropped
    max_events_per_minute: float = Field(30.0, gt=0)  # sessions faster than this on average are dropped
    undirected: bool = False  # add j -> i for every i -> j (walks then never dead-end)
    # what one walked sequence is: "sessions", "users" (each user's stream in order, whatever the gaps), or
    # "auto": sessions, unless under min_linked_share of a user's consecutive events share a session (and the log
    # has at least MIN_USER_PAIRS such pairs to tell)
    sequences: Literal["auto", "sessions", "users"] = "auto"
    min_linked_share: float = Field(0.05, ge=0, le=1)

    @field_validator("behavior_weights")
    @classmethod
    def _known_behaviors(cls, v: dict[str, float]) -> dict[str, float]:
        return check_behavior_weights(v)


@dataclass
class ItemGraph:
    """A weighted directed graph over item codes 0..n_nodes-1 in CSR form.

    Attributes:
        indptr: (n_nodes + 1,) int64 row offsets; node i's out-edges are indptr[i]:indptr[i+1].
        indices: (nnz,) int32 destination codes, ascending within each row.
        weights: (nnz,) float32 positive edge weights.
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    def __post_init__(self):
        self.indptr = np.asarray(self.indptr, np.int64)
        self.indices = np.asarray(self.indices, np.int32)
        self.weights = np.asarray(self.weights, np.float32)
        if not (self.indptr[-1] == self.indices.size == self.weights.size):
            raise ValueError(f"indptr ends at {self.indptr[-1]} but there are {self.indices.size} indices "
                             f"and {self.weights.size} weights")

    @property
    def n_nodes(self) -> int:
        return self.indptr.size - 1

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def out_degree(self) -> np.ndarray:
        """(n_nodes,) int64 number of out-edges per node."""
        return np.diff(self.indptr)

    def active(self) -> np.ndarray:
        """(n_nodes,) bool: nodes with an edge in or out."""
        seen = self.out_degree() > 0
        seen[self.indices] = True
        return seen

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src int64, dst int64, weight float32), one entry per edge, in CSR order."""
        src = np.repeat(np.arange(self.n_nodes, dtype=np.int64), self.out_degree())
        return src, self.indices.astype(np.int64), self.weights

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.weights, self.indices, self.indptr), shape=(self.n_nodes, self.n_nodes))

    @classmethod
    def from_edges(cls, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, n_nodes: int, *,
                   min_weight: float = 0.0, undirected: bool = False) -> "ItemGraph":
        """Sum the weights of repeated (src, dst) pairs, drop self loops and edges below `min_weight`."""
        src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        weight = np.asarray(weight, np.float64)
        if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n_nodes):
            raise ValueError(f"edge endpoints must lie in 0..{n_nodes - 1}; got {min(src.min(), dst.min())}.."
                             f"{max(src.max(), dst.max())}")
        if undirected:
            src, dst, weight = np.r_[src, dst], np.r_[dst, src], np.r_[weight, weight]
        keep = (src != dst) & (weight > 0)
        key = src[keep] * n_nodes + dst[keep]
        uniq, inv = np.unique(key, return_inverse=True)
        total = np.bincount(inv, weights=weight[keep], minlength=uniq.size)
        heavy = total >= max(min_weight, 1e-12)
        uniq, total = uniq[heavy], total[heavy]
        indptr = np.zeros(n_nodes + 1, np.int64)
        np.cumsum(np.bincount(uniq // n_nodes, minlength=n_nodes), out=indptr[1:])
        return cls(indptr, (uniq % n_nodes).astype(np.int32), total.astype(np.float32))

    def subgraph(self, keep: np.ndarray) -> "ItemGraph":
        """The same node space with only edges whose both ends satisfy the (n_nodes,) bool mask `keep`."""
        src, dst, w = self.edges()
        inside = keep[src] & keep[dst]
        return ItemGraph.from_edges(src[inside], dst[inside], w[inside], self.n_nodes)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, indptr=self.indptr, indices=self.indices, weights=self.weights)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ItemGraph":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["indptr"], z["indices"], z["weights"])


MIN_USER_PAIRS = 50  # "auto" trusts the sessions of a log with fewer consecutive same-user events than this


def linked_share(events: pl.DataFrame) -> tuple[float, int]:
    """(share, pairs): of a user's consecutive events (in time order), how many pairs there are and which share
    falls in one session (1.0 when there is no such pair)."""
    ev = events.select("user_id", "ts", "session_id").sort("user_id", "ts", maintain_order=True)
    same_user = ev["user_id"].to_numpy()[1:] == ev["user_id"].to_numpy()[:-1]
    same_session = ev["session_id"].to_numpy()[1:] == ev["session_id"].to_numpy()[:-1]
    pairs = int(same_user.sum())
    return (float(same_session[same_user].mean()) if pairs else 1.0), pairs


def sequence_unit(events: pl.DataFrame, settings: GraphSettings) -> str:
    """"sessions" or "users": what `session_steps` walks for these events under `settings.sequences`."""
    if settings.sequences != "auto":
        return settings.sequences
    if "session_id" not in events.columns:
        events = add_sessions(events, gap_s=settings.session_gap_s)
    share, pairs = linked_share(events)
    return "users" if share < settings.min_linked_share and pairs >= MIN_USER_PAIRS else "sessions"


def session_steps(events: pl.DataFrame, settings: GraphSettings) -> pl.DataFrame:
    """Events -> steps (session_id, item_id, w) in time order, runs on one item collapsed, crawler sessions dropped.

    With `sequence_unit` "users" the session_id of a step is its user's id (one sequence per user, no crawler test).
    """
    missing = [c for c in ("user_id", "item_id", "behavior", "ts") if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; columns: {', '.join(events.columns)}")
    if "session_id" not in events.columns:
        events = add_sessions(events, gap_s=settings.session_gap_s)
    by_user = sequence_unit(events, settings) == "users"
    if by_user:
        events = events.with_columns(session_id=pl.col("user_id").rank("dense").cast(pl.Int64))
    bw = behavior_weight_array(settings.behavior_weights)
    ev = (events.select("session_id", "item_id", "ts", w=pl.lit(pl.Series(bw)).gather(pl.col("behavior").to_physical()))
          .filter((pl.col("w") > 0) & (pl.col("item_id") > 0))
          .sort("session_id", "ts", maintain_order=True))
    if not by_user:
        minutes = ((pl.col("ts").max() - pl.col("ts").min()) / 60.0).over("session_id")
        size = pl.len().over("session_id")
        ev = ev.filter((size <= settings.max_session_events)
                       & ((size <= 2) | (size <= settings.max_events_per_minute * pl.max_horizontal(minutes, 1.0))))
    sid, item = pl.col("session_id"), pl.col("item_id")
    run = ((sid != sid.shift()) | (item != item.shift())).fill_null(True).cum_sum()
    return (ev.with_columns(run=run).group_by("run", maintain_order=True)
            .agg(sid.first(), item.first(), pl.col("w").max()).drop("run"))


def build_graph(events: pl.DataFrame, n_items: int, *, settings: GraphSettings | None = None) -> ItemGraph:
    """The item graph of encoded events (user_id, item_id, behavior, ts[, session_id]) over codes 0..n_items-1."""
    s = settings if settings is not None else GraphSettings()
    steps = session_steps(events, s)
    if steps.height and int(steps["item_id"].max()) >= n_items:
        raise ValueError(f"events hold item code {int(steps['item_id'].max())} but n_items is {n_items}; "
                         "pass n_items = the item vocabulary size (dataset.n_items)")
    sess, item, w = (steps[c].to_numpy() for c in ("session_id", "item_id", "w"))
    same = sess[1:] == sess[:-1]  # consecutive steps of one session
    return ItemGraph.from_edges(item[:-1][same], item[1:][same], w[1:][same], n_items,
                                min_weight=s.min_weight, undirected=s.undirected)

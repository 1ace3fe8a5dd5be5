"""Item-to-item tables and trigger expansion: the common half of Item-CF, Swing and Ranki2i.

An i2i table lists, for every item, its most similar items with a score, best first. It is the
artefact the offline job writes and the server reads, so it is stored in the simplest compact form
there is, CSR (compressed sparse rows):

    item 3 -> neighbours [7, 5]   scores [0.9, 0.4]
    item 4 -> neighbours [3]      scores [0.7]

    indptr    = [.., 0, 2, 3, ..]   row i is neighbors[indptr[i]:indptr[i+1]]
    neighbors = [7, 5, 3]           int32 item codes
    scores    = [0.9, 0.4, 0.7]     float32, descending within each row

At request time the user's recent behaviours are the *triggers* (the "i2i" recall of Taobao's
homepage; Linden et al., "Amazon.com recommendations: item-to-item collaborative filtering", 2003):
each trigger t gets a weight from its behaviour type and its recency, every neighbour j of t
scores w_t * s(t, j), scores are summed over triggers, and each candidate keeps the trigger that
contributed most as its reason ("because you viewed t").

    >>> table = I2ITable.from_sparse(scipy.sparse.csr_matrix(np.array([[0, 2.0], [1.0, 0]])), top_n=10)
    >>> table.neighbors_of(0)
    (array([1], dtype=int32), array([2.], dtype=float32))
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import Field, field_validator

from homefeed.config import Section
from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.base import Candidates, Recaller


def check_behavior_weights(weights: dict[str, float]) -> dict[str, float]:
    """Reject unknown behaviour names (listing the valid ones) and negative weights."""
    for name, w in weights.items():
        if name not in BEHAVIOR_CODE:
            raise ValueError(f"unknown behaviour {name!r}; valid behaviours: {', '.join(BEHAVIORS)}")
        if w < 0:
            raise ValueError(f"behaviour weight for {name!r} must be >= 0, got {w}")
    return weights


def behavior_weight_array(weights: dict[str, float]) -> np.ndarray:
    """(len(BEHAVIORS),) float64 weight per behaviour code; behaviours not named weigh 0."""
    return np.array([float(weights.get(b, 0.0)) for b in BEHAVIORS])


class TriggerSettings(Section):
    """How a user's recent behaviours become weighted triggers for an i2i table."""

    n_triggers: int = Field(30, ge=1)  # the last N behaviours (events) are the triggers
    behavior_weights: dict[str, float] = Field(  # weight of a trigger by its behaviour type; 0 or absent = ignored
        default_factory=lambda: {"pv": 1.0, "click": 1.5, "fav": 2.0, "cart": 3.0, "buy": 2.0})
    half_life_s: float = Field(86_400.0, ge=0)  # trigger weight halves every this many seconds of age; 0 = no decay
    half_life_events: float = Field(10.0, ge=0)  # ... and every this many later events of the user (what they did last counts most); 0 = off
    per_trigger: int = Field(50, ge=0)  # neighbours read per trigger; 0 = the whole row
    keep_bought: bool = False  # keep candidates the user has already bought (default: drop them)
    exclude_triggers: bool = False  # drop candidates that are themselves among the triggers

    @field_validator("behavior_weights")
    @classmethod
    def _known_behaviors(cls, v: dict[str, float]) -> dict[str, float]:
        return check_behavior_weights(v)


class I2ITable:
    """Top neighbours per item in CSR form; row i holds item i's neighbours sorted by score descending.

    Attributes:
        indptr: (n_items + 1,) int64 row offsets.
        neighbors: (nnz,) int32 item codes.
        scores: (nnz,) float32 similarity, non-increasing within a row.
    """

    def __init__(self, indptr: np.ndarray, neighbors: np.ndarray, scores: np.ndarray):
        self.indptr = np.asarray(indptr, np.int64)
        self.neighbors = np.asarray(neighbors, np.int32)
        self.scores = np.asarray(scores, np.float32)
        if self.indptr.ndim != 1 or self.indptr.size < 1 or self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must be a non-decreasing 1-d array starting at 0")
        if not (self.indptr[-1] == self.neighbors.size == self.scores.size):
            raise ValueError(f"indptr ends at {self.indptr[-1]} but there are {self.neighbors.size} neighbours "
                             f"and {self.scores.size} scores")

    @property
    def n_items(self) -> int:
        return self.indptr.size - 1

    @property
    def nnz(self) -> int:
        return int(self.neighbors.size)

    def __len__(self) -> int:
        return self.n_items

    def neighbors_of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) of one item's row, best first; empty for items outside the table."""
        if not 0 <= item < self.n_items:
            return self.neighbors[:0], self.scores[:0]
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.neighbors[lo:hi], self.scores[lo:hi]

    def to_sparse(self) -> sp.csr_matrix:
        """(n_items, n_items) float32 CSR matrix of the scores."""
        return sp.csr_matrix((self.scores, self.neighbors, self.indptr), shape=(self.n_items, self.n_items))

    @classmethod
    def from_rows(cls, rows: np.ndarray, neighbors: np.ndarray, scores: np.ndarray, n_items: int,
                  *, top_n: int | None = None) -> "I2ITable":
        """Build from (row, neighbour, score) triples: sorted per row by score desc (ties: lower code first),
        truncated to `top_n` per row; non-positive and non-finite scores are dropped."""
        rows, neighbors = np.asarray(rows, np.int64), np.asarray(neighbors, np.int32)
        scores = np.asarray(scores, np.float64)
        keep = np.isfinite(scores) & (scores > 0)
        rows, neighbors, scores = rows[keep], neighbors[keep], scores[keep]
        order = np.lexsort((neighbors, -scores, rows))
        rows, neighbors, scores = rows[order], neighbors[order], scores[order]
        counts = np.bincount(rows, minlength=n_items)
        if top_n is not None:
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            rank = np.arange(rows.size) - starts
            keep = rank < top_n
            rows, neighbors, scores = rows[keep], neighbors[keep], scores[keep]
            counts = np.minimum(counts, top_n)
        indptr = np.zeros(n_items + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, neighbors, scores.astype(np.float32))

    @classmethod
    def from_sparse(cls, matrix, top_n: int, *, drop_self: bool = True) -> "I2ITable":
        """Top-`top_n` entries of each row of a square sparse matrix (the diagonal dropped unless told)."""
        m = sp.coo_matrix(matrix)
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"an i2i matrix must be square, got shape {m.shape}")
        keep = m.row != m.col if drop_self else np.ones(m.nnz, bool)
        return cls.from_rows(m.row[keep], m.col[keep], m.data[keep], m.shape[0], top_n=top_n)

    def discretize(self, levels: int) -> "I2ITable":
        """Scores replaced by levels 1..`levels` of equal frequency over the whole table.

        level = 1 + floor(levels * r / nnz), r the 0-based rank of the score among all scores
        (ties share the lowest rank). Monotone, so each row keeps its order; integer levels make
        tables from different sources comparable and compress well.
        """
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if self.nnz == 0:
            return self
        ranks = np.searchsorted(np.sort(self.scores), self.scores, side="left")
        level = 1 + (levels * ranks) // self.nnz
        return I2ITable(self.indptr, self.neighbors, level.astype(np.float32))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object keeps numpy from appending .npz to other suffixes
            np.savez(f, indptr=self.indptr, neighbors=self.neighbors, scores=self.scores)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "I2ITable":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["indptr"], z["neighbors"], z["scores"])
        except KeyError as e:
            raise ValueError(f"{path}: not an i2i table (missing array {e})") from None


def trigger_weights(state: UserState, settings: TriggerSettings) -> tuple[np.ndarray, np.ndarray]:
    """Distinct trigger items of a user and their weights, from the last `n_triggers` behaviours.

    weight(t) = sum over the user's recent events e on t of
                behavior_weight(e) * 2^(-(latest - ts_e) / half_life_s) * 2^(-later_e / half_life_events),
    where `latest` is the user's most recent trigger time and `later_e` the number of the user's events
    after e: recency ranks triggers against each other, so a user back after months still gets
    recommendations from what they did last (an absolute age would decay every weight to zero), and
    the event count keeps that order where the log has no clock. Returns (items (m,) int32 ascending,
    weights (m,) float64 > 0).
    """
    n = settings.n_triggers
    items, beh, ts = state.items[-n:], state.behaviors[-n:], state.ts[-n:]
    w = behavior_weight_array(settings.behavior_weights)[np.asarray(beh, np.int64)]
    if settings.half_life_s > 0 and len(ts):
        latest = min(int(ts.max()), int(state.now))
        w = w * np.exp2(-np.maximum(latest - ts, 0) / settings.half_life_s)
    if settings.half_life_events > 0:
        w = w * np.exp2(-np.arange(len(items) - 1, -1, -1) / settings.half_life_events)
    uniq, inv = np.unique(np.asarray(items, np.int32), return_inverse=True)
    total = np.bincount(inv, weights=w, minlength=uniq.size)
    keep = total > 0
    return uniq[keep], total[keep]


def expand_triggers(table: I2ITable, state: UserState, k: int, *, settings: TriggerSettings,
                    channel: str = "i2i") -> Candidates:
    """Up to k candidates: neighbours of the user's triggers, scores summed, best trigger kept per candidate.

    score(j) = sum_t w_t * s(t, j) over triggers t with j among their first `per_trigger` neighbours;
    trigger(j) = argmax_t w_t * s(t, j) (ties: lower trigger code). Items the user bought are dropped
    unless `keep_bought`; the triggers themselves are dropped when `exclude_triggers`.
    """
    trig, tw = trigger_weights(state, settings)
    trig_ok = (trig >= 0) & (trig < table.n_items)
    trig, tw = trig[trig_ok], tw[trig_ok]
    starts = table.indptr[trig]
    ends = table.indptr[trig + 1]
    if settings.per_trigger:
        ends = np.minimum(ends, starts + settings.per_trigger)
    lens = ends - starts
    total = int(lens.sum())
    if total == 0 or k <= 0:
        return Candidates.empty(channel)
    # positions of every (trigger, neighbour) entry, without a Python loop over triggers
    offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
    cand = table.neighbors[offsets]
    contrib = table.scores[offsets].astype(np.float64) * np.repeat(tw, lens)
    src = np.repeat(trig, lens)
    drop = np.zeros(total, bool)
    if not settings.keep_bought:
        drop |= np.isin(cand, state.items[state.behaviors == BEHAVIOR_CODE["buy"]])
    if settings.exclude_triggers:
        drop |= np.isin(cand, trig)
    cand, contrib, src = cand[~drop], contrib[~drop], src[~drop]
    if cand.size == 0:
        return Candidates.empty(channel)
    order = np.lexsort((src, -contrib, cand))  # by candidate, its best contribution first
    cand, contrib, src = cand[order], contrib[order], src[order]
    first = np.flatnonzero(np.r_[True, cand[1:] != cand[:-1]])
    return Candidates.top(cand[first], np.add.reduceat(contrib, first), k, channel, triggers=src[first])


class I2IRecaller(Recaller):
    """A channel whose artefact is an i2i table and whose recall is `expand_triggers`.

    Subclasses set `name` and `Settings` (a `Section` with a `triggers: TriggerSettings` field) and
    implement `fit`, which sets `table_`.
    """

    Settings: type[Section] = Section

    def __init__(self, *, settings: Section | None = None):
        self.settings = settings if settings is not None else self.Settings()
        if not isinstance(self.settings, self.Settings):
            raise TypeError(f"{type(self).__name__} takes {self.Settings.__name__}, got {type(self.settings).__name__}")
        self.table_: I2ITable | None = None

    def _table(self) -> I2ITable:
        if self.table_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(dataset) or load(path) first")
        return self.table_

    def recall(self, state: UserState, k: int) -> Candidates:
        return expand_triggers(self._table(), state, k, settings=self.settings.triggers, channel=self.name)

    def save(self, path: str | Path) -> None:
        """Write `path/table.npz` and `path/settings.json`."""
        path = Path(path)
        self._table().save(path / "table.npz")
        (path / "settings.json").write_text(json.dumps(self.settings.model_dump(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "I2IRecaller":
        path = Path(path)
        if not (path / "table.npz").exists():
            raise FileNotFoundError(f"{path} holds no i2i table (table.npz); save a fitted {cls.__name__} there first")
        rec = cls(settings=cls.Settings.model_validate_json((path / "settings.json").read_text()))
        rec.table_ = I2ITable.load(path / "table.npz")
        return rec

"""How a served user's interests become one list: how many interests (the shift of K'_u) and how their lists merge.

The paper's K'_u = max(1, min(K, floor(log2 |I_u|))) splits a user of 4-7 behaviours two ways and of 8-15
three ways. On logs of short histories (Amazon reviews: 5-10 items a user, leave-one-out) each of those
interests is built from two or three items, and MIND-K falls below MIND-1; on long click logs the split
pays. So the served K'_u = max(1, min(K, floor(log2 |I_u|) - shift)) (`routing.interest_count`), with the
shift picked on the validation days (`pick_shift`: HitRate@K, the head's HitRate breaking ties, then the
smaller shift, so a log where splitting pays keeps the paper's rule). Training always routes with shift 0:
the model has seen users of every length, and a served user with the shift is routed as a trained user of
|I_u| / 2^shift behaviours is. The largest candidate shift, floor(log2 max_len) - 1, serves every user one
interest: the model's own single-interest answer.

    >>> shift, scores = pick_shift(lambda s: check.score(channel.with_serve(interest_shift=s)), max_len=30)  # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from homefeed.recall.ann import AnnIndex, search_candidates
from homefeed.recall.base import Candidates

InterestMerge = Literal["max", "unit", "rank", "quota"]


def shifts(max_len: int) -> list[int]:
    """Candidate shifts of K'_u for behaviour lists of up to `max_len`: 0 (the paper) .. the first that gives everyone 1."""
    return list(range(max(1, int(math.floor(math.log2(max(max_len, 1)))))))


def pick_shift(score: Callable[[int], float], *, max_len: int) -> tuple[int, dict[str, float]]:
    """(the best shift, {shift: validation score}); `score(shift)` is the validation score served with it.
    Ties go to the smaller shift (the paper's rule first)."""
    scores = {s: float(score(s)) for s in shifts(max_len)}
    best = max(scores, key=lambda s: (scores[s], -s))
    return best, {str(s): v for s, v in scores.items()}


def merge_interests(index: AnnIndex, vectors: np.ndarray, k: int, *, channel: str, exclude: np.ndarray | None,
                    how: InterestMerge = "max", weights: np.ndarray | None = None) -> Candidates:
    """One list from K'_u interest queries (K'_u, D): every interest searches the index, then
        "max"   an item's score is its best inner product with any interest (the paper); one interest with
                larger scores (a long vector, a popular region) can take every slot
        "unit"  the same with each interest scaled to unit length, so a long vector cannot fill the list alone
        "rank"  an item's score is 1 / (1 + its best rank in any interest's own list): the lists interleaved
        "quota" each interest j gets a share of the list proportional to weights[j] (default: equal): the item at
                rank r of j's own list scores weights[j] / (r + 1/2) (Sainte-Lague), its best over the interests.
                `MIND` passes 1 + the behaviours each interest explains, so a main interest gets most slots and
                a minor one still gets its share at every depth
    """
    if how == "unit":
        norms = np.linalg.norm(vectors, axis=1)
        return search_candidates(index, vectors, k, channel=channel, exclude=exclude,
                                 query_weights=1.0 / np.maximum(norms, 1e-12))
    if how == "max":
        return search_candidates(index, vectors, k, channel=channel, exclude=exclude)
    if how not in ("rank", "quota"):
        raise ValueError(f"unknown interest merge {how!r}; valid: max, unit, rank, quota")
    exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    if k <= 0 or len(vectors) == 0:
        return Candidates.empty(channel)
    if how == "rank":
        weights = np.ones(len(vectors))
    else:
        weights = np.ones(len(vectors)) if weights is None else np.asarray(weights, np.float64)
        if weights.shape != (len(vectors),) or not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"quota weights must be {len(vectors)} finite non-negative numbers, not all 0; got {weights}")
    scores, items = index.search(vectors, min(k + exclude.size + 1, max(len(index), 1)))  # (K', k') each
    keep = (items > 0) & np.isfinite(scores) & ~np.isin(items, exclude)
    rank = np.cumsum(keep, axis=1) - 1  # (K', k'): rank among the interest's kept items
    rank = rank[keep]
    scores = 1.0 / (1.0 + rank) if how == "rank" else weights[np.nonzero(keep)[0]] / (rank + 0.5)
    items = items[keep]
    order = np.lexsort((-scores, items))  # by item, best first
    items, scores = items[order], scores[order]
    first = np.r_[True, items[1:] != items[:-1]]
    return Candidates.top(items[first], scores[first].astype(np.float32), k, channel)

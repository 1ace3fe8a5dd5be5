"""What MIND's list does with items the user already acted on: a per-log choice, made on the validation days.

Whether seen items belong on the page differs per log: on a Taobao log most hits of any recommender
are items the user viewed before (HitRate with them removed is near 0), on movie ratings nobody
rates a film twice, so every seen item in the list is a wasted slot. The interest vectors alone
rank the history neither first nor last. Four ways to serve it:

    "score"   history items compete with the rest on their inner products (the paper)
    "drop"    history items are removed
    "first"   history items come first, ordered by their best interest score, then the rest
    "recent"  history items come first, the most recent first (repeat consumption is mostly recent), then the rest

`pick` scores each on the validation queries the channel stops on (`validate.py`: HitRate@50, ties broken
by HitRate@10, since a history shorter than the list fits either way and only its order differs) and keeps
the best (remaining ties: the earlier of score, drop, first, recent), so a repeat-heavy log learns "first" and a log without
repeats learns "drop", from its own data.

    >>> mode, scores = pick(lambda mode: check.score(channel.with_serve(history=mode)))   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from homefeed.recall.base import Candidates

HistoryMode = Literal["score", "drop", "first", "recent"]
MODES: tuple[str, ...] = ("score", "drop", "first", "recent")


def pick(score: Callable[[str], float]) -> tuple[str, dict[str, float]]:
    """(the best mode, {mode: validation score}); `score(mode)` is the validation HitRate served that way."""
    scores = {mode: float(score(mode)) for mode in MODES}
    return max(MODES, key=lambda m: (scores[m], -MODES.index(m))), scores


def newest_first(items: np.ndarray) -> np.ndarray:
    """The distinct item codes of a time-ordered history (oldest first), the most recently seen first."""
    rev = np.asarray(items)[::-1]
    _, first = np.unique(rev, return_index=True)
    return rev[np.sort(first)]


def history_first(rows: Candidates, history: np.ndarray, item_vectors: np.ndarray, interests: np.ndarray,
                  k: int, *, by: str = "score") -> Candidates:
    """The top k of: the history items (distinct item codes, none of them in `rows`), ordered by their best inner
    product with any interest (K', D) (`by="score"`) or as given (`by="given"`, e.g. newest first), then `rows` in
    their order. Scores stay descending: history scores are lifted above the best of `rows`."""
    history = history[(history > 0) & (history < len(item_vectors))]
    if history.size == 0 or len(interests) == 0 or k <= 0:
        return rows
    if by == "score":
        best = (item_vectors[history] @ interests.T).max(1)  # (h,)
        order = np.argsort(-best, kind="stable")[:k]
        history, best = history[order], best[order].astype(np.float32)
    else:
        history = history[:k]
        best = -np.arange(history.size, dtype=np.float32)
    floor = float(rows.scores.max()) if len(rows) else 0.0
    lifted = best - best.min() + np.float32(floor + 1.0)
    rest = max(k - history.size, 0)
    return Candidates(np.r_[history.astype(rows.items.dtype), rows.items[:rest]],
                      np.r_[lifted, rows.scores[:rest]].astype(np.float32),
                      np.r_[np.full(history.size, -1, np.int32), rows.triggers[:rest]].astype(np.int32), rows.channel)

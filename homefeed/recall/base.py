"""The recall protocol every channel obeys, and the candidate rows they all return.

A channel is fitted offline on an ingested `Dataset` (training part only) and then asked, per
request, for up to k candidates for one `UserState`. Every channel returns the same rows
`(item, score, channel, trigger)`, so the merge, the ranker and the evaluation never need to know
which channel they came from.

    >>> rec = SomeChannel(k=100).fit(ds)              # doctest: +SKIP
    >>> rows = rec.recall(state, k=50)               # doctest: +SKIP
    >>> rows.items[:3], rows.scores[:3]              # doctest: +SKIP
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homefeed.data.dataset import Dataset
from homefeed.data.user_state import UserState

NO_TRIGGER = -1


@dataclass
class Candidates:
    """Candidate rows of one channel for one user, sorted by score descending, items unique.

    Attributes:
        items: (n,) int32 item codes.
        scores: (n,) float32, higher is better; comparable within a channel only.
        triggers: (n,) int32 item code that led to each candidate, or NO_TRIGGER (-1).
        channel: the channel's name, as in `homefeed.recall.CHANNELS`.
    """

    items: np.ndarray
    scores: np.ndarray
    triggers: np.ndarray
    channel: str

    def __post_init__(self):
        n = len(self.items)
        if len(self.scores) != n or len(self.triggers) != n:
            raise ValueError(f"{self.channel}: items, scores and triggers differ in length ({n}, {len(self.scores)}, {len(self.triggers)})")

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls, channel: str) -> "Candidates":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32), channel)

    @classmethod
    def top(cls, items: np.ndarray, scores: np.ndarray, k: int, channel: str, triggers: np.ndarray | None = None) -> "Candidates":
        """The k best of (items, scores), sorted descending, ties broken by item code for determinism."""
        items = np.asarray(items, np.int32)
        scores = np.asarray(scores, np.float32)
        triggers = np.full(items.size, NO_TRIGGER, np.int32) if triggers is None else np.asarray(triggers, np.int32)
        order = np.lexsort((items, -scores))[:k]
        return cls(items[order], scores[order], triggers[order], channel)


class Recaller(ABC):
    """One recall channel. `__init__` stores hyperparameters only; `fit` learns state ending in `_`."""

    name: str = ""

    @abstractmethod
    def fit(self, dataset: Dataset) -> "Recaller":
        """Learn from `dataset.events_in("train")` (and exposures/items/users as needed); return self."""

    @abstractmethod
    def recall(self, state: UserState, k: int) -> Candidates:
        """Up to k candidates for one user, best first."""

    def recall_batch(self, states: list[UserState], k: int) -> list[Candidates]:
        """Candidates for many users; must equal calling `recall` one user at a time."""
        return [self.recall(s, k) for s in states]

    def save(self, path: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved yet")

    @classmethod
    def load(cls, path: Path) -> "Recaller":
        raise NotImplementedError(f"{cls.__name__} cannot be loaded yet")

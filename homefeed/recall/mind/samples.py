"""MIND training samples from an event log, the same behaviour sequence at serving, and the negative sampler.

A user's events (oldest first, the chosen behaviour types, consecutive repeats of one item folded
into one, as a pv -> click -> cart funnel on one item is one behaviour) form a sequence
s_1..s_n. Every position t >= 2 is a sample: the label is s_t, the behaviours are the (up to) L
items before it, s_{t-L}..s_{t-1}. The serving side builds the behaviours of a `UserState` by the
same rule (`state_behaviors`), so training and serving see the same kind of sequence.

Sequences are kept flat (one array of all users' items, each sample a position in it) and a batch
gathers its (B, L) window on demand, so a million samples cost a few MB, not B x L x 8 bytes each.
Windows are left-padded with 0: the newest behaviour sits in the last slot.

Negatives for the sampled softmax come from the item corpus by one of two distributions:
    "log_uniform"  P(rank r) = log((r + 2) / (r + 1)) / log(N + 1), items ranked by training count
                   (TensorFlow's LogUniformCandidateSampler, the usual choice for sampled softmax)
    "unigram"      P(i) proportional to count(i) ** power (word2vec's 0.75)

    >>> seqs = build_sequences(ds.events_in("train"), max_len=30)        # doctest: +SKIP
    >>> behaviors, targets, users = seqs.batch(np.arange(4))             # (4, 30), (4,), (4,)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch

from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import BEHAVIOR_CODE, UserState

Sampler = Literal["log_uniform", "unigram"]


def check_behaviors(names: list[str] | tuple[str, ...]) -> None:
    bad = [b for b in names if b not in BEHAVIOR_CODE]
    if bad:
        raise ValueError(f"unknown behaviour(s) {bad}; valid behaviours: {', '.join(BEHAVIORS)}")


def fold_repeats(items: np.ndarray, users: np.ndarray | None = None) -> np.ndarray:
    """Bool mask keeping the first of each run of one item (within one user when `users` is given)."""
    keep = np.ones(items.size, bool)
    keep[1:] = items[1:] != items[:-1]
    if users is not None:
        keep[1:] |= users[1:] != users[:-1]
    return keep


@dataclass
class Sequences:
    """Every user's folded behaviour sequence, flat, and the training samples as positions in it.

    Attributes:
        items: (T,) int64 item codes, users one after another, oldest first.
        starts: (n,) int64 start in `items` of each sample's user.
        positions: (n,) int64 position of each sample's label in `items`.
        users: (n,) int64 user code of each sample.
        max_len: L, behaviours per sample.
    """

    items: np.ndarray
    starts: np.ndarray
    positions: np.ndarray
    users: np.ndarray
    max_len: int

    def __len__(self) -> int:
        return int(self.positions.size)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(behaviours (B, L) int64 left-padded with 0, targets (B,) int64, users (B,) int64) of samples `rows`."""
        pos, start = self.positions[rows], self.starts[rows]
        idx = pos[:, None] - self.max_len + np.arange(self.max_len)[None, :]  # (B, L), newest last
        behaviors = np.where(idx >= start[:, None], self.items[np.maximum(idx, 0)], 0)
        return torch.from_numpy(behaviors), torch.from_numpy(self.items[pos]), torch.from_numpy(self.users[rows])

    def counts(self, n_items: int) -> np.ndarray:
        """(n_items,) int64 occurrences of each item code in the sequences."""
        return np.bincount(self.items, minlength=n_items)


def build_sequences(events: pl.DataFrame, *, max_len: int, behaviors: tuple[str, ...] = BEHAVIORS,
                    max_samples_per_user: int | None = None) -> Sequences:
    """Samples from an encoded events frame (user_id, item_id, behavior, ts).

    Each user's sequence folds repeats; every position after the first is a label. With
    `max_samples_per_user`, only each user's last that many labels are kept (long histories are still
    used as behaviours).
    """
    check_behaviors(behaviors)
    ev = (events.filter(pl.col("behavior").cast(pl.String).is_in(list(behaviors)))
          .sort(["user_id", "ts"], maintain_order=True))
    users = ev["user_id"].to_numpy().astype(np.int64)
    items = ev["item_id"].to_numpy().astype(np.int64)
    keep = fold_repeats(items, users)
    users, items = users[keep], items[keep]
    first = np.r_[True, users[1:] != users[:-1]] if users.size else np.zeros(0, bool)
    starts_of_user = np.flatnonzero(first)
    user_start = np.repeat(starts_of_user, np.diff(np.r_[starts_of_user, users.size]))  # (T,)
    label = ~first
    if max_samples_per_user is not None:
        ends = np.r_[starts_of_user[1:], users.size]
        from_end = np.repeat(ends, np.diff(np.r_[starts_of_user, users.size])) - np.arange(users.size)  # 1 = last
        label &= from_end <= max_samples_per_user
    positions = np.flatnonzero(label)
    return Sequences(items, user_start[positions], positions, users[positions], max_len)


def state_behaviors(state: UserState, *, max_len: int, behaviors: tuple[str, ...] = BEHAVIORS) -> np.ndarray:
    """(L,) int64 behaviour slots of one user at request time, left-padded with 0, built as in training."""
    keep = np.isin(state.behaviors, [BEHAVIOR_CODE[b] for b in behaviors])
    items = np.asarray(state.items, np.int64)[keep]
    items = items[fold_repeats(items)][-max_len:]
    out = np.zeros(max_len, np.int64)
    if items.size:
        out[max_len - items.size:] = items
    return out


class NegativeSampler:
    """Draws negatives from the item corpus and knows their log probabilities (for the log Q correction).

    Args:
        counts: (N,) training occurrences per item code; code 0 is never drawn.
        kind: "log_uniform" (by count rank) or "unigram" (count ** power).
    """

    def __init__(self, counts: np.ndarray, *, kind: Sampler = "log_uniform", power: float = 0.75):
        counts = np.asarray(counts, np.float64).copy()
        counts[0] = 0
        n = counts.size
        if kind == "log_uniform":
            order = np.lexsort((np.arange(n), -counts))  # most frequent first, ties by code
            order = order[order != 0]
            ranks = np.arange(order.size, dtype=np.float64)
            p = np.zeros(n)
            p[order] = np.log((ranks + 2) / (ranks + 1)) / np.log(order.size + 1)
        elif kind == "unigram":
            p = counts ** power
        else:
            raise ValueError(f"unknown negative sampler {kind!r}; valid samplers: log_uniform, unigram")
        if p.sum() <= 0:
            raise ValueError("no item occurs in the training sequences: cannot draw negatives")
        self.p = p / p.sum()
        self.cdf = torch.from_numpy(np.cumsum(self.p))
        self.log_p = torch.from_numpy(np.log(np.maximum(self.p, 1e-30))).float()

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,) int64 item codes drawn with replacement."""
        u = torch.rand(n, generator=gen, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp(max=self.cdf.numel() - 1)

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        """log P(item) of item codes (any shape), float32."""
        return self.log_p[items]

"""Vectorised sampling helpers: weighted choice inside groups (CSR), top-k without replacement.

A CSR ("compressed sparse row") grouping lists the members of group g as
`members[ptr[g]:ptr[g + 1]]`, with `cum` the members' cumulative weights normalised to end at 1.0
inside each group. Drawing one member of group g for u ~ U[0, 1) is a binary search of u in that
slice; `choose_in_groups` does it for millions of draws at once by offsetting group g's cumulative
weights by g, so one global `searchsorted` serves every group.

    >>> g = Grouping.build(np.array([0, 1, 1]), np.array([1.0, 1.0, 3.0]), n_groups=2)
    >>> g.members.tolist(), g.cum.tolist()
    ([0, 1, 2], [1.0, 0.25, 1.0])
    >>> g.choose(np.array([1, 1]), np.array([0.1, 0.9])).tolist()
    [1, 2]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grouping:
    """Members grouped by key. ptr int64 (n_groups + 1,); members int64 (n,); cum float64 (n,)."""

    ptr: np.ndarray
    members: np.ndarray
    cum: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray, weights: np.ndarray | None = None, *, n_groups: int,
              members: np.ndarray | None = None) -> "Grouping":
        """Group `members` (default 0..len(keys)-1) by integer `keys` in [0, n_groups), stable order.

        Groups whose weights sum to 0 get a uniform cum over their members.
        """
        keys = np.asarray(keys, dtype=np.int64)
        members = np.arange(len(keys)) if members is None else np.asarray(members)
        weights = np.ones(len(keys)) if weights is None else np.asarray(weights, dtype=np.float64)
        order = np.argsort(keys, kind="stable")
        ks, w = keys[order], weights[order]
        counts = np.bincount(ks, minlength=n_groups)
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total = np.bincount(ks, weights=w, minlength=n_groups)
        c = np.cumsum(w)
        cum = c - np.concatenate([[0.0], c])[ptr[:-1]][ks]
        uniform = (np.arange(len(w)) - ptr[ks] + 1) / np.maximum(counts[ks], 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cum = np.where(total[ks] > 0, cum / total[ks], uniform)
        if len(cum):
            cum[ptr[1:][counts > 0] - 1] = 1.0  # exact 1.0 at each group's end
        return cls(ptr, members[order].astype(np.int64), cum)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.ptr)

    def choose(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One member per draw: member of `groups[j]` with cumulative weight just above `u[j]`.

        Every drawn group must be non-empty (raises ValueError otherwise).
        """
        groups = np.asarray(groups, dtype=np.int64)
        if len(groups) and (self.sizes[groups] == 0).any():
            raise ValueError(f"cannot draw from empty groups {np.unique(groups[self.sizes[groups] == 0])[:5].tolist()}")
        group_of = np.repeat(np.arange(len(self.ptr) - 1), self.sizes)
        offset = self.cum + group_of
        pos = np.searchsorted(offset, groups + np.minimum(u, 1 - 1e-12), side="right")
        return self.members[np.minimum(pos, len(self.members) - 1)]


def top_k_without_replacement(rng: np.random.Generator, logp: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Gumbel top-k: per row of `logp` (n, m), k distinct columns drawn with prob ~ exp(logp), in draw order.

    Returns int64 (n, max k); entries past a row's own k are -1.
    """
    keys = logp + rng.gumbel(size=logp.shape)
    kmax = int(np.max(k))
    top = np.argsort(-keys, axis=1)[:, :kmax]
    if np.ndim(k):
        top = np.where(np.arange(kmax)[None, :] < np.asarray(k)[:, None], top, -1)
    return top.astype(np.int64)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def zipf_logpop(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Log popularity -exponent * log(rank) with ranks shuffled over n entries, float64 (n,)."""
    return -exponent * np.log(rng.permutation(n) + 1.0)

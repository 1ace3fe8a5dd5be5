"""Bootstrap intervals over users for ratio metrics, and for an arm's relative difference to a control.

Users, not pages, are the unit: one user's pages are correlated (same taste, same fatigue), so the
interval resamples whole users. Resampling uses the Poisson bootstrap (each user's weight is
Poisson(1) per replicate; Hanley & MacGibbon 2006, the usual choice for online experiments): one
matrix product gives every replicate of every sum, with no per-replicate index arrays. A metric is
a ratio of sums (clicks / exposures), so each replicate is `sum(w * num) / sum(w * den)`. Two arms
are resampled independently; the difference is `arm / control - 1` per replicate, and its interval
the 2.5% and 97.5% percentiles.

    >>> rng = np.random.default_rng(0)
    >>> reps = ratio_replicates(np.array([1., 0, 2]), np.array([10., 10, 10]), weights(3, 200, rng))
    >>> reps.shape
    (200,)
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

LEVEL = 0.95


def weights(n_users: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(1) bootstrap weights, float64 (n_boot, n_users)."""
    return rng.poisson(1.0, (n_boot, n_users)).astype(np.float64)


def ratio_replicates(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) bootstrap replicates of sum(num) / sum(den) over users; nan where a replicate's den is 0."""
    top, bottom = w @ np.asarray(num, np.float64), w @ np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / bottom, np.nan)


def coverage_replicates(user_items: sparse.csr_matrix, n_items: int, w: np.ndarray) -> np.ndarray:
    """(B,) replicates of the share of the catalogue shown to the resampled users, bias-corrected.

    user_items: (U, I) indicator of the items each user was shown. Coverage is a union over users,
    not a sum: a resample holds only ~63% distinct users, so its replicates sit below the point
    value. They are shifted by that bias (point - mean of the replicates), which keeps their spread.
    """
    shown = sparse.csr_matrix((w > 0).astype(np.float64)) @ user_items  # (B, I): how often each item was shown
    reps = np.asarray((shown > 0).sum(axis=1)).ravel() / max(n_items, 1)
    point = (np.asarray(user_items.sum(axis=0)).ravel() > 0).sum() / max(n_items, 1)
    return reps + (point - reps.mean())


def interval(point: float, reps: np.ndarray, *, level: float = LEVEL) -> dict:
    """{"value", "low", "high"}: the point estimate and the percentile interval of its replicates."""
    reps = reps[np.isfinite(reps)]
    if not len(reps) or not np.isfinite(point):
        return {"value": float(point), "low": float("nan"), "high": float("nan")}
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(point), "low": float(lo), "high": float(hi)}


def relative_difference(point_arm: float, point_control: float, reps_arm: np.ndarray, reps_control: np.ndarray,
                        *, level: float = LEVEL) -> dict:
    """arm / control - 1 with its interval; `significant` when the interval excludes 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        point = point_arm / point_control - 1 if point_control else float("nan")
        reps = reps_arm / reps_control - 1
    out = interval(point, reps, level=level)
    out["significant"] = bool(np.isfinite(out["low"]) and (out["low"] > 0 or out["high"] < 0))
    return out

"""Metrics as pure functions over numpy arrays: one implementation for every channel and model.

Top-K lists (recall): `recommended` is an (n, K) int array of item codes per user, best first,
padded with -1; `relevant` is a list of n int arrays (the items each user went on to act on).
CTR (rank): `y` is 0/1 labels, `p` predicted probabilities, `groups` the user of each row.

    >>> rec = np.array([[3, 1, -1], [2, 5, 4]])
    >>> hits_at_k(rec, [np.array([1]), np.array([9])]).tolist()
    [[False, True, False], [False, False, False]]
"""
from __future__ import annotations

import numpy as np


def _pair_keys(users: np.ndarray, items: np.ndarray, stride: int) -> np.ndarray:
    return users.astype(np.int64) * stride + items.astype(np.int64)


def hits_at_k(recommended: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """(n, K) bool: whether each recommended slot holds one of the user's relevant items."""
    rec = np.asarray(recommended, dtype=np.int64)
    n, k = rec.shape
    if len(relevant) != n:
        raise ValueError(f"recommended has {n} users but relevant has {len(relevant)}")
    lengths = np.fromiter((len(r) for r in relevant), dtype=np.int64, count=n)
    rel_items = np.concatenate([np.asarray(r, dtype=np.int64) for r in relevant]) if n else np.zeros(0, np.int64)
    stride = int(max(rec.max(initial=0), rel_items.max(initial=0))) + 2
    rel_keys = _pair_keys(np.repeat(np.arange(n), lengths), rel_items, stride)
    rec_keys = _pair_keys(np.repeat(np.arange(n), k), rec.ravel(), stride)
    return (np.isin(rec_keys, rel_keys) & (rec.ravel() >= 0)).reshape(n, k)


def topk_metrics(recommended: np.ndarray, relevant: list[np.ndarray], ks: tuple[int, ...] = (20, 50, 200)) -> dict[str, float]:
    """HitRate@K, Recall@K and NDCG@K averaged over users that have at least one relevant item.

    Items recommended twice to one user count once (lists are assumed deduplicated, as channels return them).
    """
    rec = np.asarray(recommended)
    lengths = np.array([len(np.unique(r)) for r in relevant], dtype=np.float64)
    keep = lengths > 0
    out: dict[str, float] = {"users_evaluated": int(keep.sum())}
    if not keep.any():
        return out | {f"{m}@{k}": 0.0 for k in ks for m in ("hitrate", "recall", "ndcg")}
    hits = hits_at_k(rec, relevant)[keep]
    lengths = lengths[keep]
    discounts = 1.0 / np.log2(np.arange(2, rec.shape[1] + 2))
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(lengths, k).astype(int) - 1]
        out[f"hitrate@{k}"] = float((n_hits > 0).mean())
        out[f"recall@{k}"] = float((n_hits / lengths).mean())
        out[f"ndcg@{k}"] = float(((h * discounts[: h.shape[1]]).sum(axis=1) / ideal).mean())
    return out


def coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue (n_items distinct items) that appears in any list."""
    rec = np.asarray(recommended)
    return float(np.unique(rec[rec >= 0]).size / max(n_items, 1))


def long_tail_share(recommended: np.ndarray, popularity: np.ndarray, head: float = 0.2) -> float:
    """Share of recommended slots holding items outside the top `head` fraction by popularity.

    `popularity[item]` is each item's training count (index = item code).
    """
    rec = np.asarray(recommended)
    slots = rec[rec >= 0]
    if slots.size == 0:
        return 0.0
    n_head = max(int(round(head * np.count_nonzero(popularity))), 1)
    head_items = np.argsort(-popularity, kind="stable")[:n_head]
    return float(1.0 - np.isin(slots, head_items).mean())


def users_served(recommended: np.ndarray) -> int:
    """Users whose list is not empty."""
    return int((np.asarray(recommended) >= 0).any(axis=1).sum())


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties get average ranks."""
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC (DIN paper): per-user AUC weighted by the user's rows, over users with both labels."""
    import polars as pl

    df = pl.DataFrame({"g": np.asarray(groups), "y": np.asarray(y).astype(np.int8), "p": np.asarray(p, dtype=np.float64)})
    per_group = (
        df.with_columns(pl.col("p").rank("average").over("g").alias("r"))
        .group_by("g")
        .agg(n=pl.len(), pos=pl.col("y").sum(), rank_pos=(pl.col("r") * pl.col("y")).sum())
        .filter((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n")))
        .with_columns(neg=pl.col("n") - pl.col("pos"))
        .with_columns(auc=(pl.col("rank_pos") - pl.col("pos") * (pl.col("pos") + 1) / 2) / (pl.col("pos") * pl.col("neg")))
    )
    if per_group.height == 0:
        return float("nan")
    return float((per_group["auc"] * per_group["n"]).sum() / per_group["n"].sum())


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def calibration(y: np.ndarray, p: np.ndarray) -> float:
    """Predicted over actual CTR: 1.0 is calibrated, above 1 over-predicts."""
    actual = float(np.mean(y))
    return float(np.mean(p) / actual) if actual > 0 else float("nan")


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """The reliability diagram: predictions cut into `n_bins` equal-width bins of [0, 1].

    Returns (n_bins,) arrays: rows (int64), predicted (mean p, nan where empty), observed (click rate,
    nan where empty). A calibrated model has predicted == observed in every bin.
    """
    if n_bins < 1:
        raise ValueError(f"calibration_bins: n_bins must be >= 1, got {n_bins}")
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"calibration_bins: y has shape {y.shape} but p has {p.shape}")
    if p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1 or np.isnan(p).any()):
        raise ValueError("calibration_bins: predictions must be probabilities in [0, 1] (got values outside or nan)")
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # p == 1 falls in the last bin
    rows = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, weights=p, minlength=n_bins) / rows
        observed = np.bincount(which, weights=y, minlength=n_bins) / rows
    return {"rows": rows, "predicted": predicted, "observed": observed}


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (bin rows / all rows) * |mean p - click rate|.

    0 is perfectly calibrated; a constant predictor at the observed rate scores 0 too, so read it
    beside AUC (Guo et al., "On Calibration of Modern Neural Networks", 2017; equal-width bins).
    """
    bins = calibration_bins(y, p, n_bins)
    full = bins["rows"] > 0
    if not full.any():
        return float("nan")
    gaps = np.abs(bins["predicted"][full] - bins["observed"][full])
    return float((bins["rows"][full] * gaps).sum() / bins["rows"].sum())


def ctr_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """AUC, GAUC (when groups are given), logloss and calibration (mean predicted, observed rate, their ratio, ECE)."""
    out = {"auc": auc(y, p), "logloss": logloss(y, p), "calibration": calibration(y, p),
           "predicted_mean": float(np.mean(p)) if np.size(p) else float("nan"),
           "observed_rate": float(np.mean(y)) if np.size(y) else float("nan"), "ece": ece(y, p), "rows": int(np.size(y))}
    if groups is not None:
        out["gauc"] = gauc(y, p, groups)
    return out

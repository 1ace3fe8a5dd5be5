"""Recall evaluation on the time split: every channel and the merged list, scored by one code path.

For a part of the split (test by default) each user who acts in that part is one query. Their
state is built with `states_at` from every event before the part starts (training and, for test,
validation events too), each channel recalls max(ks) items, and the merger merges them into a list
of the same length. Relevant items are the distinct items the user acted on in the part (the
behaviours counted are configurable). Metrics come from `homefeed.evaluate.metrics` only:

    HitRate@K, Recall@K, NDCG@K       per user, averaged over users with a relevant item
    coverage                          share of the catalogue recalled for anyone
    long_tail                         share of recalled slots outside the top 20% items by training events
    users_served                      users given a non-empty list
    ms_per_user                       recall (or merge + all channels) time per user

    >>> channels = fit_channels(ds, ["itemcf", "crowd", "popular"])      # recall.part; doctest: +SKIP
    >>> result = evaluate_recall(ds, channels, Merger().fit(ds))          # doctest: +SKIP
    >>> result["channels"]["itemcf"]["hitrate@50"], result["merged"]["hitrate@50"]   # doctest: +SKIP
"""
from __future__ import annotations

import time

import numpy as np
import polars as pl
from rich.table import Table

from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import states_at
from homefeed.evaluate.metrics import coverage, long_tail_share, topk_metrics, users_served
from homefeed.evaluate.report import metrics_table
from homefeed.recall.base import Candidates, Recaller
from homefeed.recall.merge import Merger
from homefeed.recall.part import fit_channels  # noqa: F401  (re-exported: it lives with the part it fits)
from homefeed.recall.popular import check_behaviors

MERGED = "merged"


def relevant_items(dataset: Dataset, part: str, behaviors: tuple[str, ...] = BEHAVIORS) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users acting in `part` (sorted) and, per user, the distinct items they acted on with `behaviors`."""
    check_behaviors(behaviors, "relevant behaviours")
    per_user = (dataset.events_in(part).filter(pl.col("behavior").cast(pl.String).is_in(list(behaviors)))
                .group_by("user_id").agg(pl.col("item_id").unique().sort()).sort("user_id"))
    return per_user["user_id"].to_numpy(), [np.asarray(v, np.int64) for v in per_user["item_id"].to_list()]


def queries(dataset: Dataset, part: str, behaviors: tuple[str, ...] = BEHAVIORS, *, max_users: int | None = None,
            seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list]:
    """(users, relevant items, states before `part`) of the users acting in `part`, a seeded sample of `max_users`."""
    start, _ = dataset.split.bounds(part)
    if start is None:
        raise ValueError(f"cannot evaluate recall on part {part!r}: it has no history before it; use 'valid' or 'test'")
    users, relevant = relevant_items(dataset, part, tuple(behaviors))
    if max_users is not None and users.size > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(users.size, max_users, replace=False))
        users, relevant = users[pick], [relevant[i] for i in pick]
    return users, relevant, states_at(dataset.events, dataset.users, start, user_ids=users)


def as_matrix(lists: list, k: int, drop: list[np.ndarray] | None = None) -> np.ndarray:
    """(n, k) int64 item codes from candidate lists, padded with -1; `drop[u]`'s items removed from row u."""
    out = np.full((len(lists), k), -1, np.int64)
    for row, c in enumerate(lists):  # one row per user, not per item
        items = c.items if drop is None else c.items[~np.isin(c.items, drop[row])]
        n = min(len(items), k)
        out[row, :n] = items[:n]
    return out


def score_lists(recommended: np.ndarray, relevant: list[np.ndarray], *, ks: tuple[int, ...], n_items: int,
                popularity: np.ndarray, seconds: float) -> dict[str, float]:
    """Every recall metric of one channel's (n, K) lists."""
    out = topk_metrics(recommended, relevant, ks)
    out["coverage"] = coverage(recommended, n_items)
    out["long_tail"] = long_tail_share(recommended, popularity)
    out["users_served"] = users_served(recommended)
    out["ms_per_user"] = 1000.0 * seconds / max(len(relevant), 1)
    return out


def evaluate_recall(dataset: Dataset, channels: dict[str, Recaller], merger: Merger | None, *,
                    ks: tuple[int, ...] = (20, 50, 200), part: str = "test", behaviors: tuple[str, ...] = BEHAVIORS,
                    max_users: int | None = None, seed: int = 0, exclude_seen: bool = False) -> dict:
    """Metrics per fitted channel and for their merge: `{"channels": {name: {...}}, "merged": {...}, "setup": {...}}`.

    Parameters:
        channels: fitted channels by name (see `fit_channels`).
        merger: fitted Merger, or None to skip the merged row.
        part: "valid" or "test"; states are built from all events before it starts.
        behaviors: behaviours that make an item relevant.
        max_users: evaluate a seeded random sample of this many users (None = all).
        exclude_seen: the "drop everything seen" protocol: items the user acted on before the part are
            removed from every list (each channel is asked for 2 max(ks) items to make up for them, as
            when the merger drops seen items itself); off, repeats stay ("keep repeat items").
    """
    users, relevant, states = queries(dataset, part, tuple(behaviors), max_users=max_users, seed=seed)
    k = max(ks)
    popularity = np.bincount(dataset.events_in("train")["item_id"].to_numpy(), minlength=dataset.n_items)
    n_items = dataset.items.height
    seen = [np.unique(s.items) for s in states]
    ask = 2 * k if exclude_seen or (merger is not None and merger.seen_weight_ == 0) else k  # room for dropped items
    lists: dict[str, list[Candidates]] = {}
    result: dict = {"channels": {}}
    total_seconds = 0.0
    for name, channel in channels.items():
        t0 = time.perf_counter()
        lists[name] = channel.recall_batch(states, ask)
        seconds = time.perf_counter() - t0
        total_seconds += seconds
        result["channels"][name] = score_lists(as_matrix(lists[name], k, seen if exclude_seen else None), relevant,
                                               ks=ks, n_items=n_items, popularity=popularity, seconds=seconds)
    if merger is not None and channels:
        t0 = time.perf_counter()
        merged = [merger.merge([lists[name][u] for name in channels], k=ask, seen=seen[u]) for u in range(len(states))]
        seconds = total_seconds + time.perf_counter() - t0
        result[MERGED] = score_lists(as_matrix(merged, k, seen if exclude_seen else None), relevant, ks=ks,
                                     n_items=n_items, popularity=popularity, seconds=seconds)
    result["setup"] = {"part": part, "ks": list(ks), "behaviors": list(behaviors), "users": int(users.size),
                       "exclude_seen": exclude_seen, "shares": dict(merger.shares_) if merger is not None else {},
                       "seen_weight": merger.seen_weight_ if merger is not None else None}
    return result


def format_recall_table(result: dict, *, title: str | None = None) -> Table:
    """One table: a row per channel and the merged row; HitRate/Recall/NDCG per K, then the list figures."""
    rows = dict(result["channels"])
    if MERGED in result:
        rows[MERGED] = result[MERGED]
    ks = result.get("setup", {}).get("ks") or sorted({int(c.split("@")[1]) for r in rows.values() for c in r if "@" in c})
    columns = [f"{m}@{k}" for m in ("hitrate", "recall", "ndcg") for k in ks]
    columns += ["coverage", "long_tail", "users_served", "ms_per_user"]
    part = result.get("setup", {}).get("part", "")
    return metrics_table(rows, title=title or f"recall on {part} ({result.get('setup', {}).get('users', '?')} users)",
                         columns=columns, name_header="channel")

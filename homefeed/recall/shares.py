"""Merge shares from measured recall: each channel earns the share of the list that the hits it adds deserve.

"Modulate the recall ratios of the recall algorithms by their historical recall results": channels
fitted on the training days recall for every user who acts on the validation days, and the shares
(and the factor on already-seen items) are chosen to maximise the merged list's HitRate there,

    J = mean over K in ks of  HR_merged@K / max over channels c of HR_c@K

scored by the merge's own formula (`merge.fused_scores`). The search is greedy coordinate ascent on
a grid, from the best single channel alone: a channel's share only rises when the merged list gains
more than `tol`, so a channel whose hits better channels already find (Ranki2i when there are no
exposures: the same list as Item-CF) or that finds nothing (Retarget on review logs) stays at the
floor share, and the merged list is never worse on validation than its best channel. The factor on
seen items is learned the same way: about 1 where users come back to what they viewed (Taobao),
0 where they never do (reviews).

    >>> merger = learn_merge(ds, fitted_on_train, MergeSettings())    # doctest: +SKIP
    >>> merger.shares_, merger.seen_weight_, merger.learned_["marginal"]   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.recall.base import Recaller
from homefeed.recall.evaluate import queries
from homefeed.recall.merge import Merger, MergeSettings, bounded, fused_scores

WEIGHT_GRID = (0.0, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)  # 0 = the floor share
SEEN_GRID = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class Recalled:
    """Every channel's list for a sample of users, flattened, with what the merge needs to score them.

    Rows are (user, channel, rank, item) candidates; keys are distinct (user, item) pairs.

    Attributes:
        inverse: (n_rows,) key of each row.   channel, rank: (n_rows,) int64.
        key_user, key_item: (n_keys,) int64.   hit: (n_keys,) bool, a relevant item.   seen: (n_keys,) bool.
        n_users: users in the sample (each has at least one relevant item).   names: channel names.
        repeat_share: share of the relevant (user, item) pairs the user had acted on before.
    """

    inverse: np.ndarray
    channel: np.ndarray
    rank: np.ndarray
    key_user: np.ndarray
    key_item: np.ndarray
    hit: np.ndarray
    seen: np.ndarray
    n_users: int
    names: tuple[str, ...]
    repeat_share: float


def recall_on(dataset: Dataset, channels: dict[str, Recaller], *, part: str = "valid", k: int = 200,
              behaviors: tuple[str, ...] = BEHAVIORS, max_users: int | None = 3000, seed: int = 0) -> Recalled:
    """Recall `k` items per channel for the users acting in `part`, from their history before it."""
    _, relevant, states = queries(dataset, part, tuple(behaviors), max_users=max_users, seed=seed)
    names = tuple(channels)
    rows = []  # (user, channel, rank, item)
    for c, name in enumerate(names):
        for u, cands in enumerate(channels[name].recall_batch(states, k)):
            n = len(cands)
            rows.append(np.stack([np.full(n, u), np.full(n, c), np.arange(n), np.asarray(cands.items, np.int64)]))
    rows = np.concatenate(rows, axis=1) if rows else np.zeros((4, 0), np.int64)
    stride = int(max(dataset.n_items, rows[3].max(initial=0) + 1))
    keys, inverse = np.unique(rows[0] * stride + rows[3], return_inverse=True)
    rel_keys = np.concatenate([u * stride + r for u, r in enumerate(relevant)]) if relevant else np.zeros(0, np.int64)
    seen_keys = np.concatenate([u * stride + np.unique(s.items).astype(np.int64) for u, s in enumerate(states)]) \
        if states else np.zeros(0, np.int64)
    return Recalled(inverse=inverse, channel=rows[1], rank=rows[2], key_user=keys // stride, key_item=keys % stride,
                    hit=np.isin(keys, rel_keys), seen=np.isin(keys, seen_keys), n_users=len(states), names=names,
                    repeat_share=float(np.isin(rel_keys, seen_keys).mean()) if rel_keys.size else 0.0)


def merged_hit_rates(r: Recalled, weights: np.ndarray, seen_weight: float, *, ks: tuple[int, ...],
                     consensus: bool = True) -> dict[int, float]:
    """HitRate@K of the merged lists, exactly as `Merger.merge` orders them (F descending, ties by item).

    No sort of the lists: a user's first hit sits at the number of their keys that rank above it.
    """
    fused = fused_scores(r.inverse, r.key_user.size, r.channel, r.rank, np.asarray(weights, np.float64), consensus=consensus)
    if seen_weight != 1.0:
        fused = np.where(r.seen, fused * seen_weight, fused)
    hits = np.flatnonzero(r.hit & (fused > 0))
    if hits.size == 0:
        return {k: 0.0 for k in ks}
    order = hits[np.lexsort((r.key_item[hits], -fused[hits], r.key_user[hits]))]
    first = order[np.r_[True, r.key_user[order][1:] != r.key_user[order][:-1]]]  # each user's best hit
    best_f = np.full(r.n_users, np.inf)
    best_item = np.full(r.n_users, -1, np.int64)
    best_f[r.key_user[first]], best_item[r.key_user[first]] = fused[first], r.key_item[first]
    f_user, i_user = best_f[r.key_user], best_item[r.key_user]
    above = (fused > 0) & ((fused > f_user) | ((fused == f_user) & (r.key_item < i_user)))
    position = np.bincount(r.key_user, weights=above, minlength=r.n_users)
    position[np.isinf(best_f)] = np.inf
    return {k: float((position < k).mean()) for k in ks}


def duplicates(r: Recalled, *, overlap: float = 0.95) -> dict[str, str]:
    """Channels whose lists are (almost) those of an earlier channel -> that channel.

    Ranki2i without an exposure log re-scores nothing and returns Item-CF's lists: counting both
    would give one list two shares. Two lists match where the same item sits at the same rank.
    """
    rows = r.inverse.astype(np.int64) * 1024 + np.minimum(r.rank, 1023)
    per = [rows[r.channel == c] for c in range(len(r.names))]
    out: dict[str, str] = {}
    for c, name in enumerate(r.names):
        for d in range(c):
            if r.names[d] in out or per[c].size == 0:
                continue
            if np.isin(per[c], per[d]).sum() >= overlap * max(per[c].size, per[d].size):
                out[name] = r.names[d]
                break
    return out


def coordinate_search(objective: Callable[[np.ndarray, float], float], n: int, order: list[int],
                      seen_grid: tuple[float, ...], *, tol: float, passes: int = 3) -> tuple[np.ndarray, float, float]:
    """Greedy coordinate ascent over raw channel weights (WEIGHT_GRID) and the seen-item factor (seen_grid).

    Starts from channel order[0] alone (every other weight 0, the floor) and the seen factor 1 (or the
    only one allowed); a step is taken only when it raises the objective by more than `tol`.
    Returns (weights (n,), seen factor, objective).
    """
    w = np.zeros(n)
    w[order[0]] = 1.0
    rho = 1.0 if 1.0 in seen_grid else seen_grid[0]
    current = objective(w, rho)
    for _ in range(passes):
        changed = False
        for i in [*order, None]:  # None: the seen-item factor
            for v in seen_grid if i is None else WEIGHT_GRID:
                trial_w, trial_rho = w.copy(), (v if i is None else rho)
                if i is not None:
                    trial_w[i] = v
                if trial_w.sum() == 0:
                    continue
                score = objective(trial_w, trial_rho)
                if score > current + tol:
                    w, rho, current, changed = trial_w, trial_rho, score, True
        if not changed:
            break
    return w, rho, current


def prune(objective: Callable[[np.ndarray, float], float], w: np.ndarray, rho: float, current: float, *,
          tol: float) -> tuple[np.ndarray, float]:
    """Channels whose weight buys at most `tol` of the objective back to the floor (weight 0), weakest first.

    The search can leave weight on a channel that recalls nothing useful, e.g. one whose items are all
    seen once seen items are dropped: with the shares normalised, its weight only rescales the others
    against the floor. A channel that adds nothing must sit at the floor by itself, so each is tried at 0.
    """
    w = w.copy()
    while np.count_nonzero(w) > 1:
        trials = []
        for i in np.flatnonzero(w):
            without = w.copy()
            without[i] = 0.0
            trials.append((current - objective(without, rho), int(i), without))
        loss, i, without = min(trials, key=lambda t: (t[0], t[1]))
        if loss > tol:
            break
        w, current = without, current - loss
    return w, current


def learn_merge(dataset: Dataset, channels: dict[str, Recaller], settings: MergeSettings | None = None, *,
                ks: tuple[int, ...] = (10, 50, 200), behaviors: tuple[str, ...] = BEHAVIORS, max_users: int | None = 3000,
                tol: float = 0.002, seed: int = 0, progress: Callable[[str], None] | None = None) -> Merger:
    """A Merger whose shares (and seen-item factor) are learned from `channels`' hits on the validation days.

    `channels` must be fitted on the training part only. The Merger's `learned_` holds the report:
    each channel's HitRate alone, the merged and equal-share HitRates, each channel's marginal gain
    (J lost when it falls to the floor), the repeat share of the validation items and notes.
    """
    settings = settings or MergeSettings()
    say = progress or (lambda text: None)
    merger = Merger(settings=settings)
    say("recall on the validation days")
    r = recall_on(dataset, channels, k=max(ks), behaviors=behaviors, max_users=max_users, seed=seed)
    names, n = list(r.names), len(r.names)
    if r.n_users == 0 or n == 0:
        return merger.set_shares({c: 1.0 for c in names}, learned={"users": r.n_users, "notes": ["no validation users: equal shares"]})

    def rates(raw: np.ndarray, seen_weight: float, *, floor: bool = True) -> dict[int, float]:
        w = bounded(raw, settings.min_share, settings.max_share) if floor else raw
        return merged_hit_rates(r, w, seen_weight, ks=ks, consensus=settings.consensus)

    copies = duplicates(r)
    # each channel alone, under its better protocol (seen items kept, or dropped as the merge may learn to)
    solo = {c: {k: max(a[k], b[k]) for k in ks} for i, c in enumerate(names)
            for a, b in [(rates(np.eye(n)[i], 1.0, floor=False), rates(np.eye(n)[i], 0.0, floor=False))]}
    best_at = {k: max(max(s[k] for s in solo.values()), 1e-9) for k in ks}

    def objective(raw: np.ndarray, seen_weight: float) -> float:
        hr = rates(raw, seen_weight)
        return float(np.mean([hr[k] / best_at[k] for k in ks]))

    say("search shares")
    tol = max(tol, 2.0 / (r.n_users * len(ks) * min(best_at.values())))  # a step must win two users' hits
    order = sorted((i for i in range(n) if names[i] not in copies),
                   key=lambda i: -np.mean([solo[names[i]][k] / best_at[k] for k in ks]))  # best alone first
    seen_grid = SEEN_GRID if settings.seen_weight is None else (float(settings.seen_weight),)
    w, rho, current = coordinate_search(objective, n, order, seen_grid, tol=tol)
    w, current = prune(objective, w, rho, current, tol=tol)
    marginal = {}
    for i, c in enumerate(names):
        without = w.copy()
        without[i] = 0.0
        marginal[c] = current - objective(without, rho) if without.sum() > 0 else current
    merged = rates(w, rho)
    notes = [f"{c}: the same lists as {copies[c]}, floor share" if c in copies else
             f"{c}: adds nothing on validation ({solo[c][max(ks)]:.3f} HR@{max(ks)} alone), floor share"
             for i, c in enumerate(names) if w[i] == 0]
    learned = {"part": "valid", "users": r.n_users, "objective": current, "seen_weight": rho, "duplicates": copies,
               "repeat_share": r.repeat_share, "solo": {c: _named(s) for c, s in solo.items()}, "merged": _named(merged),
               "equal_shares": _named(rates(np.ones(n), 1.0)), "marginal": marginal, "notes": notes}
    return merger.set_shares({c: float(max(w[i], 0.0)) for i, c in enumerate(names)}, seen_weight=rho, learned=learned)


def _named(rates: dict[int, float]) -> dict[str, float]:
    return {f"hitrate@{k}": v for k, v in rates.items()}

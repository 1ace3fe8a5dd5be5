"""Merge shares from measured recall: each channel earns the share of the list that the hits it adds deserve.

"Modulate the recall ratios of the recall algorithms by their historical recall results": channels
fitted on the training days recall for every user who acts on the validation days, and the shares
(and the factor on already-seen items) are chosen to maximise the merged list's HitRate there,

    J = mean over K in ks of  HR_merged@K / max over channels c of HR_c@K

scored by the merge's own formula (`merge.fused_scores`). The search is greedy coordinate ascent on
a grid, from the best single channel alone: a channel's share only rises when the merged list's gain
is sure, that is larger than `tol` (two users' hits) and than `min_gain_z` standard errors of the
per-user gains (a paired test), so a channel whose hits better channels already find (Ranki2i when
there are no exposures: the same list as Item-CF) or that finds nothing (Retarget on review logs)
stays at the floor share, and the merged list is never worse on validation than its best channel.
The test makes the search as bold as the validation set allows: on 3000 users a mix that wins 1%
more hits is taken; on 110 users (the Taobao tail log) a mix that wins 4 users at HR@10 and loses 1
is noise, and the best channel alone is kept (there its test HR@10 was .400 against .345 for the mix
the plain `tol` rule took). Shares are searched only over channels with a relevant item that survives
the seen factor: with seen items dropped, Retarget's weight could otherwise only rescale the other
channels against the floor (on Video Games it took .63 of the shares). The factor on seen items is
learned the same way: about 1 where users come back to what they viewed (Taobao), 0 where they never
do (reviews). The head of the list: the search starts with the first min(ks) slots reserved for the
channel best alone at HR@min(ks) (`merge.with_head`; the search may give the head to another channel
or more slots), so a mix chosen for the deeper cut-offs cannot cost the head its hits; a second search
without a head replaces it only by a sure gain (a mix can beat every channel at the head too).

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
from homefeed.recall.merge import Merger, MergeSettings, bounded, fused_scores, with_head

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
    lists = {name: [c.items for c in channels[name].recall_batch(states, k)] for name in channels}
    return recalled_from(lists, relevant, [s.items for s in states], n_items=dataset.n_items)


def recalled_from(lists: dict[str, list[np.ndarray]], relevant: list[np.ndarray], seen: list[np.ndarray], *,
                  n_items: int = 0) -> Recalled:
    """A Recalled from each channel's item list per user (in rank order), each user's relevant and seen items."""
    names = tuple(lists)
    for name, per_user in lists.items():
        if len(per_user) != len(relevant):
            raise ValueError(f"channel {name!r} has lists for {len(per_user)} users; relevant items are given for {len(relevant)}")
    if len(seen) != len(relevant):
        raise ValueError(f"seen items are given for {len(seen)} users; relevant items for {len(relevant)}")
    rows = [np.stack([np.full(len(items), u), np.full(len(items), c), np.arange(len(items)), np.asarray(items, np.int64)])
            for c, name in enumerate(names) for u, items in enumerate(lists[name])]  # (user, channel, rank, item)
    rows = np.concatenate(rows, axis=1) if rows else np.zeros((4, 0), np.int64)
    top = max([int(rows[3].max(initial=0))] + [int(np.max(x, initial=0)) for x in [*relevant, *seen]])
    stride = int(max(n_items, top + 1))
    keys, inverse = np.unique(rows[0] * stride + rows[3], return_inverse=True)
    rel_keys = np.concatenate([u * stride + np.asarray(r, np.int64) for u, r in enumerate(relevant)]) if relevant else np.zeros(0, np.int64)
    seen_keys = np.concatenate([u * stride + np.unique(s).astype(np.int64) for u, s in enumerate(seen)]) \
        if seen else np.zeros(0, np.int64)
    return Recalled(inverse=inverse, channel=rows[1], rank=rows[2], key_user=keys // stride, key_item=keys % stride,
                    hit=np.isin(keys, rel_keys), seen=np.isin(keys, seen_keys), n_users=len(relevant), names=names,
                    repeat_share=float(np.isin(rel_keys, seen_keys).mean()) if rel_keys.size else 0.0)


def merged_hit_rates(r: Recalled, weights: np.ndarray, seen_weight: float, *, ks: tuple[int, ...],
                     consensus: bool = True, head: tuple[int, int] | None = None) -> dict[int, float]:
    """HitRate@K of the merged lists, exactly as `Merger.merge` orders them (F descending, ties by item)."""
    position = merged_positions(r, weights, seen_weight, consensus=consensus, head=head)
    return {k: float((position < k).mean()) for k in ks}


def merged_positions(r: Recalled, weights: np.ndarray, seen_weight: float, *, consensus: bool = True,
                     head: tuple[int, int] | None = None) -> np.ndarray:
    """(n_users,) 0-based position of each user's first relevant item in their merged list (inf: none in it).

    head: (channel index, slots) reserved at the top (`merge.with_head`). No sort of the lists: a user's
    first hit sits at the number of their keys that rank above it.
    """
    fused = fused_scores(r.inverse, r.key_user.size, r.channel, r.rank, np.asarray(weights, np.float64), consensus=consensus)
    if seen_weight != 1.0:
        fused = np.where(r.seen, fused * seen_weight, fused)
    if head is not None:
        fused = with_head(fused, r.inverse, r.channel, r.rank, head, user=r.key_user[r.inverse])
    hits = np.flatnonzero(r.hit & (fused > 0))
    if hits.size == 0:
        return np.full(r.n_users, np.inf)
    order = hits[np.lexsort((r.key_item[hits], -fused[hits], r.key_user[hits]))]
    first = order[np.r_[True, r.key_user[order][1:] != r.key_user[order][:-1]]]  # each user's best hit
    best_f = np.full(r.n_users, np.inf)
    best_item = np.full(r.n_users, -1, np.int64)
    best_f[r.key_user[first]], best_item[r.key_user[first]] = fused[first], r.key_item[first]
    f_user, i_user = best_f[r.key_user], best_item[r.key_user]
    above = (fused > 0) & ((fused > f_user) | ((fused == f_user) & (r.key_item < i_user)))
    position = np.bincount(r.key_user, weights=above, minlength=r.n_users)
    position[np.isinf(best_f)] = np.inf
    return position


def users_with_hits(r: Recalled) -> Recalled:
    """The same Recalled without the rows of users none of whose lists hold a relevant item.

    Their HitRate is 0 whatever the shares, so every HitRate is unchanged (n_users is kept); the search
    scores several hundred share vectors, and on sparse logs most users are such users.
    """
    has = np.zeros(r.n_users, bool)
    has[r.key_user[r.hit]] = True
    keys = np.flatnonzero(has[r.key_user])
    new_key = np.full(r.key_user.size, -1, np.int64)
    new_key[keys] = np.arange(keys.size)
    rows = np.flatnonzero(has[r.key_user[r.inverse]])
    return Recalled(inverse=new_key[r.inverse[rows]], channel=r.channel[rows], rank=r.rank[rows], key_user=r.key_user[keys],
                    key_item=r.key_item[keys], hit=r.hit[keys], seen=r.seen[keys], n_users=r.n_users, names=r.names,
                    repeat_share=r.repeat_share)


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


def gain(after: np.ndarray, before: np.ndarray, *, tol: float, z: float) -> float:
    """The objective's gain from `before` to `after` (per-user scores), or -inf when it is not a sure one.

    Sure: the mean gain exceeds `tol` and `z` standard errors of the per-user differences (a paired
    test: on 100 validation users a step must win far more users than it loses, on 3000 a few suffice).
    """
    d = after - before
    mean = float(d.mean())
    return mean if mean > tol and mean > z * float(np.sqrt(np.square(d).sum())) / d.size else -np.inf


Head = tuple[int, int] | None  # (channel index, slots) reserved at the top of the list, or none


def coordinate_search(objective: Callable[[np.ndarray, float, Head], np.ndarray], n: int, order: list[int],
                      seen_grid: tuple[float, ...], *, tol: float, z: float = 0.0, passes: int = 3,
                      heads: tuple[Head, ...] = (None,), head: Head = None) -> tuple[np.ndarray, float, Head, np.ndarray]:
    """Greedy coordinate ascent over raw channel weights (WEIGHT_GRID), the seen-item factor (seen_grid) and the head.

    `objective(weights, seen factor, head)` is per user; J is its mean. Starts from channel order[0] alone
    (every other weight 0, the floor), the seen factor 1 (or the only one allowed) and `head`; a step is
    taken only when its gain is sure (`gain`). Returns (weights (n,), seen factor, head, the per-user
    objective there).
    """
    w = np.zeros(n)
    w[order[0]] = 1.0
    rho = 1.0 if 1.0 in seen_grid else seen_grid[0]
    current = objective(w, rho, head)
    for _ in range(passes):
        changed = False
        for i in [*order, "seen", "head"]:
            grid = {"seen": seen_grid, "head": heads if len(heads) > 1 else ()}.get(i, WEIGHT_GRID)
            for v in grid:
                trial_w, trial_rho, trial_head = w.copy(), (v if i == "seen" else rho), (v if i == "head" else head)
                if isinstance(i, int):
                    trial_w[i] = v
                if trial_w.sum() == 0 or (i == "head" and v == head):
                    continue
                score = objective(trial_w, trial_rho, trial_head)
                if gain(score, current, tol=tol, z=z) > 0:
                    w, rho, head, current, changed = trial_w, trial_rho, trial_head, score, True
        if not changed:
            break
    return w, rho, head, current


def prune(objective: Callable[[np.ndarray, float, Head], np.ndarray], w: np.ndarray, rho: float, current: np.ndarray, *,
          tol: float, z: float = 0.0, head: Head = None) -> tuple[np.ndarray, np.ndarray]:
    """Channels whose weight is no sure gain (`gain`) back to the floor (weight 0), weakest first.

    The search can leave weight on a channel that recalls nothing useful, e.g. one whose items are all
    seen once seen items are dropped: with the shares normalised, its weight only rescales the others
    against the floor. A channel that adds nothing must sit at the floor by itself, so each is tried at 0.
    One channel always stays.
    """
    w = w.copy()
    while np.count_nonzero(w) > 1:
        trials = []
        for i in np.flatnonzero(w):
            without = w.copy()
            without[i] = 0.0
            score = objective(without, rho, head)
            trials.append((float((current - score).mean()), int(i), without, score))
        loss, i, without, score = min(trials, key=lambda t: (t[0], t[1]))
        if gain(current, score, tol=tol, z=z) > 0:
            break
        w, current = without, score
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
    say("recall on the validation days")
    r = recall_on(dataset, channels, k=max(ks), behaviors=behaviors, max_users=max_users, seed=seed)
    say("search shares")
    weights, rho, learned = learn_from(r, settings, ks=ks, tol=tol)
    head = learned.get("head")
    return Merger(settings=settings).set_shares(weights, seen_weight=rho, learned=learned, head=tuple(head) if head else None)


def learn_from(r: Recalled, settings: MergeSettings, *, ks: tuple[int, ...] = (10, 50, 200),
               tol: float = 0.002, heads: bool = True) -> tuple[dict[str, float], float | None, dict]:
    """(raw weight per channel, seen factor, report) searched on the channels' lists `r` (see `learn_merge`).

    The report's "head" is [channel, slots] reserved at the top of the list, or None; `heads` off: no head.
    """
    names, n = list(r.names), len(r.names)
    if r.n_users == 0 or n == 0:
        return {c: 1.0 for c in names}, None, {"users": r.n_users, "notes": ["no validation users: equal shares"]}

    def rates(raw: np.ndarray, seen_weight: float, *, floor: bool = True, head: Head = None) -> dict[int, float]:
        w = bounded(raw, settings.min_share, settings.max_share) if floor else raw
        return merged_hit_rates(r, w, seen_weight, ks=ks, consensus=settings.consensus, head=head)

    copies = duplicates(r)
    r = users_with_hits(r)
    # each channel alone, under its better protocol (seen items kept, or dropped as the merge may learn to)
    solo = {c: {k: max(a[k], b[k]) for k in ks} for i, c in enumerate(names)
            for a, b in [(rates(np.eye(n)[i], 1.0, floor=False), rates(np.eye(n)[i], 0.0, floor=False))]}
    best_at = {k: max(max(s[k] for s in solo.values()), 1e-9) for k in ks}

    # channels with a relevant item that survives the seen factor; the others can only rescale the rest
    hit_rows = r.hit[r.inverse]
    able = {rho: np.bincount(r.channel[hit_rows & (rho > 0 or ~r.seen[r.inverse])], minlength=n) > 0
            for rho in (0.0, 1.0)}

    def objective(raw: np.ndarray, seen_weight: float, head: Head = None) -> np.ndarray:
        raw = raw * able[float(seen_weight > 0)]
        if raw.sum() == 0:
            return np.zeros(r.n_users)
        w = bounded(raw, settings.min_share, settings.max_share)
        position = merged_positions(r, w, seen_weight, consensus=settings.consensus, head=head)
        return np.mean([(position < k) / best_at[k] for k in ks], axis=0)

    tol = max(tol, 2.0 / (r.n_users * len(ks) * min(best_at.values())))  # a step must win two users' hits
    order = sorted((i for i in range(n) if names[i] not in copies),
                   key=lambda i: -np.mean([solo[names[i]][k] / best_at[k] for k in ks]))  # best alone first
    seen_grid = SEEN_GRID if settings.seen_weight is None else (float(settings.seen_weight),)
    z = settings.min_gain_z
    # two searches: with the head of the page held by the channel best alone at the shortest cut-off (the
    # search may move it to another channel or more slots), and without a head; the second wins only by a sure gain
    first, slots = min(ks), [k for k in ks if k < max(ks)]
    top = max(order, key=lambda i: (solo[names[i]][first], -order.index(i)))
    start = (top, first) if heads and slots and solo[names[top]][first] > 0 else None
    options = tuple((i, k) for i in order if solo[names[i]][first] > 0 for k in slots)
    found = []
    for head in dict.fromkeys([start, None]):
        w, rho, head, current = coordinate_search(objective, n, order, seen_grid, tol=tol, z=z,
                                                  heads=options if head else (None,), head=head)
        found.append((*prune(objective, w, rho, current, tol=tol, z=z, head=head), rho, head))
    searches = {("head" if h else "no_head"): _named(rates(fw, frho, head=h)) for fw, _, frho, h in found}
    w, current, rho, head = found[-1] if len(found) == 1 or gain(found[1][1], found[0][1], tol=tol, z=z) > 0 else found[0]
    w = w * able[float(rho > 0)]  # (prune drops them first: their weight gains nothing)
    marginal = {}
    for i, c in enumerate(names):
        without = w.copy()
        without[i] = 0.0
        marginal[c] = float((current - objective(without, rho, head)).mean()) if without.sum() > 0 else float(current.mean())
    merged = rates(w, rho, head=head)
    notes = [f"{c}: the same lists as {copies[c]}, floor share" if c in copies else
             f"{c}: every relevant item it finds was seen before, and seen items are dropped: floor share"
             if able[1.0][i] and not able[0.0][i] and rho == 0 else
             f"{c}: adds nothing on validation ({solo[c][max(ks)]:.3f} HR@{max(ks)} alone), floor share"
             for i, c in enumerate(names) if w[i] == 0]
    learned = {"part": "valid", "users": r.n_users, "objective": float(current.mean()), "seen_weight": rho, "duplicates": copies,
               "head": [names[head[0]], int(head[1])] if head else None, "searches": searches,
               "repeat_share": r.repeat_share, "solo": {c: _named(s) for c, s in solo.items()}, "merged": _named(merged),
               "equal_shares": _named(rates(np.ones(n), 1.0)), "marginal": marginal, "notes": notes}
    return {c: float(max(w[i], 0.0)) for i, c in enumerate(names)}, rho, learned


def _named(rates: dict[int, float]) -> dict[str, float]:
    return {f"hitrate@{k}": v for k, v in rates.items()}

"""Item-CF in plain Python, with the arithmetic of the kernels before the speed-ups: the oracle the table must equal.

Every float is computed as the numba kernels did (same operations, same order: per (i, j) the users'
terms in user order), so the comparison is exact, not approximate: neighbours, order and float32 scores.
Vectorised steps (normalisers, age decay) use the same numpy expressions, whose rounding may differ from
scalar code.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

from homefeed.data.schema import BEHAVIORS
from homefeed.data.sessions import add_sessions
from homefeed.recall.i2i import behavior_weight_array


def _actions(events: pl.DataFrame, s, now):
    """Per user (ascending): actions [item, sess, t, w] in (time, item, session) order, the most recent kept."""
    bw = behavior_weight_array(s.behavior_weights)
    per_session = not (s.window == "user" and s.pair_half_life_s == 0)
    ev = events.filter(pl.col("item_id") > 0)
    if per_session and "session_id" not in ev.columns:
        ev = add_sessions(ev, gap_s=s.session_gap_s)
    groups: dict[tuple, list] = {}
    for r in ev.iter_rows(named=True):
        b = float(bw[BEHAVIORS.index(r["behavior"])])
        if b > 0:
            key = (r["user_id"], r["item_id"], r["session_id"] if per_session else 0)
            t, w = groups.get(key, (r["ts"], b))
            groups[key] = (max(t, r["ts"]), max(w, b))
    now = max(t for t, _ in groups.values()) if now is None else now
    users: dict[int, list] = {}
    for (u, i, sess), (t, b) in sorted(groups.items()):
        users.setdefault(u, []).append([i, sess, t, b])
    strongest: dict[int, dict[int, float]] = {}
    for u, acts in users.items():
        for i, _, _, b in acts:
            strongest.setdefault(u, {})[i] = max(strongest.get(u, {}).get(i, 0.0), b)
        acts.sort(key=lambda a: a[2])  # stable: ties in time stay by (item, session)
        del acts[:max(0, len(acts) - s.max_actions_per_user)]
        t = np.array([a[2] for a in acts])
        b = np.array([a[3] for a in acts])
        w = b * (np.exp2(-np.maximum(now - t, 0) / s.age_half_life_s) if s.age_half_life_s > 0 else 1.0)
        for a, x in zip(acts, w):
            a[3] = float(x)
        users[u] = [a for a in acts if a[3] > 1e-100]
    return users, strongest


def _partners(acts: list, x: int, s) -> range | list:
    """Positions in the user's actions that pair with action x (itself included; actions are in time order)."""
    n = len(acts)
    if s.window == "user":
        return range(n)
    lo, hi = x, x + 1
    if s.window == "session":
        while lo > 0 and acts[lo - 1][1] == acts[x][1]:
            lo -= 1
        while hi < n and acts[hi][1] == acts[x][1]:
            hi += 1
    else:
        while lo > 0 and acts[x][2] - acts[lo - 1][2] <= s.max_gap_s:
            lo -= 1
        while hi < n and acts[hi][2] - acts[x][2] <= s.max_gap_s:
            hi += 1
    if s.window_events:
        lo, hi = min(lo, max(0, x - s.window_events)), max(hi, min(n, x + s.window_events + 1))
    return range(lo, hi)


def reference_rows(events: pl.DataFrame, n_items: int, s, *, categories=None, now=None) -> dict[int, tuple]:
    """{item: (neighbour codes int32, scores float32)} of every row with a neighbour, best first."""
    users, strongest = _actions(events, s, now)
    pop = np.zeros(n_items)
    for u in sorted(strongest):
        for i, b in sorted(strongest[u].items()):
            pop[i] += b * b
    pop = np.where(pop > 0, pop, 1.0)
    if s.normalize == "cosine":
        left = right = np.sqrt(pop)
    elif s.normalize == "asymmetric":
        left, right = pop ** (1.0 - s.popularity_exponent), pop ** s.popularity_exponent
    else:
        left = right = np.ones(n_items)
    scale = 1.0 / left
    gap_rate = float(np.log(2) / s.pair_half_life_s) if s.pair_half_life_s > 0 else 0.0
    once = s.window == "user" and s.pair_half_life_s == 0
    use_cat = s.same_category != "off"
    sums: dict[int, dict[int, float]] = {}
    for u in sorted(users):
        acts = users[u]
        iuf = float(1.0 / np.log1p(max(len(strongest[u]), 1))) if s.iuf else 1.0
        best: dict[int, dict[int, float]] = {}  # row item -> partner item -> this user's best term
        for x, (i, _, ta, wa) in enumerate(acts):
            for y in _partners(acts, x, s):
                j, _, tq, wq = acts[y]
                if use_cat and categories[j] != categories[i]:
                    continue
                wn = wq / float(right[j])
                if once:
                    row = sums.setdefault(i, {})
                    row[j] = row.get(j, 0.0) + (wa * iuf) * wn
                    continue
                v = wa * wn
                if gap_rate > 0.0:
                    v *= math.exp(-gap_rate * abs(ta - tq))
                mine = best.setdefault(i, {})
                mine[j] = max(mine.get(j, v), v)
        for i, mine in best.items():
            row = sums.setdefault(i, {})
            for j, v in mine.items():
                row[j] = row.get(j, 0.0) + iuf * v
    out = {}
    for i, row in sums.items():
        scored = [(v * float(scale[i]), j) for j, v in row.items() if j != i and v * float(scale[i]) > 0.0]
        scored.sort(key=lambda e: (-e[0], e[1]))
        if scored[:s.top_n]:
            out[i] = (np.array([j for _, j in scored[:s.top_n]], np.int32),
                      np.array([v for v, _ in scored[:s.top_n]], np.float32))
    return out

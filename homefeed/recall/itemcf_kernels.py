"""Numba passes that turn Item-CF's sorted events into actions: one pass instead of a dozen numpy temporaries.

`group_actions` is the grouping step of `itemcf.collapse_actions` (events already ordered by user, item,
session): it writes one action per (user, item[, session]) with the last time and the strongest weight, and
in the same pass the per-item popularity and per-user counts, adding in the order `np.bincount` would.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _count_groups(order, user, item, sess, per_session):
    """Number of distinct (user, item[, session]) runs in events taken in `order`."""
    na = 0
    pu, pi, ps = -1, -1, -1
    for k in range(order.size):
        o = order[k]
        u, i = user[o], item[o]
        s = sess[o] if per_session else 0
        if k == 0 or u != pu or i != pi or s != ps:
            na += 1
        pu, pi, ps = u, i, s
    return na


@njit(cache=True)
def group_actions(order, user, item, sess, ts, b, per_session, n_items, n_users):
    """Events in `order` (sorted by user, item, session) -> actions and counts.

    Returns (a_user, a_item, a_sess, a_t, a_b, pop, n_user_items, counts): per action (a run of events with one
    user, item and session; a_sess is 0 unless `per_session`) its last time and strongest weight; pop[i] = sum
    over i's users, in user order, of the strongest weight squared; n_user_items[u] = u's distinct items;
    counts[u] = u's actions.
    """
    na = _count_groups(order, user, item, sess, per_session)
    a_user = np.empty(na, np.int64)
    a_item = np.empty(na, np.int64)
    a_sess = np.zeros(na, np.int64)
    a_t = np.empty(na, np.int64)
    a_b = np.empty(na, np.float64)
    pop = np.zeros(n_items, np.float64)
    n_user_items = np.zeros(n_users, np.int64)
    counts = np.zeros(n_users, np.int64)
    a = -1
    strongest = 0.0  # of the current (user, item) block, over its sessions
    for k in range(order.size):
        o = order[k]
        u, i = user[o], item[o]
        s = sess[o] if per_session else 0
        new_pair = a < 0 or u != a_user[a] or i != a_item[a]
        if new_pair or s != a_sess[a]:
            if new_pair and a >= 0:
                pop[a_item[a]] += strongest * strongest
                n_user_items[a_user[a]] += 1
                strongest = 0.0
            a += 1
            a_user[a], a_item[a], a_sess[a], a_t[a], a_b[a] = u, i, s, ts[o], b[o]
            counts[u] += 1
        else:
            a_t[a] = max(a_t[a], ts[o])
            a_b[a] = max(a_b[a], b[o])
        strongest = max(strongest, a_b[a])
    if a >= 0:
        pop[a_item[a]] += strongest * strongest
        n_user_items[a_user[a]] += 1
    return a_user, a_item, a_sess, a_t, a_b, pop, n_user_items, counts


@njit(cache=True)
def partners_by_slot(item_ptr, by_item, user_lo, code_of):
    """Positions of the actions, each user's block (from user_lo[p]) re-ordered by the item's dense slot.

    One scatter pass: items are taken in slot order (code_of) and each of their actions (by_item[item_ptr[i]:
    item_ptr[i + 1]]) goes to the next free place of its user's block; a user acts on an item once here.
    """
    out = np.empty(by_item.size, np.int64)
    fill = np.zeros(by_item.size, np.int64)  # per user, indexed by the user's first position
    for i in code_of:
        for b in range(item_ptr[i], item_ptr[i + 1]):
            p = by_item[b]
            first = user_lo[p]
            out[first + fill[first]] = p
            fill[first] += 1
    return out


@njit(cache=True)
def group_by_user(user, item, ts, b, n_users, n_items):
    """`group_actions` for one action per (user, item), without sorting the events by item.

    Events with b > 0 are counting-sorted by user; each user's events then fold into one action per item
    through a per-item stamp. The outputs equal `group_actions`'s on the (user, item)-sorted events (a_sess
    all 0) except that a user's actions come in the order of their first events, not by item: nothing
    downstream depends on that order but the tie-break of the per-user cap, which sorts them first.
    """
    start = np.zeros(n_users + 1, np.int64)
    for k in range(user.size):
        if b[k] > 0.0:
            start[user[k] + 1] += 1
    for u in range(n_users):
        start[u + 1] += start[u]
    ev = np.empty(start[n_users], np.int64)
    cur = start[:n_users].copy()
    for k in range(user.size):
        if b[k] > 0.0:
            ev[cur[user[k]]] = k
            cur[user[k]] += 1
    stamp = np.full(n_items, -1, np.int64)
    at = np.empty(n_items, np.int64)
    a_item, a_t, a_b = np.empty(ev.size, np.int64), np.empty(ev.size, np.int64), np.empty(ev.size, np.float64)
    pop = np.zeros(n_items, np.float64)
    counts = np.zeros(n_users, np.int64)
    na = 0
    for u in range(n_users):
        first = na
        for x in range(start[u], start[u + 1]):
            k = ev[x]
            i = item[k]
            if stamp[i] != u:
                stamp[i], at[i] = u, na
                a_item[na], a_t[na], a_b[na] = i, ts[k], b[k]
                na += 1
            else:
                y = at[i]
                a_t[y] = max(a_t[y], ts[k])
                a_b[y] = max(a_b[y], b[k])
        for y in range(first, na):
            pop[a_item[y]] += a_b[y] * a_b[y]
        counts[u] = na - first
    a_user = np.repeat(np.arange(n_users), counts)
    return a_user, a_item[:na], np.zeros(na, np.int64), a_t[:na], a_b[:na], pop, counts.copy(), counts

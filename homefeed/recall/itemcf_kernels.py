"""Numba kernels behind Item-CF: events to actions, partners in accumulator order, and the table's rows.

`group_actions` is the grouping step of `itemcf.collapse_actions` (events already ordered by user, item,
session): it writes one action per (user, item[, session]) with the last time and the strongest weight, and
in the same pass the per-item popularity and per-user counts, adding in the order `np.bincount` would;
`group_by_user` does the same without sessions and without sorting the events by item.
`itemcf_rows` computes the rows (run by `i2i_kernels.run_rows`, which spreads them over threads).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from homefeed.recall.i2i_kernels import _heapify, _sift_down

RANKED_UP_TO = 64  # rows of at most this many neighbours are ordered by rank counting, longer ones by a heap


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


@njit(parallel=True, cache=True)
def partners_by_slot(user_ptr, act_slot, partner_w):
    """(slots, weights): act_slot and partner_w with each user's block (user_ptr[u]:user_ptr[u + 1]) sorted by
    slot, a user acting on an item once here (so the slots of a block are distinct and the order unique).

    Each block sorts its keys slot << 32 | position in place, the users spread over threads (a scatter of the
    actions in slot order was serial and cost as much as the grouping of the events).
    """
    n = act_slot.size
    key = np.empty(n, np.int64)
    slots, weights = np.empty(n, np.int32), np.empty(n, np.float64)
    for u in prange(user_ptr.size - 1):
        a, b = user_ptr[u], user_ptr[u + 1]
        for p in range(a, b):
            key[p] = (np.int64(act_slot[p]) << 32) | p
        key[a:b].sort()
        for p in range(a, b):
            k = key[p]
            slots[p], weights[p] = k >> 32, partner_w[k & 0xFFFFFFFF]
    return slots, weights


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


@njit(cache=True)
def _itemcf_row_once(b0, b1, ci, item_pos, item_user, act_item, act_w, act_wn, lo, hi, iuf, cat, use_cat,
                     dense, touched):
    """Accumulate one row (its actions item_pos[b0:b1]) when every user meets each item pair at most once: a
    plain weighted sum into dense[j]; an item's first (positive) contribution appends it to `touched`."""
    m = 0
    for b in range(b0, b1):
        p = item_pos[b]
        wa = act_w[p] * iuf[item_user[b]]
        if use_cat:
            for q in range(lo[p], hi[p]):
                j = act_item[q]
                if cat[j] != ci:
                    continue
                x = dense[j]
                if x == 0.0:
                    touched[m] = j
                    m += 1
                dense[j] = x + wa * act_wn[q]
        else:
            m = _add_partners(np.uint64(lo[p]), np.uint64(hi[p]), act_item, act_wn, wa, dense, touched, np.uint64(m))
    return m


@njit(cache=True, inline="always")
def _add_partners(q, end, act_item, act_wn, wa, dense, touched, m):
    """dense[j] += wa * act_wn[q] for the partners q in q:end (j = act_item[q]); returns m, the touched count.

    Branch-free: every j is written to touched[m], and m advances only on the item's first contribution. The
    indices are unsigned, so numba drops its negative-index wrap-around: 12 instructions a visit instead of 28
    (with spills), for the loop that makes every pair visit of the table.
    """
    one = np.uint64(1)
    while q < end:
        j = np.uint64(act_item[q])
        x = dense[j]
        touched[m] = j
        m += np.uint64(x == 0.0)
        dense[j] = x + wa * act_wn[q]
        q += one
    return np.int64(m)


@njit(cache=True, inline="always")
def _better(v1, j1, v2, j2):
    """Whether (v1, j1) ranks above (v2, j2), without branches: higher score, or equal score and lower code."""
    return (v1 > v2) | ((v1 == v2) & (j1 < j2))


@njit(cache=True)
def _select_best(bv, bj, n, k):
    """Move the best k of the n (score, code) entries to bv/bj[:k], in no order, and return the k-th best.

    Quickselect with a branch-free Lomuto partition (every entry is swapped, the boundary advances by the
    comparison's 0 or 1): the outcome of a comparison is a coin flip here, so a branching partition
    mispredicted about every other entry. Codes are distinct, so the order is total and the k-th is unique.
    """
    lo, hi = 0, n
    while True:
        mid, e = (lo + hi) >> 1, hi - 1
        pv, pj = bv[mid], bj[mid]  # the pivot goes to the end of the range, and back to its place after
        bv[mid], bj[mid] = bv[e], bj[e]
        s = lo
        for x in range(lo, e):
            tv, tj = bv[x], bj[x]
            up = _better(tv, tj, pv, pj)
            bv[x], bj[x] = bv[s], bj[s]
            bv[s], bj[s] = tv, tj
            s += up
        bv[e], bj[e] = bv[s], bj[s]
        bv[s], bj[s] = pv, pj
        if s == k - 1:
            return pv, pj
        if s > k - 1:
            hi = s
        else:
            lo = s + 1


@njit(cache=True)
def _write_ranked(start, bv, bj, n, out_items, out_scores):
    """Write the n entries to out[start:] best first: each goes to its rank, the number of entries better than it
    (n^2 branch-free comparisons, which the compiler vectorises; at top-50 cheaper than a heap's pops)."""
    for a in range(n):
        va, ja = bv[a], bj[a]
        rank = 0
        for b in range(n):
            rank += _better(bv[b], bj[b], va, ja)
        out_items[start + rank], out_scores[start + rank] = ja, va


@njit(cache=True)
def _emit_dense(start, limit, touched, m, dense, code_of, scale, bv, bj, out_items, out_scores):
    """Write the best `limit` of scale * dense[touched[q]] to out[start:] (score descending, ties by lower item
    code) and zero `dense` for the next row; return the count.

    A buffer, not a heap: entries better than the running bar (t, tj) are appended to bv/bj (4 x top_n
    long); a full buffer shrinks to the best `limit` by one quickselect, which raises the bar. Most entries
    cost one comparison, whatever their order (a heap in discovery order re-sifted for ~1 entry in 6 on the
    Zipf benchmark log, and the top-N cost three times the accumulation). Touched items are read last found
    first: later users' items tend to be rarer and score higher under cosine, so the bar rises early.
    """
    if limit == 0:
        for q in range(m):
            dense[touched[q]] = 0.0
        return 0
    t, tj = 0.0, np.int32(0)  # the bar: entries must beat it (score > 0 to start with)
    nb = 0
    for k in range(m):
        r = np.uint64(touched[np.uint64(m - 1 - k)])  # unsigned: no wrap-around code (see _add_partners)
        v = dense[r] * scale
        dense[r] = 0.0
        if v > t or (v == t and v > 0.0 and code_of[r] < tj):
            j = code_of[r]
            if nb == bv.size:
                t, tj = _select_best(bv, bj, nb, limit)
                nb = limit
                if not (v > t or (v == t and j < tj)):
                    continue
            bv[nb], bj[nb] = v, j
            nb += 1
    if nb > limit:
        _select_best(bv, bj, nb, limit)
        nb = limit
    if nb <= RANKED_UP_TO:
        _write_ranked(start, bv, bj, nb, out_items, out_scores)
        return nb
    _heapify(bv, bj, nb)
    for k in range(nb - 1, -1, -1):  # pop the worst to the back: descending order
        out_items[start + k], out_scores[start + k] = bj[0], bv[0]
        bv[0], bj[0] = bv[k], bj[k]
        _sift_down(bv, bj, 0, k)
    return nb


@njit(cache=True)
def _itemcf_row_max(a, end, ci, item_pos, item_user, act_item, act_w, act_wn, act_t, lo, hi, iuf, cat, use_cat,
                    gap_rate, dense, touched, best, in_user, ubuf):
    """Accumulate one row (its actions item_pos[a:end], grouped by user) taking, per user, the best-weighted of
    their (i, j) pairs (with pair decay)."""
    m = 0
    while a < end:
        u = item_user[a]
        g = a
        while g < end and item_user[g] == u:
            g += 1
        mu = 0
        for b in range(a, g):
            p = item_pos[b]
            ta, wa = act_t[p], act_w[p]
            for q in range(lo[p], hi[p]):
                j = act_item[q]
                if use_cat and cat[j] != ci:
                    continue
                v = wa * act_wn[q]
                if gap_rate > 0.0:
                    v *= math.exp(-gap_rate * abs(ta - act_t[q]))
                if not in_user[j]:
                    in_user[j] = True
                    ubuf[mu] = j
                    mu += 1
                    best[j] = v
                elif v > best[j]:
                    best[j] = v
        for q in range(mu):
            j = ubuf[q]
            in_user[j] = False
            x = dense[j]
            if x == 0.0:
                touched[m] = j
                m += 1
            dense[j] = x + iuf[u] * best[j]
        a = g
    return m


@njit(parallel=True, cache=True)
def itemcf_rows(rows, chunk_ptr, chunk_rows, item_ptr, item_pos, item_user,
                act_slot, act_w, act_wn, act_t, lo, hi, iuf, row_scale, slot_of, code_of, row_cat, slot_cat, use_cat,
                gap_rate, unique_pairs, n_items, top_n, out_ptr, out_items, out_scores, out_len):
    """Item-CF rows. Actions are (user, item, time, weight); `item_ptr`/`item_pos` list each item's
    actions (grouped by user) as positions into the user-ordered action arrays, and `lo[p]:hi[p]`
    are the partner actions of action p inside its time window.

    s(i, j) = row_scale[i] * sum_u iuf[u] * max over (a on i, p on j) of
              act_w[a] * act_wn[p] * exp(-gap_rate * |t_a - t_p|)
    where act_wn is act_w already divided by the partner item's normaliser (so no per-entry lookup is
    needed, as in implicit's pre-normalised matrix). With `unique_pairs` (each user acts on an item
    once, no pair decay) the max is a plain sum.

    Partners are read as dense slots, not item codes: act_slot[q] = slot_of[item of q], code_of its inverse,
    with the most used items in the lowest slots, so the hot part of the accumulator stays in cache
    (row_cat is by item code, slot_cat by slot). Each row sums into dense[slot] (zeroed again as it is
    emitted) in the same order as ever: per (i, j), the terms of i's users in (user, time) order.
    """
    for c in prange(chunk_ptr.size - 1):
        dense = np.zeros(n_items, np.float64)
        touched = np.empty(n_items, np.int32)
        bv = np.empty(4 * top_n, np.float64)  # top-N buffer of _emit_dense
        bj = np.empty(4 * top_n, np.int32)
        size = 1 if unique_pairs else n_items  # per-user scratch of the max path
        best, in_user, ubuf = np.zeros(size, np.float64), np.zeros(size, np.bool_), np.empty(size, np.int32)
        for r in range(chunk_ptr[c], chunk_ptr[c + 1]):
            out_row = chunk_rows[r]
            i = rows[out_row]
            if unique_pairs:
                m = _itemcf_row_once(item_ptr[i], item_ptr[i + 1], row_cat[i], item_pos, item_user, act_slot,
                                     act_w, act_wn, lo, hi, iuf, slot_cat, use_cat, dense, touched)
            else:
                m = _itemcf_row_max(item_ptr[i], item_ptr[i + 1], row_cat[i], item_pos, item_user, act_slot,
                                    act_w, act_wn, act_t, lo, hi, iuf, slot_cat, use_cat, gap_rate, dense, touched,
                                    best, in_user, ubuf)
            dense[slot_of[i]] = 0.0  # an item is not its own neighbour
            out_len[out_row] = _emit_dense(out_ptr[out_row], out_ptr[out_row + 1] - out_ptr[out_row], touched, m,
                                           dense, code_of, row_scale[i], bv, bj, out_items, out_scores)

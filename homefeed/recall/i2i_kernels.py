"""Numba kernels behind Item-CF and Swing: one row of the i2i table per item, items in parallel.

Both kernels follow the layout of a sparse "row times matrix" product (the one `implicit` uses for
its item-item models): for item i they walk i's users, then those users' other items j, and sum
contributions into a dense accumulator `acc[j]`, remembering which j were touched so that resetting
costs only what was used. The top-N of the touched j are written out, and the next row starts.

Rows are spread over threads in chunks. A row's cost grows with the square of its users, so the
caller sorts rows by estimated cost and deals them round-robin into chunks (`balanced_chunks`),
which keeps every thread about equally busy under numba's static scheduling.

Outputs are dense (n_rows, top_n) blocks plus a length per row; `i2i.I2ITable.from_rows` turns
them into the CSR table.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange


def balanced_chunks(rows: np.ndarray, cost: np.ndarray, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Deal `rows` (sorted by `cost`, heaviest first) round-robin into `n_chunks` chunks.

    Returns (chunk_ptr (n_chunks + 1,) int64, chunk_rows (len(rows),) int64): chunk c is
    chunk_rows[chunk_ptr[c]:chunk_ptr[c + 1]].
    """
    order = rows[np.argsort(-cost, kind="stable")]
    n_chunks = max(1, min(n_chunks, rows.size))
    slot = np.arange(order.size) % n_chunks
    by_chunk = np.argsort(slot, kind="stable")
    chunk_ptr = np.zeros(n_chunks + 1, np.int64)
    np.cumsum(np.bincount(slot, minlength=n_chunks), out=chunk_ptr[1:])
    return chunk_ptr, order[by_chunk].astype(np.int64)


def default_chunks() -> int:
    return 16 * numba.get_num_threads()


@njit(cache=True)
def _emit_top(slot, touched, m, acc, top_n, out_items, out_scores, out_len):
    """Write the top_n of acc[touched[:m]] (score desc, ties by lower item code) into row `slot`."""
    cand = np.sort(touched[:m])
    vals = np.empty(m, np.float64)
    for q in range(m):
        vals[q] = acc[cand[q]]
    order = np.argsort(-vals, kind="mergesort")
    c = 0
    for q in range(m):
        if c == top_n:
            break
        o = order[q]
        if vals[o] <= 0.0:
            break
        out_items[slot, c] = cand[o]
        out_scores[slot, c] = vals[o]
        c += 1
    out_len[slot] = c


@njit(parallel=True, cache=True)
def itemcf_rows(rows, chunk_ptr, chunk_rows, item_ptr, item_pos, item_user,
                act_item, act_w, act_t, lo, hi, iuf, pop, cat, use_cat,
                gap_rate, norm_mode, exponent, unique_pairs, n_items, top_n,
                out_items, out_scores, out_len):
    """Item-CF rows. Actions are (user, item, time, weight); `item_ptr`/`item_pos` list each item's
    actions (grouped by user) as positions into the user-ordered action arrays, and `lo[p]:hi[p]`
    are the partner actions of action p inside its time window.

    c(i, j) = sum_u iuf[u] * max over (a on i, p on j) of act_w[a] * act_w[p] * exp(-gap_rate * |t_a - t_p|)
    then divided by sqrt(pop_i pop_j) (norm_mode 1) or pop_i^(1-exponent) pop_j^exponent (norm_mode 2).
    With `unique_pairs` (each user acts on an item once) the max is skipped.
    """
    for c in prange(chunk_ptr.size - 1):
        acc = np.zeros(n_items, np.float64)
        best = np.zeros(n_items, np.float64)
        in_row = np.zeros(n_items, np.bool_)
        in_user = np.zeros(n_items, np.bool_)
        touched = np.empty(n_items, np.int32)
        ubuf = np.empty(n_items, np.int32)
        for r in range(chunk_ptr[c], chunk_ptr[c + 1]):
            slot = chunk_rows[r]
            i = rows[slot]
            m = 0
            a, end = item_ptr[i], item_ptr[i + 1]
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
                        if j == i or (use_cat and cat[j] != cat[i]):
                            continue
                        v = wa * act_w[q]
                        if gap_rate > 0.0:
                            v *= math.exp(-gap_rate * abs(ta - act_t[q]))
                        if unique_pairs:
                            if not in_row[j]:
                                in_row[j] = True
                                touched[m] = j
                                m += 1
                            acc[j] += iuf[u] * v
                        elif not in_user[j]:
                            in_user[j] = True
                            ubuf[mu] = j
                            mu += 1
                            best[j] = v
                        elif v > best[j]:
                            best[j] = v
                for q in range(mu):
                    j = ubuf[q]
                    in_user[j] = False
                    if not in_row[j]:
                        in_row[j] = True
                        touched[m] = j
                        m += 1
                    acc[j] += iuf[u] * best[j]
                a = g
            for q in range(m):
                j = touched[q]
                if norm_mode == 1:
                    acc[j] /= math.sqrt(pop[i] * pop[j])
                elif norm_mode == 2:
                    acc[j] /= pop[i] ** (1.0 - exponent) * pop[j] ** exponent
            _emit_top(slot, touched, m, acc, top_n, out_items, out_scores, out_len)
            for q in range(m):
                acc[touched[q]] = 0.0
                in_row[touched[q]] = False


@njit(parallel=True, cache=True)
def swing_rows(rows, chunk_ptr, chunk_rows, item_ptr, item_users, user_ptr, user_items, user_w,
               alpha2, max_users, max_list, n_items, top_n, out_items, out_scores, out_len):
    """Swing rows: s(i, j) = sum over user pairs u < v of U_i with j in I_u and I_v of
    user_w[u] * user_w[v] / (alpha2 + |I_u & I_v|).

    `item_users[item_ptr[i]:item_ptr[i+1]]` are i's (already capped) users, `user_items` each user's
    full item list. Per row, two passes over the lists L_j (the users of U_i who have j):
    pass 1 counts |I_u & I_v| for every user pair into a dense (n, n) matrix, pass 2 sums the pair
    terms over the pairs in each L_j. Work is the number of (u, v, j) triples, twice.
    """
    for c in prange(chunk_ptr.size - 1):
        common = np.zeros((max_users, max_users), np.int32)
        term = np.zeros((max_users, max_users), np.float64)
        cnt = np.zeros(n_items, np.int64)
        start = np.zeros(n_items, np.int64)
        acc = np.zeros(n_items, np.float64)
        touched = np.empty(n_items, np.int32)
        kept = np.empty(n_items, np.int32)
        lists = np.empty(max_list, np.int32)
        for r in range(chunk_ptr[c], chunk_ptr[c + 1]):
            slot = chunk_rows[r]
            i = rows[slot]
            users = item_users[item_ptr[i]:item_ptr[i + 1]]
            n = users.size
            m = 0
            for k in range(n):  # count |L_j|
                u = users[k]
                for x in range(user_ptr[u], user_ptr[u + 1]):
                    j = user_items[x]
                    if cnt[j] == 0:
                        touched[m] = j
                        m += 1
                    cnt[j] += 1
            off = 0
            for q in range(m):  # offsets, then fill L_j (sorted by local user index)
                j = touched[q]
                start[j] = off
                off += cnt[j]
                cnt[j] = 0
            for k in range(n):
                u = users[k]
                for x in range(user_ptr[u], user_ptr[u + 1]):
                    j = user_items[x]
                    lists[start[j] + cnt[j]] = k
                    cnt[j] += 1
            for q in range(m):  # pass 1: |I_u & I_v| for every pair
                j = touched[q]
                s, e = start[j], start[j] + cnt[j]
                for x in range(s, e):
                    row = common[lists[x]]
                    for y in range(x + 1, e):
                        row[lists[y]] += 1
            for a in range(n):  # pair terms; every pair shares i, so common >= 1
                wa = user_w[users[a]]
                for b in range(a + 1, n):
                    term[a, b] = wa * user_w[users[b]] / (alpha2 + common[a, b])
                    common[a, b] = 0
            mk = 0
            for q in range(m):  # pass 2: sum pair terms over each L_j
                j = touched[q]
                e = start[j] + cnt[j]
                if j != i and cnt[j] > 1:
                    total = 0.0
                    for x in range(start[j], e):
                        row = term[lists[x]]
                        for y in range(x + 1, e):
                            total += row[lists[y]]
                    acc[j] = total
                    kept[mk] = j
                    mk += 1
                cnt[j] = 0
            _emit_top(slot, kept, mk, acc, top_n, out_items, out_scores, out_len)
            for q in range(mk):
                acc[kept[q]] = 0.0


def run_rows(kernel, rows: np.ndarray, cost: np.ndarray, top_n: int, *args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a row kernel over `rows` and return (row, neighbour, score) triples of every kept entry."""
    chunk_ptr, chunk_rows = balanced_chunks(np.arange(rows.size), cost, default_chunks())
    out_items = np.zeros((rows.size, top_n), np.int32)
    out_scores = np.zeros((rows.size, top_n), np.float64)
    out_len = np.zeros(rows.size, np.int64)
    kernel(rows, chunk_ptr, chunk_rows, *args, top_n, out_items, out_scores, out_len)
    mask = np.arange(top_n)[None, :] < out_len[:, None]
    return np.repeat(rows, out_len), out_items[mask], out_scores[mask]

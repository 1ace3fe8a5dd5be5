"""Numba kernels behind the i2i tables (Swing here, Item-CF in `itemcf_kernels`): one row per item, in parallel.

Both kernels follow the layout of a sparse "row times matrix" product (the one `implicit` uses for
its item-item models): for item i they walk i's users, then those users' other items j, and sum
contributions into an accumulator. Item-CF sums into a dense array indexed by j and lists the
touched j, so resetting costs only what was used; Swing keeps its sums in discovery order. The
top-N of the touched j are written out, and the next row starts.

Rows are spread over threads in chunks. A row's cost grows with the square of its users, so the
caller sorts rows by estimated cost and deals them back and forth into chunks (`balanced_chunks`),
which keeps every thread about equally busy under numba's static scheduling.

Each row writes its top-N, best first, into its own slice of flat output arrays (the slice is
min(top_n, a bound on the row's neighbours) long); `run_rows` packs them into an `I2ITable`.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from homefeed.recall.i2i import I2ITable


def balanced_chunks(rows: np.ndarray, cost: np.ndarray, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Deal `rows` (sorted by `cost`, heaviest first) into `n_chunks` chunks, back and forth (0..n-1, n-1..0, ...).

    Returns (chunk_ptr (n_chunks + 1,) int64, chunk_rows (len(rows),) int64): chunk c is
    chunk_rows[chunk_ptr[c]:chunk_ptr[c + 1]]. Back and forth, not round-robin: numba gives each thread a
    contiguous run of chunks, and round-robin handed the first run the heavier row of every round.
    """
    order = rows[np.argsort(-cost, kind="stable")]
    n_chunks = max(1, min(n_chunks, rows.size))
    at = np.arange(order.size)
    slot = np.where((at // n_chunks) % 2 == 0, at % n_chunks, n_chunks - 1 - at % n_chunks)
    by_chunk = np.argsort(slot, kind="stable")
    chunk_ptr = np.zeros(n_chunks + 1, np.int64)
    np.cumsum(np.bincount(slot, minlength=n_chunks), out=chunk_ptr[1:])
    return chunk_ptr, order[by_chunk].astype(np.int64)


@njit(cache=True)
def stable_order_by(keys, n_keys, order):
    """`order` re-sorted stably by keys[order] (ints in 0..n_keys-1): a counting sort, O(n + n_keys)."""
    counts = np.zeros(n_keys + 1, np.int64)
    for x in order:
        counts[keys[x] + 1] += 1
    for k in range(n_keys):
        counts[k + 1] += counts[k]
    out = np.empty_like(order)
    for x in order:
        out[counts[keys[x]]] = x
        counts[keys[x]] += 1
    return out


def default_chunks() -> int:
    return 8 * numba.get_num_threads()


@njit(cache=True, inline="always")
def _worse(v1, j1, v2, j2):
    """Whether entry (v1, j1) ranks below (v2, j2): lower score, or equal score and higher item code."""
    return v1 < v2 or (v1 == v2 and j1 > j2)


@njit(cache=True)
def _sift_down(hv, hj, pos, n):
    """Restore the min-heap (worst entry on top) below `pos` in hv/hj[:n]."""
    while True:
        child = 2 * pos + 1
        if child >= n:
            return
        if child + 1 < n and _worse(hv[child + 1], hj[child + 1], hv[child], hj[child]):
            child += 1
        if not _worse(hv[child], hj[child], hv[pos], hj[pos]):
            return
        hv[pos], hv[child] = hv[child], hv[pos]
        hj[pos], hj[child] = hj[child], hj[pos]
        pos = child


@njit(cache=True)
def _heapify(hv, hj, n):
    for p in range(n // 2 - 1, -1, -1):
        _sift_down(hv, hj, p, n)


@njit(cache=True)
def _lowest_tied(hv, hj, n, sums, touched, m, scratch):
    """After a strict-improvement scan, entries tied with the heap's worst score may not be the
    lowest-coded ones; swap in the lowest codes so ties always resolve the same way."""
    worst = hv[0]
    kept = 0
    for k in range(n):
        kept += hv[k] == worst
    tied = 0
    for q in range(m):
        if sums[q] == worst:
            scratch[tied] = touched[q]
            tied += 1
    if tied == kept:
        return
    lowest = np.sort(np.partition(scratch[:tied], kept - 1)[:kept])
    c = 0
    for k in range(n):
        if hv[k] == worst:
            hj[k] = lowest[c]
            c += 1
    _heapify(hv, hj, n)


@njit(cache=True)
def _emit_top(start, limit, touched, m, sums, scale, pos, hv, hj, scratch, out_items, out_scores):
    """Write the best `limit` of scale * sums[q] (the score of item touched[q]) to out[start:], score
    descending, ties by lower item code; reset pos[touched] to -1 for the next row; return the count."""
    for q in range(m):
        pos[touched[q]] = -1
        sums[q] = sums[q] * scale
    return _top_of(start, limit, touched, m, sums, hv, hj, scratch, out_items, out_scores)


@njit(cache=True)
def _top_of(start, limit, touched, m, sums, hv, hj, scratch, out_items, out_scores):
    """Write the best `limit` of sums[q] (the score of item touched[q]) to out[start:], score descending,
    ties by lower item code; return the count.

    One sequential pass: a size-`limit` min-heap keeps the best so far and is replaced only on a
    strictly better score, so most entries cost one comparison; ties at the cut are settled
    afterwards by `_lowest_tied`.
    """
    n = 0
    for q in range(m):
        j = touched[q]
        v = sums[q]
        if v <= 0.0 or limit == 0:
            continue
        if n < limit:
            hv[n], hj[n] = v, j
            n += 1
            if n == limit:
                _heapify(hv, hj, n)
        elif v > hv[0]:
            hv[0], hj[0] = v, j
            _sift_down(hv, hj, 0, n)
    if n < limit:
        _heapify(hv, hj, n)
    elif m > n:
        _lowest_tied(hv, hj, n, sums, touched, m, scratch)
    for k in range(n - 1, -1, -1):  # pop the worst to the back: descending order
        out_items[start + k], out_scores[start + k] = hj[0], hv[0]
        hv[0], hj[0] = hv[k], hj[k]
        _sift_down(hv, hj, 0, k)
    return n


@njit(parallel=True, cache=True)
def swing_rows(rows, chunk_ptr, chunk_rows, item_ptr, item_users, user_ptr, user_items, user_w, self_w,
               alpha2, max_users, max_list, n_items, top_n, out_ptr, out_items, out_scores, out_len):
    """Swing rows: s(i, j) = sum over user pairs u < v of U_i with j in I_u and I_v of
    user_w[u] * user_w[v] / (alpha2 + |I_u & I_v|), plus sum over users u of U_i with j in I_u of
    self_w[u] (a user paired with themself; all zeros to leave it out).

    `item_users[item_ptr[i]:item_ptr[i+1]]` are i's (already capped) users, `user_items` each user's
    full item list. Per row, two passes over the lists L_j (the users of U_i who have j):
    pass 1 counts |I_u & I_v| for every user pair into a dense (n, n) matrix (row stride n, so a row
    with few users stays in cache), pass 2 sums the pair terms (float32) over the pairs in each L_j.
    Work is the number of (u, v, j) triples, twice.
    """
    for c in prange(chunk_ptr.size - 1):
        common = np.ones(max_users * max_users, np.uint16)  # (n, n) upper triangle, stride n; starts at 1 for i
        term = np.zeros(max_users * max_users, np.float32)
        cnt = np.zeros(n_items, np.int64)
        start = np.zeros(n_items, np.int64)
        sums = np.empty(n_items, np.float64)
        touched = np.empty(n_items, np.int32)
        kept = np.empty(n_items, np.int32)
        lists = np.empty(max_list, np.int32)
        hv = np.empty(top_n, np.float64)
        hj = np.empty(top_n, np.int32)
        scratch = np.empty(n_items, np.int32)
        pos = np.full(n_items, -1, np.int32)  # untouched by Swing; _emit_top resets it to -1 anyway
        for r in range(chunk_ptr[c], chunk_ptr[c + 1]):
            out_row = chunk_rows[r]
            i = rows[out_row]
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
            for q in range(m):  # pass 1: |I_u & I_v| for every pair (item i itself is the initial 1)
                j = touched[q]
                if j == i or cnt[j] < 2:
                    continue
                e = start[j] + cnt[j]
                for x in range(start[j], e):
                    base = lists[x] * n
                    for y in range(x + 1, e):
                        common[base + lists[y]] += 1
            for a in range(n):  # pair terms, and common back to 1 for the next row
                wa = user_w[users[a]]
                for b in range(a + 1, n):
                    term[a * n + b] = wa * user_w[users[b]] / (alpha2 + common[a * n + b])
                    common[a * n + b] = 1
            mk = 0
            for q in range(m):  # pass 2: sum pair terms over each L_j
                j = touched[q]
                if j != i and (cnt[j] > 1 or self_w[users[lists[start[j]]]] > 0.0):
                    e = start[j] + cnt[j]
                    total = 0.0
                    for x in range(start[j], e):
                        base = lists[x] * n
                        total += self_w[users[lists[x]]]
                        for y in range(x + 1, e):
                            total += term[base + lists[y]]
                    sums[mk] = total
                    kept[mk] = j
                    mk += 1
                cnt[j] = 0
            out_len[out_row] = _emit_top(out_ptr[out_row], out_ptr[out_row + 1] - out_ptr[out_row], kept, mk, sums,
                                         1.0, pos, hv, hj, scratch, out_items, out_scores)


@njit(cache=True)
def _pack(out_ptr, out_len, out_items, out_scores, items, scores):
    """Copy each row's out_len[r] entries from out_*[out_ptr[r]:] to the packed items/scores, rows in order
    (one serial pass: a parallel one saved ~10 ms at 5M events and cost seconds of compiling on a fresh clone)."""
    dst = 0
    for r in range(out_len.size):
        src = out_ptr[r]
        for k in range(out_len[r]):
            items[dst + k] = out_items[src + k]
            scores[dst + k] = out_scores[src + k]
        dst += out_len[r]


def run_rows(kernel, rows: np.ndarray, cost: np.ndarray, bound: np.ndarray, top_n: int, n_items: int,
             *args) -> I2ITable:
    """Run a row kernel over `rows` (ascending item codes) and gather its output into an I2ITable.

    `cost` estimates each row's work (for balancing threads); `bound` caps each row's number of
    neighbours (its output space is min(top_n, bound), so a large top_n costs no memory where rows are short).
    Kernels write scores into float32 (the table's type) as they emit them.
    """
    chunk_ptr, chunk_rows = balanced_chunks(np.arange(rows.size), cost, default_chunks())
    space = np.minimum(top_n, bound).astype(np.int64)
    out_ptr = np.zeros(rows.size + 1, np.int64)
    np.cumsum(space, out=out_ptr[1:])
    out_items = np.empty(out_ptr[-1], np.int32)  # a row's entries past its out_len are never read
    out_scores = np.empty(out_ptr[-1], np.float32)
    out_len = np.zeros(rows.size, np.int64)
    kernel(rows, chunk_ptr, chunk_rows, *args, top_n, out_ptr, out_items, out_scores, out_len)
    counts = np.zeros(n_items, np.int64)
    counts[rows] = out_len
    indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    items, scores = np.empty(indptr[-1], np.int32), np.empty(indptr[-1], np.float32)
    _pack(out_ptr, out_len, out_items, out_scores, items, scores)
    return I2ITable(indptr, items, scores)

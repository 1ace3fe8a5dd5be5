"""Each user's days, simulated in numba: organic sessions and homepage visits in time order.

Per user, the number of organic (search/browse) sessions and homepage visits over the period is
Poisson; visit start times follow a diurnal curve in local time. Users are simulated one after
another, each from their own random stream (seeded by world seed and user index), so the result
does not depend on batching.

* Organic session: one interest (or, rarely, any category) for the whole session. Page views walk
  through that standard category's leaves (stay on the leaf, or hop to a sibling leaf); each item is
  drawn by popularity inside the leaf, then the best of a few candidates by affinity to a session
  intent (taste + session noise) and price fit. Every view may lead to fav, cart and buy (funnel).
* Homepage visit: 1-3 pages of `page_size` items from a baseline policy mixing recall channels
  (popular, itemcf_like from a recent item = trigger, crowd top of the user's demographic group,
  retarget of recently seen items), in random slot order; clicks drawn from the click truth
  (`homefeed.world.clickmodel`), each click logged as a `click` event and run through the funnel.

State carried through a user's visits: recently seen items (a ring of 20), a decayed mean of their
vectors (`recent`), the last 3 standard categories seen, exposure counts (fatigue) and the last buy
per standard category (repurchase cycles).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from homefeed.world.clickmodel import buy_prob, click_logit, fav_cart_probs, sigmoid

# event behaviour codes (as homefeed.data.schema.BEHAVIORS) and scene codes; numpy ints so that numba
# compiles each function once (Python int constants would be typed as literals, one compile per value)
PV, CLICK, FAV, CART, BUY = (np.int64(k) for k in range(5))
SCENES: tuple[str, ...] = ("homepage", "search", "browse")
HOMEPAGE, SEARCH, BROWSE = (np.int64(k) for k in range(3))

RING = 20  # recently seen items remembered per user
MAX_SESSION = 60  # page views per organic session at most
MAX_VISITS = 1000  # visits per user at most
NO_BUY = -1e18

ItemTables = namedtuple("ItemTables", "leaf std vec quality tier leaf_ptr leaf_items leaf_cum std_leaf_ptr "
                        "std_leaves std_leaf_cum std_ptr std_items std_cum pop_items pop_cum std_pop_cum cycle_s")
UserTables = namedtuple("UserTables", "vec pp group int_ptr int_std int_w rate_org rate_home group_std_cum")
Params = namedtuple("Params", "theta phi hour_cum chan_cum knobs")
Outputs = namedtuple("Outputs", "ev_user ev_item ev_beh ev_ts ev_scene ex_user ex_item ex_ts ex_pos ex_page "
                     "ex_chan ex_trig ex_click ex_req recent recent_std")

# indices into Params.knobs (float64)
(K_START, K_DAYS, K_SESSION_LEN, K_PAGE_SIZE, K_MAX_PAGES, K_NEXT_PAGE, K_EXPLORE, K_SEARCH, K_STAY_SEARCH,
 K_STAY_BROWSE, K_INTENT_NOISE, K_CHOICE_BETA, K_N_CAND, K_PRICE_FIT, K_SEED) = range(15)
N_KNOBS = 15


@njit(cache=True)
def _pick(ptr, members, cum, g):
    """A member of CSR group g by cumulative weight."""
    lo, hi = ptr[g], ptr[g + 1]
    j = lo + np.searchsorted(cum[lo:hi], np.random.random(), side="right")
    return members[min(j, hi - 1)]


@njit(cache=True)
def _dot(a, b):
    s = 0.0
    for k in range(a.shape[0]):
        s += a[k] * b[k]
    return s


@njit(cache=True)
def _emit_event(O, ne, u, item, beh, t, scene):
    O.ev_user[ne], O.ev_item[ne], O.ev_beh[ne], O.ev_ts[ne], O.ev_scene[ne] = u, item, beh, np.int64(t), scene
    return ne + 1


@njit(cache=True)
def _remember(I, item, ring, st, recent, std_ring):
    """Push a seen item into the user's state. st: [ring_pos, ring_n, std_pos, request counter]."""
    ring[st[0]] = item
    st[0] = (st[0] + 1) % RING
    st[1] = min(st[1] + 1, RING)
    std_ring[st[2]] = I.std[item]
    st[2] = (st[2] + 1) % 3
    for k in range(recent.shape[0]):
        recent[k] = 0.7 * recent[k] + 0.3 * I.vec[item, k]


@njit(cache=True)
def _funnel(I, U, P, O, ne, u, item, t, is_click, last_buy, end):
    """fav / cart / buy after a view or click at time t; returns the new event count."""
    aff = _dot(U.vec[u], I.vec[item])
    p_fav, p_cart = fav_cart_probs(P.phi, aff, is_click)
    if np.random.random() < p_fav and t + 2 < end:
        ne = _emit_event(O, ne, u, item, FAV, t + 2 + np.random.exponential(20.0), BROWSE)
    carted = np.random.random() < p_cart
    if carted and t + 3 < end:
        ne = _emit_event(O, ne, u, item, CART, t + 3 + np.random.exponential(30.0), BROWSE)
    s = I.std[item]
    blocked = t - last_buy[s] < I.cycle_s[s]
    if np.random.random() < buy_prob(P.phi, 1.0 if carted else 0.0, 1.0 if blocked else 0.0):
        tb = t + 30 + np.random.exponential(400.0)
        if tb < end:
            ne = _emit_event(O, ne, u, item, BUY, tb, BROWSE)
            last_buy[s] = tb
    return ne


@njit(cache=True)
def _choose_item(I, U, P, u, leaf, intent, previous):
    """Best of n_cand popularity draws from the leaf by intent affinity and price fit (Gumbel noise).

    The previous item of the session only wins when every draw is that item.
    """
    best, best_score = previous, -np.inf
    for _ in range(int(P.knobs[K_N_CAND])):
        item = _pick(I.leaf_ptr, I.leaf_items, I.leaf_cum, leaf)
        gap = abs(I.tier[item] - U.pp[u]) / 4.0
        score = P.knobs[K_CHOICE_BETA] * _dot(intent, I.vec[item]) - P.knobs[K_PRICE_FIT] * gap
        score -= np.log(-np.log(np.random.random() + 1e-300) + 1e-300)
        if score > best_score and item != previous:
            best, best_score = item, score
    return best


@njit(cache=True)
def _organic(I, U, P, O, ne, u, t, state, end):
    """One search/browse session from time t; returns (event count, end time)."""
    ring, st, recent, std_ring, last_buy = state
    k = P.knobs
    scene = SEARCH if np.random.random() < k[K_SEARCH] else BROWSE
    if np.random.random() < k[K_EXPLORE]:
        s = np.searchsorted(I.std_pop_cum, np.random.random(), side="right")
    else:
        s = _interest(U, u)
    s = min(s, I.std_ptr.shape[0] - 2)
    d = U.vec.shape[1]
    intent = U.vec[u] + k[K_INTENT_NOISE] / np.sqrt(d) * np.random.standard_normal(d)
    stay = k[K_STAY_SEARCH] if scene == SEARCH else k[K_STAY_BROWSE]
    n_views = min(1 + int(np.log(1.0 - np.random.random()) / np.log(1.0 - 1.0 / k[K_SESSION_LEN])), MAX_SESSION)
    leaf = _pick(I.std_leaf_ptr, I.std_leaves, I.std_leaf_cum, s)
    item = np.int64(0)
    for step in range(n_views):
        if t >= end:
            break
        if step > 0 and np.random.random() > stay:
            leaf = _pick(I.std_leaf_ptr, I.std_leaves, I.std_leaf_cum, s)
        item = _choose_item(I, U, P, u, leaf, intent, item)
        ne = _emit_event(O, ne, u, item, PV, t, scene)
        _remember(I, item, ring, st, recent, std_ring)
        ne = _funnel(I, U, P, O, ne, u, item, t, 0.0, last_buy, end)
        t += 4 + np.random.exponential(25.0)
    return ne, t


@njit(cache=True)
def _interest(U, u):
    """A standard category from user u's interests, by weight."""
    lo, hi = U.int_ptr[u], U.int_ptr[u + 1]
    r, acc = np.random.random(), 0.0
    for j in range(lo, hi):
        acc += U.int_w[j]
        if r < acc:
            return U.int_std[j]
    return U.int_std[hi - 1]


@njit(cache=True)
def _recall(I, U, ch, u, ring, st):
    """One candidate from channel ch (0 popular, 1 itemcf_like, 2 crowd, 3 retarget).

    Returns (item, trigger item or 0, channel used): without history, retarget falls back to crowd
    and itemcf_like to popular.
    """
    if ch == 3 and st[1] > 0:  # retarget: an item seen recently
        return ring[(st[0] - 1 - np.random.randint(st[1])) % RING], 0, ch
    if ch == 1 and st[1] > 0:  # itemcf_like: same leaf (or standard category) as a recent item
        trigger = ring[(st[0] - 1 - np.random.randint(min(st[1], 5))) % RING]
        if np.random.random() < 0.7:
            item = _pick(I.leaf_ptr, I.leaf_items, I.leaf_cum, I.leaf[trigger])
        else:
            item = _pick(I.std_ptr, I.std_items, I.std_cum, I.std[trigger])
        return item, trigger, ch
    if ch >= 2:  # crowd: the demographic group's favourite categories
        r = np.random.random()
        s = min(np.searchsorted(U.group_std_cum[U.group[u]], r, side="right"), I.std_ptr.shape[0] - 2)
        return _pick(I.std_ptr, I.std_items, I.std_cum, s), 0, 2
    j = min(np.searchsorted(I.pop_cum, np.random.random(), side="right"), I.pop_items.shape[0] - 1)
    return I.pop_items[j], 0, 0


@njit(cache=True)
def _fill_page(I, U, P, u, ring, st, items, chans, trigs):
    """Fill one page's slots with distinct items from channels drawn by the channel mix."""
    n = items.shape[0]
    for pos in range(n):
        for attempt in range(20):
            ch = np.searchsorted(P.chan_cum, np.random.random(), side="right")
            ch = min(ch, P.chan_cum.shape[0] - 1) if attempt < 5 else 0
            item, trig, ch = _recall(I, U, ch, u, ring, st)
            dup = False
            for q in range(pos):
                dup = dup or items[q] == item
            if not dup:
                break
        items[pos], chans[pos], trigs[pos] = item, ch, trig


@njit(cache=True)
def _click_prob(I, U, P, u, item, pos, n_seen, recent, std_ring):
    s = I.std[item]
    cross = 0.0
    for j in range(U.int_ptr[u], U.int_ptr[u + 1]):
        if U.int_std[j] == s:
            cross = U.int_w[j]
    same_cat = 1.0 if (std_ring[0] == s or std_ring[1] == s or std_ring[2] == s) else 0.0
    logit = click_logit(P.theta, _dot(U.vec[u], I.vec[item]), I.quality[item], cross, _dot(recent, I.vec[item]),
                        same_cat, float(pos), float(n_seen), abs(I.tier[item] - U.pp[u]) / 4.0)
    return sigmoid(logit)


@njit(cache=True)
def _homepage(I, U, P, O, ne, nx, u, t, state, seen, end):
    """One homepage visit (1..max_pages pages); returns (events, exposures, end time)."""
    ring, st, recent, std_ring, last_buy = state
    size = int(P.knobs[K_PAGE_SIZE])
    items, chans, trigs = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
    clicked = np.zeros(size, np.bool_)
    for page in range(int(P.knobs[K_MAX_PAGES])):
        if t >= end or (page > 0 and np.random.random() >= P.knobs[K_NEXT_PAGE]):
            break
        _fill_page(I, U, P, u, ring, st, items, chans, trigs)
        for pos in range(size):  # click probabilities from the state at page load
            p = _click_prob(I, U, P, u, items[pos], pos, seen[items[pos]], recent, std_ring)
            clicked[pos] = np.random.random() < p
        for pos in range(size):
            it = items[pos]
            O.ex_user[nx], O.ex_item[nx], O.ex_ts[nx], O.ex_pos[nx], O.ex_page[nx] = u, it, np.int64(t), pos, page
            O.ex_chan[nx], O.ex_trig[nx], O.ex_click[nx], O.ex_req[nx] = chans[pos], trigs[pos], clicked[pos], st[3]
            nx += 1
            seen[it] += 1
        st[3] += 1
        n_clicks = 0
        for pos in range(size):
            if clicked[pos]:
                ne = _emit_event(O, ne, u, items[pos], CLICK, t, HOMEPAGE)
                _remember(I, items[pos], ring, st, recent, std_ring)
                ne = _funnel(I, U, P, O, ne, u, items[pos], t, 1.0, last_buy, end)
                n_clicks += 1
        t += 8 + np.random.exponential(20.0) + n_clicks * np.random.exponential(40.0)
    return ne, nx, t


@njit(cache=True)
def _visits(U, P, u):
    """Start times (sorted) and kinds (0 organic, 1 homepage) of user u's visits.

    A Poisson number of visits; sorted uniforms from normalised exponential spacings, mapped through
    the inverse of the cumulative day x hour activity curve (monotone, so the times stay sorted).
    """
    days = int(P.knobs[K_DAYS])
    rate = U.rate_org[u] + U.rate_home[u]
    n = min(np.random.poisson(rate * days), MAX_VISITS)
    gaps = np.random.exponential(1.0, n + 1)
    total = gaps.sum()
    ts, kind = np.empty(n), np.empty(n, np.int64)
    acc = 0.0
    for j in range(n):
        acc += gaps[j]
        v = acc / total * days  # sorted, uniform on [0, days)
        day = min(int(v), days - 1)
        w = v - day
        h = min(np.searchsorted(P.hour_cum, w, side="right"), 23)
        lo = P.hour_cum[h - 1] if h > 0 else 0.0
        frac = min(max((w - lo) / (P.hour_cum[h] - lo), 0.0), 1.0)
        ts[j] = P.knobs[K_START] + day * 86400.0 + (h + frac) * 3600.0
        kind[j] = 1 if np.random.random() * rate < U.rate_home[u] else 0
    return ts, kind


@njit(cache=True, nogil=True)
def simulate_chunk(users, I, U, P, O):
    """Simulate `users` in order into O; returns (n_events, n_exposures), or (-1, -1) when O is too small."""
    d = U.vec.shape[1]
    end = P.knobs[K_START] + P.knobs[K_DAYS] * 86400.0
    seen = np.zeros(I.leaf.shape[0], np.int32)
    per_visit = max(MAX_SESSION, int(P.knobs[K_MAX_PAGES] * P.knobs[K_PAGE_SIZE])) * 4
    ne, nx = np.int64(0), np.int64(0)
    for u in users:
        np.random.seed((int(P.knobs[K_SEED]) * 1_000_003 + u * 7919 + 17) % 4294967296)
        state = (np.zeros(RING, np.int64), np.zeros(4, np.int64), np.zeros(d), -np.ones(3, np.int64),
                 np.full(I.std_ptr.shape[0] - 1, NO_BUY))
        ts, kind = _visits(U, P, u)
        nx0, t_free, t_last = nx, 0.0, 0.0
        for j in range(ts.shape[0]):
            if ne + per_visit > O.ev_user.shape[0] or nx + per_visit > O.ex_user.shape[0]:
                return -1, -1
            t = max(ts[j], t_free + 60.0)
            if t >= end:
                break
            if t - t_last > 86400.0:  # a day away: recent interest fades
                state[2][:] *= 0.5
            if kind[j] == 0:
                ne, t_free = _organic(I, U, P, O, ne, u, t, state, end)
            else:
                ne, nx, t_free = _homepage(I, U, P, O, ne, nx, u, t, state, seen, end)
            t_last = t_free
        O.recent[u], O.recent_std[u] = state[2], state[3]
        for j in range(nx0, nx):
            seen[O.ex_item[j]] = 0
    return ne, nx

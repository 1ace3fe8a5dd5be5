"""Run the timeline simulation for all normal users: pack the tables numba reads, batch, collect.

`simulate_logs` turns a catalogue and population into organic events and homepage exposures
(internal user and item indices, numpy arrays). Users run in batches of `spec.chunk_users` so
memory stays bounded and `progress` can report; each batch's output buffers grow and the batch
reruns if they overflow (same per-user random streams, same result). Batches run on `threads`
threads at once (the kernel releases the GIL; numba's random state is per thread and every user
reseeds it), collected in batch order, so the output is the same for any thread count.

    >>> logs = simulate_logs(spec, catalog, population)   # doctest: +SKIP
    >>> logs.events["ts"].dtype                           # doctest: +SKIP
    dtype('int64')
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from homefeed.world import timeline as tl
from homefeed.world.catalog import Catalog
from homefeed.world.clickmodel import click_params, funnel_params
from homefeed.world.population import Population
from homefeed.world.sampling import Grouping
from homefeed.world.spec import WorldSpec

# relative activity per local hour 0..23: quiet nights, a lunch bump, the evening peak
HOURLY = (0.9, 0.6, 0.3, 0.2, 0.2, 0.3, 0.6, 1.2, 2.0, 2.5, 2.8, 3.0, 3.5, 3.2, 2.8, 2.6, 2.6, 2.8, 3.2, 4.0,
          4.8, 5.2, 4.6, 2.8)

Progress = Callable[[str, int, int], None]

EVENT_DTYPES = dict(user=np.int32, item=np.int32, behavior=np.int8, ts=np.int64, scene=np.int8)
EXPOSURE_DTYPES = dict(user=np.int32, item=np.int32, ts=np.int64, position=np.int32, page=np.int32,
                       channel=np.int8, trigger=np.int32, clicked=np.int8, request=np.int32)


@dataclass
class Logs:
    """Simulated organic logs: events and exposures as dicts of equal-length numpy arrays.

    events: user, item (internal indices), behavior (codes of schema.BEHAVIORS), ts, scene (SCENES codes).
    exposures: user, item, ts, position, page, channel (CHANNELS code), trigger (0 = none), clicked,
    request (per-user request counter). recent: float32 (n_users + 1, d), each user's final recent vector;
    recent_std: int64 (n_users + 1, 3), the last 3 standard categories each user saw (-1 = none).
    """

    events: dict[str, np.ndarray]
    exposures: dict[str, np.ndarray]
    recent: np.ndarray
    recent_std: np.ndarray


def item_tables(cat: Catalog) -> tl.ItemTables:
    ids = np.arange(1, cat.n_items + 1)
    pop = np.exp(cat.item_logpop[1:] - cat.item_logpop[1:].max())
    n_std, n_leaves = len(cat.std_names), cat.n_leaves
    leaf = Grouping.build(cat.item_leaf[1:], pop, n_groups=n_leaves, members=ids)
    std = Grouping.build(cat.item_std[1:], pop, n_groups=n_std, members=ids)
    leaf_pop = np.bincount(cat.item_leaf[1:], weights=pop, minlength=n_leaves)
    std_leaf = Grouping.build(cat.leaf_std, leaf_pop, n_groups=n_std)
    rec = cat.item_pools[1:, 0]
    popular = Grouping.build(np.zeros(rec.sum(), np.int64), pop[rec], n_groups=1, members=ids[rec])
    std_pop = np.exp(cat.std_logpop)
    return tl.ItemTables(
        leaf=cat.item_leaf, std=cat.item_std, vec=cat.item_vec.astype(np.float64),
        quality=cat.item_quality.astype(np.float64), tier=cat.item_tier, leaf_ptr=leaf.ptr, leaf_items=leaf.members, leaf_cum=leaf.cum,
        std_leaf_ptr=std_leaf.ptr, std_leaves=std_leaf.members, std_leaf_cum=std_leaf.cum,
        std_ptr=std.ptr, std_items=std.members, std_cum=std.cum, pop_items=popular.members, pop_cum=popular.cum,
        std_pop_cum=np.cumsum(std_pop / std_pop.sum()), cycle_s=cat.cycle_days.astype(np.float64) * 86400.0,
    )


def user_tables(pop: Population) -> tl.UserTables:
    return tl.UserTables(vec=pop.vec.astype(np.float64), pp=pop.pp, group=pop.group, int_ptr=pop.int_ptr,
                         int_std=pop.int_std, int_w=pop.int_w, rate_org=pop.rate_org, rate_home=pop.rate_home,
                         group_std_cum=pop.group_std_cum)


def params(spec: WorldSpec) -> tl.Params:
    knobs = np.zeros(tl.N_KNOBS)
    b = spec.browse
    for k, v in ((tl.K_START, spec.start_ts), (tl.K_DAYS, spec.n_days), (tl.K_SESSION_LEN, spec.session_length),
                 (tl.K_PAGE_SIZE, spec.page_size), (tl.K_MAX_PAGES, spec.max_pages), (tl.K_NEXT_PAGE, spec.next_page),
                 (tl.K_EXPLORE, b.explore), (tl.K_SEARCH, b.search_share), (tl.K_STAY_SEARCH, b.stay_search),
                 (tl.K_STAY_BROWSE, b.stay_browse), (tl.K_INTENT_NOISE, b.intent_noise),
                 (tl.K_CHOICE_BETA, b.choice_beta), (tl.K_N_CAND, b.n_candidates), (tl.K_PRICE_FIT, b.price_fit),
                 (tl.K_SEED, spec.seed % 4_294_967_296)):
        knobs[k] = v
    hour = np.asarray(HOURLY) / np.sum(HOURLY)
    return tl.Params(theta=click_params(spec.click), phi=funnel_params(spec.funnel), hour_cum=np.cumsum(hour),
                     chan_cum=spec.channel_cum(), knobs=knobs)


def _buffers(n_events: int, n_exposures: int, recent: np.ndarray, recent_std: np.ndarray) -> tl.Outputs:
    ev = {k: np.empty(n_events, dt) for k, dt in EVENT_DTYPES.items()}
    ex = {k: np.empty(n_exposures, dt) for k, dt in EXPOSURE_DTYPES.items()}
    ex["clicked"] = np.empty(n_exposures, np.bool_)
    return tl.Outputs(ev["user"], ev["item"], ev["behavior"], ev["ts"], ev["scene"], ex["user"], ex["item"], ex["ts"],
                      ex["position"], ex["page"], ex["channel"], ex["trigger"], ex["clicked"], ex["request"], recent,
                      recent_std)


def default_threads() -> int:
    """Threads for the generator's numba kernels: numba's thread count (NUMBA_NUM_THREADS, default the cores)."""
    return max(1, numba.config.NUMBA_NUM_THREADS)


def _simulate_batch(users: np.ndarray, I, U, P, recent: np.ndarray, recent_std: np.ndarray, cap_ev: int,
                    cap_ex: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One batch of users into fresh buffers (doubled until they fit); its events and exposures."""
    while True:
        out = _buffers(cap_ev, cap_ex, recent, recent_std)
        ne, nx = tl.simulate_chunk(users, I, U, P, out)
        if ne >= 0:
            break
        cap_ev, cap_ex = cap_ev * 2, cap_ex * 2
    return ({k: out[i][:ne].copy() for i, k in enumerate(EVENT_DTYPES)},
            {k: out[5 + i][:nx].astype(dt) for i, (k, dt) in enumerate(EXPOSURE_DTYPES.items())})


def simulate_logs(spec: WorldSpec, cat: Catalog, pop: Population, progress: Progress | None = None,
                  threads: int | None = None) -> Logs:
    """Organic events and homepage exposures of every normal user (see `homefeed.world.timeline`).

    threads: batches simulated at once (None: `default_threads()`); the result does not depend on it.
    """
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    I, U, P = item_tables(cat), user_tables(pop), params(spec)
    recent, recent_std = np.zeros((pop.n_users + 1, spec.dim)), -np.ones((pop.n_users + 1, 3), np.int64)
    n = pop.n_users
    views_per_user = spec.n_days * (spec.sessions_per_day * spec.session_length * 1.3
                                    + spec.homepage_per_day * spec.page_size * (1 + spec.next_page) * 0.3)
    shown_per_user = spec.n_days * spec.homepage_per_day * spec.page_size * (1 + spec.next_page + spec.next_page ** 2)
    batches = [np.arange(lo, min(n + 1, lo + spec.chunk_users), dtype=np.int64) for lo in range(1, n + 1, spec.chunk_users)]

    def run(users: np.ndarray):  # each batch writes only its own users' rows of recent / recent_std
        return _simulate_batch(users, I, U, P, recent, recent_std, int(len(users) * views_per_user * 1.5) + 8192,
                               int(len(users) * shown_per_user * 1.5) + 8192)

    ev_parts, ex_parts = [], []
    with ThreadPoolExecutor(max_workers=min(threads, len(batches))) as pool:
        for users, (ev, ex) in zip(batches, pool.map(run, batches)):  # in batch order
            ev_parts.append(ev)
            ex_parts.append(ex)
            if progress is not None:
                progress("simulate users", int(users[-1]), n)
    cat_ = lambda parts, k: np.concatenate([p[k] for p in parts])  # noqa: E731
    return Logs(events={k: cat_(ev_parts, k) for k in EVENT_DTYPES},
                exposures={k: cat_(ex_parts, k) for k in EXPOSURE_DTYPES}, recent=recent.astype(np.float32),
                recent_std=recent_std)

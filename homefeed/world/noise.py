"""The dirt cleaning must remove: crawlers, brushed (fake) orders and a midnight ordering spike.

* Crawlers: bursty bots viewing 40-90 items a minute for 2-6 minutes (some add a cart or two,
  so "nothing but pv" alone does not catch them), and slow bots viewing 5-10 items a minute in 2-3
  runs of 20-45 minutes (200+ views) with nothing but page views. They walk a category's listing in
  order or jump at random.
* Fake orders: buys of items from a few "brushing" shops with no earlier view of the item, made in
  bursts (5-12 buys a few seconds apart) by dedicated accounts that otherwise only view a few random
  items, and as single buys or pairs by otherwise normal users.
* Midnight spike: on `spike_days` days, some users cart or buy items they viewed earlier, all in the
  first `spike_minutes` minutes after local midnight (a pre-sale opening, say).

Every function returns plain arrays of internal user indices (the generator maps them to public ids)
and labels nothing in the public tables: the labels go to `truth/`.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from homefeed.world import timeline as tl
from homefeed.world.catalog import Catalog
from homefeed.world.spec import WorldSpec

Events = dict[str, np.ndarray]  # user, item, behavior, ts, scene (as logs.EVENT_DTYPES)


def _events(user, item, behavior, ts, scene) -> Events:
    n = len(user)
    full = lambda v: np.full(n, v) if np.ndim(v) == 0 else v  # noqa: E731
    return dict(user=np.asarray(user, np.int32), item=np.asarray(item, np.int32),
                behavior=full(behavior).astype(np.int8), ts=np.asarray(ts, np.int64), scene=full(scene).astype(np.int8))


def _runs(rng: np.random.Generator, start_ts: int, n_days: int, n_events: np.ndarray,
          rate_per_min: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps of runs of events: run r has n_events[r] events at about rate_per_min[r] per minute.

    Returns (run index of each event, ts); each run starts at a random second of a random day.
    """
    duration = n_events / rate_per_min * 60.0
    start = start_ts + rng.integers(0, n_days, len(n_events)) * 86400 + rng.uniform(0, 86400 - duration - 60)
    run = np.repeat(np.arange(len(n_events)), n_events)
    gaps = rng.exponential(60.0 / rate_per_min[run])
    first = np.concatenate([[0], np.cumsum(n_events)[:-1]])
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[first] - gaps[first], n_events)  # restart the running sum at each run
    return run, (start[run] + cum).astype(np.int64)


def crawler_events(spec: WorldSpec, cat: Catalog, users: np.ndarray,
                   rng: np.random.Generator) -> tuple[Events, np.ndarray]:
    """Events of crawler accounts `users` (internal indices); returns (events, bursty? bool per user)."""
    bursty = rng.random(len(users)) < spec.noise.crawler_burst_share
    n_runs = np.where(bursty, rng.integers(1, 4, len(users)), rng.integers(2, 4, len(users)))
    owner = np.repeat(np.arange(len(users)), n_runs)
    fast = bursty[owner]
    rate = np.where(fast, rng.uniform(40, 90, len(owner)), rng.uniform(5, 10, len(owner)))
    minutes = np.where(fast, rng.uniform(2, 6, len(owner)), rng.uniform(20, 45, len(owner)))
    n_events = np.maximum(1, np.round(rate * minutes)).astype(np.int64)
    run, ts = _runs(rng, spec.start_ts, spec.n_days, n_events, rate)
    # listing walk: consecutive items of one category's list, from a random offset; or random items
    n_std = len(cat.std_names)
    std = rng.integers(0, n_std, len(owner))
    order = np.argsort(cat.item_std[1:], kind="stable") + 1
    ptr = np.concatenate([[0], np.cumsum(np.bincount(cat.item_std[1:], minlength=n_std))])
    size = np.maximum(ptr[std + 1] - ptr[std], 1)
    step = np.arange(len(run)) - np.repeat(np.concatenate([[0], np.cumsum(n_events)[:-1]]), n_events)
    offset = rng.integers(0, 1 << 30, len(owner))
    listing = order[np.minimum(ptr[std][run] + (offset[run] + step) % size[run], cat.n_items - 1)]
    random_item = rng.integers(1, cat.n_items + 1, len(run))
    item = np.where(rng.random(len(owner))[run] < 0.6, listing, random_item)
    ev = _events(users[owner[run]], item, tl.PV, ts, np.where(rng.random(len(run)) < 0.5, tl.SEARCH, tl.BROWSE))
    carts = np.flatnonzero(fast & (rng.random(len(owner)) < 0.3))  # some bursty bots also cart a little
    pick = np.searchsorted(run, carts)
    cart = _events(ev["user"][pick], ev["item"][pick], tl.CART, ev["ts"][pick] + 5, tl.BROWSE)
    keep = ev["ts"] < spec.end_ts
    return {k: np.concatenate([ev[k][keep], cart[k][cart["ts"] < spec.end_ts]]) for k in ev}, bursty


def fake_orders(spec: WorldSpec, cat: Catalog, organic: Events, *, n_normal: int, first_account: int,
                rng: np.random.Generator) -> tuple[Events, np.ndarray]:
    """Brushed buys. Returns (events incl. the brushing accounts' cover views, the dedicated accounts).

    Fake buys are events with behavior BUY whose (user, item) never occurs in `organic`.
    """
    n_buys = int((organic["behavior"] == tl.BUY).sum())
    n_fake = max(5, int(round(spec.noise.fake_order_share * n_buys)))
    trading = np.unique(cat.item_shop[1:])
    n_brushed = min(len(trading) - 1, max(2, int(round(spec.noise.brushed_shop_share * len(trading)))))
    brushed = np.flatnonzero(np.isin(cat.item_shop, rng.choice(trading, n_brushed, replace=False)))
    brushed = brushed[brushed > 0]
    # dedicated accounts: bursts of 5-12 buys a few seconds apart
    n_dedicated = int(round(spec.noise.fake_dedicated_share * n_fake))
    sizes = rng.integers(5, 13, max(1, int(np.ceil(n_dedicated / 8.5))))
    n_accounts = max(1, int(np.ceil(len(sizes) / 2)))
    accounts = first_account + np.arange(n_accounts)
    run, ts = _runs(rng, spec.start_ts, spec.n_days, sizes, rng.uniform(3, 10, len(sizes)))
    burst = _events(accounts[rng.integers(0, n_accounts, len(sizes))][run], rng.choice(brushed, len(run)),
                    tl.BUY, ts, tl.BROWSE)
    # ... who also view a few random items of other shops, to look a bit normal
    n_cover = rng.integers(3, 16, n_accounts)
    others = np.setdiff1d(np.arange(1, cat.n_items + 1), brushed)
    _, cover_ts = _runs(rng, spec.start_ts, spec.n_days, n_cover, np.full(n_accounts, 2.0))
    cover = _events(np.repeat(accounts, n_cover), rng.choice(others, n_cover.sum()), tl.PV, cover_ts, tl.SEARCH)
    # normal-looking accounts: single buys or pairs a minute apart
    n_rest = max(1, n_fake - n_dedicated)
    pairs = rng.integers(1, 3, n_rest)
    pairs = pairs[np.cumsum(pairs) <= n_rest] if pairs[0] <= n_rest else np.ones(1, np.int64)
    run2, ts2 = _runs(rng, spec.start_ts, spec.n_days, pairs, np.full(len(pairs), 1.0))
    single = _events(rng.integers(1, n_normal + 1, len(pairs))[run2], rng.choice(brushed, len(run2)), tl.BUY, ts2,
                     tl.BROWSE)
    fake = {k: np.concatenate([burst[k], single[k]]) for k in burst}
    fake = _never_seen(fake, organic)
    fake = {k: v[fake["ts"] < spec.end_ts] for k, v in fake.items()}
    cover = {k: v[cover["ts"] < spec.end_ts] for k, v in cover.items()}
    return {k: np.concatenate([fake[k], cover[k]]) for k in fake}, accounts


def _never_seen(fake: Events, organic: Events) -> Events:
    """Drop fake buys whose (user, item) pair occurs anywhere in the organic events.

    Only the organic rows of the fake buyers can match, so those few are kept before the pairs are
    made unique (not all the log's pairs: that took minutes on the large shop).
    """
    mine = np.isin(organic["user"], np.unique(fake["user"]))
    seen = pl.DataFrame({"user": organic["user"][mine], "item": organic["item"][mine]}).unique()
    df = pl.DataFrame(fake).with_row_index("row").join(seen, on=["user", "item"], how="anti").sort("row")
    return {k: df[k].to_numpy() for k in fake}


def spike_events(spec: WorldSpec, organic: Events, rng: np.random.Generator) -> Events:
    """Cart/buy events crammed into local [00:00, 00:00 + spike_minutes) on `spike_days` random days (not day 0).

    Each chosen user carts and/or buys one item they viewed in the 3 days before that midnight.
    """
    n_days = min(spec.noise.spike_days, spec.n_days - 1)
    days = np.sort(rng.choice(np.arange(1, spec.n_days), size=n_days, replace=False))
    views = pl.DataFrame({"user": organic["user"], "item": organic["item"], "ts": organic["ts"]}).filter(
        pl.Series(organic["behavior"] == tl.PV))
    parts = []
    for day in days:  # one vectorised pass per spike day (a handful)
        midnight = spec.start_ts + int(day) * 86400
        before = views.filter(pl.col("ts").is_between(midnight - 3 * 86400, midnight, closed="left"))
        users = np.unique(before["user"].to_numpy())
        n = min(len(users), max(1, int(round(spec.noise.spike_user_share * spec.n_users))))
        chosen = pl.DataFrame({"user": np.sort(rng.choice(users, n, replace=False)).astype(np.int32)})
        picked = before.join(chosen, on="user")
        picked = picked.with_columns(pl.Series("key", rng.random(picked.height))).sort("user", "key") \
            .group_by("user", maintain_order=True).first()
        kind = rng.random(n)  # < 0.5 cart only, < 0.8 buy only, else cart then buy
        t = midnight + rng.integers(0, spec.noise.spike_minutes * 60 - 30, n)
        cart = kind < 0.5
        buy = kind >= 0.5
        both = kind >= 0.8
        u, it = picked["user"].to_numpy(), picked["item"].to_numpy()
        parts.append(_events(u[cart | both], it[cart | both], tl.CART, t[cart | both], tl.BROWSE))
        parts.append(_events(u[buy], it[buy], tl.BUY, t[buy] + np.where(both[buy], 20, 0), tl.BROWSE))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

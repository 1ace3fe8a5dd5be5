"""Hand-made encoded Datasets for recall tests (no generator, no ingest needed).

- `dataset_from(...)`: build a Dataset from plain row tuples; ids are already codes 1..n.
- `tiny_dataset()`: 8 users (one without a profile), 12 items, 4 days (train days 0-1, valid day 2,
  test day 3), events with every behaviour, and training exposures carrying channel and trigger.
- `synthetic_dataset(seed)`: a few hundred users with demographic-driven interests and sessions of
  related items, for contract and end-to-end tests where hand-written rows would be too few.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIORS, EVENTS, EXPOSURES, ITEMS, USERS
from homefeed.data.vocab import Vocab

DAY = 86_400
T0 = 1_700_000_000  # day 0 starts here


def _vocab(n: int, name: str) -> Vocab:
    return Vocab(pl.DataFrame({"raw": np.arange(1, n + 1, dtype=np.int64), "code": np.arange(1, n + 1, dtype=np.int32)}), name=name)


def dataset_from(events: list[tuple], *, exposures: list[tuple] | None = None, users: list[tuple] | None = None,
                 n_items: int | None = None, train_end: int = T0 + 2 * DAY, valid_end: int = T0 + 3 * DAY) -> Dataset:
    """A Dataset from rows.

    events: (user, item, behavior, ts); exposures: (request_id, user, item, ts, position, channel, trigger or None,
    clicked); users: (user, gender, age, city). Items 1..n_items get leaf (i-1)//3+1, brand (i-1)//2+1, shop i%3+1,
    price 10*i.
    """
    ev = pl.DataFrame(events, schema=["user_id", "item_id", "behavior", "ts"], orient="row")
    ev = EVENTS.conform(ev.with_columns(pl.col("behavior").cast(pl.Enum(list(BEHAVIORS))))).sort(["ts", "user_id"])
    n_items = n_items or int(ev["item_id"].max())
    ids = np.arange(1, n_items + 1)
    items = ITEMS.conform(pl.DataFrame({"item_id": ids, "leaf_category": (ids - 1) // 3 + 1, "brand": (ids - 1) // 2 + 1,
                                        "shop": ids % 3 + 1, "price": 10.0 * ids}))
    user_rows = users or []
    us = USERS.conform(pl.DataFrame(user_rows, schema={"user_id": pl.Int64, "gender": pl.String, "age": pl.Int64, "city": pl.String}, orient="row"))
    n_users = max(int(ev["user_id"].max()), int(us["user_id"].max() or 0) if us.height else 0)
    ex = None
    if exposures is not None:
        ex = pl.DataFrame(exposures, schema={"request_id": pl.Int64, "user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Int64,
                                             "position": pl.Int64, "channel": pl.String, "trigger_item": pl.Int64,
                                             "clicked": pl.Int64}, orient="row")
        ex = EXPOSURES.conform(ex.with_columns(page=pl.lit(0)))
    vocabs = {"item": _vocab(n_items, "item"), "user": _vocab(n_users, "user")}
    return Dataset(events=ev, items=items, users=us, split=TimeSplit(train_end, valid_end), vocabs=vocabs, exposures=ex)


def t(day: int, hour: float = 0.0) -> int:
    """Unix seconds of `hour` o'clock on day `day` (day 0 = T0)."""
    return int(T0 + day * DAY + hour * 3600)


TINY_USERS = [
    (1, "F", 23, "Hangzhou"), (2, "F", 24, "Hangzhou"), (3, "F", 31, "Shanghai"), (4, "M", 27, "Hangzhou"),
    (5, "M", 45, "Beijing"), (6, "F", 22, "Hangzhou"), (7, "M", 33, "Shanghai"), (8, None, None, None),
]

TINY_EVENTS = [
    # user 1: browses leaf 1 (items 1-3), carts 2, buys 2; test: item 3
    (1, 1, "pv", t(0, 9)), (1, 2, "pv", t(0, 9.1)), (1, 2, "cart", t(0, 9.2)), (1, 2, "buy", t(1, 10)),
    (1, 3, "click", t(2, 8)), (1, 3, "pv", t(3, 9)), (1, 4, "pv", t(3, 9.5)),
    # user 2: leaf 1 and 2; favs 5, never buys it
    (2, 1, "pv", t(0, 12)), (2, 3, "pv", t(0, 12.1)), (2, 5, "fav", t(1, 20)), (2, 4, "click", t(1, 20.5)),
    (2, 2, "pv", t(3, 8)), (2, 5, "buy", t(3, 8.5)),
    # user 3: leaf 3 (items 7-9)
    (3, 7, "pv", t(0, 15)), (3, 8, "pv", t(0, 15.1)), (3, 8, "fav", t(1, 15)), (3, 9, "cart", t(2, 11)),
    (3, 9, "pv", t(3, 10)),
    # user 4: leaf 2 and 4
    (4, 4, "pv", t(0, 18)), (4, 5, "click", t(0, 18.2)), (4, 10, "pv", t(1, 9)), (4, 11, "buy", t(1, 9.5)),
    (4, 6, "pv", t(3, 12)), (4, 12, "pv", t(3, 12.2)),
    # user 5: leaf 4
    (5, 10, "pv", t(0, 7)), (5, 11, "pv", t(0, 7.1)), (5, 12, "cart", t(1, 7)), (5, 10, "pv", t(3, 7)),
    # user 6: leaf 1
    (6, 1, "click", t(1, 21)), (6, 2, "pv", t(1, 21.1)), (6, 3, "fav", t(1, 21.2)), (6, 1, "pv", t(3, 21)),
    # user 7: leaf 3 and 4
    (7, 9, "pv", t(0, 22)), (7, 12, "pv", t(1, 22)), (7, 7, "pv", t(3, 22)),
    # user 8: no profile, one day of history
    (8, 1, "pv", t(1, 5)), (8, 6, "pv", t(3, 5)),
]

TINY_EXPOSURES = [
    # (request, user, item, ts, position, channel, trigger, clicked)
    (1, 1, 1, t(0, 8), 0, "popular", None, 0), (1, 1, 2, t(0, 8), 1, "itemcf", 1, 1), (1, 1, 5, t(0, 8), 2, "crowd", None, 0),
    (2, 2, 1, t(0, 11), 0, "popular", None, 0), (2, 2, 3, t(0, 11), 1, "crowd", None, 1), (2, 2, 4, t(0, 11), 2, "itemcf", 3, 0),
    (3, 4, 5, t(0, 17), 0, "crowd", None, 1), (3, 4, 1, t(0, 17), 1, "popular", None, 0), (3, 4, 10, t(0, 17), 2, "itemcf", 4, 0),
    (4, 6, 1, t(1, 20), 0, "popular", None, 1), (4, 6, 3, t(1, 20), 1, "crowd", None, 0), (4, 6, 9, t(1, 20), 2, "retarget", 9, 0),
    (5, 3, 8, t(1, 14), 0, "retarget", 8, 1), (5, 3, 1, t(1, 14), 1, "popular", None, 0), (5, 3, 7, t(1, 14), 2, "itemcf", 8, 0),
    (6, 5, 12, t(1, 6), 0, "itemcf", 10, 1), (6, 5, 1, t(1, 6), 1, "popular", None, 0), (6, 5, 11, t(1, 6), 2, "crowd", None, 0),
]


def tiny_dataset() -> Dataset:
    """8 users, 12 items, train days 0-1, valid day 2, test day 3; exposures in train only."""
    return dataset_from(TINY_EVENTS, exposures=TINY_EXPOSURES, users=TINY_USERS, n_items=12)


def synthetic_dataset(seed: int = 0, *, n_users: int = 400, n_items: int = 300, n_categories: int = 10,
                      days: int = 6, sessions_per_day: float = 1.5) -> Dataset:
    """Users with demographic-driven interests browsing sessions of related items, plus homepage exposures.

    Items are laid out in categories of consecutive codes; a session stays in one of the user's interest
    categories and walks through neighbouring items, so co-occurrence channels find signal. The last day
    is test, the one before valid.
    """
    rng = np.random.default_rng(seed)
    genders = rng.choice(["F", "M"], n_users)
    ages = rng.integers(18, 60, n_users)
    cities = rng.choice(["Hangzhou", "Shanghai", "Beijing"], n_users, p=[0.5, 0.3, 0.2])
    group = (genders == "F") * 3 + np.searchsorted([30, 40], ages, side="right")  # 6 demographic groups
    group_cats = rng.permutation(np.tile(np.arange(n_categories), 6))[: 6 * 3].reshape(6, 3)
    cat_of_item = np.sort(rng.integers(0, n_categories, n_items))
    starts = np.searchsorted(cat_of_item, np.arange(n_categories))
    ends = np.searchsorted(cat_of_item, np.arange(n_categories), side="right")
    rows = []
    for u in range(n_users):
        n_sessions = rng.poisson(sessions_per_day * days)
        for _ in range(n_sessions):
            cat = group_cats[group[u], rng.integers(0, 3)] if rng.random() < 0.8 else rng.integers(0, n_categories)
            lo, hi = starts[cat], ends[cat]
            if hi <= lo:
                continue
            start = lo + int(rng.zipf(1.6) - 1) % (hi - lo)
            length = rng.integers(2, 7)
            items = lo + (start - lo + np.cumsum(rng.integers(0, 3, length))) % (hi - lo)
            ts0 = T0 + rng.integers(0, days * DAY - 3600)
            behaviors = rng.choice(BEHAVIORS, length, p=[0.6, 0.15, 0.1, 0.1, 0.05])
            for j in range(length):
                rows.append((u + 1, int(items[j]) + 1, str(behaviors[j]), int(ts0 + 60 * j)))
    exposures, request = [], 0
    popular = np.bincount([r[1] for r in rows], minlength=n_items + 1).argsort()[::-1][:30]
    for u in rng.choice(n_users, n_users // 2, replace=False):
        for day in range(days - 2):
            request += 1
            cat = group_cats[group[u], rng.integers(0, 3)]
            shown = [("popular", int(i)) for i in rng.choice(popular, 3, replace=False)]
            shown += [("crowd", int(i) + 1) for i in rng.integers(starts[cat], max(ends[cat], starts[cat] + 1), 3)]
            for pos, (channel, item) in enumerate(shown):
                clicked = int(rng.random() < (0.3 if cat_of_item[min(item, n_items) - 1] == cat else 0.05))
                exposures.append((request, int(u) + 1, item, int(T0 + day * DAY + 3600 * (8 + pos)), pos, channel, None, clicked))
    users = [(i + 1, str(genders[i]), int(ages[i]), str(cities[i])) for i in range(n_users)]
    return dataset_from(rows, exposures=exposures, users=users, n_items=n_items,
                        train_end=T0 + (days - 2) * DAY, valid_end=T0 + (days - 1) * DAY)

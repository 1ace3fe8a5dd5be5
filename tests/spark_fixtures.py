"""Spark test data: a hand-made log with hot items and heavy users (the cases the single-process jobs cap), for
the Spark-vs-single-process equality tests. The run's one SparkSession is the `spark` fixture of conftest.py.
"""
from __future__ import annotations

import numpy as np
from recall_fixtures import DAY, T0, dataset_from

from homefeed.data.schema import BEHAVIORS


def hot_log(seed: int = 3, *, n_users: int = 70, n_items: int = 90):
    """A Dataset whose log has what caps exist for: hot items most users touch, heavy users with far more
    actions and items than the rest, events tied on the same second, and exposures with triggers.

    Users 1-3 are heavy (~140 events over ~70 distinct items); items 1-3 are hot. Train days 0-3, valid 4, test 5.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        heavy = u <= 3
        n_events = int(rng.integers(120, 160)) if heavy else int(rng.integers(4, 30))
        ts = T0 + np.sort(rng.integers(0, 6 * DAY, n_events)) // 600 * 600  # 10-minute clock: many ties
        home = rng.integers(0, n_items // 10)  # a "category" of 10 consecutive items
        for k in range(n_events):
            r = rng.random()
            if r < 0.2:
                item = int(rng.integers(1, 4))  # hot
            elif r < 0.75 and not (heavy and r > 0.4):
                item = int(home * 10 + rng.integers(0, 10)) + 1
            else:
                item = int(rng.integers(1, n_items + 1))
            item = min(item, n_items)
            behavior = BEHAVIORS[int(rng.choice(5, p=[0.55, 0.2, 0.1, 0.1, 0.05]))]
            rows.append((u, item, behavior, int(ts[k])))
    exposures = []
    for request in range(1, 400):
        u = int(rng.integers(1, n_users + 1))
        ts = int(T0 + rng.integers(0, 4 * DAY))
        trigger = int(rng.integers(1, n_items + 1))
        for pos in range(4):
            item = int(rng.integers(1, n_items + 1))
            channel = ["itemcf", "swing", "popular", "crowd"][pos]
            exposures.append((request, u, item, ts, pos, channel, trigger if pos < 2 else None,
                              int(rng.random() < (0.4 if abs(item - trigger) < 10 else 0.08))))
    cities = ["Hangzhou", "Shanghai", "Beijing"]
    users = [(u, None if u % 11 == 0 else ["F", "M"][u % 2], None if u % 7 == 0 else int(18 + (u * 7) % 40),
              cities[u % 3]) for u in range(1, n_users + 1)]
    return dataset_from(rows, exposures=exposures, users=users, n_items=n_items,
                        train_end=T0 + 4 * DAY, valid_end=T0 + 5 * DAY)

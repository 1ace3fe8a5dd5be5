"""The issue's acceptance test: in a planted world where every user has exactly two disjoint interests,
MIND-2 recovers both (each interest vector's nearest items are dominated by one planted interest) and
MIND-1, one vector per user, does not: given the same budget of nearest items, they rarely cover both."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from homefeed.data.user_state import states_at
from homefeed.recall.mind import MIND, MIND1
from homefeed.threads import torch_threads
from recall_fixtures import DAY, T0, dataset_from

N_CATS, PER_CAT, TOP = 8, 25, 10
SETTINGS = {"model": {"dim": 16, "max_len": 20, "side_fields": [], "hidden": [32]},
            "train": {"epochs": 10, "negatives": 100, "batch_size": 128, "lr": 0.03, "threads": 1}}


def planted(seed: int = 0, n_users: int = 300, events: int = 30, days: int = 3):
    """Users 1..n, each browsing two random categories (items c*PER_CAT+1 .. (c+1)*PER_CAT) half and half, in random order."""
    rng = np.random.default_rng(seed)
    rows, interests = [], np.zeros((n_users + 1, 2), np.int64)
    for u in range(1, n_users + 1):
        interests[u] = rng.choice(N_CATS, 2, replace=False)
        cats = np.where(rng.random(events) < 0.5, interests[u, 0], interests[u, 1])
        items = cats * PER_CAT + rng.integers(0, PER_CAT, events) + 1
        ts = np.sort(T0 + rng.integers(0, (days - 1) * DAY, events))
        rows += [(u, int(i), "pv", int(t)) for i, t in zip(items, ts)]
    ds = dataset_from(rows, n_items=N_CATS * PER_CAT, train_end=T0 + (days - 1) * DAY, valid_end=T0 + days * DAY)
    return ds, interests


def recovery(rec, ds, interests) -> tuple[float, float]:
    """(share of users whose two planted interests each own an interest vector with >= 80% of its top-10 items
    in that category, mean top-10 category purity of the interest vectors)."""
    recovered, purity = [], []
    for s in states_at(ds.events, ds.users, ds.split.train_end):
        vectors, _ = rec.interests(s)
        top = np.argsort(-(vectors @ rec.vectors_[1:].T), axis=1)[:, :TOP] // PER_CAT  # (K'_u, TOP) categories
        dominant = np.array([np.bincount(row, minlength=N_CATS).argmax() for row in top])
        share = (top == dominant[:, None]).mean(1)
        purity.append(share.mean())
        recovered.append(set(interests[s.user_id]) <= set(dominant[share >= 0.8].tolist()))
    return float(np.mean(recovered)), float(np.mean(purity))


def both_covered(rec, ds, interests, *, budget: int = 2 * TOP, need: int = 8) -> float:
    """Share of users whose `budget` nearest items (split evenly over their interest vectors) hold at least `need`
    items of each planted interest: one vector can score this as well as two if it really mixes both."""
    covered = []
    for s in states_at(ds.events, ds.users, ds.split.train_end):
        vectors, _ = rec.interests(s)
        top = np.argsort(-(vectors @ rec.vectors_[1:].T), axis=1)[:, :budget // len(vectors)] // PER_CAT
        covered.append(min(int((top == c).sum()) for c in interests[s.user_id]) >= need)
    return float(np.mean(covered))


@pytest.fixture(scope="module")
def world():
    return planted()


@pytest.fixture(scope="module")
def mind2(world):
    with torch_threads(1):
        return MIND(settings=MIND.Settings(**{**SETTINGS, "model": {**SETTINGS["model"], "interests": 2}})).fit(world[0])


def test_mind2_recovers_both_planted_interests_and_mind1_does_not(world, mind2):
    ds, interests = world
    with torch_threads(1):
        mind1 = MIND1(settings=MIND1.Settings(**SETTINGS)).fit(ds)
    rec2, purity2 = recovery(mind2, ds, interests)
    _, purity1 = recovery(mind1, ds, interests)
    assert rec2 >= 0.8, (rec2, purity2)  # measured 0.93
    assert purity1 < purity2 - 0.1, (purity1, purity2)  # measured 0.80 against 0.99
    # 20 nearest items with >= 8 of each interest: measured 0.93 of users for MIND-2 against 0.24 for MIND-1;
    # MIND-1 run with two interests (0.96), or MIND-2 collapsed to one, fails here. (Training losses are not
    # compared: each negative is scored by its own label-aware attention, so K = 2 meets harder negatives.)
    both2, both1 = both_covered(mind2, ds, interests), both_covered(mind1, ds, interests)
    assert both2 >= 0.8 and both1 <= 0.5, (both2, both1)


def served_both(rec, ds, interests, *, k: int = 2 * TOP, need: int = 6) -> float:
    """Share of users whose served list (`recall(state, k)`, what the merge gets) holds at least `need` items of each
    planted interest."""
    covered = []
    for s in states_at(ds.events, ds.users, ds.split.train_end):
        cats = (rec.recall(s, k).items - 1) // PER_CAT
        covered.append(min(int((cats == c).sum()) for c in interests[s.user_id]) >= need)
    return float(np.mean(covered))


def test_the_served_list_is_multi_interest(world, mind2):
    """Each interest gets a quota of the served list: both planted interests fill it, whatever the vectors' scale."""
    ds, interests = world
    assert mind2.settings.serve.interest_merge == "quota"
    assert served_both(mind2, ds, interests) >= 0.8
    # one interest scaled up 3x, as a popular region's vector is: on raw scores ("max") it takes the list (the
    # history served as scored, so that only the interests fill the list)
    stretched = mind2.with_serve(history="score")
    tower = stretched.tower_
    stretched.tower_ = lambda b, p: (lambda v, m, t: (v * torch.tensor([3.0, 1.0]).view(1, 2, 1), m, t))(*tower(b, p))
    assert served_both(stretched, ds, interests) >= 0.8
    assert served_both(stretched.with_serve(interest_merge="max"), ds, interests) <= 0.5

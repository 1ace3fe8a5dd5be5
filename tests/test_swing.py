"""Swing: hand-computed similarities on a four-user graph, the caps, and a brute-force cross-check."""
from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.swing import Swing, SwingSettings, sample_key, swing_table
from recall_contract import RecallerContract

# A: {1, 2, 3}   B: {1, 2}   C: {1, 2, 3}   D: {1, 3}
BASKETS = {1: [1, 2, 3], 2: [1, 2], 3: [1, 2, 3], 4: [1, 3]}


def events(baskets=BASKETS, behavior="pv") -> pl.DataFrame:
    pairs = [(u, i) for u, items in baskets.items() for i in items]
    return pl.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs], "ts": [0] * len(pairs),
                         "behavior": [behavior] * len(pairs)}, schema_overrides={"behavior": BEHAVIOR})


def rows(table) -> dict[int, dict[int, float]]:
    return {i: dict(zip(*(a.tolist() for a in table.neighbors_of(i))))
            for i in range(table.n_items) if table.neighbors_of(i)[0].size}


SMALL = SwingSettings(alpha1=1.0, alpha2=1.0, beta=0.5, min_user_items=1, self_pairs=False)


def test_defaults_are_flink_ml_s_but_for_small_logs():
    s = SwingSettings()
    assert (s.alpha1, s.alpha2, s.beta, s.max_user_items, s.max_users_per_item, s.top_n) == (15, 0, 0.3, 1000, 1000, 100)
    assert (s.min_user_items, s.self_pairs) == (2, True)  # Flink ML drops users under 10 items and pairs only u != v


def test_self_pairs_let_items_one_user_shares_pair_below_any_user_pair():
    # A: {1, 2, 3}, B: {1, 2}, E: {4, 5} (E alone has 4 and 5); w = (|I| + 1)^-0.5, self term w_u^2 / (alpha2 + |I_u|)
    baskets = {1: [1, 2, 3], 2: [1, 2], 5: [4, 5]}
    s = SMALL.model_copy(update={"self_pairs": True})
    got = rows(swing_table(events(baskets), 6, settings=s))
    a, b, e = 0.5, 3 ** -0.5, 3 ** -0.5
    assert got[4] == pytest.approx({5: e * e / (1 + 2)})
    assert got[1] == pytest.approx({2: a * b / (1 + 2) + a * a / (1 + 3) + b * b / (1 + 2), 3: a * a / (1 + 3)})
    assert got[1][2] > got[1][3]  # the item two users share comes first
    without = rows(swing_table(events(baskets), 6, settings=SMALL))
    assert 4 not in without and list(without[1]) == [2]
    assert np.allclose(dense(got, 6), brute_force(baskets, s, n_items=6))


def test_hand_computed_similarities():
    # w = (|I| + 1)^-0.5: A, C -> 1/2, B, D -> 1/sqrt(3). Common items: AB 2, AC 3, AD 2, BC 2, BD 1, CD 2.
    a = c = 0.5
    b = d = 3 ** -0.5
    s12 = a * b / 3 + a * c / 4 + b * c / 3  # pairs of {A, B, C}, who all have 1 and 2
    s13 = a * c / 4 + a * d / 3 + c * d / 3  # pairs of {A, C, D}
    s23 = a * c / 4  # only A and C have 2 and 3
    got = rows(swing_table(events(), 4, settings=SMALL))
    assert got[1] == pytest.approx({2: s12, 3: s13})
    assert got[2] == pytest.approx({1: s12, 3: s23})
    assert got[3] == pytest.approx({1: s13, 2: s23})
    assert list(got[1]) == [2, 3]  # sorted by score: s12 > s13


def test_tiny_docstring_example_and_a_pair_counts_once():
    s = SwingSettings(alpha1=0, alpha2=0, beta=0, min_user_items=1, self_pairs=False)
    assert rows(swing_table(events({1: [1, 2], 2: [1, 2], 3: [1, 3]}), 4, settings=s)) == {1: {2: 0.5}, 2: {1: 0.5}}


def test_user_activity_filter():
    # min 3 items keeps only A and C: s(i, j) = 1/2 * 1/2 / (1 + 3) for every pair of {1, 2, 3}
    s = SMALL.model_copy(update={"min_user_items": 3})
    got = rows(swing_table(events(), 4, settings=s))
    assert got == {i: pytest.approx({j: 1 / 16 for j in (1, 2, 3) if j != i}) for i in (1, 2, 3)}
    s = SMALL.model_copy(update={"max_user_items": 2})  # keeps B and D, who share only item 1
    assert rows(swing_table(events(), 4, settings=s)) == {}


def test_users_per_item_cap_keeps_the_smallest_hash_keys():
    s = SMALL.model_copy(update={"max_users_per_item": 2})
    users = np.array([1, 2, 3, 4])
    keys = sample_key(users, np.full(4, 1), 0)
    kept = set(users[np.argsort(keys, kind="stable")[:2]].tolist())
    got = rows(swing_table(events(), 4, settings=s))
    want = brute_force(BASKETS, s, n_items=4)
    assert np.allclose(dense(got, 4), want)
    assert len(kept) == 2 and sample_key(np.array([7]), np.array([9]), 0)[0] == python_key(7, 9, 0)


def python_key(u: int, i: int, seed: int) -> int:
    m = 0xFFFFFFFF
    h = ((u * 0x9E3779B1) ^ (i * 0x85EBCA77) ^ seed) & m
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & m
    return h ^ (h >> 13)


def brute_force(baskets: dict[int, list[int]], s: SwingSettings, n_items: int) -> np.ndarray:
    """The definition, with Python sets, as Flink ML computes it (users sampled by the same key)."""
    items_of = {u: set(v) for u, v in baskets.items() if s.min_user_items <= len(set(v)) <= s.max_user_items}
    w = {u: (len(v) + s.alpha1) ** -s.beta for u, v in items_of.items()}
    users_of: dict[int, list[int]] = {}
    for u, v in items_of.items():
        for i in v:
            users_of.setdefault(i, []).append(u)
    out = np.zeros((n_items, n_items))
    for i, us in users_of.items():
        us = sorted(sorted(us, key=lambda u: python_key(u, i, s.seed))[:s.max_users_per_item])
        for u, v in itertools.combinations_with_replacement(us, 2):
            if u == v and not s.self_pairs:
                continue
            common = items_of[u] & items_of[v]
            for j in common - {i}:
                out[i, j] += w[u] * w[v] / (s.alpha2 + len(common))
    return out


def dense(got: dict[int, dict[int, float]], n: int) -> np.ndarray:
    out = np.zeros((n, n))
    for i, row in got.items():
        for j, v in row.items():
            out[i, j] = v
    return out


def test_matches_brute_force_on_a_random_log_with_caps():
    rng = np.random.default_rng(5)
    p = np.r_[np.full(10, 0.06), np.full(30, 0.4 / 30)]  # ten popular items, thirty rare ones
    baskets = {u: sorted(set((1 + rng.choice(40, size=rng.integers(1, 25), p=p)).tolist())) for u in range(1, 80)}
    for self_pairs in (False, True):
        s = SwingSettings(min_user_items=3, max_user_items=20, max_users_per_item=15, top_n=1000, seed=11, self_pairs=self_pairs)
        got = swing_table(events(baskets), 41, settings=s).to_sparse().toarray()
        want = brute_force(baskets, s, 41)
        assert np.allclose(got, want, rtol=1e-5, atol=1e-12) and (want > 0).sum() > 100


def test_behaviour_filter_and_top_n():
    assert rows(swing_table(events(behavior="pv"), 4, settings=SMALL.model_copy(update={"behaviors": ["buy"]}))) == {}
    got = rows(swing_table(events(), 4, settings=SMALL.model_copy(update={"top_n": 1})))
    assert {i: list(r) for i, r in got.items()} == {1: [2], 2: [1], 3: [1]}


def test_channel_fits_recalls_and_round_trips(tmp_path):
    items = pl.DataFrame({"item_id": [1, 2, 3], "leaf_category": [1, 1, 1], "brand": [1, 1, 1], "shop": [1, 1, 1],
                          "price": [1.0] * 3}, schema_overrides={"item_id": pl.Int32})
    ds = Dataset(events=events(), items=items, users=pl.DataFrame({"user_id": [1, 2, 3, 4]}), split=TimeSplit(10, 20))
    rec = Swing(settings=SMALL).fit(ds)
    state = UserState(user_id=2, now=10, items=np.array([2], np.int32),
                      behaviors=np.array([BEHAVIOR_CODE["pv"]], np.int8), ts=np.array([10]))
    out = rec.recall(state, 10)
    assert rec.name == "swing" and out.items.tolist() == [1, 3] and out.triggers.tolist() == [2, 2]
    rec.save(tmp_path / "swing")
    assert np.array_equal(Swing.load(tmp_path / "swing").table_.scores, rec.table_.scores)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValidationError, match="below min_user_items"):
        SwingSettings(min_user_items=10, max_user_items=5)
    with pytest.raises(ValidationError, match="valid behaviours"):
        SwingSettings(behaviors=["like"])
    with pytest.raises(ValidationError):
        SwingSettings(max_users_per_item=100_000)


class TestSwingContract(RecallerContract):
    """Swing with small caps, so that the per-item user sample and the activity filter are exercised."""

    def make(self):
        return Swing(settings=SwingSettings(min_user_items=3, max_user_items=60, max_users_per_item=20, top_n=40))

    def make_keeping_bought(self):
        return Swing(settings=SwingSettings(min_user_items=3, triggers={"keep_bought": True}))

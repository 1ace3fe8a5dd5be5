"""Item-CF: every option against values worked out by hand on a three-user log."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.schema import BEHAVIOR
from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.i2i import I2ITable
from homefeed.recall.itemcf import ItemCF, ItemCFSettings, itemcf_table
from recall_contract import RecallerContract

# A: 1 @0, 2 @100, 3 @5000 (a new session);  B: 1 @0, 2 @50;  C: 2 @0, 3 @10.  Sessions cut at 1800 s.
LOG = [("A", 1, 0), ("A", 2, 100), ("A", 3, 5000), ("B", 1, 0), ("B", 2, 50), ("C", 2, 0), ("C", 3, 10)]
USER = {"A": 1, "B": 2, "C": 3, "D": 4}
N_ITEMS = 4


def events(log=LOG, behaviors=None) -> pl.DataFrame:
    return pl.DataFrame({
        "user_id": [USER[u] for u, _, _ in log], "item_id": [i for _, i, _ in log], "ts": [t for _, _, t in log],
        "behavior": behaviors or ["pv"] * len(log)}, schema_overrides={"behavior": BEHAVIOR})


PLAIN = ItemCFSettings(window="user", iuf=False, normalize="none", behavior_weights={"pv": 1.0, "buy": 4.0}, window_events=0)


def rows(table: I2ITable) -> dict[int, dict[int, float]]:
    return {i: dict(zip(*(a.tolist() for a in table.neighbors_of(i))))
            for i in range(table.n_items) if table.neighbors_of(i)[0].size}


def fit(log=LOG, behaviors=None, **changes) -> dict[int, dict[int, float]]:
    return rows(itemcf_table(events(log, behaviors), N_ITEMS, settings=PLAIN.model_copy(update=changes), now=5000))


def approx(d):
    return {k: pytest.approx(v, rel=1e-6) for k, v in d.items()}


def test_plain_co_occurrence_counts_users():
    assert fit() == {1: {2: 2, 3: 1}, 2: {1: 2, 3: 2}, 3: {2: 2, 1: 1}}
    t = itemcf_table(events(), N_ITEMS, settings=PLAIN)
    assert t.neighbors_of(2)[0].tolist() == [1, 3]  # tie broken by the lower code


def test_session_window_pairs_only_within_a_session():
    assert fit(window="session") == {1: {2: 2}, 2: {1: 2, 3: 1}, 3: {2: 1}}  # A's 3 came in a later session


def test_gap_window_is_inclusive_at_max_gap():
    # A: 1-2 100 s, 2-3 4900 s (kept at max_gap 4900), 1-3 5000 s (dropped)
    assert fit(window="gap", max_gap_s=4900) == {1: {2: 2}, 2: {1: 2, 3: 2}, 3: {2: 2}}
    assert fit(window="gap", max_gap_s=4899) == {1: {2: 2}, 2: {1: 2, 3: 1}, 3: {2: 1}}


def test_sequence_neighbours_pair_however_far_apart_in_time():
    # A review-like log: every event a day and a second after the previous one; A: 1 2 3, B: 1 2, C: 2 3
    days = [(u, i, 86_401 * t) for u, i, t in [("A", 1, 0), ("A", 2, 1), ("A", 3, 2), ("B", 1, 0), ("B", 2, 1),
                                                ("C", 2, 0), ("C", 3, 1)]]
    assert fit(days, window="gap") == {} and fit(days, window="session") == {}  # nobody pairs: nothing to serve
    assert fit(days, window="gap", window_events=1) == {1: {2: 2}, 2: {1: 2, 3: 2}, 3: {2: 2}}  # next neighbours only
    assert fit(days, window="session", window_events=2) == fit(days, window="user")
    assert ItemCFSettings().window_events == 5


def test_pair_decay_halves_per_half_life_of_the_gap():
    got = fit(pair_half_life_s=100.0)
    assert got[1] == approx({2: 2 ** -1 + 2 ** -0.5, 3: 2 ** -50})  # A 100 s apart, B 50 s
    assert got[2] == approx({1: 2 ** -1 + 2 ** -0.5, 3: 2 ** -49 + 2 ** -0.1})  # A 4900 s, C 10 s


def test_age_decay_weights_each_action_by_its_age():
    # now = 5000, half-life 1000: an action at t weighs 2^-((5000 - t) / 1000)
    w = lambda t: 2 ** (-(5000 - t) / 1000)  # noqa: E731
    got = fit(age_half_life_s=1000.0)
    assert got[1] == approx({2: w(0) * w(100) + w(0) * w(50), 3: w(0) * w(5000)})
    assert got[3] == approx({2: w(100) * w(5000) + w(0) * w(10), 1: w(0) * w(5000)})


def test_iuf_down_weights_active_users():
    a, bc = 1 / math.log(4), 1 / math.log(3)  # A has 3 items, B and C have 2
    assert fit(iuf=True) == {1: approx({2: a + bc, 3: a}), 2: approx({1: a + bc, 3: a + bc}),
                             3: approx({2: a + bc, 1: a})}


def test_cosine_and_asymmetric_normalisation():
    # pop = users per item: 1 -> 2, 2 -> 3, 3 -> 2
    cos = fit(normalize="cosine")
    assert cos[1] == approx({2: 2 / math.sqrt(6), 3: 1 / 2})
    assert cos[2] == approx({1: 2 / math.sqrt(6), 3: 2 / math.sqrt(6)})
    asym = fit(normalize="asymmetric", popularity_exponent=0.8)
    assert asym[1] == approx({2: 2 / (2 ** 0.2 * 3 ** 0.8), 3: 1 / 2})
    assert asym[2] == approx({1: 2 / (3 ** 0.2 * 2 ** 0.8), 3: 2 / (3 ** 0.2 * 2 ** 0.8)})
    assert fit(normalize="asymmetric", popularity_exponent=0.5) == approx(cos)


def test_behaviour_weights_take_the_strongest_behaviour_per_action():
    beh = ["pv", "pv", "pv", "pv", "buy", "pv", "pv"]  # B bought 2
    assert fit(behaviors=beh)[1] == {2: 1 + 4, 3: 1}
    cos = fit(behaviors=beh, normalize="cosine")  # pop(2) = 1 + 16 + 1
    assert cos[1] == approx({2: 5 / math.sqrt(2 * 18), 3: 1 / 2})
    # a pv then a buy of the same item in one session is one action of weight 4
    log = LOG + [("B", 2, 60)]
    assert fit(log, behaviors=["pv"] * 7 + ["buy"], window="session")[1] == {2: 5}
    assert fit(behaviors=beh, behavior_weights={"buy": 1.0}) == {}  # pv weighs 0: only B's buy is left


def test_a_user_counts_once_per_pair_however_often_they_meet():
    log = [("D", 1, 0), ("D", 2, 10), ("D", 1, 10_000), ("D", 2, 10_010)]  # two sessions, same pair
    assert fit(log, window="session") == {1: {2: 1}, 2: {1: 1}}
    assert fit(log, window="session", pair_half_life_s=10.0) == {1: {2: 0.5}, 2: {1: 0.5}}


def test_same_category_keeps_pairs_within_a_category():
    cats = np.array([0, 10, 10, 20])
    t = itemcf_table(events(), N_ITEMS, settings=PLAIN.model_copy(update={"same_category": "leaf"}), categories=cats)
    assert rows(t) == {1: {2: 2}, 2: {1: 2}}
    with pytest.raises(ValueError, match="needs categories"):
        itemcf_table(events(), N_ITEMS, settings=PLAIN.model_copy(update={"same_category": "leaf"}))


def test_top_n_levels_and_user_cap():
    assert fit(top_n=1) == {1: {2: 2}, 2: {1: 2}, 3: {2: 2}}
    levels = fit(levels=3)  # six scores 1 1 2 2 2 2 -> ranks 0 0 2 2 2 2 -> 1 + 3 * rank // 6 = 1 1 2 2 2 2
    assert levels == {1: {2: 2, 3: 1}, 2: {1: 2, 3: 2}, 3: {2: 2, 1: 1}}
    assert fit(max_actions_per_user=2) == {1: {2: 1}, 2: {1: 1, 3: 2}, 3: {2: 2}}  # A keeps 2 @100 and 3 @5000


@pytest.mark.parametrize("window_events", [0, 2])
def test_matches_a_brute_force_reference_on_a_random_log(window_events):
    rng = np.random.default_rng(3)
    n = 400
    ev = pl.DataFrame({"user_id": rng.integers(1, 30, n), "item_id": rng.integers(1, 25, n),
                       "ts": rng.permutation(20_000)[:n], "behavior": rng.choice(["pv", "fav", "buy"], n)},
                      schema_overrides={"behavior": BEHAVIOR})
    ev = ev.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    s = ItemCFSettings(window="gap", max_gap_s=3000, pair_half_life_s=1000.0, age_half_life_s=5000.0,
                       normalize="cosine", top_n=1000, behavior_weights={"pv": 1.0, "fav": 2.0, "buy": 4.0},
                       window_events=window_events)
    got = itemcf_table(ev, 25, settings=s, now=20_000).to_sparse().toarray()
    bw = s.behavior_weights
    recs = [(r["user_id"], r["item_id"], r["ts"], bw[r["behavior"]]) for r in ev.iter_rows(named=True)]
    by_user: dict[int, list] = {}
    for u, i, t, b in recs:
        by_user.setdefault(u, []).append((i, t, b * 2 ** (-(20_000 - t) / 5000)))
    c, pop = np.zeros((25, 25)), np.zeros(25)
    for u, acts in by_user.items():
        iuf = 1 / math.log(1 + len(acts))
        acts = sorted(acts, key=lambda a: a[1])  # time order, for the sequence window
        for x, (i, ti, wi) in enumerate(acts):
            for y, (j, tj, wj) in enumerate(acts):
                if i != j and (abs(ti - tj) <= 3000 or abs(x - y) <= window_events):
                    c[i, j] += iuf * wi * wj * 2 ** (-abs(ti - tj) / 1000)
    for u, i, t, b in recs:
        pop[i] += b * b
    want = c / np.sqrt(np.outer(pop, pop) + (np.outer(pop, pop) == 0))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-12)
    assert (want > 0).sum() > 20  # the log is dense enough to test something


@pytest.mark.parametrize("top_n", [1, 3, 7])
def test_top_n_keeps_the_best_scores_and_the_lowest_codes_among_ties(top_n):
    # integer co-occurrence counts tie a lot; 39 neighbours a row overflow the 4 x top_n selection buffer
    rng = np.random.default_rng(5)
    x = rng.random((60, 40)) < 0.3
    x[:, 0] = False  # item code 0 is unknown
    u, i = np.nonzero(x)
    ev = pl.DataFrame({"user_id": u + 1, "item_id": i, "ts": np.arange(u.size), "behavior": ["pv"] * u.size},
                      schema_overrides={"behavior": BEHAVIOR})
    got = rows(itemcf_table(ev, 40, settings=PLAIN.model_copy(update={"top_n": top_n})))
    c = x.T.astype(int) @ x.astype(int)
    np.fill_diagonal(c, 0)
    want = {a: {b: float(c[a, b]) for b in sorted(np.flatnonzero(c[a]), key=lambda b: (-c[a, b], b))[:top_n]}
            for a in range(40) if c[a].any()}
    assert got == want
    assert all(list(got[a]) == list(want[a]) for a in want)  # best first, ties by the lower code
    assert sum(np.sum(c[a] == c[a][list(want[a])[-1]]) > 1 for a in want) > 10  # ties at the cut are tested


# --- the channel -------------------------------------------------------------------------------

def dataset() -> Dataset:
    items = pl.DataFrame({"item_id": [1, 2, 3], "leaf_category": [10, 10, 20], "brand": [1, 1, 1], "shop": [1, 1, 1],
                          "price": [1.0, 1.0, 1.0]}, schema_overrides={"item_id": pl.Int32, "leaf_category": pl.Int32})
    users = pl.DataFrame({"user_id": [1, 2, 3]}, schema_overrides={"user_id": pl.Int32})
    late = events([("A", 3, 90_000), ("C", 1, 90_000)])  # after train_end: must not be learnt
    return Dataset(events=pl.concat([events(), late]), items=items, users=users, split=TimeSplit(80_000, 85_000))


def test_channel_fits_on_train_events_and_recalls_through_triggers(tmp_path):
    ds = dataset()
    rec = ItemCF(settings=ItemCFSettings(window="user", normalize="none", iuf=False)).fit(ds)
    assert rec.name == "itemcf" and rows(rec.table_) == {1: {2: 2, 3: 1}, 2: {1: 2, 3: 2}, 3: {2: 2, 1: 1}}
    state = UserState(user_id=9, now=80_000, items=np.array([3], np.int32),
                      behaviors=np.array([BEHAVIOR_CODE["pv"]], np.int8), ts=np.array([80_000]))
    out = rec.recall(state, 5)
    assert out.items.tolist() == [2, 1] and out.triggers.tolist() == [3, 3] and out.channel == "itemcf"
    rec.save(tmp_path / "itemcf")
    back = ItemCF.load(tmp_path / "itemcf")
    assert back.settings == rec.settings and np.array_equal(back.recall(state, 5).items, out.items)
    leaf = ItemCF(settings=ItemCFSettings(window="user", same_category="leaf")).fit(ds)
    assert sorted(rows(leaf.table_)) == [1, 2]
    with pytest.raises(ValueError, match="standard_categories"):
        ItemCF(settings=ItemCFSettings(same_category="standard")).fit(ds)
    std = ItemCF(settings=ItemCFSettings(window="user", same_category="standard"),
                 standard_categories=np.array([0, 5, 6, 6])).fit(ds)
    assert sorted(rows(std.table_)) == [2, 3]


def test_errors_name_the_problem():
    with pytest.raises(RuntimeError, match="not fitted"):
        ItemCF().recall(UserState(user_id=1, now=0), 5)
    with pytest.raises(ValueError, match="item code 3 but n_items is 2"):
        itemcf_table(events(), 2)
    with pytest.raises(ValidationError, match="valid behaviours"):
        ItemCFSettings(behavior_weights={"purchase": 1.0})
    with pytest.raises(ValidationError):
        ItemCFSettings(window="week")
    with pytest.raises(TypeError, match="takes ItemCFSettings"):
        ItemCF(settings=ItemCFSettings().triggers)


class TestItemCFSessionContract(RecallerContract):
    """A non-default set-up: session window, pair and age decay, same leaf, asymmetric, levels."""

    def make(self):
        return ItemCF(settings=ItemCFSettings(window="session", pair_half_life_s=600.0, age_half_life_s=86_400.0,
                                              same_category="leaf", normalize="asymmetric", popularity_exponent=0.7,
                                              levels=20, top_n=30))

    def make_keeping_bought(self):
        return ItemCF(settings=ItemCFSettings(triggers={"keep_bought": True}))


# --- the fast path equals the plain-Python oracle, bit for bit ------------------------------------

ORACLE_SETUPS = {
    "benchmark cosine": ItemCFSettings(window="user", iuf=False, normalize="cosine", top_n=50,
                                       max_actions_per_user=10**9, behavior_weights={b: 1.0 for b in BEHAVIOR_CODE}),
    "defaults": ItemCFSettings(),
    "user, IUF, cap, same leaf": ItemCFSettings(window="user", max_actions_per_user=40, same_category="leaf",
                                                top_n=7),
    "session, decays, asymmetric": ItemCFSettings(window="session", pair_half_life_s=600.0,
                                                  age_half_life_s=86_400.0, normalize="asymmetric",
                                                  popularity_exponent=0.7, top_n=5),
    "gap, sequence window, no normalisation": ItemCFSettings(window="gap", max_gap_s=3_600, window_events=2,
                                                             normalize="none", pair_half_life_s=900.0, top_n=3),
}


def assert_equals_oracle(ds: Dataset, setups=tuple(ORACLE_SETUPS)) -> int:
    """Every row of every set-up equal to the oracle's (codes, order, float32 scores); returns the entries checked."""
    from itemcf_reference import reference_rows

    from homefeed.recall.itemcf import item_categories

    train, now = ds.events_in("train"), ds.split.train_end
    cats = item_categories(ds.items, ds.n_items)
    checked = 0
    for name in setups:
        s = ORACLE_SETUPS[name]
        got = itemcf_table(train, ds.n_items, settings=s, categories=cats, now=now)
        want = reference_rows(train, ds.n_items, s, categories=cats, now=now)
        for i in range(ds.n_items):
            items, scores = got.neighbors_of(i)
            w_items, w_scores = want.get(i, (np.zeros(0, np.int32), np.zeros(0, np.float32)))
            assert np.array_equal(items, w_items), (name, i, items, w_items)
            assert np.array_equal(scores, w_scores), (name, i, scores - w_scores)
        checked += got.nnz
        assert got.nnz > 0, name
    return checked


def test_table_equals_the_oracle_on_hot_items_and_heavy_users():
    from spark_fixtures import hot_log

    assert assert_equals_oracle(hot_log()) > 1000


def test_table_equals_the_oracle_on_the_tiny_log():
    from recall_fixtures import tiny_dataset

    assert assert_equals_oracle(tiny_dataset()) > 10


def test_table_equals_the_oracle_on_the_tiny_shop(tiny_dataset_dir):
    # 48k events, 3.4M pairs: two set-ups (unique pairs and the default max path) keep the oracle to seconds
    assert assert_equals_oracle(Dataset.load(tiny_dataset_dir), ("benchmark cosine", "defaults")) > 1000

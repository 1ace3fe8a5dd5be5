"""Popularity recall: hand-computed decayed scores on the tiny shop, bought-item filter, save/load."""
import numpy as np
import pytest

from homefeed.data.user_state import UserState, states_at
from homefeed.recall.popular import Popular, PopularSettings
from recall_contract import RecallerContract
from recall_fixtures import T0, tiny_dataset

HOUR = 3600


def decay(day, hour, half_life_days=3.0):
    """0.5 ** (age at the end of training / half-life); training ends at the start of day 2."""
    return 0.5 ** ((2 * 24 - (day * 24 + hour)) / (half_life_days * 24))


def test_scores_are_decayed_weighted_counts():
    pop = Popular().fit(tiny_dataset())
    score = dict(zip(pop.items_.tolist(), pop.scores_.tolist()))
    # item 2 in training: pv (day 0 9.1h) and cart (9.2h) by user 1, buy (day 1 10h) by user 1, pv (day 1 21.1h) by user 6
    expected_2 = 1 * decay(0, 9.1) + 3 * decay(0, 9.2) + 4 * decay(1, 10) + 1 * decay(1, 21.1)
    assert score[2] == pytest.approx(expected_2, rel=1e-6)
    # item 12: cart (day 1 7h) by user 5, pv (day 1 22h) by user 7
    assert score[12] == pytest.approx(3 * decay(1, 7) + 1 * decay(1, 22), rel=1e-6)
    assert 6 not in score  # item 6 is only seen in the test day
    assert np.all(np.diff(pop.scores_) <= 0)
    assert pop.items_[0] == 2  # the most acted-on item of training


def test_half_life_changes_the_order():
    slow = Popular(settings=PopularSettings(half_life_days=1000)).fit(tiny_dataset())
    fast = Popular(settings=PopularSettings(half_life_days=0.01)).fit(tiny_dataset())
    # item 1: pv (day 0 9h), pv (day 0 12h), click (day 1 21h), pv (day 1 5h) -> 4 weight; item 12 has 3 + 1 weight
    # but its pv at 22h of day 1 is the newest event of training (2 h before its end), so with a 15-minute
    # half-life it beats the fav of item 3 at 21.2h: 0.5 ** (2 / 0.24) > 2 * 0.5 ** (2.8 / 0.24)
    assert fast.items_[0] == 12
    assert slow.scores_[list(slow.items_).index(1)] == pytest.approx(4.0, rel=1e-3)


def test_bought_items_are_skipped_and_the_list_is_refilled():
    ds = tiny_dataset()
    pop = Popular().fit(ds)
    buyer = UserState(user_id=1, now=T0 + 2 * 86400, items=np.array([2], np.int32), behaviors=np.array([4], np.int8),
                      ts=np.array([T0], np.int64))
    got = pop.recall(buyer, 5)
    assert 2 not in got.items and len(got) == 5
    np.testing.assert_array_equal(got.items, [i for i in pop.items_ if i != 2][:5])
    keep = Popular(settings=PopularSettings(exclude_bought=False)).fit(ds).recall(buyer, 5)
    assert keep.items[0] == 2


def test_unknown_behaviour_weight_is_an_error():
    with pytest.raises(ValueError, match="valid behaviours: pv, click, fav, cart, buy"):
        Popular(settings=PopularSettings(weights={"view": 1.0}))


def test_save_load_roundtrip(tmp_path):
    ds = tiny_dataset()
    pop = Popular().fit(ds)
    pop.save(tmp_path / "popular")
    back = Popular.load(tmp_path / "popular")
    for s in states_at(ds.events, ds.users, ds.split.valid_end):
        a, b = pop.recall(s, 7), back.recall(s, 7)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)


class TestPopularContract(RecallerContract):
    def make(self):
        return Popular()

    def make_keeping_bought(self):
        return Popular(settings=PopularSettings(exclude_bought=False))

"""Retargeting: recent items not bought, weighted by recency from now or from the user's latest event, under a strict quota."""
import numpy as np
import pytest

from homefeed.data.user_state import BEHAVIOR_CODE, UserState
from homefeed.recall.retarget import Retarget, RetargetSettings, return_after_buy
from recall_contract import RecallerContract
from recall_fixtures import T0, dataset_from

DAY = 86_400
NOW = 1_700_000_000 + 10 * DAY


def state(*events):
    """events: (item, behaviour, days ago), given oldest first."""
    items, behaviors, ago = zip(*events)
    return UserState(user_id=1, now=NOW, items=np.array(items, np.int32),
                     behaviors=np.array([BEHAVIOR_CODE[b] for b in behaviors], np.int8),
                     ts=np.array([NOW - a * DAY for a in ago], np.int64))


USER_EVENTS = (
    (9, "click", 5.0),   # outside the 3-day window
    (7, "cart", 2.0),
    (12, "cart", 1.0),   # bought afterwards: dropped
    (5, "click", 1.0),
    (12, "buy", 0.8),
    (5, "fav", 0.5),
    (11, "pv", 0.1),     # a page view does not qualify in CLASSIC
)
USER = state(*USER_EVENTS)
# carts, favourites and clicks of the last 3 days, ages from now: the channel before real logs showed returns to viewed items
CLASSIC = RetargetSettings(weights={"click": 1.0, "fav": 2.0, "cart": 3.0}, window_days=3, half_life_days=1, quota=10,
                           from_latest=False)


def test_hand_computed_scores_and_triggers():
    got = Retarget(settings=CLASSIC).fit(None).recall(USER, 50)  # fit learns nothing
    # item 5: click 1 day ago (w 1) + fav half a day ago (w 2), half-life 1 day; item 7: cart 2 days ago (w 3)
    np.testing.assert_array_equal(got.items, [5, 7])
    np.testing.assert_allclose(got.scores, [1 * 0.5 ** 1 + 2 * 0.5 ** 0.5, 3 * 0.5 ** 2], rtol=1e-6)
    np.testing.assert_array_equal(got.triggers, got.items)  # the reason is the item itself
    assert got.channel == "retarget"


def test_quota_is_strict_whatever_k():
    rec = Retarget(settings=CLASSIC.model_copy(update={"quota": 1}))
    np.testing.assert_array_equal(rec.recall(USER, 50).items, [5])
    assert len(Retarget().recall(USER, 1)) == 1


def test_window_and_behaviours_are_configurable():
    wide = Retarget(settings=CLASSIC.model_copy(update={"window_days": 6, "weights": {"click": 1.0, "pv": 0.5}})).recall(USER, 50)
    # item 5: its click 1 day ago -> 0.5 (a fav no longer counts); item 11: pv 0.1 day ago -> 0.5 * 0.5 ** 0.1; item 9: click 5 days ago -> 0.5 ** 5
    np.testing.assert_array_equal(wide.items, [5, 11, 9])
    np.testing.assert_allclose(wide.scores, [0.5, 0.5 * 0.5 ** 0.1, 0.5 ** 5], rtol=1e-6)


def test_bought_items_kept_only_when_configured():
    keep = Retarget(settings=RetargetSettings(exclude_bought=False)).recall(USER, 50)
    assert 12 in keep.items and 12 not in Retarget().recall(USER, 50).items


def shop(*, rebuy: bool):
    """60 users: each views items 1-3 and buys item 1 on day 0, then on day 1 views item 2 again, and item 1 too if `rebuy`."""
    rows = []
    for u in range(1, 61):
        rows += [(u, 1, "pv", T0 + u), (u, 2, "pv", T0 + 60 + u), (u, 3, "pv", T0 + 120 + u), (u, 1, "buy", T0 + 180 + u)]
        rows += [(u, 2, "pv", T0 + DAY + u)] + ([(u, 1, "pv", T0 + DAY + 60 + u)] if rebuy else [])
    return dataset_from(rows, n_items=5)


@pytest.mark.parametrize("rebuy", [True, False])
def test_whether_bought_items_come_back_is_learned_from_the_log(rebuy, tmp_path):
    ds = shop(rebuy=rebuy)
    learned = return_after_buy(ds.events_in("train"))
    # returns after a view: item 2 of every user, 1 of the 2 viewed-only pairs; after a buy: item 1 of every user if rebuy
    assert learned["after_view"] == pytest.approx((120 if rebuy else 60) / 180)
    assert learned["after_buy"] == pytest.approx(60 / 80 if rebuy else 0.0)
    rec = Retarget(settings=RetargetSettings(exclude_bought=None)).fit(ds)
    assert rec.bought_factor_ == (1.0 if rebuy else 0.0)
    got = rec.recall(USER, 50)
    assert (12 in got.items) == rebuy  # USER bought item 12
    rec.save(tmp_path / "r")
    assert Retarget.load(tmp_path / "r").recall(USER, 50).items.tolist() == got.items.tolist()
    assert Retarget(settings=RetargetSettings(exclude_bought=True)).fit(ds).bought_factor_ == 0.0  # configured wins
    assert 12 not in Retarget(settings=RetargetSettings(exclude_bought=None)).recall(USER, 50).items  # unfitted: dropped
    assert (12 in Retarget().fit(ds).recall(USER, 50).items) == rebuy  # the default learns it


def test_a_partial_factor_scales_bought_items():
    rec = Retarget(settings=RetargetSettings(exclude_bought=None))
    rec.bought_factor_ = 0.25
    full, scaled = Retarget(settings=RetargetSettings(exclude_bought=False)).recall(USER, 50), rec.recall(USER, 50)
    at = lambda c, i: float(c.scores[c.items.tolist().index(i)])
    assert at(scaled, 12) == pytest.approx(0.25 * at(full, 12)) and at(scaled, 5) == pytest.approx(at(full, 5))


def test_defaults_count_views_and_ages_from_the_latest_event():
    # the default counts page views too (pv 1, click 1, fav 2, cart 3), 30 days, half-life 3 days, from the latest event
    got = Retarget().recall(USER, 50)
    age = lambda days: 0.5 ** ((days - 0.1) / 3)  # the latest event is 0.1 days old
    np.testing.assert_array_equal(got.items, [5, 7, 11, 9])  # 12 was bought
    np.testing.assert_allclose(got.scores, [1 * age(1.0) + 2 * age(0.5), 3 * age(2.0), age(0.1), age(5.0)], rtol=1e-6)
    back_later = state(*[(i, b, a + 60) for i, b, a in USER_EVENTS])  # the same user, back after two months
    np.testing.assert_allclose(Retarget().recall(back_later, 50).scores, got.scores, rtol=1e-6)
    assert len(Retarget(settings=RetargetSettings(from_latest=False)).recall(back_later, 50)) == 0  # all older than 30 days


def test_no_qualifying_history_gives_an_empty_list():
    assert len(Retarget().recall(UserState(user_id=0, now=NOW), 10)) == 0
    assert len(Retarget(settings=CLASSIC).recall(state((3, "pv", 0.1)), 10)) == 0


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="valid behaviours"):
        Retarget(settings=RetargetSettings(weights={"carted": 1.0}))
    with pytest.raises(ValueError, match="quota"):
        Retarget(settings=RetargetSettings(quota=-1))


class TestRetargetContract(RecallerContract):
    def make(self):
        return Retarget(settings=RetargetSettings(exclude_bought=True))

    def make_keeping_bought(self):
        return Retarget(settings=RetargetSettings(exclude_bought=False, weights={"pv": 1.0, "click": 1.0, "fav": 1.0, "cart": 1.0}))


class TestRetargetLearnedContract(RecallerContract):
    keeps_bought = True  # the default learns it, and the tiny shop's users come back to what they bought
    test_no_item_the_user_bought = None  # does not apply: this channel is meant to bring bought items back

    def make(self):
        return Retarget()

    def make_keeping_bought(self):  # the learned default itself: some bought item must come back
        return Retarget()

"""Crowd recall: hand-computed smoothed rates per group, back-off to coarser groups, both rate sources."""
import numpy as np
import pytest
from pydantic import ValidationError

from homefeed.data.user_state import UserState, states_at
from homefeed.recall.crowd import Crowd, CrowdSettings, profile_key, user_attributes
from recall_contract import RecallerContract
from recall_fixtures import dataset_from, t, tiny_dataset

USERS = [(1, "F", 20, "A"), (2, "F", 22, "A"), (3, "M", 30, "B"), (4, "M", 31, "B"), (5, "X", 40, "C")]
EVENTS = [(u, 1, "pv", t(0, u)) for u in range(1, 6)]


def exposure_rows():
    """Item 1: F 4 shown/2 clicks, M 2/0. Item 2: F 2/0, M 4/3. Item 3: M 2/1. User 5 sees nothing."""
    rows, rid = [], 0
    plan = [(1, 1, 1), (2, 1, 1), (1, 1, 0), (2, 1, 0), (3, 1, 0), (4, 1, 0),
            (1, 2, 0), (2, 2, 0), (3, 2, 1), (4, 2, 1), (3, 2, 1), (4, 2, 0), (3, 3, 1), (4, 3, 0)]
    for user, item, clicked in plan:
        rid += 1
        rows.append((rid, user, item, t(1, rid * 0.1), 0, "popular", None, clicked))
    return rows


def gender_crowd(min_users=2, **kw):
    return Crowd(settings=CrowdSettings(levels=[["gender"], []], prior_strength=2.0, min_group_users=min_users, **kw))


def as_dict(c):
    return dict(zip(c.items.tolist(), c.scores.tolist()))


def test_exposure_rates_smoothed_up_the_chain():
    ds = dataset_from(EVENTS, exposures=exposure_rows(), users=USERS, n_items=3)
    crowd = gender_crowd().fit(ds)
    assert crowd.source_ == "exposures"
    g = 6 / 14  # global CTR
    root = {1: (2 + 2 * g) / (6 + 2), 2: (3 + 2 * g) / (6 + 2), 3: (1 + 2 * g) / (2 + 2)}
    female = {1: (2 + 2 * root[1]) / (4 + 2), 2: (0 + 2 * root[2]) / (2 + 2), 3: root[3]}  # item 3 unseen: parent's rate
    male = {1: (0 + 2 * root[1]) / (2 + 2), 2: (3 + 2 * root[2]) / (4 + 2), 3: (1 + 2 * root[3]) / (2 + 2)}
    now = ds.split.valid_end
    for profile, expected in [({"gender": "F"}, female), ({"gender": "M"}, male), ({"gender": "X"}, root), ({}, root)]:
        got = crowd.recall(UserState(user_id=0, now=now, profile=profile), 10)
        assert as_dict(got) == pytest.approx(expected, rel=1e-6), profile
        np.testing.assert_array_equal(got.items, sorted(expected, key=lambda i: -expected[i]))
        assert np.all(got.triggers == -1)


def test_small_groups_back_off_to_the_parent():
    ds = dataset_from(EVENTS, exposures=exposure_rows(), users=USERS, n_items=3)
    big = gender_crowd(min_users=3).fit(ds)  # each gender group has 2 users with exposures: too small
    everyone = big.recall(UserState(user_id=0, now=0, profile={}), 10)
    female = big.recall(UserState(user_id=0, now=0, profile={"gender": "F"}), 10)
    np.testing.assert_array_equal(female.items, everyone.items)
    np.testing.assert_array_equal(female.scores, everyone.scores)
    assert big.group_of({"gender": "F"}) == big.group_of({}) == big.groups_[(1, ())]


def test_interaction_rates_when_there_are_no_exposures():
    events = [(1, 1, "pv", t(0, 1)), (1, 2, "cart", t(0, 2)), (2, 1, "pv", t(0, 3)), (3, 2, "pv", t(0, 4)),
              (4, 2, "buy", t(0, 5)), (4, 3, "pv", t(0, 6)), (5, 3, "fav", t(0, 7)), (5, 3, "pv", t(0, 8))]
    users = [(1, "F", 20, "A"), (2, "F", 22, "A"), (3, "M", 30, "B"), (4, "M", 31, "B"), (5, "M", 40, "C")]
    ds = dataset_from(events, users=users, n_items=3)
    crowd = gender_crowd().fit(ds)
    assert crowd.source_ == "interactions"
    g = 7 / 15  # 7 (user, item) pairs out of 5 users x 3 items
    root = {1: (2 + 2 * g) / (5 + 2), 2: (3 + 2 * g) / (5 + 2), 3: (2 + 2 * g) / (5 + 2)}
    female = {1: (2 + 2 * root[1]) / (2 + 2), 2: (1 + 2 * root[2]) / (2 + 2), 3: (0 + 2 * root[3]) / (2 + 2)}
    # user 2 bought nothing, so nothing is filtered out of the female list
    got = crowd.recall(UserState(user_id=2, now=ds.split.valid_end, profile={"gender": "F"}), 10)
    assert as_dict(got) == pytest.approx(female, rel=1e-6)
    with pytest.raises(ValueError, match="no training exposures"):
        Crowd(settings=CrowdSettings(source="exposures")).fit(ds)


def test_top_k_and_bought_filter():
    ds = dataset_from(EVENTS, exposures=exposure_rows(), users=USERS, n_items=3)
    crowd = gender_crowd(top_k=2).fit(ds)
    male = UserState(user_id=3, now=0, profile={"gender": "M"})
    np.testing.assert_array_equal(crowd.recall(male, 10).items, [2, 3])
    bought = UserState(user_id=3, now=0, profile={"gender": "M"}, items=np.array([2], np.int32),
                       behaviors=np.array([4], np.int8), ts=np.array([1], np.int64))
    np.testing.assert_array_equal(crowd.recall(bought, 10).items, [3])


def test_age_bands_online_match_offline():
    users = tiny_dataset().users
    attrs = user_attributes(users, [18, 25, 30])
    bands = np.array([18, 25, 30])
    for row, profile in zip(attrs.iter_rows(named=True), users.drop("user_id").iter_rows(named=True)):
        assert profile_key(profile, ["gender", "age_band", "city"], bands) == (row["gender"], row["age_band"], row["city"])
    assert [profile_key({"age": a}, ["age_band"], bands)[0] for a in (17, 18, 24, 25, 31)] == ["0", "1", "1", "2", "3"]
    assert profile_key({}, ["age_band", "city"], bands) == ("?", "?")


def test_levels_are_checked():
    with pytest.raises(ValidationError, match="valid attributes: gender, age_band, city, purchase_power"):
        CrowdSettings(levels=[["gender", "income"]])
    with pytest.raises(ValidationError, match="subset"):
        CrowdSettings(levels=[["gender"], ["city"]])
    assert CrowdSettings(levels=[["city"]]).levels == [["city"], []]


def test_save_load_roundtrip(tmp_path):
    ds = tiny_dataset()
    crowd = Crowd(settings=CrowdSettings(min_group_users=2)).fit(ds)
    crowd.save(tmp_path / "crowd")
    back = Crowd.load(tmp_path / "crowd")
    for s in states_at(ds.events, ds.users, ds.split.valid_end):
        a, b = crowd.recall(s, 5), back.recall(s, 5)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)


class TestCrowdContract(RecallerContract):
    def make(self):
        return Crowd(settings=CrowdSettings(min_group_users=10))

    def make_keeping_bought(self):
        return Crowd(settings=CrowdSettings(min_group_users=10, exclude_bought=False, source="interactions"))


class TestCrowdOnInteractionsContract(RecallerContract):
    def make(self):
        return Crowd(settings=CrowdSettings(source="interactions", levels=[["gender", "city"], ["gender"]]))

    def make_keeping_bought(self):
        return Crowd(settings=CrowdSettings(source="interactions", levels=[["gender", "city"], ["gender"]],
                                            exclude_bought=False))

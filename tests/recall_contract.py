"""The contract every recall channel obeys, as a test mixin (after implicit's recommender_base_test).

Subclass it with a class named Test..., implement `make()` returning an unfitted channel, and
optionally override the `dataset` fixture or `make_keeping_bought()` (a channel configured to keep
items the user bought, which proves the bought-item filter is doing something):

    class TestPopularContract(RecallerContract):
        def make(self):
            return Popular()
"""
from __future__ import annotations

import numpy as np
import pytest

from homefeed.data.user_state import UserState, states_at
from homefeed.recall.base import Candidates, Recaller
from recall_fixtures import synthetic_dataset

K = 25


class RecallerContract:
    keeps_bought = False  # True if `make()` is configured to keep items the user already bought

    def make(self) -> Recaller:
        raise NotImplementedError

    def make_keeping_bought(self) -> Recaller | None:
        """The same channel configured to keep bought items, or None if it has no such option."""
        return None

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls):
        return synthetic_dataset(seed=3, n_users=150, n_items=120, days=5)

    @pytest.fixture
    def fitted(self, dataset) -> Recaller:
        return self.make().fit(dataset)

    @pytest.fixture
    def states(self, dataset) -> list[UserState]:
        """Every user with history at the start of the test part, a profile-only user and an unknown one."""
        at = dataset.split.valid_end
        known = states_at(dataset.events, dataset.users, at)
        profile_only = UserState(user_id=0, now=at, profile={"gender": "F", "age": 26, "city": "Hangzhou"})
        return [*known, profile_only, UserState(user_id=0, now=at)]

    def test_rows_are_well_formed(self, fitted, states):
        for s in states:
            c = fitted.recall(s, K)
            assert isinstance(c, Candidates) and c.channel == fitted.name
            assert len(c) <= K
            assert c.items.dtype == np.int32 and c.scores.dtype == np.float32 and c.triggers.dtype == np.int32
            assert np.unique(c.items).size == len(c), "items must be unique"
            assert np.all(np.diff(c.scores) <= 0), "scores must be sorted descending"
            assert np.all(c.items > 0), "item code 0 (unknown) must never be recalled"

    def test_serves_most_known_users(self, fitted, states):
        served = sum(len(fitted.recall(s, K)) > 0 for s in states[:-2])
        assert served >= 0.5 * (len(states) - 2)

    def test_batch_equals_one_at_a_time(self, fitted, states):
        batch = fitted.recall_batch(states, K)
        assert len(batch) == len(states)
        for s, b in zip(states, batch):
            one = fitted.recall(s, K)
            np.testing.assert_array_equal(one.items, b.items)
            np.testing.assert_array_equal(one.scores, b.scores)
            np.testing.assert_array_equal(one.triggers, b.triggers)

    def test_smaller_k_is_the_head_of_the_list(self, fitted, states):
        for s in states[:40]:
            full, head = fitted.recall(s, K), fitted.recall(s, 5)
            np.testing.assert_array_equal(head.items, full.items[: len(head)])
            assert len(head) == min(5, len(full))
            assert len(fitted.recall(s, 0)) == 0

    def test_no_item_the_user_bought(self, fitted, states):  # a class whose make() keeps them sets this test to None
        assert not self.keeps_bought, "set test_no_item_the_user_bought = None where make() keeps bought items"
        buyers = [s for s in states if s.recent(behaviors=("buy",)).size]
        assert buyers, "the dataset must have buyers for this test to mean anything"
        for s in buyers:
            assert not np.isin(fitted.recall(s, K).items, s.recent(behaviors=("buy",))).any()

    def test_keeping_bought_items_when_configured(self, dataset, states):
        keeper = self.make_keeping_bought()
        if keeper is None:
            pytest.skip("channel has no keep-bought option")
        keeper.fit(dataset)
        kept = sum(np.isin(keeper.recall(s, K).items, s.recent(behaviors=("buy",))).sum() for s in states)
        assert kept > 0, "with the filter off some bought item should come back"

    def test_deterministic(self, dataset, states):
        a, b = self.make().fit(dataset), self.make().fit(dataset)
        for s in states:
            ra, rb = a.recall(s, K), b.recall(s, K)
            np.testing.assert_array_equal(ra.items, rb.items)
            np.testing.assert_array_equal(ra.scores, rb.scores)

"""The share search (recall.shares): sure gains only (a paired test that scales with the validation set), channels
with no relevant item left after the seen factor kept out of it, the hit-free users dropped without changing a figure,
and the head of the list reserved for one channel, scored by the search exactly as the merger serves it."""
import numpy as np
import pytest

from homefeed.recall.base import Candidates
from homefeed.recall.merge import Merger, MergeSettings, bounded
from homefeed.recall.shares import (coordinate_search, gain, learn_from, merged_hit_rates, merged_positions, recalled_from,
                                    users_with_hits)

KS = (10, 30, 60)


def test_gain_is_a_paired_test_that_scales_with_the_validation_set():
    def diff(n, won, lost):
        d = np.zeros(n)
        d[:won], d[won:won + lost] = 1.0, -1.0
        return d

    # 5 users won, 1 lost, of 100: mean .04 but the standard error is .024, so not sure at z = 2
    assert gain(diff(100, 5, 1), np.zeros(100), tol=0.0, z=2.0) == -np.inf
    assert gain(diff(100, 5, 1), np.zeros(100), tol=0.0, z=0.0) == pytest.approx(0.04)  # plain rule: taken
    # the same proportions on 3000 users: standard error .0045, a sure gain
    assert gain(diff(3000, 150, 30), np.zeros(3000), tol=0.0, z=2.0) == pytest.approx(0.04)
    assert gain(diff(100, 30, 2), np.zeros(100), tol=0.0, z=2.0) == pytest.approx(0.28)
    assert gain(diff(100, 30, 2), np.zeros(100), tol=0.3, z=0.0) == -np.inf  # and never below tol
    assert gain(np.zeros(10), np.zeros(10), tol=0.0, z=0.0) == -np.inf  # no gain is no step


def test_the_search_steps_only_on_sure_gains():
    def objective_for(n, won, lost):  # channel 1's weight wins `won` users and loses `lost`, whatever its value
        def objective(w, rho, head=None):
            d = np.zeros(n)
            if w[1] > 0:
                d[:won], d[won:won + lost] = 1.0, -1.0
            return d
        return objective

    for n, won, lost, z, stepped in ((100, 5, 1, 2.0, False), (100, 5, 1, 0.0, True), (3000, 150, 30, 2.0, True)):
        w, rho, head, current = coordinate_search(objective_for(n, won, lost), 2, [0, 1], (1.0,), tol=0.0, z=z)
        assert (w[1] > 0) == stepped and w[0] == 1.0 and rho == 1.0 and head is None, (n, won, lost, z)
        assert current.mean() == pytest.approx((won - lost) / n if stepped else 0.0)


def two_channel_world(n_users: int, seed: int = 0):
    """'good' finds the next item of 60% of users at a random rank < 30; 'extra' finds it for 6% of the others at
    rank 0, and for every user its other items are noise that pushes good's hits down when it gets a share."""
    rng = np.random.default_rng(seed)
    good, extra, relevant = [], [], []
    for u in range(n_users):
        target = 1_000_000 + u
        g = list(range(1, 61))  # noise: the same items for everyone, never relevant
        if rng.random() < 0.6:
            g.insert(int(rng.integers(30)), target)
        e = list(range(5_001, 5_061))
        if target not in g and rng.random() < 0.06:
            e.insert(0, target)
        good.append(np.array(g[:60]))
        extra.append(np.array(e[:60]))
        relevant.append(np.array([target]))
    return recalled_from({"good": good, "extra": extra}, relevant, [np.zeros(0, np.int64)] * n_users)


def test_a_small_validation_set_keeps_the_best_channel_alone_a_large_one_mixes():
    settings = MergeSettings(seen_weight=1.0)
    small, large = two_channel_world(100), two_channel_world(3000)
    for r, z, mixed in ((small, 2.0, False), (small, 0.0, True), (large, 2.0, True)):
        weights, _, learned = learn_from(r, settings.model_copy(update={"min_gain_z": z}), ks=KS)
        assert (weights["extra"] > 0) == mixed, (r.n_users, z, weights, learned["merged"])
    # on the large set the mix is worth it: it beats good alone at HR@60 by most of the 6% extra finds
    assert learned["merged"]["hitrate@60"] > learned["solo"]["good"]["hitrate@60"] + 0.015


def test_a_channel_whose_hits_are_all_seen_sits_at_the_floor_when_seen_items_are_dropped():
    rng = np.random.default_rng(1)
    n = 400
    good, seen_only, relevant, seen = [], [], [], []
    for u in range(n):
        history = rng.permutation(np.arange(100, 200))[:20]
        target = 1_000 + u
        g = list(rng.permutation(np.arange(5_000, 9_000))[:100])
        if rng.random() < 0.5:
            g.insert(int(rng.integers(20)), target)
        good.append(np.array(g))
        seen_only.append(history)  # every item of it seen before
        relevant.append(np.array([target, history[0]]))  # one of them comes back: a hit only while seen items stay
        seen.append(history)
    r = recalled_from({"good": good, "seen_only": seen_only}, relevant, seen)
    settings = MergeSettings(seen_weight=0.0)
    weights, rho, learned = learn_from(r, settings, ks=KS)
    assert rho == 0.0 and weights["seen_only"] == 0.0 and weights["good"] > 0
    assert learned["marginal"]["seen_only"] == 0.0
    assert any(note.startswith("seen_only: every relevant item it finds was seen") for note in learned["notes"])
    merger = Merger(settings=settings).set_shares(weights, seen_weight=rho)
    assert merger.shares_["seen_only"] == pytest.approx(settings.min_share)
    # kept, its hits count: the search takes it (the seen factor stays 1)
    weights, rho, _ = learn_from(r, MergeSettings(seen_weight=1.0), ks=KS)
    assert rho == 1.0 and weights["seen_only"] > 0


def test_users_without_a_hit_are_dropped_without_changing_a_hit_rate():
    rng = np.random.default_rng(2)
    lists = {c: [rng.permutation(300)[:int(rng.integers(0, 60))] for _ in range(200)] for c in ("a", "b", "c")}
    relevant = [rng.permutation(600)[:3] for _ in range(200)]
    seen = [rng.permutation(300)[:10] for _ in range(200)]
    r = recalled_from(lists, relevant, seen)
    small = users_with_hits(r)
    assert small.n_users == r.n_users and small.inverse.size < r.inverse.size
    for _ in range(20):
        w, rho = rng.random(3) + 0.01, float(rng.choice([0.0, 0.3, 1.0, 3.0]))
        assert merged_hit_rates(small, w, rho, ks=(1, 10, 50)) == merged_hit_rates(r, w, rho, ks=(1, 10, 50))


def test_recalled_from_checks_its_input():
    with pytest.raises(ValueError, match="channel 'a' has lists for 1 users; relevant items are given for 2"):
        recalled_from({"a": [np.array([1])]}, [np.array([1]), np.array([2])], [np.array([], np.int64)] * 2)
    with pytest.raises(ValueError, match="seen items are given for 0 users; relevant items for 1"):
        recalled_from({"a": [np.array([1])]}, [np.array([1])], [])


def test_the_head_leads_in_its_channels_order_without_seen_items_and_survives_save(tmp_path):
    a = Candidates(np.array([1, 2, 3, 4, 5, 6], np.int32), np.ones(6, np.float32), np.full(6, -1, np.int32), "a")
    b = Candidates(np.array([7, 8, 9, 1], np.int32), np.ones(4, np.float32), np.full(4, -1, np.int32), "b")
    merger = Merger(settings=MergeSettings(k=6, seen_weight=0.0)).set_shares({"a": 1.0, "b": 3.0})
    np.testing.assert_array_equal(merger.merge([a, b], seen=np.array([1])).items, [7, 8, 9, 2, 3, 4])  # shares .25/.75
    merger.set_shares({"a": 1.0, "b": 3.0}, head=("a", 2))  # a's first two unseen items lead, then the fused order
    np.testing.assert_array_equal(merger.merge([a, b], seen=np.array([1])).items, [2, 3, 7, 8, 9, 4])
    merger.save(tmp_path / "merger")
    assert Merger.load(tmp_path / "merger").head_ == ("a", 2)
    np.testing.assert_array_equal(Merger.load(tmp_path / "merger").merge([a, b], seen=np.array([1])).items, [2, 3, 7, 8, 9, 4])
    assert merger.set_shares({"a": 1.0}, head=("a", 0)).head_ is None
    with pytest.raises(ValueError, match="merge head \\('c', 2\\): needs a channel among \\['a', 'b'\\]"):
        merger.set_shares({"a": 1.0, "b": 1.0}, head=("c", 2))


def test_the_search_scores_the_head_exactly_as_the_merger_serves_it():
    rng = np.random.default_rng(3)
    n_users, names = 60, ("a", "b", "c")
    lists = {c: [rng.permutation(80)[:int(rng.integers(0, 30))] for _ in range(n_users)] for c in names}
    relevant = [rng.permutation(80)[:2] for _ in range(n_users)]
    seen = [rng.permutation(80)[:8] for _ in range(n_users)]
    r = recalled_from(lists, relevant, seen)
    for trial in range(12):
        raw, rho = rng.random(3) + 0.05, float(rng.choice([0.0, 0.3, 1.0, 3.0]))
        head = (int(rng.integers(3)), int(rng.choice([1, 5, 10])))
        merger = Merger(settings=MergeSettings(k=100)).set_shares(dict(zip(names, raw)), seen_weight=rho,
                                                                  head=(names[head[0]], head[1]))
        served = []
        for u in range(n_users):
            got = merger.merge([Candidates(lists[c][u].astype(np.int32), np.ones(len(lists[c][u]), np.float32),
                                           np.full(len(lists[c][u]), -1, np.int32), c) for c in names], seen=seen[u]).items
            at = np.flatnonzero(np.isin(got, relevant[u]))
            served.append(at[0] if at.size else np.inf)
        w = bounded(raw, merger.settings.min_share, merger.settings.max_share)
        np.testing.assert_array_equal(merged_positions(r, w, rho, head=head), served, err_msg=f"trial {trial}")

"""Merge: bounded shares, fusion by rank, dedupe with sources, seen items, CTR adaptation, log-name mapping,
and shares learned from validation hits on worlds whose channels have known quality."""
import numpy as np
import polars as pl
import pytest

from homefeed.recall.base import Candidates, Recaller
from homefeed.recall.evaluate import evaluate_recall
from homefeed.recall.itemcf import ItemCF
from homefeed.recall.merge import Merger, MergeSettings, bounded, channel_ctr, channel_map, largest_remainder
from homefeed.recall.popular import Popular
from homefeed.recall.retarget import Retarget, RetargetSettings
from homefeed.recall.shares import learn_merge, prune
from recall_fixtures import DAY, T0, dataset_from, tiny_dataset


def cands(channel, items, triggers=None):
    items = np.asarray(items, np.int32)
    scores = np.linspace(1.0, 0.5, items.size).astype(np.float32)
    trig = np.full(items.size, -1, np.int32) if triggers is None else np.asarray(triggers, np.int32)
    return Candidates(items, scores, trig, channel)


def log(**channels):
    """An exposure log with (shown, clicks) per channel."""
    rows = []
    for name, (shown, clicks) in channels.items():
        rows += [(name, int(i < clicks)) for i in range(shown)]
    return pl.DataFrame(rows, schema={"channel": pl.String, "clicked": pl.Int8}, orient="row")


def test_bounded_shares():
    np.testing.assert_allclose(bounded([1, 1, 10], 0.1, 0.5), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(bounded([1, 0, 0], 0.2, 1.0), [0.6, 0.2, 0.2])
    np.testing.assert_allclose(bounded([1, 2, 3], 0.0, 1.0), [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(bounded([5, 1], 0.0, 0.3), [0.5, 0.5])  # infeasible ceiling relaxed to 1/n
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        lo, hi = rng.random() * 0.2, 0.2 + rng.random() * 0.8
        x = bounded(rng.random(n) * rng.choice([0, 1, 100], n), lo, hi)
        assert x.sum() == pytest.approx(1.0)
        assert np.all(x >= min(lo, 1 / n) - 1e-9) and np.all(x <= max(hi, 1 / n) + 1e-9)


def test_largest_remainder():
    np.testing.assert_array_equal(largest_remainder(np.array([0.5, 0.3, 0.2]), 7), [4, 2, 1])  # 3.5 2.1 1.4
    np.testing.assert_array_equal(largest_remainder(np.array([0.5, 0.5]), 5), [3, 2])  # tie: the earlier channel
    assert largest_remainder(np.array([0.2, 0.3, 0.5]), 500).sum() == 500


def test_merge_fuses_by_rank_dedupes_and_credits_the_larger_term():
    a = cands("a", [1, 2, 3, 4, 5])
    b = cands("b", [2, 7, 8], triggers=[1, 1, 2])
    got = Merger(settings=MergeSettings(k=6)).merge([a, b])
    # shares 1/2: F(2) = .5/2 + .5/1 (both found it), F(1) = .5, F(7) = .25, F(3) = F(8) = 1/6 (tie: lower code)
    np.testing.assert_array_equal(got.items, [2, 1, 7, 3, 8, 4])
    np.testing.assert_array_equal(got.channel_names(), ["b", "a", "b", "a", "b", "a"])
    np.testing.assert_array_equal(got.triggers, [1, -1, 1, -1, 2, -1])
    np.testing.assert_array_equal(got.sources, [3, 1, 2, 1, 2, 1])  # item 2 came from both
    np.testing.assert_allclose(got.scores, [b.scores[0], a.scores[0], b.scores[1], a.scores[2], b.scores[2], a.scores[3]])
    assert got.counts() == {"a": 3, "b": 3}
    frame = got.to_frame()
    assert frame["n_sources"].to_list() == [2, 1, 1, 1, 1, 1] and frame["channel"][0] == "b"
    best_only = Merger(settings=MergeSettings(k=6, consensus=False)).merge([a, b])
    np.testing.assert_array_equal(best_only.items, [1, 2, 7, 3, 8, 4])  # F(2) = .5 ties item 1: lower code first


def test_shares_set_the_mix_at_every_depth_and_short_lists_leave_room():
    merger = Merger(settings=MergeSettings(k=10, quotas={"a": 3, "b": 1}))
    a, b = cands("a", range(1, 21)), cands("b", range(101, 121))
    assert merger.merge([a, b]).counts() == {"a": 8, "b": 2}  # b's rank r beats a's rank s when 3 (r + 1) < s + 1
    assert merger.merge([a, b], k=4).counts() == {"a": 3, "b": 1}
    assert merger.merge([a, cands("b", [101])]).counts() == {"a": 9, "b": 1}
    np.testing.assert_array_equal(merger.merge([a, cands("b", [])]).items, np.arange(1, 11))
    assert len(merger.merge([])) == 0
    assert merger.quotas(["a", "b"], 100) == {"a": 75, "b": 25}


def test_seen_items_are_scaled_dropped_or_kept():
    a, b = cands("a", [1, 2, 3, 4]), cands("b", [5, 6, 7, 8])
    keep = Merger(settings=MergeSettings(k=4))
    np.testing.assert_array_equal(keep.merge([a, b], seen=np.array([1, 5])).items, [1, 5, 2, 6])  # weight 1: no change
    drop = Merger(settings=MergeSettings(k=4, seen_weight=0.0))
    np.testing.assert_array_equal(drop.merge([a, b], seen=np.array([1, 5])).items, [2, 6, 3, 7])
    boost = Merger(settings=MergeSettings(k=3, seen_weight=3.0))
    np.testing.assert_array_equal(boost.merge([a, b], seen=np.array([4])).items, [1, 5, 4])  # 3 * .5 / 4 beats item 2's .5 / 2


def test_two_lists_from_one_channel_are_an_error():
    with pytest.raises(ValueError, match="two lists from one channel"):
        Merger().merge([cands("a", [1]), cands("a", [2])])


def test_adaptation_moves_shares_toward_ctr_smoothly_and_within_bounds():
    s = MergeSettings(quotas={"a": 1, "b": 1}, prior_strength=0.0, learning_rate=0.5, max_share=0.9, min_share=0.05)
    merger = Merger(settings=s).update(log(a=(1000, 100), b=(1000, 20)))
    # overall CTR 6%; target = [0.5 * 10/6, 0.5 * 2/6] normalised = [5/6, 1/6]; half way from [1/2, 1/2]
    assert merger.shares_ == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert merger.ctr_["a"]["ctr"] == pytest.approx(0.1)
    merger = Merger(settings=s.model_copy(update={"max_share": 0.95}))
    history = [merger.update(log(a=(1000, 100), b=(1000, 0))).shares_["b"] for _ in range(30)]
    assert history[:3] == pytest.approx([1 / 4, 1 / 8, 1 / 16])  # b is never clicked: it halves each step ...
    assert history[-1] == pytest.approx(0.05)  # ... to its floor, never to nothing
    bounded_above = Merger(settings=s.model_copy(update={"max_share": 0.7}))
    for _ in range(30):
        bounded_above.update(log(a=(1000, 100), b=(1000, 0)))
    assert bounded_above.shares_ == pytest.approx({"a": 0.7, "b": 0.3})


def test_daily_updates_weigh_recent_served_pages_most():
    s = MergeSettings(quotas={"a": 1, "b": 1}, prior_strength=0.0, learning_rate=0.5)
    old_good = log(a=(1000, 100), b=(1000, 0)).with_columns(ts=pl.lit(T0))
    new_good = log(a=(1000, 0), b=(1000, 100)).with_columns(ts=pl.lit(T0 + DAY))
    merger = Merger(settings=s).update_daily(pl.concat([new_good, old_good]))  # given out of order
    assert merger.shares_["b"] > 0.5 > merger.shares_["a"]  # the last day decides most


def test_smoothing_pulls_thin_channels_toward_the_overall_ctr():
    thin = channel_ctr(log(a=(10000, 500), b=(10, 5)), prior_strength=100.0)
    overall = 505 / 10010
    assert thin["b"]["smoothed_ctr"] == pytest.approx((5 + 100 * overall) / 110)
    merger = Merger(settings=MergeSettings(quotas={"a": 1, "b": 1}, learning_rate=1.0)).update(log(a=(10000, 500), b=(10, 5)))
    assert 0.5 < merger.shares_["b"] < 0.6  # a 50% CTR on 10 exposures earns little


def test_log_channel_names_map_to_served_channels():
    served = ["itemcf", "swing", "ranki2i", "popular", "mind", "mind1"]
    got = channel_map(["itemcf_like", "popular", "mind1_v2", "mind_v2", "crowd", "itemcfx", "hot"], served, {"hot": "popular"})
    assert got == {"itemcf_like": "itemcf", "popular": "popular", "mind1_v2": "mind1", "mind_v2": "mind", "crowd": None,
                   "itemcfx": None, "hot": "popular"}  # a prefix counts only at a word boundary
    s = MergeSettings(quotas={"itemcf": 1, "popular": 1, "crowd": 1}, prior_strength=0.0, learning_rate=1.0)
    merger = Merger(settings=s).update(log(itemcf_like=(100, 20), popular=(100, 4)))
    assert set(merger.ctr_) == {"itemcf", "popular"} and merger.ctr_["itemcf"]["log_names"] == ["itemcf_like"]
    assert merger.mapped_ == {"itemcf_like": "itemcf", "popular": "popular"}  # reported, and saved with the merger
    # crowd was not in the log: ratio 1; overall CTR 12%: itemcf 20/12, popular 4/12
    w = np.array([1 / 3, 1 / 3 * 20 / 12, 1 / 3 * 4 / 12])
    assert [merger.shares_[c] for c in ("crowd", "itemcf", "popular")] == pytest.approx(list(w / w.sum()))
    # an unknown channel gets the mean share (1/3) against itemcf's 5/9: 37.5 vs 62.5 slots, tie to the first
    assert merger.quotas(["itemcf", "mind"], 100) == {"itemcf": 63, "mind": 37}


def test_fit_on_the_shop_log_uses_its_channel_names_and_save_load(tmp_path):
    ds = tiny_dataset()  # exposures from popular, itemcf, crowd, retarget
    merger = Merger(settings=MergeSettings(k=8)).fit(ds, served=["itemcf", "swing", "crowd", "retarget", "popular"])
    assert set(merger.ctr_) == {"popular", "itemcf", "crowd", "retarget"}
    assert sum(merger.shares_.values()) == pytest.approx(1.0) and "swing" in merger.shares_
    merger.save(tmp_path / "merge.json")
    back = Merger.load(tmp_path / "merge.json")
    lists = [cands("itemcf", [1, 2, 3]), cands("crowd", [3, 4, 5, 6]), cands("popular", [1, 7, 8, 9, 10])]
    a, b = merger.merge(lists), back.merge(lists)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.channels, b.channels)
    assert np.unique(a.items).size == len(a) == 8


# --- shares learned from validation hits ------------------------------------------------------------

N_USERS, N_CLUSTERS, CLUSTER = 400, 100, 30


def planted_world(*, repeats: bool, seed: int = 0):
    """Users browse one cluster of items: 8 views on days 0-1, then 3 views on day 2 (valid) and 3 on day 3 (test).

    repeats: the later views go back to items the user viewed before (a shop where people return to
    what they looked at); otherwise they are new items of the cluster (a review log).
    """
    rng = np.random.default_rng(seed)
    events = []
    for u in range(1, N_USERS + 1):
        cluster = rng.integers(N_CLUSTERS)
        pool = 1 + cluster * CLUSTER + rng.permutation(CLUSTER)
        past = pool[:8]
        for n, item in enumerate(past):
            events.append((u, int(item), "pv", T0 + int(n * DAY / 4) + u))
        for day in (2, 3):
            later = rng.choice(past, 3, replace=False) if repeats else pool[8 + 3 * (day - 2):11 + 3 * (day - 2)]
            events += [(u, int(item), "pv", T0 + day * DAY + 600 * n + u) for n, item in enumerate(later)]
    return dataset_from(events, n_items=N_CLUSTERS * CLUSTER)


class Planted(Recaller):
    """A channel of known quality: each item the user acts on next day sits in its list with probability
    `quality`, at a random rank of the top 20; every other slot is a random item (at most 50). A test instrument."""

    def __init__(self, name: str, quality: float, seed: int):
        self.name, self.quality, self.seed = name, quality, seed

    def fit(self, dataset):
        ev = dataset.events
        self.next_ = {(u, d): items for u, d, items in
                      ev.group_by("user_id", (pl.col("ts") - T0) // DAY).agg("item_id").iter_rows()}
        self.n_items = dataset.n_items
        return self

    def recall(self, state, k):
        rng = np.random.default_rng([self.seed, state.user_id, state.now])
        k = min(k, 50)
        items = list(rng.permutation(np.arange(1, self.n_items))[:k])
        for item in self.next_.get((state.user_id, (state.now - T0) // DAY), []):
            if rng.random() < self.quality and item not in items[:20]:
                items.insert(int(rng.integers(20)), item)
        items = list(dict.fromkeys(items))[:k]
        return Candidates(np.array(items, np.int32), -np.arange(len(items), dtype=np.float32),
                          np.full(len(items), -1, np.int32), self.name)


def test_learned_shares_beat_equal_shares_and_useless_channels_fall_to_the_floor():
    ds = planted_world(repeats=False)
    channels = {name: Planted(name, q, seed).fit(ds) for name, q, seed in
                [("useless", 0.0, 1), ("fair", 0.3, 2), ("good", 0.6, 3), ("noise", 0.0, 4)]}
    settings = MergeSettings(k=200, seen_weight=1.0)
    learned = learn_merge(ds, channels, settings)
    floor = learned.weights(["useless", "noise", "fair", "good"])
    assert floor[0] == floor[1] == pytest.approx(settings.min_share)  # hits nothing: the floor, by itself
    assert learned.shares_["good"] > learned.shares_["fair"] > settings.min_share
    assert learned.learned_["marginal"]["useless"] == pytest.approx(0.0)
    equal = Merger(settings=settings)
    on_test = {m: evaluate_recall(ds, channels, merger, ks=(10, 50))
               for m, merger in (("learned", learned), ("equal", equal))}
    for k, margin in ((10, 0.1), (50, 0.02)):  # equal shares fill a third of every depth with noise
        learned_hr, equal_hr = on_test["learned"]["merged"][f"hitrate@{k}"], on_test["equal"]["merged"][f"hitrate@{k}"]
        assert learned_hr > equal_hr + margin, (k, learned_hr, equal_hr)
        assert learned_hr >= on_test["learned"]["channels"]["good"][f"hitrate@{k}"]


def test_a_channel_with_the_same_lists_gets_no_second_share():
    ds = planted_world(repeats=False)
    good = Planted("good", 0.6, 3).fit(ds)
    twin = Planted("twin", 0.6, 3).fit(ds)
    twin.name = "twin"
    learned = learn_merge(ds, {"good": good, "fair": Planted("fair", 0.3, 2).fit(ds), "twin": twin},
                          MergeSettings(seen_weight=1.0))
    assert learned.learned_["duplicates"] == {"twin": "good"}
    assert learned.shares_["twin"] == pytest.approx(learned.settings.min_share)


@pytest.mark.parametrize("repeats", [True, False])
def test_repeat_consumption_is_learned_per_log(repeats):
    ds = planted_world(repeats=repeats)
    retarget = Retarget(settings=RetargetSettings(weights={"pv": 1.0}, window_days=7, quota=50)).fit(ds)
    channels = {"itemcf": ItemCF().fit(ds), "retarget": retarget, "popular": Popular().fit(ds)}
    merger = learn_merge(ds, channels, MergeSettings())
    floor = merger.settings.min_share
    if repeats:  # users come back to what they viewed: seen items stay
        assert merger.learned_["repeat_share"] == 1.0
        assert merger.seen_weight_ >= 1.0
    else:  # seen items never come back: they are dropped, and retarget (which only has seen items) sits at the floor
        assert merger.learned_["repeat_share"] == 0.0
        assert merger.seen_weight_ == 0.0 and merger.shares_["retarget"] == pytest.approx(floor, rel=0.01)
    other = Merger(settings=MergeSettings(seen_weight=0.0 if repeats else 1.0)).set_shares(merger.shares_)
    learned_hr, other_hr = (evaluate_recall(ds, channels, m, ks=(10,))["merged"]["hitrate@10"] for m in (merger, other))
    assert learned_hr > other_hr + 0.1  # the wrong choice on test costs a lot


def test_the_recall_part_learns_on_validation_then_refits_on_train_and_valid(tmp_path):
    from homefeed.recall.part import RecallPart, RecallSettings

    ds = tiny_dataset()  # validation day 2, exposures from the shop's channels
    part = RecallPart().fit(ds, RecallSettings(channels=["itemcf", "retarget", "popular"]))
    assert part.merger.learned_["users"] > 0 and set(part.merger.learned_["solo"]) == {"itemcf", "retarget", "popular"}
    assert part.channels["popular"].t_end_ == ds.split.valid_end  # served from everything before the test day
    assert "itemcf" in part.merger.ctr_  # the shop logs `itemcf`, mapped after learning
    part.save(tmp_path / "recall")
    assert RecallPart.load(tmp_path / "recall").merger.shares_ == pytest.approx(part.merger.shares_)
    plain = RecallPart().fit(ds, RecallSettings(channels=["itemcf", "popular"], merge=MergeSettings(learn=False)))
    assert plain.merger.learned_ == {} and plain.channels["popular"].t_end_ == ds.split.train_end


class SeenFirst(Planted):
    """A Planted channel whose lists start with every item the user already viewed (never relevant in a review-like log)."""

    def recall(self, state, k):
        rest = super().recall(state, k)
        seen = np.unique(state.items).astype(np.int32)
        items = np.concatenate([seen, rest.items[~np.isin(rest.items, seen)]])[:k]
        return Candidates(items, -np.arange(items.size, dtype=np.float32), np.full(items.size, -1, np.int32), self.name)


def test_a_channel_alone_is_judged_under_its_better_protocol():
    ds = planted_world(repeats=False)  # users never come back to what they viewed
    channels = {"fair": Planted("fair", 0.3, 2).fit(ds), "seen_first": SeenFirst("seen_first", 0.6, 3).fit(ds)}
    learned = learn_merge(ds, channels, MergeSettings(k=200))
    solo = learned.learned_["solo"]
    # kept, its 8 seen items fill the top 8 and its hits sit below: HR@10 would look worse than fair's
    assert solo["seen_first"]["hitrate@10"] > solo["fair"]["hitrate@10"] + 0.1
    assert learned.seen_weight_ == 0.0 and learned.shares_["seen_first"] > learned.shares_["fair"]


def test_a_channel_of_seen_items_only_falls_to_the_floor_where_users_never_return():
    ds = planted_world(repeats=False)
    retarget = Retarget(settings=RetargetSettings(weights={"pv": 1.0}, window_days=7, quota=50)).fit(ds)
    channels = {"good": Planted("good", 0.6, 3).fit(ds), "fair": Planted("fair", 0.3, 2).fit(ds), "retarget": retarget,
                "noise": Planted("noise", 0.0, 4).fit(ds)}
    learned = learn_merge(ds, channels, MergeSettings(k=200))
    floor = learned.settings.min_share
    assert learned.shares_["retarget"] == pytest.approx(floor) and learned.shares_["noise"] == pytest.approx(floor)
    assert all(learned.learned_["marginal"][c] > 0 for c in ("good", "fair") if learned.shares_[c] > floor)


def test_prune_sends_channels_that_buy_nothing_to_the_floor_weakest_first():
    gain = np.array([0.5, 0.2, 0.001, 0.0])  # what each channel's weight adds to the objective
    objective = lambda w, rho, head=None: np.array([gain[w > 0].sum()])  # one user's score
    w, current = prune(objective, np.array([1.0, 0.5, 0.25, 2.0]), 1.0, objective(np.ones(4), 1.0), tol=0.002)
    assert w.tolist() == [1.0, 0.5, 0.0, 0.0] and current.mean() == pytest.approx(0.7)
    w, _ = prune(lambda w, rho, head=None: np.zeros(1), np.array([0.0, 1.0, 1.0]), 1.0, np.zeros(1), tol=0.002)
    assert np.count_nonzero(w) == 1  # one channel always stays

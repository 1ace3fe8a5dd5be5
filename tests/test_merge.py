"""Merge: bounded shares, quotas, interleaving by rank, dedupe with sources, fill, CTR-driven adaptation."""
import numpy as np
import polars as pl
import pytest

from homefeed.recall.base import Candidates
from homefeed.recall.merge import Merger, MergeSettings, bounded, channel_ctr, largest_remainder
from recall_fixtures import tiny_dataset


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


def test_merge_interleaves_dedupes_and_credits_the_earlier_rank():
    merger = Merger(settings=MergeSettings(k=6))
    a = cands("a", [1, 2, 3, 4, 5])
    b = cands("b", [2, 7, 8], triggers=[1, 1, 2])
    got = merger.merge([a, b])
    # quotas 3 + 3; keys (rank + 1) / 3: item 2 is rank 0 in b but rank 1 in a, so b gets it
    np.testing.assert_array_equal(got.items, [1, 2, 7, 3, 8, 4])
    np.testing.assert_array_equal(got.channel_names(), ["a", "b", "b", "a", "b", "a"])
    np.testing.assert_array_equal(got.triggers, [-1, 1, 1, -1, 2, -1])
    np.testing.assert_array_equal(got.sources, [1, 3, 2, 1, 2, 1])  # item 2 came from both
    np.testing.assert_allclose(got.scores, [a.scores[0], b.scores[0], b.scores[1], a.scores[2], b.scores[2], a.scores[3]])
    assert got.counts() == {"a": 3, "b": 3}
    frame = got.to_frame()
    assert frame["n_sources"].to_list() == [1, 2, 1, 1, 1, 1] and frame["channel"][1] == "b"


def test_quotas_follow_shares_and_spare_slots_are_filled():
    merger = Merger(settings=MergeSettings(k=10, quotas={"a": 3, "b": 1}, max_share=1.0))
    a, b = cands("a", range(1, 21)), cands("b", range(101, 121))
    assert merger.merge([a, b]).counts() == {"a": 8, "b": 2}  # 0.75 / 0.25 of 10 -> 7.5 / 2.5, tie to a
    short = cands("b", [101])
    assert merger.merge([a, short]).counts() == {"a": 9, "b": 1}
    strict = Merger(settings=MergeSettings(k=10, quotas={"a": 3, "b": 1}, max_share=1.0, fill=False))
    assert len(strict.merge([a, short])) == 9
    np.testing.assert_array_equal(merger.merge([a, cands("b", [])]).items, np.arange(1, 11))
    assert len(merger.merge([])) == 0


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


def test_smoothing_pulls_thin_channels_toward_the_overall_ctr():
    thin = channel_ctr(log(a=(10000, 500), b=(10, 5)), prior_strength=100.0)
    overall = 505 / 10010
    assert thin["b"]["smoothed_ctr"] == pytest.approx((5 + 100 * overall) / 110)
    merger = Merger(settings=MergeSettings(quotas={"a": 1, "b": 1}, learning_rate=1.0)).update(log(a=(10000, 500), b=(10, 5)))
    assert 0.5 < merger.shares_["b"] < 0.6  # a 50% CTR on 10 exposures earns little


def test_unmeasured_and_unknown_channels_and_aliases():
    s = MergeSettings(quotas={"itemcf": 1, "popular": 1, "crowd": 1}, aliases={"itemcf_like": "itemcf"},
                      prior_strength=0.0, learning_rate=1.0, max_share=1.0)
    merger = Merger(settings=s).update(log(itemcf_like=(100, 20), popular=(100, 4)))
    assert set(merger.ctr_) == {"itemcf", "popular"}
    # crowd was not in the log: ratio 1; overall CTR 12%: itemcf 20/12, popular 4/12
    w = np.array([1 / 3, 1 / 3 * 20 / 12, 1 / 3 * 4 / 12])
    assert [merger.shares_[c] for c in ("crowd", "itemcf", "popular")] == pytest.approx(list(w / w.sum()))
    # an unknown channel gets the mean share (1/3) against itemcf's 5/9: 37.5 vs 62.5 slots, tie to the first
    assert merger.shares_["itemcf"] == pytest.approx(5 / 9)
    assert merger.quotas(["itemcf", "mind"], 100) == {"itemcf": 63, "mind": 37}


def test_fit_on_dataset_and_save_load(tmp_path):
    ds = tiny_dataset()
    merger = Merger(settings=MergeSettings(k=8)).fit(ds)
    assert set(merger.ctr_) == {"popular", "itemcf", "crowd", "retarget"}
    assert sum(merger.shares_.values()) == pytest.approx(1.0)
    merger.save(tmp_path / "merge.json")
    back = Merger.load(tmp_path / "merge.json")
    lists = [cands("itemcf", [1, 2, 3]), cands("crowd", [3, 4, 5, 6]), cands("popular", [1, 7, 8, 9, 10])]
    a, b = merger.merge(lists), back.merge(lists)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.channels, b.channels)
    assert np.unique(a.items).size == len(a) == 8

"""Scattering: every window obeys every rule, the score-loss bound holds, channels never repeat items."""
import numpy as np
import polars as pl
import pytest

from homefeed.mechanism.scatter import ItemAttributes, Rule, scatter, window_violations


def attrs_for(n, rng, n_cat=6, n_brand=5, n_group=None):
    items = pl.DataFrame({
        "item_id": np.arange(1, n + 1),
        "standard_category": rng.integers(0, n_cat, n),
        "brand": rng.integers(0, n_brand, n),
        "image_group": np.arange(n) if n_group is None else rng.integers(0, n_group, n),
    })
    return items, ItemAttributes.from_items(items, dims=("item_id", "standard_category", "brand", "image_group"))


def test_hand_made_list_is_interleaved_by_category():
    # scores favour category 0 heavily; window 2 / max 1 forces alternation while both categories last
    items = pl.DataFrame({"item_id": [1, 2, 3, 4, 5, 6], "standard_category": [0, 0, 0, 1, 1, 1]})
    attrs = ItemAttributes.from_items(items, dims=("item_id", "standard_category"))
    rules = [Rule(dim="item_id", window=0, max_count=1, hard=True), Rule(dim="standard_category", window=2, max_count=1)]
    page = scatter(np.array([1, 2, 3, 4, 5, 6]), np.array([6.0, 5, 4, 3, 2, 1]), attributes=attrs,
                   layout=np.zeros(6, int), rules=rules, max_loss=None)
    assert page.items.tolist() == [1, 4, 2, 5, 3, 6]
    assert not page.relaxed.any()


@pytest.mark.parametrize("seed", range(5))
def test_every_window_holds_on_random_pages(seed):
    rng = np.random.default_rng(seed)
    items, attrs = attrs_for(300, rng, n_cat=12, n_brand=10, n_group=250)
    rules = [Rule(dim="item_id", window=0, max_count=1, hard=True), Rule(dim="image_group", window=0, max_count=1, hard=True),
             Rule(dim="standard_category", window=4, max_count=1), Rule(dim="brand", window=5, max_count=2)]
    n_slots, per_slot = 4, 8
    cand = rng.integers(1, 301, 500)  # items may be candidates of several slots
    slots = rng.integers(0, n_slots, 500)
    scores = rng.random(500)
    layout = np.tile(np.arange(n_slots), per_slot)
    page = scatter(cand, scores, slots, attributes=attrs, layout=layout, rules=rules, max_loss=None)
    assert (page.rows >= 0).all() and not page.relaxed.any()
    assert (slots[page.rows] == layout).all()  # each position filled from its own slot's candidates
    values = attrs.lookup(page.items)
    for r in rules:
        assert window_violations(values[:, attrs.column(r.dim)], window=r.window, max_count=r.max_count) == 0, r


def test_two_channels_never_show_the_same_or_near_identical_item():
    # items 1 and 2 are near-duplicates (one image group); both are the top candidate of both channels
    items = pl.DataFrame({"item_id": [1, 2, 3, 4, 5], "image_group": [7, 7, 8, 9, 10]})
    attrs = ItemAttributes.from_items(items, dims=("item_id", "image_group"))
    rules = [Rule(dim="item_id", window=0, hard=True), Rule(dim="image_group", window=0, hard=True)]
    cand = np.array([1, 2, 3, 1, 2, 4, 5])
    slots = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([9.0, 8, 1, 9, 8, 2, 1])
    page = scatter(cand, scores, slots, attributes=attrs, layout=np.array([0, 1, 0, 1]), rules=rules)
    assert page.items.tolist() == [1, 4, 3, 5]


def test_score_loss_bound_relaxes_the_soft_rule_instead_of_digging_deep():
    items = pl.DataFrame({"item_id": [1, 2, 3], "brand": [5, 5, 6]})
    attrs = ItemAttributes.from_items(items, dims=("item_id", "brand"))
    rules = [Rule(dim="item_id", hard=True), Rule(dim="brand", window=2, max_count=1)]
    scores = np.array([1.0, 0.9, 0.1])  # the other brand scores 0.1: far below 0.9 - 0.5 * 0.9
    bounded = scatter(np.array([1, 2, 3]), scores, attributes=attrs, layout=np.zeros(2, int), rules=rules, max_loss=0.5)
    assert bounded.items.tolist() == [1, 2] and bounded.relaxed.tolist() == [False, True]
    free = scatter(np.array([1, 2, 3]), scores, attributes=attrs, layout=np.zeros(2, int), rules=rules, max_loss=None)
    assert free.items.tolist() == [1, 3] and not free.relaxed.any()


def test_hard_rules_leave_a_position_empty_rather_than_break():
    items = pl.DataFrame({"item_id": [1, 2], "image_group": [3, 3]})
    attrs = ItemAttributes.from_items(items, dims=("item_id", "image_group"))
    rules = [Rule(dim="item_id", hard=True), Rule(dim="image_group", hard=True)]
    page = scatter(np.array([1, 2]), np.array([2.0, 1.0]), attributes=attrs, layout=np.zeros(2, int), rules=rules)
    assert page.items.tolist() == [1, -1] and np.isnan(page.scores[1])


def test_missing_values_never_collide_and_exclude_is_respected():
    items = pl.DataFrame({"item_id": [1, 2, 3], "venue": [None, None, 4]})
    attrs = ItemAttributes.from_items(items, dims=("item_id", "venue"))
    rules = [Rule(dim="item_id", hard=True), Rule(dim="venue", window=0, max_count=1, hard=True)]
    page = scatter(np.array([1, 2, 3]), np.array([3.0, 2, 1]), attributes=attrs, layout=np.zeros(3, int), rules=rules)
    assert page.items.tolist() == [1, 2, 3]
    page = scatter(np.array([1, 2, 3]), np.array([3.0, 2, 1]), attributes=attrs, layout=np.zeros(3, int), rules=rules,
                   exclude=np.array([True, False, False]))
    assert page.items.tolist() == [2, 3, -1]


def test_unknown_dimension_names_the_valid_ones():
    items, attrs = attrs_for(5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="valid: item_id, standard_category, brand, image_group"):
        scatter(np.array([1]), np.array([1.0]), attributes=attrs, layout=np.zeros(1, int), rules=[Rule(dim="colour")])


def test_window_violations_counts_by_hand():
    assert window_violations(np.array([1, 1, 2, 1]), window=2, max_count=1) == 1
    assert window_violations(np.array([1, 2, 1, 2]), window=3, max_count=1) == 2
    assert window_violations(np.array([1, -1, -1, 1]), window=0, max_count=1) == 1

"""Truth-scored checks on the `tiny` shop: categories, image groups, blocking periods, and the on/off replay."""
import numpy as np
import polars as pl
import pytest

from homefeed.mechanism import MechanismConfig, evaluate as ev
from homefeed.mechanism.image_dedup import ImageConfig
from homefeed.world import WorldSpec, generate

FAST_IMAGES = ImageConfig(steps=120, threads=2)  # a short training run: tests stay fast; `small` figures are in the report


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_world")
    generate(WorldSpec.preset("tiny", seed=11), out)
    return ev.Shop.load(out)


@pytest.fixture(scope="module")
def learned(shop):
    cats, scores = ev.score_categories(shop)
    periods, period_scores = ev.score_periods(shop, cats)
    return cats, scores, periods, period_scores


def test_standard_categories_match_the_truth(learned):
    _, scores, _, _ = learned
    assert scores["standard_category_ari"] >= 0.9
    assert scores["standard_category_f1"] >= 0.9
    assert scores["standard_category_ari_behavior"] >= 0.9
    assert 0.3 < scores["standard_category_ari_names"] < 1.0  # names alone are ambiguous (shared modifiers)


def test_blocking_periods_are_clipped_and_explained(learned):
    _, _, periods, _ = learned
    t = periods.table
    cfg = MechanismConfig().purchase
    assert t["block_days"].is_between(cfg.min_days, cfg.max_days).all()
    assert set(t["source"]) <= {"estimated", "long", "default"}
    assert (t.filter(pl.col("source") == "estimated")["n_rebuys"] > 0).all()


def test_image_groups_find_near_duplicates(shop):
    groups, scores = ev.score_images(shop, config=FAST_IMAGES)
    assert groups.table.height == shop.items.height
    # even a short training run groups far better than chance (a random pairing has precision ~ 1 / n_items)
    assert scores["image_pair_precision"] >= 0.5 and scores["image_pair_recall"] >= 0.2, scores
    assert scores["image_exact_cosine_recall"] >= scores["image_pair_recall"] - 0.05


def test_replay_mechanism_on_beats_off_on_every_page_figure(shop, learned):
    cats, _, periods, _ = learned
    res = ev.replay(shop, cats, None, periods, n_requests=200)
    on, off = res["on"], res["off"]
    assert on["duplicate_rate"] == 0.0 < off["duplicate_rate"]
    assert on["distinct_standard_per_page"] > off["distinct_standard_per_page"] + 1
    assert on["intra_list_similarity"] < off["intra_list_similarity"]
    assert on["just_purchased_share"] < off["just_purchased_share"]
    assert on["filled_share"] >= 0.98 and 0.5 < on["score_kept"] <= 1.0

"""Metrics against hand-computed values and a brute-force reference."""
import itertools

import numpy as np
import pytest

from homefeed.evaluate import metrics as m


def brute_auc(y, p):
    pos = [pi for yi, pi in zip(y, p) if yi]
    neg = [pi for yi, pi in zip(y, p) if not yi]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 1)  # many ties
    assert m.auc(y, p) == pytest.approx(brute_auc(y, p))


def test_gauc_weights_users_by_rows_and_skips_single_class_users():
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    p = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.4])
    g = np.array([1, 1, 2, 2, 2, 3, 3])  # user 3 has only positives: skipped
    expected = (2 * 1.0 + 3 * brute_auc([0, 1, 0], [0.8, 0.2, 0.5])) / 5
    assert m.gauc(y, p, g) == pytest.approx(expected)


def test_topk_hand_computed():
    rec = np.array([[3, 1, 7], [2, 5, -1], [4, 4, 4]])
    relevant = [np.array([1, 7]), np.array([9]), np.array([], dtype=int)]
    out = m.topk_metrics(rec, relevant, ks=(1, 3))
    assert out["users_evaluated"] == 2
    assert out["hitrate@1"] == 0.0 and out["hitrate@3"] == 0.5
    assert out["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    ndcg_user0 = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert out["ndcg@3"] == pytest.approx(ndcg_user0 / 2)


def test_coverage_long_tail_and_served():
    rec = np.array([[0, 1, -1], [-1, -1, -1]])
    assert m.coverage(rec, 10) == pytest.approx(0.2)
    pop = np.array([100, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # top 20% = items 0 and 1 (stable tie order)
    assert m.long_tail_share(np.array([[0, 5, 6, 1]]), pop) == pytest.approx(0.5)
    assert m.users_served(rec) == 1


def test_logloss_and_calibration():
    y = np.array([1, 0])
    p = np.array([0.5, 0.5])
    assert m.logloss(y, p) == pytest.approx(np.log(2))
    assert m.calibration(y, p) == pytest.approx(1.0)
    assert m.calibration(np.array([1, 0, 0, 0]), np.full(4, 0.5)) == pytest.approx(2.0)

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


def test_calibration_bins_and_ece_hand_computed():
    y = np.array([1, 0, 1, 1])
    p = np.array([0.9, 0.1, 0.15, 0.8])
    bins = m.calibration_bins(y, p, n_bins=2)
    assert bins["rows"].tolist() == [2, 2]
    assert bins["predicted"] == pytest.approx([0.125, 0.85]) and bins["observed"] == pytest.approx([0.5, 1.0])
    assert m.ece(y, p, n_bins=2) == pytest.approx((2 * 0.375 + 2 * 0.15) / 4)
    assert np.isnan(m.calibration_bins(y, p, n_bins=4)["predicted"][1])  # an empty bin is nan, not 0


def test_ece_is_zero_for_the_rate_and_grows_with_overconfidence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000)
    assert m.ece(y, np.full(1000, y.mean())) == pytest.approx(0.0, abs=1e-12)
    truth = rng.random(5000)
    y = (rng.random(5000) < truth).astype(int)
    sharp = 1 / (1 + (1 / truth - 1) ** 3)  # sigmoid(3 logit): the same ranking, overconfident probabilities
    assert m.ece(y, truth) < 0.03 < 0.1 < m.ece(y, sharp)
    assert m.auc(y, sharp) == pytest.approx(m.auc(y, truth))  # AUC alone cannot tell them apart


def test_calibration_bins_reject_non_probabilities():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        m.ece(np.array([0, 1]), np.array([0.2, 1.3]))
    with pytest.raises(ValueError, match="shape"):
        m.ece(np.array([0, 1, 1]), np.array([0.2, 0.3]))


def test_ctr_metrics_report_calibration():
    y = np.array([1, 0, 0, 0])
    out = m.ctr_metrics(y, np.full(4, 0.5), np.array([1, 1, 2, 2]))
    assert out["predicted_mean"] == 0.5 and out["observed_rate"] == 0.25 and out["calibration"] == pytest.approx(2.0)
    assert out["ece"] == pytest.approx(0.25) and out["rows"] == 4

"""link_breakdown: the degree and shared-neighbour splits of labelled pairs, on hand-checked graphs."""
from __future__ import annotations

import numpy as np
import pytest

from homefeed.recall.graph.diagnostics import link_breakdown
from homefeed.recall.graph.graph import ItemGraph


def star_and_path() -> ItemGraph:
    # hub 1 with leaves 2, 3, 4 (one-way edges: the split takes them both ways), and a path 5 -> 6 -> 7
    return ItemGraph.from_edges([1, 1, 1, 5, 6], [2, 3, 4, 6, 7], [1.0] * 5, 8)


def test_bins_shares_and_per_bin_auc():
    g = star_and_path()
    pairs = np.array([[2, 3], [5, 7], [2, 6], [3, 5]])  # shared neighbour 1; shared 6; none; none
    labels = np.array([1, 1, 0, 0])
    score = np.array([0.9, 0.1, 0.5, 0.2])  # right inside "some" (the two positives both share) ...
    out = link_breakdown(g, pairs, labels, {"s": score})
    assert out["common"]["some"]["pos_share"] == 1.0 and out["common"]["some"]["neg_share"] == 0.0
    assert out["common"]["some"]["s"] is None and out["common"]["none"]["s"] is None  # one class each: no AUC
    # min degree: (2,3) -> 1, (5,7) -> 1, (2,6) -> 1, (3,5) -> 1 ... all leaves: one bin with every pair
    assert out["min_degree"]["1"]["pos_share"] == 1.0 and out["min_degree"]["1"]["neg_share"] == 1.0
    assert out["min_degree"]["1"]["s"] == pytest.approx(0.5)  # .9 beats both negatives, .1 neither
    assert out["min_degree"]["10+"]["s"] is None and "0" not in out["min_degree"]


def test_degree_counts_distinct_neighbours_both_ways_and_isolated_ends():
    g = ItemGraph.from_edges([1, 2, 1, 3, 3], [2, 1, 3, 4, 5], [1.0] * 5, 7)  # 1~2 both ways counts once
    pairs = np.array([[1, 3], [2, 6], [1, 4], [2, 5]])
    labels = np.array([1, 0, 1, 0])
    out = link_breakdown(g, pairs, labels, {"s": np.array([1.0, 0.0, 1.0, 0.0])})
    # degrees: 1 -> {2, 3} = 2, 3 -> {1, 4, 5} = 3, 2 -> 1, 4 -> 1, 5 -> 1, 6 -> 0
    assert out["min_degree"]["2"]["pos_share"] == 0.5  # (1, 3)
    assert out["min_degree"]["0"]["neg_share"] == 0.5  # (2, 6): 6 has no training edge
    assert out["min_degree"]["1"]["s"] == 1.0  # (1, 4) against (2, 5)
    assert out["common"]["some"]["pos_share"] == 0.5  # 1 and 4 share 3; 1 and 3 share none


def test_errors_name_the_problem():
    g = star_and_path()
    with pytest.raises(ValueError, match="pairs must be"):
        link_breakdown(g, np.array([1, 2]), np.array([1]), {})
    with pytest.raises(ValueError, match="pair ends"):
        link_breakdown(g, np.array([[1, 9]]), np.array([1]), {})
    with pytest.raises(ValueError, match="score 's'"):
        link_breakdown(g, np.array([[1, 2]]), np.array([1]), {"s": np.zeros(3)})

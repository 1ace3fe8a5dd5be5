"""Graph partitioning (METIS, label propagation + packing) and sub-graph parallel training."""
from __future__ import annotations

import os

import numpy as np
import pytest

from graph_fixtures import planted
from homefeed.recall.graph.embed import PartitionSettings, embed_graph
from homefeed.recall.graph.graph import ItemGraph
from homefeed.recall.graph.partition import cut_share, has_metis, pack_communities, partition_graph
from homefeed.recall.graph.skipgram import TrainSettings
from homefeed.recall.graph.walks import WalkSettings
from homefeed.recall.graph_evaluate import holdout_edges, pair_auc

WALKS = WalkSettings(walks_per_node=10, length=20, seed=0)
TRAIN = TrainSettings(dim=16, epochs=2, batch_size=256, lr=0.05, subsample=0.0, seed=0)
AUC_TOLERANCE = 0.05  # partitioned training may lose at most this much link-prediction AUC here


def test_pack_communities_by_hand():
    labels = np.array([5, 5, 5, 8, 8, 2])
    assert pack_communities(labels, 2).tolist() == [0, 0, 0, 1, 1, 1]  # 3 | 2 + 1
    big = pack_communities(np.zeros(6, int), 2)  # one community bigger than N / P is cut in pieces
    assert np.bincount(big).tolist() == [3, 3]


METHODS = ["label_propagation"] + (["metis"] if has_metis() else [])


@pytest.mark.parametrize("method", METHODS)
def test_partitions_recover_planted_communities(method):
    graph, comm, _ = planted(n_comm=4, size=20, p_in=0.5, p_out=0.005, seed=1)
    parts = partition_graph(graph, 4, method=method, seed=0)
    assert parts.shape == (graph.n_nodes,) and set(np.unique(parts)) == {0, 1, 2, 3}
    sizes = np.bincount(parts[1:], minlength=4)
    assert sizes.min() >= 16 and sizes.max() <= 24, sizes
    assert cut_share(graph, parts) < 0.1
    purity = np.mean([np.bincount(parts[comm == c]).max() / 20 for c in range(4)])
    assert purity >= 0.9


def test_partition_errors_and_trivial_cases():
    g = ItemGraph.from_edges([1], [2], [1.0], 4)
    with pytest.raises(ValueError, match="valid methods"):
        partition_graph(g, 2, method="spectral")
    assert partition_graph(g, 1).tolist() == [0, 0, 0, 0]
    assert cut_share(g, np.array([0, 0, 1, 0])) == 1.0


SLOW = pytest.mark.skipif(not os.environ.get("HOMEFEED_SLOW_TESTS"),
                          reason="spawns 2 worker processes (~30 s of imports on a loaded 2-core machine); "
                                 "set HOMEFEED_SLOW_TESTS=1")


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=SLOW)])
def test_partitioned_training_stays_close_to_unpartitioned(workers):
    graph, _, side = planted(n_comm=4, size=20, p_in=0.4, p_out=0.02, seed=2)
    train_graph, pairs, labels = holdout_edges(graph, share=1 / 3, seed=0)
    whole = embed_graph(train_graph, side, mode="eges", walks=WALKS, train=TRAIN)
    parted = embed_graph(train_graph, side, mode="eges", walks=WALKS, train=TRAIN,
                         partition=PartitionSettings(parts=2, method="label_propagation", workers=workers))
    auc_whole, auc_parted = pair_auc(whole.vectors, pairs, labels), pair_auc(parted.vectors, pairs, labels)
    assert auc_whole > 0.8
    assert auc_parted > auc_whole - AUC_TOLERANCE, (auc_whole, auc_parted)
    assert parted.log["parts"] == 2 and parted.log["workers"] == workers and 0 <= parted.log["cut_share"] < 0.2
    assert parted.warm.sum() == whole.warm.sum()

"""Recall II: item vectors from the session graph (DeepWalk, GES, EGES), recalled by nearest inner product.

    graph.py      sessions -> weighted directed item graph (CSR)
    walks.py      alias-sampled weighted (node2vec-biased) random walks, numba; the walk corpus
    skipgram.py   skip-gram with negative sampling in PyTorch, hand-written sparse SGD
    eges.py       side information and the (E)GES encoder; cold-start vectors
    partition.py  METIS / label-propagation partitions;  parallel.py  sub-graph parallel training
    embed.py      the pipeline graph -> vectors;  channel.py  the `deepwalk` and `eges` recall channels
"""
from homefeed.recall.graph.channel import EGES, DeepWalk, DeepWalkSettings, EGESSettings
from homefeed.recall.graph.eges import EGESModel, SideInfo, side_information
from homefeed.recall.graph.embed import Embedding, PartitionSettings, embed_graph
from homefeed.recall.graph.graph import GraphSettings, ItemGraph, build_graph
from homefeed.recall.graph.partition import partition_graph
from homefeed.recall.graph.skipgram import TrainSettings, train_skipgram
from homefeed.recall.graph.walks import WalkCorpus, WalkSettings, random_walks

__all__ = ["DeepWalk", "DeepWalkSettings", "EGES", "EGESModel", "EGESSettings", "Embedding", "GraphSettings",
           "ItemGraph", "PartitionSettings", "SideInfo", "TrainSettings", "WalkCorpus", "WalkSettings", "build_graph",
           "embed_graph", "partition_graph", "random_walks", "side_information", "train_skipgram"]

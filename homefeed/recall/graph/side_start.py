"""EGES's start of the mix, picked per graph on a validation split of its own edges (never the test edges).

`EGESModel.start_attention` starts item v's weights in proportion to [d_v, prior * g_j], g_j a measure
of how much side field j tells about an edge's ends. Which measure suits a log is a property of its
data: Cohen's kappa cannot tell how specific a value is, information gain can, yet gain x 25 gave
most of the mix to the leaf on Taobao (one or two neighbours an item) and cost .03-.06 cosine AUC
there, while it lifted Toys above DeepWalk. So each candidate (kappa x prior, gain x 5 prior) trains on
the graph less a held-out share of its edges (`graph_evaluate.holdout_edges`, the link protocol's
split: ends stay connected, negatives drawn from the same ends) and the one whose vectors score the
held-out edges best (mean of the cosine and the skip-gram context AUC) starts the real training.

    >>> train, report = pick_side_start(graph, side, walks=walks, train=train)   # doctest: +SKIP
    >>> report   # {"kappa": 0.91, "information": 0.87, "picked": "kappa", "validation_edges": 812}
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from homefeed.recall.graph.eges import SideInfo
from homefeed.recall.graph.graph import ItemGraph
from homefeed.recall.graph.skipgram import TrainSettings
from homefeed.recall.graph.walks import WalkSettings

SideStart = Literal["validation", "settings"]
SIDE_STARTS: tuple[str, ...] = ("validation", "settings")
GAIN_PER_KAPPA = 5.0  # the information-gain candidate's prior, per unit of the kappa prior (25 for the default 5)
VALIDATION_SHARE = 0.2  # share of the graph's unordered edges held out to pick the start


def candidates(train: TrainSettings) -> dict[str, TrainSettings]:
    """The starts tried: kappa x side_prior and information gain x GAIN_PER_KAPPA side_prior."""
    return {"kappa": train.model_copy(update={"side_measure": "kappa"}),
            "information": train.model_copy(update={"side_measure": "information",
                                                    "side_prior": GAIN_PER_KAPPA * train.side_prior})}


def pick_side_start(graph: ItemGraph, side: SideInfo, *, walks: WalkSettings, train: TrainSettings,
                    vectors: str = "sum", share: float = VALIDATION_SHARE) -> tuple[TrainSettings, dict]:
    """(the training settings of the best start, a report {candidate: validation AUC, "picked", "validation_edges"}).

    Falls back to `train` as given (report {"picked": its measure, "validation_edges": 0}) when no edge can be held
    out with its ends still connected (a forest), or side_prior is 0 (the paper's equal start: nothing to pick)."""
    from homefeed.evaluate.metrics import auc
    from homefeed.recall.graph.embed import embed_graph
    from homefeed.recall.graph_evaluate import holdout_edges

    if train.side_prior <= 0:
        return train, {"picked": "equal", "validation_edges": 0}
    try:
        val_graph, pairs, labels = holdout_edges(graph, share=share, seed=train.seed + 1)
    except ValueError:
        return train, {"picked": train.side_measure, "validation_edges": 0}
    report: dict = {}
    options = candidates(train)
    for name, settings in options.items():
        emb = embed_graph(val_graph, side, mode="eges", walks=walks, train=settings, vectors=vectors,
                          side_start="settings")
        report[name] = float(np.mean([auc(labels, emb.pair_scores(pairs, s)) for s in ("cosine", "context")]))
    picked = max(options, key=lambda n: report[n])  # ties: kappa (listed first)
    return options[picked], {**report, "picked": picked, "validation_edges": int(labels.sum())}

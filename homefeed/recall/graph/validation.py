"""How long to train, and how EGES's mix starts, picked per graph on held-out edges of the graph itself.

Neither is a constant that suits every log. More training lifts MovieLens (dense: a median of 31
neighbours; link AUC .783 -> .793 with a second cycle) and hurts Amazon Toys (7 neighbours; .760 ->
.742). Information gain starts EGES's mix well on Toys and badly on Taobao (one or two neighbours an
item: the leaf takes nearly all of the mix), kappa the other way round (`eges.py`). So the graph
loses a share of its edges (`graph_evaluate.holdout_edges`, the link protocol's own split: ends stay
connected, negatives drawn from the same ends; never the test edges, which are not in the graph it
gets); each candidate start (EGES: kappa x prior, information gain x 5 prior; else the settings as
given) trains there cycle after cycle (`embed.train_cycles`: fresh walks, the learning rate annealed
again) while the held-out edges score better (mean of the cosine and the skip-gram context AUC), up to
MAX_CYCLES; the best start and its best cycle count then train on the whole graph.

    >>> train, cycles, report = pick_training(graph, side, mode="eges", walks=walks, train=train)  # doctest: +SKIP
    >>> report   # {"picked": "kappa", "cycles": 1, "validation_edges": 812, "kappa": [0.91, 0.90], ...}
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from homefeed.recall.graph.eges import SideInfo
from homefeed.recall.graph.graph import ItemGraph
from homefeed.recall.graph.skipgram import TrainSettings
from homefeed.recall.graph.walks import WalkSettings

GAIN_PER_KAPPA = 5.0  # the information-gain candidate's prior, per unit of the kappa prior (25 for the default 5)
VALIDATION_SHARE = 0.2  # share of the graph's unordered edges held out
MAX_CYCLES = 3  # most training cycles tried
# graphs with more directed edges train once with the settings as given: the pick costs 3-5 trainings (the 200k-item
# synthetic graph, 1.5M edges: a 642 s fit against 162 s) and on the largest shared logs (Taobao) it kept the settings
MAX_EDGES = 1_000_000


def candidates(mode: str, train: TrainSettings) -> dict[str, TrainSettings]:
    """The starts tried: in eges mode with side_prior > 0, kappa x side_prior and information gain x GAIN_PER_KAPPA
    side_prior; otherwise the settings as given ("settings")."""
    if mode != "eges" or train.side_prior <= 0:
        return {"settings": train}
    return {"kappa": train.model_copy(update={"side_measure": "kappa"}),
            "information": train.model_copy(update={"side_measure": "information",
                                                    "side_prior": GAIN_PER_KAPPA * train.side_prior})}


def pick_training(graph: ItemGraph, side: SideInfo | None, *, mode: str, walks: WalkSettings, train: TrainSettings,
                  vectors: str = "sum", share: float = VALIDATION_SHARE,
                  max_cycles: int = MAX_CYCLES, max_edges: int = MAX_EDGES) -> tuple[TrainSettings, int, dict]:
    """(training settings, cycles, report): the candidate and cycle count whose vectors score the held-out edges
    best. report: {"picked", "cycles", "validation_edges", candidate: [AUC after each cycle tried]}.

    When no edge can be held out with its ends still connected (a forest), returns (train, 1, report with
    "validation_edges": 0): nothing to validate on. A graph with more than `max_edges` edges is not validated
    either (train, 1, report with "skipped": why): the pick would cost several full trainings."""
    from homefeed.evaluate.metrics import auc
    from homefeed.recall.graph.embed import new_model, read_out, train_cycles
    from homefeed.recall.graph_evaluate import holdout_edges

    options = candidates(mode, train)
    if graph.nnz > max_edges:
        return train, 1, {"picked": next(iter(options)), "cycles": 1, "validation_edges": 0,
                          "skipped": f"{graph.nnz} edges > pick_max_edges {max_edges}"}
    try:
        val_graph, pairs, labels = holdout_edges(graph, share=share, seed=train.seed + 1)
    except ValueError:
        return train, 1, {"picked": next(iter(options)), "cycles": 1, "validation_edges": 0}
    report: dict = {}
    for name, settings in options.items():
        model = new_model(val_graph, side, mode, settings)
        scores: list[float] = []

        def after(cycle: int, counts: np.ndarray) -> bool:
            emb = read_out(model, counts, vectors)
            scores.append(float(np.mean([auc(labels, emb.pair_scores(pairs, s)) for s in ("cosine", "context")])))
            return len(scores) < 2 or scores[-1] > scores[-2]  # stop at the first cycle that does not help

        with tempfile.TemporaryDirectory() as tmp:
            train_cycles(model, val_graph, walks=walks, train=settings, workdir=Path(tmp), cycles=max_cycles, after=after)
        report[name] = scores
    picked = max(options, key=lambda n: max(report[n]))  # ties: the first listed (kappa)
    cycles = int(np.argmax(report[picked])) + 1
    return options[picked], cycles, {"picked": picked, "cycles": cycles, "validation_edges": int(labels.sum()), **report}

"""Sub-graph parallel training: P parts of the graph, each walked and trained apart, one shared model.

The graph is cut into P parts (`partition.py`); each part is walked on its own sub-graph (edges
between parts are dropped) and trained with negatives drawn from its own nodes only. So part p
reads and writes only its own rows of the id, attention and context tables, and the tables can be
one shared model: the only rows every part touches are the side-information tables, which is
exactly what EGES shares across items. That is the "merge": there is nothing to average, because
the parts never collide except in the shared side space (updated Hogwild-style, Recht et al. 2011).

- `workers > 1`: the model's tables go to shared memory and `workers` processes (torch
  multiprocessing; spawn by default, which costs a few seconds of imports per worker) train parts p = w, w + workers, ... at the same time, one torch thread each.
- `workers == 1`: the parts train one after another on the same tables (sequential with merge).
  On a 2-core machine that is most of what there is to have; the parallel path earns its keep on
  more cores (and mirrors what a parameter server does across machines).

What it costs: walks never cross a cut edge, and vectors of different parts meet only through the
side tables. `graph_evaluate` reports the link-prediction AUC against unpartitioned training.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from homefeed.recall.graph.eges import EGESModel
from homefeed.recall.graph.graph import ItemGraph
from homefeed.recall.graph.partition import cut_share, partition_graph
from homefeed.recall.graph.skipgram import TrainSettings, train_skipgram
from homefeed.recall.graph.walks import WalkCorpus, WalkSettings, random_walks
from homefeed.threads import torch_threads

if TYPE_CHECKING:
    from homefeed.recall.graph.embed import PartitionSettings


def write_part_corpora(graph: ItemGraph, parts: np.ndarray, n_parts: int, *, walks: WalkSettings,
                       workdir: Path) -> tuple[list[Path], list[np.ndarray]]:
    """Walk each part's sub-graph into `workdir/walks_<p>.npy`; returns (paths, per-part node counts)."""
    paths, counts = [], []
    for p in range(n_parts):
        sub = graph.subgraph(parts == p)
        settings = walks.model_copy(update={"seed": walks.seed * 1_000 + p})
        corpus = WalkCorpus.write(workdir / f"walks_{p}.npy", random_walks(sub, settings=settings))
        paths.append(corpus.path)
        counts.append(corpus.counts(graph.n_nodes))
    return paths, counts


def _train_parts(model: EGESModel, paths: list[str], counts: list[np.ndarray], train_json: str, mine: list[int]) -> None:
    """Worker body: train the parts `mine` in order on the (shared) model."""
    from homefeed.recall.graph.embed import hard_miner

    train = TrainSettings.model_validate_json(train_json)
    total = np.sum(counts, axis=0)
    for p in mine:
        if counts[p].sum() == 0:
            continue
        settings = train.model_copy(update={"seed": train.seed * 1_000 + p})
        train_skipgram(model, WalkCorpus(paths[p]), settings=settings, counts=counts[p], negative_counts=total,
                       hard_miner=hard_miner if train.hard_negatives > 0 else None)


def _worker(rank: int, model: EGESModel, paths: list[str], counts: list[np.ndarray], train_json: str, workers: int):
    with torch_threads(1):
        _train_parts(model, paths, counts, train_json, list(range(rank, len(paths), workers)))


def train_partitioned(model: EGESModel, graph: ItemGraph, *, walks: WalkSettings, train: TrainSettings,
                      partition: "PartitionSettings", workdir: Path) -> tuple[dict, np.ndarray]:
    """Partition, walk and train `model` in place. Returns (log, (N,) node counts over all parts' walks)."""
    t0 = time.perf_counter()
    parts = partition_graph(graph, partition.parts, method=partition.method, seed=train.seed)
    t_part = time.perf_counter() - t0
    paths, counts = write_part_corpora(graph, parts, partition.parts, walks=walks, workdir=workdir)
    t_walk = time.perf_counter() - t0 - t_part
    str_paths = [str(p) for p in paths]
    workers = min(partition.workers, partition.parts)
    if workers == 1:
        _train_parts(model, str_paths, counts, train.model_dump_json(), list(range(partition.parts)))
    else:
        model.share_memory()
        torch.multiprocessing.start_processes(_worker, args=(model, str_paths, counts, train.model_dump_json(), workers),
                                              nprocs=workers, join=True,
                                              start_method=partition.start_method)
    total = np.sum(counts, axis=0)
    sizes = np.bincount(parts[graph.active()], minlength=partition.parts)
    log = {"parts": partition.parts, "workers": workers, "cut_share": cut_share(graph, parts),
           "part_sizes": sizes.tolist(), "partition_seconds": t_part, "walk_seconds": t_walk,
           "walk_steps": int(total.sum()), "seconds": time.perf_counter() - t0 - t_part - t_walk}
    log["words_per_s"] = train.epochs * log["walk_steps"] / max(log["seconds"], 1e-9)
    return log, total

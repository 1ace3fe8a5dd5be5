"""Benchmark of Recall II: walks, skip-gram training (ours vs gensim), link-prediction AUC, partitions, faiss.

    .venv/bin/python benchmarks/graph_embedding.py --dataset /tmp/hf_small_ds --skip walks,speed   # AUCs, partitions
    .venv/bin/python benchmarks/graph_embedding.py --synthetic 200000 --skip training --json     # scale: 200k nodes
    .venv/bin/python benchmarks/graph_embedding.py --real-logs all                                # link AUC per real log

What it measures, all in one run on the same walks (so speeds are comparable even on a busy machine):
- graph build seconds; walk steps/s of the numba walker and of a vectorised numpy walker (reference),
  interleaved, median of 3 rounds;
- training words/s (corpus tokens per second) of DeepWalk and EGES (fp32 and bf16 autocast, 1 torch thread)
  against gensim Word2Vec (skip-gram, same dim / window / negatives / sample) with 1 and 2
  workers, interleaved on the first `--speed-walks` walks of one corpus;
- link-prediction AUC (a third of the edges held out, as in the EGES paper) for DeepWalk, GES, EGES and
  gensim on the same walks, and for EGES trained on P parts (cut share, AUC lost);
- the EGES channel's whole fit from the graph (walks, training, ANN index, i2i table) in seconds;
- faiss: QPS and recall@50 of HNSW and IVF against exact search over the item vectors;
- peak memory (max RSS);
- with --real-logs: link-prediction AUC of DeepWalk, GES and EGES on every shared real log (../shared/data,
  ingested and cached as `benchmarks/real_logs.py` does; a missing log is skipped), by the default
  `LinkProtocol` and, with --directed, also walking the training graph one way as the channel does. Each
  method is scored by cosine (the paper's) and by "<method>_context", skip-gram's own score H_a.z_b + H_b.z_a
  (what the channel's default table ranks by), beside Adamic-Adar on the same training graph (no training);
  with --breakdown also every score's AUC by the pairs' smaller endpoint degree and by shared neighbours.

Progress goes to stderr; stdout gets one table per section, or one JSON object with --json.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from homefeed.evaluate.metrics import auc
from homefeed.evaluate.report import format_value, metrics_table, to_json

from homefeed.recall.ann import AnnIndex, normalize, resolve_spec
from homefeed.recall.graph.channel import EGES, EGESSettings
from homefeed.recall.graph.diagnostics import link_breakdown
from homefeed.recall.graph.eges import SideInfo
from homefeed.recall.graph.embed import PartitionSettings, embed_graph
from homefeed.recall.graph.graph import GraphSettings, ItemGraph, build_graph, sequence_unit
from homefeed.recall.graph.partition import has_metis
from homefeed.recall.graph.skipgram import TrainSettings
from homefeed.recall.graph.walks import WalkSettings, alias_tables, random_walks
from homefeed.recall.graph_evaluate import METHODS, LinkProtocol, link_split, pair_auc


def note(*parts) -> None:
    """A progress line on stderr (stdout carries only the tables or the JSON object)."""
    print(*parts, file=sys.stderr, flush=True)


def readable(row: dict) -> dict:
    """Rates and counts above 100 as whole numbers (1,234,567 rather than 1234567.1234)."""
    return {k: int(round(v)) if isinstance(v, float) and abs(v) >= 100 else v for k, v in row.items()}


def print_tables(result: dict) -> None:
    """One table per section: rows are runs (or the section itself when it is flat), columns their figures."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    for section, value in result.items():
        if not isinstance(value, dict):
            console.print(f"{section}: {format_value(value)}")
            continue
        rows = {k: readable(v) for k, v in value.items() if isinstance(v, dict)}
        flat = readable({k: v for k, v in value.items() if not isinstance(v, (dict, list))})
        if flat:
            rows = {section: flat, **rows}
        console.print(metrics_table(rows, title=section, name_header="run"))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_graph(n: int, *, degree: int = 10, seed: int = 0) -> tuple[ItemGraph, SideInfo]:
    """A random graph of n nodes in n / 50 communities (most edges inside), Zipf-popular targets, and side
    information that is the community (leaf), a brand and a shop per community block."""
    rng = np.random.default_rng(seed)
    comm = rng.integers(0, max(n // 50, 1), n)
    order = np.argsort(comm, kind="stable")
    start = np.searchsorted(comm[order], np.arange(comm.max() + 1))
    size = np.bincount(comm, minlength=comm.max() + 1)
    src = rng.integers(1, n, n * degree)
    inside = rng.random(src.size) < 0.9
    offset = (rng.zipf(1.3, src.size) - 1) % np.maximum(size[comm[src]], 1)
    dst = np.where(inside, order[start[comm[src]] + offset], rng.integers(1, n, src.size))
    keep = dst > 0
    graph = ItemGraph.from_edges(src[keep], dst[keep], rng.integers(1, 4, keep.sum()).astype(float), n)
    codes = np.stack([comm + 1, comm // 3 + 1, comm // 7 + 1, rng.integers(1, 6, n)], 1)
    codes[0] = 0
    return graph, SideInfo(codes, [int(c.max()) + 1 for c in codes.T], ["leaf_category", "brand", "shop", "price_band"])


def numpy_walks(graph: ItemGraph, tables, starts: np.ndarray, length: int, seed: int = 0) -> np.ndarray:
    """The vectorised numpy reference walker: every walk advances one step per loop iteration."""
    rng = np.random.default_rng(seed)
    prob, alias = tables
    deg = graph.out_degree()
    cur, out = starts.copy(), [starts]
    for _ in range(1, length):
        lo, d = graph.indptr[cur], deg[cur]
        alive = d > 0
        e = lo + (rng.random(cur.size) * np.maximum(d, 1)).astype(np.int64)
        e = np.where(rng.random(cur.size) < prob[np.minimum(e, graph.nnz - 1)], e, lo + alias[np.minimum(e, graph.nnz - 1)])
        cur = np.where(alive, graph.indices[np.minimum(e, graph.nnz - 1)], -1)
        out.append(cur)
        cur = np.maximum(cur, 0)
    return np.stack(out, 1)


def bench_walks(graph: ItemGraph, walks: WalkSettings, *, repeats: int = 3) -> dict:
    """Steps/s of the numba walker against the numpy reference, `repeats` rounds with the two interleaved, the median
    round of each kept (a busy machine slows them alike; a process's first big walk also pays for fresh pages)."""
    t0 = time.perf_counter()
    tables = alias_tables(graph)
    t_alias = time.perf_counter() - t0
    random_walks(ItemGraph.from_edges([1], [2], [1.0], 3), settings=walks)  # compile outside the clock
    w = random_walks(graph, settings=walks, tables=tables)
    steps = int((w[:, 1:] >= 0).sum())
    starts = w[:, 0].astype(np.int64)
    del w
    runs: dict[str, list[float]] = {"numba": [], "numpy": []}
    for _ in range(repeats):
        for name in runs:
            t0 = time.perf_counter()
            if name == "numpy":
                numpy_walks(graph, tables, starts, walks.length)
            else:
                random_walks(graph, settings=walks, tables=tables)
            runs[name].append(time.perf_counter() - t0)
    median = {name: float(np.median(t)) for name, t in runs.items()}
    numpy_rate = starts.size * (walks.length - 1) / median["numpy"]
    return {"alias_seconds": t_alias, "walks": int(starts.size), "steps": steps, "repeats": repeats,
            "numba_steps_per_s": steps / median["numba"], "numpy_steps_per_s": numpy_rate,
            "numba_vs_numpy": steps / median["numba"] / numpy_rate}


def gensim_reference(graph: ItemGraph, walks: WalkSettings, train: TrainSettings, pairs, labels, workers: int) -> dict:
    """gensim Word2Vec on the same walks (same seed), same dim / window / negatives / epochs / sample."""
    try:
        from gensim.models import Word2Vec
    except ImportError:
        return {"error": "gensim is not installed"}
    w = random_walks(graph, settings=walks)
    sentences = [[str(x) for x in row[row >= 0]] for row in w]
    tokens = sum(len(s) for s in sentences)
    model = Word2Vec(vector_size=train.dim, window=train.window, negative=train.negatives, sg=1, min_count=1,
                     sample=train.subsample, workers=workers, seed=train.seed, alpha=train.lr)
    model.build_vocab(sentences)
    t0 = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=train.epochs)
    seconds = time.perf_counter() - t0
    vectors = np.zeros((graph.n_nodes, train.dim), np.float32)
    keys = np.array([int(k) for k in model.wv.index_to_key])
    vectors[keys] = model.wv.vectors
    return {"words_per_s": tokens * train.epochs / seconds, "seconds": seconds,
            "auc": pair_auc(normalize(vectors), pairs, labels)}


def bench_speed(graph: ItemGraph, side: SideInfo, walks: WalkSettings, train: TrainSettings, *, repeats: int = 2,
                max_walks: int | None = None) -> dict:
    """Training words/s on one corpus (its first `max_walks` walks), methods interleaved (ours and gensim one after
    another, `repeats` rounds, one epoch each, best round kept), so a busy machine slows them all alike. Ours run on
    1 torch thread: 2 threads ran 35x slower on a shared 2-core machine (each op's barrier waits for a busy core)."""
    from homefeed.recall.graph.eges import EGESModel
    from homefeed.recall.graph.skipgram import train_skipgram
    from homefeed.recall.graph.walks import WalkCorpus

    corpus = WalkCorpus(random_walks(graph, settings=walks)[:max_walks])
    tokens = int((np.asarray(corpus.walks) >= 0).sum())
    one = train.model_copy(update={"epochs": 1, "threads": 1})
    runs = {"deepwalk": ("deepwalk", one), "eges": ("eges", one), "eges_bf16": ("eges", one.model_copy(update={"bf16": True})),
            "deepwalk_bf16": ("deepwalk", one.model_copy(update={"bf16": True}))}
    try:
        from gensim.models import Word2Vec
        sentences = [[str(x) for x in row[row >= 0]] for row in np.asarray(corpus.walks)]
    except ImportError:
        Word2Vec = None
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, (mode, settings) in runs.items():
            log = train_skipgram(EGESModel(graph.n_nodes, side, dim=train.dim, mode=mode), corpus, settings=settings)
            if log.tokens / log.seconds > best.get(name, {}).get("words_per_s", 0):
                best[name] = {"words_per_s": log.tokens / log.seconds, "pairs_per_s": log.pairs / log.seconds}
        for workers in ((1, 2) if Word2Vec is not None else ()):
            model = Word2Vec(vector_size=train.dim, window=train.window, negative=train.negatives, sg=1, min_count=1,
                             sample=train.subsample, workers=workers, seed=train.seed, alpha=train.lr)
            model.build_vocab(sentences)
            t0 = time.perf_counter()
            model.train(sentences, total_examples=len(sentences), epochs=1)
            name = f"gensim_w{workers}"
            rate = tokens / (time.perf_counter() - t0)
            if rate > best.get(name, {}).get("words_per_s", 0):
                best[name] = {"words_per_s": rate}
    if "gensim_w2" in best:
        for name in runs:
            best[name]["vs_gensim_w2"] = best[name]["words_per_s"] / best["gensim_w2"]["words_per_s"]
    return {"tokens": tokens, **best}


TRAINING_RUNS = ("deepwalk", "ges", "eges", "eges_bf16", "deepwalk_bf16")


def bench_training(graph: ItemGraph, side: SideInfo, walks: WalkSettings, train: TrainSettings, parts: list[int],
                   gensim_workers: list[int], methods: tuple[str, ...] = TRAINING_RUNS) -> dict:
    train_graph, pairs, labels = link_split(graph, LinkProtocol())
    out = {}
    runs = [("deepwalk", "deepwalk", train), ("ges", "ges", train), ("eges", "eges", train),
            ("eges_bf16", "eges", train.model_copy(update={"bf16": True})),
            ("deepwalk_bf16", "deepwalk", train.model_copy(update={"bf16": True}))]
    for name, mode, settings in [r for r in runs if r[0] in methods]:
        t0 = time.perf_counter()
        emb = embed_graph(train_graph, side, mode=mode, walks=walks, train=settings)
        out[name] = {"auc": pair_auc(emb.vectors, pairs, labels), "pairs_per_s": emb.log.get("pairs_per_s"),
                     "words_per_s": emb.log.get("words_per_s"), "seconds": time.perf_counter() - t0}
        note(name, out[name])
    for p in parts:
        for workers in sorted({1, min(p, 2)}):
            emb = embed_graph(train_graph, side, mode="eges", walks=walks, train=train,
                              partition=PartitionSettings(parts=p, workers=workers))
            name = f"eges_p{p}_w{workers}"
            out[name] = {"auc": pair_auc(emb.vectors, pairs, labels), "cut_share": emb.log["cut_share"],
                         "words_per_s": emb.log["words_per_s"], "seconds": emb.log["seconds"],
                         "auc_lost": out["eges"]["auc"] - pair_auc(emb.vectors, pairs, labels),
                         "method": "metis" if has_metis() else "label_propagation"}
            note(name, out[name])
    for workers in gensim_workers:
        out[f"gensim_w{workers}"] = gensim_reference(train_graph, walks, train, pairs, labels, workers)
        note(f"gensim_w{workers}", out[f"gensim_w{workers}"])
    return out


def bench_faiss(vectors: np.ndarray, *, k: int = 50, n_queries: int = 2000, seed: int = 0) -> dict:
    ids = np.flatnonzero(np.any(vectors != 0, axis=1))
    x = vectors[ids]
    queries = x[np.random.default_rng(seed).choice(x.shape[0], min(n_queries, x.shape[0]), replace=False)]
    out, exact = {}, None
    for spec, params in [("Flat", ""), ("HNSW32", "efSearch=128"), (f"IVF{max(int(np.sqrt(x.shape[0])), 4)},Flat", "nprobe=16")]:
        t0 = time.perf_counter()
        index = AnnIndex.build(x, ids=ids, spec=spec, params=params)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, found = index.search(queries, k)
        qps = queries.shape[0] / (time.perf_counter() - t0)
        exact = found if exact is None else exact
        recall = float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(exact, found)]))
        out[spec] = {"build_seconds": build, "qps": qps, f"recall@{k}": recall}
        note(spec, out[spec])
    return out


def bench_channel(graph: ItemGraph, side: SideInfo, walks: WalkSettings, train: TrainSettings, top_n: int) -> dict:
    """The EGES channel's fit from the graph on: walks, training, ANN index, i2i table (the channel's own code)."""
    t0 = time.perf_counter()
    emb = embed_graph(graph, side, mode="eges", walks=walks, train=train)
    t_embed = time.perf_counter() - t0
    channel = EGES(settings=EGESSettings(walks=walks, train=train, top_n=top_n)).fit_embedding(emb)
    return {"embed_seconds": t_embed, "table_seconds": time.perf_counter() - t0 - t_embed,
            "total_seconds": time.perf_counter() - t0, "table_nnz": channel.table_.nnz,
            "ann_spec": resolve_spec(channel.settings.ann_spec, int(emb.warm.sum())), "similarity": channel.settings.similarity,
            "walk_seconds": emb.log.get("walk_seconds"), "words_per_s": emb.log.get("words_per_s"), "vectors": emb.vectors}


def adamic_adar(graph: ItemGraph, pairs: np.ndarray) -> np.ndarray:
    """(P,) Adamic-Adar scores of unordered pairs on `graph` taken both ways: sum over shared neighbours w of
    1 / log(degree w) (Liben-Nowell & Kleinberg 2007), the classic link-prediction heuristic without training."""
    import scipy.sparse as sp

    src, dst, _ = graph.edges()
    n = graph.n_nodes
    adj = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    adj = ((adj + adj.T) > 0).astype(np.float64).tocsr()
    degree = np.asarray(adj.sum(1)).ravel()
    weighted = adj @ sp.diags(1.0 / np.log(np.maximum(degree, 2.0)))
    return np.asarray(adj[pairs[:, 0]].multiply(weighted[pairs[:, 1]]).sum(1)).ravel()


def real_log_aucs(names: list[str], walks: WalkSettings, train: TrainSettings, *, directed: bool, cache: Path,
                  breakdown: dict | None = None) -> dict:
    """Per shared real log: link-prediction AUC of each method (the log's train part, default `LinkProtocol`).
    With `breakdown` (a dict), also fills it with `diagnostics.link_breakdown` rows "<log>:<split>:<bin>"."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_logs", Path(__file__).with_name("real_logs.py"))
    real_logs = importlib.util.module_from_spec(spec)
    sys.modules["real_logs"] = real_logs
    spec.loader.exec_module(real_logs)
    names = list(real_logs.LOGS) if names == ["all"] else names
    unknown = [n for n in names if n not in real_logs.LOGS]
    if unknown:
        raise SystemExit(f"unknown log(s) {unknown}; valid: all, {', '.join(real_logs.LOGS)}")
    cache.mkdir(parents=True, exist_ok=True)
    settings = EGESSettings(walks=walks, train=train)
    out: dict[str, dict] = {}
    for name in names:
        ds = real_logs.load_log(name, real_logs.LOGS[name], cache)
        if isinstance(ds, str):
            note(f"{name}: skipped ({ds})")
            continue
        events = ds.events_in("train")
        graph = build_graph(events, ds.n_items, settings=settings.graph)
        side = EGES(settings=settings)._side(ds)
        for label, protocol in [("", LinkProtocol())] + ([("_directed", LinkProtocol(undirected=False))] if directed else []):
            t0 = time.perf_counter()
            try:
                train_graph, pairs, labels = link_split(graph, protocol)
            except ValueError as e:  # e.g. a forest: no edge can be held out with its ends still connected
                note(f"{name}{label}: {e}")
                continue
            scores = {"adamic_adar": adamic_adar(train_graph, pairs)}  # the neighbourhood peer
            for method in METHODS:
                emb = embed_graph(train_graph, side, mode=method, walks=walks, train=train)
                scores[method] = emb.pair_scores(pairs, "cosine")
                scores[f"{method}_context"] = emb.pair_scores(pairs, "context")
            row = {name_: auc(labels, score) for name_, score in scores.items()}
            if breakdown is not None:
                for split, cells in link_breakdown(train_graph, pairs, labels, scores).items():
                    breakdown.update({f"{name}{label}:{split}:{b}": cell for b, cell in cells.items()})
            out[name + label] = {**row, "held_out_edges": int(labels.sum()), "nodes": int(graph.active().sum()),
                                 "edges": graph.nnz, "walked_by": sequence_unit(events, settings.graph),
                                 "side_fields": ",".join(side.names) or "-", "seconds": time.perf_counter() - t0}
            note(name + label, out[name + label])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="an ingested dataset folder (training part is used)")
    src.add_argument("--synthetic", type=int, help="nodes of a random community graph instead")
    src.add_argument("--real-logs", help="comma-separated shared logs (or 'all', as in benchmarks/real_logs.py): "
                                         "link-prediction AUC per log only")
    ap.add_argument("--directed", action="store_true", help="with --real-logs: also train on the one-way graph")
    ap.add_argument("--breakdown", action="store_true", help="with --real-logs: also each score's AUC split by the pairs' "
                                                             "smaller endpoint degree and shared neighbours (diagnostics.py)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "homefeed_real_logs",
                    help="ingested real logs (shared with benchmarks/real_logs.py)")
    ap.add_argument("--walks-per-node", type=int, default=5)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="TrainSettings.threads (torch and the fused numba step) in "
                                                            "the training and channel sections")
    ap.add_argument("--side-measure", choices=["kappa", "information"], default="kappa",
                    help="what starts EGES's mix: each side field's kappa or information gain (TrainSettings.side_measure)")
    ap.add_argument("--side-prior", type=float, default=5.0, help="TrainSettings.side_prior (25 suits --side-measure information)")
    ap.add_argument("--speed-walks", type=int, default=100_000, help="walks of the corpus timed in the speed section")
    ap.add_argument("--parts", default="2,4", help="comma-separated partition counts ('' = none)")
    ap.add_argument("--gensim-workers", default="1,2")
    ap.add_argument("--methods", default=",".join(TRAINING_RUNS),
                    help="comma-separated runs of the training section (link AUC), of: " + ",".join(TRAINING_RUNS))
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: walks,speed,training,faiss,channel")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    methods = tuple(filter(None, args.methods.split(",")))
    if set(methods) - set(TRAINING_RUNS):
        raise SystemExit(f"unknown --methods {sorted(set(methods) - set(TRAINING_RUNS))}; valid: {', '.join(TRAINING_RUNS)}")
    t0 = time.perf_counter()
    walks = WalkSettings(walks_per_node=args.walks_per_node, length=args.length)
    train = TrainSettings(dim=args.dim, epochs=args.epochs, batch_size=args.batch, threads=args.threads,
                          side_measure=args.side_measure,
                          side_prior=args.side_prior)
    if args.real_logs:
        split = {} if args.breakdown else None
        result = {"link_auc": real_log_aucs(args.real_logs.split(","), walks, train, directed=args.directed,
                                            cache=args.cache, breakdown=split)}
        result.update({"link_breakdown": split} if split is not None else {})
        result["peak_mb"] = peak_mb()
        if args.out:
            args.out.write_text(to_json(result))
        print(to_json(result)) if args.json else print_tables(result)
        return
    if args.dataset:
        from homefeed.data.dataset import Dataset

        ds = Dataset.load(args.dataset)
        graph = build_graph(ds.events_in("train"), ds.n_items, settings=GraphSettings())
        side = EGES()._side(ds)  # unknown brands/shops as 0, constant fields left out, as the channel does
    else:
        graph, side = synthetic_graph(args.synthetic)
    result: dict = {"graph": {"nodes": int(graph.active().sum()), "edges": graph.nnz, "seconds": time.perf_counter() - t0}}
    note(result)
    if "walks" not in skip:
        result["walks"] = bench_walks(graph, WalkSettings(walks_per_node=10, length=40))
        note(result["walks"])
    if "speed" not in skip:
        result["speed"] = bench_speed(graph, side, walks, train, max_walks=args.speed_walks)
        note(result["speed"])
    if "training" not in skip:
        parts = [int(p) for p in args.parts.split(",") if p]
        result["training"] = bench_training(graph, side, walks, train, parts,
                                            [int(w) for w in args.gensim_workers.split(",") if w], methods)
    if "channel" not in skip:
        channel = bench_channel(graph, side, walks, train, top_n=100)
        vectors = channel.pop("vectors")
        result["channel"] = channel
        note(channel)
        if "faiss" not in skip:
            result["faiss"] = bench_faiss(vectors)
    result["peak_mb"] = peak_mb()
    if args.out:
        args.out.write_text(to_json(result))
    print(to_json(result)) if args.json else print_tables(result)


if __name__ == "__main__":
    main()

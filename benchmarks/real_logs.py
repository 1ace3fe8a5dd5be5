"""Benchmark: homefeed's recall on the real public logs in ../shared/data, against plain ItemKNN/MF libraries.

For every log present (each one is skipped, with the reason, when its file or its loader is absent):
ingest it through `homefeed.data.ingest` (cached under --cache), then
1. fit the channels on the training part, learn the merge shares on the validation part
   (`recall.shares.learn_merge`), refit the channels on train + valid: the served flow;
2. score every channel, the merged list and the peers on the test part with `evaluate_recall`:
   same users, same relevant items, two protocols: "keep" (repeat items stay in the lists) and
   "drop" (everything the user acted on before is removed from every list);
3. peers, fitted on the same train + valid events: implicit's CosineRecommender and
   BM25Recommender (K=100), AlternatingLeastSquares and BayesianPersonalizedRanking (64 factors),
   each asked with the user's history as its row; homefeed's `popular` channel is the popularity peer;
4. with --optional, the merged list again with every optional channel (deepwalk, eges, mind, mind1);
5. with --rank, `homefeed.rank.evaluate.evaluate_rank` on the same dataset, printed as it returns.

    python benchmarks/real_logs.py                         # every log, a table per log and the targets
    python benchmarks/real_logs.py --logs taobao_slice --max-users 2000 --json
    python benchmarks/real_logs.py --json --out run.json   # run.json rewritten after every log
    python benchmarks/real_logs.py --table run.json        # the tables of a saved run
Targets (issue 13): merged >= the best channel at HR@10/50/200; merged >= BM25 at HR@10/50
(each side's better protocol); adding the optional channels costs merged HR@50 at most 1%.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's ALS asks for it; set before numpy loads BLAS
warnings.filterwarnings("ignore", module="implicit")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KS = (10, 50, 200)
PROTOCOLS = {"keep": False, "drop": True}  # protocol -> exclude_seen
OPTIONAL = ("deepwalk", "eges", "mind", "mind1")
PEERS = ("implicit_cosine", "implicit_bm25", "implicit_als", "implicit_bpr")
RANK_PRESETS = ("lr", "wdl", "deepfm", "dcn", "din", "bst")


@dataclass(frozen=True)
class Log:
    """A shared log: its file(s) under ../shared/data, the ingest format and config overrides."""

    files: tuple[str, ...]
    fmt: str
    overrides: tuple[str, ...] = ()
    mapping: dict = field(default_factory=dict)
    attributes: str | None = None


LOGS: dict[str, Log] = {
    "taobao_slice": Log(("taobao_userbehavior_slice.csv",), "taobao", ("ingest.split_unit=hour",)),
    "taobao_tail": Log(("taobao_userbehavior_tail.csv",), "taobao"),
    "toys": Log(("Toys_and_Games.txt",), "sequences", attributes="Toys_and_Games_item2attributes.json"),
    "video_games": Log(("amazon_video_games_sasrec.txt",), "sequences"),
    "ml-100k": Log(("ml-100k.inter", "ml-100k.item", "ml-100k.user"), "recbole", ("ingest.split=leave_one_out",)),
    "diginetica": Log(("diginetica_sample_train-item-views.csv",), "sessions", ("ingest.split=leave_one_out",)),
}


def say(text: str) -> None:
    print(f"[real_logs] {text}", file=sys.stderr, flush=True)


# --- ingest, cached -----------------------------------------------------------------------------

def cache_key(log: Log) -> str:
    """Changes with the files, the log's settings and homefeed's data code (so a loader fix re-ingests)."""
    h = hashlib.sha256(json.dumps([log.fmt, log.overrides, log.mapping, log.attributes]).encode())
    for name in log.files + ((log.attributes,) if log.attributes else ()):
        st = (DATA / name).stat()
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for src in sorted((ROOT / "homefeed" / "data").glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def load_log(name: str, log: Log, cache: Path):
    """The ingested Dataset (from the cache when fresh), or a string saying why the log is skipped."""
    from homefeed.config import load_config
    from homefeed.data.dataset import Dataset
    from homefeed.data.ingest import ingest

    missing = [f for f in log.files if not (DATA / f).exists()]
    if missing:
        return f"not in {DATA}: {', '.join(missing)}"
    folder = cache / f"{name}-{cache_key(log)}"
    if (folder / "events.parquet").exists():
        return Dataset.load(folder)
    src = DATA / log.files[0]
    kwargs = {"fmt": log.fmt}
    if log.mapping:
        kwargs["mapping"] = log.mapping
    if log.attributes and (DATA / log.attributes).exists():
        kwargs["attributes"] = DATA / log.attributes
    say(f"{name}: ingest {src.name} ({log.fmt})")
    return ingest(src, folder, load_config(overrides=list(log.overrides)), **kwargs)[0]


# --- peers: implicit's models behind the recall contract -------------------------------------------

def implicit_model(name: str):
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    return {"implicit_cosine": lambda: CosineRecommender(K=100),
            "implicit_bm25": lambda: BM25Recommender(K=100),
            "implicit_als": lambda: AlternatingLeastSquares(factors=64, iterations=15, random_state=0, use_gpu=False),
            "implicit_bpr": lambda: BayesianPersonalizedRanking(factors=64, iterations=100, random_state=0, use_gpu=False),
            }[name]()


def make_peer(name: str):
    from homefeed.recall.base import Candidates, Recaller

    class ImplicitPeer(Recaller):
        """An `implicit` model fitted on the (user x item) event counts of the training part."""

        def __init__(self):
            self.name = name

        def fit(self, dataset):
            import scipy.sparse as sp

            train = dataset.events_in("train")
            u, i = train["user_id"].to_numpy(), train["item_id"].to_numpy()
            self.shape_ = (dataset.n_users, dataset.n_items)
            self.matrix_ = sp.csr_matrix((np.ones(u.size, np.float32), (u, i)), shape=self.shape_)
            self.model_ = implicit_model(name)
            self.model_.fit(self.matrix_, show_progress=False)
            return self

        def recall(self, state, k):
            return self.recall_batch([state], k)[0]

        def recall_batch(self, states, k):
            import scipy.sparse as sp

            users = np.array([s.user_id for s in states], np.int64)
            rows = np.repeat(np.arange(len(states)), [len(s.items) for s in states])
            items = np.concatenate([s.items for s in states]).astype(np.int64) if states else np.zeros(0, np.int64)
            history = sp.csr_matrix((np.ones(items.size, np.float32), (rows, items)), shape=(len(states), self.shape_[1]))
            ids, scores = self.model_.recommend(users, history, N=min(k, self.shape_[1] - 1), filter_already_liked_items=False)
            out = []
            for row_ids, row_scores in zip(np.atleast_2d(ids), np.atleast_2d(scores)):
                ok = (row_ids > 0) & np.isfinite(row_scores) & (row_scores > -1e30)
                out.append(Candidates(row_ids[ok].astype(np.int32), row_scores[ok].astype(np.float32),
                                      np.full(int(ok.sum()), -1, np.int32), name))
            return out

    return ImplicitPeer()


# --- one log --------------------------------------------------------------------------------------

def recall_settings(names: list[str] | None, overrides: list[str]):
    """The configured `[recall]` section (with `--set` overrides), typed, with `names` as the channels when given."""
    from homefeed.config import load_config
    from homefeed.recall.part import RecallSettings

    settings = RecallSettings.from_section(load_config(overrides=overrides).recall)
    return settings.model_copy(update={"channels": names}) if names else settings


class Fitted:
    """`fit_recall`'s channel fitter with a memory: a channel already fitted on the same training events with the
    same knobs is reused, so the --optional merge refits only the optional channels."""

    def __init__(self):
        self.done: dict[tuple, object] = {}

    def __call__(self, dataset, names, knobs):
        from homefeed.recall.part import fit_channels

        part = (dataset.split.train_end, dataset.split.valid_end, dataset.events_in("train").height)
        key = {n: (n, json.dumps(knobs.get(n, {}), sort_keys=True, default=str), *part) for n in names}
        missing = [n for n in names if key[n] not in self.done]
        self.done.update({key[n]: c for n, c in fit_channels(dataset, missing, knobs).items()} if missing else {})
        return {n: self.done[key[n]] for n in names}


def evaluate_log(name: str, dataset, args) -> dict:
    from homefeed.recall.evaluate import evaluate_recall
    from homefeed.recall.part import fit_recall

    settings = recall_settings(args.channels, args.set)
    t0 = time.perf_counter()
    say(f"{name}: fit {', '.join(settings.channels)}; learn shares on valid; refit (recall.part.fit_recall)")
    args.fitter = Fitted()
    channels, merger, served = fit_recall(dataset, settings, progress=lambda text: say(f"{name}: {text}"), fitter=args.fitter)
    peers = {}
    for peer in PEERS:
        say(f"{name}: fit {peer}")
        peers[peer] = make_peer(peer).fit(served)
    fit_s = time.perf_counter() - t0
    rows: dict[str, dict] = {}
    setup: dict = {}
    for protocol, exclude in PROTOCOLS.items():
        say(f"{name}: score ({protocol} protocol)")
        ours = evaluate_recall(served, channels, merger, ks=KS, max_users=args.max_users, exclude_seen=exclude)
        theirs = evaluate_recall(served, peers, None, ks=KS, max_users=args.max_users, exclude_seen=exclude)
        setup = ours["setup"]
        for row, metrics in [*ours["channels"].items(), ("merged", ours["merged"]), *theirs["channels"].items()]:
            rows.setdefault(row, {}).update({f"{protocol}:hr@{k}": metrics[f"hitrate@{k}"] for k in KS})
    result = {"users": setup.get("users"), "split": {"train_end": dataset.split.train_end, "valid_end": dataset.split.valid_end},
              "events": {p: dataset.events_in(p).height for p in ("train", "valid", "test")},
              "shares": merger.shares_, "head": merger.head_, "seen_weight": merger.seen_weight_, "learned": merger.learned_,
              "rows": rows, "fit_s": fit_s}
    if args.optional:
        result["optional"] = evaluate_optional(name, dataset, settings, args)
    if args.rank:
        result["rank"] = evaluate_ranking(name, dataset)
    result["targets"] = targets(result)
    return result


def evaluate_optional(name, dataset, settings, args) -> dict:
    """Merged HR with every optional channel added (each protocol)."""
    from homefeed.recall.evaluate import evaluate_recall
    from homefeed.recall.part import fit_recall

    extra = [c for c in OPTIONAL if c not in settings.channels]
    say(f"{name}: + {', '.join(extra)}")
    channels, merger, served = fit_recall(dataset, settings.model_copy(update={"channels": settings.channels + extra}),
                                          progress=lambda text: say(f"{name}: {text}"), fitter=getattr(args, "fitter", None))
    out = {"shares": merger.shares_, "head": merger.head_, "learned": merger.learned_}
    for protocol, exclude in PROTOCOLS.items():
        r = evaluate_recall(served, channels, merger, ks=KS, max_users=args.max_users, exclude_seen=exclude)
        out.update({f"{protocol}:hr@{k}": r["merged"][f"hitrate@{k}"] for k in KS})
        for c in extra:
            out.setdefault("channels", {}).setdefault(c, {}).update(
                {f"{protocol}:hr@{k}": r["channels"][c][f"hitrate@{k}"] for k in KS})
    return out


def evaluate_ranking(name: str, dataset) -> dict:
    from homefeed.rank.evaluate import evaluate_rank

    say(f"{name}: rank presets {', '.join(RANK_PRESETS)}")
    try:
        results = evaluate_rank(dataset, list(RANK_PRESETS))
    except ValueError as e:  # e.g. a log too small for the sample protocol: say so, keep the recall figures
        return {"error": str(e)}
    return {"rows": dict(results), "meta": getattr(results, "meta", {})}


def best(row: dict, k: int) -> float:
    """A row's HR@k under its better protocol."""
    return max(row.get(f"{p}:hr@{k}", 0.0) for p in PROTOCOLS)


def targets(result: dict) -> dict:
    """Issue 13's targets for one log, each with the figures it compares; a miss says by how many test users."""
    rows, users = result["rows"], result.get("users") or 0
    channels = [r for r in rows if r != "merged" and r not in PEERS]
    out = {}

    def verdict(ok: bool, ours: float, name: str, theirs: float) -> dict:
        short = {} if ok else {"short_by_users": round((theirs - ours) * users)}
        return {"ok": ok, "merged": ours, name: theirs, **short}

    for k in KS:
        top = max(channels, key=lambda c: best(rows[c], k))
        out[f"merged>=best_channel@{k}"] = verdict(best(rows["merged"], k) >= best(rows[top], k), best(rows["merged"], k),
                                                   top, best(rows[top], k))
    for k in (10, 50):
        bm25 = best(rows["implicit_bm25"], k)
        out[f"merged>=bm25@{k}"] = verdict(best(rows["merged"], k) >= bm25, best(rows["merged"], k), "bm25", bm25)
    if "optional" in result:
        base, more = best(rows["merged"], 50), best(result["optional"], 50)
        out["optional_costs<=1%@50"] = {"ok": more >= 0.99 * base, "merged": base, "with_optional": more}
    return out


# --- output ---------------------------------------------------------------------------------------

def print_tables(results: dict) -> None:
    from rich.console import Console

    from homefeed.evaluate.report import metrics_table

    console = Console(stderr=False, width=200)
    for name, result in results.items():
        if isinstance(result, str):
            console.print(f"[bold]{name}[/bold]: skipped ({result})")
            continue
        rows = dict(result["rows"])
        if "optional" in result:
            rows["merged+optional"] = {c: v for c, v in result["optional"].items() if ":" in c}
            rows.update({f"{c} (optional)": v for c, v in result["optional"].get("channels", {}).items()})
        shares = {c: f"{s:.2f}" for c, s in result["shares"].items()}
        title = (f"{name}: test HitRate, {result['users']} users; shares {shares}, seen weight {result['seen_weight']:g}, "
                 f"repeat share {result['learned'].get('repeat_share', 0):.2f}, head {result.get('head')}")
        console.print(metrics_table(rows, title=title, columns=[f"{p}:hr@{k}" for p in PROTOCOLS for k in KS],
                                    name_header="list", digits=3))
        for target, verdict in targets(result).items():  # recomputed: a saved run shows today's verdicts
            figures = ", ".join(f"{a} {b:.3f}" if a != "short_by_users" else f"short by {b} of {result['users']} users"
                                for a, b in verdict.items() if a != "ok")
            console.print(f"  {'ok  ' if verdict['ok'] else 'MISS'} {target}: {figures}")
        if "rank" in result:
            console.print(json.dumps(result["rank"], indent=1, default=float))


def payload(results: dict, args) -> dict:
    """The one JSON object: every log's result (or why it was skipped), the cut-offs, the protocols and the load."""
    return {"logs": results, "ks": list(KS), "protocols": list(PROTOCOLS), "max_users": args.max_users,
            "settings": args.set, "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", default=",".join(LOGS), help=f"comma-separated, of: {', '.join(LOGS)}")
    parser.add_argument("--max-users", type=int, default=None, help="score a seeded sample of this many test users")
    parser.add_argument("--channels", default=None, help="comma-separated channels (default: the configured ones)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the recall stage, e.g. recall.channel_settings.retarget.quota=20")
    parser.add_argument("--optional", action="store_true", help=f"also merge with {', '.join(OPTIONAL)}")
    parser.add_argument("--rank", action="store_true", help="also compare the ranking presets (slow on CPU)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "homefeed_real_logs")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object here, after every log (a long run keeps what it did)")
    parser.add_argument("--table", type=Path, default=None, metavar="JSON", help="print the tables of a saved --json/--out result and exit")
    args = parser.parse_args(argv)
    if args.table:
        print_tables(json.loads(args.table.read_text())["logs"])
        return 0
    args.channels = args.channels.split(",") if args.channels else None
    unknown = [n for n in args.logs.split(",") if n not in LOGS]
    if unknown:
        parser.error(f"unknown log(s) {unknown}; valid: {', '.join(LOGS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.logs.split(","):
        dataset = load_log(name, LOGS[name], args.cache)
        if isinstance(dataset, str):
            say(f"{name}: skipped: {dataset}")
            results[name] = dataset
            continue
        results[name] = evaluate_log(name, dataset, args)
        if args.out:
            args.out.write_text(json.dumps(payload(results, args), default=float))
        if not args.json:
            print_tables({name: results[name]})  # each log as soon as it is done
    if args.json:
        print(json.dumps(payload(results, args), default=float))
    else:
        print_tables({name: r for name, r in results.items() if isinstance(r, str)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

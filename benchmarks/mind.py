"""Benchmark: MIND on the real public logs against ALS and popularity; its training throughput and request cost.

With --real, for every log of `benchmarks/real_logs.py` present in ../shared/data (ingested and cached
by that script's `load_log`; a missing log is skipped with the reason): `mind` (K = --interests) and
`mind1` fitted on the training part (each stopping on its HitRate@50 on the validation part, where it also
picks how its list serves the user's history: as scored, dropped or first, `recall/mind/history.py`, and
how many interests a user of |I_u| behaviours gets, the shift of K'_u, `recall/mind/interests.py`),
`popular` on the training part, and implicit's ALS (64 factors, the peer of `real_logs.py`) on train +
valid (it has no use for a validation part, so it gets those events as training data). All are scored
on the test part by `evaluate_recall`, HitRate@10/50, in both protocols ("keep": repeat items stay in
the lists; "drop": everything the user acted on before is removed). --sample-users keeps a seeded
sample of each log's users (their events only) to bound the CPU time.

    python benchmarks/mind.py --real --logs taobao_tail,ml-100k,toys --sample-users 4000
    python benchmarks/mind.py --real --json
    python benchmarks/mind.py --real --logs toys --sample-users 2000 --seed 1 --set model.routing_start=farthest --json

Without --real, the speed benchmark:

A synthetic shop of --items items (default 200k) in categories, and users who browse 2-4 categories,
is generated in memory (seeded). Two measurements:

1. Training samples/s of MIND-K (K = --interests) and MIND-1 on the same samples, one thread
   (`train.threads`), after one warm-up batch; their ratio shows what the routing costs.
2. One request = `MIND.recall(state, k)`: the user tower's forward pass for one user (K'_u interests)
   plus K'_u searches of the item index, merged by score. Timed per user after a warm-up, for the
   "auto" index (HNSW32 at 200k items) and the exact "Flat" index as the baseline in the same process;
   median and p99 per stage (tower, search, whole request). Target: median request < 3 ms at 200k items.

    python benchmarks/mind.py                    # the table
    python benchmarks/mind.py --json --items 50000 --users 500
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch

DAY = 86_400


def synthetic_shop(n_items: int, n_users: int, *, events_per_user: int = 40, n_categories: int = 500, seed: int = 0):
    """A Dataset: items in categories (with brand and shop), users browsing 2-4 categories with Zipf item popularity."""
    from homefeed.data.dataset import Dataset, TimeSplit
    from homefeed.data.schema import BEHAVIORS, EVENTS, ITEMS, USERS

    rng = np.random.default_rng(seed)
    cat_of_item = np.sort(rng.integers(0, n_categories, n_items))
    starts = np.searchsorted(cat_of_item, np.arange(n_categories))
    sizes = np.maximum(np.bincount(cat_of_item, minlength=n_categories), 1)
    interests = rng.integers(0, n_categories, (n_users, 4))
    n_int = rng.integers(2, 5, n_users)
    user = np.repeat(np.arange(n_users), events_per_user)
    pick = (rng.random(user.size) * n_int[user]).astype(np.int64)
    cat = interests[user, pick]
    offset = np.minimum(rng.zipf(1.3, user.size) - 1, sizes[cat] - 1)
    items = starts[cat] + offset + 1
    ts = 1_700_000_000 + rng.integers(0, 3 * DAY, user.size)
    events = EVENTS.conform(pl.DataFrame({"user_id": user + 1, "item_id": items, "ts": ts,
                                          "behavior": pl.Series(["pv"] * user.size).cast(pl.Enum(list(BEHAVIORS)))}))
    ids = np.arange(1, n_items + 1)
    item_table = ITEMS.conform(pl.DataFrame({"item_id": ids, "leaf_category": cat_of_item + 1, "brand": rng.integers(1, 5000, n_items),
                                             "shop": rng.integers(1, 2000, n_items), "price": rng.random(n_items) * 100}))
    users = USERS.conform(pl.DataFrame({"user_id": np.arange(1, n_users + 1), "gender": rng.choice(["F", "M"], n_users),
                                        "age": rng.integers(18, 60, n_users)}))
    return Dataset(events=events.sort("ts"), items=item_table, users=users,
                   split=TimeSplit(1_700_000_000 + 2 * DAY, 1_700_000_000 + 3 * DAY))


def training_throughput(ds, interests: int, samples: int, *, dim: int, seed: int = 0) -> float:
    """Samples/s of one epoch of MIND with `interests` on the first `samples` training samples (one thread)."""
    from homefeed.recall.graph.eges import side_information
    from homefeed.recall.mind.channel import MIND
    from homefeed.recall.mind.profile import ProfileVocab
    from homefeed.recall.mind.samples import NegativeSampler, Sequences, build_sequences
    from homefeed.recall.mind.train import TrainSettings, train_mind

    rec = MIND(settings=MIND.Settings(model={"interests": interests, "dim": dim}))
    m = rec.settings.model
    seqs = build_sequences(ds.events_in("train"), max_len=m.max_len, max_samples_per_user=rec.settings.train.max_samples_per_user)
    pick = np.random.default_rng(seed).permutation(len(seqs))[:samples]
    seqs = Sequences(seqs.items, seqs.starts[pick], seqs.positions[pick], seqs.users[pick], seqs.max_len)
    side = side_information(ds.items, ds.n_items, fields=m.side_fields)
    vocab = ProfileVocab.fit(ds.users)
    model = rec._build(ds.n_items, side.codes, side.sizes, vocab.sizes)
    sampler = NegativeSampler(seqs.counts(ds.n_items))
    profiles = vocab.encode_users(ds.users, ds.n_users)
    settings = TrainSettings(threads=1, seed=seed)
    warm = Sequences(seqs.items, seqs.starts[:settings.batch_size], seqs.positions[:settings.batch_size],
                     seqs.users[:settings.batch_size], seqs.max_len)
    train_mind(model, warm, profiles, sampler, settings=settings)
    return train_mind(model, seqs, profiles, sampler, settings=settings)["samples_per_s"]


def time_requests(rec, states, k: int) -> dict[str, np.ndarray]:
    """Seconds per user, wall clock and CPU (this thread): the tower (interests), the ANN search + merge, the whole `recall`."""
    from homefeed.recall.ann import search_candidates

    out = {f"{stage} {clock}": np.zeros(len(states)) for stage in ("tower", "search", "request") for clock in ("wall", "cpu")}
    for s in states[:50]:
        rec.recall(s, k)
    for u, s in enumerate(states):
        w0, c0 = time.perf_counter(), time.thread_time()
        vectors, _ = rec.interests(s)
        w1, c1 = time.perf_counter(), time.thread_time()
        search_candidates(rec.index_, vectors, k, channel=rec.name)
        w2, c2 = time.perf_counter(), time.thread_time()
        rec.recall(s, k)
        w3, c3 = time.perf_counter(), time.thread_time()
        for stage, (wa, wb, ca, cb) in {"tower": (w0, w1, c0, c1), "search": (w1, w2, c1, c2), "request": (w2, w3, c2, c3)}.items():
            out[f"{stage} wall"][u], out[f"{stage} cpu"][u] = wb - wa, cb - ca
    return out


def sample_users(ds, n: int | None, seed: int = 0):
    """The dataset with only a seeded sample of n users' events (all of them when n is None or larger)."""
    users = np.unique(ds.events["user_id"].to_numpy())
    if n is None or users.size <= n:
        return ds
    keep = np.random.default_rng(seed).choice(users, n, replace=False)
    return dataclasses.replace(ds, events=ds.events.filter(pl.col("user_id").is_in(keep.tolist())))


def real_log(ds, interests: int, *, pooled: bool = False, overrides: dict | None = None, seed: int = 0) -> dict:
    """{protocol: {list: {hitrate@10, hitrate@50, hitrate@200}}}, plus fit seconds and MIND's stopping epochs, for one
    dataset. With `pooled`, also `mind_pooled`: MIND with the pooled interest beside the routed ones (`model.pooled`).
    `overrides` ({"model": {...}, "train": {...}}) apply to mind and mind1 alike; `seed` seeds both models' training."""
    from real_logs import make_peer  # the peer exactly as the real-logs benchmark fits it

    from homefeed.data.dataset import TimeSplit
    from homefeed.recall.evaluate import evaluate_recall
    from homefeed.recall.part import fit_channels

    extra = overrides or {}
    base = {part: {**({"seed": seed} if part in ("model", "train") else {}), **extra.get(part, {})} for part in ("model", "train", "serve")}
    settings = {"mind": {**base, "model": {**base["model"], "interests": interests}}, "mind1": base}
    fitted, fit_s = {}, {}
    for name in ("mind", "mind1", "popular"):
        t0 = time.process_time()
        fitted.update(fit_channels(ds, [name], settings))
        fit_s[name] = time.process_time() - t0
    if pooled:
        t0 = time.process_time()
        fitted["mind_pooled"] = fit_channels(ds, ["mind"], {"mind": {**settings["mind"], "model": {**settings["mind"]["model"], "pooled": True}}})["mind"]
        fit_s["mind_pooled"] = time.process_time() - t0
    served = dataclasses.replace(ds, split=TimeSplit(ds.split.valid_end, ds.split.valid_end))  # train + valid
    t0 = time.process_time()
    fitted["implicit_als"] = make_peer("implicit_als").fit(served)
    fit_s["implicit_als"] = time.process_time() - t0
    minds = {n: c for n, c in fitted.items() if n.startswith("mind")}
    out = {"users": 0, "fit_cpu_s": fit_s, "best_epoch": {n: c.log_.get("best_epoch") for n, c in minds.items()},
           "history": {n: {"picked": c.history_, "valid_hitrate": c.history_scores_} for n, c in minds.items()},
           "interest_shift": {n: {"picked": c.served_shift(), "valid_hitrate": c.shift_scores_} for n, c in minds.items()}}
    for protocol, drop in {"keep": False, "drop": True}.items():
        r = evaluate_recall(ds, fitted, None, ks=(10, 50, 200), exclude_seen=drop)
        out["users"] = r["setup"]["users"]
        out[protocol] = {n: {k: row[k] for k in ("hitrate@10", "hitrate@50", "hitrate@200")} for n, row in r["channels"].items()}
    return out


def overrides(pairs: list[str]) -> dict:
    """{"model": {...}, "train": {...}, "serve": {...}} from --set PART.KEY=JSON pairs (a bare word is a string)."""
    out: dict = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        part, dot, field = key.partition(".")
        if not eq or not dot or part not in ("model", "train", "serve") or not field:
            raise SystemExit(f"--set {pair!r}: expected model.KEY=VALUE, train.KEY=VALUE or serve.KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(part, {})[field] = value
    return out


def real_logs_main(args) -> None:
    """--real: the table of mind / mind1 / ALS / popular on every shared log."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_logs import LOGS, load_log

    from homefeed.evaluate.report import metrics_table, print_json, print_table

    names = args.logs.split(",") if args.logs else list(LOGS)
    unknown = [n for n in names if n not in LOGS]
    if unknown:
        raise SystemExit(f"unknown log(s) {unknown}; valid: {', '.join(LOGS)}")
    results = {}
    for name in names:
        ds = load_log(name, LOGS[name], args.cache)
        if isinstance(ds, str):
            results[name] = f"skipped: {ds}"
            continue
        print(f"[mind] {name}: fit mind, mind1, popular, implicit_als", file=sys.stderr, flush=True)
        results[name] = real_log(sample_users(ds, args.sample_users, args.seed), args.interests, pooled=args.pooled,
                                 overrides=overrides(args.set), seed=args.seed)
    if args.json:
        print_json({"logs": results, "setup": {"interests": args.interests, "sample_users": args.sample_users, "pooled": args.pooled,
                                               "seed": args.seed, "set": args.set}})
        return
    for name, r in results.items():
        if isinstance(r, str):
            print(f"{name}: {r}")
            continue
        rows = {n: {f"{p}:{m}": r[p][n][m] for p in ("keep", "drop") for m in ("hitrate@10", "hitrate@50", "hitrate@200")}
                for n in r["keep"]}
        picked = {n: h["picked"] for n, h in r["history"].items()}
        shift = {n: h["picked"] for n, h in r["interest_shift"].items()}
        print_table(metrics_table(rows, title=f"{name}: test HitRate, {r['users']} users; MIND stopped at epochs {r['best_epoch']}, "
                                  f"history served {picked}, interest shift {shift}", name_header="list", digits=3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=1000, help="requests timed")
    ap.add_argument("--train-samples", type=int, default=20_000, help="samples per throughput run")
    ap.add_argument("--interests", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=200, help="candidates per request")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--real", action="store_true", help="quality on the shared real logs instead of speed")
    ap.add_argument("--logs", default=None, help="with --real: comma-separated logs of benchmarks/real_logs.py (default: all)")
    ap.add_argument("--sample-users", type=int, default=None, help="with --real: keep a seeded sample of this many users per log")
    ap.add_argument("--pooled", action="store_true", help="with --real: also MIND with the pooled interest (model.pooled)")
    ap.add_argument("--seed", type=int, default=0, help="with --real: seed of the user sample and of both MIND fits")
    ap.add_argument("--set", action="append", default=[], metavar="PART.KEY=VALUE",
                    help="with --real: a MIND setting for mind and mind1 alike, e.g. train.smooth_checks=1 (repeatable)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "homefeed_real_logs",
                    help="with --real: where ingested logs are cached (shared with real_logs.py)")
    args = ap.parse_args()
    if args.real:
        torch.set_num_threads(1)
        return real_logs_main(args)

    from homefeed.data.user_state import states_at
    from homefeed.evaluate.report import metrics_table, print_json, print_table
    from homefeed.recall.mind.channel import MIND

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # one request, one core: the serving setting
    ds = synthetic_shop(args.items, max(args.users, 5000))
    throughput = {f"mind{args.interests}": training_throughput(ds, args.interests, args.train_samples, dim=args.dim),
                  "mind1": training_throughput(ds, 1, args.train_samples, dim=args.dim)}
    rec = MIND(settings=MIND.Settings(model={"interests": args.interests, "dim": args.dim},
                                      train={"epochs": 1, "max_samples_per_user": 2, "threads": 1}))
    rec.fit(ds)  # a short fit: the request cost does not depend on how well the model is trained
    states = states_at(ds.events, ds.users, ds.split.valid_end, user_ids=np.arange(1, args.users + 1))
    rows, index_s = {}, {}
    for spec in ("auto", "Flat"):
        t0 = time.perf_counter()
        rec.settings.serve.ann_spec = spec
        rec._index()
        index_s[spec] = time.perf_counter() - t0
        for stage, x in time_requests(rec, states, args.k).items():
            rows[f"{spec} ({rec.index_.spec}): {stage}"] = {"median_ms": 1000 * float(np.median(x)),
                                                            "p99_ms": 1000 * float(np.quantile(x, 0.99))}
    auto = rows[[r for r in rows if r.startswith("auto") and r.endswith("request cpu")][0]]["median_ms"]
    result = {"train_samples_per_s": throughput, "routing_cost_ratio": throughput["mind1"] / throughput[f"mind{args.interests}"],
              "requests": rows, "index_build_s": index_s,
              "setup": {"items": args.items, "users": len(states), "k": args.k, "interests": args.interests, "dim": args.dim,
                        "threads": 1, "target_median_ms": 3.0, "met": auto < 3.0,
                        "mean_interests": float(np.mean([len(rec.interests(s)[0]) for s in states[:200]]))}}
    if args.json:
        print_json(result)
    else:
        print_table(metrics_table({k: {"samples_per_s": v} for k, v in throughput.items()}, title="MIND training, one thread",
                                  name_header="model", digits=0))
        print_table(metrics_table(rows, title=f"one request: {args.items:,} items, k={args.k}", name_header="index / stage", digits=3))
        print(f"MIND-1 trains {result['routing_cost_ratio']:.2f}x as fast as MIND-{args.interests}; "
              f"median request (auto index, CPU) {auto:.3f} ms (target < 3 ms: {'met' if result['setup']['met'] else 'NOT met'})")


if __name__ == "__main__":
    main()

"""Benchmark: per-request recall of every channel, and the merge, for one user at a time.

What a homepage request pays in recall: each channel's `recall(state, k)` for one user, then the
merge of their lists. Channels are fitted once on the dataset's training part (fit times are printed
too); requests are the users who act in the test part, with their state at its start, as the
evaluation builds them. Each user is timed once per channel after a warm-up pass; the table gives the
median, p90 and p99 per channel, for the merge, and for the whole request (all channels + merge, run
one after the other on one core). Target: median whole request < 2 ms.

    python benchmarks/recall_request.py --dataset /tmp/hf_small_ds            # the table
    python benchmarks/recall_request.py --dataset /tmp/hf_small_ds --json --users 2000
Without --dataset, the `small` synthetic shop is generated and ingested under --work (once).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def load_dataset(path: str | None, work: Path, size: str):
    from homefeed.data.dataset import Dataset

    if path:
        return Dataset.load(path)
    ds_dir, raw = work / f"hf_{size}_ds", work / f"hf_{size}"
    if not (ds_dir / "events.parquet").exists():
        from homefeed.data.ingest import ingest
        from homefeed.world import WorldSpec, generate

        if not (raw / "events.parquet").exists():
            generate(WorldSpec.preset(size, seed=7), raw)
        ingest(raw, ds_dir)
    return Dataset.load(ds_dir)


def request_states(ds, n_users: int, seed: int):
    from homefeed.data.user_state import states_at
    from homefeed.recall.evaluate import relevant_items

    users, _ = relevant_items(ds, "test")
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(users, min(n_users, users.size), replace=False))
    return states_at(ds.events, ds.users, ds.split.valid_end, user_ids=users)


def time_requests(channels: dict, merger, states, k: int, merge_k: int) -> dict[str, np.ndarray]:
    """Seconds per user: each channel, the merge, and the whole request."""
    clock = time.perf_counter
    per = {name: np.zeros(len(states)) for name in [*channels, "merge", "request"]}
    for s in states[: min(50, len(states))]:  # warm-up: numba dispatch, caches
        merger.merge([c.recall(s, k) for c in channels.values()], k=merge_k)
    for u, s in enumerate(states):
        start = clock()
        lists = []
        for name, channel in channels.items():
            t0 = clock()
            lists.append(channel.recall(s, k))
            per[name][u] = clock() - t0
        t0 = clock()
        merger.merge(lists, k=merge_k)
        end = clock()
        per["merge"][u] = end - t0
        per["request"][u] = end - start
    return per


def summarise(per: dict[str, np.ndarray], fit_s: dict[str, float]) -> dict[str, dict]:
    return {name: {"median_ms": 1000 * float(np.median(x)), "p90_ms": 1000 * float(np.quantile(x, 0.9)),
                   "p99_ms": 1000 * float(np.quantile(x, 0.99)), "fit_s": fit_s.get(name)}
            for name, x in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", help="an ingested dataset folder (default: generate the synthetic shop under --work)")
    ap.add_argument("--size", default="small", choices=["tiny", "small", "large"], help="shop size when generating")
    ap.add_argument("--work", default="/tmp", type=Path, help="where a generated shop and dataset are kept")
    ap.add_argument("--channels", default="itemcf,swing,ranki2i,crowd,retarget,popular")
    ap.add_argument("--users", type=int, default=1000, help="requests timed (test-part users, seeded sample)")
    ap.add_argument("--k", type=int, default=200, help="candidates asked of each channel")
    ap.add_argument("--merge-k", type=int, default=500, help="candidates kept by the merge")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()

    from homefeed.evaluate.report import metrics_table, print_json, print_table
    from homefeed.recall import make_channel
    from homefeed.recall.merge import Merger

    ds = load_dataset(args.dataset, args.work, args.size)
    fit_s, channels = {}, {}
    for name in args.channels.split(","):
        t0 = time.perf_counter()
        channels[name] = make_channel(name).fit(ds)
        fit_s[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    merger = Merger().fit(ds)
    fit_s["merge"] = time.perf_counter() - t0
    states = request_states(ds, args.users, args.seed)
    rows = summarise(time_requests(channels, merger, states, args.k, args.merge_k), fit_s)
    setup = {"dataset": str(ds.path), "events": ds.events.height, "items": ds.items.height, "requests": len(states),
             "k": args.k, "merge_k": args.merge_k, "target_median_ms": 2.0,
             "met": rows["request"]["median_ms"] < 2.0}
    if args.json:
        print_json({"timings": rows, "setup": setup})
    else:
        print_table(metrics_table(rows, title=f"per-request recall, {len(states)} users, k={args.k}, merge k={args.merge_k}",
                                  name_header="stage", digits=3))
        print(f"whole request median {rows['request']['median_ms']:.3f} ms (target < 2 ms: {'met' if setup['met'] else 'NOT met'})")


if __name__ == "__main__":
    main()

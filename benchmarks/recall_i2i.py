"""Benchmark: building the i2i tables (Item-CF, Swing), time and peak memory, against references.

References, run in the same invocation on the same events:
- `implicit`'s item-item `CosineRecommender` (K = top_n + 1, since its rows include the item itself)
  against our Item-CF set up the same way (whole-history window, unit weights, cosine, no IUF,
  no per-user cap); its time is `fit` alone on a ready CSR matrix, ours includes preparing the events.
  Our production setting (default `ItemCFSettings`) is timed too.
- a plain-Python Swing (dicts of sets, as tutorials and Flink ML write it) with the *same* caps and
  the same per-item user sample. It is run on a systematic sample of rows (every k-th item by its
  number of user pairs) and extrapolated: prep time + row time * (all user pairs / sampled pairs).
  The sampled rows are checked against ours. Both wall and CPU seconds are reported: on a shared
  machine the CPU-time ratio is the steadier one.

Each measurement runs in its own subprocess; peak memory is that process's ru_maxrss (which counts
numpy and numba memory, unlike tracemalloc), reported with the RSS before the fit began.

Events are a Zipf-like synthetic log generated here (100k users, 200k items; heavy-tailed user
activity and item popularity; sessions that stay within one of the user's interests), cached under
--work; `--dataset DIR` adds the training events of ingested datasets (e.g. the `small` / `large` shop).

    python benchmarks/recall_i2i.py --events 1M,5M          # the table
    python benchmarks/recall_i2i.py --events 20M --only swing --json
Targets: Swing >= 50x the plain-Python reference on 5M; Item-CF (cosine) <= 0.7x implicit's wall time at
1M and 5M with a peak memory no higher (ratio <= 1); Swing on 20M events < 3 min and < 8 GB.
With --repeat N each method runs N times in fresh processes and the median is reported (quote N >= 3).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METHODS = ("itemcf_cosine", "implicit_cosine", "itemcf_default", "swing", "swing_python")
N_USERS, N_ITEMS, CLUSTER = 100_000, 200_000, 100
BEHAVIOR_P = {"pv": 0.85, "click": 0.05, "fav": 0.04, "cart": 0.04, "buy": 0.02}


def zipf_p(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def generate(n_events: int, path: Path, seed: int = 0) -> Path:
    """A Zipf-like log: users (Zipf 0.8 activity) run sessions (mean 5 events, 10-120 s apart) inside one of
    their 3 interests (clusters of 100 items, Zipf 1.0 within), with 20% of events from global popularity."""
    import polars as pl

    rng = np.random.default_rng(seed)
    user = np.sort(rng.choice(N_USERS, n_events, p=zipf_p(N_USERS, 0.8))) + 1
    new_session = np.r_[True, (user[1:] != user[:-1]) | (rng.random(n_events - 1) < 0.2)]
    sid = np.cumsum(new_session) - 1
    n_sessions = int(sid[-1]) + 1
    interests = rng.choice(N_ITEMS // CLUSTER, (N_USERS + 1, 3), p=zipf_p(N_ITEMS // CLUSTER, 0.9))
    session_cluster = interests[user[new_session], rng.integers(0, 3, n_sessions)]
    in_cluster = rng.choice(CLUSTER, n_events, p=zipf_p(CLUSTER, 1.0))
    item = session_cluster[sid] * CLUSTER + in_cluster
    stray = rng.random(n_events) < 0.2
    item[stray] = rng.permutation(N_ITEMS)[rng.choice(N_ITEMS, int(stray.sum()), p=zipf_p(N_ITEMS, 1.0))]
    start = rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86_400, n_sessions)
    elapsed = np.cumsum(rng.integers(10, 120, n_events))
    ts = start[sid] + elapsed - elapsed[np.flatnonzero(new_session)][sid]
    behavior = rng.choice(list(BEHAVIOR_P), n_events, p=list(BEHAVIOR_P.values()))
    from homefeed.data.schema import BEHAVIOR

    pl.DataFrame({"user_id": user.astype(np.int32), "item_id": (item + 1).astype(np.int32), "ts": ts,
                  "behavior": pl.Series(behavior, dtype=BEHAVIOR)}).write_parquet(path)
    return path


# --- what each subprocess runs ------------------------------------------------------------------

def child(method: str, data: Path, top_n: int, out: Path, ref_pairs: float) -> dict:
    import resource
    import time

    import polars as pl

    from homefeed.recall.itemcf import ItemCFSettings, itemcf_table
    from homefeed.recall.swing import SwingSettings, swing_table

    events = pl.read_parquet(data)
    if "session_id" in events.columns:
        events = events.drop("session_id")
    n_items = int(events["item_id"].max()) + 1
    tiny = events.gather_every(max(1, events.height // 20_000))  # many users, so every kernel path compiles
    cosine = ItemCFSettings(window="user", iuf=False, normalize="cosine", top_n=top_n, max_actions_per_user=10**9,
                            behavior_weights={b: 1.0 for b in BEHAVIOR_P})
    info: dict = {}
    if method == "itemcf_cosine":
        itemcf_table(tiny, n_items, settings=cosine)  # compile (or load the numba cache) outside the timing
        run = lambda: itemcf_table(events, n_items, settings=cosine)  # noqa: E731
    elif method == "itemcf_default":
        s = ItemCFSettings(top_n=top_n)
        itemcf_table(tiny, n_items, settings=s)
        run = lambda: itemcf_table(events, n_items, settings=s)  # noqa: E731
    elif method == "swing":
        swing_table(tiny, n_items, settings=SwingSettings(top_n=top_n, min_user_items=1))
        run = lambda: swing_table(events, n_items, settings=SwingSettings(top_n=top_n))  # noqa: E731
    elif method == "implicit_cosine":
        import scipy.sparse as sp
        from implicit.nearest_neighbours import CosineRecommender

        from homefeed.recall.i2i import I2ITable

        def matrix(ev):
            pairs = ev.select("user_id", "item_id").unique()
            return sp.csr_matrix((np.ones(pairs.height, np.float32), (pairs["user_id"].to_numpy(),
                                  pairs["item_id"].to_numpy())), shape=(int(ev["user_id"].max()) + 1, n_items))

        CosineRecommender(K=top_n + 1).fit(matrix(tiny), show_progress=False)

        class Timed:  # build the user-item matrix and fit: the same input-to-similarities span as ours
            def __init__(self):
                self.model = CosineRecommender(K=top_n + 1)
                self.model.fit(matrix(events), show_progress=False)
                self.nnz = self.model.similarity.nnz

            def save(self, path):  # outside the timing: to our format, for the agreement check
                I2ITable.from_sparse(self.model.similarity, top_n).save(path)

        run = Timed
    elif method == "swing_python":
        return swing_python_child(events, n_items, top_n, out, ref_pairs)
    else:
        raise SystemExit(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, cpu = time.perf_counter(), time.process_time()
    table = run()
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    table.save(out)
    return {"seconds": seconds, "cpu_s": cpu, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "base_mb": base, "nnz": table.nnz, **info}


def swing_python_child(events, n_items: int, top_n: int, out: Path, ref_pairs: float) -> dict:
    """Plain-Python Swing on a systematic sample of rows (about `ref_pairs` user pairs), extrapolated by user pairs."""
    import heapq
    import resource
    import time
    from collections import defaultdict

    from homefeed.recall.swing import SwingSettings

    s = SwingSettings(top_n=top_n)
    from homefeed.data.user_state import BEHAVIOR_CODE

    users = events["user_id"].to_list()
    items = events["item_id"].to_list()
    codes = {BEHAVIOR_CODE[b] for b in s.behaviors}
    behaviors = events["behavior"].to_physical().to_list()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, cpu0 = time.perf_counter(), time.process_time()
    items_of: dict[int, set] = defaultdict(set)
    for u, i, b in zip(users, items, behaviors):
        if i > 0 and b in codes:
            items_of[u].add(i)
    items_of = {u: v for u, v in items_of.items() if s.min_user_items <= len(v) <= s.max_user_items}
    weight = {u: (len(v) + s.alpha1) ** -s.beta for u, v in items_of.items()}
    users_of: dict[int, list] = defaultdict(list)
    for u, v in items_of.items():
        for i in v:
            users_of[i].append(u)
    mask = 0xFFFFFFFF

    def key(u, i):
        h = ((u * 0x9E3779B1) ^ (i * 0x85EBCA77) ^ s.seed) & mask
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & mask
        return h ^ (h >> 13)

    for i in users_of:
        users_of[i] = sorted(sorted(users_of[i], key=lambda u: key(u, i))[:s.max_users_per_item])
    prep, prep_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    pairs = {i: len(us) * (len(us) - 1) // 2 for i, us in users_of.items() if len(us) >= 2}
    by_cost = sorted(pairs, key=lambda i: (-pairs[i], i))
    step = max(1, round(sum(pairs.values()) / ref_pairs))
    sample = by_cost[step // 2::step]
    t1, cpu1 = time.perf_counter(), time.process_time()
    rows, nbrs, scores = [], [], []
    for i in sample:
        us = users_of[i]
        sim: dict[int, float] = defaultdict(float)
        for a in range(len(us)):
            u = us[a]
            iu = items_of[u]
            for v in us[a + 1:]:
                common = iu & items_of[v]
                c = weight[u] * weight[v] / (s.alpha2 + len(common))
                for j in common:
                    if j != i:
                        sim[j] += c
        for j, v in heapq.nlargest(top_n, sim.items(), key=lambda kv: (kv[1], -kv[0])):
            rows.append(i), nbrs.append(j), scores.append(v)
    rows_time, rows_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    sampled, total = sum(pairs[i] for i in sample), sum(pairs.values())
    scale = total / max(sampled, 1)
    np.savez(out, rows=np.array(rows, np.int64), neighbors=np.array(nbrs, np.int32), scores=np.array(scores),
             sample=np.array(sample, np.int64))
    return {"seconds": prep + rows_time * scale, "cpu_s": prep_cpu + rows_cpu * scale,
            "measured_s": prep + rows_time, "prep_s": prep,
            "rows_sampled": len(sample), "rows_total": len(pairs), "pairs_sampled": sampled, "pairs_total": total,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_mb": base,
            "extrapolated": True}


def measure(method: str, data: Path, top_n: int, out: Path, ref_pairs: float, repeat: int) -> dict:
    """Median (by wall time) of `repeat` fresh subprocesses; the plain-Python reference runs once."""
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data), "--top-n", str(top_n),
           "--out", str(out), "--ref-pairs", str(ref_pairs)]
    runs = []
    for _ in range(1 if method == "swing_python" else repeat):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{method} on {data} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "runs": len(runs)}


# --- checks between methods ---------------------------------------------------------------------

def agreement(a: Path, b: Path) -> dict:
    """How far two tables agree, over every row: the share of rows whose sorted top-N scores match
    (relative 1e-5; which of several tied neighbours is kept may differ), and of rows with the same
    neighbour set."""
    from homefeed.recall.i2i import I2ITable

    ta, tb = I2ITable.load(a), I2ITable.load(b)
    rows = np.flatnonzero(np.diff(ta.indptr) | np.diff(tb.indptr))
    same_scores = same_sets = 0
    for i in rows:
        (na, sa), (nb, sb) = ta.neighbors_of(i), tb.neighbors_of(i)
        same_scores += sa.size == sb.size and np.allclose(sa, sb, rtol=1e-5, atol=0)
        same_sets += set(na.tolist()) == set(nb.tolist())
    n = max(rows.size, 1)
    return {"rows": int(rows.size), "same_scores": same_scores / n, "same_neighbour_sets": same_sets / n}


def swing_check(ours: Path, ref: Path) -> dict:
    from homefeed.recall.i2i import I2ITable

    t = I2ITable.load(ours)
    with np.load(ref) as z:
        sample, rows, nbrs, scores = z["sample"], z["rows"], z["neighbors"], z["scores"]
    ref_t = I2ITable.from_rows(rows, nbrs, scores, t.n_items)
    worst = 0.0
    for i in sample[:2000]:
        a, b = t.neighbors_of(int(i)), ref_t.neighbors_of(int(i))
        if a[0].size != b[0].size:
            return {"rows_equal": False, "row": int(i)}
        worst = max(worst, float(np.max(np.abs(a[1] - b[1]) / np.maximum(b[1], 1e-30), initial=0.0)))
    return {"rows_equal": worst < 1e-4, "max_rel_score_gap": worst}


def run_size(label: str, data: Path, methods: list[str], top_n: int, work: Path, ref_pairs: float, repeat: int) -> dict:
    import polars as pl

    res: dict = {"events": pl.scan_parquet(data).select(pl.len()).collect().item(), "methods": {}}
    for m in methods:
        res["methods"][m] = measure(m, data, top_n, work / f"{label}_{m}.npz", ref_pairs, repeat)
        print(f"  {label} {m}: {res['methods'][m]['seconds']:.2f} s", file=sys.stderr)
    got = res["methods"]
    if "itemcf_cosine" in got and "implicit_cosine" in got:
        res["itemcf_vs_implicit"] = {"time_ratio": got["itemcf_cosine"]["seconds"] / got["implicit_cosine"]["seconds"],
                                     "cpu_ratio": got["itemcf_cosine"]["cpu_s"] / got["implicit_cosine"]["cpu_s"],
                                     "peak_ratio": got["itemcf_cosine"]["peak_mb"] / got["implicit_cosine"]["peak_mb"],
                                     **agreement(work / f"{label}_itemcf_cosine.npz",
                                                 work / f"{label}_implicit_cosine.npz")}
    if "swing" in got and "swing_python" in got:
        res["swing_vs_python"] = {"speedup": got["swing_python"]["seconds"] / got["swing"]["seconds"],
                                  "cpu_speedup": got["swing_python"]["cpu_s"] / got["swing"]["cpu_s"],
                                  **swing_check(work / f"{label}_swing.npz", work / f"{label}_swing_python.npz")}
    return res


def parse_count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def print_table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"i2i tables (top_n = {out['top_n']}): wall s (CPU s) / peak MB; "
                    f"{out['cpus']} CPUs, load average {out['load_avg_start'][0]:.1f} at start, "
                    f"{out['load_avg_end'][0]:.1f} at the end")
    for col in ("data", "events", *out["methods"], "itemcf / implicit", "swing speedup"):
        t.add_column(col, justify="left" if col == "data" else "right")
    for label, r in out["sizes"].items():
        cells = []
        for m in out["methods"]:
            x = r["methods"].get(m)
            cells.append("-" if x is None else f"{x['seconds']:.1f} ({x['cpu_s']:.1f}) / {x['peak_mb']:.0f}"
                         + ("*" if x.get("extrapolated") else ""))
        iv, sv = r.get("itemcf_vs_implicit"), r.get("swing_vs_python")
        t.add_row(label, f"{r['events']:,}", *cells,
                  f"{iv['time_ratio']:.2f}x wall, {iv['cpu_ratio']:.2f}x CPU, {iv['peak_ratio']:.2f}x peak MB"
                  if iv else "-",
                  f"{sv['speedup']:.0f}x wall, {sv['cpu_speedup']:.0f}x CPU{'' if sv['rows_equal'] else ' (rows differ!)'}"
                  if sv else "-")
    Console().print(t)
    print("* plain-Python Swing: measured on a systematic sample of rows and extrapolated by user pairs; "
          "its peak MB is that of the sampled run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", default="1M,5M", help="synthetic log sizes, e.g. 1M,5M,20M ('' for none)")
    p.add_argument("--dataset", action="append", default=[], help="an ingested dataset folder (its train events)")
    p.add_argument("--only", default=",".join(METHODS), help=f"methods, comma-separated: {', '.join(METHODS)}")
    p.add_argument("--top-n", type=int, default=50)
    p.add_argument("--repeat", type=int, default=1, help="runs per method (median by wall time reported)")
    p.add_argument("--ref-pairs", type=float, default=3e6,
                   help="user pairs the plain-Python Swing computes (on a sample of rows)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hf_bench_i2i")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.data, a.top_n, a.out, a.ref_pairs)))
        return
    methods = [m for m in a.only.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
    a.work.mkdir(parents=True, exist_ok=True)
    inputs: dict[str, Path] = {}
    for text in filter(None, a.events.split(",")):
        n = parse_count(text)
        path = a.work / f"zipf_{n}.parquet"
        inputs[f"zipf {text}"] = path if path.exists() else generate(n, path)
    for d in a.dataset:
        from homefeed.data.dataset import Dataset

        path = a.work / f"{Path(d).name}_train.parquet"
        Dataset.load(d).events_in("train").write_parquet(path)
        inputs[Path(d).name] = path
    out = {"top_n": a.top_n, "methods": methods, "repeat": a.repeat, "ref_pairs": a.ref_pairs, "cpus": os.cpu_count(),
           "load_avg_start": os.getloadavg(),
           "sizes": {label: run_size(label.replace(" ", "_"), path, methods, a.top_n, a.work, a.ref_pairs, a.repeat)
                     for label, path in inputs.items()}}
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out)) if a.json else print_table(out)


if __name__ == "__main__":
    main()

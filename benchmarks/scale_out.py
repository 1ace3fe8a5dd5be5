"""Benchmark: the Item-CF and Swing tables on Spark against the single-process jobs, and DDP ranker training.

For each `--events` size a synthetic log is generated (users with heavy-tailed activity browsing
sessions inside a few interests, Zipf item popularity; users and items scale with the events), saved
as an ingested dataset folder, and each table is computed
- single-process (polars + numba, `itemcf_table` / `swing_table`),
- on Spark `local[1]` and `local[2]` (one and two executor cores; Spark reads the Parquet folder),
each in its own subprocess, with wall time, peak memory (RSS of the process tree, sampled: driver
Python, JVM, Python workers) and, for Spark, the per-job overhead (an empty job's wall time). Every
Spark table is compared with the single-process one (bitwise). Then DDP training samples/s, 1 against
2 gloo processes (the tiny shop, BST, two epochs). The last line projects the core-hours 1B events
would take from the marginal per-core Spark throughput between the two largest sizes (fixed costs
cancel; work grows about linearly in events, since per-user and per-item caps bound the pairs).

    python benchmarks/scale_out.py                      # small default sizes, for a 2-core box
    python benchmarks/scale_out.py --events 1M,5M,20M --json
On 2 cores Spark is far slower than polars + numba; what matters is that it runs, is equal, and scales.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MASTERS = ("local[1]", "local[2]")
JOBS = ("itemcf", "swing")


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000, "B": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KMB" else text) * scale)


def generate(n_events: int, folder: Path, seed: int = 0) -> Path:
    """An ingested-dataset folder with a synthetic log of `n_events` (all training days)."""
    import polars as pl

    from homefeed.data.dataset import Dataset, TimeSplit
    from homefeed.data.schema import BEHAVIOR, BEHAVIORS
    from homefeed.data.vocab import Vocab

    rng = np.random.default_rng(seed)
    n_users, n_items, cluster = max(100, n_events // 40), max(1_000, n_events // 20), 50
    activity = rng.lognormal(0, 1.2, n_users)
    user = np.sort(rng.choice(n_users, n_events, p=activity / activity.sum())) + 1
    new_session = np.r_[True, (user[1:] != user[:-1]) | (rng.random(n_events - 1) < 0.2)]
    sid = np.cumsum(new_session) - 1
    interests = rng.integers(0, n_items // cluster, (n_users + 1, 3))
    home = interests[user[new_session], rng.integers(0, 3, int(sid[-1]) + 1)][sid]
    popular = rng.zipf(1.3, n_events) % n_items
    item = np.where(rng.random(n_events) < 0.8, home * cluster + rng.zipf(1.5, n_events) % cluster, popular) + 1
    start = rng.integers(1_700_000_000, 1_700_000_000 + 20 * 86_400, int(sid[-1]) + 1)
    gaps = np.cumsum(rng.integers(5, 300, n_events))
    ts = start[sid] + gaps - gaps[np.flatnonzero(new_session)][sid]
    behavior = rng.choice(BEHAVIORS, n_events, p=[0.8, 0.1, 0.04, 0.04, 0.02])
    events = pl.DataFrame({"user_id": user.astype(np.int32), "item_id": item.astype(np.int32), "ts": ts,
                           "behavior": pl.Series(behavior, dtype=BEHAVIOR)}).sort("user_id", "ts")
    codes = np.arange(1, n_items + 1)
    items = pl.DataFrame({"item_id": codes.astype(np.int32), "leaf_category": ((codes - 1) // cluster + 1).astype(np.int32),
                          "brand": codes.astype(np.int32), "shop": codes.astype(np.int32), "price": np.ones(n_items)})
    users = pl.DataFrame({"user_id": np.arange(1, n_users + 1, dtype=np.int32)})
    vocab = lambda n, name: Vocab(pl.DataFrame({"raw": np.arange(1, n + 1), "code": np.arange(1, n + 1, dtype=np.int32)}), name=name)  # noqa: E731
    end = int(ts.max()) + 1
    Dataset(events=events, items=items, users=users, split=TimeSplit(end, end),
            vocabs={"item": vocab(n_items, "item"), "user": vocab(n_users, "user")}).save(folder)
    return folder


class PeakRSS:
    """Samples the RSS of this process and all its descendants (driver, JVM, Python workers) every 0.2 s."""

    def __init__(self):
        self.peak = {"python": 0.0, "jvm": 0.0, "workers": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> dict[int, tuple[int, str]]:
        procs = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(f"/proc/{entry.name}/stat").read_text()
                    rss = int(Path(f"/proc/{entry.name}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                except OSError:
                    continue
                procs[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), stat.split("(", 1)[1].split(")")[0], rss)
        return procs

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            procs, total = self._tree(), {"python": 0.0, "jvm": 0.0, "workers": 0.0}
            for pid, (parent, name, rss) in procs.items():
                chain, p = [], pid
                while p in procs and p != me and len(chain) < 20:
                    chain.append(p)
                    p = procs[p][0]
                if p != me and pid != me:
                    continue
                kind = "python" if pid == me else "jvm" if name == "java" else "workers"
                total[kind] += rss / 2**20
            self.peak = {k: max(v, total[k]) for k, v in self.peak.items()}
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child_local(folder: Path, job: str, out: Path) -> dict:
    import resource

    from homefeed.data.dataset import Dataset
    from homefeed.recall.itemcf import itemcf_table
    from homefeed.recall.swing import swing_table

    ds = Dataset.load(folder)
    events = ds.events_in("train")
    fit = {"itemcf": lambda ev: itemcf_table(ev, ds.n_items), "swing": lambda ev: swing_table(ev, ds.n_items)}[job]
    fit(events.head(2_000))  # compile (or load the numba cache) outside the timing
    t = time.perf_counter()
    table = fit(events)
    seconds = time.perf_counter() - t
    table.save(out)
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "nnz": table.nnz}


def child_spark(folder: Path, master: str, out_dir: Path) -> dict:
    from homefeed.data.dataset import Dataset
    from homefeed.distributed.build import spark_dataset
    from homefeed.distributed.itemcf import itemcf_table_spark
    from homefeed.distributed.session import SparkSettings, spark_session
    from homefeed.distributed.swing import swing_table_spark

    cores = int(master[master.index("[") + 1:-1])
    spark = spark_session(SparkSettings(master=master, shuffle_partitions=4 * cores, driver_memory="2g"))
    result = {}
    try:
        sds = spark_dataset(spark, Dataset.load(folder))
        spark.range(10).count()  # JVM and first-query warm-up
        t = time.perf_counter()
        spark.range(10).count()
        result["overhead_s"] = time.perf_counter() - t
        events = sds.events_in("train")
        for job, fit in (("itemcf", itemcf_table_spark), ("swing", swing_table_spark)):
            with PeakRSS() as peak:
                t = time.perf_counter()
                table = fit(events, sds.n_items)
                result[job] = {"seconds": time.perf_counter() - t, "peak_mb": peak.peak, "nnz": table.nnz}
            table.save(out_dir / f"{job}.npz")
    finally:
        spark.stop()
    return result


def child_ddp(nproc: int, port: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_rank, args=(nproc, port, tmp), nprocs=nproc, join=True)
        return json.loads(Path(tmp, "rank0.json").read_text())


def _tiny_parts():
    from homefeed.config import Config
    from homefeed.data.dataset import Dataset
    from homefeed.data.ingest import ingest
    from homefeed.rank.samples import SampleSettings, build_all
    from homefeed.world import WorldSpec, generate as generate_world

    work = Path(os.environ["SCALE_OUT_WORK"])
    if not (work / "tiny_ds" / "events.parquet").exists():
        generate_world(WorldSpec.preset("tiny", seed=7), work / "tiny_world")
        ingest(work / "tiny_world", work / "tiny_ds", Config())
    return build_all(Dataset.load(work / "tiny_ds"), SampleSettings())


def _ddp_rank(rank: int, world: int, port: int, tmp: str) -> None:
    import torch

    from homefeed.distributed.train import ddp_train, process_group
    from homefeed.rank.model import build_model
    from homefeed.rank.train import TrainSettings

    torch.set_num_threads(1)
    with process_group(rank=rank, world=world, port=port):
        parts = _tiny_parts()
        torch.manual_seed(0)
        model = build_model(parts["train"].spec, "bst")
        _, result = ddp_train(model, parts["train"], parts["valid"], TrainSettings(epochs=2, threads=1, calibrate=False))
        if rank == 0:
            Path(tmp, "rank0.json").write_text(json.dumps({"samples_per_s": result.samples_per_s, "rows": len(parts["train"]),
                                                           "valid_auc": result.best_valid_auc}))


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tables_equal(a: Path, b: Path) -> bool:
    from homefeed.recall.i2i import I2ITable

    x, y = I2ITable.load(a), I2ITable.load(b)
    return all(np.array_equal(getattr(x, f), getattr(y, f)) for f in ("indptr", "neighbors", "scores"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="20K,100K", help="comma-separated log sizes, e.g. 1M,5M,20M")
    parser.add_argument("--work", default=None, help="folder for generated data (default: a temporary one)")
    parser.add_argument("--no-ddp", action="store_true", help="skip the DDP training rows")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        out = {"local": lambda: child_local(Path(rest[0]), rest[1], Path(rest[2])),
               "spark": lambda: child_spark(Path(rest[0]), rest[1], Path(rest[2])),
               "ddp": lambda: child_ddp(int(rest[0]), int(rest[1]))}[kind]()
        print(json.dumps(out))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="scale_out_"))
    os.environ["SCALE_OUT_WORK"] = str(work)
    rows, progress = [], (lambda text: print(text, file=sys.stderr, flush=True))
    for size in [parse_size(s) for s in args.events.split(",")]:
        folder = work / f"log_{size}"
        if not (folder / "events.parquet").exists():
            generate(size, folder)
        for job in JOBS:
            progress(f"{size:,} events: {job} single-process")
            local = run_child("local", str(folder), job, str(folder / f"{job}_local.npz"))
            rows.append({"job": job, "events": size, "engine": "single-process", "seconds": local["seconds"],
                         "overhead_s": 0.0, "peak_mb": local["peak_mb"], "equal": True, "nnz": local["nnz"]})
        for master in MASTERS:
            progress(f"{size:,} events: Spark {master}")
            out_dir = folder / master.replace("[", "_").replace("]", "")
            out_dir.mkdir(exist_ok=True)
            got = run_child("spark", str(folder), master, str(out_dir))
            for job in JOBS:
                rows.append({"job": job, "events": size, "engine": f"spark {master}", "seconds": got[job]["seconds"],
                             "overhead_s": got["overhead_s"], "peak_mb": got[job]["peak_mb"], "nnz": got[job]["nnz"],
                             "equal": tables_equal(out_dir / f"{job}.npz", folder / f"{job}_local.npz")})
    ddp = []
    if not args.no_ddp:
        from homefeed.distributed.launch import free_port

        for nproc in (1, 2):
            progress(f"DDP training, {nproc} process(es)")
            ddp.append({"nproc": nproc} | run_child("ddp", str(nproc), str(free_port())))
    report = {"tables": rows, "ddp": ddp, "projection_1b": projection(rows)}
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)


def projection(rows: list[dict]) -> dict:
    """Core-hours for 1B events per job from Spark local[2]'s per-core throughput: the marginal one between the two
    largest sizes (fixed per-stage costs cancel), or the largest size's average when only one was run."""
    out = {}
    for job in JOBS:
        spark = sorted((r for r in rows if r["job"] == job and r["engine"] == "spark local[2]"), key=lambda r: r["events"])
        if not spark:
            continue
        big = spark[-1]
        if len(spark) > 1 and big["seconds"] > spark[-2]["seconds"]:
            per_core, basis = (big["events"] - spark[-2]["events"]) / (big["seconds"] - spark[-2]["seconds"]) / 2, "marginal"
        else:
            per_core, basis = big["events"] / max(big["seconds"] - big["overhead_s"], 1e-9) / 2, "average"
        out[job] = {"events_per_core_s": per_core, "basis": basis, "core_hours": 1e9 / per_core / 3600,
                    "hours_on_100_cores": 1e9 / per_core / 100 / 3600}
    return out


def print_report(report: dict) -> None:
    print(f"{'job':<8}{'events':>12}  {'engine':<16}{'seconds':>9}{'overhead s':>11}{'peak MB':>24}{'nnz':>10}{'equal':>7}")
    for r in report["tables"]:
        peak = r["peak_mb"]
        mem = f"{peak:.0f}" if isinstance(peak, float) else f"py {peak['python']:.0f} jvm {peak['jvm']:.0f} wk {peak['workers']:.0f}"
        print(f"{r['job']:<8}{r['events']:>12,}  {r['engine']:<16}{r['seconds']:>9.1f}{r['overhead_s']:>11.2f}{mem:>24}"
              f"{r['nnz']:>10,}{str(r['equal']):>7}")
    for d in report["ddp"]:
        print(f"DDP BST training, {d['nproc']} process(es): {d['samples_per_s']:,.0f} samples/s "
              f"({d['rows']:,} rows, valid AUC {d['valid_auc']:.4f})")
    for job, p in report["projection_1b"].items():
        print(f"1B events, {job}: {p['events_per_core_s']:,.0f} events/s per core ({p['basis']}) -> {p['core_hours']:,.0f} core-hours "
              f"({p['hours_on_100_cores']:.1f} h on 100 cores)")


if __name__ == "__main__":
    main()

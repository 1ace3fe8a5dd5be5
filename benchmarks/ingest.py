"""Benchmark: generate and ingest the synthetic shop; rows/s and peak memory, against pandas.

Each measured step runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.
The baseline reads the same Taobao CSV with pandas and applies a plain validity filter (known
behaviours, timestamps in range): what a hand-written ingest script does, without any of the
checks, cleaning, encoding, sessions or split.

    python benchmarks/ingest.py --size large          # >= 20M events: the target case
    python benchmarks/ingest.py --size small --json
    python benchmarks/ingest.py --size large --work /tmp/bench_large --reuse   # keep the shop between runs
Targets: ingest (load + validate + clean + encode + sessions) of 20M events at >= 1M rows/s, peak < 4 GB;
`homefeed generate --size large` under 3 minutes. With --reuse, a shop (and CSV) already in --work
is read instead of generated again, so the ingest runs do not wait on the generator.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = {
    "generate": "from homefeed.world import WorldSpec, generate; generate(WorldSpec.preset('{size}', seed=7), '{world}')",
    "write_csv": "from homefeed.world import write_taobao_csv; write_taobao_csv('{world}/events.parquet', '{csv}')",
    "ingest_taobao": ("from homefeed.data.ingest import ingest; from homefeed.config import load_config; "
                      "ingest('{csv}', '{work}/ds_taobao', load_config(), fmt='taobao')"),
    "ingest_world": ("from homefeed.data.ingest import ingest; from homefeed.config import load_config; "
                     "ingest('{world}', '{work}/ds_world', load_config(), fmt='world')"),
    "pandas_baseline": ("import pandas as pd; df = pd.read_csv('{csv}', header=None, names=['u','i','c','b','ts']); "
                        "df = df[df.b.isin(['pv','fav','cart','buy']) & df.ts.between(946684800, 4102444800)]; print(len(df))"),
}


def measure(code: str) -> dict:
    """Run `code` in a fresh interpreter; wall seconds and that process's peak RSS in MB."""
    script = f"import time, resource; t = time.perf_counter()\n{code}\n" \
             "print('__M__', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("__M__")][-1].split()
    return {"seconds": float(line[1]), "peak_mb": float(line[2]) / 1024}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


def _reusable(world: Path, csv: Path, size: str) -> set[str]:
    """The steps whose output is already in the work folder: a shop of this size and seed 7, and its CSV."""
    manifest = world / "world.json"
    if not manifest.exists():
        return set()
    info = json.loads(manifest.read_text())
    if info.get("size") != size or info.get("seed") != 7 or not (world / "events.parquet").exists():
        raise SystemExit(f"{world} holds a {info.get('size')} shop with seed {info.get('seed')}, not {size} with seed 7; "
                         "use another --work folder")
    return {"generate"} | ({"write_csv"} if csv.exists() else set())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", choices=["tiny", "small", "large"])
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--repeat", type=int, default=1, help="runs per step; the median is reported")
    p.add_argument("--reuse", action="store_true",
                   help="use the shop and CSV already in --work (same size, seed 7) instead of generating them again")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    if a.reuse and a.work is None:
        p.error("--reuse needs --work (the folder holding the shop to reuse)")
    work = a.work or Path(tempfile.mkdtemp(prefix="hf_bench_ingest_"))
    world, csv = work / "world", work / "events.csv"
    fmt = dict(size=a.size, world=world, csv=csv, work=work)
    reused = _reusable(world, csv, a.size) if a.reuse else set()
    results: dict[str, dict] = {}
    load = {"before": _loadavg()}
    for name, code in STEPS.items():
        if name in reused:
            continue
        runs = sorted((measure(code.format(**fmt)) for _ in range(a.repeat)), key=lambda r: r["seconds"])
        results[name] = runs[len(runs) // 2]
    load["after"] = _loadavg()
    import polars as pl

    n_events = pl.scan_parquet(world / "events.parquet").select(pl.len()).collect().item()
    report = json.loads((work / "ds_taobao" / "report.json").read_text())
    for name, r in results.items():
        r["rows_per_s"] = n_events / r["seconds"]
    results["ingest_taobao"]["steps"] = report["timings"]
    targets = {"ingest_rows_per_s>=1e6": results["ingest_taobao"]["rows_per_s"] >= 1e6,
               "ingest_peak_mb<4096": results["ingest_taobao"]["peak_mb"] < 4096}
    if "generate" in results:
        targets["generate_s<180"] = results["generate"]["seconds"] < 180
    out = {"size": a.size, "events": n_events, "repeat": a.repeat, "reused": sorted(reused), "steps": results,
           "ingest_vs_pandas_time_ratio": results["ingest_taobao"]["seconds"] / results["pandas_baseline"]["seconds"],
           "loadavg": load, "targets": targets}
    if a.json:
        print(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ingest benchmark: {a.size} shop, {n_events:,} events (median of {a.repeat})")
    for col in ("step", "seconds", "rows/s", "peak MB"):
        t.add_column(col, justify="right" if col != "step" else "left")
    for name, r in results.items():
        t.add_row(name, f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}", f"{r['peak_mb']:,.0f}")
    Console().print(t)
    if reused:
        print(f"reused from {work}: {', '.join(sorted(reused))} (not timed this run)")
    print(f"load average before {load['before']}, after {load['after']}")
    print(f"ingest/pandas time ratio: {out['ingest_vs_pandas_time_ratio']:.2f}  (pandas does no checks, cleaning, encoding or sessions)")
    print("ingest_taobao steps:", report["timings"])
    print("targets:", out["targets"])


if __name__ == "__main__":
    main()

"""Benchmark: generate and ingest the synthetic shop; rows/s and peak memory, against pandas.

Each measured step runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.
The baseline reads the same Taobao CSV with pandas and applies a plain validity filter (known
behaviours, timestamps in range): what a hand-written ingest script does, without any of the
checks, cleaning, encoding, sessions or split.

    python benchmarks/ingest.py --size large          # >= 20M events: the target case
    python benchmarks/ingest.py --size small --json
Target: ingest (load + validate + clean + encode + sessions) of 20M events at >= 1M rows/s, peak < 4 GB.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", choices=["tiny", "small", "large"])
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--repeat", type=int, default=1, help="runs per step; the median is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="hf_bench_ingest_"))
    world, csv = work / "world", work / "events.csv"
    fmt = dict(size=a.size, world=world, csv=csv, work=work)
    results: dict[str, dict] = {}
    for name, code in STEPS.items():
        runs = sorted((measure(code.format(**fmt)) for _ in range(a.repeat)), key=lambda r: r["seconds"])
        results[name] = runs[len(runs) // 2]
    import polars as pl

    n_events = pl.scan_parquet(world / "events.parquet").select(pl.len()).collect().item()
    report = json.loads((work / "ds_taobao" / "report.json").read_text())
    for name, r in results.items():
        r["rows_per_s"] = n_events / r["seconds"]
    results["ingest_taobao"]["steps"] = report["timings"]
    out = {"size": a.size, "events": n_events, "steps": results,
           "ingest_vs_pandas_time_ratio": results["ingest_taobao"]["seconds"] / results["pandas_baseline"]["seconds"],
           "targets": {"ingest_rows_per_s>=1e6": results["ingest_taobao"]["rows_per_s"] >= 1e6,
                       "ingest_peak_mb<4096": results["ingest_taobao"]["peak_mb"] < 4096}}
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
    print(f"ingest/pandas time ratio: {out['ingest_vs_pandas_time_ratio']:.2f}  (pandas does no checks, cleaning, encoding or sessions)")
    print("ingest_taobao steps:", report["timings"])
    print("targets:", out["targets"])


if __name__ == "__main__":
    main()

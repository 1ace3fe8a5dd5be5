"""Benchmark: a homepage request end to end, in process and over HTTP; event ingestion.

    python benchmarks/serve.py BUNDLE [--requests 300] [--json]

1. In process: `Pipeline.homepage` with every channel, the model and the mechanism, full rebuild each
   time (templates disabled by a fresh user per request), p50/p99 per stage; and the template path
   (the next request of the same user), which is what most requests cost.
2. Over HTTP: the real server (`homefeed serve`) in a subprocess on 127.0.0.1, and a load generator in
   another process (httpx, N concurrent clients): requests/s and p50/p99 at concurrency 1, 8, 32.
3. Events: batches of 50 events posted at concurrency 8; events/s, then every acknowledged event id is
   looked up in the state store.
Targets on 2 cores: in-process p99 < 25 ms; >= 150 homepage requests/s over HTTP; no acked event lost.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LOADGEN = r"""
import json, sys, threading, time, httpx
url, mode, conc, n, users = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
lat, acked, lock = [], [], threading.Lock()
def worker(w):
    with httpx.Client(timeout=30) as c:
        for i in range(w, n, conc):
            t = time.perf_counter()
            if mode == "homepage":
                r = c.post(url + "/v1/homepage", json={"user_id": users[i % len(users)], "now": 1512259200 + i})
            else:
                ev = [{"event_id": f"b{i}-{j}", "user_id": users[i % len(users)], "item_id": "1", "behavior": "pv",
                       "ts": 1512259200 + i} for j in range(50)]
                r = c.post(url + "/v1/events", json={"events": ev})
            with lock:
                lat.append(time.perf_counter() - t)
                if mode == "events" and r.status_code == 200:
                    acked.extend(e["event_id"] for e in ev)
t0 = time.perf_counter()
ts = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"seconds": time.perf_counter() - t0, "lat": lat, "acked": acked}))
"""


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if len(xs) else float("nan")


def in_process(bundle: Path, n: int) -> dict:
    import polars as pl

    from homefeed.config import Config
    from homefeed.serve.artefacts import ServingBundle
    from homefeed.serve.pipeline import Pipeline
    from homefeed.serve.schemas import HomepageRequest
    from homefeed.serve.state import SQLiteStore

    b = ServingBundle.load(bundle)
    users = pl.read_parquet(bundle / "data" / "recent_events.parquet")["user_raw"].unique(maintain_order=True).to_list()
    now = int(pl.read_parquet(bundle / "data" / "recent_events.parquet")["ts"].max()) + 60
    p = Pipeline(b, SQLiteStore(Path(tempfile.mkdtemp()) / "s.db"), Config())
    p.warm_up()
    full, stages, template = [], {}, []
    for i in range(n):
        page = p.homepage(HomepageRequest(user_id=users[i % len(users)], now=now + i))
        full.append(page.timings_ms["total"] / 1000)
        for k, v in page.timings_ms.items():
            stages.setdefault(k, []).append(v / 1000)
        t = time.perf_counter()
        p.homepage(HomepageRequest(user_id=users[i % len(users)], now=now + i, template_index=page.template_index))
        template.append(time.perf_counter() - t)
    n_cands = len(p.recall(p.user_state(users[0], now), []))
    p.close()
    return {"requests": n, "candidates": n_cands, "full_p50_ms": pct(full, 50), "full_p99_ms": pct(full, 99),
            "template_p50_ms": pct(template, 50), "template_p99_ms": pct(template, 99),
            "stages_p50_ms": {k: pct(v, 50) for k, v in stages.items()}, "stages_p99_ms": {k: pct(v, 99) for k, v in stages.items()},
            "users": users[:2000]}


def over_http(bundle: Path, users: list[str], n: int, state: Path) -> dict:
    from homefeed.serve.process import start_server

    server, url = start_server(bundle, port=8799, state=f"sqlite:{state}", quiet=True)
    try:
        out = {}
        for conc in (1, 8, 32):
            done = subprocess.run([sys.executable, "-c", LOADGEN, url, "homepage", str(conc), str(n), json.dumps(users)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout)
            out[f"c{conc}"] = {"rps": n / r["seconds"], "p50_ms": pct(r["lat"], 50), "p99_ms": pct(r["lat"], 99)}
        done = subprocess.run([sys.executable, "-c", LOADGEN, url, "events", "8", str(n), json.dumps(users)],
                              capture_output=True, text=True, check=True)
        r = json.loads(done.stdout)
        out["events"] = {"events_per_s": len(r["acked"]) / r["seconds"], "acked": len(r["acked"])}
    finally:
        server.terminate()
        server.wait(20)
    from homefeed.serve.state import SQLiteStore

    store = SQLiteStore(state)
    out["events"]["lost"] = sum(not store.has_event(e) for e in r["acked"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    local = in_process(a.bundle, a.requests)
    users = local.pop("users")
    http = over_http(a.bundle, users, a.requests, Path(tempfile.mkdtemp()) / "http.db")
    result = {"in_process": local, "http": http,
              "targets": {"in_process_p99<25ms": local["full_p99_ms"] < 25, "http_rps>=150": http["c32"]["rps"] >= 150,
                          "no_acked_event_lost": http["events"]["lost"] == 0}}
    if a.json:
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"serve benchmark ({local['candidates']} merged candidates, {a.requests} requests)")
    for c in ("what", "p50 ms", "p99 ms", "req/s"):
        t.add_column(c, justify="left" if c == "what" else "right")
    t.add_row("in process, full rebuild", f"{local['full_p50_ms']:.2f}", f"{local['full_p99_ms']:.2f}", "")
    for k in local["stages_p50_ms"]:
        t.add_row(f"  stage {k}", f"{local['stages_p50_ms'][k]:.2f}", f"{local['stages_p99_ms'][k]:.2f}", "")
    t.add_row("in process, next template", f"{local['template_p50_ms']:.2f}", f"{local['template_p99_ms']:.2f}", "")
    for c in (1, 8, 32):
        h = http[f"c{c}"]
        t.add_row(f"HTTP concurrency {c}", f"{h['p50_ms']:.2f}", f"{h['p99_ms']:.2f}", f"{h['rps']:.0f}")
    Console().print(t)
    print(f"events: {http['events']['events_per_s']:.0f}/s, {http['events']['acked']} acked, {http['events']['lost']} lost")
    print("targets:", result["targets"])


if __name__ == "__main__":
    main()

"""The HTTP half of `benchmarks/serve.py`: a real `homefeed serve` on 127.0.0.1 and a load generator in its own process.

The generator (http.client, C keep-alive clients in threads) runs as a separate Python process so its CPU is
not charged to the server; the server's CPU (all its worker processes) is read from /proc around each run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serve_common import bundle_users, pct

LOADGEN = r"""
import http.client, json, sys, threading, time
url, mode, conc, n, t0, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
users = json.loads(sys.stdin.read())
# step: seconds between two requests of one user in `full` mode, past the templates' age limit
host, port = url.removeprefix("http://").split(":")
lat, acked, rebuilt, degraded, errors, lock = [], [], [0], [0], [0], threading.Lock()
def worker(w):  # http.client, one keep-alive connection per client: far lighter than httpx on a 2-core box
    mine = users[w::conc] or users
    last = {}  # user -> template index the client showed last (mix mode)
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    for j, i in enumerate(range(w, n, conc)):
        u = mine[j % len(mine)]
        if mode == "events":
            ev = [{"event_id": f"b{t0}-{i}-{k}", "user_id": u, "item_id": "1", "behavior": "pv", "ts": t0 + i} for k in range(50)]
            path, body = "/v1/events", {"events": ev}
        else:
            path, body = "/v1/homepage", {"user_id": u, "now": t0 + i * step if mode == "full" else t0 + i}
            if mode == "mix" and u in last:
                body["template_index"] = last[u]
        t = time.perf_counter()
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        with lock:
            lat.append(dt)
            if r.status != 200:
                errors[0] += 1
            elif mode == "events":
                acked.extend(e["event_id"] for e in ev)
            else:
                page = json.loads(data)
                last[u] = page["template_index"]
                rebuilt[0] += "recall" in page["timings_ms"]
                degraded[0] += bool(page["degraded"])
    c.close()
start = time.perf_counter()
ts = [threading.Thread(target=worker, args=(w,)) for w in range(conc)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"seconds": time.perf_counter() - start, "lat": lat, "acked": acked, "rebuilt": rebuilt[0],
                  "degraded": degraded[0], "errors": errors[0]}))
"""



def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its direct children (uvicorn workers); nan off Linux."""
    import os

    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        total = 0.0
        for p in [pid, *map(int, children)]:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total
    except (OSError, ValueError, IndexError):
        return float("nan")


def loadgen(url: str, mode: str, conc: int, n: int, users: list[str], t0: int, step: int, server_pid: int) -> dict:
    """One load-generator run; adds the server's and the generator's CPU ms per request."""
    import resource

    server0, own0 = process_cpu_s(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", LOADGEN, url, mode, str(conc), str(n), str(t0), str(step)],
                          input=json.dumps(users), capture_output=True, text=True, check=True)
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = json.loads(done.stdout)
    out["server_cpu_ms"] = (process_cpu_s(server_pid) - server0) / n * 1000
    out["loadgen_cpu_ms"] = (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) / n * 1000
    return out


def over_http(bundle: Path, n: int, workers: int, folder: Path, clock: list[int], modes: tuple[str, ...] = ("full", "mix"),
              clients: tuple[int, ...] = (1, 8, 32), events: bool = True) -> dict:
    """Full and mix modes at concurrency 1, 8, 32 (or those given), then events, against `homefeed serve --workers W`."""
    from homefeed.config import Config
    from homefeed.mechanism.exposure import ExposureConfig
    from homefeed.serve.process import start_server
    from homefeed.serve.state import SQLiteStore

    users, now = bundle_users(bundle)
    clock[0] = max(clock[0], now)
    step = ExposureConfig(**Config().mechanism.exposure).max_age_s + 1
    state = folder / f"http_w{workers}.db"
    server, url = start_server(bundle, port=8799, state=f"sqlite:{state}", quiet=True, workers=workers)
    out: dict = {}
    try:
        for mode in modes:
            for conc in clients:
                r = loadgen(url, mode, conc, n, users[:conc * 2], clock[0], step, server.pid)  # two users per client
                clock[0] += n * (step if mode == "full" else 1) + step
                cpu = r["server_cpu_ms"] + r["loadgen_cpu_ms"]
                out[f"{mode}_c{conc}"] = {"rps": n / r["seconds"], "p50_ms": pct(r["lat"], 50), "p99_ms": pct(r["lat"], 99),
                                          "rebuilt_share": r["rebuilt"] / n, "degraded": r["degraded"], "errors": r["errors"],
                                          "server_cpu_ms": r["server_cpu_ms"], "loadgen_cpu_ms": r["loadgen_cpu_ms"],
                                          # an upper bound: 2 cores shared with the generator, a worker uses ~1 core (GIL)
                                          "rps_2_dedicated_cores": min(2000 / cpu, 1000 * min(workers, 2) / r["server_cpu_ms"])}
        if events:
            r = loadgen(url, "events", 8, n, users[:1000], clock[0], 1, server.pid)
            out["events"] = {"events_per_s": len(r["acked"]) / r["seconds"], "acked": len(r["acked"]), "errors": r["errors"]}
    finally:
        server.terminate()
        server.wait(30)
    if events:
        store = SQLiteStore(state)
        out["events"]["lost"] = sum(not store.has_event(e) for e in r["acked"])
    return out

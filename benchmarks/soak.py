"""Benchmark: soak and faults against the real server: mixed traffic while it is reloaded, killed and its Redis stopped.

    python benchmarks/soak.py BUNDLE [--minutes 2] [--configs sqlite:1,redis:2] [--clients 8] [--kill-every 30]
                                     [--reload-every 10] [--redis-down 3] [--json]

For each config (state store : uvicorn workers) the real `homefeed serve` runs on 127.0.0.1 (`serve/process.py`) with
a fresh store, for `--minutes`, under `--clients` threads of mixed traffic (http.client, keep-alive): homepages for
cold users never seen before (half of all), for the bundle's users and for the soak's own users; event batches
(pv/click/fav/cart from browsers, buys only from a separate pool of buyers); similar items; and requests a client
gets wrong (4xx by design). A /healthz probe runs every 0.1 s. Meanwhile, on a schedule:
- `POST /admin/reload` every `--reload-every` s (not a fault: it must cost no error);
- `kill -9` of the whole server (every worker) every `--kill-every` s, then a restart on the same port and store;
- for Redis configs, one `kill -9` of redis-server (AOF, fsync always) at 40% of the run, restarted after `--redis-down`.
A fault window runs from a kill until the server (or Redis) answers ready again, plus 2 s; a request overlapping one
is counted apart. Every 10 s a row: requests, errors, p50/p99, RSS of the server's processes. At the end every
acknowledged event is looked up in the store, and every acknowledged buy in its buyer's purchase filter (the filter
recomputed from the buyer's stored buys must equal the folded one).

Targets: 0 non-4xx errors outside fault windows; 0 acknowledged events lost; 0 unfolded buys; RSS within 10% of its
value after warm-up (`--warmup-s`, per server life: run `--kill-every 0` for one life); /healthz p99 < 50 ms while the
pipeline is saturated (clients > workers x serve.max_inflight).
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_checks import check_store, rss_drift, summarise  # noqa: E402

TOKEN = "soak-admin-token"
GRACE_S = 2.0


class Clock:
    """Unix seconds for requests: just after the bundle's history, advancing with the wall clock."""

    def __init__(self, start: int):
        self.start, self.t0 = start, time.monotonic()

    def now(self) -> int:
        return self.start + int(time.monotonic() - self.t0)


class Redis:
    """A redis-server on a loopback port with AOF fsync on every write, which can be killed and restarted in place."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port, self.proc = folder, port, None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync",
                                      "always", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class Traffic:
    """Client threads sending the mixed load; every request recorded as (start, end, kind, status or 'conn')."""

    def __init__(self, url: str, clients: int, clock: Clock, known: list[str], items: list[str], buy_items: list[str],
                 tag: str, seed: int = 0):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.clock, self.known, self.items, self.buy_items, self.tag = clock, known, items, buy_items, tag
        self.records: list[tuple[float, float, str, object]] = []
        self.acked: list[tuple[str, str, str, str, int]] = []  # event_id, user, item, behavior, ts
        self.health: list[tuple[float, float, object]] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.seq = iter(range(10**9))
        self.threads = [threading.Thread(target=self._client, args=(random.Random(seed * 1000 + i),), daemon=True)
                        for i in range(clients)]
        self.threads.append(threading.Thread(target=self._probe, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _request(self, conn, method: str, path: str, body: dict | None) -> tuple[object, bytes]:
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         {"Content-Type": "application/json", "Connection": "keep-alive"})
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            conn.close()  # reconnects on the next request
            return "conn", b""

    def _next(self, rng: random.Random) -> tuple[str, str, dict | None, list]:
        """One request: (kind, path, body, events it carries)."""
        now, roll, n = self.clock.now(), rng.random(), next(self.seq)
        if roll < 0.30:
            return "homepage", "/v1/homepage", {"user_id": f"cold-{self.tag}-{n}", "now": now}, []
        if roll < 0.45:
            return "homepage", "/v1/homepage", {"user_id": rng.choice(self.known), "now": now}, []
        if roll < 0.55:
            return "homepage", "/v1/homepage", {"user_id": f"soak-{self.tag}-{rng.randrange(2000)}", "now": now}, []
        if roll < 0.75:
            user = f"soak-{self.tag}-{rng.randrange(2000)}"
            evs = [(f"e-{self.tag}-{n}-{k}", user, rng.choice(self.items), rng.choice(["pv", "pv", "click", "fav", "cart"]),
                    now) for k in range(rng.randint(1, 4))]
        elif roll < 0.87:
            user = f"buyer-{self.tag}-{rng.randrange(300)}"
            evs = [(f"b-{self.tag}-{n}-{k}", user, rng.choice(self.buy_items), "buy", now) for k in range(rng.randint(1, 2))]
        elif roll < 0.95:
            return "similar", f"/v1/items/{rng.choice(self.items)}/similar?k=10", None, []
        else:
            return "bad", "/v1/homepage", {"user_id": "u", "now": "yesterday"}, []  # a client's bug: 422
        body = {"events": [dict(zip(("event_id", "user_id", "item_id", "behavior", "ts"), e)) for e in evs]}
        return "events", "/v1/events", body, evs

    def _client(self, rng: random.Random) -> None:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        while not self.stop.is_set():
            kind, path, body, evs = self._next(rng)
            t0 = time.monotonic()
            status, _ = self._request(conn, "GET" if body is None else "POST", path, body)
            t1 = time.monotonic()
            with self.lock:
                self.records.append((t0, t1, kind, status))
                if status == 200 and evs:
                    self.acked.extend(evs)
            if status == "conn":
                time.sleep(0.2)  # the server is down: do not spin

    def _probe(self) -> None:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        while not self.stop.wait(0.1):
            t0 = time.monotonic()
            status, _ = self._request(conn, "GET", "/healthz", None)
            self.health.append((t0, time.monotonic(), status))


def reload(url: str, results: Counter) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", "/admin/reload", "{}", {"Content-Type": "application/json", "X-Admin-Token": TOKEN})
        results[conn.getresponse().status] += 1
    except (OSError, http.client.HTTPException):
        results["conn"] += 1
    finally:
        conn.close()


def bundle_facts(bundle: Path) -> dict:
    """Known users, a time after the history, items, and items whose buy blocks a category (raw id -> standard)."""
    import polars as pl

    from homefeed.mechanism.purchase_filter import BlockingPeriods

    ev = pl.read_parquet(bundle / "data" / "recent_events.parquet")
    items = pl.read_parquet(bundle / "data" / "items.parquet").select("item_id", "standard_category")
    vocab = pl.read_parquet(bundle / "data" / "vocab" / "item.parquet").join(items, left_on="code", right_on="item_id")
    periods = BlockingPeriods.load(bundle / "mechanism" / "blocking_periods.parquet")
    standard = {str(r): int(s) for r, s in zip(vocab["raw"], vocab["standard_category"]) if s is not None and s >= 0}
    blocking = sorted(r for r, s in standard.items() if periods.days_of(np.array([s]))[0] > 0)
    return {"known": ev["user_raw"].cast(str).unique().sort().to_list()[:500], "start": int(ev["ts"].max()) + 60,
            "items": sorted(standard)[:400], "buy_items": blocking[:200] or sorted(standard)[:200],
            "standard": standard, "periods": periods}


def soak(bundle: Path, store: str, workers: int, args, facts: dict, folder: Path, redis: Redis | None, tag: str) -> dict:
    """One config's run; returns its summary."""
    from homefeed.serve.process import kill_tree, start_server, tree_rss

    port = free_port()
    log = folder / f"server-{tag}.log"
    start = lambda: start_server(bundle, port=port, state=store, workers=workers, log=log, timeout_s=300,  # noqa: E731
                                 env={"HOMEFEED_ADMIN_TOKEN": TOKEN, **dict(e.split("=", 1) for e in args.env)},
                                 settings=tuple(args.set))
    proc, url = start()
    live = {"proc": proc, "life": 0, "life_start": 0.0, "restarting": False}
    t_begin = time.monotonic()
    traffic = Traffic(url, args.clients, Clock(facts["start"]), facts["known"], facts["items"], facts["buy_items"], tag)
    traffic.start()
    windows: list[list[float]] = []
    rss: list[dict] = []  # every 10 s: t, server life, age in that life, bytes
    reloads, restarts, events = Counter(), [], []
    next_rss, next_reload = 10.0, float(args.reload_every or 1e9)
    next_kill = float(args.kill_every or 1e9)
    redis_at = args.minutes * 60 * 0.4 if redis is not None else 1e9
    end = args.minutes * 60

    def kill_and_restart(t: float) -> None:
        """kill -9 every process of the server, start it again on the same port and store; the window closes on ready."""
        nonlocal next_kill
        window = [time.monotonic(), float("inf")]
        windows.append(window)
        kill_tree(live["proc"])
        events.append({"t": round(t, 1), "fault": "kill -9 server"})
        t0 = time.monotonic()
        live["proc"], _ = start()
        restarts.append(time.monotonic() - t0)
        window[1] = time.monotonic() + GRACE_S
        live["life"], live["life_start"] = live["life"] + 1, time.monotonic() - t_begin
        next_kill = time.monotonic() - t_begin + args.kill_every
        live["restarting"] = False

    def redis_outage(t: float) -> None:
        window = [time.monotonic(), float("inf")]
        windows.append(window)
        redis.kill()
        events.append({"t": round(t, 1), "fault": "kill -9 redis-server"})
        time.sleep(args.redis_down)
        redis.start()
        wait_ready(url)
        window[1] = time.monotonic() + GRACE_S

    helpers: list[threading.Thread] = []  # reloads, restarts, the Redis outage: the schedule never waits on them
    reloader: threading.Thread | None = None

    def spawn(target, *a) -> threading.Thread:
        helpers.append(threading.Thread(target=target, args=a, daemon=True))
        helpers[-1].start()
        return helpers[-1]

    while (t := time.monotonic() - t_begin) < end:
        if t >= next_rss:
            restarting = live["restarting"]
            if not restarting:  # else there is no server to measure
                rss.append({"t": round(t), "life": live["life"], "age": round(t - live["life_start"]),
                            "bytes": tree_rss(live["proc"].pid)})
            mem = "restarting" if restarting else f"{rss[-1]['bytes'] / 2**20:7.1f} MiB"
            row = summarise(traffic.records, windows, since=time.monotonic() - 10)
            if not args.json:
                print(f"  [{tag}] t={t:5.0f}s  req/10s {row['requests']:5d}  errors {row['errors_outside']:3d} out, "
                      f"{row['errors_inside']:3d} in windows  p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  "
                      f"RSS {mem}  "
                      f"life {live['life']}", flush=True)
            next_rss += 10
        if t >= next_reload:
            if (reloader is None or not reloader.is_alive()) and not live["restarting"]:  # one reload at a time
                reloader = spawn(reload, url, reloads)
            next_reload += args.reload_every
        if t >= next_kill and not live["restarting"]:
            live["restarting"], next_kill = True, 1e9
            spawn(kill_and_restart, t)
        if t >= redis_at:
            redis_at = 1e9
            spawn(redis_outage, t)
        time.sleep(0.2)
    traffic.finish()
    for h in helpers:
        h.join(300)
    live["proc"].terminate()
    live["proc"].wait(60)
    out = summarise(traffic.records, windows)
    health = [(t0, t1, s) for t0, t1, s in traffic.health if not any(a <= t1 and t0 <= b for a, b in windows)]
    lat = np.array([t1 - t0 for t0, t1, s in health if s == 200]) * 1000
    out.update(config=tag, store=store.split(":")[0], workers=workers, seconds=round(time.monotonic() - t_begin, 1),
               healthz={"probes": len(health), "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                        "failed": sum(s != 200 for _, _, s in health)},
               reloads={str(k): v for k, v in reloads.items()}, restarts_s=[round(r, 1) for r in restarts],
               faults=events, fault_windows_s=round(sum(b - a for a, b in windows), 1),
               rss_mib=[{**r, "bytes": round(r["bytes"] / 2**20, 1)} for r in rss],
               rss_drift=rss_drift(rss, args.warmup_s), saturated=args.clients > workers * args.max_inflight)
    out.update(check_store(store, traffic.acked, facts, history_len=200))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 120) -> None:
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)


def print_report(report: dict) -> None:
    print(f"\nsoak: {report['minutes']} min per config, {report['clients']} clients, reload every "
          f"{report['reload_every']} s, kill -9 every {report['kill_every'] or 'never'} s; load average "
          f"{report['loadavg_before']} -> {report['loadavg_after']}")
    head = ("config", "requests", "codes", "5xx/conn out", "in windows", "p50 ms", "p99 ms", "healthz p99", "acked",
            "lost", "buys", "unfolded", "RSS drift", "reloads", "restart s")
    print("  ".join(f"{h:>12}" for h in head))
    for c in report["configs"]:
        drift = c["rss_drift"]["max_pct"]
        print("  ".join(f"{v:>12}" for v in (
            c["config"], c["requests"], ",".join(f"{k}:{v}" for k, v in sorted(c["codes"].items())), c["errors_outside"],
            c["errors_inside"], f"{c['p50_ms']:.0f}", f"{c['p99_ms']:.0f}",
            f"{c['healthz']['p99_ms']:.1f}" if c["healthz"]["p99_ms"] is not None else "-", c["acked_events"],
            c["lost_events"], c["acked_buys"], c["unfolded_buys"], "-" if drift is None else f"{drift:+.1f}%",
            ",".join(f"{k}:{v}" for k, v in c["reloads"].items()),
            "/".join(f"{r:.0f}" for r in c["restarts_s"]) or "-")))
    for c in report["configs"]:
        print(f"  {c['config']}: RSS MiB every 10 s: {' '.join(str(r['bytes']) for r in c['rss_mib'])}; "
              f"faults {c['faults']}; stored events {c['stored_events']}; unfolded users {c['unfolded_users'][:3]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--minutes", type=float, default=2.0, help="per config")
    p.add_argument("--configs", default="sqlite:1,redis:2", help="store:workers, comma-separated (sqlite or redis)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--reload-every", type=float, default=10.0, help="seconds; 0 = no reloads")
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds; 0 = no kills (one server life, for RSS)")
    p.add_argument("--redis-down", type=float, default=3.0, help="seconds redis-server stays down (Redis configs)")
    p.add_argument("--warmup-s", type=float, default=30.0, help="RSS is compared with its first sample after this")
    p.add_argument("--max-inflight", type=int, default=2, help="serve.max_inflight (only to say whether saturated)")
    p.add_argument("--set", action="append", default=[], help="extra --set for the server")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE in the server's environment, e.g. MALLOC_ARENA_MAX=2")
    p.add_argument("--work", type=Path, default=None, help="folder for stores and server logs (default: temporary)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args()
    args.set = [*args.set, f"serve.max_inflight={args.max_inflight}"]
    if any("=" not in e for e in args.env):
        p.error("--env takes KEY=VALUE")
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    bad = [c for c, _ in configs if c not in ("sqlite", "redis")]
    if bad:
        p.error(f"--configs: unknown store {bad[0]!r}; use sqlite:WORKERS or redis:WORKERS")
    folder = args.work or Path(tempfile.mkdtemp(prefix="homefeed_soak_"))
    folder.mkdir(parents=True, exist_ok=True)
    facts = bundle_facts(args.bundle)
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    redis = None
    if any(c == "redis" for c, _ in configs):
        redis = Redis(folder / "redis", free_port())
        redis.start()
    results = []
    try:
        for i, (kind, workers) in enumerate(configs):
            tag = f"{kind}{workers}"
            store = f"sqlite:{folder / f'{tag}.db'}" if kind == "sqlite" else f"redis://127.0.0.1:{redis.port}/{i + 1}"
            results.append(soak(args.bundle, store, workers, args, facts, folder, redis if kind == "redis" else None, tag))
    finally:
        if redis is not None and redis.proc.poll() is None:
            redis.proc.terminate()
            redis.proc.wait(30)
    report = {"minutes": args.minutes, "clients": args.clients, "reload_every": args.reload_every,
              "kill_every": args.kill_every, "loadavg_before": " ".join(loadavg),
              "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "work": str(folder),
              "configs": results}
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)


if __name__ == "__main__":
    main()

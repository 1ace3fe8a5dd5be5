"""`make demo`: the main job end to end on the built-in `small` shop, one visible command at a time.

Each step is the real `homefeed` CLI in a subprocess, printed before it runs, so the demo doubles
as a tutorial: copy any line to run it on your own data.

    python -m homefeed.demo --out demo_out [--size small]
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(args: list[str]) -> None:
    line = "homefeed " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {line}", flush=True)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", *args])
    if done.returncode != 0:
        sys.exit(f"demo step failed ({done.returncode}): {line}")
    print(f"  ({time.perf_counter() - t:.1f}s)", flush=True)


def pick_user(bundle: Path) -> tuple[str, int]:
    """A user with history in the bundle, and a request time just after the bundle's data."""
    import polars as pl

    recent = pl.read_parquet(bundle / "data" / "recent_events.parquet")
    busiest = recent.group_by("user_raw").len().sort("len", "user_raw", descending=[True, False])["user_raw"][0]
    return str(busiest), int(recent["ts"].max()) + 60


def serve_and_ask(bundle: Path, user: str, now: int, state: Path, *, wait: bool = True) -> None:
    """Start `homefeed serve`, ask for a homepage, send a purchase, ask again; then keep the server up
    for the console until Ctrl-C (`wait`), or stop it."""
    import httpx

    from homefeed.serve.process import start_server

    port = 8765
    print(f"\n$ homefeed serve {bundle} --port {port} --state sqlite:{state}   (in the background)", flush=True)
    proc, url = start_server(bundle, port=port, state=f"sqlite:{state}")
    try:
        page = httpx.post(url + "/v1/homepage", json={"user_id": user, "now": now}, timeout=30).json()
        first = page["slots"]["recommended"][0]
        print(f"POST /v1/homepage user {user}: " + ", ".join(f"{s}={len(v)}" for s, v in page["slots"].items()) +
              f"  in {page['timings_ms']['total']:.1f} ms")
        print(f"  top item {first['item_id']} via {first['channel']}: {first['reason']}")
        event = {"event_id": "demo-buy-1", "user_id": user, "item_id": first["item_id"], "behavior": "buy", "ts": now + 1}
        print("POST /v1/events", httpx.post(url + "/v1/events", json={"events": [event]}).json())
        again = httpx.post(url + "/v1/homepage", json={"user_id": user, "now": now + 2}, timeout=30).json()
        shown = [it["item_id"] for v in again["slots"].values() for it in v]
        print(f"POST /v1/homepage again: template {again['template_index']}, bought item shown again: {first['item_id'] in shown}")
        print(f"\nconsole: {url}/ui?user_id={user}   (the page, its reasons, buttons that post events)")
        if wait:
            print("the server stays up until Ctrl-C (run with --no-wait to stop here)", flush=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                pass
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (default demo_out)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"], help="synthetic shop size")
    parser.add_argument("--no-wait", action="store_true", help="stop the server at the end instead of keeping the console up")
    a = parser.parse_args()
    world, dataset, bundle = a.out / "world", a.out / "dataset", a.out / "bundle"
    if (world / "world.json").exists() and f'"size": "{a.size}"' in (world / "world.json").read_text():
        print(f"reusing the {a.size} shop in {world} (delete it to regenerate)")
    else:
        run(["generate", "--size", a.size, "--out", str(world)])
    run(["ingest", str(world), "--out", str(dataset)])
    run(["evaluate", "recall", str(dataset), "--max-users", "3000"])
    quick = ["--set", 'rank.train={"epochs": 3}']  # the demo trains briefly; drop these for real runs
    quick_build = [*quick, "--set", 'mechanism.images={"steps": 150}']
    run(["evaluate", "rank", str(dataset), "--models", "lr,deepfm,din,bst", *quick])
    run(["build", str(dataset), "--out", str(bundle), *quick_build])
    user, now = pick_user(bundle)
    state = a.out / "state.db"
    state.unlink(missing_ok=True)
    run(["recommend", str(bundle), "--user", user, "--now", str(now), "--state", f"sqlite:{state}"])
    serve_and_ask(bundle, user, now + 3600, a.out / "serve_state.db", wait=not a.no_wait)
    print("\ndemo finished.")


if __name__ == "__main__":
    main()

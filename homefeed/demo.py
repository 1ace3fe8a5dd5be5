"""`make demo`: the main job end to end on the built-in `small` shop, one visible command at a time.

Each step is the real `homefeed` CLI in a subprocess, printed before it runs, so the demo doubles
as a tutorial: copy any line to run it on your own data. The demo trains briefly (`QUICK`: one
epoch on the last training days, a short image-model fit) so the whole story takes minutes; it says
so, and the lines run without those settings are the real thing. It ends with each step's time.

    python -m homefeed.demo --out demo_out [--size small]
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


# The demo's short training, passed as ordinary --set overrides (drop them for real runs): one epoch
# on the last 3 training days instead of up to 30 epochs on all of them, and a shorter image-model fit.
QUICK_RANK = ['rank.train={"epochs": 1}', 'rank.samples={"train_window_days": 3}']
QUICK_BUILD = [*QUICK_RANK, 'mechanism.images={"steps": 100}']

TIMES: dict[str, float] = {}  # step -> wall seconds, for the summary at the end
QUIET: list[bool] = [False]  # warm-up: keep the steps' output unless one fails


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def run(args: list[str]) -> None:
    line = "homefeed " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {line}", flush=True)
    t = time.perf_counter()
    quiet = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) if QUIET[0] else {}
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", *args], **quiet)
    if done.returncode != 0:
        sys.exit(f"{done.stdout or ''}\ndemo step failed ({done.returncode}): {line}")
    step = " ".join(args[:2]) if args[0] == "evaluate" else args[0]
    TIMES[step] = TIMES.get(step, 0.0) + time.perf_counter() - t
    print(f"  ({time.perf_counter() - t:.1f}s)", flush=True)


def print_times(total: float) -> None:
    print("\nstep times: " + ", ".join(f"{step} {s:.1f}s" for step, s in TIMES.items()) + f"; total {total:.1f}s")


def pick_user(bundle: Path) -> tuple[str, int]:
    """A user with history in the bundle, and a request time just after the bundle's data."""
    import polars as pl

    recent = pl.read_parquet(bundle / "data" / "recent_events.parquet")
    busiest = recent.group_by("user_raw").len().sort("len", "user_raw", descending=[True, False])["user_raw"][0]
    return str(busiest), int(recent["ts"].max()) + 60


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_ask(bundle: Path, user: str, now: int, state: Path, *, wait: bool = True,
                  ready: Callable[[], None] | None = None) -> None:
    """Start `homefeed serve`, ask for a homepage, send a purchase, ask again, call `ready`; then keep the
    server up for the console until Ctrl-C (`wait`), or stop it."""
    import httpx

    from homefeed.serve.process import start_server

    port = 8765 if not QUIET[0] else _free_port()
    print(f"\n$ homefeed serve {bundle} --port {port} --state sqlite:{state}   (in the background)", flush=True)
    proc, url = start_server(bundle, port=port, state=f"sqlite:{state}", quiet=QUIET[0])
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
        if ready is not None:
            ready()
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


def story(out: Path, size: str, *, wait: bool) -> None:
    """Every step, in order: generate, ingest, evaluate recall and rank, build, recommend, serve."""
    t0 = time.perf_counter()
    world, dataset, bundle = out / "world", out / "dataset", out / "bundle"
    if (world / "world.json").exists() and f'"size": "{size}"' in (world / "world.json").read_text():
        print(f"reusing the {size} shop in {world} (delete it to regenerate)")
    else:
        run(["generate", "--size", size, "--out", str(world)])
    run(["ingest", str(world), "--out", str(dataset)])
    run(["evaluate", "recall", str(dataset), "--max-users", "3000"])
    print("\nthe demo trains briefly so it takes minutes, not an hour: " + "  ".join(QUICK_BUILD) +
          "\n(drop these --set lines for real runs: up to 30 epochs with early stopping, on all training days)")
    run(["evaluate", "rank", str(dataset), "--models", "lr,deepfm,din,bst", *_sets(QUICK_RANK)])
    run(["build", str(dataset), "--out", str(bundle), *_sets(QUICK_BUILD)])
    user, now = pick_user(bundle)
    state = out / "state.db"
    state.unlink(missing_ok=True)
    run(["recommend", str(bundle), "--user", user, "--now", str(now), "--state", f"sqlite:{state}"])
    t = time.perf_counter()

    def ready() -> None:  # the server answered: the story is told; the console may stay up after this
        TIMES["serve"] = time.perf_counter() - t
        print_times(time.perf_counter() - t0)

    serve_and_ask(bundle, user, now + 3600, out / "serve_state.db", wait=wait, ready=ready)


def warm_up() -> None:
    """The whole story once on the tiny shop in a temporary folder, its output hidden: numba compiles
    and caches its kernels (cache=True, beside the sources), so the first real demo does not wait for
    the compiler. `make venv` runs it right after installing."""
    import contextlib
    import io
    import tempfile

    t = time.perf_counter()
    QUIET[0] = True
    with tempfile.TemporaryDirectory(prefix="homefeed_warm_") as tmp, contextlib.redirect_stdout(io.StringIO()):
        story(Path(tmp), "tiny", wait=False)
    print(f"warm-up: every demo step ran once on the tiny shop; numba kernels compiled and cached "
          f"({time.perf_counter() - t:.0f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (default demo_out)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"], help="synthetic shop size")
    parser.add_argument("--no-wait", action="store_true", help="stop the server at the end instead of keeping the console up")
    parser.add_argument("--warm-up", action="store_true",
                        help="only run every step once on the tiny shop in a temporary folder (compiles and caches "
                             "the numba kernels; `make venv` does this after installing)")
    a = parser.parse_args()
    if a.warm_up:
        warm_up()
        return
    story(a.out, a.size, wait=not a.no_wait)
    print("\ndemo finished.")


if __name__ == "__main__":
    main()

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (default demo_out)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"], help="synthetic shop size")
    a = parser.parse_args()
    world, dataset = a.out / "world", a.out / "dataset"
    if (world / "world.json").exists() and (world / "world.json").read_text().find(f'"size": "{a.size}"') >= 0:
        print(f"reusing the {a.size} shop in {world} (delete it to regenerate)")
    else:
        run(["generate", "--size", a.size, "--out", str(world)])
    run(["ingest", str(world), "--out", str(dataset)])
    for step in STAGES:
        step(a.out, dataset)
    print("\ndemo finished.")


STAGES: list = []
"""Later stages (recall, rank, mechanism, bundle, serve) append a step here as they land."""


if __name__ == "__main__":
    main()

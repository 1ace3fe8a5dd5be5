"""`homefeed experiment`: closed-loop A/B tests on the synthetic shop, through the real serving pipeline.

Each arm gets its own bundle (built from the world's log up to the experiment's start, see
`bundles`) and its own state store. Every simulated day the same seeded population visits
(`visits`); each user belongs to one arm by a stable hash (`arms.assign`), so arms see disjoint,
comparable users. Requests run in time order, in batches in which no user appears twice: each arm
serves its requests of the batch with its `Pipeline`, the simulator answers all the batch's pages
at once, and the events go back through the `/v1/events` path before the next batch (`arm_run`).
With `retrain="daily"` every arm's bundle is rebuilt each night from its own log so far. The
metrics and their bootstrap intervals over users are in `metrics` and `stats`.

This is a simulation whose click model generated the training logs too: it flatters models that
fit that model. The negative controls (a shuffled ranker, two identical arms) keep it honest.

    >>> result = run_experiment("out/tiny", [load_arm("itemcf"), load_arm("full")], days=1,
    ...                         control="itemcf", work="out/experiment")     # doctest: +SKIP
    >>> result["vs_control"]["full"]["ctr"]                                 # doctest: +SKIP
    {'value': 0.41, 'low': 0.28, 'high': 0.55, 'significant': True}
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from homefeed.experiment.arm_run import ArmRun
from homefeed.experiment.arms import Arm, assign
from homefeed.experiment.bundles import arm_bundle, retrain as retrain_bundle, world_dataset
from homefeed.experiment.metrics import PAGE_COLUMNS, summarise
from homefeed.experiment.visits import Population

Progress = Callable[[str, int, int], None]
NOTE = ("A simulation: the shop's click model is the one that generated the training logs, so it flatters "
        "models that fit that model. The negative controls (a shuffled ranker, two identical arms) keep it honest.")
STAGES = ("state", "recall", "rank", "mechanism", "total")


def _prices(world: Path) -> tuple[np.ndarray, bool]:
    items = pl.read_parquet(world / "items.parquet")
    prices = np.zeros(int(items["item_id"].max()) + 1)
    has = "price" in items.columns and items["price"].null_count() < items.height
    if has:
        prices[items["item_id"].to_numpy()] = items["price"].fill_null(0).to_numpy()
    return prices, has


def _check_arms(arms: list[Arm], control: str | None) -> None:
    names = [a.name for a in arms]
    if len(set(names)) < len(names):
        raise ValueError(f"arm names must differ, got {names} (copy the file under another name for an A/A test)")
    if control is not None and control not in names:
        raise ValueError(f"--control {control!r} is not one of the arms: {', '.join(names)}")
    if not arms:
        raise ValueError("no arms given")


def run_experiment(world: str | Path, arms: list[Arm], *, days: int, work: str | Path, n_users: int | None = None,
                   retrain: Literal["never", "daily"] = "never", seed: int = 0, control: str | None = None,
                   n_boot: int = 1000, pairs: tuple[tuple[str, str], ...] = (), progress: Progress | None = None) -> dict:
    """Run the arms side by side for `days` simulated days; return the results (one JSON-able dict).

    pairs: (arm, other) comparisons besides each arm against `control` (e.g. ("full", "full_no_mechanism")).
    """
    world, work = Path(world), Path(work)
    _check_arms(arms, control)
    names = {a.name for a in arms}
    unknown = [n for pair in pairs for n in pair if n not in names]
    if unknown:
        raise ValueError(f"compared arm(s) {unknown} are not among the arms: {', '.join(sorted(names))}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if retrain not in ("never", "daily"):
        raise ValueError(f"retrain must be 'never' or 'daily', got {retrain!r}")
    say = progress or (lambda step, done=0, total=0: None)
    control = control or arms[0].name
    t_start = time.perf_counter()
    pop = Population.from_world(world, n_users=n_users, seed=seed)
    arm_of_user = assign(pop.user_ids.tolist(), [a.settings.share for a in arms], salt=f"experiment-{seed}")
    dataset = world_dataset(world, work, arms[0].config, lambda s: say(s, 0, 0))
    bundles = [arm_bundle(a, dataset, work, lambda s: say(s, 0, 0)) for a in arms]
    prices, has_prices = _prices(world)
    say("open the arms' stores", 0, 0)
    runs = [ArmRun.start(a, pop.user_ids[arm_of_user == k], b, work / "arms" / a.name / "start", world, seed=seed,
                         prices=prices) for k, (a, b) in enumerate(zip(arms, bundles))]
    build_s = time.perf_counter() - t_start
    retrain_s = 0.0
    try:
        for d in range(days):
            req = pop.day(d, seed=seed)
            arm_idx = arm_of_user[np.searchsorted(pop.user_ids, req.user)]
            for run in runs:
                run.new_day()
            done = 0
            for batch in req.batches():
                for k, run in enumerate(runs):
                    sel = batch[arm_idx[batch] == k]
                    run.serve_batch(req.user[sel], req.ts[sel], req.page[sel], d)
                done += len(batch)
                say(f"day {d + 1}/{days}", done, len(req))
            if retrain == "daily" and d < days - 1:
                t = time.perf_counter()
                for run in runs:
                    folder = work / "arms" / run.arm.name / f"day_{d + 1}"
                    ev, ex = run.log_frames()
                    path = retrain_bundle(run.arm, world, run.bundle_path, ev, ex, folder, lambda s: say(s, 0, 0))
                    run.switch_bundle(path, folder, seed)
                retrain_s += time.perf_counter() - t
        say("bootstrap intervals", 0, 0)
        return _results(world, runs, pop, days=days, retrain=retrain, seed=seed, control=control, n_boot=n_boot,
                        has_prices=has_prices, pairs=tuple(pairs), seconds={"setup": build_s, "retrain": retrain_s,
                                                        "total": time.perf_counter() - t_start})
    finally:
        for run in runs:
            run.close()


def _latency(timings: list[dict]) -> dict:
    out = {}
    for stage in STAGES:
        v = np.array([t[stage] for t in timings if stage in t])
        if len(v):
            out[stage] = {"n": int(len(v)), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                          "p99": float(np.percentile(v, 99)), "values": [round(float(x), 3) for x in v]}
    return out


def _results(world: Path, runs: list[ArmRun], pop: Population, *, days: int, retrain: str, seed: int, control: str,
             n_boot: int, has_prices: bool, pairs: tuple[tuple[str, str], ...], seconds: dict) -> dict:
    pages = pl.DataFrame([row for r in runs for row in r.pages], schema=list(PAGE_COLUMNS), orient="row")
    shown = pl.DataFrame([(r.arm.name, *row) for r in runs for row in r.shown], schema=["arm", "day", "user", "item"],
                         orient="row")
    n_items = len(runs[0].sim.item_std) - 1
    summary = summarise(pages, shown, arms=[r.arm.name for r in runs], control=control, n_items=n_items,
                        n_boot=n_boot, seed=seed, with_gmv=has_prices, pairs=pairs)
    arms = {}
    for r in runs:
        p = pages.filter(pl.col("arm") == r.arm.name)
        busy = sum(r.seconds.values())
        visits = int(p["visits"].sum())
        arms[r.arm.name] = {
            "description": r.arm.settings.description, "file": str(r.arm.path), "bundle": str(r.bundle_path),
            "bundle_version": r.pipeline.bundle.version, "users": int(len(r.users)), "visits": visits,
            "pages": p.height, "seconds": {k: round(v, 3) for k, v in r.seconds.items()},
            "visits_per_s": visits / busy if busy else float("nan"), "pages_per_s": p.height / busy if busy else float("nan"),
            "rank": r.arm.settings.rank, "mechanism": r.arm.settings.mechanism, "ranker": r.arm.settings.ranker,
        }
    return {
        "world": str(world), "days": days, "users": int(len(pop.user_ids)), "retrain": retrain, "seed": seed,
        "control": control, "n_boot": n_boot, "start_ts": pop.start, "note": NOTE, "seconds": seconds,
        "arms": arms, **summary,
        "latency_ms": {r.arm.name: _latency(r.timings) for r in runs},
        "examples": {r.arm.name: r.examples for r in runs},
    }

"""Issue 16's targets for `homefeed experiment`, checked on a generated shop (a benchmark, not a timed test).

    python benchmarks/experiment.py out/small --days 3 [--users N] [--retrain daily] [--json]

Runs popular, itemcf, recall_merge, full_no_mechanism, full and the two negative controls
(shuffled, full_copy) side by side with itemcf as the control, then prints each target with the
measured figure and whether it is met:

    full vs itemcf            CTR >= +10% with the interval above 0; purchases per visit >= +5%
    mechanism on vs off       repeat exposure and just-bought pages >= 30% lower; CTR given up <= 3%
    shuffled ranker           loses to full on CTR
    full_copy (A/A)           its CTR interval against full covers 0
    retrain daily (--retrain) full's CTR on the last day >= its day-1 CTR
    throughput                >= 500 simulated homepage visits per second per arm, in process

Comparisons besides the control come from `run_experiment(pairs=...)`, with their own intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ARMS = ("itemcf", "popular", "recall_merge", "full_no_mechanism", "full", "shuffled", "full_copy")


PAIRS = (("full", "full_no_mechanism"), ("shuffled", "full"), ("full_copy", "full"))


def _fmt(d: dict) -> str:
    return f"{d['value']:+.1%} [{d['low']:+.1%}, {d['high']:+.1%}]"


def targets(result: dict) -> list[tuple[str, str, bool]]:
    vs, pairs = result["vs_control"], result["pairs"]
    ctr, buy = vs["full"]["ctr"], vs["full"]["purchases_per_visit"]
    mech, shuffled, aa = pairs["full vs full_no_mechanism"], pairs["shuffled vs full"]["ctr"], pairs["full_copy vs full"]["ctr"]
    out = [
        ("full vs itemcf CTR >= +10%, interval > 0", _fmt(ctr), ctr["value"] >= 0.10 and ctr["low"] > 0),
        ("full vs itemcf purchases/visit >= +5%", _fmt(buy), buy["value"] >= 0.05),
        ("mechanism: repeat exposure >= 30% lower", _fmt(mech["repeat_exposure"]), mech["repeat_exposure"]["value"] <= -0.30),
        ("mechanism: just-bought pages >= 30% lower", _fmt(mech["just_bought_pages"]),
         mech["just_bought_pages"]["value"] <= -0.30),
        ("mechanism: CTR given up <= 3%", _fmt(mech["ctr"]), mech["ctr"]["value"] >= -0.03),
        ("shuffled ranker loses to full (CTR)", _fmt(shuffled), shuffled["high"] < 0),
        ("A/A: full_copy vs full CTR interval covers 0", _fmt(aa), aa["low"] <= 0 <= aa["high"]),
    ]
    daily = result["daily"]["full"]["ctr"]
    if result["retrain"] == "daily" and len(daily) > 1:
        out.append(("retrain: full's last-day CTR >= day-1 CTR", f"{daily[0]['value']:.4f} -> {daily[-1]['value']:.4f}",
                    daily[-1]["value"] >= daily[0]["value"]))
    slowest = min(a["visits_per_s"] for a in result["arms"].values())
    out.append(("throughput >= 500 visits/s/arm", f"{slowest:.1f} (slowest arm)", slowest >= 500))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", type=Path)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--retrain", default="never", choices=["never", "daily"])
    p.add_argument("--work", type=Path, default=Path("out/experiment_bench"))
    p.add_argument("--set", dest="set_", action="append", default=[], help="a setting for every arm (repeatable)")
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--result", type=Path, default=None, help="also save the whole result (JSON) here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    from homefeed.experiment.arms import load_arm
    from homefeed.experiment.report import write_report
    from homefeed.experiment.run import run_experiment

    t = time.perf_counter()
    result = run_experiment(a.world, [load_arm(n, base=a.set_) for n in ARMS], days=a.days, work=a.work,
                            n_users=a.users, retrain=a.retrain, control="itemcf", pairs=PAIRS,
                            progress=lambda s, d=0, n=0: print(f"  {s} {d}/{n}" if n else f"  {s}", file=sys.stderr)
                            if not n or d == n else None)
    if a.report:
        write_report(result, a.report, world=a.world)
    if a.result:
        a.result.write_text(json.dumps(result, default=float))
    rows = targets(result)
    if a.json:
        print(json.dumps({"targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in rows],
                          "seconds": time.perf_counter() - t}))
        return
    for name, measured, ok in rows:
        print(f"{'MET ' if ok else 'MISS'}  {name:55s} {measured}")
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()

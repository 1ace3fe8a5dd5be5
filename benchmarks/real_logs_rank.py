"""Benchmark: every ranking preset on the shared real logs, against LR and the constant predictor (issue 13, Rank).

For every log of `benchmarks/real_logs.py` that is present and yields ranking samples (each
skipped with the reason otherwise): ingest it the same way (same cache), build one set of samples,
train and test every preset with `homefeed.rank.evaluate.evaluate_rank` (seeded, early stopping
and calibration on valid), and check issue 13's Rank targets per log:

* every deep preset: test AUC >= LR's - 0.005 and test logloss < the constant predictor's;
* DIN and BST >= DeepFM (test AUC) where the samples carry a behaviour history.

Each preset starts as `rank.train.warm_start` says ("auto" by default: cold, and again from the
trained LR only when the cold model's valid AUC is below LR's); its row's `start` says which model was
kept, with `cold_valid_auc`, `warm_valid_auc` and `lr_valid_auc` in the JSON.

    python benchmarks/real_logs_rank.py                          # every log, every preset, a table per log
    python benchmarks/real_logs_rank.py --logs toys --presets lr,deepfm,din --json
    python benchmarks/real_logs_rank.py --out /tmp/rank.json     # also write the JSON object there, log by log
    python benchmarks/real_logs_rank.py --logs toys --max-users 3000   # a seeded sample of 3,000 users' events

`--max-users N` keeps every event of a seeded sample of N users (and the whole catalogue), so a
big log trains in minutes on a small machine; the per-user structure of the split is kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_logs import LOGS, load_log, say  # noqa: E402  (same logs, same ingest cache)

PRESETS = ("lr", "wdl", "deepfm", "pnn", "nfm", "dcn", "deepresnet", "din", "bst")
SEQUENCE = ("din", "bst")
MARGIN = 0.005


def targets(rows: dict, has_history: bool) -> dict:
    """Issue 13's Rank targets on one log's rows, each with the figures it compares."""
    out = {}
    const, lr = rows["constant"], rows["lr"]
    for name, row in rows.items():
        if name in ("constant", "lr"):
            continue
        out[f"{name}: auc>=lr-{MARGIN}"] = {"ok": row["auc"] >= lr["auc"] - MARGIN, name: row["auc"], "lr": lr["auc"]}
        out[f"{name}: logloss<constant"] = {"ok": row["logloss"] < const["logloss"], name: row["logloss"],
                                            "constant": const["logloss"]}
    if has_history and "deepfm" in rows:
        for name in SEQUENCE:
            if name in rows:
                out[f"{name}>=deepfm"] = {"ok": rows[name]["auc"] >= rows["deepfm"]["auc"], name: rows[name]["auc"],
                                          "deepfm": rows["deepfm"]["auc"]}
    return out


def sample_users(dataset, max_users: int | None, seed: int = 0):
    """The dataset restricted to the events of a seeded sample of `max_users` users (all of them when None or more)."""
    import numpy as np
    import polars as pl

    if max_users is None:
        return dataset
    if max_users < 1:
        raise ValueError(f"--max-users must be >= 1, got {max_users}")
    users = np.sort(dataset.events["user_id"].unique().to_numpy())
    if users.size <= max_users:
        return dataset
    kept = np.random.default_rng(seed).choice(users, max_users, replace=False)
    events = dataset.events.filter(pl.col("user_id").is_in(pl.Series(kept).cast(dataset.events.schema["user_id"]).implode()))
    return dataclasses.replace(dataset, events=events)


def evaluate_log(name: str, dataset, presets: list[str], overrides: list[str], saved=None) -> dict:
    """One log: samples built once, then the baselines and each preset in turn; `saved(partial)` after each one,
    so a run cut short still keeps the presets it finished."""
    from homefeed.config import load_config
    from homefeed.rank.evaluate import RankSettings, check_baselines, evaluate_rank
    from homefeed.rank.part import RankPartSettings
    from homefeed.rank.samples import build_all

    # the config's [rank] tables, as `homefeed evaluate rank` reads them (--set rank.train.KEY=V, rank.model={...})
    settings = RankPartSettings.from_section(load_config(overrides=overrides).rank).rank_settings() if overrides else RankSettings()
    t0 = time.perf_counter()
    try:
        parts = build_all(dataset, settings.samples)
        rows, meta, lr_model = {}, {}, None
        for i, preset in enumerate(["lr"] + [p for p in presets if p != "lr"]):
            results = evaluate_rank(dataset, [preset], settings, samples=parts, baselines=i == 0, lr_model=lr_model,
                                    progress=lambda text: say(f"{name}: {text}"))
            lr_model = lr_model or results.lr_model  # trained once: the baseline and the warm start
            rows |= {k: dict(v) for k, v in results.items()}
            meta = meta or dict(results.meta)
            meta["warnings"] = check_baselines(rows)
            out = {"rows": rows, "meta": meta, "targets": targets(rows, meta["fields"]["max_len"] > 0),
                   "seconds": time.perf_counter() - t0, "done": list(rows)}
            if saved is not None:
                saved(out)
    except ValueError as e:  # a log the sample protocol cannot use: say why, go on
        return {"error": str(e)}
    return out


def print_tables(results: dict) -> None:
    from rich.console import Console

    from homefeed.evaluate.report import metrics_table

    console = Console(width=200)
    from homefeed.rank.evaluate import start_text

    columns = ("auc", "gauc", "logloss", "calibration", "ece", "best_epoch", "train_s", "start", "check")
    for name, result in results.items():
        if isinstance(result, str) or "error" in result:
            console.print(f"[bold]{name}[/bold]: skipped ({result if isinstance(result, str) else result['error']})")
            continue
        s = result["meta"]["samples"]
        title = (f"{name} ({result.get('users', '?')} users): rank test metrics ({result['meta']['protocol']} protocol; rows train/valid/test "
                 f"{s['train']['rows']}/{s['valid']['rows']}/{s['test']['rows']}; history len {result['meta']['fields']['max_len']})")
        shown = {model: row | {"start": start_text(row)} for model, row in result["rows"].items()}
        console.print(metrics_table(shown, title=title, columns=columns, name_header="model"))
        misses = [(t, v) for t, v in result["targets"].items() if not v["ok"]]
        console.print(f"  targets: {len(result['targets']) - len(misses)} of {len(result['targets'])} met")
        for target, verdict in misses:
            console.print(f"  MISS {target}: " + ", ".join(f"{a} {b:.4f}" for a, b in verdict.items() if a != "ok"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", default=",".join(n for n in LOGS if n != "diginetica"),
                        help=f"comma-separated, of: {', '.join(LOGS)}")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. rank.train.lr=0.002")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "homefeed_real_logs")
    parser.add_argument("--max-users", type=int, default=None, help="keep the events of a seeded sample of this many users")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON object here after each log")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    args = parser.parse_args(argv)
    names = args.logs.split(",")
    unknown = [n for n in names if n not in LOGS]
    if unknown:
        parser.error(f"unknown log(s) {unknown}; valid: {', '.join(LOGS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name in names:
        dataset = load_log(name, LOGS[name], args.cache)
        if isinstance(dataset, str):
            results[name] = dataset
        else:
            dataset = sample_users(dataset, args.max_users)
            users = int(dataset.events["user_id"].n_unique())

            def saved(partial, name=name):
                results[name] = partial | {"users": users}
                if args.out:
                    args.out.write_text(json.dumps({"logs": results, "max_users": args.max_users}, default=float))

            results[name] = evaluate_log(name, dataset, args.presets.split(","), args.set, saved) | {"users": users}
        if args.out:
            args.out.write_text(json.dumps({"logs": results, "max_users": args.max_users}, default=float))
        if not args.json:
            print_tables({name: results[name]})
    if args.json:
        print(json.dumps({"logs": results, "presets": args.presets.split(","), "margin": MARGIN,
                          "max_users": args.max_users}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Each arm's bundle: built from the world's log up to the experiment's start, and rebuilt nightly from its own log.

Builds go through the product's own path (`homefeed.data.ingest.ingest`, then
`homefeed.bundle.build_bundle`), into a work folder:

    WORK/dataset/                   the world's log, ingested once
    WORK/mechanism/KEY/             the mechanism part alone, built once per mechanism settings
    WORK/bundles/KEY/               one bundle per build settings (arms that only differ in serving share it)
    WORK/arms/NAME/day_D/           the arm's log after day D (world log + its own traffic), dataset, bundle

The mechanism part (standard categories, image groups, blocking periods) costs most of a build on a
small machine (a CNN over the images) and does not depend on which arm served, so arms copy it and
fit only `data`, `recall` and `rank`. A nightly retrain does the same from the arm's own log.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from homefeed.bundle import build_bundle, read_manifest
from homefeed.config import Config
from homefeed.data.ingest import ingest
from homefeed.experiment.arms import Arm

Say = Callable[[str], None]
WORLD_STATIC = ("items.parquet", "users.parquet", "images.npy", "world.json")  # what an arm's log shares with the world


def world_dataset(world: Path, work: Path, config: Config, say: Say) -> Path:
    """The world's log ingested (once) into WORK/dataset."""
    out = work / "dataset"
    if not (out / "report.json").exists():
        say("ingest the world's log")
        shutil.rmtree(out, ignore_errors=True)
        ingest(world, out, config)
    return out


def _complete(bundle: Path, parts: tuple[str, ...]) -> bool:
    return set(parts) <= set(read_manifest(bundle).get("parts", {}))


def arm_parts(arm: Arm) -> tuple[str, ...]:
    """The bundle parts an arm needs besides the mechanism (no rank part when it serves recall order)."""
    return ("data", "recall", "rank") if arm.settings.rank else ("data", "recall")


def mechanism_bundle(arm: Arm, dataset: Path, work: Path, say: Say) -> Path:
    out = work / "mechanism" / arm.mechanism_key()
    if not _complete(out, ("mechanism",)):
        say(f"build the mechanism part ({arm.name})")
        shutil.rmtree(out, ignore_errors=True)
        build_bundle(dataset, out, arm.config, parts=("mechanism",))
    return out


def arm_bundle(arm: Arm, dataset: Path, work: Path, say: Say) -> Path:
    """The arm's starting bundle: its prebuilt one, or a build cached under WORK/bundles/KEY."""
    if arm.bundle_path is not None:
        if not (arm.bundle_path / "manifest.json").exists():
            raise FileNotFoundError(f"arm {arm.name}: bundle {arm.bundle_path} has no manifest.json")
        return arm.bundle_path
    out = work / "bundles" / arm.build_key()
    if _complete(out, ("mechanism", *arm_parts(arm))):
        return out
    mechanism = mechanism_bundle(arm, dataset, work, say)
    say(f"build the bundle of {arm.name}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(mechanism, out)
    build_bundle(dataset, out, arm.config, parts=arm_parts(arm))
    return out


def write_arm_log(world: Path, out: Path, events: pl.DataFrame, exposures: pl.DataFrame) -> Path:
    """A `generate`-style folder: the world's log with the arm's own events and exposures appended."""
    out.mkdir(parents=True, exist_ok=True)
    for name in WORLD_STATIC:
        if (world / name).exists() and not (out / name).exists():
            shutil.copy2(world / name, out / name)
    base_ev = pl.read_parquet(world / "events.parquet")
    pl.concat([base_ev, events.select(base_ev.columns).cast(base_ev.schema)]).sort("ts", "user_id", maintain_order=True) \
        .write_parquet(out / "events.parquet")
    base_ex = pl.read_parquet(world / "exposures.parquet")
    ex = exposures.select(base_ex.columns).cast(base_ex.schema)
    ex = ex.with_columns(pl.col("request_id") + int(base_ex["request_id"].max() or 0))  # after the world's requests
    pl.concat([base_ex, ex]).write_parquet(out / "exposures.parquet")
    return out


def retrain(arm: Arm, world: Path, current: Path, events: pl.DataFrame, exposures: pl.DataFrame, folder: Path,
            say: Say, *, parts: tuple[str, ...] | None = None) -> Path:
    """Rebuild the arm's bundle from its own log so far; the mechanism part is kept from `current`.

    A prebuilt bundle served with a ranker is retrained with the settings it was built with.
    """
    log = write_arm_log(world, folder / "log", events, exposures)
    dataset = folder / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)
    say(f"retrain {arm.name}: ingest its log")
    ingest(log, dataset, arm.config)
    out = folder / "bundle"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(current, out)
    built = read_manifest(out).get("config")
    config = arm.config if arm.bundle_path is None or not built else Config.model_validate(built)
    todo = parts or arm_parts(arm)  # a rank part left in a no-rank arm's bundle is never served
    say(f"retrain {arm.name}: build {', '.join(todo)}")
    build_bundle(dataset, out, config, parts=todo)
    (folder / "retrained.json").write_text(json.dumps({"from": str(current), "parts": list(todo)}))
    return out

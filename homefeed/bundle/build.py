"""`homefeed build DATASET --out BUNDLE`: every offline job, as a loop over the stages' parts.

Parts, in the order they are built (a later part reads what an earlier one produced):

    mechanism  leaf -> standard category, near-duplicate image groups, purchase blocking periods
    data       vocabularies, the serving item table (with standard category and image group),
               user profiles, each user's recent events (to seed the state store)
    recall     every configured channel fitted, the merger with its learned shares
    rank       the CTR model trained, exported to TorchScript (and int8), its feature encoders

Every setting is checked before any part starts (`bundle.settings.check_config`), so a typo in
`rank.train` fails at second 0, not after recall has been fitted. What is served is exactly what
was evaluated: each part's `fit` scores itself with the stage's own evaluation code. Mechanism and
recall are fitted on everything before the test days, the model on the training days (early
stopping and the int8 choice on the validation days); all are scored on the test days and those
metrics go into the manifest. `--parts recall` rebuilds one part and keeps the others.
`fitter` fits the recall channels: `fit_channels` by default; `homefeed build --engine spark` passes
the Spark engine's drop-in (`homefeed.distributed.build.spark_channel_fitter`), which this layer never imports.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from homefeed.bundle.data_part import DataPart
from homefeed.bundle.manifest import configured_key, read_manifest, sign_bundle, write_part
from homefeed.bundle.settings import PartSettings, check_config, check_slots, material_pools
from homefeed.config import Config
from homefeed.data.dataset import Dataset, serving_dataset
from homefeed.mechanism.part import MechanismPart
from homefeed.rank.part import RankPart
from homefeed.recall.part import ChannelFitter, RecallPart

PARTS = ("mechanism", "data", "recall", "rank")


def _serving_items(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "data" / "items.parquet")


def fit_part(name: str, ds: Dataset, out: Path, settings: PartSettings, *, fitter: ChannelFitter | None = None):
    """Fit one part from the dataset (and the parts already in `out`); return the fitted part (`fitter`: recall's)."""
    if name == "mechanism":
        return MechanismPart().fit(serving_dataset(ds), settings.mechanism)
    if name == "data":
        mechanism = MechanismPart.load(out / "mechanism")
        return DataPart().fit(ds, mechanism.items(ds.items))
    items = _serving_items(out)
    if name == "recall":
        return RecallPart().fit(dataclasses.replace(serving_dataset(ds), items=items), settings.recall, fitter=fitter)
    if name == "rank":  # trains on the training days, stops early on the validation days
        return RankPart().fit(dataclasses.replace(ds, items=items), settings.rank)
    raise ValueError(f"unknown bundle part {name!r}; valid parts: {', '.join(PARTS)}")


def build_bundle(dataset: str | Path, out: str | Path, config: Config | None = None, *, parts: tuple[str, ...] = PARTS,
                 progress: Callable[[str], None] | None = None, fitter: ChannelFitter | None = None) -> dict:
    """Build `parts` of the bundle at `out` from the ingested dataset; return the manifest.

    `fitter` fits the recall channels (default `fit_channels`; see the module docstring)."""
    cfg = config or Config()
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown bundle part(s) {unknown}; valid parts: {', '.join(PARTS)}")
    settings = check_config(cfg)  # before any work
    key = configured_key(cfg.bundle.key_file)  # a bad key file fails here too, before any fitting
    ds = Dataset.load(dataset)
    check_slots(cfg.serve.slots, material_pools(ds.items))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda s: None)
    for name in PARTS:  # always in dependency order
        if name not in parts:
            continue
        say(name)
        fitted = fit_part(name, ds, out, settings, fitter=fitter)
        shutil.rmtree(out / name, ignore_errors=True)
        fitted.save(out / name)
        write_part(out, name, metrics=fitted.metrics, config=cfg.model_dump(mode="json"),
                   info={"dataset": str(Path(dataset).resolve())})
    if key is not None:
        sign_bundle(out, key)
    return read_manifest(out)

"""`homefeed build DATASET --out BUNDLE`: every offline job, into one bundle the server loads.

Parts, in the order they are built (a later part reads what an earlier one wrote):

    mechanism  leaf -> standard category, near-duplicate image groups, purchase blocking periods
    data       vocabularies, the serving item table (with standard category and image group),
               user profiles, each user's recent events (to seed the state store)
    recall     every configured channel fitted, the merger with CTR-adapted shares
    rank       the CTR model trained, exported to TorchScript (and int8), its feature encoders

What is served is exactly what was evaluated: recall channels are fitted on everything before the
test days, the model on the training days (with early stopping on the validation days), both are
scored on the test days, and those metrics go into the manifest.
`--parts recall` rebuilds one part and keeps the others.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl

from homefeed.config import Config
from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.serve.bundle import read_manifest, write_part

PARTS = ("mechanism", "data", "recall", "rank")
RECENT_EVENTS = 200  # per user, copied into the bundle to seed the state store


def serving_dataset(ds: Dataset) -> Dataset:
    """The same data with train = everything before the test days, so fitted artefacts never saw the test."""
    split = TimeSplit(train_end=ds.split.valid_end, valid_end=ds.split.valid_end)
    return Dataset(events=ds.events, items=ds.items, users=ds.users, exposures=ds.exposures, split=split,
                   vocabs=ds.vocabs, path=ds.path)


def image_root(ds: Dataset) -> Path | None:
    """Where `npy:ROW` image references resolve: the folder ingest read (a `generate` folder has images.npy)."""
    report = ds.path / "report.json" if ds.path else None
    if report and report.exists():
        src = Path(json.loads(report.read_text())["source"])
        if src.is_dir():
            return src
    return None


def build_mechanism(ds: Dataset, out: Path, cfg: Config) -> dict:
    from homefeed.mechanism.categories import CategoryConfig, fit_standard_categories
    from homefeed.mechanism.image_dedup import ImageConfig, fit_image_groups
    from homefeed.mechanism.purchase_filter import PurchaseConfig, estimate_blocking_periods

    m = cfg.mechanism
    folder = out / "mechanism"
    folder.mkdir(parents=True, exist_ok=True)
    train = ds.events_in("train")
    categories = fit_standard_categories(ds.items, train, config=CategoryConfig(**m.categories), overrides=m.category_overrides)
    categories.save(folder / "standard_categories.parquet")
    metrics = {"standard_categories": categories.n_standard, "leaves": ds.items["leaf_category"].n_unique()}
    items = categories.add_column(ds.items)
    root = image_root(ds)
    if "image" in items.columns and items["image"].null_count() < items.height and root is not None:
        groups = fit_image_groups(items, root=root, config=ImageConfig(**m.images))
        groups.save(folder / "images")
        metrics["image_groups"] = int(groups.table["image_group"].n_unique())
    buys = (train.filter(pl.col("behavior") == "buy").join(items.select("item_id", "standard_category"), on="item_id")
            .select("user_id", "standard_category", "ts"))
    periods = estimate_blocking_periods(buys, end_ts=ds.split.train_end, config=PurchaseConfig(**m.purchase))
    periods.save(folder / "blocking_periods.parquet")
    metrics["median_block_days"] = float(periods.table["block_days"].median() or 0.0)
    return metrics


def build_data(ds: Dataset, out: Path, cfg: Config) -> dict:
    from homefeed.mechanism.categories import StandardCategories

    folder = out / "data"
    (folder / "vocab").mkdir(parents=True, exist_ok=True)
    for name, vocab in ds.vocabs.items():
        vocab.save(folder / "vocab" / f"{name}.parquet")
    items = StandardCategories.load(out / "mechanism" / "standard_categories.parquet").add_column(ds.items)
    groups = out / "mechanism" / "images" / "image_groups.parquet"
    if groups.exists():
        items = items.join(pl.read_parquet(groups).select("item_id", "image_group"), on="item_id", how="left")
    else:
        items = items.with_columns(image_group=pl.col("item_id").cast(pl.Int64))
    items.write_parquet(folder / "items.parquet")
    ds.users.write_parquet(folder / "users.parquet")
    recent = (ds.events.filter(pl.col("ts") < ds.split.valid_end).sort("user_id", "ts")
              .group_by("user_id", maintain_order=True).tail(RECENT_EVENTS))
    recent = recent.with_columns(ds.vocabs["user"].decode(recent["user_id"]).cast(pl.String).alias("user_raw"),
                                 ds.vocabs["item"].decode(recent["item_id"]).cast(pl.String).alias("item_raw"))
    recent.select("user_raw", "item_raw", pl.col("behavior").cast(pl.String), "ts").write_parquet(folder / "recent_events.parquet")
    (folder / "split.json").write_text(json.dumps({"train_end": ds.split.train_end, "valid_end": ds.split.valid_end}))
    return {"items": items.height, "users": ds.users.height, "recent_events": recent.height}


def build_recall(ds: Dataset, out: Path, cfg: Config) -> dict:
    from homefeed.recall import Merger, MergeSettings
    from homefeed.recall.evaluate import evaluate_recall, fit_channels

    folder = out / "recall"
    served = serving_dataset(ds)
    items = pl.read_parquet(out / "data" / "items.parquet")
    served = Dataset(events=served.events, items=items, users=served.users, exposures=served.exposures,
                     split=served.split, vocabs=served.vocabs, path=served.path)
    channels = fit_channels(served, cfg.recall.channels, cfg.recall.channel_settings)
    merger = Merger(settings=MergeSettings(**cfg.recall.merge)).fit(served)
    for name, channel in channels.items():
        channel.save(folder / name)
    merger.save(folder / "merger")
    (folder / "channels.json").write_text(json.dumps(cfg.recall.channels))
    result = evaluate_recall(served, channels, merger, ks=(20, 50, 200), part="test",
                             behaviors=tuple(cfg.recall.relevant_behaviors), max_users=5000)
    return {"merged": result.get("merged", {}), "channels": result["channels"]}


def build_rank(ds: Dataset, out: Path, cfg: Config) -> dict:
    from homefeed.serve.rank_part import build_rank_part

    # the model trains on the training days and stops early on the validation days: those stay out of its training
    return build_rank_part(ds, out / "rank", cfg, items=pl.read_parquet(out / "data" / "items.parquet"))


BUILDERS: dict[str, Callable[[Dataset, Path, Config], dict]] = {
    "mechanism": build_mechanism, "data": build_data, "recall": build_recall, "rank": build_rank,
}


def build_bundle(dataset: str | Path, out: str | Path, config: Config | None = None, *, parts: tuple[str, ...] = PARTS,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Build `parts` of the bundle at `out` from the ingested dataset; return the manifest."""
    cfg = config or Config()
    unknown = [p for p in parts if p not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown bundle part(s) {unknown}; valid parts: {', '.join(PARTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.load(dataset)
    say = progress or (lambda s: None)
    for part in PARTS:  # always in dependency order
        if part not in parts:
            continue
        say(part)
        shutil.rmtree(out / part, ignore_errors=True)
        (out / part).mkdir()
        metrics = BUILDERS[part](ds, out, cfg)
        write_part(out, part, metrics=metrics, config=cfg.model_dump(mode="json"),
                   info={"dataset": str(Path(dataset).resolve())})
    return read_manifest(out)

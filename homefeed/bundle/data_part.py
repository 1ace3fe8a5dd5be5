"""The bundle's data part: vocabularies, the serving item table, user profiles, recent events.

The serving item table is the dataset's, with the mechanism part's standard category and image
group joined on, so every stage at serving reads one table. Each user's last `RECENT_EVENTS`
events before the test days seed the state store, so a known user's first request has a history.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl

from homefeed.data.dataset import RECENT_EVENTS, Dataset
from homefeed.mechanism.part import image_root


class DataPart:
    """What serving needs of the dataset itself."""

    name = "data"

    def __init__(self):
        self.items: pl.DataFrame | None = None
        self.metrics: dict = {}
        self._dataset: Dataset | None = None
        self._recent: pl.DataFrame | None = None

    def fit(self, dataset: Dataset, items: pl.DataFrame) -> "DataPart":
        """`items`: the dataset's item table as the mechanism part extended it."""
        recent = (dataset.events.filter(pl.col("ts") < dataset.split.valid_end).sort("user_id", "ts")
                  .group_by("user_id", maintain_order=True).tail(RECENT_EVENTS))
        self._recent = recent.select(
            dataset.vocabs["user"].decode(recent["user_id"]).cast(pl.String).alias("user_raw"),
            dataset.vocabs["item"].decode(recent["item_id"]).cast(pl.String).alias("item_raw"),
            pl.col("behavior").cast(pl.String), "ts")
        self._dataset, self.items = dataset, items
        self.metrics = {"items": items.height, "users": dataset.users.height, "recent_events": recent.height}
        return self

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        (folder / "vocab").mkdir(parents=True, exist_ok=True)
        ds = self._dataset
        for name, vocab in ds.vocabs.items():
            vocab.save(folder / "vocab" / f"{name}.parquet")
        self.items.write_parquet(folder / "items.parquet")
        ds.users.write_parquet(folder / "users.parquet")
        self._recent.write_parquet(folder / "recent_events.parquet")
        (folder / "split.json").write_text(json.dumps({"train_end": ds.split.train_end, "valid_end": ds.split.valid_end}))
        root = image_root(ds)
        if root is not None and (root / "images.npy").exists():  # the bundle carries its pictures (the console shows them)
            shutil.copy2(root / "images.npy", folder / "images.npy")
        return folder

"""The mechanism stage as one bundle part: standard categories, image groups and blocking periods.

`MechanismPart.fit(dataset, settings)` calls `MechanismTables.fit`, the same code
`homefeed evaluate mechanism` scores against the shop's truth, on the dataset's training part (the
bundle passes everything before the test days), with the configured category overrides.

    >>> part = MechanismPart().fit(dataset, MechanismSettings.from_section(cfg.mechanism))   # doctest: +SKIP
    >>> part.save(bundle / "mechanism"); part.metrics["standard_categories"]                 # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from pydantic import field_validator

from homefeed.config import Section, typed
from homefeed.data.dataset import Dataset
from homefeed.mechanism import MechanismConfig, MechanismTables


def image_root(ds: Dataset) -> Path | None:
    """Where `npy:ROW` image references resolve: the folder ingest read (a `generate` folder has images.npy)."""
    report = ds.path / "report.json" if ds.path else None
    if report and report.exists():
        src = Path(json.loads(report.read_text())["source"])
        if src.is_dir():
            return src
    return None


class MechanismSettings(Section):
    """The `[mechanism]` section, typed: every knob table checked by its part's settings class."""

    config: MechanismConfig = MechanismConfig()
    category_overrides: str | None = None  # CSV/Parquet leaf_category,standard that wins over the learned mapping

    @field_validator("category_overrides")
    @classmethod
    def _exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"mechanism.category_overrides: file {value!r} does not exist")
        return value

    @classmethod
    def from_section(cls, section) -> "MechanismSettings":
        config = MechanismConfig(**{name: typed(field.annotation, getattr(section, name), f"mechanism.{name}")
                                    for name, field in MechanismConfig.model_fields.items()})
        return cls(config=config, category_overrides=section.category_overrides)


class MechanismPart:
    """The fitted mechanism tables of one bundle and what they hold."""

    name = "mechanism"

    def __init__(self, tables: MechanismTables | None = None):
        self.tables = tables
        self.metrics: dict = {}

    def fit(self, dataset: Dataset, settings: MechanismSettings = MechanismSettings()) -> "MechanismPart":
        """Fit on `dataset`'s training part (the bundle's: everything before the test days)."""
        root = image_root(dataset)
        self.tables = MechanismTables.fit(dataset.items, dataset.events_in("train"), root=root, config=settings.config,
                                          overrides=settings.category_overrides, end_ts=dataset.split.train_end,
                                          images=root is not None)
        self.metrics = self.tables.metrics(dataset.items)
        return self

    def items(self, items: pl.DataFrame) -> pl.DataFrame:
        """`items` with standard_category and image_group joined on (an item's own code when no images)."""
        out = self.tables.categories.add_column(items)
        if self.tables.images is not None:
            return out.join(self.tables.images.table.select("item_id", "image_group"), on="item_id", how="left")
        return out.with_columns(image_group=pl.col("item_id").cast(pl.Int64))

    def save(self, folder: str | Path) -> Path:
        return self.tables.save(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "MechanismPart":
        return cls(MechanismTables.load(folder))

"""The mechanism stage: what a homepage actually shows, after ranking.

Five parts, each usable alone (numpy/polars in and out, plain-data state):

- `categories`: leaf -> standard category (names + behaviour + overrides), and expansion of a user's leaves;
- `image_dedup` (+ `simhash`): near-duplicate image groups (CNN vectors -> SimHash -> multi-index -> union-find);
- `scatter`: windowed diversity rules per dimension, jointly across the channels of one page;
- `exposure`: several pages per refresh, rotated by the index the client reports, rebuilt on new behaviour;
- `purchase_filter`: per-category blocking after a purchase, lifted by repeated clicks.

`MechanismTables` fits and saves the offline artefacts (the bundle's `mechanism/` folder):

    >>> tables = MechanismTables.fit(items, events, root="out/small")   # doctest: +SKIP
    >>> tables.save("bundle/mechanism"); attrs = tables.attributes(items)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from homefeed.config import Section
from homefeed.mechanism.categories import CategoryConfig, StandardCategories, fit_standard_categories
from homefeed.mechanism.exposure import ExposureConfig, ExposureState, build_templates
from homefeed.mechanism.image_dedup import ImageConfig, ImageGroups, fit_image_groups
from homefeed.mechanism.purchase_filter import BlockingPeriods, PurchaseConfig, PurchaseState, estimate_blocking_periods
from homefeed.mechanism.scatter import ItemAttributes, Page, Rule, ScatterConfig, scatter


class MechanismConfig(Section):
    categories: CategoryConfig = CategoryConfig()
    images: ImageConfig = ImageConfig()
    scatter: ScatterConfig = ScatterConfig()
    exposure: ExposureConfig = ExposureConfig()
    purchase: PurchaseConfig = PurchaseConfig()

    @classmethod
    def from_section(cls, section) -> "MechanismConfig":
        """The `[mechanism]` knob tables of a `homefeed.config.Config` (unknown keys are errors here)."""
        return cls(**{name: getattr(section, name) for name in cls.model_fields})


@dataclass
class MechanismTables:
    """The offline artefacts the online stage reads: standard categories, image groups, blocking periods."""

    categories: StandardCategories
    images: ImageGroups | None
    periods: BlockingPeriods

    @classmethod
    def fit(cls, items: pl.DataFrame, events: pl.DataFrame, *, root: str | Path | None = None,
            config: MechanismConfig | None = None, overrides: str | Path | pl.DataFrame | None = None,
            end_ts: int | None = None, images: bool = True) -> "MechanismTables":
        """Learn all three from the catalogue (`root` holds images.npy / image files) and past events.

        The one fitting path: the bundle's mechanism part and `evaluate mechanism` both call it.
        overrides: leaf_category,standard pairs that win over the learned mapping.
        end_ts: when the log ends (default: its last event), the horizon of the blocking-period estimates.
        """
        cfg = config or MechanismConfig()
        cats = fit_standard_categories(items, events, config=cfg.categories, overrides=overrides)
        has_images = "image" in items.columns and items["image"].null_count() < items.height
        groups = fit_image_groups(items, root=root, config=cfg.images) if images and has_images else None
        buys = (events.filter(pl.col("behavior").cast(pl.String) == "buy")
                .join(cats.add_column(items.select("item_id", "leaf_category")), on="item_id")
                .drop_nulls("standard_category").select("user_id", "standard_category", "ts"))
        end = int(events["ts"].max()) if end_ts is None else int(end_ts)
        return cls(cats, groups, estimate_blocking_periods(buys, end_ts=end, config=cfg.purchase))

    def metrics(self, items: pl.DataFrame) -> dict:
        """What the fitted tables hold, for the bundle manifest."""
        out = {"standard_categories": self.categories.n_standard, "leaves": items["leaf_category"].n_unique(),
               "median_block_days": float(self.periods.table["block_days"].median() or 0.0)}
        if self.images is not None:
            out["image_groups"] = int(self.images.table["image_group"].n_unique())
        return out

    def attributes(self, items: pl.DataFrame) -> ItemAttributes:
        """Scatter attributes of `items` with their standard category and image group joined on."""
        frame = self.categories.add_column(items)
        if self.images is not None:
            frame = frame.join(self.images.table.select("item_id", "image_group"), on="item_id", how="left")
        else:
            frame = frame.with_columns(pl.lit(None, pl.Int64).alias("image_group"))
        if "venue" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Int64).alias("venue"))
        return ItemAttributes.from_items(frame)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.categories.save(folder / "standard_categories.parquet")
        self.periods.save(folder / "blocking_periods.parquet")
        if self.images is not None:
            self.images.save(folder / "images")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "MechanismTables":
        folder = Path(folder)
        images = ImageGroups.load(folder / "images") if (folder / "images").exists() else None
        return cls(StandardCategories.load(folder / "standard_categories.parquet"), images,
                   BlockingPeriods.load(folder / "blocking_periods.parquet"))


__all__ = [
    "MechanismConfig", "MechanismTables", "ImageConfig", "ImageGroups", "fit_image_groups", "CategoryConfig",
    "StandardCategories", "fit_standard_categories", "ExposureConfig", "ExposureState", "build_templates",
    "BlockingPeriods", "PurchaseConfig", "PurchaseState", "estimate_blocking_periods", "ItemAttributes", "Page", "Rule",
    "ScatterConfig", "scatter",
]

"""The mechanism stage: what a homepage actually shows, after ranking.

Five parts, each usable alone (numpy/polars in and out, plain-data state):

- `categories`: leaf -> standard category (names + behaviour + overrides), and expansion of a user's leaves;
- `image_dedup` (+ `simhash`): near-duplicate image groups (CNN vectors -> SimHash -> multi-index -> union-find);
- `scatter`: windowed diversity rules per dimension, jointly across the channels of one page;
- `exposure`: several pages per refresh, rotated by the index the client reports, rebuilt on new behaviour;
- `purchase_filter`: per-category blocking after a purchase, lifted by repeated clicks.

`MechanismConfig` gathers their settings (one `Section` each).
"""
from homefeed.config import Section
from homefeed.mechanism.categories import CategoryConfig, StandardCategories, fit_standard_categories
from homefeed.mechanism.image_dedup import ImageConfig, ImageGroups, fit_image_groups
from homefeed.mechanism.exposure import ExposureConfig, ExposureState, build_templates
from homefeed.mechanism.purchase_filter import BlockingPeriods, PurchaseConfig, PurchaseState, estimate_blocking_periods
from homefeed.mechanism.scatter import ItemAttributes, Page, Rule, ScatterConfig, scatter


class MechanismConfig(Section):
    categories: CategoryConfig = CategoryConfig()
    images: ImageConfig = ImageConfig()
    scatter: ScatterConfig = ScatterConfig()
    exposure: ExposureConfig = ExposureConfig()
    purchase: PurchaseConfig = PurchaseConfig()


__all__ = [
    "MechanismConfig", "ImageConfig", "ImageGroups", "fit_image_groups", "CategoryConfig", "StandardCategories", "fit_standard_categories", "ExposureConfig",
    "ExposureState", "build_templates", "BlockingPeriods", "PurchaseConfig", "PurchaseState",
    "estimate_blocking_periods", "ItemAttributes", "Page", "Rule", "ScatterConfig", "scatter",
]

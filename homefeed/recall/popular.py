"""Popularity recall: the items the whole shop acts on most lately, the fallback of last resort.

Every event adds its behaviour's weight to its item, discounted by its age at the end of training
with a half-life (exponential time decay), so last week's hit outranks last month's:

    score(i) = sum over events e on i of  w[behavior_e] * 0.5 ** ((t_end - ts_e) / half_life)

It serves every user, known or not, and is what a page falls back to when personal channels are
empty. Items the user already bought are skipped unless `exclude_bought` is off.

    >>> pop = Popular(settings=PopularSettings(half_life_days=3)).fit(ds)   # doctest: +SKIP
    >>> pop.recall(state, 50).items[:5]                                      # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import UserState
from homefeed.recall.base import Candidates, Recaller

DEFAULT_WEIGHTS = {"pv": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0}


def behavior_weight_expr(weights: dict[str, float], column: str = "behavior") -> pl.Expr:
    """A Float64 expression: the weight of each row's behaviour (0 for behaviours not in `weights`)."""
    return pl.col(column).cast(pl.String).replace_strict(weights, default=0.0, return_dtype=pl.Float64)


def check_behaviors(names, where: str) -> None:
    unknown = [b for b in names if b not in BEHAVIORS]
    if unknown:
        raise ValueError(f"{where}: unknown behaviour(s) {unknown}; valid behaviours: {', '.join(BEHAVIORS)}")


class PopularSettings(Section):
    half_life_days: float = 3.0  # an event this many days older than the end of training counts half
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # per behaviour; missing = 0
    max_items: int = 1000  # how many of the most popular items are kept (the most any request can get)
    exclude_bought: bool = True  # skip items the user already bought


class Popular(Recaller):
    """Time-decayed popularity.

    Attributes (after `fit`):
        items_: (n,) int32 item codes, most popular first (n <= settings.max_items).
        scores_: (n,) float32 decayed weighted event counts, descending.
        t_end_: int, the time the decay is measured from (end of the training part).
    """

    name = "popular"
    Settings = PopularSettings

    def __init__(self, *, settings: PopularSettings | None = None):
        self.settings = settings or PopularSettings()
        check_behaviors(self.settings.weights, "popular.weights")

    def fit(self, dataset: Dataset) -> "Popular":
        events = dataset.events_in("train")
        self.t_end_ = int(dataset.split.train_end)
        half_life = self.settings.half_life_days * 86400.0
        scored = (
            events.with_columns(
                w=behavior_weight_expr(self.settings.weights)
                * (pl.lit(0.5).pow((pl.lit(self.t_end_) - pl.col("ts")).cast(pl.Float64) / half_life))
            )
            .filter(pl.col("w") > 0)
            .group_by("item_id")
            .agg(pl.col("w").sum())
            .sort(["w", "item_id"], descending=[True, False])
            .head(self.settings.max_items)
        )
        self.items_ = scored["item_id"].to_numpy().astype(np.int32)
        self.scores_ = scored["w"].to_numpy().astype(np.float32)
        return self

    def recall(self, state: UserState, k: int) -> Candidates:
        items, scores = self.items_, self.scores_
        if self.settings.exclude_bought:
            bought = state.recent(behaviors=("buy",))
            if bought.size:
                head = min(k + bought.size, items.size)  # the top k survive unless bought ones are among them
                keep = ~np.isin(items[:head], bought)
                items, scores = items[:head][keep], scores[:head][keep]
        return Candidates(items[:k].copy(), scores[:k].copy(), np.full(min(k, items.size), -1, np.int32), self.name)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "popular.npz", items=self.items_, scores=self.scores_, t_end=np.int64(self.t_end_))
        (path / "settings.json").write_text(self.settings.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> "Popular":
        path = Path(path)
        rec = cls(settings=PopularSettings.model_validate(json.loads((path / "settings.json").read_text())))
        with np.load(path / "popular.npz", allow_pickle=False) as z:
            rec.items_, rec.scores_, rec.t_end_ = z["items"], z["scores"], int(z["t_end"])
        return rec

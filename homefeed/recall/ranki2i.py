"""Ranki2i: an i2i table re-scored by how often its recommendations were actually clicked.

Co-occurrence says "j is related to t"; the exposure log says whether users who were shown j
*because of* t clicked it. Ranki2i multiplies the two (the "rank i2i" of Taobao's homepage recall):

    score(t, j) = s(t, j) * ctr(t, j)

where s is a base table (Item-CF or Swing) and ctr is a smoothed click-through rate from exposures
that carry the trigger. Most (t, j) pairs were shown a few times or never, so the raw rate is noise;
Bayesian smoothing (a Beta prior, written as pseudo-exposures) pulls a thin estimate toward the
next coarser one, which is in turn smoothed toward the global rate:

    p0      = (C + 1) / (N + 2)                            global, Laplace's rule (never 0 or 1)
    p(j)    = (c_j + m_item * p0) / (n_j + m_item)         item j over all its exposures
    p(t, j) = (c_tj + m_pair * p(j)) / (n_tj + m_pair)     j shown with trigger t

A pair never shown gets p(j); an item never shown gets p0.

Tiny example: 10 exposures, 2 clicks overall gives p0 = 3/12 = 0.25; item 5 shown 4 times, clicked
twice, m_item = 4: p(5) = (2 + 1) / 8 = 0.375; pair (3, 5) shown twice, clicked twice, m_pair = 2:
p(3, 5) = (2 + 0.75) / 4 = 0.6875.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.recall.i2i import I2IRecaller, I2ITable, TriggerSettings
from homefeed.recall.itemcf import ItemCF
from homefeed.recall.swing import Swing


class RankI2ISettings(Section):
    """Ranki2i settings."""

    base: Literal["itemcf", "swing"] = "itemcf"  # the table re-scored (fitted with its default settings)
    item_prior: float = Field(100.0, ge=0)  # pseudo-exposures pulling an item's CTR toward the global CTR
    pair_prior: float = Field(20.0, ge=0)  # pseudo-exposures pulling a (trigger, item) CTR toward the item's
    channels: list[str] = Field(default_factory=list)  # learn pair CTRs from these channels only; empty = all
    top_n: int = Field(100, ge=1)  # neighbours kept per item after re-scoring
    triggers: TriggerSettings = TriggerSettings()


@dataclass
class PairCTR:
    """Smoothed CTRs: `global_ctr`, `item_ctr` (n_items,) float64, and per shown (trigger, item) pair
    `pair_keys` (sorted int64 trigger * n_items + item) with `pair_ctr` aligned to them."""

    global_ctr: float
    item_ctr: np.ndarray
    pair_keys: np.ndarray
    pair_ctr: np.ndarray

    def lookup(self, triggers: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n,) float64 smoothed CTR of each (trigger, item); unseen pairs fall back to the item's CTR."""
        n_items = self.item_ctr.size
        out = self.item_ctr[items].copy()
        if self.pair_keys.size:
            keys = np.asarray(triggers, np.int64) * n_items + np.asarray(items, np.int64)
            pos = np.minimum(np.searchsorted(self.pair_keys, keys), self.pair_keys.size - 1)
            hit = self.pair_keys[pos] == keys
            out[hit] = self.pair_ctr[pos[hit]]
        return out


def smoothed_ctr(exposures: pl.DataFrame | None, n_items: int, *, settings: RankI2ISettings | None = None) -> PairCTR:
    """Global, item and (trigger, item) CTRs from encoded exposures (item_id, clicked[, trigger_item, channel])."""
    s = settings if settings is not None else RankI2ISettings()
    if exposures is None or exposures.height == 0:
        return PairCTR(0.5, np.full(n_items, 0.5), np.zeros(0, np.int64), np.zeros(0))
    missing = [c for c in ("item_id", "clicked") if c not in exposures.columns]
    if missing:
        raise ValueError(f"exposures lack column(s) {missing}; columns: {', '.join(exposures.columns)}")
    clicked = exposures["clicked"].cast(pl.Float64).to_numpy()
    item = exposures["item_id"].to_numpy().astype(np.int64)
    if item.size and int(item.max()) >= n_items:
        raise ValueError(f"exposures hold item code {int(item.max())} but n_items is {n_items}")
    p0 = (clicked.sum() + 1.0) / (clicked.size + 2.0)
    c_item = np.bincount(item, weights=clicked, minlength=n_items)
    n_item = np.bincount(item, minlength=n_items).astype(np.float64)
    item_ctr = (c_item + s.item_prior * p0) / np.maximum(n_item + s.item_prior, 1e-12)
    item_ctr[n_item + s.item_prior == 0] = p0
    if "trigger_item" not in exposures.columns:
        return PairCTR(float(p0), item_ctr, np.zeros(0, np.int64), np.zeros(0))
    shown = exposures.filter(pl.col("trigger_item").is_not_null() & (pl.col("trigger_item") > 0))
    if s.channels:
        shown = shown.filter(pl.col("channel").is_in(s.channels))
    pairs = (shown.group_by(key=pl.col("trigger_item").cast(pl.Int64) * n_items + pl.col("item_id").cast(pl.Int64))
             .agg(c=pl.col("clicked").cast(pl.Float64).sum(), n=pl.len().cast(pl.Float64)).sort("key"))
    keys = pairs["key"].to_numpy()
    prior = item_ctr[keys % n_items]
    n = pairs["n"].to_numpy()
    pair_ctr = (pairs["c"].to_numpy() + s.pair_prior * prior) / np.maximum(n + s.pair_prior, 1e-12)
    return PairCTR(float(p0), item_ctr, keys, pair_ctr)


def rank_table(table: I2ITable, ctr: PairCTR, *, top_n: int) -> I2ITable:
    """Every entry s(t, j) of `table` times ctr(t, j), rows re-sorted and truncated to `top_n`."""
    rows = np.repeat(np.arange(table.n_items), np.diff(table.indptr))
    scores = table.scores.astype(np.float64) * ctr.lookup(rows, table.neighbors)
    return I2ITable.from_rows(rows, table.neighbors, scores, table.n_items, top_n=top_n)


class RankI2I(I2IRecaller):
    """Ranki2i channel: a base i2i table re-scored by smoothed (trigger, item) CTRs from training exposures.

    Args:
        settings: RankI2ISettings.
        base_table: a fitted base table to re-score (e.g. `ItemCF().fit(ds).table_`), to avoid fitting it twice;
            default: fit the `settings.base` channel here.

    Attributes:
        table_: the re-scored I2ITable.
        ctr_: the PairCTR it was scored with.
    """

    name = "ranki2i"
    Settings = RankI2ISettings
    BASES = {"itemcf": ItemCF, "swing": Swing}

    def __init__(self, *, settings: RankI2ISettings | None = None, base_table: I2ITable | None = None):
        super().__init__(settings=settings)
        self.base_table = base_table
        self.ctr_: PairCTR | None = None

    def fit(self, dataset: Dataset) -> "RankI2I":
        base = self.base_table
        if base is None:
            base = self.BASES[self.settings.base]().fit(dataset).table_
        if base.n_items != dataset.n_items:
            raise ValueError(f"base_table has {base.n_items} rows but the dataset has {dataset.n_items} item codes")
        self.ctr_ = smoothed_ctr(dataset.exposures_in("train"), dataset.n_items, settings=self.settings)
        self.table_ = rank_table(base, self.ctr_, top_n=self.settings.top_n)
        return self

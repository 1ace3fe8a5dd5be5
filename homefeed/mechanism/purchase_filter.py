"""Personalised purchase-category filtering: don't show a user more of what they have just bought.

After a purchase, the user's standard category is blocked for a period that depends on the
category: long for durable goods (a sofa), short for consumables (coffee). The period is estimated
from the logs' repurchase intervals with survival analysis: buys of one user in one standard
category, merged when closer than a basket gap, give observed intervals, and the time since the
last buy is a *censored* interval (no rebuy yet). The Kaplan-Meier estimate (Kaplan & Meier 1958)
of "time until rebuy" then gives the block as the time by which `quantile` of buyers have rebought
-- a robust statistic that ignores the long tail. Categories whose buyers mostly never rebought
within the log get `long_days`; categories with too few buyers get `default_days`; all are clipped.

Filtering is real-time: each event updates the state (`on_event`), and if the user keeps clicking a
blocked category (at least `unblock_clicks` times during the block) the interest is back and the
block is lifted. The state is plain data (JSON via `to_dict`) kept in the user-state store.

    >>> periods = BlockingPeriods(pl.DataFrame({"standard_category": [3], "block_days": [10.0]}))
    >>> st = on_event(PurchaseState(), standard=3, behavior="buy", ts=0, periods=periods)
    >>> allowed(st, np.array([3, 4]), now=86_400).tolist()        # day 1: category 3 blocked
    [False, True]
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from homefeed.config import Section

DAY = 86_400


class PurchaseConfig(Section):
    unblock_clicks: int = 5  # clicks on a blocked category during its block that lift it
    click_behaviors: list[str] = ["click"]  # behaviours that count as such clicks (add "pv" for any view)
    quantile: float = 0.2  # block = time by which this share of buyers rebought (Kaplan-Meier)
    min_buyers: int = 20  # fewer (user, category) buy histories -> default_days
    default_days: float = 30.0
    long_days: float = 90.0  # the quantile is never reached within the log: a long-cycle category
    min_days: float = 1.0
    max_days: float = 365.0
    basket_gap_s: int = DAY  # buys of one category closer than this are one purchase


class BlockingPeriods:
    """Block length per standard category. `table`: standard_category, block_days (+ diagnostics)."""

    def __init__(self, table: pl.DataFrame, *, default_days: float = 30.0):
        self.table = table.sort("standard_category")
        self.default_days = default_days
        self._std = self.table["standard_category"].to_numpy().astype(np.int64)
        self._days = self.table["block_days"].to_numpy().astype(np.float64)

    def days_of(self, standards: np.ndarray) -> np.ndarray:
        """(n,) standard categories -> (n,) float64 block days (default_days when unknown)."""
        s = np.asarray(standards, np.int64)
        if not len(self._std):
            return np.full(s.shape, self.default_days)
        pos = np.minimum(np.searchsorted(self._std, s), len(self._std) - 1)
        return np.where(self._std[pos] == s, self._days[pos], self.default_days)

    def save(self, path: str | Path) -> Path:
        self.table.with_columns(pl.lit(self.default_days).alias("default_days")).write_parquet(path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "BlockingPeriods":
        t = pl.read_parquet(path)
        default = float(t["default_days"][0]) if t.height and "default_days" in t.columns else 30.0
        return cls(t.drop("default_days", strict=False), default_days=default)


def repurchase_intervals(buys: pl.DataFrame, *, end_ts: int, basket_gap_s: int = DAY) -> pl.DataFrame:
    """Per (user, standard) purchase: time to the next purchase in days, or censored at `end_ts`.

    `buys`: user_id, standard_category, ts. Returns standard_category, days (Float64), rebought (bool).
    """
    b = buys.select("user_id", "standard_category", "ts").sort(["user_id", "standard_category", "ts"])
    key = ["user_id", "standard_category"]
    new = (pl.col("ts") - pl.col("ts").shift(1).over(key)).fill_null(basket_gap_s + 1) > basket_gap_s
    b = b.filter(new)  # one row per purchase occasion
    nxt = pl.col("ts").shift(-1).over(key)
    return b.select(
        "standard_category",
        ((pl.coalesce(nxt, pl.lit(end_ts)) - pl.col("ts")) / DAY).alias("days"),
        nxt.is_not_null().alias("rebought"),
    )


def estimate_blocking_periods(buys: pl.DataFrame, *, end_ts: int | None = None, config: PurchaseConfig | None = None) -> BlockingPeriods:
    """Kaplan-Meier `quantile` of time-to-rebuy per standard category, clipped, with defaults.

    `buys`: user_id, standard_category, ts of purchases (cleaned logs). `end_ts`: end of the log (default: last buy).
    """
    cfg = config or PurchaseConfig()
    end_ts = int(buys["ts"].max()) if end_ts is None else end_ts
    iv = repurchase_intervals(buys, end_ts=end_ts, basket_gap_s=cfg.basket_gap_s)
    km = (
        iv.group_by("standard_category", "days").agg(pl.col("rebought").sum().alias("d"), pl.len().alias("c"))
        .sort("standard_category", "days")
        .with_columns(at_risk=pl.col("c").sum().over("standard_category") - pl.col("c").cum_sum().over("standard_category") + pl.col("c"))
        .with_columns(surv=(1 - pl.col("d") / pl.col("at_risk")).cum_prod().over("standard_category"))
    )
    reached = km.filter(pl.col("surv") <= 1 - cfg.quantile).group_by("standard_category").agg(pl.col("days").min().alias("km_days"))
    stats = iv.group_by("standard_category").agg(pl.len().alias("n_buys"), pl.col("rebought").sum().alias("n_rebuys"))
    table = (
        stats.join(reached, on="standard_category", how="left")
        .with_columns(
            pl.when(pl.col("n_buys") < cfg.min_buyers).then(pl.lit("default"))
            .when(pl.col("km_days").is_null()).then(pl.lit("long"))
            .otherwise(pl.lit("estimated")).alias("source"))
        .with_columns(
            pl.when(pl.col("source") == "default").then(pl.lit(cfg.default_days))
            .when(pl.col("source") == "long").then(pl.lit(cfg.long_days))
            .otherwise(pl.col("km_days")).clip(cfg.min_days, cfg.max_days).alias("block_days"))
        .select("standard_category", "block_days", "n_buys", "n_rebuys", "source")
    )
    return BlockingPeriods(table, default_days=cfg.default_days)


@dataclass(frozen=True)
class PurchaseState:
    """Blocked standard categories of one user: standard -> [blocked until (unix s), clicks since the buy]."""

    blocks: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"blocks": {str(k): list(v) for k, v in self.blocks.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "PurchaseState":
        return cls({int(k): [int(v[0]), int(v[1])] for k, v in d.get("blocks", {}).items()})


def on_event(state: PurchaseState, *, standard: int, behavior: str, ts: int, periods: BlockingPeriods,
             config: PurchaseConfig | None = None) -> PurchaseState:
    """The state after one event of the user on an item of standard category `standard`."""
    cfg = config or PurchaseConfig()
    blocks = {k: v for k, v in state.blocks.items() if v[0] > ts}  # drop expired blocks
    standard = int(standard)
    if standard < 0:
        return PurchaseState(blocks)
    if behavior == "buy":
        until = ts + int(periods.days_of(np.array([standard]))[0] * DAY)
        blocks[standard] = [max(until, blocks.get(standard, [0, 0])[0]), 0]
    elif behavior in cfg.click_behaviors and standard in blocks:
        until, clicks = blocks[standard]
        if clicks + 1 >= cfg.unblock_clicks:
            del blocks[standard]
        else:
            blocks[standard] = [until, clicks + 1]
    return replace(state, blocks=blocks)


def blocked(state: PurchaseState, now: int) -> np.ndarray:
    """Standard categories blocked at `now`, sorted int64."""
    return np.array(sorted(k for k, v in state.blocks.items() if v[0] > now), np.int64)


def allowed(state: PurchaseState, standards: np.ndarray, now: int) -> np.ndarray:
    """(n,) bool keep-mask for candidates whose standard categories are `standards` (n,)."""
    return ~np.isin(np.asarray(standards, np.int64), blocked(state, now))

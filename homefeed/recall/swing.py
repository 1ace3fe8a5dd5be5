"""Swing: items are similar when pairs of users who share *little else* both chose them.

From Alibaba's product graph (Yang et al., "Large Scale Product Graph Construction for
Recommendation in E-commerce", 2020). Two users u, v who both acted on i form a "swing"
u - i - v; if they also both acted on j, that is evidence that i and j are related, and the
evidence is stronger the less else u and v have in common (many shared items suggests two heavy
users, or a crawler pair, not a specific relation):

    s(i, j) = sum over user pairs {u, v} in U_i & U_j of  w_u * w_v / (alpha2 + |I_u & I_v|)
    w_u     = (|I_u| + alpha1) ^ -beta

Each unordered pair counts once. Defaults follow Flink ML's `Swing`: alpha1 = 15, alpha2 = 0,
beta = 0.3, users with up to 1000 distinct items, at most 1000 users per item (a pseudo-random but
deterministic sample of the item's users, by a hash of (user, item, seed)), top 100 per item.

Two defaults differ, so Swing does not collapse on a small user base (a real shop's first weeks, a
log of a hundred users) where few item pairs are shared by two users at all: users need only 2
items (Flink ML: 10), and a user also pairs with themself (`self_pairs`), adding

    w_u^2 / (alpha2 + |I_u|)      for every u in U_i & U_j

no more than a pair of two users like u adds (they share at most |I_u| items), so it mostly orders
what no two users join.

Tiny example (alpha1 = 0, alpha2 = 0, beta = 0, so w = 1, no self pairs): A: {1, 2}, B: {1, 2}, C: {1, 3}.
U_1 = {A, B, C}; pair {A, B} shares {1, 2}: adds 1/2 to s(1, 2); pairs {A, C}, {B, C} share only
item 1 and add nothing elsewhere. Row 1 = [2 (0.5)]. With self pairs, A and B each add 1/2 to
s(1, 2) and C adds 1/2 to s(1, 3): row 1 = [2 (1.5), 3 (0.5)].

The work runs in `i2i_kernels.swing_rows` (numba), items in parallel.
"""
from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.data.user_state import BEHAVIOR_CODE
from homefeed.recall import i2i_kernels as kernels
from homefeed.recall.i2i import I2IRecaller, I2ITable, TriggerSettings

MASK32 = 0xFFFFFFFF


class SwingSettings(Section):
    """Swing table settings (Flink ML defaults)."""

    alpha1: float = Field(15.0, ge=0)  # smooths the user weight (|I_u| + alpha1)^-beta
    alpha2: float = Field(0.0, ge=0)  # smooths the pair term 1 / (alpha2 + |I_u & I_v|)
    beta: float = Field(0.3, ge=0)  # how strongly active users are down-weighted
    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS))  # events that count as acting on an item
    min_user_items: int = Field(2, ge=1)  # users with fewer distinct items are left out (Flink ML: 10, for logs of millions)
    self_pairs: bool = True  # a user paired with themself adds w_u^2 / (alpha2 + |I_u|): items only one user shares still pair
    max_user_items: int = Field(1_000, ge=1, le=60_000)  # ... and users with more (crawlers, resellers)
    max_users_per_item: int = Field(1_000, ge=2, le=4_096)  # sample of an item's users (dense per-row matrix)
    top_n: int = Field(100, ge=1)  # neighbours kept per item
    seed: int = 0  # of the user sample per item
    triggers: TriggerSettings = TriggerSettings()

    @field_validator("behaviors")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in BEHAVIOR_CODE]
        if bad or not v:
            raise ValueError(f"unknown behaviour(s) {bad}; valid behaviours: {', '.join(BEHAVIORS)}")
        return v

    @model_validator(mode="after")
    def _range(self) -> "SwingSettings":
        if self.max_user_items < self.min_user_items:
            raise ValueError(f"max_user_items ({self.max_user_items}) is below min_user_items ({self.min_user_items})")
        return self


def sample_key(user: np.ndarray, item: np.ndarray, seed: int) -> np.ndarray:
    """A 32-bit pseudo-random key per (user, item): an item keeps the users with the smallest keys.

    Integer hashing (multiply, xor, shift mod 2^32), so plain Python can reproduce it:
    h = ((u * 0x9E3779B1) ^ (i * 0x85EBCA77) ^ seed) mod 2^32; h = (h ^ (h >> 15)) * 0x2C1B3C6D mod 2^32;
    key = h ^ (h >> 13).
    """
    u = np.asarray(user, np.uint64)
    i = np.asarray(item, np.uint64)
    h = ((u * np.uint64(0x9E3779B1)) ^ (i * np.uint64(0x85EBCA77)) ^ np.uint64(seed & MASK32)) & np.uint64(MASK32)
    h = ((h ^ (h >> np.uint64(15))) * np.uint64(0x2C1B3C6D)) & np.uint64(MASK32)
    return h ^ (h >> np.uint64(13))


def swing_inputs(events: pl.DataFrame, n_items: int, settings: SwingSettings) -> dict[str, np.ndarray]:
    """Distinct (user, item) pairs of the chosen behaviours, users filtered by activity, items' users sampled.

    Returns user_ptr/user_items (each kept user's full item list, sorted), user_w (n_users,) float64,
    item_ptr/item_users (each item's sampled users, the most active first).
    """
    s = settings
    codes = [BEHAVIOR_CODE[b] for b in s.behaviors]
    pairs = (events.filter((pl.col("item_id") > 0) & pl.col("behavior").to_physical().is_in(codes))
             .select("user_id", "item_id").unique()
             .filter(pl.len().over("user_id").is_between(s.min_user_items, s.max_user_items))
             .with_columns(user=(pl.col("user_id").rank("dense") - 1).cast(pl.Int64))
             .sort("user", "item_id"))
    if pairs.height and int(pairs["item_id"].max()) >= n_items:
        raise ValueError(f"events hold item code {int(pairs['item_id'].max())} but n_items is {n_items}; "
                         "pass n_items = the item vocabulary size (dataset.n_items)")
    user, item = pairs["user"].to_numpy(), pairs["item_id"].to_numpy().astype(np.int64)
    n_users = int(user.max()) + 1 if user.size else 0
    counts = np.bincount(user, minlength=n_users)
    user_ptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts, out=user_ptr[1:])
    key = sample_key(pairs["user_id"].to_numpy(), item, s.seed)
    order = np.lexsort((key, item))  # by item, smallest keys first
    item_counts = np.bincount(item, minlength=n_items)
    rank = np.arange(order.size) - np.repeat(np.cumsum(item_counts) - item_counts, item_counts)
    kept = order[rank < s.max_users_per_item]
    kept = kept[np.lexsort((user[kept], -counts[user[kept]], item[kept]))]  # most active users first (cache locality)
    item_ptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.bincount(item[kept], minlength=n_items), out=item_ptr[1:])
    user_w = (counts + s.alpha1) ** -s.beta
    self_w = user_w ** 2 / (s.alpha2 + counts) if s.self_pairs else np.zeros(n_users)
    return {"user_ptr": user_ptr, "user_items": item.astype(np.int32), "user_w": user_w, "self_w": self_w,
            "item_ptr": item_ptr, "item_users": user[kept]}


def swing_table(events: pl.DataFrame, n_items: int, *, settings: SwingSettings | None = None,
                rows: np.ndarray | None = None) -> I2ITable:
    """The Swing i2i table of an encoded events frame (user_id, item_id, behavior, ts).

    Args:
        n_items: rows of the table (item codes 0..n_items-1).
        rows: compute only these items' rows (for sampling benchmarks); default every item.
    """
    s = settings if settings is not None else SwingSettings()
    x = swing_inputs(events, n_items, s)
    n_users_of = np.diff(x["item_ptr"])
    fewest = 1 if s.self_pairs else 2  # users an item needs for a row
    rows = np.flatnonzero(n_users_of >= fewest) if rows is None else np.unique(np.asarray(rows, np.int64))
    rows = rows[n_users_of[rows] >= fewest]
    if rows.size == 0:
        return I2ITable(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    list_len = np.diff(x["user_ptr"])[x["item_users"]]  # |I_u| for every (item, sampled user)
    per_row = np.add.reduceat(list_len, x["item_ptr"][:-1][n_users_of > 0])  # sum of |I_u| per non-empty item
    sum_lists = np.zeros(n_items, np.int64)
    sum_lists[n_users_of > 0] = per_row
    cost = n_users_of[rows].astype(np.float64) ** 2 + sum_lists[rows]
    max_users = int(n_users_of[rows].max())
    return kernels.run_rows(
        kernels.swing_rows, rows, cost, sum_lists[rows], s.top_n, n_items,  # how to run
        x["item_ptr"], x["item_users"], x["user_ptr"], x["user_items"], x["user_w"], x["self_w"], float(s.alpha2),
        max_users, int(sum_lists[rows].max()), n_items)  # the kernel's inputs


class Swing(I2IRecaller):
    """Swing channel: a Swing table fitted on the training events, recalled by trigger expansion.

    Attributes:
        table_: the fitted I2ITable.
    """

    name = "swing"
    Settings = SwingSettings

    def __init__(self, *, settings: SwingSettings | None = None):
        super().__init__(settings=settings)

    def fit(self, dataset: Dataset) -> "Swing":
        self.table_ = swing_table(dataset.events_in("train"), dataset.n_items, settings=self.settings)
        return self

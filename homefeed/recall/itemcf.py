"""Item-CF: items are similar when the same users act on both, close together in time.

The classic item-based collaborative filtering (Sarwar et al., WWW 2001; Linden et al., Amazon
2003), with the knobs a production i2i job (Taobao's "i2i" recall) turns:

1. Actions. Events collapse to one action per (user, item, session): weight b = the strongest
   behaviour's weight (pv < click < fav < cart < buy, configurable; weight 0 drops a behaviour),
   time t = the last event. Each user keeps the `max_actions_per_user` most recent actions.
   With `age_half_life_s`, an action's weight also halves every that many seconds of age before
   `now` (the end of training): w = b * 2^(-(now - t) / age_half_life_s).
2. Window. Two actions of a user form a pair only within the same session (`window="session"`),
   within `max_gap_s` of each other (`"gap"`), or anywhere in the history (`"user"`).
   With `pair_half_life_s` the pair's weight halves every that many seconds between the two.
   With `same_category` only items of one leaf (or standard) category pair up.
3. Co-occurrence. c(i, j) = sum over users u of iuf(u) * max over u's pairs (a on i, p on j) of
   w_a * w_p * 2^(-|t_a - t_p| / pair_half_life_s): each user counts once per item pair, however
   often the two items meet in their history. IUF (Breese et al. 1998) damps very active users:
   iuf(u) = 1 / ln(1 + |I_u|), |I_u| the user's distinct items.
4. Normalisation, with pop(i) = sum over users of b_ui^2 (b_ui the user's strongest behaviour
   weight on i; with unit weights, i's number of users):
   cosine s = c / sqrt(pop_i pop_j); asymmetric s = c / (pop_i^(1-e) pop_j^e), where a larger
   `popularity_exponent` e penalises popular neighbours j more (e = 0.5 is cosine).
5. Truncation to the `top_n` best neighbours per item, then optionally `levels` equal-frequency
   score levels (`I2ITable.discretize`).

Tiny example (unit weights, window "user", no IUF, no normalisation): users A: {1, 2},
B: {1, 2, 3} give c(1, 2) = 2, c(1, 3) = 1, so row 1 is [2 (2.0), 3 (1.0)].

The work runs in `i2i_kernels.itemcf_rows` (numba): no Python loop touches a pair.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.sessions import add_sessions
from homefeed.recall import i2i_kernels as kernels
from homefeed.recall.i2i import I2IRecaller, I2ITable, TriggerSettings, behavior_weight_array, check_behavior_weights


class ItemCFSettings(Section):
    """Item-CF table settings; see the module docstring for the formula each knob enters."""

    behavior_weights: dict[str, float] = Field(  # strength of each behaviour; 0 or absent drops it
        default_factory=lambda: {"pv": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0})
    window: Literal["session", "gap", "user"] = "gap"  # which two actions of a user may form a pair
    max_gap_s: int = Field(86_400, ge=0)  # window="gap": at most this many seconds apart
    session_gap_s: int = Field(1_800, ge=0)  # cuts sessions when the events carry no session_id
    pair_half_life_s: float = Field(0.0, ge=0)  # decay on the time between the two actions; 0 = off
    age_half_life_s: float = Field(0.0, ge=0)  # decay on each action's age at fit time; 0 = off
    same_category: Literal["off", "leaf", "standard"] = "off"  # pair only items of one category
    iuf: bool = True  # down-weight active users by 1 / ln(1 + |I_u|)
    normalize: Literal["none", "cosine", "asymmetric"] = "cosine"
    popularity_exponent: float = Field(0.5, ge=0, le=1)  # asymmetric: pop_i^(1-e) * pop_j^e
    top_n: int = Field(100, ge=1)  # neighbours kept per item
    levels: int = Field(0, ge=0)  # >0: replace scores by this many equal-frequency levels
    max_actions_per_user: int = Field(1_000, ge=1)  # most recent actions kept per user
    triggers: TriggerSettings = TriggerSettings()

    @field_validator("behavior_weights")
    @classmethod
    def _known_behaviors(cls, v: dict[str, float]) -> dict[str, float]:
        return check_behavior_weights(v)


NORM_MODES = {"none": 0, "cosine": 1, "asymmetric": 2}


def _check_events(events: pl.DataFrame, n_items: int) -> pl.DataFrame:
    missing = [c for c in ("user_id", "item_id", "behavior", "ts") if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; columns: {', '.join(events.columns)}")
    events = events.filter(pl.col("item_id") > 0)
    if events.height and int(events["item_id"].max()) >= n_items:
        raise ValueError(f"events hold item code {int(events['item_id'].max())} but n_items is {n_items}; "
                         "pass n_items = the item vocabulary size (dataset.n_items)")
    return events


def collapse_actions(events: pl.DataFrame, settings: ItemCFSettings, *, now: int | None = None) -> pl.DataFrame:
    """One row per action: user (dense 0..U-1), item, sess, t, b (behaviour weight), w (decayed weight),
    sorted the way the window needs (by user, then session or time), at most `max_actions_per_user` per user."""
    s = settings
    bw = behavior_weight_array(s.behavior_weights)
    ev = events.select("user_id", "item_id", "ts", *(["session_id"] if "session_id" in events.columns else []),
                       b=pl.col("behavior").to_physical().replace_strict(list(range(bw.size)), bw.tolist(),
                                                                         return_dtype=pl.Float64)).filter(pl.col("b") > 0)
    per_session = not unique_pairs(s)
    if per_session and "session_id" not in ev.columns:
        ev = add_sessions(ev, gap_s=s.session_gap_s)
    sess = pl.col("session_id") if per_session else pl.lit(0, pl.Int64)
    acts = (ev.group_by("user_id", "item_id", sess.alias("sess"))
            .agg(t=pl.col("ts").max(), b=pl.col("b").max())
            .sort("user_id", "t", "sess", "item_id"))
    acts = acts.filter((pl.len() - pl.int_range(pl.len())).over("user_id") <= s.max_actions_per_user)
    if s.window == "session":
        acts = acts.sort("user_id", "sess", "t", "item_id")
    now = int(events["ts"].max()) if now is None else int(now)
    decay = (2.0 ** (-(now - pl.col("t")).clip(0) / s.age_half_life_s)) if s.age_half_life_s > 0 else pl.lit(1.0)
    return acts.with_columns(user=(pl.col("user_id").rank("dense") - 1).cast(pl.Int64), w=pl.col("b") * decay)


def partner_ranges(acts: pl.DataFrame, settings: ItemCFSettings) -> tuple[np.ndarray, np.ndarray]:
    """lo, hi (int64): the actions that may pair with action p are lo[p]:hi[p] (itself included)."""
    user = acts["user"].to_numpy()
    n = user.size
    if settings.window in ("user", "session"):
        change = user[1:] != user[:-1]
        if settings.window == "session":
            sess = acts["sess"].to_numpy()
            change |= sess[1:] != sess[:-1]
        starts = np.flatnonzero(np.r_[True, change])
        sizes = np.diff(np.r_[starts, n])
        return np.repeat(starts, sizes).astype(np.int64), np.repeat(starts + sizes, sizes).astype(np.int64)
    t = acts["t"].to_numpy().astype(np.int64)
    t = t - (t.min() if n else 0)
    span = int(t.max(initial=0)) + 2 * settings.max_gap_s + 1
    key = user * span + t + settings.max_gap_s  # ascending: sorted by (user, t)
    return (np.searchsorted(key, key - settings.max_gap_s, "left").astype(np.int64),
            np.searchsorted(key, key + settings.max_gap_s, "right").astype(np.int64))


def unique_pairs(settings: ItemCFSettings) -> bool:
    """True when actions are one per (user, item), so each user meets each item pair once."""
    return settings.window == "user" and settings.pair_half_life_s == 0


def item_categories(items: pl.DataFrame, n_items: int, column: str = "leaf_category") -> np.ndarray:
    """(n_items,) int64 category per item code; items without one get a unique negative code (pair with nothing)."""
    cat = -np.arange(1, n_items + 1, dtype=np.int64)
    known = items.filter(pl.col(column).is_not_null() & (pl.col("item_id") < n_items))
    cat[known["item_id"].to_numpy()] = known[column].to_numpy()
    return cat


def itemcf_table(events: pl.DataFrame, n_items: int, *, settings: ItemCFSettings | None = None,
                 categories: np.ndarray | None = None, now: int | None = None) -> I2ITable:
    """The Item-CF i2i table of an encoded events frame (user_id, item_id, behavior, ts[, session_id]).

    Args:
        n_items: rows of the table (item codes 0..n_items-1; code 0, unknown, is ignored).
        categories: (n_items,) item -> category code, needed when `same_category` is not "off".
        now: reference time of action ages (default: the last event).
    """
    s = settings if settings is not None else ItemCFSettings()
    events = _check_events(events, n_items)
    use_cat = s.same_category != "off"
    if use_cat and (categories is None or len(categories) < n_items):
        raise ValueError(f"same_category={s.same_category!r} needs categories: an item code -> category array "
                         f"of length n_items={n_items}")
    acts = collapse_actions(events, s, now=now)
    if acts.height == 0:
        return I2ITable(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    lo, hi = partner_ranges(acts, s)
    item, user = acts["item_id"].to_numpy().astype(np.int64), acts["user"].to_numpy()
    by_item = np.lexsort((acts["t"].to_numpy(), user, item))
    item_ptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.bincount(item, minlength=n_items), out=item_ptr[1:])
    n_user_items = acts.group_by("user").agg(pl.col("item_id").n_unique()).sort("user")["item_id"].to_numpy()
    iuf = 1.0 / np.log1p(n_user_items) if s.iuf else np.ones(n_user_items.size)
    strongest = acts.group_by("user", "item_id").agg(pl.col("b").max())
    pop = np.zeros(n_items)
    np.add.at(pop, strongest["item_id"].to_numpy(), strongest["b"].to_numpy() ** 2)
    rows = np.flatnonzero(np.diff(item_ptr))
    cost = np.bincount(item, weights=(hi - lo).astype(np.float64), minlength=n_items)[rows]
    cat = np.asarray(categories, np.int64)[:n_items] if use_cat else np.zeros(n_items, np.int64)
    gap_rate = np.log(2) / s.pair_half_life_s if s.pair_half_life_s > 0 else 0.0
    r, j, v = kernels.run_rows(
        kernels.itemcf_rows, rows, cost, s.top_n, item_ptr, by_item.astype(np.int64), user[by_item],
        item.astype(np.int32), acts["w"].to_numpy(), acts["t"].to_numpy().astype(np.int64), lo, hi, iuf, pop,
        cat, use_cat, gap_rate, NORM_MODES[s.normalize], s.popularity_exponent,
        unique_pairs(s), n_items)
    table = I2ITable.from_rows(r, j, v, n_items, top_n=s.top_n)
    return table.discretize(s.levels) if s.levels else table


class ItemCF(I2IRecaller):
    """Item-CF channel: an Item-CF table fitted on the training events, recalled by trigger expansion.

    Args:
        settings: ItemCFSettings.
        standard_categories: (n_items,) item code -> standard category, for `same_category="standard"`.

    Attributes:
        table_: the fitted I2ITable.
    """

    name = "itemcf"
    Settings = ItemCFSettings

    def __init__(self, *, settings: ItemCFSettings | None = None, standard_categories: np.ndarray | None = None):
        super().__init__(settings=settings)
        self.standard_categories = standard_categories

    def fit(self, dataset: Dataset) -> "ItemCF":
        s = self.settings
        categories = None
        if s.same_category == "leaf":
            categories = item_categories(dataset.items, dataset.n_items)
        elif s.same_category == "standard":
            if self.standard_categories is None:
                raise ValueError("same_category='standard' needs ItemCF(standard_categories=...): "
                                 "an item code -> standard category array")
            categories = self.standard_categories
        self.table_ = itemcf_table(dataset.events_in("train"), dataset.n_items, settings=s,
                                   categories=categories, now=dataset.split.train_end)
        return self

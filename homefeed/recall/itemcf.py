"""Item-CF: items are similar when the same users act on both, close together in time.

The classic item-based collaborative filtering (Sarwar et al., WWW 2001; Linden et al., Amazon
2003), with the knobs a production i2i job (Taobao's "i2i" recall) turns:

1. Actions. Events collapse to one action per (user, item, session): weight b = the strongest
   behaviour's weight (pv < click < fav < cart < buy, configurable; weight 0 drops a behaviour),
   time t = the last event. Each user's pairs come from their `max_actions_per_user` most recent
   actions (popularity and IUF below still count all of them).
   With `age_half_life_s`, an action's weight also halves every that many seconds of age before
   `now` (the end of training): w = b * 2^(-(now - t) / age_half_life_s).
2. Window. Two actions of a user form a pair only within the same session (`window="session"`),
   within `max_gap_s` of each other (`"gap"`), or anywhere in the history (`"user"`). With
   `window_events` = N, each action also pairs with the user's N previous and N next actions
   whatever the time between them, so a log whose events are days apart (reviews, a sparse shop)
   still pairs consecutive actions instead of serving nobody.
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

The work runs in `itemcf_kernels.itemcf_rows` (numba): no Python loop touches a pair.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.sessions import add_sessions
from homefeed.recall import i2i_kernels as kernels
from homefeed.recall.i2i import I2IRecaller, I2ITable, TriggerSettings, behavior_weight_array, check_behavior_weights
from homefeed.recall.itemcf_kernels import group_actions, group_by_user, itemcf_rows, partners_by_slot


class ItemCFSettings(Section):
    """Item-CF table settings; see the module docstring for the formula each knob enters."""

    behavior_weights: dict[str, float] = Field(  # strength of each behaviour; 0 or absent drops it
        default_factory=lambda: {"pv": 1.0, "click": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0})
    window: Literal["session", "gap", "user"] = "gap"  # which two actions of a user may form a pair
    max_gap_s: int = Field(86_400, ge=0)  # window="gap": at most this many seconds apart
    window_events: int = Field(5, ge=0)  # "gap"/"session": the user's previous and next N actions pair too (sparse logs)
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


def normalizers(pop: np.ndarray, settings: ItemCFSettings) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) with s(i, j) = c(i, j) / (left[i] * right[j]); items without users get 1 (never divided)."""
    pop = np.where(pop > 0, pop, 1.0)
    if settings.normalize == "cosine":
        return np.sqrt(pop), np.sqrt(pop)
    if settings.normalize == "asymmetric":
        e = settings.popularity_exponent
        return pop ** (1.0 - e), pop ** e
    return np.ones_like(pop), np.ones_like(pop)


def _check_events(events: pl.DataFrame, n_items: int) -> pl.DataFrame:
    missing = [c for c in ("user_id", "item_id", "behavior", "ts") if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; columns: {', '.join(events.columns)}")
    events = events.filter(pl.col("item_id") > 0)
    if events.height and int(events["item_id"].max()) >= n_items:
        raise ValueError(f"events hold item code {int(events['item_id'].max())} but n_items is {n_items}; "
                         "pass n_items = the item vocabulary size (dataset.n_items)")
    return events


@dataclass
class Actions:
    """Collapsed actions in user order (by user, then time), at most `max_actions_per_user` per user.

    Attributes:
        user: (n,) int64 user index 0..U-1 (the codes themselves when compact).   item: (n,) int64 item code.
        sess: (n,) int64 session id (0 when sessions do not matter).   t: (n,) int64 last event time.
        w: (n,) float64 weight: strongest behaviour weight times the age decay.
        n_user_items: (U,) distinct items per user (before the cap).   pop: (n_items,) sum over users of b_ui^2.
    """

    user: np.ndarray
    item: np.ndarray
    sess: np.ndarray
    t: np.ndarray
    w: np.ndarray
    n_user_items: np.ndarray
    pop: np.ndarray


def dense_users(user_id: pl.Series) -> pl.Series:
    """User codes as they are when already compact (0 <= code < 2 n + 1000), else ranked to 0..U-1 (Int64)."""
    lo, hi = user_id.min(), user_id.max()
    if lo is not None and lo >= 0 and hi < 2 * user_id.len() + 1000:
        return user_id.cast(pl.Int64)
    return user_id.rank("dense").cast(pl.Int64) - 1


def collapse_actions(events: pl.DataFrame, n_items: int, settings: ItemCFSettings, *,
                     now: int | None = None) -> Actions:
    """Events -> one action per (user, item[, session]) with the strongest behaviour and the last time.

    Grouping sorts by (user, item, session) with counting sorts (without sessions: by user, then per user
    by item, `itemcf_kernels.group_by_user`); ordering by time within user packs (user, time) into one int64 key.
    """
    s = settings
    bw = behavior_weight_array(s.behavior_weights)
    per_session = not unique_pairs(s)
    if per_session and "session_id" not in events.columns:
        events = add_sessions(events, gap_s=s.session_gap_s)
    if per_session:
        ev = events.select(dense_users(events["user_id"]), pl.col("item_id").cast(pl.Int64), "ts",
                           sess=pl.col("session_id"),
                           b=pl.lit(pl.Series(bw)).gather(pl.col("behavior").to_physical())).filter(pl.col("b") > 0)
        user, item, ts, sess, b = (ev[c].to_numpy() for c in ("user_id", "item_id", "ts", "sess", "b"))
    else:  # no session: the events stay where they are (weights looked up, b = 0 skipped by group_by_user)
        user, item = dense_users(events["user_id"]).to_numpy(), events["item_id"].to_numpy()
        ts = events["ts"].to_numpy()
        b = np.r_[bw, 0.0][events["behavior"].to_physical().fill_null(bw.size).to_numpy()]  # null: weight 0
    if user.size == 0 or b.max(initial=0.0) <= 0.0:
        empty = np.zeros(0, np.int64)
        return Actions(empty, empty, empty, empty, np.zeros(0), empty, np.zeros(n_items))
    n_users = int(user.max()) + 1
    if per_session:
        order = kernels.stable_order_by(item, n_items, np.argsort(sess, kind="stable"))
        order = kernels.stable_order_by(user, n_users, order)  # radix sort: by user, item, session
        a_user, a_item, a_sess, a_t, a_b, pop, n_user_items, counts = group_actions(
            order, user, item, sess, ts, b, True, n_items, n_users)
    else:
        a_user, a_item, a_sess, a_t, a_b, pop, n_user_items, counts = group_by_user(user, item, ts, b, n_users, n_items)
    t = a_t  # now (the last event with a weight, by default) matters only to the age decay
    now = (int(a_t.max()) if now is None else int(now)) if s.age_half_life_s > 0 else 0
    if s.window != "user" or counts.max() > s.max_actions_per_user:
        if not per_session:  # group_by_user leaves a user's actions unsorted: by item, for the ties in time below
            by_item = np.lexsort((a_item, a_user))
            a_user, a_item, a_sess, a_t, a_b = a_user[by_item], a_item[by_item], a_sess, a_t[by_item], a_b[by_item]
        by_time = np.argsort((a_user << 32) | (a_t - a_t.min()), kind="stable")  # by user, then time
        left = np.repeat(counts, counts) - (np.arange(by_time.size) - np.repeat(np.cumsum(counts) - counts, counts))
        by_time = by_time[left <= s.max_actions_per_user]  # the most recent actions of each user
        a_user, a_item, a_sess, t, a_b = a_user[by_time], a_item[by_time], a_sess[by_time], a_t[by_time], a_b[by_time]
    w = a_b * np.exp2(-np.maximum(now - t, 0) / s.age_half_life_s) if s.age_half_life_s > 0 else a_b
    if w.size and w.min() <= 1e-100:  # actions decayed to nothing pair with nothing
        keep = w > 1e-100
        a_user, a_item, a_sess, t, w = a_user[keep], a_item[keep], a_sess[keep], t[keep], w[keep]
    return Actions(a_user, a_item, a_sess, t, w, n_user_items, pop)


def partner_ranges(acts: Actions, settings: ItemCFSettings) -> tuple[np.ndarray, np.ndarray]:
    """lo, hi (int64): the actions that may pair with action p are lo[p]:hi[p] (itself included).

    Sessions are taken to be time-contiguous within a user (as `add_sessions` makes them).
    """
    user, n = acts.user, acts.user.size
    first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[first, n])
    user_lo, user_hi = np.repeat(first, sizes).astype(np.int64), np.repeat(first + sizes, sizes).astype(np.int64)
    if settings.window == "user":
        return user_lo, user_hi
    if settings.window == "session":
        starts = np.flatnonzero(np.r_[True, (user[1:] != user[:-1]) | (acts.sess[1:] != acts.sess[:-1])])
        lens = np.diff(np.r_[starts, n])
        lo, hi = np.repeat(starts, lens).astype(np.int64), np.repeat(starts + lens, lens).astype(np.int64)
    else:
        t = acts.t - (acts.t.min() if n else 0)
        span = int(t.max(initial=0)) + 2 * settings.max_gap_s + 1
        key = user * span + t + settings.max_gap_s  # ascending: sorted by (user, t)
        lo = np.searchsorted(key, key - settings.max_gap_s, "left").astype(np.int64)
        hi = np.searchsorted(key, key + settings.max_gap_s, "right").astype(np.int64)
    if settings.window_events:  # the user's previous / next N actions pair too, however far apart in time
        at = np.arange(n, dtype=np.int64)
        lo = np.minimum(lo, np.maximum(at - settings.window_events, user_lo))
        hi = np.maximum(hi, np.minimum(at + settings.window_events + 1, user_hi))
    return lo, hi


def unique_pairs(settings: ItemCFSettings) -> bool:
    """True when actions are one per (user, item), so each user meets each item pair once."""
    return settings.window == "user" and settings.pair_half_life_s == 0


def popularity_slots(item: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(slot_of, code_of), int32 inverse permutations of 0..n_items-1: item codes by number of actions, most first
    (ties by code), the order the kernel's accumulator is laid out in so that hot items share cache lines."""
    code_of = np.argsort(-np.bincount(item, minlength=n_items), kind="stable").astype(np.int32)
    slot_of = np.empty(n_items, np.int32)
    slot_of[code_of] = np.arange(n_items, dtype=np.int32)
    return slot_of, code_of


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
    acts = collapse_actions(events, n_items, s, now=now)
    if acts.user.size == 0:
        return I2ITable(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    lo, hi = partner_ranges(acts, s)
    n_users = acts.n_user_items.size
    by_item = kernels.stable_order_by(acts.item, n_items, np.arange(acts.item.size))  # by item, then user, then time
    item_ptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(np.bincount(acts.item, minlength=n_items), out=item_ptr[1:])
    iuf = 1.0 / np.log1p(np.maximum(acts.n_user_items, 1)) if s.iuf else np.ones(n_users)
    rows = np.flatnonzero(np.diff(item_ptr))
    cost = np.bincount(acts.item, weights=(hi - lo).astype(np.float64), minlength=n_items)[rows]
    cat = np.asarray(categories, np.int64)[:n_items] if use_cat else np.zeros(n_items, np.int64)
    gap_rate = np.log(2) / s.pair_half_life_s if s.pair_half_life_s > 0 else 0.0
    left, right = normalizers(acts.pop, s)
    partner_w = acts.w / right[acts.item]  # pre-normalised, as implicit normalises its matrix
    slot_of, code_of = popularity_slots(acts.item, n_items)
    act_slot = partner_slot = slot_of[acts.item]
    if unique_pairs(s):  # a user meets each pair once, so their partners may be read in slot order (lo = user's first)
        partner_slot, partner_w = partners_by_slot(np.r_[np.flatnonzero(np.diff(lo, prepend=-1)), lo.size], act_slot,
                                                   partner_w)
    table = kernels.run_rows(
        itemcf_rows, rows, cost, np.minimum(cost, n_items), s.top_n, n_items,  # how to run
        item_ptr, by_item, acts.user[by_item], partner_slot, acts.w, partner_w, acts.t,
        lo, hi, iuf, 1.0 / left, slot_of, code_of, cat, cat[code_of], use_cat, gap_rate, unique_pairs(s),
        n_items)  # the kernel's inputs
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

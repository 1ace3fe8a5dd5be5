"""Crowd-based recall: what people like this user click, for users the shop knows little about.

Users are put into demographic groups (by default gender x age band x city). Per group, items are
ranked by a smoothed click-through rate and the top K are kept. A new user with no history still has
a profile, so this channel serves them from the first request.

Small groups give noisy rates, so two kinds of back-off are used:

1. Smoothing up a chain of levels, finest first: (gender, age band, city) -> (gender, age band) ->
   (gender) -> everyone. A group's rate for an item is pulled toward its parent group's rate with
   `prior_strength` pseudo-observations (Bayesian smoothing with a Beta prior centred on the parent):

       rate(g, i) = (clicks(g, i) + m * rate(parent(g), i)) / (shown(g, i) + m)

   and "everyone" is pulled toward the global rate. An item the group has never been shown keeps its
   parent's rate, so a thin group's list fills up from its parent's.
2. At request time the user gets the list of their finest group with at least `min_group_users`
   training users; smaller groups are skipped for the next coarser one.

Rates come from exposure logs (clicks / exposures) when there are any. For logs without impressions
(e.g. Taobao UserBehavior) the rate is the share of the group's users who acted on the item
(`shown` = users in the group, `clicks` = those who acted), which is the same formula with each user
an impression.

    >>> crowd = Crowd(settings=CrowdSettings(levels=[["gender", "age_band"], []])).fit(ds)  # doctest: +SKIP
    >>> crowd.recall(UserState(user_id=0, now=t, profile={"gender": "F", "age": 23}), 100)    # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.data.user_state import UserState
from homefeed.recall.base import Candidates, Recaller

ATTRIBUTES = ("gender", "age_band", "city", "purchase_power")
"""Attributes a level may group by; `age_band` is `age` cut at `age_bands`."""
UNKNOWN = "?"  # the value of a missing attribute


class CrowdSettings(Section):
    levels: list[list[str]] = Field(  # group-by attributes, finest first; [] (everyone) is appended if missing
        default_factory=lambda: [["gender", "age_band", "city"], ["gender", "age_band"], ["gender"], []])
    age_bands: list[int] = Field(default_factory=lambda: [18, 25, 30, 35, 40, 50])  # band edges in years
    min_group_users: int = 30  # a user's group needs this many training users, else the next level serves
    source: Literal["auto", "exposures", "interactions"] = "auto"  # auto: exposures when the log has any
    prior_strength: float = 50.0  # pseudo-observations pulling a group's rate toward its parent's
    top_k: int = 500  # items kept per group (the most a request can get)
    exclude_bought: bool = True  # skip items the user already bought

    @field_validator("levels")
    @classmethod
    def _known_attributes(cls, levels: list[list[str]]) -> list[list[str]]:
        for level in levels:
            bad = [a for a in level if a not in ATTRIBUTES]
            if bad:
                raise ValueError(f"unknown crowd attribute(s) {bad}; valid attributes: {', '.join(ATTRIBUTES)}")
        levels = levels if levels and levels[-1] == [] else [*levels, []]
        for fine, coarse in zip(levels, levels[1:]):
            if not set(coarse) <= set(fine):
                raise ValueError(f"crowd level {coarse} must use a subset of the attributes of the finer level {fine} before it")
        return levels


def user_attributes(users: pl.DataFrame, age_bands: list[int]) -> pl.DataFrame:
    """(user_id, gender, age_band, city, purchase_power) as strings, UNKNOWN where missing."""
    cols = [pl.col("user_id")]
    for a in ("gender", "city", "purchase_power"):
        cols.append(pl.col(a).cast(pl.String).fill_null(UNKNOWN) if a in users.columns else pl.lit(UNKNOWN).alias(a))
    if "age" in users.columns:
        band = pl.sum_horizontal([(pl.col("age") >= e).cast(pl.Int32) for e in age_bands]) if age_bands else pl.lit(0)
        cols.append(pl.when(pl.col("age").is_null()).then(pl.lit(UNKNOWN)).otherwise(band.cast(pl.String)).alias("age_band"))
    else:
        cols.append(pl.lit(UNKNOWN).alias("age_band"))
    return users.select(cols)


def profile_key(profile: dict, level: list[str], age_bands: np.ndarray) -> tuple[str, ...]:
    """The group key of one raw profile at one level, formatted exactly as `user_attributes` does."""
    key = []
    for a in level:
        value = profile.get("age") if a == "age_band" else profile.get(a)
        if value is None or value != value:  # missing or nan
            key.append(UNKNOWN)
        elif a == "age_band":
            key.append(str(int(np.searchsorted(age_bands, value, side="right"))))
        else:
            key.append(str(value))
    return tuple(key)


def _observations(dataset: Dataset, attrs: pl.DataFrame, source: str) -> tuple[pl.DataFrame, str]:
    """Rows (user_id, attributes..., item_id, shown, clicks) from the training part, and the source used."""
    exposures = dataset.exposures_in("train")
    if source == "auto":
        source = "exposures" if exposures is not None and exposures.height else "interactions"
    if source == "exposures":
        if exposures is None or not exposures.height:
            raise ValueError("crowd.source = 'exposures' but the dataset has no training exposures; use 'interactions' or 'auto'")
        obs = exposures.select("user_id", "item_id", shown=pl.lit(1, pl.Int64), clicks=pl.col("clicked").cast(pl.Int64))
    else:  # each user who acted on an item is one click on one impression
        obs = dataset.events_in("train").select("user_id", "item_id").unique().with_columns(
            shown=pl.lit(1, pl.Int64), clicks=pl.lit(1, pl.Int64))
    obs = obs.join(attrs, on="user_id", how="left").with_columns(pl.col(list(ATTRIBUTES)).fill_null(UNKNOWN), _all=pl.lit(""))
    return obs, source


class Crowd(Recaller):
    """Top-K items by smoothed rate per demographic group, with back-off to coarser groups.

    Attributes (after `fit`):
        source_: "exposures" or "interactions", what the rates were computed from.
        groups_: dict (level index, key tuple) -> group number.
        group_users_: (n_groups,) int64 training users per group.
        indptr_: (n_groups + 1,) int64; group g's list is items_[indptr_[g]:indptr_[g + 1]].
        items_: int32 item codes, per group best first; scores_: float32 smoothed rates, descending per group.
    """

    name = "crowd"
    Settings = CrowdSettings

    def __init__(self, *, settings: CrowdSettings | None = None):
        self.settings = settings or CrowdSettings()
        self._bands = np.asarray(self.settings.age_bands)

    def fit(self, dataset: Dataset) -> "Crowd":
        s = self.settings
        obs, self.source_ = _observations(dataset, user_attributes(dataset.users, s.age_bands), s.source)
        per_item = self.source_ == "exposures"  # interactions: every group user saw every item once
        lists, parent_full, parent_top, parent_level = [], None, None, None
        for depth, level in reversed(list(enumerate(s.levels))):
            full, top = self._fit_level(obs, level, parent_level, parent_full, parent_top, per_item)
            lists.append((depth, level, top))
            parent_full, parent_top, parent_level = full, top, level
        self._store(obs, sorted(lists, key=lambda t: t[0]))
        self._memo: dict[tuple, int] = {}
        return self

    def _fit_level(self, obs, level, parent_level, parent_full, parent_top, per_item):
        """Smoothed rates of every (group, item) seen at this level, and each group's top K with its size."""
        m, keys = self.settings.prior_strength, ["_all", *level]  # `_all` is "" everywhere: the root's key
        size = obs.group_by(keys).agg(n_users=pl.col("user_id").n_unique())
        stats = obs.group_by([*keys, "item_id"]).agg(pl.col("shown").sum(), pl.col("clicks").sum())
        if not per_item:  # interactions: shown = the group's users, each once
            stats = stats.drop("shown").join(size.rename({"n_users": "shown"}), on=keys)
        if parent_full is None:  # everyone: toward the global rate
            stats = stats.with_columns(parent=pl.lit(float(stats["clicks"].sum() / max(stats["shown"].sum(), 1))))
        else:
            stats = stats.join(parent_full.rename({"rate": "parent"}), on=["_all", *parent_level, "item_id"], how="left")
        rate = (pl.col("clicks") + m * pl.col("parent")) / (pl.col("shown") + m)
        full = stats.select(*keys, "item_id", rate.cast(pl.Float64).alias("rate"))
        candidates = full
        if parent_top is not None:  # items unseen in the group: the parent's rate, shrunk by the group's users if per user
            shrink = pl.lit(1.0) if per_item else m / (m + pl.col("n_users"))
            inherited = (size.join(parent_top.drop("n_users"), on=["_all", *parent_level])
                         .join(full, on=[*keys, "item_id"], how="anti")
                         .select(*keys, "item_id", (pl.col("rate") * shrink).alias("rate")))
            candidates = pl.concat([full, inherited])
        top = (candidates.sort([*keys, "rate", "item_id"], descending=[False] * len(keys) + [True, False])
               .group_by(keys, maintain_order=True).head(self.settings.top_k))
        return full, top.join(size, on=keys)

    def _store(self, obs, lists) -> None:
        """Flatten every level's per-group lists into one CSR (indptr_, items_, scores_)."""
        self.groups_, sizes, counts, items, scores = {}, [], [], [], []
        for depth, level, top in lists:
            keys = ["_all", *level]
            per_group = top.group_by(keys, maintain_order=True).agg("item_id", "rate", pl.col("n_users").first())
            for row in per_group.iter_rows(named=True):  # one row per group, not per item
                self.groups_[(depth, tuple(row[a] for a in level))] = len(sizes)
                sizes.append(row["n_users"])
                counts.append(len(row["item_id"]))
                items.append(np.asarray(row["item_id"], np.int32))
                scores.append(np.asarray(row["rate"], np.float32))
        self.group_users_ = np.asarray(sizes, np.int64)
        self.indptr_ = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.items_ = np.concatenate(items) if items else np.zeros(0, np.int32)
        self.scores_ = np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def group_of(self, profile: dict) -> int:
        """The group number serving this profile: its finest group with enough users (-1 if none)."""
        memo = self._memo  # profiles repeat: look each distinct one up once
        raw = tuple(profile.get(a) for a in ("gender", "age", "city", "purchase_power"))
        if raw not in memo:
            if len(memo) > 100_000:
                memo.clear()
            memo[raw] = self._lookup(profile)
        return memo[raw]

    def _lookup(self, profile: dict) -> int:
        for depth, level in enumerate(self.settings.levels):
            g = self.groups_.get((depth, profile_key(profile, level, self._bands)))
            if g is not None and (self.group_users_[g] >= self.settings.min_group_users or not level):
                return g
        return -1

    def recall(self, state: UserState, k: int) -> Candidates:
        g = self.group_of(state.profile)
        if g < 0:
            return Candidates.empty(self.name)
        lo, hi = self.indptr_[g], self.indptr_[g + 1]
        items, scores = self.items_[lo:hi], self.scores_[lo:hi]
        if self.settings.exclude_bought:
            bought = state.recent(behaviors=("buy",))
            if bought.size:
                head = min(k + bought.size, items.size)
                keep = ~np.isin(items[:head], bought)
                items, scores = items[:head][keep], scores[:head][keep]
        n = min(k, items.size)
        return Candidates(items[:n].copy(), scores[:n].copy(), np.full(n, -1, np.int32), self.name)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "crowd.npz", indptr=self.indptr_, items=self.items_, scores=self.scores_, group_users=self.group_users_)
        groups = [[depth, list(key), g] for (depth, key), g in self.groups_.items()]
        (path / "crowd.json").write_text(json.dumps({"source": self.source_, "groups": groups,
                                                      "settings": self.settings.model_dump()}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Crowd":
        meta = json.loads((Path(path) / "crowd.json").read_text())
        rec = cls(settings=CrowdSettings.model_validate(meta["settings"]))
        rec.source_, rec._memo = meta["source"], {}
        rec.groups_ = {(depth, tuple(key)): g for depth, key, g in meta["groups"]}
        with np.load(Path(path) / "crowd.npz", allow_pickle=False) as z:
            rec.indptr_, rec.items_, rec.scores_, rec.group_users_ = z["indptr"], z["items"], z["scores"], z["group_users"]
        return rec

"""Merge ("convergence and modulation"): many channels' candidates -> one deduplicated list with quotas.

Each channel gets a share of the k merged slots. Shares start from configured base weights and are
adapted from each channel's click-through rate measured in past exposure logs (which record the
channel of every shown item): a channel whose items get clicked more earns more slots. The update
is smooth and bounded, so one lucky day cannot swing the page and no channel ever starves:

    ctr_c    = (clicks_c + m * ctr_all) / (shown_c + m)                 Bayesian-smoothed CTR
    target_c ∝ share_c * (ctr_c / ctr_all) ** power                    channels not in the log keep ratio 1
    share_c <- clip((1 - lr) * share_c + lr * target_c, min_share, max_share), renormalised

At request time channel c may keep quota_c = round(share_c * k) items. Candidates are interleaved by
how far down its own quota each sits, key = (rank + 1) / quota_c, so the merged list mixes channels
in proportion to their shares (scores of different channels are not comparable; ranks are). An item
recalled by several channels is kept once, credited to the channel where its key is smallest, and
`sources` records every channel that found it. Slots a channel cannot fill go to the others' next
candidates, in key order.

    >>> merger = Merger(settings=MergeSettings(k=300)).fit(ds)      # doctest: +SKIP
    >>> page = merger.merge([itemcf_rows, crowd_rows, popular_rows])  # doctest: +SKIP
    >>> page.channel_names()[:3], page.triggers[:3]                  # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import polars as pl
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.recall.base import Candidates


class MergeSettings(Section):
    k: int = 500  # candidates kept after merging
    quotas: dict[str, float] = Field(default_factory=dict)  # base weight per channel; empty = equal; unlisted channels get the mean
    adapt: bool = True  # adapt shares from each channel's measured CTR in the exposure log
    learning_rate: float = Field(0.5, ge=0.0, le=1.0)  # how far one update moves shares toward the CTR target
    ctr_power: float = 1.0  # target share grows as (channel CTR / overall CTR) ** ctr_power
    prior_strength: float = 200.0  # pseudo-exposures pulling a channel's CTR toward the overall CTR
    min_share: float = Field(0.05, ge=0.0, le=1.0)  # floor on every channel's share: none starves
    max_share: float = Field(0.6, ge=0.0, le=1.0)  # ceiling: none takes over
    fill: bool = True  # slots a channel cannot fill go to the other channels' next candidates
    aliases: dict[str, str] = Field(default_factory=dict)  # channel name in the exposure log -> channel name here


def bounded(weights: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Shares proportional to `weights` as far as the bounds allow: x_i = clip(c * w_i, lo, hi), sum x = 1.

    The scale c is found by bisection (the sum grows with c); bounds are relaxed to 1/n when infeasible.
    """
    w = np.maximum(np.asarray(weights, np.float64), 0.0)
    n = w.size
    if n == 0:
        return w
    lo, hi = min(lo, 1.0 / n), max(hi, 1.0 / n)
    w = np.maximum(w / w.sum(), 1e-9) if w.sum() > 0 else np.full(n, 1.0 / n)
    low, high = 0.0, hi / w.min()  # at `high` every share sits at hi, and n * hi >= 1
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if np.clip(mid * w, lo, hi).sum() < 1.0 else (low, mid)
    x = np.clip(high * w, lo, hi)
    return x / x.sum()


def largest_remainder(shares: np.ndarray, k: int) -> np.ndarray:
    """Integer quotas summing to k, proportional to `shares` (Hamilton's method, ties to the earlier channel)."""
    exact = np.asarray(shares, np.float64) * k
    quota = np.floor(exact).astype(np.int64)
    rest = k - int(quota.sum())
    if rest > 0:
        quota[np.argsort(-(exact - quota), kind="stable")[:rest]] += 1
    return quota


def channel_ctr(exposures: pl.DataFrame, *, prior_strength: float, aliases: dict[str, str] | None = None) -> dict[str, dict]:
    """Per channel: shown, clicks, raw and smoothed CTR, and the overall CTR, from an exposure log."""
    log = exposures.with_columns(pl.col("channel").replace(aliases or {}))
    total_shown, total_clicks = log.height, int(log["clicked"].sum())
    overall = total_clicks / max(total_shown, 1)
    per = log.group_by("channel").agg(shown=pl.len(), clicks=pl.col("clicked").cast(pl.Int64).sum()).sort("channel")
    return {row["channel"]: {"shown": row["shown"], "clicks": row["clicks"], "ctr": row["clicks"] / row["shown"],
                             "smoothed_ctr": (row["clicks"] + prior_strength * overall) / (row["shown"] + prior_strength),
                             "overall_ctr": overall}
            for row in per.iter_rows(named=True)}


@dataclass
class MergedCandidates:
    """The merged list for one user, in merged order.

    Attributes:
        items: (n,) int32 item codes, unique.
        scores: (n,) float32, each the score its channel gave (comparable within a channel only).
        triggers: (n,) int32 item that led to each candidate, or -1.
        channels: (n,) int8 index into `names` of the channel each item is credited to.
        sources: (n,) uint32 bit mask of every channel (bit i = names[i]) that recalled the item.
        names: channel names, in the order the lists were given.
    """

    items: np.ndarray
    scores: np.ndarray
    triggers: np.ndarray
    channels: np.ndarray
    sources: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    def channel_names(self) -> np.ndarray:
        """(n,) str: the channel name of each item."""
        return np.asarray(self.names, dtype=object)[self.channels] if self.names else np.zeros(0, object)

    def counts(self) -> dict[str, int]:
        """How many merged items each channel is credited with."""
        n = np.bincount(self.channels, minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, n)}

    def to_frame(self) -> pl.DataFrame:
        """(item_id, score, channel, trigger_item, n_sources) rows, for the ranker's candidate table."""
        return pl.DataFrame({"item_id": self.items, "score": self.scores, "channel": self.channel_names().astype(str),
                             "trigger_item": self.triggers, "n_sources": np.bitwise_count(self.sources).astype(np.int8)})


@numba.njit(cache=True)
def _merge_rows(items, channel, order, by_item, quota, k, fill):
    """Rows kept by the merge, in key order, and each kept item's source bit mask.

    items, channel: (n,) rows of all lists, concatenated in channel order, each list best first.
    order: (n,) rows sorted by interleaving key; by_item: (n,) rows sorted by item; quota: (C,) slots per channel.
    """
    n = items.size
    position = np.empty(n, np.int64)  # place of each row in key order
    position[order] = np.arange(n)
    owner = np.zeros(n, np.bool_)  # the row with the smallest key among rows of the same item
    mask = np.zeros(n, np.uint32)  # sources, stored on the owner row
    start = 0
    while start < n:
        stop, best, bits = start, by_item[start], np.uint32(0)
        while stop < n and items[by_item[stop]] == items[by_item[start]]:
            row = by_item[stop]
            bits |= np.uint32(1) << np.uint32(channel[row])
            if position[row] < position[best]:
                best = row
            stop += 1
        owner[best], mask[best] = True, bits
        start = stop
    taken = np.zeros(quota.size, np.int64)
    chosen = np.zeros(n, np.bool_)
    n_chosen = 0
    for row in order:  # each channel takes its owned rows up to its quota
        if owner[row] and taken[channel[row]] < quota[channel[row]] and n_chosen < k:
            chosen[row] = True
            taken[channel[row]] += 1
            n_chosen += 1
    if fill:
        for row in order:  # spare slots go to the remaining owned rows, in key order
            if n_chosen >= k:
                break
            if owner[row] and not chosen[row]:
                chosen[row] = True
                n_chosen += 1
    rows = np.empty(n_chosen, np.int64)
    j = 0
    for row in order:
        if chosen[row]:
            rows[j] = row
            j += 1
    return rows, mask[rows]


class Merger:
    """Dedupe + per-channel quotas, with quotas adapted from measured channel CTRs.

    Attributes:
        shares_: dict channel -> share of the merged slots (sums to 1 over the known channels).
        ctr_: dict channel -> measured CTR figures from the last `update` (empty before).
    """

    def __init__(self, *, settings: MergeSettings | None = None):
        self.settings = settings or MergeSettings()
        if self.settings.min_share > self.settings.max_share:
            raise ValueError(f"merge.min_share {self.settings.min_share} exceeds merge.max_share {self.settings.max_share}")
        self.reset()

    def reset(self) -> "Merger":
        """Shares back to the configured base weights."""
        s = self.settings
        names = sorted(s.quotas)
        w = bounded(np.array([s.quotas[c] for c in names]), s.min_share, s.max_share)
        self.shares_ = dict(zip(names, w.tolist()))
        self.ctr_ = {}
        self._cache: dict[tuple[str, ...], np.ndarray] = {}
        return self

    def fit(self, dataset: Dataset) -> "Merger":
        """Base shares, then one update from the training exposures (if the dataset has any)."""
        self.reset()
        exposures = dataset.exposures_in("train")
        if exposures is not None and exposures.height and self.settings.adapt:
            self.update(exposures)
        return self

    def update(self, exposures: pl.DataFrame) -> "Merger":
        """One smooth, bounded step of the shares toward the CTRs measured in `exposures`."""
        s = self.settings
        self.ctr_ = channel_ctr(exposures, prior_strength=s.prior_strength, aliases=s.aliases)
        names = sorted(s.quotas) if s.quotas else sorted(set(self.shares_) | set(self.ctr_))
        share = self._weights(names)
        ratio = np.array([self.ctr_[c]["smoothed_ctr"] / max(self.ctr_[c]["overall_ctr"], 1e-12) if c in self.ctr_ else 1.0
                          for c in names])
        target = share * ratio ** s.ctr_power
        target /= target.sum()
        new = bounded((1 - s.learning_rate) * share + s.learning_rate * target, s.min_share, s.max_share)
        self.shares_ = dict(zip(names, new.tolist()))
        self._cache = {}
        return self

    def _weights(self, names: list[str]) -> np.ndarray:
        """Bounded shares of `names` (normalised over them); unknown channels get the mean known share."""
        key = tuple(names)
        if key not in self._cache:  # a request's channel set repeats: solve the bounds once per set
            default = float(np.mean(list(self.shares_.values()))) if self.shares_ else 1.0
            w = np.array([self.shares_.get(c, default) for c in names], np.float64)
            self._cache[key] = bounded(w, self.settings.min_share, self.settings.max_share)
        return self._cache[key]

    def quotas(self, names: list[str], k: int | None = None) -> dict[str, int]:
        """Slots per channel for a request with candidates from `names`."""
        return dict(zip(names, largest_remainder(self._weights(names), k or self.settings.k).tolist()))

    def merge(self, candidates: list[Candidates] | dict[str, Candidates], k: int | None = None) -> MergedCandidates:
        """Dedupe and interleave the channels' lists under quotas; at most k items (default settings.k)."""
        lists = list(candidates.values()) if isinstance(candidates, dict) else list(candidates)
        names = tuple(c.channel for c in lists)
        if len(set(names)) != len(names):
            raise ValueError(f"merge got two lists from one channel: {list(names)}")
        k = self.settings.k if k is None else k
        sizes = np.array([len(c) for c in lists], np.int64)
        if not lists or sizes.sum() == 0:
            z = np.zeros(0, np.int32)
            return MergedCandidates(z, np.zeros(0, np.float32), z, np.zeros(0, np.int8), np.zeros(0, np.uint32), names)
        quota = largest_remainder(self._weights(list(names)), k)
        items = np.concatenate([c.items for c in lists]).astype(np.int32)
        channel = np.repeat(np.arange(len(lists), dtype=np.int64), sizes)
        rank = np.arange(items.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        with np.errstate(divide="ignore"):
            key = (rank + 1) / quota[channel].astype(np.float64)  # inf for a channel with no slots: fill only
        order = np.argsort(key, kind="stable")  # ties keep channel order
        rows, sources = _merge_rows(items, channel, order, np.argsort(items), quota, k, self.settings.fill)
        return MergedCandidates(items[rows], np.concatenate([c.scores for c in lists]).astype(np.float32)[rows],
                                np.concatenate([c.triggers for c in lists]).astype(np.int32)[rows],
                                channel[rows].astype(np.int8), sources, names)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"settings": self.settings.model_dump(), "shares": self.shares_, "ctr": self.ctr_}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Merger":
        meta = json.loads(Path(path).read_text())
        merger = cls(settings=MergeSettings.model_validate(meta["settings"]))
        merger.shares_, merger.ctr_, merger._cache = meta["shares"], meta["ctr"], {}
        return merger

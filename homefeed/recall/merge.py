"""Merge ("convergence and modulation"): many channels' candidates -> one deduplicated, fused list.

Each channel c has a share w_c of the merged list. A candidate at 0-based rank r in channel c earns
w_c / (r + 1), so channels interleave in proportion to their shares at every depth (scores of
different channels are not comparable; ranks are), and an item several channels found adds up
their terms (`consensus`; off: the best term counts). Items the user already acted on can be
damped or dropped by `seen_weight`, because re-consumption differs per shop (huge on Taobao, nil on
review logs):

    F(i) = seen_weight^[i seen] * sum over channels c that recalled i of  w_c / (rank_c(i) + 1)

The list is the items by F descending (ties: lower item code), each credited to the channel whose
term is largest, with `sources` recording every channel that found it. A learned head (`head_`:
channel, slots) puts that channel's first items still in the list ahead of all others (`with_head`).

Where the shares come from:
- configured base weights (`quotas`; empty = equal), bounded to [min_share, max_share];
- without exposures, the hits each channel adds on the validation days (`recall.shares.learn_merge`,
  which also learns `seen_weight`): a channel whose hits are all covered by better ones falls to the floor;
- with exposures, each channel's smoothed click-through rate: one bounded step from the training
  log, then one per day of served pages (`update_daily`), so recent pages count most (log channel
  names such as `itemcf_like` map to served channels by alias, exact name or prefix; `channel_map`):

    ctr_c    = (clicks_c + m * ctr_all) / (shown_c + m)                 Bayesian-smoothed CTR
    target_c ∝ share_c * (ctr_c / ctr_all) ** power                    channels not in the log keep ratio 1
    share_c <- clip((1 - lr) * share_c + lr * target_c, min_share, max_share), renormalised

    >>> merger = Merger(settings=MergeSettings(k=300)).fit(ds)                  # doctest: +SKIP
    >>> page = merger.merge([itemcf_rows, crowd_rows, popular_rows], seen=state.items)  # doctest: +SKIP
    >>> page.channel_names()[:3], page.triggers[:3]                              # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field

from homefeed.config import Section
from homefeed.data.dataset import Dataset
from homefeed.recall.base import Candidates


class MergeSettings(Section):
    k: int = 500  # candidates kept after merging
    quotas: dict[str, float] = Field(default_factory=dict)  # base weight per channel; empty = equal; unlisted channels get the mean
    adapt: bool = True  # adapt shares from each channel's measured CTR in the exposure log, one step per day
    learn: bool = True  # learn shares and seen_weight from validation hits (`recall.shares.learn_merge`)
    learning_rate: float = Field(0.5, ge=0.0, le=1.0)  # how far one update moves shares toward the CTR target
    ctr_power: float = 1.0  # target share grows as (channel CTR / overall CTR) ** ctr_power
    prior_strength: float = 200.0  # pseudo-exposures pulling a channel's CTR toward the overall CTR
    min_share: float = Field(0.01, ge=0.0, le=1.0)  # floor on every channel's share: none starves
    max_share: float = Field(1.0, ge=0.0, le=1.0)  # ceiling: none takes over
    consensus: bool = True  # an item found by several channels sums their terms (off: the best term counts)
    min_gain_z: float = Field(2.0, ge=0.0)  # learning shares: a step must gain this many standard errors over validation users (0 = any gain)
    seen_weight: float | None = Field(None, ge=0.0)  # factor on items the user already acted on; 0 drops them; None = learned (1 until then)
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


def channel_map(log_names, served, aliases: dict[str, str] | None = None) -> dict[str, str | None]:
    """Each channel name of an exposure log -> the served channel it stands for, or None.

    In order: an alias, the exact name, then the longest served name that starts the log name at a
    word boundary (`itemcf_like` -> `itemcf`, `mind_v2` -> `mind`). Unmatched names map to None
    (their exposures still count in the overall CTR).
    """
    aliases, served = aliases or {}, sorted(served, key=len, reverse=True)
    out: dict[str, str | None] = {}
    for name in log_names:
        if name in aliases:
            out[name] = aliases[name]
        elif name in served:
            out[name] = name
        else:
            out[name] = next((s for s in served if name.startswith(s) and name[len(s)] in "_-.:"), None)
    return out


def channel_ctr(exposures: pl.DataFrame, *, prior_strength: float, aliases: dict[str, str] | None = None,
                served=None) -> dict[str, dict]:
    """Per channel: shown, clicks, raw and smoothed CTR, the overall CTR and the log names mapped to it.

    With `served` (channel names), log names are mapped by `channel_map`; unmapped ones are dropped
    from the per-channel figures (they still count in the overall CTR). Without it, only `aliases` apply.
    """
    names = exposures["channel"].unique().sort().to_list()
    mapping = channel_map(names, served, aliases) if served is not None else {n: (aliases or {}).get(n, n) for n in names}
    log = exposures.with_columns(log_name=pl.col("channel"), channel=pl.col("channel").replace_strict(mapping, default=None))
    total_shown, total_clicks = log.height, int(log["clicked"].sum())
    overall = total_clicks / max(total_shown, 1)
    per = (log.filter(pl.col("channel").is_not_null())
           .group_by("channel").agg(shown=pl.len(), clicks=pl.col("clicked").cast(pl.Int64).sum(),
                                    log_names=pl.col("log_name").unique().sort()).sort("channel"))
    return {row["channel"]: {"shown": row["shown"], "clicks": row["clicks"], "ctr": row["clicks"] / row["shown"],
                             "smoothed_ctr": (row["clicks"] + prior_strength * overall) / (row["shown"] + prior_strength),
                             "overall_ctr": overall, "log_names": row["log_names"]}
            for row in per.iter_rows(named=True)}


def fused_scores(inverse: np.ndarray, n_keys: int, channel: np.ndarray, rank: np.ndarray, weights: np.ndarray,
                 *, consensus: bool = True) -> np.ndarray:
    """(n_keys,) F per distinct key: sum (or max) over its rows of weights[channel] / (rank + 1).

    inverse: (n,) key index of each candidate row; channel, rank: (n,) int64. The one formula the
    merge serves and `learn_merge` scores, so what is learned is what is served.
    """
    term = weights[channel] / (rank + 1.0)
    if consensus:
        return np.bincount(inverse, weights=term, minlength=n_keys)
    order = np.argsort(inverse, kind="stable")
    out = np.zeros(n_keys)
    starts = np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]])
    out[inverse[order][starts]] = np.maximum.reduceat(term[order], starts) if order.size else 0.0
    return out


def with_head(fused: np.ndarray, inverse: np.ndarray, channel: np.ndarray, rank: np.ndarray, head: tuple[int, int],
              user: np.ndarray | None = None) -> np.ndarray:
    """F with the head reserved: each user's first `size` items of channel `head[0]` that are still in the list
    (F > 0, i.e. not dropped as seen) lead it, in that channel's order; the rest keep their fused order.

    A bonus of (size - position) * (1 + max F) puts them above every other key. user: (n,) user of each row
    (None: one user). The channel best at the shortest cut-off on validation owns the head of the page, so
    a share mix chosen for the deeper cut-offs cannot cost the head its hits.
    """
    c, size = head
    rows = np.flatnonzero((channel == c) & (fused[inverse] > 0))
    if rows.size == 0 or size <= 0:
        return fused
    who = user[rows] if user is not None else np.zeros(rows.size, np.int64)
    order = np.lexsort((rank[rows], who))
    rows, who = rows[order], who[order]
    first = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
    position = np.arange(rows.size) - np.repeat(first, np.diff(np.r_[first, rows.size]))
    take = position < size
    out = fused.copy()
    out[inverse[rows[take]]] += (size - position[take]) * (1.0 + float(fused.max()))
    return out


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


def contains(pool: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(len(items),) bool: which items are in `pool` (a binary search; faster than np.isin for small pools)."""
    pool = np.sort(pool)
    at = np.minimum(np.searchsorted(pool, items), pool.size - 1)
    return pool[at] == items


def _empty(names: tuple[str, ...]) -> MergedCandidates:
    z = np.zeros(0, np.int32)
    return MergedCandidates(z, np.zeros(0, np.float32), z, np.zeros(0, np.int8), np.zeros(0, np.uint32), names)


class Merger:
    """Dedupe + fusion by channel shares; shares from base weights, validation hits or measured CTRs.

    Attributes:
        shares_: dict channel -> share of the merged list (sums to 1 over the known channels).
        seen_weight_: factor on already-seen items (settings.seen_weight, else learned, else 1).
        ctr_: dict channel -> measured CTR figures from the last `update` (empty before).
        mapped_: dict log channel name -> the served channel it counted for (None: unmatched), from the last `update`.
        learned_: what `learn_merge` measured on validation (empty when shares were not learned).
        head_: (channel, slots) whose first items lead every merged list (`with_head`), or None; learned.
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
        self.seen_weight_ = 1.0 if s.seen_weight is None else float(s.seen_weight)
        self.ctr_, self.learned_, self.mapped_ = {}, {}, {}
        self.head_: tuple[str, int] | None = None
        self._cache: dict[tuple[str, ...], np.ndarray] = {}
        return self

    def fit(self, dataset: Dataset, *, served=None) -> "Merger":
        """Base shares, then one CTR step from the training exposures (if the dataset has any).

        served: the channel names exposures map to (default: the configured quotas, else log names as they are).
        """
        self.reset()
        exposures = dataset.exposures_in("train")
        if exposures is not None and exposures.height and self.settings.adapt:
            self.update(exposures, served=served)
        return self

    def set_shares(self, shares: dict[str, float], *, seen_weight: float | None = None, learned: dict | None = None,
                   head: tuple[str, int] | None = None) -> "Merger":
        """Shares measured elsewhere (e.g. on validation), bounded; `seen_weight` unless the settings fix it;
        `head`: (channel, slots) reserved at the top of every list (`with_head`), None for none."""
        if head is not None and (head[0] not in shares or int(head[1]) < 0):
            raise ValueError(f"merge head {head!r}: needs a channel among {sorted(shares)} and slots >= 0")
        self.head_ = None if head is None or int(head[1]) == 0 else (str(head[0]), int(head[1]))
        names = sorted(shares)
        w = bounded(np.array([shares[c] for c in names]), self.settings.min_share, self.settings.max_share)
        self.shares_ = dict(zip(names, w.tolist()))
        if seen_weight is not None and self.settings.seen_weight is None:
            self.seen_weight_ = float(seen_weight)
        self.learned_ = learned or {}
        self._cache = {}
        return self

    def update_daily(self, exposures: pl.DataFrame, *, served=None, day_s: int = 86_400) -> "Merger":
        """One `update` per day of served pages (e.g. the pages the service logged since the last build),
        oldest first: recent days weigh most, and shares keep moving as the channels' CTRs do."""
        day = (pl.col("ts") // day_s) if "ts" in exposures.columns else pl.lit(0)
        for _, part in exposures.with_columns(_day=day).sort("_day").group_by("_day", maintain_order=True):
            self.update(part.drop("_day"), served=served)
        return self

    def update(self, exposures: pl.DataFrame, *, served=None) -> "Merger":
        """One smooth, bounded step of the shares toward the CTRs measured in `exposures`."""
        s = self.settings
        served = served if served is not None else (sorted(s.quotas) or sorted(self.shares_) or None)
        self.ctr_ = channel_ctr(exposures, prior_strength=s.prior_strength, aliases=s.aliases, served=served)
        log_names = exposures["channel"].unique().sort().to_list()
        self.mapped_ = channel_map(log_names, served, s.aliases) if served is not None else {n: s.aliases.get(n, n) for n in log_names}
        names = sorted(s.quotas) if s.quotas else sorted(set(self.shares_) | set(self.ctr_) | set(served or ()))
        share = self._weights(names)
        ratio = np.array([self.ctr_[c]["smoothed_ctr"] / max(self.ctr_[c]["overall_ctr"], 1e-12) if c in self.ctr_ else 1.0
                          for c in names])
        target = share * ratio ** s.ctr_power
        target /= target.sum()
        new = bounded((1 - s.learning_rate) * share + s.learning_rate * target, s.min_share, s.max_share)
        self.shares_ = dict(zip(names, new.tolist()))
        self._cache = {}
        return self

    def weights(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """Bounded shares of `names` (normalised over them); unknown channels get the mean known share."""
        key = tuple(names)
        if key not in self._cache:  # a request's channel set repeats: solve the bounds once per set
            default = float(np.mean(list(self.shares_.values()))) if self.shares_ else 1.0
            w = np.array([self.shares_.get(c, default) for c in names], np.float64)
            self._cache[key] = bounded(w, self.settings.min_share, self.settings.max_share)
        return self._cache[key]

    _weights = weights

    def quotas(self, names: list[str], k: int | None = None) -> dict[str, int]:
        """Expected slots per channel of a k-item merge (largest remainder of the shares), for reports."""
        return dict(zip(names, largest_remainder(self.weights(names), k or self.settings.k).tolist()))

    def merge(self, candidates: list[Candidates] | dict[str, Candidates], k: int | None = None, *,
              seen: np.ndarray | None = None) -> MergedCandidates:
        """Dedupe and fuse the channels' lists; at most k items (default settings.k).

        seen: item codes the user already acted on (e.g. `state.items`); they are scaled by `seen_weight_`.
        """
        lists = list(candidates.values()) if isinstance(candidates, dict) else list(candidates)
        names = tuple(c.channel for c in lists)
        if len(set(names)) != len(names):
            raise ValueError(f"merge got two lists from one channel: {list(names)}")
        k = self.settings.k if k is None else k
        sizes = np.array([len(c) for c in lists], np.int64)
        if not lists or sizes.sum() == 0 or k <= 0:
            return _empty(names)
        items = np.concatenate([c.items for c in lists]).astype(np.int32)
        channel = np.repeat(np.arange(len(lists), dtype=np.int64), sizes)
        rank = np.arange(items.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        weights = self.weights(names)
        by_item = np.lexsort((channel, -(weights[channel] / (rank + 1.0)), items))  # per item, its best row first
        first = np.flatnonzero(np.r_[True, items[by_item][1:] != items[by_item][:-1]])
        owner = by_item[first]  # (n_keys,) the row each item is credited to
        uniq = items[owner]
        inverse = np.empty(items.size, np.int64)
        inverse[by_item] = np.repeat(np.arange(first.size), np.diff(np.r_[first, items.size]))
        fused = fused_scores(inverse, uniq.size, channel, rank, weights, consensus=self.settings.consensus)
        if seen is not None and len(seen) and self.seen_weight_ != 1.0:
            fused = np.where(contains(np.asarray(seen), uniq), fused * self.seen_weight_, fused)
        if self.head_ is not None and self.head_[0] in names:
            fused = with_head(fused, inverse, channel, rank, (names.index(self.head_[0]), self.head_[1]))
        sources = np.bitwise_or.reduceat(np.left_shift(np.uint32(1), channel[by_item].astype(np.uint32)), first)
        keep = np.flatnonzero(fused > 0)
        top = keep[np.lexsort((uniq[keep], -fused[keep]))[:k]]
        rows = owner[top]
        return MergedCandidates(items[rows], np.concatenate([c.scores for c in lists]).astype(np.float32)[rows],
                                np.concatenate([c.triggers for c in lists]).astype(np.int32)[rows],
                                channel[rows].astype(np.int8), sources[top], names)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"settings": self.settings.model_dump(), "shares": self.shares_,
                                          "seen_weight": self.seen_weight_, "head": self.head_, "ctr": self.ctr_, "mapped": self.mapped_,
                                          "learned": self.learned_}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Merger":
        meta = json.loads(Path(path).read_text())
        merger = cls(settings=MergeSettings.model_validate(meta["settings"]))
        merger.shares_, merger.ctr_, merger._cache = meta["shares"], meta["ctr"], {}
        merger.seen_weight_, merger.learned_ = float(meta.get("seen_weight", 1.0)), meta.get("learned", {})
        merger.mapped_ = meta.get("mapped", {})
        merger.head_ = tuple(meta["head"]) if meta.get("head") else None
        return merger

"""Ranking samples: cleaned (user, item, time, label) rows with point-in-time features, as tensors.

Two protocols, chosen automatically (`protocol="auto"`):

* **exposures** (the shop logs impressions): one sample per exposure, label = clicked. Cleaning,
  in this order, each counted in `report["removed"]`: invalid exposures (unknown user or item,
  item not in the catalogue, negative position/page, label not 0/1, duplicate (request, item));
  a configured blacklist of users and items; crawler and cheating users, as ingest judged them
  (`homefeed.data.clean.load_verdicts`: crawlers, and users with >= `cheat_min_fake_orders` fake
  orders; ranking reuses those verdicts rather than judging the cleaned log again); configured abnormal time
  windows (local time); users not active in the scene (fewer than `active_min_actions` events of
  the scene or homepage visits in the `active_window_days` before the sample).
* **din** (no impression log, like the public Taobao UserBehavior and Amazon sets): the protocol
  of the DIN paper (Zhou et al., KDD 2018). Each user's first click/fav/cart/buy of an item in the
  part is a positive (in a log with no `click` rows, `pv` is the click); `neg_ratio` negatives per
  positive are drawn by popularity at the same time (the item's events in the same
  `popularity_window_s` bucket) and take the positive's user and time. The same cleaning applies.

Leave-one-out logs (`ingest.split=leave_one_out`: each user's last event is test, the one before
valid) are sampled through `homefeed.rank.held_out.held_out_view`: each held-out event at its
user's own time, one split step after the user's previous event, not at the split's instant. The
valid part is then one positive per tested user, as in SASRec and its successors, and as large as
the test part; before, ml-100k kept 72 valid rows of 943 users (the activity filter saw months of
silence before the split instant) and its valid/test features saw none of the user's recent history.

`train_window_days` keeps only the last days of train samples (their features still see the
whole history before them), a common way to train on recent behaviour at a fraction of the cost.

Features come from `homefeed.rank.features.point_in_time` (nothing at or after the sample's ts)
and are encoded by `homefeed.rank.encoders.Encoders` fitted on the train part only:

    >>> train = build_samples(ds, part="train", settings=SampleSettings())             # doctest: +SKIP
    >>> test = build_samples(ds, part="test", settings=SampleSettings(), encoders=train.encoders)  # doctest: +SKIP
    >>> train.protocol, len(train), train.tensors["sparse"].shape                    # doctest: +SKIP
    ('exposures', 412000, torch.Size([412000, 28]))
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import Field

from homefeed.config import Section, TimeWindow
from homefeed.data.dataset import Dataset
from homefeed.data.schema import BEHAVIORS
from homefeed.rank.encoders import Encoders
from homefeed.rank.features import FeatureSettings, Queries, Timeline, point_in_time
from homefeed.rank.held_out import HeldOutView, held_out_view
from homefeed.rank.spec import FeatureSpec

PARTS = ("train", "valid", "test")
ROW_COLUMNS = ("user_id", "item_id", "ts", "behavior", "channel", "position", "page", "trigger_item", "label")


class SampleSettings(Section):
    """How samples are chosen and cleaned; `features` says what each sample carries."""

    protocol: Literal["auto", "exposures", "din"] = "auto"
    features: FeatureSettings = FeatureSettings()
    drop_bots: bool = Field(True, description="drop the crawler and cheating users ingest found (its cleaning verdicts)")
    cheat_min_fake_orders: int = Field(2, ge=1, description="a user with this many fake orders is a cheater")
    abnormal_windows: list[TimeWindow] = Field(default_factory=list, description="sample times to drop (local)")
    blacklist_users: list[int | str] = Field(default_factory=list, description="raw user ids")
    blacklist_items: list[int | str] = Field(default_factory=list, description="raw item ids")
    active_scene: str | None = Field("homepage", description="scene whose activity counts; None = all events")
    active_window_days: float = Field(7.0, gt=0)
    active_min_actions: int = Field(1, ge=0, description="0 keeps every user")
    train_window_days: float | None = Field(None, gt=0, description="train on the last N days only; None = all")
    neg_ratio: int = Field(1, ge=1, description="DIN protocol: negatives per positive")
    positive_behaviors: list[str] = Field(default_factory=lambda: ["click", "fav", "cart", "buy"])
    popularity_window_s: int = Field(86_400, gt=0, description="DIN protocol: 'same time' bucket of negatives")
    seed: int = 0


@dataclass
class Samples:
    """N samples in the batch contract of `homefeed.rank.spec` (all rows pre-tensorised).

    tensors: sparse (N, F) int64, dense (N, Dn) float32, seq (N, L, S) int64, seq_gap (N, L) int64,
        label (N,) float32, user (N,) int64. ts: (N,) int64 sample times. report: the cleaning counts.
    """

    tensors: dict[str, torch.Tensor]
    ts: np.ndarray
    spec: FeatureSpec
    encoders: Encoders
    protocol: str
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows at `index` ((n,) int64) as one batch dict."""
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}

    def batches(self, batch_size: int, *, order: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches (of the rows permuted by `order`, if given): one gather, then views."""
        data = self.tensors if order is None else self.take(order)
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in data.items()}


def choose_protocol(dataset: Dataset, settings: SampleSettings) -> tuple[str, str]:
    """('exposures' | 'din', why): exposures whenever the dataset logs any."""
    if settings.protocol != "auto":
        return settings.protocol, f"configured protocol={settings.protocol!r}"
    if dataset.exposures is None or dataset.exposures.height == 0:
        return "din", "no exposure log: DIN protocol (next positives vs popularity negatives)"
    return "exposures", "exposure log present: label = clicked"


def build_samples(dataset: Dataset, *, part: str, settings: SampleSettings = SampleSettings(),
                  encoders: Encoders | None = None, bad_users: np.ndarray | None = None) -> Samples:
    """Samples of one split part. Without `encoders`, they are fitted on the train part (always train).

    bad_users: crawler/cheater user codes, if already found (else computed when `drop_bots`).
    """
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; valid parts: {', '.join(PARTS)}")
    dataset = held_out_view(dataset)  # leave-one-out: held-out events at their user's own time
    protocol, why = choose_protocol(dataset, settings)
    if bad_users is None:
        bad_users, bot_info = find_bad_users(dataset, settings)
    else:
        bot_info = {"bad_users": int(len(bad_users))}
    rows, removed = sample_rows(dataset, part, settings, protocol, bad_users)
    raw = point_in_time(dataset, rows, settings.features)
    if encoders is None:
        train = raw if part == "train" else point_in_time(
            dataset, sample_rows(dataset, "train", settings, protocol, bad_users)[0], settings.features)
        encoders = Encoders.fit(train, settings.features)
    tensors = encoders.transform(raw)
    tensors["label"] = torch.from_numpy(rows["label"].to_numpy().astype(np.float32))
    tensors["user"] = torch.from_numpy(rows["user_id"].to_numpy().astype(np.int64))
    n_pos = int(rows["label"].sum()) if rows.height else 0
    report = {"protocol": protocol, "why": why, "part": part, "rows": rows.height, "positives": n_pos,
              "ctr": n_pos / rows.height if rows.height else float("nan"), "removed": removed, **bot_info}
    if isinstance(dataset, HeldOutView):
        report["clock"] = "leave-one-out: held-out events one split step after their user's previous event"
    return Samples(tensors, rows["ts"].to_numpy().astype(np.int64), encoders.spec, encoders, protocol, report)


def build_all(dataset: Dataset, settings: SampleSettings = SampleSettings()) -> dict[str, Samples]:
    """train, valid and test samples with the encoders fitted on train."""
    dataset = held_out_view(dataset)
    bad, _ = find_bad_users(dataset, settings)
    train = build_samples(dataset, part="train", settings=settings, bad_users=bad)
    out = {"train": train}
    for part in ("valid", "test"):
        out[part] = build_samples(dataset, part=part, settings=settings, encoders=train.encoders, bad_users=bad)
    return out


# --- rows -----------------------------------------------------------------------------------

def sample_rows(dataset: Dataset, part: str, settings: SampleSettings, protocol: str,
                bad_users: np.ndarray) -> tuple[pl.DataFrame, dict[str, int]]:
    """The cleaned sample rows of `part` (ROW_COLUMNS) and the rows each cleaning step removed."""
    if protocol == "exposures":
        if dataset.exposures is None:
            raise ValueError("protocol 'exposures' needs an exposure log, and this dataset has none; use 'din' or 'auto'")
        rows, removed = _exposure_rows(dataset, part)
    else:
        rows, removed = _positive_rows(dataset, part, settings), {}
    if part == "train" and settings.train_window_days is not None:  # features still see the whole history
        kept = rows.filter(pl.col("ts") >= dataset.split.train_end - int(settings.train_window_days * 86_400))
        removed["before_train_window"], rows = rows.height - kept.height, kept
    bots = pl.col("user_id").cast(pl.Int64).is_in(pl.Series(np.asarray(bad_users, np.int64)).implode())
    steps = [("blacklist", _blacklisted(dataset, settings)), ("bots", bots)]
    steps += [(f"abnormal_window:{w.name}", _in_window(w, settings)) for w in settings.abnormal_windows]
    for name, drop in steps:
        kept = rows.filter(~drop)
        removed[name], rows = rows.height - kept.height, kept
    kept = rows.filter(_active(dataset, rows, settings))
    removed["inactive"], rows = rows.height - kept.height, kept
    if protocol == "din":
        rows = _with_negatives(dataset, rows, settings, PARTS.index(part))
    return rows.select(ROW_COLUMNS), removed


def _exposure_rows(dataset: Dataset, part: str) -> tuple[pl.DataFrame, dict[str, int]]:
    ex = dataset.exposures_in(part)
    n = ex.height
    valid = (pl.all_horizontal(pl.col(c).is_not_null() for c in ("user_id", "item_id", "ts", "clicked"))
             & (pl.col("user_id") > 0) & (pl.col("item_id") > 0)
             & pl.col("item_id").is_in(dataset.items["item_id"].implode())
             & (pl.col("position").fill_null(0) >= 0) & (pl.col("page").fill_null(0) >= 0)
             & pl.col("clicked").is_in([0, 1]))
    ex = ex.filter(valid).unique(["request_id", "item_id"], keep="first", maintain_order=True)
    rows = ex.select(
        "user_id", "item_id", "ts",
        pl.when(pl.col("clicked") == 1).then(pl.lit("click")).otherwise(pl.lit("pv")).alias("behavior"),
        pl.col("channel").cast(pl.String),
        pl.col("position").cast(pl.Int64), pl.col("page").cast(pl.Int64),
        (pl.col("trigger_item") if "trigger_item" in ex.columns else pl.lit(0)).cast(pl.Int64).alias("trigger_item"),
        pl.col("clicked").cast(pl.Int8).alias("label"))
    return rows, {"invalid": n - rows.height}


def _positive_rows(dataset: Dataset, part: str, settings: SampleSettings) -> pl.DataFrame:
    """DIN protocol positives: each user's first positive event per item in the part."""
    positives = list(settings.positive_behaviors)
    unknown = sorted(set(positives) - set(BEHAVIORS))
    if unknown:
        raise ValueError(f"positive_behaviors: unknown behaviour(s) {unknown}; valid: {', '.join(BEHAVIORS)}")
    behavior = pl.col("behavior").cast(pl.String)
    if "click" in positives and dataset.events.filter(behavior == "click").height == 0:
        positives.append("pv")  # a log without homepage clicks: a page view is the click on the item
    ev = dataset.events_in(part).filter(behavior.is_in(positives) & (pl.col("item_id") > 0) & (pl.col("user_id") > 0))
    ev = ev.sort("ts", maintain_order=True).unique(["user_id", "item_id"], keep="first", maintain_order=True)
    return ev.select("user_id", "item_id", "ts", behavior.alias("behavior"), pl.lit(None, pl.String).alias("channel"),
                     pl.lit(None, pl.Int64).alias("position"), pl.lit(None, pl.Int64).alias("page"),
                     pl.lit(0, pl.Int64).alias("trigger_item"), pl.lit(1, pl.Int8).alias("label"))


# --- cleaning steps -------------------------------------------------------------------------

def find_bad_users(dataset: Dataset, settings: SampleSettings) -> tuple[np.ndarray, dict]:
    """User codes of the crawlers and cheaters (>= cheat_min_fake_orders fake orders) ingest judged, and counts.

    The verdicts come from the dataset folder (`homefeed.data.clean.save_verdicts`, written by
    ingest): the events here are already cleaned, so judging them again would only find the buys
    the cleaning guard chose to keep. A dataset without verdicts drops nobody and says so.
    """
    none = np.zeros(0, np.int64)
    if not settings.drop_bots:
        return none, {"bad_users": 0}
    from homefeed.data.clean import load_verdicts

    verdicts = load_verdicts(dataset.path)
    if verdicts is None:
        return none, {"bad_users": 0, "verdicts": "none: the dataset folder holds no cleaning verdicts "
                                                 "(built in memory, or ingested before they were saved); no user dropped as a bot"}
    codes = verdicts.with_columns(code=pl.Series(_codes(dataset, "user", verdicts["user_id"].to_list(), keep_unknown=True)))
    known = codes.filter(pl.col("code") > 0)
    crawlers = known.filter(pl.col("verdict") == "crawler")["code"].to_numpy().astype(np.int64)
    cheaters = known.filter((pl.col("verdict") == "fake_orders") & (pl.col("n") >= settings.cheat_min_fake_orders))
    cheaters = cheaters["code"].to_numpy().astype(np.int64)
    bad = np.union1d(crawlers, cheaters)
    return bad, {"bad_users": int(bad.size), "crawler_users": int(np.unique(crawlers).size),
                 "cheating_users": int(np.unique(cheaters).size), "verdicts": "from ingest"}


def _codes(dataset: Dataset, space: str, raw: list, *, keep_unknown: bool = False) -> list[int]:
    """Raw ids -> dataset codes (raw ints are taken as codes when the dataset has no vocabulary).

    Ids the vocabulary does not know are dropped, or kept as code 0 with `keep_unknown` (one code per id).
    """
    if not raw:
        return []
    if space in dataset.vocabs:
        codes = dataset.vocabs[space].encode(pl.Series([str(r) for r in raw])).to_list()
        return codes if keep_unknown else [c for c in codes if c]
    return [int(r) for r in raw]


def _blacklisted(dataset: Dataset, settings: SampleSettings) -> pl.Expr:
    return (pl.col("user_id").is_in(_codes(dataset, "user", settings.blacklist_users))
            | pl.col("item_id").is_in(_codes(dataset, "item", settings.blacklist_items)))


def _in_window(window: TimeWindow, settings: SampleSettings) -> pl.Expr:
    from homefeed.data.clean import in_window

    return in_window(window, tz_offset_hours=settings.features.tz_offset_hours)


def _active(dataset: Dataset, rows: pl.DataFrame, settings: SampleSettings) -> np.ndarray:
    """(n,) bool: the user had >= active_min_actions scene actions in the window before the sample."""
    if settings.active_min_actions == 0 or rows.height == 0:
        return np.ones(rows.height, bool)
    ev = dataset.events
    if settings.active_scene is not None and "scene" in ev.columns:
        in_scene = ev.filter(pl.col("scene") == settings.active_scene)
        ev = in_scene if in_scene.height else ev  # a log that never names the scene: all events count
    acts = [ev.select("user_id", "ts")]
    if dataset.exposures is not None:  # a homepage visit (request) is an action in the scene
        acts.append(dataset.exposures.select("user_id", "ts").unique())
    acts = pl.concat([a.with_columns(pl.col("user_id").cast(pl.Int64), pl.col("ts").cast(pl.Int64)) for a in acts])
    lo, hi = Timeline(acts["user_id"].to_numpy(), acts["ts"].to_numpy()).bounds(
        Queries(rows["user_id"].to_numpy(), rows["ts"].to_numpy()), int(settings.active_window_days * 86_400))
    return (hi - lo) >= settings.active_min_actions


def _with_negatives(dataset: Dataset, positives: pl.DataFrame, settings: SampleSettings, salt: int) -> pl.DataFrame:
    """Positives plus `neg_ratio` popularity-at-the-same-time negatives each, sorted by time."""
    if positives.height == 0:
        return positives
    w = settings.popularity_window_s
    pop = (dataset.events.filter(pl.col("item_id") > 0)
           .group_by((pl.col("ts") // w).alias("bucket"), "item_id").len().sort("bucket", "item_id"))
    bucket, item, cum = pop["bucket"].to_numpy(), pop["item_id"].to_numpy(), np.cumsum(pop["len"].to_numpy())
    uniq, first = np.unique(bucket, return_index=True)
    last = np.r_[first[1:], bucket.size]
    before = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0)
    neg = positives[np.repeat(np.arange(positives.height), settings.neg_ratio)]
    g = np.minimum(np.searchsorted(uniq, neg["ts"].to_numpy() // w), uniq.size - 1)
    pos_item = neg["item_id"].to_numpy()
    rng = np.random.default_rng([settings.seed, salt])
    drawn = np.zeros(neg.height, np.int64)
    todo = np.ones(neg.height, bool)
    for _ in range(4):  # redraw the few negatives that hit the positive item
        u = rng.random(int(todo.sum()))
        target = before[g[todo]] + np.floor(u * (cum[last[g[todo]] - 1] - before[g[todo]])).astype(np.int64)
        drawn[todo] = item[np.minimum(np.searchsorted(cum, target, side="right"), item.size - 1)]
        todo = drawn == pos_item
    neg = neg.with_columns(pl.Series("item_id", drawn).cast(positives.schema["item_id"]), pl.lit(0, pl.Int8).alias("label"),
                           pl.lit("pv").alias("behavior"))
    neg = neg.filter(pl.Series(~todo) & ~_blacklisted(dataset, settings))
    return pl.concat([positives, neg.select(positives.columns)]).sort("ts", "user_id", maintain_order=True)

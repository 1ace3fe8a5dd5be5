"""WorldSpec: every size and knob of the synthetic shop, with presets `tiny`, `small` and `large`.

The synthetic shop is a seeded generator with a hidden truth (see `homefeed.world.generate`). Its spec
is a pydantic `Section`: unknown keys are errors, so a misspelt knob never goes unnoticed. Presets set
the sizes; every other knob keeps its default unless overridden.

    >>> spec = WorldSpec.preset("tiny", seed=7)
    >>> spec.n_users, spec.n_days
    (1500, 8)
    >>> WorldSpec.preset("tiny", n_days=4).n_days
    4

Time: day 0 starts at local midnight of `start_date` in the shop's time zone (`tz_offset_hours` east
of UTC), so `start_ts = timegm(start_date) - tz_offset_hours * 3600` and day `d` is
`[start_ts + d * 86400, start_ts + (d + 1) * 86400)` in unix seconds.
"""
from __future__ import annotations

import calendar
import datetime as dt
from typing import Literal

import numpy as np
from pydantic import Field

from homefeed.config import Section

CHANNELS: tuple[str, ...] = ("popular", "itemcf_like", "crowd", "retarget")
"""Recall channels of the baseline homepage policy, in the order of `WorldSpec.channel_mix`."""

POOLS: tuple[str, ...] = ("recommended", "flash_sale", "group_buy", "flash_discount")
"""Homepage material pools an item can belong to (several at once)."""


class ClickTruth(Section):
    """Coefficients of the hidden click model (a logistic model; see `homefeed.world.clickmodel`)."""

    bias: float = -5.0  # intercept; sets the overall CTR (~5% on the baseline policy)
    affinity: float = 3.0  # x user_vec . item_vec (static taste)
    quality: float = 0.6  # x item_quality (standard normal-ish)
    cross: float = 2.0  # x the user's latent interest weight in the item's standard category
    sequence: float = 2.5  # x recent_vec . item_vec (recent_vec: decayed mean of the last items seen)
    sequence_category: float = 0.8  # + if the item's standard category is among the last 3 seen
    position_decay: float = 0.45  # - position_decay * log1p(position)
    fatigue: float = 0.6  # - fatigue * times this item was already shown to the user
    price: float = 1.0  # - price * |price tier - purchase power| / 4


class Funnel(Section):
    """After a view or click: fav and cart by affinity, buy mostly after a cart, blocked by repurchase cycles."""

    slope: float = 2.0  # x user_vec . item_vec in the fav and cart logits
    fav_bias: float = -4.1
    cart_bias: float = -3.8
    click_bonus: float = 0.7  # a homepage click is a stronger intent than a plain page view
    buy_after_cart: float = 0.35
    direct_buy: float = 0.008  # buy without a cart, per view
    repurchase_block: float = 0.03  # buy probability multiplier inside a category's repurchase cycle


class Browse(Section):
    """How organic (search/browse) sessions move through the catalogue."""

    explore: float = 0.08  # sessions in a random category instead of one of the user's interests
    search_share: float = 0.4  # sessions that are searches (they stay on one leaf longer)
    stay_search: float = 0.65  # next view stays on the same leaf category (search)
    stay_browse: float = 0.45  # ... (browse); otherwise it hops to a sibling leaf of the same standard
    intent_noise: float = 0.5  # norm of a session's random deviation from the user's taste
    choice_beta: float = 4.0  # x intent . item_vec when picking among popularity-drawn candidates
    n_candidates: int = Field(6, ge=1)  # candidates drawn by popularity per view
    price_fit: float = 1.0  # - price_fit * |price tier - purchase power| / 4 in that choice


class Noise(Section):
    """The dirt that cleaning must remove; labelled only in `truth/`."""

    crawler_share: float = 0.012  # of all accounts
    crawler_burst_share: float = 0.6  # bursty crawlers (> 30 pv/minute); the rest are slow pv-only ones
    fake_order_share: float = 0.02  # fake buys / organic buys
    fake_dedicated_share: float = 0.5  # of fake buys made by dedicated brushing accounts
    brushed_shop_share: float = 0.02  # shops that buy fake orders
    spike_days: int = 1  # days with a midnight ordering spike
    spike_user_share: float = 0.08  # of normal users that cart/buy in each spike window
    spike_minutes: int = 10  # the window is local [00:00, 00:00 + spike_minutes)


class WorldSpec(Section):
    """Sizes and knobs of the synthetic shop. Build one with `WorldSpec.preset(name, seed=...)`."""

    size: Literal["tiny", "small", "large", "custom"] = "tiny"
    seed: int = 7
    # catalogue
    n_items: int = Field(1500, ge=50)
    n_standard: int = Field(12, ge=2, le=120)  # standard categories
    leaves_min: int = Field(3, ge=1)
    leaves_max: int = Field(6, ge=1)  # leaf categories per standard category
    n_brands: int = Field(80, ge=2)
    n_shops: int = Field(120, ge=2)
    venue_size: int = Field(150, ge=10)  # mean items per promotion venue
    venue_share: float = 0.75  # items on some venue; the rest have venue null
    popularity_exponent: float = 0.9  # Zipf exponent of item popularity
    near_dup_share: float = 0.12  # items re-listing another item's product (near-duplicate images)
    dim: int = Field(16, ge=4)  # latent vector size
    # users and time
    n_users: int = Field(1500, ge=20)  # normal users (crawler and brushing accounts come on top)
    n_days: int = Field(8, ge=3)
    start_date: str = "2017-11-25"  # local date of day 0
    tz_offset_hours: float = 8.0
    sessions_per_day: float = 0.75  # mean organic (search/browse) sessions per user and day
    homepage_per_day: float = 0.33  # mean homepage visits per user and day
    session_length: float = Field(6.0, gt=1.0)  # mean page views per organic session (geometric)
    page_size: int = Field(12, ge=2, le=40)
    max_pages: int = Field(3, ge=1, le=10)
    next_page: float = 0.5  # probability of scrolling to the next page
    channel_mix: list[float] = Field(default_factory=lambda: [0.3, 0.3, 0.25, 0.15])  # per CHANNELS
    chunk_users: int = Field(20_000, ge=100)  # users simulated per batch (memory, progress)
    browse: Browse = Browse()
    click: ClickTruth = ClickTruth()
    funnel: Funnel = Funnel()
    noise: Noise = Noise()

    @classmethod
    def preset(cls, name: str, *, seed: int = 7, **overrides) -> "WorldSpec":
        """The named preset with `seed`; keyword `overrides` replace single knobs (validated)."""
        if name not in PRESETS:
            raise ValueError(f"unknown world size {name!r}; valid sizes: {', '.join(PRESETS)}")
        return cls.model_validate({**PRESETS[name], "size": name, "seed": seed, **overrides})

    @property
    def start_ts(self) -> int:
        """Unix seconds of local midnight starting day 0."""
        day = dt.date.fromisoformat(self.start_date)
        return calendar.timegm(day.timetuple()) - int(round(self.tz_offset_hours * 3600))

    @property
    def end_ts(self) -> int:
        return self.start_ts + self.n_days * 86400

    @property
    def tz_s(self) -> int:
        return int(round(self.tz_offset_hours * 3600))

    def channel_cum(self) -> np.ndarray:
        """Cumulative channel probabilities, float64 (len(CHANNELS),)."""
        if len(self.channel_mix) != len(CHANNELS) or min(self.channel_mix) < 0 or sum(self.channel_mix) <= 0:
            raise ValueError(f"channel_mix needs {len(CHANNELS)} non-negative weights for {', '.join(CHANNELS)}; "
                             f"got {self.channel_mix}")
        w = np.asarray(self.channel_mix, dtype=np.float64)
        return np.cumsum(w / w.sum())


PRESETS: dict[str, dict] = {
    "tiny": dict(n_users=1500, n_items=1500, n_standard=12, leaves_min=3, leaves_max=6, n_brands=80,
                 n_shops=120, n_days=8),
    "small": dict(n_users=25_000, n_items=20_000, n_standard=40, leaves_min=3, leaves_max=8, n_brands=600,
                  n_shops=1500, n_days=14, sessions_per_day=0.42, homepage_per_day=0.12,
                  noise=dict(spike_days=2)),
    "large": dict(n_users=200_000, n_items=200_000, n_standard=100, leaves_min=3, leaves_max=8, n_brands=4000,
                  n_shops=12_000, n_days=14, sessions_per_day=1.05, homepage_per_day=0.2, venue_size=200,
                  noise=dict(spike_days=2)),
}
"""Sizes per preset; tiny ~75k events (tests), small ~1M (demo), large >= 20M (benchmarks)."""

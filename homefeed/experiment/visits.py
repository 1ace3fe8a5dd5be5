"""Who visits the homepage when: a seeded population of the shop's users, and each simulated day's requests.

Visit rates come from the truth when the world saved them (`truth.npz: user_rate_home`, homepage
visits per day); otherwise from the public log, each user's homepage visits per day shrunk toward
the population mean by one day's worth of prior (`(visits + mean) / (days + 1)`), so a user never
seen on the homepage still visits now and then. Visit times follow the log's hour-of-day profile of
homepage visits (local time); each visit shows one page and scrolls to the next with the world's
`next_page` probability, up to `max_pages` (from `world.json`), 30 s apart.

Day `d` of an experiment is `[start + d * 86400, start + (d + 1) * 86400)` with `start` the end of the
world's log. The same seed gives the same visits whatever arms are run.

    >>> pop = Population.from_world("out/tiny", n_users=500, seed=0)     # doctest: +SKIP
    >>> day = pop.day(0, seed=0)                                         # doctest: +SKIP
    >>> day.user.shape == day.ts.shape == day.page.shape                 # doctest: +SKIP
    True
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

DAY_S = 86_400
PAGE_GAP_S = 30


@dataclass
class Requests:
    """One day's homepage requests, sorted by time: user id, ts, page in its visit (0 first), visit number."""

    user: np.ndarray  # int64 (R,)
    ts: np.ndarray  # int64 (R,)
    page: np.ndarray  # int64 (R,)
    visit: np.ndarray  # int64 (R,) unique per day

    def __len__(self) -> int:
        return len(self.user)

    def batches(self) -> list[np.ndarray]:
        """Consecutive index ranges in which no user appears twice: a batch's events are posted before
        the next batch is served, so every request sees the events of the user's earlier requests."""
        out, seen, start = [], set(), 0
        for i, u in enumerate(self.user.tolist()):
            if u in seen:
                out.append(np.arange(start, i))
                seen, start = set(), i
            seen.add(u)
        if start < len(self.user):
            out.append(np.arange(start, len(self.user)))
        return out


@dataclass
class Population:
    """The users who visit, their homepage visits per day, and the shop's visit clock."""

    user_ids: np.ndarray  # int64 (U,) public ids, sorted
    rate: np.ndarray  # float64 (U,) visits per day
    hour_share: np.ndarray  # float64 (24,) share of visits per local hour
    next_page: float
    max_pages: int
    start: int  # unix s: the first experiment day starts here (the end of the world's log)
    tz_s: int

    @classmethod
    def from_world(cls, world: str | Path, *, n_users: int | None = None, seed: int = 0) -> "Population":
        """The world's shoppers (crawlers and brushing accounts excluded), `n_users` of them drawn by seed."""
        world = Path(world)
        info = json.loads((world / "world.json").read_text())
        spec = info["spec"]
        n_days = len(info["day_starts"]) - 1
        tz_s = int(round(float(spec.get("tz_offset_hours", 8.0)) * 3600))
        with np.load(world / "truth" / "truth.npz", allow_pickle=False) as npz:
            role = npz["user_role"]
            truth_rate = npz["user_rate_home"] if "user_rate_home" in npz.files else None
        users = np.flatnonzero(role == 0)
        users = users[users >= 1].astype(np.int64)
        if n_users is not None and n_users < len(users):
            users = np.sort(np.random.default_rng(seed).choice(users, n_users, replace=False))
        visits = (pl.scan_parquet(world / "exposures.parquet").filter(pl.col("page") == 0)
                  .group_by("request_id").agg(pl.col("user_id").first(), pl.col("ts").first()).collect())
        if truth_rate is not None:
            rate = truth_rate[users].astype(np.float64)
        else:
            per_user = visits.group_by("user_id").len()
            counts = np.zeros(len(users))
            found = np.searchsorted(users, per_user["user_id"].to_numpy())
            ok = (found < len(users)) & (users[np.minimum(found, len(users) - 1)] == per_user["user_id"].to_numpy())
            counts[found[ok]] = per_user["len"].to_numpy()[ok]
            mean = visits.height / max(len(role) - 1, 1) / n_days
            rate = (counts + mean) / (n_days + 1)
        hours = ((visits["ts"].to_numpy() + tz_s) // 3600) % 24
        hour_share = (np.bincount(hours, minlength=24) + 1.0)
        return cls(user_ids=users, rate=rate, hour_share=hour_share / hour_share.sum(),
                   next_page=float(spec.get("next_page", 0.5)), max_pages=int(spec.get("max_pages", 3)),
                   start=int(info["end_ts"]), tz_s=tz_s)

    def day(self, d: int, *, seed: int = 0) -> Requests:
        """Day d's requests: Poisson visits per user, times by the hour profile, pages by scrolling."""
        rng = np.random.default_rng([seed, d, 1])
        n = rng.poisson(self.rate)
        user = np.repeat(self.user_ids, n)
        day_start = self.start + d * DAY_S
        local_midnight = day_start - (day_start + self.tz_s) % DAY_S  # the local day holding day_start
        hour = rng.choice(24, size=len(user), p=self.hour_share)
        t = local_midnight + hour * 3600 + rng.integers(0, 3600, len(user))
        t = np.where(t < day_start, t + DAY_S, t)  # keep inside [day_start, day_start + 1 day)
        pages = np.minimum(rng.geometric(1 - self.next_page, len(user)), self.max_pages) if self.next_page < 1 \
            else np.full(len(user), self.max_pages)
        visit = np.repeat(np.arange(len(user)), pages)
        page = np.arange(len(visit)) - np.repeat(np.cumsum(pages) - pages, pages)
        ts = np.repeat(t, pages) + page * PAGE_GAP_S
        users = user[visit]
        order = np.lexsort((page, users, ts))
        return Requests(user=users[order], ts=ts[order].astype(np.int64), page=page[order], visit=visit[order])

"""What an experiment measures, per arm and per day, from the log of the pages it served.

Each served page is one row of the page log (`PAGE_COLUMNS`); `shown` lists the items of each
page. Every metric is a ratio of sums over users (so its interval can resample users, see `stats`):

    ctr                  clicks / items shown
    purchases_per_visit  purchases / visits (a visit is 1..3 pages)
    gmv_per_visit        price x purchases / visits (when the shop has prices)
    categories_per_page  distinct standard categories on a page, averaged over pages
    repeat_exposure      items shown to a user that were already shown to them the same day / items shown
                         (the seeds' "fatigue")
    just_bought_pages    pages showing a standard category the user bought within its repurchase cycle / pages
    coverage             distinct items shown / catalogue size

Standard categories and repurchase cycles are the world's truth, so the metrics do not depend on
what any arm's own category mapping learned.
"""
from __future__ import annotations

import numpy as np
import polars as pl
from scipy import sparse

from homefeed.experiment.stats import (coverage_replicates, interval, ratio_replicates, relative_difference,
                                       weights)

PAGE_COLUMNS = ("arm", "day", "user", "visits", "pages", "exposures", "clicks", "buys", "gmv", "categories",
                "repeats", "just_bought")
RATIOS: dict[str, tuple[str, str]] = {
    "ctr": ("clicks", "exposures"),
    "purchases_per_visit": ("buys", "visits"),
    "gmv_per_visit": ("gmv", "visits"),
    "categories_per_page": ("categories", "pages"),
    "repeat_exposure": ("repeats", "exposures"),
    "just_bought_pages": ("just_bought", "pages"),
}
COVERAGE = "coverage"
METRICS: tuple[str, ...] = (*RATIOS, COVERAGE)
LOWER_IS_BETTER = frozenset({"repeat_exposure", "just_bought_pages"})


def _scope_replicates(pages: pl.DataFrame, shown: pl.DataFrame, n_items: int, n_boot: int,
                      rng: np.random.Generator, metrics: tuple[str, ...]) -> tuple[dict, dict, int]:
    """Point values and (B,) replicates of every metric over the users of `pages` (one arm, one scope)."""
    per_user = pages.group_by("user").agg(pl.col(c).sum() for c in PAGE_COLUMNS[3:]).sort("user")
    users = per_user["user"].to_numpy()
    w = weights(len(users), n_boot, rng)
    points, reps = {}, {}
    for name in metrics:
        if name == COVERAGE:
            idx = np.searchsorted(users, shown["user"].to_numpy())
            m = sparse.csr_matrix((np.ones(shown.height), (idx, shown["item"].to_numpy())),
                                  shape=(len(users), n_items + 1))
            points[name] = shown["item"].n_unique() / max(n_items, 1)
            reps[name] = coverage_replicates(m, n_items, w)
            continue
        num, den = (per_user[c].to_numpy().astype(np.float64) for c in RATIOS[name])
        points[name] = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
        reps[name] = ratio_replicates(num, den, w)
    return points, reps, len(users)


def summarise(pages: pl.DataFrame, shown: pl.DataFrame, *, arms: list[str], control: str | None, n_items: int,
              n_boot: int = 1000, seed: int = 0, with_gmv: bool = True, pairs: tuple[tuple[str, str], ...] = ()) -> dict:
    """Every metric per arm (all days, and per day) with 95% bootstrap intervals, each arm against `control`,
    and each (arm, other) of `pairs` likewise (under "pairs", keyed "arm vs other").

    Returns {"metrics": {arm: {metric: {value, low, high}}}, "daily": {arm: {metric: [{day, value, low, high}]}},
             "vs_control": {arm: {metric: {value, low, high, significant}}},
             "active_users": {arm: users with a page}}.
    """
    for name in [control, *(n for pair in pairs for n in pair)]:
        if name is not None and name not in arms:
            raise ValueError(f"arm {name!r} (control or compared) is not among the arms {arms}")
    metrics = tuple(m for m in METRICS if with_gmv or m != "gmv_per_visit")
    rng = np.random.default_rng([seed, 2])
    out: dict = {"metrics": {}, "daily": {}, "vs_control": {}, "pairs": {}, "active_users": {}}
    reps_all: dict[str, tuple[dict, dict]] = {}
    days = sorted(pages["day"].unique().to_list())
    for arm in arms:
        p, s = pages.filter(pl.col("arm") == arm), shown.filter(pl.col("arm") == arm)
        if p.height == 0:
            raise ValueError(f"arm {arm!r} served no page (too few users or days?)")
        points, reps, n_users = _scope_replicates(p, s, n_items, n_boot, rng, metrics)
        reps_all[arm] = (points, reps)
        out["active_users"][arm] = n_users
        out["metrics"][arm] = {m: interval(points[m], reps[m]) for m in metrics}
        out["daily"][arm] = {m: [] for m in metrics}
        for d in days:
            pd_, sd = p.filter(pl.col("day") == d), s.filter(pl.col("day") == d)
            if pd_.height == 0:
                continue
            dp, dr, _ = _scope_replicates(pd_, sd, n_items, n_boot, rng, metrics)
            for m in metrics:
                out["daily"][arm][m].append({"day": int(d), **interval(dp[m], dr[m])})
    def versus(arm: str, other: str) -> dict:
        (ap, ar), (op, orr) = reps_all[arm], reps_all[other]
        return {m: relative_difference(ap[m], op[m], ar[m], orr[m]) for m in metrics}

    if control is not None:
        out["vs_control"] = {arm: versus(arm, control) for arm in arms if arm != control}
    out["pairs"] = {f"{a} vs {b}": versus(a, b) for a, b in pairs}
    return out

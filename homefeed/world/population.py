"""The shoppers: demographics, latent interests tied to demographics, taste vectors, activity.

Each demographic group (gender x age bucket) prefers some standard categories over others, and each
user's 2-5 interests (standard categories with Dirichlet weights) are drawn from their group's
preference, so "people like you buy ..." (crowd recall) has real signal. A user's taste vector is
the interest-weighted sum of the categories' vectors plus personal noise. Purchase power (1..5) rises
with city tier and mid-career age; the item's price tier is scored against it.

Users are indexed 1..n_users here (row 0 is the population average, used for unknown users); the
generator maps these internal indices to shuffled public ids at the end.

    >>> pop = build_population(spec, catalog, np.random.default_rng(0))   # doctest: +SKIP
    >>> pop.vec.shape                                                     # doctest: +SKIP
    (1501, 16)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from homefeed.world import names
from homefeed.world.catalog import Catalog
from homefeed.world.sampling import normalize_rows, top_k_without_replacement
from homefeed.world.spec import WorldSpec

N_GROUPS = 2 * (len(names.AGE_EDGES) + 1)


@dataclass
class Demographics:
    """Arrays of one length (one row per account): gender 'F'/'M', age, city, purchase power, group."""

    gender: np.ndarray  # str
    age: np.ndarray  # int32
    city: np.ndarray  # str
    purchase_power: np.ndarray  # int32 1..5
    group: np.ndarray  # int64 0..N_GROUPS-1: gender * n_age_buckets + age bucket

    def frame(self, user_ids: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame({
            "user_id": pl.Series(user_ids, dtype=pl.Int64), "gender": pl.Series(self.gender, dtype=pl.String),
            "age": pl.Series(self.age, dtype=pl.Int32), "city": pl.Series(self.city, dtype=pl.String),
            "purchase_power": pl.Series(self.purchase_power, dtype=pl.Int32),
        })


@dataclass
class Population:
    """Normal users 1..n (arrays n + 1 long; row 0 = population average)."""

    demo: Demographics  # n rows (users 1..n)
    vec: np.ndarray  # float32 (n+1, d): taste
    pp: np.ndarray  # int64 (n+1,): purchase power (row 0: 3)
    group: np.ndarray  # int64 (n+1,)
    int_ptr: np.ndarray  # int64 (n+2,): interests of user u are rows int_ptr[u]:int_ptr[u+1]
    int_std: np.ndarray  # int64: standard category (0-based)
    int_w: np.ndarray  # float64: weight, summing to 1 per user (row 0: population mean)
    rate_org: np.ndarray  # float64 (n+1,): organic sessions per day
    rate_home: np.ndarray  # float64 (n+1,): homepage visits per day
    group_std_cum: np.ndarray  # float64 (N_GROUPS, S): cumulative category preference per group

    @property
    def n_users(self) -> int:
        return len(self.vec) - 1


def draw_demographics(n: int, rng: np.random.Generator) -> Demographics:
    """Demographics of n accounts."""
    female = rng.random(n) < 0.56
    age = np.clip(np.round(18 + rng.gamma(2.2, 7.0, n)), 18, 70).astype(np.int32)
    city_w = 1.0 / np.arange(1, len(names.CITIES) + 1) ** 0.7
    city = rng.choice(len(names.CITIES), size=n, p=city_w / city_w.sum())
    tier = np.array([t for _, t in names.CITIES])[city]
    power = 3 + 0.8 * (tier == 1) - 0.6 * (tier >= 3) + 0.4 * ((age >= 28) & (age <= 45)) + rng.normal(0, 0.9, n)
    group = (~female).astype(np.int64) * (len(names.AGE_EDGES) + 1) + np.searchsorted(names.AGE_EDGES, age, "right")
    return Demographics(
        gender=np.where(female, "F", "M"), age=age, city=np.array([c for c, _ in names.CITIES])[city],
        purchase_power=np.clip(np.round(power), 1, 5).astype(np.int32), group=group,
    )


def build_population(spec: WorldSpec, cat: Catalog, rng: np.random.Generator) -> Population:
    """Draw `spec.n_users` normal users with interests, taste vectors and activity rates."""
    n, n_std = spec.n_users, len(cat.std_names)
    demo = draw_demographics(n, rng)
    tilt_gender, tilt_age = rng.normal(0, 0.9, (2, n_std)), rng.normal(0, 0.9, (len(names.AGE_EDGES) + 1, n_std))
    g_all = np.arange(N_GROUPS)
    group_logp = (cat.std_logpop[None, :] + tilt_gender[g_all // (len(names.AGE_EDGES) + 1)]
                  + tilt_age[g_all % (len(names.AGE_EDGES) + 1)])
    group_p = np.exp(group_logp - group_logp.max(axis=1, keepdims=True))
    group_p /= group_p.sum(axis=1, keepdims=True)
    k = rng.integers(2, 6, n).clip(max=n_std)
    top = top_k_without_replacement(rng, np.log(group_p[demo.group]), k)
    weight = np.where(top >= 0, rng.gamma(1.2, size=top.shape), 0.0)
    weight = -np.sort(-weight, axis=1) / weight.sum(axis=1, keepdims=True)  # strongest interest first
    vec = np.einsum("uk,ukd->ud", weight, cat.std_vec[np.maximum(top, 0)]) * (top >= 0).any(axis=1)[:, None]
    vec = vec + 0.25 * normalize_rows(rng.normal(size=vec.shape))
    activity = np.exp(rng.normal(-0.32, 0.8, n))  # lognormal, mean 1
    homepage = activity ** 0.7 * np.exp(rng.normal(-0.08, 0.4, n))
    mask = top >= 0
    int_std, int_w = top[mask], weight[mask]
    mean_w = np.bincount(int_std, weights=int_w, minlength=n_std) / n  # row 0: the population average
    counts = np.concatenate([[n_std], mask.sum(axis=1)])
    avg = lambda a: np.concatenate([[a.mean(axis=0)], a])  # noqa: E731
    return Population(
        demo=demo, vec=avg(vec).astype(np.float32), pp=np.concatenate([[3], demo.purchase_power]).astype(np.int64),
        group=np.concatenate([[0], demo.group]), int_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        int_std=np.concatenate([np.arange(n_std), int_std]).astype(np.int64), int_w=np.concatenate([mean_w, int_w]),
        rate_org=avg(activity) * spec.sessions_per_day, rate_home=avg(homepage) * spec.homepage_per_day,
        group_std_cum=np.cumsum(group_p, axis=1),
    )


def interests_frame(pop: Population, raw_user: np.ndarray, std_raw: np.ndarray) -> pl.DataFrame:
    """truth/user_interests: (user_id, standard_category, weight) for users 1..n; raw_user maps index -> id."""
    counts = np.diff(pop.int_ptr)[1:]
    start = pop.int_ptr[1]
    return pl.DataFrame({
        "user_id": pl.Series(np.repeat(raw_user[1:len(counts) + 1], counts), dtype=pl.Int64),
        "standard_category": pl.Series(std_raw[pop.int_std[start:]], dtype=pl.Int64),
        "weight": pl.Series(pop.int_w[start:], dtype=pl.Float64),
    })

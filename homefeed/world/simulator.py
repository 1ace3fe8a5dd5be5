"""A closed-loop simulator: serve a page to a user of a generated shop, get clicks and purchases back.

It applies the very click truth that generated the logs (`homefeed.world.clickmodel`): affinity,
quality, user x category interest, the user's recent items, position bias by list position, fatigue
from what this simulator already showed the user, and price fit. A clicked item is bought with the
funnel's probability, blocked (x repurchase_block) inside the repurchase cycle of a standard category
the user bought, counting buys in the log and buys made through the simulator. Unknown user ids get
the population-average user and carry no state. Same seed and same calls give the same answers.

    >>> sim = Simulator.load("out/tiny", seed=0)                         # doctest: +SKIP
    >>> sim.respond(12, [5, 9, 31], ts=1_512_000_000)                    # doctest: +SKIP
    shape: (3, 5)  position | item_id | p_click | clicked | bought
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from homefeed.world.clickmodel import buy_prob, click_logit, fav_cart_probs, sigmoid
from homefeed.world.truth import Truth, load_truth


class KeyedValues:
    """A growing int64 key -> float64 value map on sorted arrays (vectorised get / add / max)."""

    def __init__(self, keys: np.ndarray | None = None, values: np.ndarray | None = None):
        self.keys, self.values = np.zeros(0, np.int64), np.zeros(0)
        if keys is not None and len(keys):
            self.update(np.asarray(keys, np.int64), np.asarray(values, np.float64), how="max")

    def get(self, keys: np.ndarray, default: float) -> np.ndarray:
        keys = np.asarray(keys, np.int64)
        if not len(self.keys):
            return np.full(len(keys), default, dtype=np.float64)
        idx = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[idx] == keys, self.values[idx], default)

    def update(self, keys: np.ndarray, values: np.ndarray, *, how: str) -> None:
        """how='add' adds values to existing ones (absent = 0); how='max' keeps the larger."""
        all_keys = np.concatenate([self.keys, keys])
        uniq, inv = np.unique(all_keys, return_inverse=True)
        out = np.zeros(len(uniq)) if how == "add" else np.full(len(uniq), -np.inf)
        op = np.add if how == "add" else np.maximum
        op.at(out, inv, np.concatenate([self.values, values]))
        self.keys, self.values = uniq, out


class Simulator:
    """Answers served pages with clicks and purchases from the hidden truth of one generated shop."""

    def __init__(self, truth: Truth, *, last_buys: pl.DataFrame | None = None, seed: int = 0):
        a = truth.arrays
        self.theta, self.phi = a["click_theta"], a["funnel_phi"]
        self.user_vec, self.item_vec = a["user_vec"].astype(np.float64), a["item_vec"].astype(np.float64)
        self.recent = a["user_recent"].astype(np.float64).copy()
        self.recent_std = a["user_recent_standard"].copy()
        self.power, self.quality = a["user_purchase_power"], a["item_quality"].astype(np.float64)
        self.tier, self.item_std = a["item_price_tier"], a["item_standard"]
        self.cycle_s = a["standard_cycle_days"].astype(np.float64) * 86400.0
        self.interest_mean = a["interest_mean"]
        self.n_users, self.n_items, self.n_std = len(self.user_vec) - 1, len(self.item_vec) - 1, len(self.cycle_s)
        ui = truth.user_interests
        self.interest = KeyedValues(ui["user_id"].to_numpy() * self.n_std + ui["standard_category"].to_numpy(),
                                    ui["weight"].to_numpy())
        self.fatigue = KeyedValues()
        self.last_buy = KeyedValues()
        if last_buys is not None and last_buys.height:
            keys = last_buys["user_id"].to_numpy() * self.n_std + self.item_std[last_buys["item_id"].to_numpy()]
            self.last_buy.update(keys, last_buys["ts"].to_numpy(), how="max")
        self.rng = np.random.default_rng(seed)

    @classmethod
    def load(cls, out_dir: str | Path, *, seed: int = 0) -> "Simulator":
        """Rebuild the truth of `out_dir`; the log's genuine buys (not fake, not spike) start the cycles."""
        truth = load_truth(out_dir)
        fake = truth.fake_orders.select("user_id", "item_id", "ts")
        spike = truth.spike_events.filter(pl.col("behavior") == "buy").select("user_id", "item_id", "ts")
        buys = (pl.scan_parquet(Path(out_dir) / "events.parquet").filter(pl.col("behavior") == "buy")
                .select("user_id", "item_id", "ts").collect()
                .join(pl.concat([fake, spike]), on=["user_id", "item_id", "ts"], how="anti"))
        return cls(truth, last_buys=buys, seed=seed)

    def respond(self, user_id: int, item_ids, ts: int) -> pl.DataFrame:
        """One served page: item_ids in display order (position 0 first).

        Returns position (Int32), item_id (Int64), p_click, clicked (Int8), bought (Int8), one row per item.
        """
        page = np.asarray(item_ids, dtype=np.int64).reshape(1, -1)
        return self.respond_many([user_id], page, [ts]).drop("request", "user_id")

    def respond_many(self, user_ids, item_ids, ts) -> pl.DataFrame:
        """R pages at once: user_ids (R,), item_ids (R, K) with 0 for an empty slot, ts (R,) or one int.

        Pages see the state from before the call; the state then advances in page order.
        """
        users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        pages = np.asarray(item_ids, dtype=np.int64).reshape(len(users), -1)
        times = np.broadcast_to(np.asarray(ts, dtype=np.float64), users.shape)
        bad = pages[(pages < 0) | (pages > self.n_items)]
        if len(bad):
            raise ValueError(f"unknown item ids {bad[:5].tolist()}: items of this shop are 1..{self.n_items} "
                             "(0 = empty slot)")
        req, pos = np.nonzero(pages > 0)
        item = pages[req, pos]
        known = (users[req] >= 1) & (users[req] <= self.n_users)
        u = np.where(known, users[req], 0)
        p, clicked, bought = self._draw(u, known, item, pos, times[req])
        self._advance(u[known], item[known], clicked[known], bought[known], times[req][known])
        return pl.DataFrame({
            "request": pl.Series(req, dtype=pl.Int64), "user_id": pl.Series(users[req], dtype=pl.Int64),
            "position": pl.Series(pos, dtype=pl.Int32), "item_id": pl.Series(item, dtype=pl.Int64),
            "p_click": p, "clicked": pl.Series(clicked, dtype=pl.Int8), "bought": pl.Series(bought, dtype=pl.Int8),
        })

    def _draw(self, u, known, item, pos, t):
        std = self.item_std[item]
        aff = np.einsum("nd,nd->n", self.user_vec[u], self.item_vec[item])
        cross = np.where(known, self.interest.get(u * self.n_std + std, 0.0), self.interest_mean[std])
        seq = np.einsum("nd,nd->n", self.recent[u], self.item_vec[item])
        same_cat = ((self.recent_std[u] == std[:, None]).any(axis=1) & known).astype(np.float64)
        n_seen = np.where(known, self.fatigue.get(u * (self.n_items + 1) + item, 0.0), 0.0)
        gap = np.abs(self.tier[item] - self.power[u]) / 4.0
        p = sigmoid(click_logit(self.theta, aff, self.quality[item], cross, seq, same_cat, pos.astype(np.float64),
                                n_seen, gap))
        r = self.rng.random((3, len(item)))
        clicked = r[0] < p
        _, p_cart = fav_cart_probs(self.phi, aff, 1.0)
        last = np.where(known, self.last_buy.get(u * self.n_std + std, -np.inf), -np.inf)
        blocked = (t - last < self.cycle_s[std]).astype(np.float64)
        bought = clicked & (r[2] < buy_prob(self.phi, (r[1] < p_cart).astype(np.float64), blocked))
        return p, clicked, bought

    def _advance(self, u, item, clicked, bought, t) -> None:
        """Fatigue for every shown item; recent items and last-3 categories for clicks; cycles for buys."""
        self.fatigue.update(u * (self.n_items + 1) + item, np.ones(len(u)), how="add")
        std = self.item_std[item]
        if bought.any():
            self.last_buy.update(u[bought] * self.n_std + std[bought], t[bought], how="max")
        cu, ci, cs = u[clicked], item[clicked], std[clicked]
        if not len(cu):
            return
        order = np.argsort(cu, kind="stable")  # clicks per user, in page order
        cu, ci, cs = cu[order], ci[order], cs[order]
        users, first, counts = np.unique(cu, return_index=True, return_counts=True)
        age = np.repeat(first + counts, counts) - 1 - np.arange(len(cu))  # 0 = the user's newest click
        self.recent[users] *= 0.7 ** counts[:, None]
        np.add.at(self.recent, cu, 0.3 * 0.7 ** age[:, None] * self.item_vec[ci])
        newest = age < 3
        self.recent_std[cu[newest], age[newest]] = cs[newest]

"""The hidden truth of a generated shop: what later stages are scored against, in `OUT/truth/`.

    leaf_to_standard.parquet  leaf_category -> standard_category (Int64)
    image_groups.parquet      item_id -> image_group (items re-listing one product share a group)
    crawler_users.parquet     user_id, kind ("burst": > 30 pv/minute bursts; "slow": long pv-only runs)
    fake_orders.parquet       user_id, item_id, ts, account ("dedicated" brushing account or "normal")
    spike_events.parquet      user_id, item_id, ts, behavior: the midnight ordering spike
    user_interests.parquet    user_id, standard_category, weight (normal users; weights sum to 1)
    repurchase.parquet        standard_category, cycle_days, kind ("durable" / "consumable")
    truth.npz                 latent arrays indexed by public id (row 0 = unknown / population average)
    world.json                the spec, time zone, day boundaries, counts and generation timing

    >>> truth = load_truth("out/tiny")                          # doctest: +SKIP
    >>> truth.arrays["item_vec"].shape                          # doctest: +SKIP
    (1501, 16)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

TABLES: tuple[str, ...] = ("leaf_to_standard", "image_groups", "crawler_users", "fake_orders", "spike_events",
                           "user_interests", "repurchase")

ARRAYS: dict[str, str] = {
    "user_vec": "float32 (n_users+1, d): taste vector (row 0 and non-shoppers: population average)",
    "user_recent": "float32 (n_users+1, d): decayed mean of the last items each user saw, at the end of the log",
    "user_recent_standard": "int64 (n_users+1, 3): last 3 standard categories each user saw (0 = none)",
    "user_purchase_power": "int64 (n_users+1,): 1..5 (row 0: 3)",
    "user_role": "int8 (n_users+1,): 0 shopper, 1 crawler, 2 dedicated brushing account",
    "item_vec": "float32 (n_items+1, d)",
    "item_quality": "float32 (n_items+1,)",
    "item_logpop": "float64 (n_items+1,): log popularity (Zipf)",
    "item_price_tier": "int64 (n_items+1,): price quintile 1..5 inside the standard category",
    "item_standard": "int64 (n_items+1,): standard category id",
    "standard_vec": "float32 (n_standard+1, d)",
    "standard_cycle_days": "int64 (n_standard+1,): repurchase cycle",
    "interest_mean": "float64 (n_standard+1,): population mean interest weight per standard category",
    "click_theta": "float64: click model coefficients (clickmodel.CLICK_TERMS)",
    "funnel_phi": "float64: funnel coefficients (clickmodel.FUNNEL_TERMS)",
}
"""truth.npz arrays, all indexed by public id where they are per user / item / standard category."""


@dataclass
class Truth:
    """The hidden truth: the truth tables (polars), the latent arrays and world.json as a dict."""

    leaf_to_standard: pl.DataFrame
    image_groups: pl.DataFrame
    crawler_users: pl.DataFrame
    fake_orders: pl.DataFrame
    spike_events: pl.DataFrame
    user_interests: pl.DataFrame
    repurchase: pl.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    world: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write `out_dir/truth/*`; returns the paths written."""
        folder = Path(out_dir) / "truth"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in TABLES:
            getattr(self, name).write_parquet(folder / f"{name}.parquet")
            paths.append(folder / f"{name}.parquet")
        np.savez(folder / "truth.npz", **self.arrays)
        (folder / "world.json").write_text(json.dumps(self.world, indent=1, sort_keys=True) + "\n")
        return paths + [folder / "truth.npz", folder / "world.json"]


def load_truth(out_dir: str | Path) -> Truth:
    """Read the truth of a generated shop folder (the one `generate` wrote)."""
    folder = Path(out_dir) / "truth"
    if not (folder / "world.json").exists():
        raise FileNotFoundError(f"{folder} holds no world truth (no world.json); run `homefeed generate` first")
    missing = [n for n in TABLES if not (folder / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing truth tables {', '.join(missing)}")
    with np.load(folder / "truth.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    tables = {n: pl.read_parquet(folder / f"{n}.parquet") for n in TABLES}
    return Truth(**tables, arrays=arrays, world=json.loads((folder / "world.json").read_text()))

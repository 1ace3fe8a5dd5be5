"""Helpers shared by the serving benchmarks: percentiles in ms and a bundle's active users."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if len(xs) else float("nan")


def med_ms(xs) -> float:
    return float(np.median(xs) * 1000) if len(xs) else float("nan")


def bundle_users(bundle: Path) -> tuple[list[str], int]:
    """Users with history in the bundle (most active first) and a time just after the history."""
    import polars as pl

    ev = pl.read_parquet(bundle / "data" / "recent_events.parquet")
    users = ev.group_by("user_raw").len().sort("len", descending=True)["user_raw"].cast(str).to_list()
    return users, int(ev["ts"].max()) + 60

"""Cleaning on data with a known answer: the synthetic shop's planted noise comes out, the shared real logs keep their buys."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from homefeed.config import Cleaning, Config
from homefeed.data.clean import clean_events, conform_events
from homefeed.data.ingest import clockless_cleaning, load_source
from homefeed.world import load_truth

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# --- the synthetic world: the noise it planted must come out ---------------------------------

def precision_recall(flagged: pl.DataFrame, kept: pl.DataFrame, truth: pl.DataFrame, keys: list[str]) -> tuple[float, float]:
    """Precision of the rows a rule flagged; recall = share of true noise rows no longer kept."""
    truth = truth.select(keys).unique()
    hits = flagged.select(keys).unique().join(truth, on=keys, how="semi").height
    still_kept = truth.join(kept.select(keys).unique(), on=keys, how="semi").height
    return hits / max(flagged.select(keys).unique().height, 1), 1 - still_kept / max(truth.height, 1)


def test_cleaning_finds_the_synthetic_worlds_noise(tiny_world):
    events = pl.read_parquet(tiny_world / "events.parquet")
    truth = load_truth(tiny_world)
    res = clean_events(events, Cleaning(), tz_offset_hours=8.0)
    assert res.skipped == []                                            # the guard lets planted noise through
    by_rule = {rule: res.removed.filter(pl.col("rule") == rule) for rule in res.counts}
    crawlers = truth.crawler_users.select("user_id")
    p, r = precision_recall(res.crawlers, res.kept, crawlers, ["user_id"])
    assert p >= 0.9 and r >= 0.9, f"crawler users: precision {p:.3f}, recall {r:.3f}"
    p, r = precision_recall(by_rule["fake_order"], res.kept, truth.fake_orders, ["user_id", "item_id", "ts"])
    assert p >= 0.9 and r >= 0.9, f"fake order rows: precision {p:.3f}, recall {r:.3f}"
    p, r = precision_recall(by_rule["abnormal_window:midnight_spike"], res.kept, truth.spike_events,
                            ["user_id", "item_id", "ts"])
    assert p >= 0.9 and r >= 0.9, f"midnight spike rows: precision {p:.3f}, recall {r:.3f}"


# --- real logs: cleaning must keep real behaviour --------------------------------------------

REAL_LOGS = [  # file, format, behaviour of every row (review and rating logs as buys: the hard case)
    ("taobao_userbehavior_slice.csv", "taobao", None), ("taobao_userbehavior_tail.csv", "taobao", None),
    ("Toys_and_Games.txt", "sequences", "buy"), ("amazon_video_games_sasrec.txt", "sequences", "buy"),
    ("ml-100k.inter", "recbole", "buy"), ("diginetica_sample_train-item-views.csv", "sessions", None),
]


def clean_real(name: str, fmt: str, behavior: str | None):
    """A shared real log loaded and cleaned as `homefeed ingest` does (clock tests off for logs without times)."""
    if not (DATA / name).exists():
        pytest.skip(f"{DATA / name} is absent: the shared real logs are optional (see ../shared/data/README.md)")
    config = Config()
    _, loaded, has_clock = load_source(DATA / name, fmt=fmt, config=config, behavior=behavior)
    cleaning = config.cleaning if has_clock else clockless_cleaning(config.cleaning)[0]
    res = clean_events(loaded.events, cleaning, tz_offset_hours=config.ingest.tz_offset_hours, clock=has_clock)
    return conform_events(loaded.events), res


@pytest.mark.parametrize("name, fmt, behavior", REAL_LOGS)
def test_cleaning_keeps_real_behaviour_on_the_shared_real_logs(name, fmt, behavior):
    events, res = clean_real(name, fmt, behavior)
    buys = events.filter(pl.col("behavior") == "buy").height
    removed_buys = res.removed.filter(pl.col("behavior") == "buy").height
    assert removed_buys < 0.01 * buys or removed_buys == 0, f"{removed_buys} of {buys} buys removed: {res.counts}"
    assert res.removed.height < 0.01 * events.height, f"{res.removed.height} of {events.height} rows removed: {res.counts}"
    assert all(days == [] for days in res.abnormal_days.values()), f"ordinary days cut: {res.abnormal_days}"
    assert res.kept.height + sum(res.counts.values()) == events.height
    if fmt == "sequences":                                              # an ordinal clock: no day is an outlier
        assert res.span.outliers == 0 and res.span.n_days >= 1


def test_the_taobao_tail_reports_its_early_rows_and_why_a_rule_stopped():
    _, res = clean_real("taobao_userbehavior_tail.csv", "taobao", None)
    # the data README: 4 rows fall before the data set's start, on 2017-11-24 16:45 .. 23:59 (UTC+8)
    assert res.span.outliers == 4 and res.summary()["outliers"]["first"].startswith("2017-11-24 16:45")
    assert res.span.n_days == 9
    # about half its buys have no recorded view: the view test would delete real buys, so it stops
    (skip,) = [s for s in res.skipped if s["rule"] == "fake_order:no_view"]
    assert skip["share"]["buy"] > 0.3 and res.counts["fake_order"] == 0

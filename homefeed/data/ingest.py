"""Ingest: raw logs -> a validated, cleaned, encoded, sessionised and split `Dataset` folder.

The steps are plain columnar functions, one per module, so each ports one to one to a Spark job:

    load + validate (loaders.py) -> clean (clean.py) -> encode (vocab.py)
        -> sessions (sessions.py) -> time split (split.py) -> DATASET/ + report.json + quarantine.parquet

Nothing is dropped silently: for every table, input rows = kept + quarantined + removed by cleaning,
and report.json says how many went where and why.

    >>> ds, report = ingest("out/world", "out/dataset")          # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from homefeed.config import Config
from homefeed.data import loaders
from homefeed.data.clean import clean_events
from homefeed.data.dataset import Dataset
from homefeed.data.schema import EVENTS, EXPOSURES, ID_COLUMNS, ITEMS, USERS
from homefeed.data.sessions import add_sessions
from homefeed.data.split import time_split
from homefeed.data.vocab import Vocab

Progress = Callable[[str], None]

VOCAB_SOURCES: dict[str, list[tuple[str, str]]] = {
    # id space -> the (table, column) pairs whose values it covers
    "user": [("users", "user_id"), ("events", "user_id"), ("exposures", "user_id")],
    "item": [("items", "item_id"), ("events", "item_id"), ("exposures", "item_id"), ("exposures", "trigger_item")],
    "leaf_category": [("items", "leaf_category")],
    "brand": [("items", "brand")],
    "shop": [("items", "shop")],
    "venue": [("items", "venue")],
}


def load_source(src: str | Path, *, fmt: str | None, config: Config, mapping: dict | None = None) -> tuple[str, "loaders.Loaded"]:
    """Read `src` in format `fmt` (detected when None) with the configured validation policy."""
    fmt = fmt or loaders.detect_format(src)
    kw = dict(policy=config.ingest.policy, ingest=config.ingest)
    if fmt == "world":
        return fmt, loaders.load_world(src, **kw)
    if fmt == "taobao":
        return fmt, loaders.load_taobao(src, **kw)
    if fmt == "alimama":
        return fmt, loaders.load_alimama(src, **kw)
    if fmt == "generic":
        if not mapping:
            raise ValueError("format 'generic' needs a column mapping (--mapping FILE.json); see `homefeed ingest --help`")
        return fmt, loaders.load_generic(mapping["paths"], mapping["columns"], behavior_map=mapping.get("behaviors"), **kw)
    raise ValueError(f"unknown format {fmt!r}; valid formats: world, taobao, alimama, generic")


def fit_vocabs(tables: dict[str, pl.DataFrame | None]) -> dict[str, Vocab]:
    """One vocabulary per id space, over every column that holds ids of that space."""
    vocabs = {}
    for space, sources in VOCAB_SOURCES.items():
        columns = [tables[t][c] for t, c in sources if tables.get(t) is not None and c in tables[t].columns]
        if columns:
            dtype = columns[0].dtype
            vocabs[space] = Vocab.fit(*[c.cast(dtype) for c in columns], name=space)
    return vocabs


def encode_tables(tables: dict[str, pl.DataFrame | None], vocabs: dict[str, Vocab]) -> dict[str, pl.DataFrame | None]:
    """Replace every id column by its dense code (contract dtypes after)."""
    contracts = {"events": EVENTS, "exposures": EXPOSURES, "items": ITEMS, "users": USERS}
    out = {}
    for name, df in tables.items():
        if df is None:
            out[name] = None
            continue
        exprs = [vocabs[space].encode_expr(col) for col, space in ID_COLUMNS.items() if col in df.columns and space in vocabs]
        out[name] = contracts[name].conform(df.with_columns(exprs))
    return out


def drop_removed_users(df: pl.DataFrame | None, users: pl.Series) -> tuple[pl.DataFrame | None, int]:
    """Exposures of users removed as crawlers go too (counted), or the ranker learns from bots."""
    if df is None or users.len() == 0:
        return df, 0
    kept = df.filter(~pl.col("user_id").is_in(users.implode()))
    return kept, df.height - kept.height


def ingest(src: str | Path, out: str | Path, config: Config | None = None, *, fmt: str | None = None,
           mapping: dict | None = None, progress: Progress | None = None) -> tuple[Dataset, dict]:
    """Run every ingest step on `src` and write the dataset folder `out`; return it and the report."""
    config = config or Config()
    say = progress or (lambda step: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("load + validate")
    fmt, loaded = load_source(src, fmt=fmt, config=config, mapping=mapping)
    timings["load_validate_s"] = time.perf_counter() - t0

    say("clean")
    t = time.perf_counter()
    cleaned = clean_events(loaded.events, config.cleaning, tz_offset_hours=config.ingest.tz_offset_hours)
    crawler_users = cleaned.removed.filter(pl.col("rule") == "crawler")["user_id"].unique()
    exposures, exposures_removed = drop_removed_users(loaded.exposures, crawler_users)
    timings["clean_s"] = time.perf_counter() - t

    say("encode")
    t = time.perf_counter()
    tables = {"events": cleaned.kept, "exposures": exposures, "items": loaded.items, "users": loaded.users}
    vocabs = fit_vocabs(tables)
    tables = encode_tables(tables, vocabs)
    timings["encode_s"] = time.perf_counter() - t

    say("sessions + split")
    t = time.perf_counter()
    events = add_sessions(tables["events"], gap_s=config.ingest.session_gap_s)
    split = time_split(events, valid_days=config.ingest.valid_days, test_days=config.ingest.test_days,
                       tz_offset_hours=config.ingest.tz_offset_hours, unit=config.ingest.split_unit)
    timings["sessions_split_s"] = time.perf_counter() - t

    say("write")
    t = time.perf_counter()
    dataset = Dataset(events=events, items=tables["items"], users=tables["users"], exposures=tables["exposures"],
                      split=split, vocabs=vocabs)
    dataset.save(out)
    loaded.quarantine.write_parquet(out / "quarantine.parquet")
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    report = build_report(src=src, fmt=fmt, config=config, loaded=loaded, cleaned=cleaned,
                          exposures_removed=exposures_removed, dataset=dataset, timings=timings)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return dataset, report


def build_report(*, src, fmt, config, loaded, cleaned, exposures_removed, dataset, timings) -> dict:
    """The accounting: per table, input = kept + quarantined + removed by cleaning; totals on top."""
    quarantined = loaded.quarantine_counts()  # {table: {reason: n}}
    removed = {"events": dict(cleaned.counts), "exposures": {"crawler": exposures_removed} if exposures_removed else {}}
    kept = {"events": dataset.events.height, "items": dataset.items.height, "users": dataset.users.height}
    if dataset.exposures is not None:
        kept["exposures"] = dataset.exposures.height
    tables = {}
    for name, n_kept in kept.items():
        q = quarantined.get(name, {})
        r = removed.get(name, {})
        tables[name] = {
            "input_rows": loaded.input_rows.get(name, n_kept + sum(q.values()) + sum(r.values())),
            "kept_rows": n_kept, "quarantined_rows": sum(q.values()), "quarantined_by_reason": q,
            "removed_by_cleaning": r,
        }
    removed_total: dict[str, int] = {}
    for t in tables.values():
        for rule, n in t["removed_by_cleaning"].items():
            removed_total[rule] = removed_total.get(rule, 0) + n
    events = dataset.events
    return {
        "source": str(src), "format": fmt, "policy": config.ingest.policy,
        "input_rows": sum(t["input_rows"] for t in tables.values()),
        "kept_rows": sum(t["kept_rows"] for t in tables.values()),
        "quarantined_rows": sum(t["quarantined_rows"] for t in tables.values()),
        "removed_by_cleaning": removed_total,
        "tables": tables,
        "users": len(dataset.vocabs.get("user", [])), "items": len(dataset.vocabs.get("item", [])),
        "sessions": int(events["session_id"].n_unique()) if events.height else 0,
        "split": {"train_end": dataset.split.train_end, "valid_end": dataset.split.valid_end,
                  **{part: dataset.split.filter(events, part).height for part in ("train", "valid", "test")}},
        "has_exposures": dataset.exposures is not None,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "config": config.model_dump(mode="json"),
    }

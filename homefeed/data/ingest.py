"""Ingest: raw logs -> a validated, cleaned, encoded, sessionised and split `Dataset` folder.

The steps are plain columnar functions, one per module, so each ports one to one to a Spark job:

    load + validate (loaders.py, sequences.py, recbole.py, session_logs.py) -> clean (clean.py)
        -> encode (vocab.py) -> split (split.py) -> sessions (sessions.py)
        -> DATASET/ + report.json + quarantine.parquet

Nothing is dropped silently: for every table, input rows (+ items derived from events) = kept +
quarantined + removed by cleaning, and report.json says how many went where and why.

The split is `ingest.split`: "time" (the last days are test), "leave_one_out" (each user's last
event is test, the one before valid; `split.leave_one_out`), or "auto": leave-one-out for logs
without clock times (sequence files, RecBole files without a timestamp), time otherwise. Logs
without clock times get an ordinal clock; the cleaning tests that read a clock (rates per minute or
day, daily windows, buy bursts) are off for them, and the report says so.

A log the loaders accept never ends in a traceback: a split or cleaning that leaves nothing to work
with raises `IngestError`, whose message says what to set.

    >>> ds, report = ingest("out/world", "out/dataset")                                         # doctest: +SKIP
    >>> ds, report = ingest("Toys_and_Games.txt", "out/toys", fmt="sequences",
    ...                     attributes="Toys_and_Games_item2attributes.json")                   # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from homefeed.config import Cleaning, Config
from homefeed.data import loaders
from homefeed.data.clean import clean_events, save_verdicts
from homefeed.data.dataset import Dataset, TimeSplit
from homefeed.data.recbole import has_timestamps, load_recbole
from homefeed.data.schema import EVENTS, EXPOSURES, ID_COLUMNS, ITEMS, USERS
from homefeed.data.sequences import load_sequences
from homefeed.data.session_logs import load_session_log
from homefeed.data.sessions import add_sessions
from homefeed.data.split import leave_one_out, time_split
from homefeed.data.vocab import Vocab

Progress = Callable[[str], None]
FORMATS = ("world", "taobao", "alimama", "generic", "sequences", "recbole", "sessions")

VOCAB_SOURCES: dict[str, list[tuple[str, str]]] = {
    # id space -> the (table, column) pairs whose values it covers
    "user": [("users", "user_id"), ("events", "user_id"), ("exposures", "user_id")],
    "item": [("items", "item_id"), ("events", "item_id"), ("exposures", "item_id"), ("exposures", "trigger_item")],
    "leaf_category": [("items", "leaf_category")],
    "brand": [("items", "brand")],
    "shop": [("items", "shop")],
    "venue": [("items", "venue")],
}


class IngestError(ValueError):
    """The log was read, but cannot become a dataset as configured; the message says what to set."""


def load_source(src: str | Path, *, fmt: str | None, config: Config, mapping: dict | None = None,
                attributes: str | Path | None = None, behavior: str | None = None) -> tuple[str, "loaders.Loaded", bool]:
    """Read `src` in format `fmt` (detected when None) with the configured validation policy.

    mapping: the column mapping of "generic" ({"paths", "columns", "behaviors"}), or of "sessions" and
    "recbole" (their keys), or for "sequences" the attribute roles ({"leaf", "brand", "ignore"}).
    Returns the format, the loaded tables, and whether the log has clock times.
    """
    fmt = fmt or loaders.detect_format(src)
    kw = dict(policy=config.ingest.policy, ingest=config.ingest)
    if fmt != "sequences" and attributes is not None:
        raise ValueError(f"--attributes is for --format sequences; format {fmt!r} reads item attributes from its own files")
    if behavior is not None and fmt not in ("sequences", "recbole", "sessions"):
        raise ValueError(f"--behavior is for formats whose rows carry none (sequences, recbole, sessions), not {fmt!r}")
    if fmt == "world":
        return fmt, loaders.load_world(src, **kw), True
    if fmt == "taobao":
        return fmt, loaders.load_taobao(src, **kw), True
    if fmt == "alimama":
        return fmt, loaders.load_alimama(src, **kw), True
    if fmt == "generic":
        if not mapping:
            raise ValueError("format 'generic' needs a column mapping (--mapping FILE.json); see `homefeed ingest --help`")
        return fmt, loaders.load_generic(mapping["paths"], mapping["columns"], behavior_map=mapping.get("behaviors"), **kw), True
    if fmt == "sequences":
        return fmt, load_sequences(src, attributes=attributes, attribute_roles=mapping, behavior=behavior or "click", **kw), False
    if fmt == "recbole":
        return fmt, load_recbole(src, mapping=mapping, behavior=behavior or "click", **kw), has_timestamps(src, mapping)
    if fmt == "sessions":
        return fmt, load_session_log(src, mapping, behavior=behavior, **kw), True
    raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def clockless_cleaning(cleaning: Cleaning) -> tuple[Cleaning, list[str]]:
    """The cleaning settings for a log on an ordinal clock: tests that read the clock are off.

    Rates per minute or day, daily time windows and buy bursts mean nothing when events are spaced
    by a constant; the fake-order view test still applies (it reads only the order).
    Returns the settings and the names of what was turned off.
    """
    never = {"max_pv_per_minute": 10**9, "max_pv_per_hour": 10**9, "daily_factor": float("inf"), "burst_buys": 10**9}
    crawler, orders = (rule.model_copy(update={k: v for k, v in never.items() if k in type(rule).model_fields})
                       for rule in (cleaning.crawler, cleaning.fake_orders))
    off = ["crawler:pv_per_minute", "crawler:pv_per_hour", "crawler:daily_volume", "fake_order:burst"]
    off += [f"abnormal_window:{w.name}" for w in cleaning.abnormal_windows]
    return cleaning.model_copy(update={"crawler": crawler, "fake_orders": orders, "abnormal_windows": []}), off


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
           mapping: dict | None = None, attributes: str | Path | None = None, behavior: str | None = None,
           progress: Progress | None = None) -> tuple[Dataset, dict]:
    """Run every ingest step on `src` and write the dataset folder `out`; return it and the report.

    fmt: one of FORMATS (detected when None); mapping, attributes, behavior: see `load_source`.
    Raises `DataError` for a bad input file, `IngestError` when the log cannot be split or cleaning
    leaves nothing (the message says what to set).
    """
    config = config or Config()
    say = progress or (lambda step: None)
    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("load + validate")
    fmt, loaded, has_clock = load_source(src, fmt=fmt, config=config, mapping=mapping, attributes=attributes,
                                         behavior=behavior)
    method = split_method(config, fmt=fmt, has_clock=has_clock)
    if loaded.events.height == 0:
        raise IngestError(f"{src}: no event row passed validation ({_reasons(loaded.quarantine_counts())}); "
                          "see the quarantine reasons above")
    timings["load_validate_s"] = time.perf_counter() - t0

    say("clean")
    t = time.perf_counter()
    cleaning, clock_rules_off = (config.cleaning, []) if has_clock else clockless_cleaning(config.cleaning)
    cleaned = clean_events(loaded.events, cleaning, tz_offset_hours=config.ingest.tz_offset_hours, clock=has_clock)
    if cleaned.kept.height == 0:
        raise IngestError(emptied_message(src, loaded.events, cleaned.counts))
    crawler_users = cleaned.removed.filter(pl.col("rule") == "crawler")["user_id"].unique()
    exposures, exposures_removed = drop_removed_users(loaded.exposures, crawler_users)
    timings["clean_s"] = time.perf_counter() - t

    say("encode")
    t = time.perf_counter()
    tables = {"events": cleaned.kept, "exposures": exposures, "items": loaded.items, "users": loaded.users}
    vocabs = fit_vocabs(tables)
    tables = encode_tables(tables, vocabs)
    timings["encode_s"] = time.perf_counter() - t

    say("split + sessions")
    t = time.perf_counter()
    events, split, split_info = split_events(tables["events"], config, method=method, has_clock=has_clock)
    events = add_sessions(events, gap_s=config.ingest.session_gap_s)
    timings["sessions_split_s"] = time.perf_counter() - t

    say("write")
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(events=events, items=tables["items"], users=tables["users"], exposures=tables["exposures"],
                      split=split, vocabs=vocabs)
    dataset.save(out)
    save_verdicts(cleaned, out)  # ranking reuses these verdicts instead of judging the log again
    loaded.quarantine.write_parquet(out / "quarantine.parquet")
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    report = build_report(src=src, fmt=fmt, config=config, loaded=loaded, cleaned=cleaned,
                          exposures_removed=exposures_removed, dataset=dataset, timings=timings)
    report["cleaning"] = cleaned.summary()
    report["clock"] = "logged" if has_clock else "ordinal"
    report["cleaning_off_without_clock"] = clock_rules_off
    report["split"].update(split_info)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return dataset, report


def split_method(config: Config, *, fmt: str, has_clock: bool) -> str:
    """"time" or "leave_one_out", from ingest.split ("auto": leave-one-out exactly when there is no clock)."""
    method = config.ingest.split
    if method == "auto":
        return "time" if has_clock else "leave_one_out"
    if method == "time" and not has_clock:
        raise IngestError(f"format {fmt!r} here records no clock times, so it cannot be split by time; "
                          "use --split leave_one_out (or --set ingest.split=auto)")
    return method


def split_events(events: pl.DataFrame, config: Config, *, method: str,
                 has_clock: bool) -> tuple[pl.DataFrame, TimeSplit, dict[str, Any]]:
    """The events (leave-one-out moves valid and test events in time), the split, and what was done."""
    ing = config.ingest
    try:
        if method == "leave_one_out":
            return leave_one_out(events, step_s=ing.ordinal_step_s, ordinal=not has_clock)
        split = time_split(events, valid_days=ing.valid_days, test_days=ing.test_days,
                           tz_offset_hours=ing.tz_offset_hours, unit=ing.split_unit)
    except ValueError as e:
        hint = "; or split per user with --split leave_one_out" if method == "time" else ""
        raise IngestError(f"cannot split the cleaned log: {e}{hint}") from None
    return events, split, {"method": "time", "unit": ing.split_unit, "valid_days": ing.valid_days,
                           "test_days": ing.test_days}


def _reasons(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{t} {r}: {n:,}" for t, rs in counts.items() for r, n in rs.items()) or "no reason recorded"


def emptied_message(src: str | Path, events: pl.DataFrame, removed: dict[str, int]) -> str:
    """Why cleaning removed every event, and what to set instead."""
    rules = ", ".join(f"{rule}: {n:,}" for rule, n in removed.items() if n)
    text = f"{src}: cleaning removed all {events.height:,} events ({rules})"
    buys = int((events["behavior"] == "buy").sum())
    if removed.get("fake_order") and buys > events.height // 2:
        return (text + ". The fake-order rule judges a buy with no earlier view of the item fake, and this log "
                "holds no views: a review or rating log is not a purchase funnel. Ingest it as clicks "
                "(--behavior click), or turn the rule off with --set cleaning.fake_orders.enabled=false")
    if removed.get("crawler"):
        return text + "; check the crawler rule's limits (cleaning.crawler) or set cleaning.crawler.enabled=false"
    return text + "; see the cleaning section of the config for the rules' settings"


def build_report(*, src, fmt, config, loaded, cleaned, exposures_removed, dataset, timings) -> dict:
    """The accounting: per table, input + derived = kept + quarantined + removed by cleaning; totals on top.

    "derived" rows are items or users seen only in events, added with unknown attributes to a table
    that had an input file (a table without one counts its kept rows as its input)."""
    quarantined = loaded.quarantine_counts()  # {table: {reason: n}}
    removed = {"events": dict(cleaned.counts), "exposures": {"crawler": exposures_removed} if exposures_removed else {}}
    kept = {"events": dataset.events.height, "items": dataset.items.height, "users": dataset.users.height}
    if dataset.exposures is not None:
        kept["exposures"] = dataset.exposures.height
    tables = {}
    for name, n_kept in kept.items():
        q = quarantined.get(name, {})
        r = removed.get(name, {})
        derived = loaded.counts.get(f"{name}.derived_rows", 0) if name in loaded.input_rows else 0
        tables[name] = {
            "input_rows": loaded.input_rows.get(name, n_kept + sum(q.values()) + sum(r.values())),
            "derived_rows": derived, "kept_rows": n_kept, "quarantined_rows": sum(q.values()),
            "quarantined_by_reason": q, "removed_by_cleaning": r,
        }
    removed_total: dict[str, int] = {}
    for t in tables.values():
        for rule, n in t["removed_by_cleaning"].items():
            removed_total[rule] = removed_total.get(rule, 0) + n
    events = dataset.events
    return {
        "source": str(src), "format": fmt, "policy": config.ingest.policy,
        "input_rows": sum(t["input_rows"] for t in tables.values()),
        "derived_rows": sum(t["derived_rows"] for t in tables.values()),
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
